//! C with every source over the queues (`--queues`, issue 22): after the
//! measured C, which reads GMC and the connection service's data from
//! MongoDB, `rebuilder run` again on the same data with `gmc.source` and
//! `connection.source` set to `queue`, while `rebuilder-dev` plays TCS, the
//! recommendation service and the connection service. The documents differ
//! from MongoDB's only in a TCS-only trainee's `gmcStatus` (which today's
//! GMC queue never carries), so the count is the data set's either way.

use std::fmt::Write as _;

use rebuilder::config::{ConnectionSourceKind, GmcSourceKind, Settings};

use super::full_run::SimulatedService;
use super::isolation;
use super::rerun::{Rerun, RerunFigures};

/// The run's name in the figures.
pub const WHAT: &str = "C with every source over the queues";
/// What its time is compared with.
pub const AGAINST: &str = "C's time with MongoDB reads";

/// The environment of a child that reads every source over the queues,
/// under the benchmark's names.
pub fn queue_env(settings: &Settings) -> Vec<(String, String)> {
    let mut queued = settings.clone();
    queued.gmc.source = GmcSourceKind::Queue;
    queued.connection.source = ConnectionSourceKind::Queue;
    isolation::child_env(&queued)
}

/// Runs C with every source over the queues, the three services simulated.
pub async fn measure(rerun: &Rerun<'_>) -> anyhow::Result<RerunFigures> {
    let bin = rerun.bin_with(queue_env(rerun.settings));
    println!(
        "{WHAT}: measured run, TCS and the recommendation and connection services simulated ..."
    );
    let figures = rerun
        .measure(
            &bin,
            &SimulatedService::ALL,
            "c-queues-run",
            "the run with every source over the queues",
        )
        .await?;
    println!("{}.", figures.line(WHAT, AGAINST));
    Ok(figures)
}

/// The summary's lines for the run.
pub fn summary(figures: &RerunFigures) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "  {}", figures.line(WHAT, AGAINST));
    let _ = writeln!(
        s,
        "    peak RSS {:.0} MB, {} probe errors; {}",
        figures.peak_rss_mb,
        figures.probe_errors,
        figures.cpu.line()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_run_reads_gmc_and_connection_data_over_the_queues_under_the_benchmarks_names() {
        let mut settings = Settings::default();
        isolation::isolate(&mut settings, isolation::SMOKE);
        let env = queue_env(&settings);
        let value = |key: &str| {
            env.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {key} in {env:?}"))
        };
        assert_eq!(value("REBUILDER_GMC__SOURCE"), "queue");
        assert_eq!(value("REBUILDER_CONNECTION__SOURCE"), "queue");
        assert_eq!(
            value("REBUILDER_CONNECTION__HIDDEN_SYNC_START_QUEUE"),
            "benchsmoke.reval.queue.hiddendiscrepancy.essyncstart.connection"
        );
        assert_eq!(
            value("REBUILDER_GMC__SYNC_DATA_QUEUE"),
            settings.gmc.sync_data_queue
        );
    }
}
