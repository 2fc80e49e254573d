//! Named points where a run can be told to stop and wait, so the fault
//! suite can act at an exact moment: at the start of each phase (the
//! phase's name), just before the `_aliases` call (`before_aliases`), just
//! after it (`after_aliases`), after each page of the `doctorsForDB`
//! read (`gmc_page`, the cursor open), right after the run asks the live
//! applier to pause (`pause_requested`), and in the live applier after a
//! batch is written and before it is journaled and acked (`live_written`),
//! and in its change-stream readers as an event comes (`live_stream_event`).
//! `FAILPOINTS` (as the `fail` crate names it; not `REBUILDER_*`, which is
//! configuration) lists them, comma-separated, each with what to do there:
//!
//! - `tcs_merge` waits for ever (the test SIGKILLs the process there);
//! - `tcs_merge=1500` sleeps 1.5 s, then goes on;
//! - `tcs_merge=until:/tmp/go` waits until that file exists, then goes on
//!   (the test changes the world meanwhile: a write block, a stolen lease);
//! - `tcs_merge=panic` panics there (a defect, to test how the process
//!   reports one); `tcs_merge=panic:2` panics only the second time the
//!   point is met (for work that starts again after a panic).
//!
//! Unset, as in production, a point costs one look at a list read once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;

/// The environment variable the points are read from.
pub const FAILPOINTS_VAR: &str = "FAILPOINTS";

/// What an armed point does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    WaitForever,
    Sleep(Duration),
    UntilFile(PathBuf),
    Panic,
    /// Panics only the nth time the point is met (from 1).
    PanicOnHit(u64),
}

fn parse(list: &str) -> Vec<(String, Action)> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|entry| match entry.split_once('=') {
            None => (entry.to_string(), Action::WaitForever),
            Some((point, how)) => {
                let action = match how.strip_prefix("until:") {
                    Some(path) => Action::UntilFile(PathBuf::from(path)),
                    None if how == "panic" => Action::Panic,
                    None if how.starts_with("panic:") => how["panic:".len()..]
                        .parse::<u64>()
                        .map(Action::PanicOnHit)
                        .unwrap_or(Action::Panic),
                    None => how
                        .parse::<u64>()
                        .map(|ms| Action::Sleep(Duration::from_millis(ms)))
                        .unwrap_or(Action::WaitForever),
                };
                (point.trim().to_string(), action)
            }
        })
        .collect()
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(FAILPOINTS_VAR).unwrap_or_default()))
}

/// How many times each armed point was met, in the order of [`armed`].
fn hits() -> &'static [AtomicU64] {
    static HITS: OnceLock<Vec<AtomicU64>> = OnceLock::new();
    HITS.get_or_init(|| armed().iter().map(|_| AtomicU64::new(0)).collect())
}

/// Does what `point` is armed with; returns at once when it is not armed.
pub async fn hit(point: &str) {
    let Some(index) = armed().iter().position(|(p, _)| p == point) else {
        return;
    };
    let action = &armed()[index].1;
    let times = hits()[index].fetch_add(1, Ordering::SeqCst) + 1;
    match action {
        Action::WaitForever => {
            warn!(
                point,
                "Failpoint reached: waiting here until the process is killed."
            );
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Action::Sleep(pause) => {
            warn!(
                point,
                ms = pause.as_millis() as u64,
                "Failpoint reached: pausing."
            );
            tokio::time::sleep(*pause).await;
        }
        Action::UntilFile(path) => {
            warn!(point, file = %path.display(), "Failpoint reached: waiting for the file.");
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            warn!(point, "Failpoint released: going on.");
        }
        Action::Panic => panic!("failpoint {point}: a panic on purpose"),
        Action::PanicOnHit(n) if *n == times => {
            panic!("failpoint {point}: a panic on purpose (met {times} times)")
        }
        Action::PanicOnHit(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_points_with_what_to_do_there() {
        let armed = parse(
            " tcs_merge, validate=1500 ,promote=until:/tmp/go,,cleanup=panic,gmc_page=panic:2",
        );
        assert_eq!(
            armed,
            vec![
                ("tcs_merge".to_string(), Action::WaitForever),
                (
                    "validate".to_string(),
                    Action::Sleep(Duration::from_millis(1500))
                ),
                (
                    "promote".to_string(),
                    Action::UntilFile(PathBuf::from("/tmp/go"))
                ),
                ("cleanup".to_string(), Action::Panic),
                ("gmc_page".to_string(), Action::PanicOnHit(2)),
            ]
        );
        assert!(parse("").is_empty());
    }
}
