//! The benchmark's figures: one `Report` with every measurement, the ratios,
//! the targets of issue 5 judged against them (printed, never asserted), the
//! text summary, and the JSON that `scripts/bench-chart.py` draws.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::stages::{bound, total_cpu, Bound, StageFigures};

use super::ceiling::CeilingOutcome;
use super::full_run::{PhaseTime, RunMeasurement};
use super::probe::{ProbeSample, ProbeSummary};
use super::process::CpuUsage;
use super::reindex::ReindexResult;
use super::rerun::RerunFigures;
use super::round3;
use super::upsert::OldPathResult;

/// Peak memory target of the rebuilder process, at 1M doctors.
pub const MEMORY_TARGET_MB: f64 = 256.0;
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
        let stage = |x: &Option<StageFigures>| x.as_ref().map(|s| (s.secs, s.cpu_secs()));
        self.bound = bound(
            self.a_ceiling
                .as_ref()
                .map(|a| (a.best.secs, self.a_cpu.as_ref().map_or(0.0, total_cpu))),
            stage(&self.s_tcs),
            stage(&self.s_gmc),
            self.d_cpu.as_ref().map(total_cpu),
            self.machine.cores,
        );
        self.efficiency = match (&self.bound, &self.c_rebuilder) {
            (Some(l), Some(c)) if c.wall_secs > 0.0 => Some(round3(l.secs / c.wall_secs)),
            _ => None,
        };
        let mut targets = Vec::new();
        targets.push(match (self.efficiency, &self.bound) {
            (Some(e), Some(l)) => Target {
                name: "E = L / C >= 0.8".into(),
                actual: format!("E = {e:.2} (L = {:.1} s, bound by {})", l.secs, l.term),
                met: Some(e >= 0.8),
                note: if e >= 0.8 {
                    format!("{:.2} above the target", e - 0.8)
                } else {
                    format!(
                        "missed by {:.2}: C would need {:.1} s ({:.0}% of its time)",
                        0.8 - e,
                        l.secs / 0.8,
                        l.secs / 0.8 * 100.0 / (l.secs / e).max(1e-9)
                    )
                },
            },
            _ => not_measured("E = L / C >= 0.8"),
        });
        if self.dataset.doctors >= MEMORY_TARGET_DOCTORS {
            targets.push(match &self.c_rebuilder {
                Some(c) => Target {
                    name: "1M doctors in <= 240 s".into(),
                    actual: format!("{:.0} s", c.wall_secs),
                    met: Some(c.wall_secs <= 240.0),
                    note: if c.wall_secs <= 240.0 {
                        format!("{:.0} s to spare", 240.0 - c.wall_secs)
                    } else {
                        format!("missed by {:.0} s", c.wall_secs - 240.0)
                    },
                },
                None => not_measured("1M doctors in <= 240 s"),
            });
        }
        let net = self.network.as_ref();
        let net_c = net.and_then(|n| n.c_rebuilder.as_ref());
        let net_b = net.and_then(|n| n.b_old_path.as_ref());
        let ms = net.map_or(1, |n| n.latency_ms);
        let name = format!("{ms} ms network: C at most 10% slower than on loopback");
        targets.push(match (net_c, self.c_rebuilder.as_ref()) {
            (Some(nc), Some(c)) => {
                let slowdown = nc.wall_secs / c.wall_secs.max(1e-9) - 1.0;
                Target {
                    name,
                    actual: format!(
                        "{:+.1}% ({:.1} s against {:.1} s)",
                        slowdown * 100.0,
                        nc.wall_secs,
                        c.wall_secs
                    ),
                    met: Some(slowdown <= 0.10),
                    note: if slowdown <= 0.10 {
                        String::new()
                    } else {
                        format!("missed by {:.1} points", (slowdown - 0.10) * 100.0)
                    },
                }
            }
            _ => not_measured_because(&name, "run with --latency-ms 1"),
        });
        let name = format!("{ms} ms network: C >= 20x B");
        targets.push(match (net_c, net_b) {
            (Some(nc), Some(nb)) if nb.docs_per_sec > 0.0 => {
                let r = nc.docs_per_sec / nb.docs_per_sec;
                Target {
                    name,
                    actual: format!(
                        "C is {r:.0}x B ({:.0} vs {:.0} docs/s)",
                        nc.docs_per_sec, nb.docs_per_sec
                    ),
                    met: Some(r >= 20.0),
                    note: if r >= 20.0 {
                        format!(
                            "B time-boxed: {} docs in {:.1} s",
                            nb.sample_docs, nb.sample_secs
                        )
                    } else {
                        format!("missed by {:.1}x", 20.0 - r)
                    },
                }
            }
            _ => not_measured_because(&name, "run with --latency-ms 1"),
        });
        let net_errors = net_c.map_or(0, |n| n.probe_errors);
        targets.push(match &self.probe {
            Some(p) => Target {
                name: "zero probe errors".into(),
                actual: if net_c.is_some() {
                    format!(
                        "{} errors in {} queries (and {net_errors} during the run on the {ms} ms network)",
                        p.summary.errors, p.summary.queries
                    )
                } else {
                    format!("{} errors in {} queries", p.summary.errors, p.summary.queries)
                },
                met: Some(p.summary.errors == 0 && net_errors == 0 && p.summary.queries > 0),
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
                name: "peak rebuilder RSS <= 256 MB at 1M".into(),
                actual: format!("{:.0} MB", c.peak_rss_mb),
                met: Some(c.peak_rss_mb <= MEMORY_TARGET_MB),
                note: if c.peak_rss_mb <= MEMORY_TARGET_MB {
                    format!("{:.0} MB to spare", MEMORY_TARGET_MB - c.peak_rss_mb)
                } else {
                    format!("missed by {:.0} MB", c.peak_rss_mb - MEMORY_TARGET_MB)
                },
            },
            Some(c) => Target {
                name: "peak rebuilder RSS <= 256 MB at 1M".into(),
                actual: format!(
                    "{:.0} MB at {} doctors",
                    c.peak_rss_mb, self.dataset.doctors
                ),
                met: None,
                note: "applies at 1M doctors (run with --doctors 1000000)".into(),
            },
            None => not_measured("peak rebuilder RSS <= 256 MB at 1M"),
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
        for stage in [&self.s_tcs, &self.s_gmc].into_iter().flatten() {
            let what = if stage.name == "S_tcs" {
                "S_tcs: the TCS sync alone"
            } else {
                "S_gmc: the GMC reads alone"
            };
            let _ = writeln!(
                s,
                "  {:<38} {:>12.0} {:>10.1}  {} records, {:.1} CPU s",
                what,
                stage.records as f64 / stage.secs.max(1e-9),
                stage.secs,
                stage.records,
                stage.cpu_secs()
            );
        }
        if let Some(net) = &self.network {
            if let Some(b) = &net.b_old_path {
                let _ = writeln!(
                    s,
                    "  {:<38} {:>12.1} {:>10.0}  EXTRAPOLATED from {} docs in {:.1} s ({:.2} ms each)",
                    format!("B on the {} ms network", net.latency_ms),
                    b.docs_per_sec,
                    b.extrapolated_secs_for_all,
                    b.sample_docs,
                    b.sample_secs,
                    b.mean_request_ms
                );
            }
            if let Some(c) = &net.c_rebuilder {
                let _ = writeln!(
                    s,
                    "  {:<38} {:>12.0} {:>10.1}  {} docs, peak RSS {:.0} MB",
                    format!("C on the {} ms network", net.latency_ms),
                    c.docs_per_sec,
                    c.wall_secs,
                    c.docs,
                    c.peak_rss_mb
                );
            }
        }
        if let Some(l) = &self.bound {
            let terms: Vec<String> = l
                .terms
                .iter()
                .map(|(t, v)| format!("{t} {v:.1} s"))
                .collect();
            let _ = writeln!(
                s,
                "\n  L (the machine's bound) = {:.1} s, set by {} ({})   E = L/C = {}",
                l.secs,
                l.term,
                terms.join(", "),
                self.efficiency.map_or("n/a".into(), |e| format!("{e:.2}"))
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
        if let Some(net) = &self.network {
            let c_over_b = match (&net.c_rebuilder, &net.b_old_path) {
                (Some(c), Some(b)) if b.docs_per_sec > 0.0 => {
                    format!("{:.0}x", c.docs_per_sec / b.docs_per_sec)
                }
                _ => "n/a".into(),
            };
            let slowdown = match (&net.c_rebuilder, &self.c_rebuilder) {
                (Some(nc), Some(c)) if c.wall_secs > 0.0 => {
                    format!("{:+.1}%", (nc.wall_secs / c.wall_secs - 1.0) * 100.0)
                }
                _ => "n/a".into(),
            };
            let _ = writeln!(
                s,
                "  on the {} ms network: C/B = {c_over_b}   C against loopback = {slowdown}",
                net.latency_ms
            );
        }
        if let Some(q) = &self.c_over_queues {
            s.push_str(&super::queues::summary(q));
        }
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

fn not_measured_because(name: &str, why: &str) -> Target {
    Target {
        name: name.into(),
        actual: "not measured".into(),
        met: None,
        note: why.into(),
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

    /// C again: `docs` in `wall_secs`, against C's `c_secs`.
    fn rerun(docs: u64, wall_secs: f64, c_secs: f64) -> RerunFigures {
        RerunFigures {
            docs_per_sec: docs as f64 / wall_secs,
            docs,
            wall_secs,
            time_over_c: wall_secs / c_secs,
            peak_rss_mb: 100.0,
            probe_errors: 0,
            failures: Vec::new(),
            cpu: CpuUsage::default(),
        }
    }

    fn cpu(secs: f64) -> CpuUsage {
        CpuUsage {
            by_role: vec![("mongo (SecantusDB)".into(), secs), ("other".into(), 99.0)],
            ..CpuUsage::default()
        }
    }

    fn stage(name: &str, secs: f64, cpu_secs: f64) -> Option<StageFigures> {
        Some(StageFigures {
            name: name.into(),
            secs,
            records: 1,
            cpu: cpu(cpu_secs),
        })
    }

    fn target<'a>(r: &'a Report, name: &str) -> &'a Target {
        r.targets
            .iter()
            .find(|t| t.name.starts_with(name))
            .unwrap_or_else(|| panic!("no target {name}: {:?}", r.targets))
    }

    #[test]
    fn the_bound_is_set_by_the_stages_and_e_compares_it_with_c() {
        // C: 200,000 docs at 4,000/s = 50 s.
        let mut r = report(200_000, 20_000.0, 100.0, 4_000.0, 120.0);
        r.a_cpu = Some(cpu(16.0));
        r.s_tcs = stage("S_tcs", 20.0, 30.0);
        r.s_gmc = stage("S_gmc", 30.0, 34.0);
        r.d_cpu = Some(cpu(20.0));
        r.judge();
        // (16 + 30 + 34 + 20) / 2 = 50 s, above every stage alone; "other" is not counted.
        let l = r.bound.clone().unwrap();
        assert_eq!((l.term.as_str(), l.secs), ("cpu", 50.0));
        assert_eq!(r.efficiency, Some(1.0));
        assert_eq!(target(&r, "E = L / C").met, Some(true));
        assert!(r
            .summary()
            .contains("L (the machine's bound) = 50.0 s, set by cpu"));

        // Twice as slow: E = 0.5, and the note says what C would need.
        let mut slow = report(200_000, 20_000.0, 100.0, 2_000.0, 120.0);
        slow.a_cpu = r.a_cpu.clone();
        slow.s_tcs = r.s_tcs.clone();
        slow.s_gmc = r.s_gmc.clone();
        slow.d_cpu = r.d_cpu.clone();
        slow.judge();
        let e = target(&slow, "E = L / C");
        assert_eq!(e.met, Some(false));
        assert!(
            e.note.contains("missed by 0.30: C would need 62.5 s"),
            "{}",
            e.note
        );
    }

    #[test]
    fn without_the_stages_there_is_no_bound_and_the_network_targets_wait() {
        let mut r = report(200_000, 20_000.0, 100.0, 4_000.0, 120.0);
        r.judge();
        assert!(r.bound.is_none());
        assert_eq!(target(&r, "E = L / C").met, None);
        assert_eq!(target(&r, "1 ms network: C at most").met, None);
        assert_eq!(target(&r, "1 ms network: C >= 20x B").met, None);
        assert_eq!(
            target(&r, "peak rebuilder RSS").met,
            None,
            "applies at 1M only"
        );
        assert!(r.summary().contains("EXTRAPOLATED from 2000 docs"));
    }

    #[test]
    fn the_network_targets_compare_c_with_loopback_and_with_b_through_the_proxy() {
        // Loopback C: 50 s. Through the proxy: 57.5 s (+15%), B 280 docs/s.
        let mut r = report(200_000, 20_000.0, 845.0, 4_000.0, 120.0);
        let mut b = r.b_old_path.clone().unwrap();
        b.docs_per_sec = 280.0;
        r.network = Some(NetworkFigures {
            latency_ms: 1,
            b_old_path: Some(b),
            c_rebuilder: Some(rerun(200_000, 57.5, 50.0)),
        });
        r.judge();
        let slower = target(&r, "1 ms network: C at most 10% slower");
        assert_eq!(slower.met, Some(false));
        assert!(slower.actual.starts_with("+15.0%"), "{}", slower.actual);
        assert!(
            slower.note.contains("missed by 5.0 points"),
            "{}",
            slower.note
        );
        let vs_b = target(&r, "1 ms network: C >= 20x B");
        // 3,478 / 280 = 12.4x.
        assert_eq!(vs_b.met, Some(false), "{}", vs_b.actual);
        assert!(vs_b.actual.starts_with("C is 12x B"), "{}", vs_b.actual);
        assert!(vs_b.note.contains("missed by 7.6x"), "{}", vs_b.note);
        assert!(r.summary().contains("on the 1 ms network: C/B = 12x"));
    }

    #[test]
    fn c_over_the_queues_is_reported_beside_c_with_mongodb_reads() {
        // C with MongoDB reads: 50 s; over the queues: 55 s.
        let mut r = report(200_000, 20_000.0, 100.0, 4_000.0, 120.0);
        assert!(!r.summary().contains("over the queues"));
        r.c_over_queues = Some(rerun(200_000, 55.0, 50.0));
        r.judge();
        let summary = r.summary();
        assert!(
            summary.contains(
                "  C with every source over the queues: 200000 documents in 55.0 s = 3636 docs/s \
                 (110% of C's time with MongoDB reads)\n    peak RSS 100 MB, 0 probe errors; "
            ),
            "{summary}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["c_over_queues"]["docs"], 200_000);
        assert_eq!(json["c_over_queues"]["wall_secs"], 55.0);
        assert!(json["c_over_queues"]["time_over_c"].as_f64().unwrap() > 1.09);
    }

    #[test]
    fn at_a_million_the_time_and_memory_targets_say_by_how_much_they_were_missed() {
        // 1,000,000 docs at 2,500/s = 400 s; 306 MB.
        let mut r = report(1_000_000, 20_000.0, 100.0, 2_500.0, 306.0);
        r.judge();
        let time = target(&r, "1M doctors in <= 240 s");
        assert_eq!(time.met, Some(false));
        assert!(time.note.contains("missed by 160 s"), "{}", time.note);
        let memory = target(&r, "peak rebuilder RSS");
        assert_eq!(memory.met, Some(false));
        assert!(memory.note.contains("missed by 50 MB"), "{}", memory.note);
    }
}
