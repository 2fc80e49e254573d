//! The benchmark's figures: one [`Report`] with every measurement, its
//! ratios and targets, and the types of its parts. The report serializes
//! as is (its fields are the JSON of `latest.json`, which
//! `scripts/bench-chart.py` draws); [`targets`] judges it, [`summary`]
//! prints it for people, [`files`] writes both.

pub mod files;
pub mod summary;
pub mod targets;

#[cfg(test)]
mod fixtures;

use serde::Serialize;
use serde_json::Value;

use crate::ceiling::CeilingOutcome;
use crate::full_run::{PhaseTime, RunMeasurement};
use crate::probe::{ProbeSample, ProbeSummary};
use crate::process::CpuUsage;
use crate::reindex::ReindexResult;
use crate::rerun::RerunFigures;
use crate::stages::{Bound, StageFigures};
use crate::upsert::OldPathResult;

pub use targets::{MEMORY_TARGET_DOCTORS, MEMORY_TARGET_MB};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub generated_at: String,
    /// The command that produced this report.
    pub command: String,
    pub smoke: bool,
    pub machine: Machine,
    pub dataset: Dataset,
    pub a_ceiling: Option<CeilingOutcome>,
    pub a_cpu: Option<CpuUsage>,
    pub b_old_path: Option<OldPathResult>,
    pub c_rebuilder: Option<RebuilderFigures>,
    pub d_reindex: Option<ReindexResult>,
    /// CPU of D, for the bound.
    pub d_cpu: Option<CpuUsage>,
    /// The TCS sync alone and the GMC reads alone.
    pub s_tcs: Option<StageFigures>,
    pub s_gmc: Option<StageFigures>,
    /// B and C through latency proxies (`--latency-ms`).
    pub network: Option<NetworkFigures>,
    /// C with every source over the queues (`--queues`).
    pub c_over_queues: Option<RerunFigures>,
    /// The machine's bound for the run, `L`.
    pub bound: Option<Bound>,
    /// `E = L / C`.
    pub efficiency: Option<f64>,
    pub probe: Option<ProbeFigures>,
    pub ratios: Ratios,
    pub targets: Vec<Target>,
    /// Documents indexed and queries run on the node for others (indices
    /// outside the benchmark's prefix) during A's sweep and during C.
    pub foreign_opensearch: Vec<ForeignLoad>,
    /// Problems that make a figure doubtful (printed and kept).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ForeignLoad {
    pub during: String,
    pub docs_indexed: u64,
    pub queries: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mb: u64,
    pub opensearch_version: String,
    pub opensearch_heap_mb: u64,
    pub git_commit: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Dataset {
    pub doctors: usize,
    pub seed: u64,
    pub documents: usize,
    pub ndjson_bytes: usize,
    pub generate_secs: f64,
    /// Seeding MongoDB for C (not part of any measurement).
    pub seed_mongo_secs: Option<f64>,
    pub gmc_doctors: Option<u64>,
    pub recommendations: Option<u64>,
    pub tcs_messages: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RebuilderFigures {
    /// Documents in the promoted generation over the child's wall time.
    pub docs_per_sec: f64,
    pub docs: u64,
    pub wall_secs: f64,
    pub peak_rss_mb: f64,
    pub cpu_secs: f64,
    pub phases: Vec<PhaseTime>,
    /// The measured run.
    pub run: RunMeasurement,
    /// The first run, which created the aliases so that the measured one
    /// swaps a live generation (its series are dropped).
    pub warmup: Option<RunMeasurement>,
    pub cpu: Option<CpuUsage>,
    /// `rebuilder status --json` after the measured run.
    pub run_report: Value,
}

/// B and C on a slower network: every client reaches every server through
/// a Toxiproxy proxy adding `latency_ms` each way.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkFigures {
    pub latency_ms: u64,
    pub b_old_path: Option<OldPathResult>,
    pub c_rebuilder: Option<RerunFigures>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeFigures {
    pub summary: ProbeSummary,
    /// Whether the alias held documents before the run (empty answers count as errors).
    pub expected_docs: bool,
    pub samples: Vec<ProbeSample>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    pub c_over_a: Option<f64>,
    pub c_over_b: Option<f64>,
    pub a_over_b: Option<f64>,
    pub d_over_a: Option<f64>,
}

/// One target of issue 5 and how this run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    pub actual: String,
    /// None: not measured, or not applicable at this size.
    pub met: Option<bool>,
    /// By how much it was missed, or why it does not apply.
    pub note: String,
}

impl Report {
    /// A report of the data set on the machine, with no measurement yet.
    pub fn new(command: String, smoke: bool, machine: Machine, dataset: Dataset) -> Self {
        Report {
            schema: 1,
            generated_at: chrono::Utc::now().to_rfc3339(),
            command,
            smoke,
            machine,
            dataset,
            a_ceiling: None,
            a_cpu: None,
            b_old_path: None,
            c_rebuilder: None,
            d_reindex: None,
            d_cpu: None,
            s_tcs: None,
            s_gmc: None,
            network: None,
            c_over_queues: None,
            bound: None,
            efficiency: None,
            probe: None,
            ratios: Ratios::default(),
            targets: Vec::new(),
            foreign_opensearch: Vec::new(),
            warnings: Vec::new(),
        }
    }
}
