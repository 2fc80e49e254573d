//! Logging: a `tracing` subscriber, readable on a terminal and JSON
//! otherwise. On a terminal, progress bars are drawn by `tracing-indicatif`
//! for the spans that ask for one (`indicatif.pb_show`), and log lines are
//! written through the same layer, above the bars, so the two never tear.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_indicatif::filter::{hide_indicatif_span_fields, IndicatifFilter};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

static BARS: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber once. `RUST_LOG` overrides the default
/// level (`info`). Logs go to stderr so that stdout stays for reports.
///
/// lapin logs every channel the broker closes at ERROR, the passive
/// declares included with which the topology asks whether an exchange or a
/// queue exists (a 404 is the answer "no", on a fresh broker every time):
/// its channel log is off unless `RUST_LOG` names lapin. Nothing is lost by
/// it: every failure that matters reaches our code as an error and is
/// logged there, with its context.
pub fn init() {
    let filter = || {
        let named = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("lapin"));
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,mongodb=warn,opensearch=warn"));
        match "lapin::channel=off".parse() {
            Ok(quiet) if !named => filter.add_directive(quiet),
            _ => filter,
        }
    };
    let result = if std::io::stderr().is_terminal() {
        let bars = IndicatifLayer::new()
            .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()));
        let logs = fmt::layer()
            .with_target(false)
            .with_writer(bars.get_stderr_writer())
            .with_filter(filter());
        let installed = tracing_subscriber::registry()
            .with(logs)
            .with(bars.with_filter(IndicatifFilter::new(false)))
            .try_init();
        if installed.is_ok() {
            BARS.store(true, Ordering::Relaxed);
        }
        installed
    } else {
        tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter()),
            )
            .try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Sends panics to the log as one error line each (JSON in production),
/// instead of the default hook's plain text on stderr, which a log pipeline
/// that reads JSON lines would break on or drop. For the binary only: the
/// tests keep the default hook, whose message the test harness captures.
/// `RUST_BACKTRACE` adds the backtrace as a field, as it does by default.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
            _ => String::new(),
        };
        tracing::error!(
            panic = %message,
            location = %location,
            thread = thread.name().unwrap_or("unnamed"),
            backtrace = %backtrace,
            "A thread panicked."
        );
    }));
}

/// The message a panic carries (its payload is a `&str` or a `String`
/// when it came from `panic!`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".to_string())
}

/// Why a task ended abnormally: its panic's message, or its cancellation.
pub fn join_error_text(error: tokio::task::JoinError) -> String {
    if error.is_panic() {
        format!(
            "it panicked: {}",
            panic_message(error.into_panic().as_ref())
        )
    } else {
        "it was cancelled".into()
    }
}

/// Whether log lines are JSON (stderr is not a terminal), so that anything
/// else written to stderr belongs in a log line too.
pub fn logs_are_json() -> bool {
    !std::io::stderr().is_terminal()
}

/// Whether progress bars are drawn (stderr is a terminal and [`init`] ran).
pub fn progress_bars() -> bool {
    BARS.load(Ordering::Relaxed)
}

/// The names of the metrics the service exports (`/metrics`). The layers
/// that count record them where they count (the bulk writer its requests and
/// items); without an installed recorder (the command line, the tests) the
/// calls do nothing.
pub mod metric {
    /// Counter: documents the bulk writers wrote (this process), into every
    /// generation: a run that loads the recommendation generation alongside
    /// the master writes each document twice.
    pub const DOCUMENTS_WRITTEN: &str = "rebuilder_documents_written_total";
    /// Counter: bulk item sends beyond the first.
    pub const RETRIED_ITEMS: &str = "rebuilder_bulk_retried_items_total";
    /// Counter: bulk answers that carried a 429.
    pub const THROTTLED_ANSWERS: &str = "rebuilder_bulk_throttled_answers_total";
    /// Histogram: seconds per `_bulk` request.
    pub const BULK_REQUEST_SECONDS: &str = "rebuilder_bulk_request_duration_seconds";
    /// Counter: scheduled starts skipped because a run held the lease.
    pub const SCHEDULE_SKIPPED: &str = "rebuilder_schedule_skipped_total";
    /// Counter: runs this process started, by trigger.
    pub const RUNS_STARTED: &str = "rebuilder_runs_started_total";
    /// Gauge: 1 while any replica's run (or a rollback) holds the lease.
    pub const RUN_IN_PROGRESS: &str = "rebuilder_run_in_progress";
    /// Gauge: seconds each phase of the last run took, by phase.
    pub const LAST_RUN_PHASE_SECONDS: &str = "rebuilder_last_run_phase_duration_seconds";
    /// Gauge: rejects of the last run, by reason.
    pub const LAST_RUN_REJECTS: &str = "rebuilder_last_run_rejects";
    /// Gauge: documents the last run wrote.
    pub const LAST_RUN_DOCUMENTS_WRITTEN: &str = "rebuilder_last_run_documents_written";
    /// Gauge: Unix time the last successful run ended.
    pub const LAST_SUCCESS_END: &str = "rebuilder_last_success_end_timestamp_seconds";
    /// Gauge: seconds since the live master generation was created.
    pub const LIVE_GENERATION_AGE: &str = "rebuilder_live_generation_age_seconds";
    /// Gauge: 1 while this process is the active live applier.
    pub const LIVE_APPLIER_ACTIVE: &str = "rebuilder_live_applier_active";
    /// Counter: live changes applied, by source.
    pub const LIVE_APPLIED: &str = "rebuilder_live_changes_applied_total";
    /// Counter: live changes superseded within their batch by a later change
    /// of the same doctor and source (settled, not written), by source.
    pub const LIVE_COALESCED: &str = "rebuilder_live_changes_coalesced_total";
    /// Counter: live changes that could not be one (dead-lettered), by reason.
    pub const LIVE_REJECTED: &str = "rebuilder_live_changes_rejected_total";
    /// Counter: change-stream events with nothing to apply, by reason.
    pub const LIVE_SKIPPED: &str = "rebuilder_live_events_skipped_total";
    /// Gauge: messages waiting in the TCS update queue (the active applier).
    pub const LIVE_QUEUE_DEPTH: &str = "rebuilder_live_queue_depth";
    /// Gauge: seconds between the server making the change-stream event
    /// applied last and its being applied; 0 when caught up.
    pub const LIVE_STREAM_LAG_SECONDS: &str = "rebuilder_live_stream_lag_seconds";
    /// Histogram: seconds per applied batch.
    pub const LIVE_BATCH_SECONDS: &str = "rebuilder_live_batch_duration_seconds";
    /// Counter: seconds the applier was paused for swaps.
    pub const LIVE_PAUSED_SECONDS: &str = "rebuilder_live_paused_seconds_total";
    /// Gauge: live changes the last run replayed onto its generation.
    pub const LAST_RUN_REPLAYED: &str = "rebuilder_last_run_replayed_changes";
    /// Gauge: the journal backlog when the last run paused the applier.
    pub const LAST_RUN_PAUSE_BACKLOG: &str = "rebuilder_last_run_pause_backlog";
    /// Gauge: milliseconds the last run kept the applier paused.
    pub const LAST_RUN_PAUSED_MS: &str = "rebuilder_last_run_applier_paused_milliseconds";
}
