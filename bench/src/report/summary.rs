//! A [`Report`] as text for people: the figures of every path, the bound
//! and the efficiency, the ratios, where C's time and the machine's cores
//! went, the probe, and the targets with their notes and the warnings.

use std::fmt::Write as _;

use super::Report;

impl Report {
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
            s.push_str(&crate::queues::summary(q));
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

#[cfg(test)]
mod tests {
    use crate::report::fixtures::{report, rerun};

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
}
