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
pub fn init() {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,mongodb=warn,opensearch=warn"))
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

/// Whether progress bars are drawn (stderr is a terminal and [`init`] ran).
pub fn progress_bars() -> bool {
    BARS.load(Ordering::Relaxed)
}
