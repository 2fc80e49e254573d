//! Logging of the benchmark's binaries: warnings only, on stderr (the
//! figures go to stdout); lapin's complaints about connections the
//! benchmark closes on purpose are silenced. `RUST_LOG` overrides.

/// Starts the subscriber (once; a second call does nothing).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off,pinky_swear=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
