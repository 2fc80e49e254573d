//! Server-side `_reindex` from one generation into another, started with
//! `wait_for_completion=false` and followed through the tasks API until it
//! finishes, so that no HTTP request has to outlive a long copy. A task
//! lookup that fails for a while (a 503, a dropped connection) is retried
//! with the run's retry policy.

use std::time::{Duration, Instant};

use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{SearchClient, SearchError};
use crate::retry::{with_retry, RetryPolicy};
use crate::text::clip;

/// Documents per scroll batch of the copy.
const SCROLL_SIZE: u64 = 5000;

/// What a finished reindex did, and the counts that prove it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReindexReport {
    pub source: String,
    pub dest: String,
    pub task: String,
    pub total: u64,
    pub created: u64,
    pub updated: u64,
    pub took_ms: u64,
    pub polls: u32,
    /// Documents in the source and the destination after a refresh (set by
    /// the engine once the destination is loaded).
    pub source_count: u64,
    pub dest_count: u64,
}

/// How the reindex is followed.
#[derive(Clone, Copy, Debug)]
pub struct ReindexOptions {
    pub poll_interval: Duration,
    /// The copy is given up (and its task cancelled) after this long.
    pub max_wait: Duration,
    /// How the start and each task lookup are retried.
    pub retry: RetryPolicy,
}

impl Default for ReindexOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            max_wait: Duration::from_secs(4 * 3600),
            retry: RetryPolicy::default(),
        }
    }
}

/// Copies every document of `source` into `dest` and waits for the task.
/// Fails if the task reports an error or any failed document. A copy whose
/// only failures are the node turning writes away (429: its write queue
/// full) is made again, whole, with the retry policy's backoff: it
/// overwrites by id, so a second copy is the same copy. When `stop` is
/// cancelled, the task is cancelled on the server and waited for (so that
/// nothing writes into `dest` afterwards), then this fails.
pub async fn reindex(
    client: &SearchClient,
    source: &str,
    dest: &str,
    options: ReindexOptions,
    stop: &CancellationToken,
) -> Result<ReindexReport, SearchError> {
    let mut waits = backon::BackoffBuilder::build(options.retry.backoff());
    loop {
        let why = match reindex_once(client, source, dest, options, stop).await? {
            Ok(report) => return Ok(report),
            Err(why) => why,
        };
        let Some(delay) = waits.next() else {
            return Err(SearchError::Invalid(format!(
                "{why}; still throttled after every retry"
            )));
        };
        warn!(reason = %why, delay_ms = delay.as_millis() as u64, "The reindex was throttled; copying again.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {
                return Err(SearchError::Invalid(format!(
                    "reindex {source} -> {dest} was cancelled on request"
                )))
            }
        }
    }
}

/// One copy; `Ok(Err(why))` when its only failures were throttling.
async fn reindex_once(
    client: &SearchClient,
    source: &str,
    dest: &str,
    options: ReindexOptions,
    stop: &CancellationToken,
) -> Result<Result<ReindexReport, String>, SearchError> {
    let started = Instant::now();
    let body = json!({
        "conflicts": "abort",
        "source": { "index": source, "size": SCROLL_SIZE },
        "dest": { "index": dest, "op_type": "index" }
    });
    let answer = with_retry(&options.retry, "starting the reindex", || {
        client.json(
            Method::Post,
            "/_reindex",
            &[("wait_for_completion", "false"), ("refresh", "false")],
            Some(&body),
        )
    })
    .await?;
    let task = answer["task"]
        .as_str()
        .ok_or_else(|| SearchError::Decode {
            path: "/_reindex".into(),
            message: format!("no task id in {}", clip(&answer.to_string(), 300)),
        })?
        .to_string();
    info!(%source, %dest, %task, "Reindex started.");

    let mut polls = 0;
    let task_path = format!("/_tasks/{task}");
    let mut cancelled = false;
    let finished = loop {
        tokio::select! {
            _ = tokio::time::sleep(options.poll_interval) => {}
            _ = stop.cancelled(), if !cancelled => {
                cancelled = true;
                info!(%task, "Cancelling the reindex task.");
                let _ = client
                    .request(Method::Post, &format!("{task_path}/_cancel"), &[], None)
                    .await;
            }
        }
        polls += 1;
        let state = with_retry(&options.retry, "looking up the reindex task", || {
            client.json(Method::Get, &task_path, &[], None)
        })
        .await?;
        if state["completed"].as_bool() == Some(true) {
            if cancelled {
                return Err(SearchError::Invalid(format!(
                    "reindex {source} -> {dest} (task {task}) was cancelled on request"
                )));
            }
            break state;
        }
        let status = &state["task"]["status"];
        debug!(
            %task,
            total = status["total"].as_u64().unwrap_or(0),
            created = status["created"].as_u64().unwrap_or(0),
            "Reindex in progress."
        );
        if started.elapsed() > options.max_wait {
            let _ = client
                .request(Method::Post, &format!("{task_path}/_cancel"), &[], None)
                .await;
            return Err(SearchError::Invalid(format!(
                "reindex {source} -> {dest} (task {task}) did not finish within {} s; cancelled",
                options.max_wait.as_secs()
            )));
        }
    };
    if only_throttled(&finished) {
        return Ok(Err(format!(
            "reindex {source} -> {dest} (task {task}) had {} documents turned away by a busy node (429)",
            finished["response"]["failures"].as_array().map_or(0, Vec::len)
        )));
    }
    check_finished(source, dest, &task, &finished)?;
    let response = &finished["response"];
    let report = ReindexReport {
        source: source.to_string(),
        dest: dest.to_string(),
        task,
        total: response["total"].as_u64().unwrap_or(0),
        created: response["created"].as_u64().unwrap_or(0),
        updated: response["updated"].as_u64().unwrap_or(0),
        took_ms: started.elapsed().as_millis() as u64,
        polls,
        source_count: 0,
        dest_count: 0,
    };
    info!(
        source = %report.source,
        dest = %report.dest,
        total = report.total,
        created = report.created,
        took_ms = report.took_ms,
        "Reindex finished."
    );
    Ok(Ok(report))
}

