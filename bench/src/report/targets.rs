//! The targets of issues 5 and 11 judged against a [`Report`]'s
//! measurements (printed, never asserted), with the ratios between the
//! paths and the machine's bound `L` and efficiency `E = L / C`.

use super::{Ratios, Report, Target};
use crate::round3;
use crate::stages::{bound, total_cpu, StageFigures};

/// Peak memory target of the rebuilder process, at 1M doctors.
pub const MEMORY_TARGET_MB: f64 = 256.0;
pub const MEMORY_TARGET_DOCTORS: usize = 1_000_000;

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
    use crate::report::fixtures::{cpu, report, rerun, stage, target};
    use crate::report::NetworkFigures;

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
