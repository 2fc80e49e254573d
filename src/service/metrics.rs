//! `/metrics` in the Prometheus text format, through the `metrics` facade
//! and its Prometheus exporter. Counters and the bulk latency histogram are
//! recorded where the work happens (the bulk writer, the runner, the
//! schedule); the gauges that describe the whole deployment (a run in
//! progress on any replica, the last run's phases and rejects, the last
//! success, the live generation's age) are read from MongoDB and OpenSearch
//! at each scrape, so every replica answers the same.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::warn;

use crate::rebuild::engine::Engine;
use crate::rebuild::record::{RunHistory, RunOutcome, RunRecord};
use crate::search::generations::generation_time;
use crate::search::Family;
use crate::state::lease::{lease_collection, read_lease, REBUILD_LEASE};
use crate::telemetry::metric;

/// Bucket bounds of the bulk request latency, in seconds.
const BULK_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder; call once, at service start.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(metric::BULK_REQUEST_SECONDS.to_string()),
            &BULK_BUCKETS,
        )?
        .install_recorder()?;
    metrics::describe_counter!(
        metric::DOCUMENTS_WRITTEN,
        "Documents the bulk writer of this process wrote."
    );
    metrics::describe_counter!(metric::RETRIED_ITEMS, "Bulk item sends beyond the first.");
    metrics::describe_counter!(
        metric::THROTTLED_ANSWERS,
        "Bulk answers that carried a 429."
    );
    metrics::describe_histogram!(
        metric::BULK_REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Seconds per _bulk request."
    );
    metrics::describe_counter!(
        metric::SCHEDULE_SKIPPED,
        "Scheduled starts skipped because a run held the lease."
    );
    metrics::describe_counter!(metric::RUNS_STARTED, "Runs this process started.");
    metrics::describe_gauge!(
        metric::RUN_IN_PROGRESS,
        "1 while a run or rollback of any replica holds the lease."
    );
    metrics::describe_gauge!(
        metric::LAST_RUN_PHASE_SECONDS,
        metrics::Unit::Seconds,
        "Seconds each phase of the last run took."
    );
    metrics::describe_gauge!(
        metric::LAST_RUN_REJECTS,
        "Rejects of the last run, by reason."
    );
    metrics::describe_gauge!(
        metric::LAST_RUN_DOCUMENTS_WRITTEN,
        "Documents the last run wrote."
    );
    metrics::describe_gauge!(
        metric::LAST_SUCCESS_END,
        metrics::Unit::Seconds,
        "Unix time the last successful run ended."
    );
    metrics::describe_gauge!(
        metric::LIVE_GENERATION_AGE,
        metrics::Unit::Seconds,
        "Seconds since the live master generation was created."
    );
    // Present from the first scrape, before anything counted.
    metrics::counter!(metric::DOCUMENTS_WRITTEN).increment(0);
    metrics::counter!(metric::SCHEDULE_SKIPPED).increment(0);
    Ok(handle)
}

/// A run of this process started.
pub fn run_started(trigger: &str) {
    metrics::counter!(metric::RUNS_STARTED, "trigger" => trigger.to_string()).increment(1);
}

/// A scheduled start was skipped.
pub fn schedule_skipped() {
    metrics::counter!(metric::SCHEDULE_SKIPPED).increment(1);
}

/// Refreshes the gauges that describe the deployment, then renders.
pub async fn render(
    handle: &PrometheusHandle,
    history: &RunHistory,
    mongo: &mongodb::Client,
    settings: &crate::config::Settings,
    engine: &Engine,
) -> String {
    let timeout = Duration::from_millis(settings.service.ready_timeout_ms.max(100));
    let leases = lease_collection(mongo, &settings.mongodb);
    let lease = match tokio::time::timeout(timeout, read_lease(&leases, REBUILD_LEASE)).await {
        Ok(Ok(lease)) => Some(lease),
        _ => {
            warn!("Could not read the lease for /metrics.");
            None
        }
    };
    match tokio::time::timeout(timeout, history.recent(20)).await {
        Ok(Ok(runs)) => {
            if let Some(lease) = lease {
                let running = runs.first().is_some_and(|r| r.is_running(lease.as_ref()));
                metrics::gauge!(metric::RUN_IN_PROGRESS).set(if running { 1.0 } else { 0.0 });
            }
            record_runs(&runs);
        }
        _ => warn!("Could not read the run history for /metrics."),
    }
    match tokio::time::timeout(timeout, engine.live_generations()).await {
        Ok(Ok((Some(master), _))) => {
            if let Some(created) = generation_time(&settings.names, Family::Master, &master) {
                let age = chrono::Utc::now().naive_utc() - created;
                metrics::gauge!(metric::LIVE_GENERATION_AGE)
                    .set(age.num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        Ok(Ok(_)) => {}
        _ => warn!("Could not read the live generation for /metrics."),
    }
    handle.render()
}

/// The last-run gauges from the newest finished runs.
fn record_runs(runs: &[RunRecord]) {
    // The newest run that ended having done something (not a refused attempt).
    let last = runs
        .iter()
        .find(|r| !matches!(r.outcome, RunOutcome::Running | RunOutcome::Refused));
    if let Some(last) = last {
        for phase in &last.phases {
            if let Some(ms) = phase.duration_ms {
                metrics::gauge!(metric::LAST_RUN_PHASE_SECONDS, "phase" => phase.phase.as_str())
                    .set(ms as f64 / 1000.0);
            }
        }
        for (reason, n) in &last.rejects {
            metrics::gauge!(metric::LAST_RUN_REJECTS, "reason" => reason.clone()).set(*n as f64);
        }
        metrics::gauge!(metric::LAST_RUN_DOCUMENTS_WRITTEN).set(last.bulk.written as f64);
        let c = &last.catch_up;
        metrics::gauge!(metric::LAST_RUN_REPLAYED).set(c.replayed as f64);
        metrics::gauge!(metric::LAST_RUN_PAUSE_BACKLOG).set(c.backlog_at_pause as f64);
        metrics::gauge!(metric::LAST_RUN_PAUSED_MS).set(c.paused_ms as f64);
    }
    let last_success = runs
        .iter()
        .find(|r| r.outcome == RunOutcome::Succeeded)
        .and_then(|r| r.ended_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    if let Some(end) = last_success {
        metrics::gauge!(metric::LAST_SUCCESS_END).set(end.timestamp_millis() as f64 / 1000.0);
    }
}
