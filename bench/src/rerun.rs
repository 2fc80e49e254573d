//! C again under other conditions, beside the measured C: through latency
//! proxies (`--latency-ms`, [`crate::network`]) or with every source over
//! the queues (`--queues`, [`crate::queues`]). [`Rerun::measure`] starts
//! the simulated services the run needs, runs `rebuilder run` once more on
//! the same data, stops them, and returns the run's figures and what failed.

use std::time::Duration;

use serde::Serialize;

use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use rebuilder_dev::datagen::DatasetSpec;

use super::full_run::{self, RebuilderBin, RunMeasurement, SimulatedService, Simulator};
use super::process::{CpuSnapshot, CpuUsage, MEASURED_RUN};
use super::{indices, probe, round3};

/// What every run of C shares, and the measured C it is compared with.
pub struct Rerun<'a> {
    /// The binaries with the benchmark's names.
    pub bin: &'a RebuilderBin,
    pub settings: &'a Settings,
    pub search: &'a SearchClient,
    pub spec: &'a DatasetSpec,
    /// The alias the probe queries (directly, not under the conditions).
    pub alias: &'a str,
    pub probe_every: Duration,
    pub timeout: Duration,
    /// The measured C.
    pub c: &'a RunMeasurement,
}

/// The figures of one run of C under other conditions.
#[derive(Clone, Debug, Serialize)]
pub struct RerunFigures {
    pub docs_per_sec: f64,
    pub docs: u64,
    pub wall_secs: f64,
    /// This run's wall time over the measured C's (1.1 = 10% slower).
    pub time_over_c: f64,
    pub peak_rss_mb: f64,
    pub probe_errors: u64,
    /// `FAILED: ...` lines (wrong count, nothing promoted).
    pub failures: Vec<String>,
    pub cpu: CpuUsage,
}

impl RerunFigures {
    /// `"{what}: N documents in X s = Y docs/s (Z% of {against})"`.
    pub fn line(&self, what: &str, against: &str) -> String {
        format!(
            "{what}: {} documents in {:.1} s = {:.0} docs/s ({:.0}% of {against})",
            self.docs,
            self.wall_secs,
            self.docs_per_sec,
            self.time_over_c * 100.0
        )
    }
}

impl Rerun<'_> {
    /// The binaries with `env` added; it wins over the benchmark's own.
    pub fn bin_with(&self, env: impl IntoIterator<Item = (String, String)>) -> RebuilderBin {
        RebuilderBin {
            env: self.bin.env.iter().cloned().chain(env).collect(),
            ..self.bin.clone()
        }
    }

    /// Starts `services` with `bin`, runs `rebuilder run` once with it
    /// (logged as `label`), stops them. `what` names the run in failures
    /// ("the run on the 1 ms network").
    pub async fn measure(
        &self,
        bin: &RebuilderBin,
        services: &[SimulatedService],
        label: &str,
        what: &str,
    ) -> anyhow::Result<RerunFigures> {
        let mut simulators = Vec::new();
        for &service in services {
            let log = format!("{label}-{}.log", service.subcommand());
            simulators.push(
                Simulator::start(
                    bin,
                    self.settings,
                    service,
                    self.spec.doctors,
                    self.spec.seed,
                    &log,
                )
                .await?,
            );
        }
        let family = self.settings.names.master_family();
        let promoted_before = indices::alias_targets(self.search, &family)
            .await?
            .into_iter()
            .next();
        let before = CpuSnapshot::take();
        let measured = full_run::run_once(
            bin,
            self.search,
            self.settings,
            label,
            Some(self.alias),
            self.probe_every,
            self.timeout,
        )
        .await;
        let after = CpuSnapshot::take();
        for simulator in simulators {
            simulator.stop().await;
        }
        let (run, probe_run) = measured?;
        let probe_errors = probe_run
            .map(|p| probe::summarize(self.alias, self.probe_every, &p.samples).errors)
            .unwrap_or(0);
        Ok(RerunFigures {
            docs_per_sec: round3(run.docs as f64 / run.wall_secs.max(1e-9)),
            docs: run.docs,
            wall_secs: run.wall_secs,
            time_over_c: round3(run.wall_secs / self.c.wall_secs.max(1e-9)),
            peak_rss_mb: run.usage.peak_rss_mb,
            probe_errors,
            failures: failures(
                what,
                run.docs,
                self.spec.doctors as u64,
                promoted_before.as_deref(),
                run.generation.as_deref(),
            ),
            cpu: CpuUsage::between(&before, &after, &[(MEASURED_RUN, run.usage.cpu_secs)]),
        })
    }
}

/// What went wrong with a run that exited 0: a count other than the data
/// set's, or the same generation promoted as before it.
pub fn failures(
    what: &str,
    docs: u64,
    expected: u64,
    promoted_before: Option<&str>,
    promoted_after: Option<&str>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if docs != expected {
        failures.push(format!(
            "FAILED: {what} promoted {docs} documents, the data set has {expected}"
        ));
    }
    if promoted_after.is_none() || promoted_after == promoted_before {
        failures.push(format!("FAILED: {what} did not promote a new generation"));
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_fails_on_a_short_count_and_on_the_generation_it_found() {
        let what = "the run over the queues";
        assert!(failures(what, 5, 5, Some("g1"), Some("g2")).is_empty());
        assert_eq!(
            failures(what, 4, 5, Some("g1"), Some("g1")),
            [
                "FAILED: the run over the queues promoted 4 documents, the data set has 5",
                "FAILED: the run over the queues did not promote a new generation"
            ]
        );
        assert_eq!(failures(what, 5, 5, None, None).len(), 1);
    }
}
