//! The benchmark's figures: one `Report` with every measurement, the ratios,
//! the targets of issue 5 judged against them (printed, never asserted), the
//! text summary, and the JSON that `scripts/bench-chart.py` draws.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::ceiling::CeilingOutcome;
use super::full_run::{PhaseTime, RunMeasurement};
use super::probe::{ProbeSample, ProbeSummary};
use super::process::CpuUsage;
use super::reindex::ReindexResult;
use super::round3;
use super::upsert::OldPathResult;

/// Peak memory target of the rebuilder process, at 1M doctors.
pub const MEMORY_TARGET_MB: f64 = 300.0;
pub const MEMORY_TARGET_DOCTORS: usize = 1_000_000;

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
    /// Fills `ratios` and `targets` from the measurements.
    pub fn judge(&mut self) {
        let a = self.a_ceiling.as_ref().map(|c| c.best.docs_per_sec);
        let b = self.b_old_path.as_ref().map(|b| b.docs_per_sec);
        let c = self.c_rebuilder.as_ref().map(|c| c.docs_per_sec);
        let d = self.d_reindex.as_ref().map(|d| d.docs_per_sec);
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => Some(round3(x / y)),
            _ => None,
        };
        self.ratios = Ratios {
            c_over_a: ratio(c, a),
            c_over_b: ratio(c, b),
            a_over_b: ratio(a, b),
            d_over_a: ratio(d, a),
        };
        let mut targets = Vec::new();
        targets.push(match (self.ratios.c_over_a, a, c) {
            (Some(r), Some(a), Some(c)) => Target {
                name: "C >= 50% of A".into(),
                actual: format!("C is {:.1}% of A ({c:.0} vs {a:.0} docs/s)", r * 100.0),
                met: Some(r >= 0.5),
                note: if r >= 0.5 {
                    format!("{:.1} points above the target", (r - 0.5) * 100.0)
                } else {
                    format!(
                        "missed by {:.1} points: C needs {:.0} docs/s more ({:.2}x its rate)",
                        (0.5 - r) * 100.0,
                        a * 0.5 - c,
                        0.5 / r.max(1e-9)
                    )
                },
            },
            _ => not_measured("C >= 50% of A"),
        });
        targets.push(match (self.ratios.c_over_b, self.b_old_path.as_ref()) {
            (Some(r), Some(b)) => Target {
                name: "C >= 100x B".into(),
                actual: format!("C is {r:.0}x B"),
                met: Some(r >= 100.0),
                note: if r >= 100.0 {
                    format!(
                        "B time-boxed: {} docs in {:.1} s, extrapolated",
                        b.sample_docs, b.sample_secs
                    )
                } else {
                    format!(
                        "missed by {:.0}x (needs {:.2}x C's rate)",
                        100.0 - r,
                        100.0 / r.max(1e-9)
                    )
                },
            },
            _ => not_measured("C >= 100x B"),
        });
        targets.push(match &self.probe {
            Some(p) => Target {
                name: "zero probe errors".into(),
                actual: format!(
                    "{} errors in {} queries",
                    p.summary.errors, p.summary.queries
                ),
                met: Some(p.summary.errors == 0 && p.summary.queries > 0),
                note: if p.summary.queries == 0 {
                    "the probe made no query".into()
                } else if p.summary.errors == 0 {
                    String::new()
                } else {
                    format!(
                        "missed by {} errors: {}",
                        p.summary.errors,
                        p.summary.first_errors.join("; ")
                    )
                },
            },
            None => not_measured("zero probe errors"),
        });
        targets.push(match &self.c_rebuilder {
            Some(c) if self.dataset.doctors >= MEMORY_TARGET_DOCTORS => Target {
                name: "peak rebuilder RSS <= 300 MB at 1M".into(),
                actual: format!("{:.0} MB", c.peak_rss_mb),
                met: Some(c.peak_rss_mb <= MEMORY_TARGET_MB),
                note: if c.peak_rss_mb <= MEMORY_TARGET_MB {
                    format!("{:.0} MB to spare", MEMORY_TARGET_MB - c.peak_rss_mb)
                } else {
                    format!("missed by {:.0} MB", c.peak_rss_mb - MEMORY_TARGET_MB)
                },
            },
            Some(c) => Target {
                name: "peak rebuilder RSS <= 300 MB at 1M".into(),
                actual: format!(
                    "{:.0} MB at {} doctors",
                    c.peak_rss_mb, self.dataset.doctors
                ),
                met: None,
                note: "applies at 1M doctors (run with --doctors 1000000)".into(),
            },
            None => not_measured("peak rebuilder RSS <= 300 MB at 1M"),
        });
        self.targets = targets;
    }

    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let n = self.dataset.documents;
        let _ =
            writeln!(
            s,
            "\nrebuilder benchmark: {} doctors ({} documents, {:.0} MB of NDJSON), OpenSearch {} \
             ({} MB heap), {} cores{}",
            self.dataset.doctors,
            n,
            self.dataset.ndjson_bytes as f64 / 1_048_576.0,
            self.machine.opensearch_version,
            self.machine.opensearch_heap_mb,
            self.machine.cores,
            if self.smoke { " (SMOKE: figures mean nothing)" } else { "" }
        );
        let _ = writeln!(s, "command: {}", self.command);
        let _ = writeln!(s, "\n  {:<38} {:>12} {:>10}", "path", "docs/s", "seconds");
        if let Some(a) = &self.a_ceiling {
            let _ = writeln!(
                s,
                "  {:<38} {:>12.0} {:>10.1}",
                format!(
                    "A ceiling: raw _bulk, batch {} x {}",
                    a.best.batch_docs, a.best.concurrency
                ),
                a.best.docs_per_sec,
                a.best.secs
            );
        }
        if let Some(b) = &self.b_old_path {
            let _ = writeln!(
                s,
                "  {:<38} {:>12.1} {:>10.0}  EXTRAPOLATED from {} docs in {:.1} s",
                "B old path: one upsert per document",
                b.docs_per_sec,
                b.extrapolated_secs_for_all,
                b.sample_docs,
                b.sample_secs
            );
        }
        if let Some(c) = &self.c_rebuilder {
            let _ = writeln!(
                s,
                "  {:<38} {:>12.0} {:>10.1}  {} docs, peak RSS {:.0} MB",
                "C rebuilder run, end to end", c.docs_per_sec, c.wall_secs, c.docs, c.peak_rss_mb
            );
        }
        if let Some(d) = &self.d_reindex {
            let _ = writeln!(
                s,
                "  {:<38} {:>12.0} {:>10.1}  (reference)",
                "D server-side _reindex", d.docs_per_sec, d.took_secs
            );
        }
        let r = &self.ratios;
        let fmt = |x: Option<f64>, pct: bool| match x {
            Some(v) if pct => format!("{:.1}%", v * 100.0),
            Some(v) => format!("{v:.0}x"),
            None => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "\n  C/A = {}   C/B = {}   A/B = {}   D/A = {}",
            fmt(r.c_over_a, true),
            fmt(r.c_over_b, false),
            fmt(r.a_over_b, false),
            fmt(r.d_over_a, true)
        );
        if let Some(c) = &self.c_rebuilder {
            if !c.phases.is_empty() {
                let phases: Vec<String> = c
                    .phases
                    .iter()
                    .map(|p| match p.docs_written {
                        Some(n) if n > 0 => format!(
                            "{} {:.1}s ({n} docs, {:.0}/s)",
                            p.phase,
                            p.secs,
                            n as f64 / p.secs.max(1e-3)
                        ),
                        _ => format!("{} {:.1}s", p.phase, p.secs),
                    })
                    .collect();
                let _ = writeln!(s, "  C phases: {}", phases.join(", "));
                for p in c.phases.iter().filter(|p| p.secs >= 0.05 * c.wall_secs) {
                    let mut load: Vec<(&String, &f64)> = p.cpu_cores.iter().collect();
                    load.sort_by(|a, b| b.1.total_cmp(a.1));
                    let load: Vec<String> = load
                        .iter()
                        .take(4)
                        .map(|(r, c)| format!("{r} {c:.2}"))
                        .collect();
                    if !load.is_empty() {
                        let _ = writeln!(
                            s,
                            "    {} ({:.0}% of the run), cores used: {}",
                            p.phase,
                            p.secs * 100.0 / c.wall_secs.max(1e-9),
                            load.join(", ")
                        );
                    }
                }
            }
            if let Some(cpu) = &c.cpu {
                let _ = writeln!(s, "  C {}", cpu.line());
            }
        }
        if let Some(cpu) = &self.a_cpu {
            let _ = writeln!(s, "  A {}", cpu.line());
        }
        if let Some(p) = &self.probe {
            let _ = writeln!(
                s,
                "  probe on {} every {} ms: {} queries, {} errors, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, swap at {}",
                p.summary.alias,
                p.summary.interval_ms,
                p.summary.queries,
                p.summary.errors,
                p.summary.p50_ms,
                p.summary.p99_ms,
                p.summary.max_ms,
                p.summary
                    .swap_at_secs
                    .map_or("(not seen)".to_string(), |t| format!("{t:.2} s"))
            );
        }
        if let Some(b) = &self.b_old_path {
            let _ = writeln!(
                s,
                "  B was TIME-BOXED to {:.0} s: {} of {} documents written ({:.1} ms each), the rest \
                 extrapolated ({:.1} h for all). The old service sent about two requests per doctor.",
                b.time_box_secs,
                b.sample_docs,
                b.all_docs,
                b.mean_request_ms,
                b.extrapolated_secs_for_all / 3600.0
            );
        }
        let _ = writeln!(s, "\ntargets (printed, not asserted):");
        for t in &self.targets {
            let mark = match t.met {
                Some(true) => "MET   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            let _ = writeln!(s, "  [{mark}] {:<36} {}", t.name, t.actual);
            if !t.note.is_empty() {
                let _ = writeln!(s, "           {}", t.note);
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        s
    }
}

fn not_measured(name: &str) -> Target {
    Target {
        name: name.into(),
        actual: "not measured".into(),
        met: None,
        note: "a path it needs was skipped".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceiling::LoadResult;
    use crate::full_run::RunMeasurement;

    fn report(doctors: usize, a: f64, b: f64, c: f64, rss: f64) -> Report {
        let load = LoadResult {
            index: "bench_ceiling".into(),
            batch_docs: 5000,
            concurrency: 4,
            docs: doctors as u64,
            secs: doctors as f64 / a,
            docs_per_sec: a,
            requests: 1,
            retried_requests: 0,
            cpu: None,
            series: Vec::new(),
        };
        let run = RunMeasurement {
            label: "c".into(),
            exit_code: Some(0),
            wall_secs: doctors as f64 / c,
            generation: Some("g2".into()),
            docs: doctors as u64,
            usage: Default::default(),
            series: Vec::new(),
            cpu_series: Vec::new(),
            log: "c.log".into(),
            started_utc: chrono::Utc::now(),
        };
        Report {
            schema: 1,
            generated_at: String::new(),
            command: "scripts/bench".into(),
            smoke: false,
            machine: Machine {
                cores: 2,
                memory_mb: 1,
                opensearch_version: "2.19.6".into(),
                opensearch_heap_mb: 2048,
                git_commit: String::new(),
            },
            dataset: Dataset {
                doctors,
                seed: 42,
                documents: doctors,
                ndjson_bytes: 1,
                generate_secs: 0.0,
                seed_mongo_secs: None,
                gmc_doctors: None,
                recommendations: None,
                tcs_messages: None,
            },
            a_ceiling: Some(CeilingOutcome {
                best: load,
                sweep: Vec::new(),
                sweep_docs: doctors,
            }),
            a_cpu: None,
            b_old_path: Some(OldPathResult {
                index: "bench_oldpath".into(),
                sample_docs: 2000,
                sample_secs: 20.0,
                docs_per_sec: b,
                time_box_secs: 20.0,
                time_boxed: true,
                extrapolated_secs_for_all: doctors as f64 / b,
                all_docs: doctors as u64,
                mean_request_ms: 1000.0 / b,
            }),
            c_rebuilder: Some(RebuilderFigures {
                docs_per_sec: c,
                docs: doctors as u64,
                wall_secs: doctors as f64 / c,
                peak_rss_mb: rss,
                cpu_secs: 0.0,
                phases: Vec::new(),
                run,
                warmup: None,
                cpu: None,
                run_report: Value::Null,
            }),
            d_reindex: None,
            probe: None,
            ratios: Ratios::default(),
            targets: Vec::new(),
            foreign_opensearch: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn targets_met_say_so_and_the_memory_target_waits_for_a_million() {
        let mut r = report(200_000, 20_000.0, 100.0, 15_000.0, 120.0);
        r.judge();
        assert_eq!(r.ratios.c_over_a, Some(0.75));
        assert_eq!(r.ratios.c_over_b, Some(150.0));
        let met: Vec<Option<bool>> = r.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [Some(true), Some(true), None, None]);
        assert!(r.summary().contains("EXTRAPOLATED from 2000 docs"));
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        let mut r = report(1_000_000, 20_000.0, 100.0, 5_000.0, 350.0);
        r.judge();
        assert_eq!(r.targets[0].met, Some(false));
        assert!(
            r.targets[0].note.contains("missed by 25.0 points"),
            "{}",
            r.targets[0].note
        );
        assert_eq!(r.targets[1].met, Some(false));
        assert!(
            r.targets[1].note.contains("missed by 50x"),
            "{}",
            r.targets[1].note
        );
        assert_eq!(r.targets[3].met, Some(false));
        assert!(r.targets[3].note.contains("missed by 50 MB"));
    }
}