/// Whether a finished task failed only because the node turned writes
/// away (every failure a 429 that is not a block).
pub fn only_throttled(finished: &Value) -> bool {
    let Some(failures) = finished["response"]["failures"].as_array() else {
        return false;
    };
    finished.get("error").is_none_or(Value::is_null)
        && !failures.is_empty()
        && failures.iter().all(|f| {
            f["status"].as_u64() == Some(429)
                && f["cause"]["type"].as_str() != Some(crate::search::bulk::classify::BLOCKED)
        })
}

/// Turns an error or failures in a finished task into an error.
pub fn check_finished(
    source: &str,
    dest: &str,
    task: &str,
    finished: &Value,
) -> Result<(), SearchError> {
    if let Some(error) = finished.get("error").filter(|e| !e.is_null()) {
        return Err(SearchError::Invalid(format!(
            "reindex {source} -> {dest} (task {task}) failed: {}",
            clip(&error.to_string(), 1000)
        )));
    }
    let response = &finished["response"];
    if response.is_null() {
        return Err(SearchError::Invalid(format!(
            "reindex {source} -> {dest} (task {task}) finished without a response"
        )));
    }
    let failures = response["failures"].as_array().map_or(0, Vec::len);
    if failures > 0 {
        return Err(SearchError::Invalid(format!(
            "reindex {source} -> {dest} (task {task}) had {failures} failures, first: {}",
            clip(&response["failures"][0].to_string(), 1000)
        )));
    }
    if response["canceled"].as_str().is_some() {
        return Err(SearchError::Invalid(format!(
            "reindex {source} -> {dest} (task {task}) was cancelled: {}",
            response["canceled"]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_finished_task_passes() {
        let done =
            json!({"completed": true, "response": {"total": 3, "created": 3, "failures": []}});
        assert!(check_finished("a", "b", "n:1", &done).is_ok());
    }

    #[test]
    fn a_copy_turned_away_only_by_a_busy_node_is_made_again_and_a_block_is_not() {
        let busy = json!({"completed": true, "response": {"failures": [
            {"id": "1", "status": 429, "cause": {"type": "rejected_execution_exception"}},
            {"id": "2", "status": 429, "cause": {"type": "es_rejected_execution_exception"}}]}});
        assert!(only_throttled(&busy));
        let blocked = json!({"completed": true, "response": {"failures": [
            {"id": "1", "status": 429, "cause": {"type": "cluster_block_exception"}}]}});
        assert!(!only_throttled(&blocked));
        let mixed = json!({"completed": true, "response": {"failures": [
            {"id": "1", "status": 429, "cause": {"type": "rejected_execution_exception"}},
            {"id": "2", "status": 400, "cause": {"type": "mapper_parsing_exception"}}]}});
        assert!(!only_throttled(&mixed));
        assert!(!only_throttled(
            &json!({"completed": true, "response": {"failures": []}})
        ));
    }

    #[test]
    fn failures_errors_and_cancellation_are_errors() {
        let failed = json!({"completed": true, "response": {"total": 3, "created": 2,
            "failures": [{"id": "x", "cause": {"type": "mapper_parsing_exception"}}]}});
        let e = check_finished("a", "b", "n:1", &failed).unwrap_err();
        assert!(e.to_string().contains("1 failures"));
        let error = json!({"completed": true, "error": {"type": "index_not_found_exception"}});
        assert!(check_finished("a", "b", "n:1", &error).is_err());
        let cancelled =
            json!({"completed": true, "response": {"failures": [], "canceled": "by user request"}});
        assert!(check_finished("a", "b", "n:1", &cancelled).is_err());
    }
}
