//! Progress of a run for the person or the log watching it: on a terminal,
//! one bar per counted phase (count, rate and, when the total is known,
//! ETA), drawn by the telemetry's `tracing-indicatif` layer from a span of
//! the phase; otherwise one log line when a phase starts, a count every
//! few seconds, and one line with the total and rate when it ends.

use std::time::{Duration, Instant};

use indicatif::ProgressStyle;
use tracing::{info, info_span, Span};
use tracing_indicatif::span_ext::IndicatifSpanExt;

use super::record::RunPhase;

/// Seconds between two count lines in the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The progress display of one run.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    bars: bool,
}

impl Progress {
    /// Bars when the telemetry draws them (stderr is a terminal), log lines otherwise.
    pub fn for_stderr() -> Self {
        Self {
            bars: crate::telemetry::progress_bars(),
        }
    }

    /// Log lines only.
    pub fn logs() -> Self {
        Self { bars: false }
    }

    /// Starts counting a phase; `total` enables the ETA.
    pub fn phase(&self, phase: RunPhase, unit: &'static str, total: Option<u64>) -> PhaseProgress {
        info!(phase = phase.as_str(), total, "Phase started.");
        let span = if self.bars {
            let span = info_span!(
                "phase",
                indicatif.pb_show = tracing::field::Empty,
                phase = phase.as_str()
            );
            let template = match total {
                Some(_) => {
                    "{span_fields:<22} [{bar:30}] {human_pos}/{human_len} {msg} {per_sec} ETA {eta}"
                }
                None => "{span_fields:<22} {spinner} {human_pos} {msg} {per_sec}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                span.pb_set_style(&style.progress_chars("=> "));
            }
            span.pb_set_length(total.unwrap_or(u64::MAX));
            span.pb_set_message(unit);
            span.pb_start();
            span
        } else {
            Span::none()
        };
        PhaseProgress {
            phase,
            unit,
            span,
            bars: self.bars,
            count: 0,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }
}

/// The counter of one phase; its bar goes when it is finished or dropped.
pub struct PhaseProgress {
    phase: RunPhase,
    unit: &'static str,
    span: Span,
    bars: bool,
    count: u64,
    started: Instant,
    last_log: Instant,
}

impl PhaseProgress {
    pub fn inc(&mut self, n: u64) {
        self.count += n;
        if self.bars {
            self.span.pb_inc(n);
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            info!(
                phase = self.phase.as_str(),
                count = self.count,
                unit = self.unit,
                per_sec = self.rate() as u64,
                "Phase progress."
            );
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// Ends the phase with its total and rate.
    pub fn finish(self) {
        info!(
            phase = self.phase.as_str(),
            count = self.count,
            unit = self.unit,
            secs = format!("{:.1}", self.started.elapsed().as_secs_f64()),
            per_sec = self.rate() as u64,
            "Phase finished."
        );
    }
}
