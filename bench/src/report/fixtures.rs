//! Reports for the tests of [`super::targets`] and [`super::summary`]: one
//! with A, B and C at given rates, and the parts a test adds to it.

use serde_json::Value;

use super::*;
use crate::ceiling::LoadResult;

pub(super) fn report(doctors: usize, a: f64, b: f64, c: f64, rss: f64) -> Report {
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
    let mut report = Report::new(
        "scripts/bench".into(),
        false,
        Machine {
            cores: 2,
            memory_mb: 1,
            opensearch_version: "2.19.6".into(),
            opensearch_heap_mb: 2048,
            git_commit: String::new(),
        },
        Dataset {
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
    );
    report.a_ceiling = Some(CeilingOutcome {
        best: load,
        sweep: Vec::new(),
        sweep_docs: doctors,
    });
    report.b_old_path = Some(OldPathResult {
        index: "bench_oldpath".into(),
        sample_docs: 2000,
        sample_secs: 20.0,
        docs_per_sec: b,
        time_box_secs: 20.0,
        time_boxed: true,
        extrapolated_secs_for_all: doctors as f64 / b,
        all_docs: doctors as u64,
        mean_request_ms: 1000.0 / b,
    });
    report.c_rebuilder = Some(RebuilderFigures {
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
    });
    report
}

/// C again: `docs` in `wall_secs`, against C's `c_secs`.
pub(super) fn rerun(docs: u64, wall_secs: f64, c_secs: f64) -> RerunFigures {
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

pub(super) fn cpu(secs: f64) -> CpuUsage {
    CpuUsage {
        by_role: vec![("mongo (SecantusDB)".into(), secs), ("other".into(), 99.0)],
        ..CpuUsage::default()
    }
}

pub(super) fn stage(name: &str, secs: f64, cpu_secs: f64) -> Option<StageFigures> {
    Some(StageFigures {
        name: name.into(),
        secs,
        records: 1,
        cpu: cpu(cpu_secs),
    })
}

pub(super) fn target<'a>(r: &'a Report, name: &str) -> &'a Target {
    r.targets
        .iter()
        .find(|t| t.name.starts_with(name))
        .unwrap_or_else(|| panic!("no target {name}: {:?}", r.targets))
}
