//! Named points where a run can be told to stop and wait, so the fault
//! suite can SIGKILL it at an exact moment: at the start of each phase
//! (the phase's name), just before the `_aliases` call (`before_aliases`)
//! and just after it (`after_aliases`). `FAILPOINTS` (as the `fail` crate names it; not `REBUILDER_*`, which is configuration) lists them,
//! comma-separated (`tcs_merge,after_aliases`); unset, as in production, a
//! point costs one look at a list read once.

use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;

/// The environment variable the points are read from.
pub const FAILPOINTS_VAR: &str = "FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_VAR)
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    })
}

/// Waits for ever when `point` is armed (the test kills the process);
/// returns at once otherwise.
pub async fn hit(point: &str) {
    if armed().iter().any(|p| p == point) {
        warn!(
            point,
            "Failpoint reached: waiting here until the process is killed."
        );
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}
