//! Progress of a run for the person or the log watching it: on a terminal,
//! one indicatif bar per counted phase (count, rate and, when the total is
//! known, ETA); otherwise one log line when a phase starts, a count every
//! few seconds, and one line with the total and rate when it ends.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

use crate::state::history::RunPhase;

/// Seconds between two count lines in the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The progress display of one run.
pub struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bars()
        } else {
            Self::logs()
        }
    }

    pub fn bars() -> Self {
        Self {
            bars: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn logs() -> Self {
        Self { bars: None }
    }

    /// Starts counting a phase; `total` enables the ETA.
    pub fn phase(&self, phase: RunPhase, unit: &'static str, total: Option<u64>) -> PhaseProgress {
        info!(phase = phase.as_str(), total, "Phase started.");
        let bar = self.bars.as_ref().map(|multi| {
            let bar = match total {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "{prefix:>14} [{bar:30}] {human_pos}/{human_len} {msg} {per_sec} ETA {eta}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template(
                        "{prefix:>14} {spinner} {human_pos} {msg} {per_sec}",
                    )
                    .expect("a valid template"),
                ),
            };
            let bar = multi.add(bar);
            bar.set_prefix(phase.as_str());
            bar.set_message(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        PhaseProgress {
            phase,
            unit,
            bar,
            count: 0,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }
}

/// The counter of one phase.
pub struct PhaseProgress {
    phase: RunPhase,
    unit: &'static str,
    bar: Option<ProgressBar>,
    count: u64,
    started: Instant,
    last_log: Instant,
}

impl PhaseProgress {
    pub fn inc(&mut self, n: u64) {
        self.count += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                info!(
                    phase = self.phase.as_str(),
                    count = self.count,
                    unit = self.unit,
                    per_sec = self.rate() as u64,
                    "Phase progress."
                );
            }
            None => {}
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
        if let Some(bar) = &self.bar {
            bar.finish();
        }
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
