//! D, server-side `_reindex`: the node copies the ceiling's index into a
//! fresh one with the build settings, as a task polled through the tasks
//! API. For reference only: it reads from an index the node already holds.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::round3;
use rebuilder::search::SearchClient;

#[derive(Clone, Debug, Serialize)]
pub struct ReindexResult {
    pub source: String,
    pub dest: String,
    pub docs: u64,
    /// From submitting the task to seeing it completed.
    pub wall_secs: f64,
    /// The task's own `took`.
    pub took_secs: f64,
    /// Documents per second over `took`.
    pub docs_per_sec: f64,
}

/// Reindexes `source` (refreshed first) into `dest` (which must exist).
pub async fn run(
    client: &SearchClient,
    source: &str,
    dest: &str,
    timeout: Duration,
) -> anyhow::Result<ReindexResult> {
    super::indices::refresh(client, source).await?;
    let body = json!({"source": {"index": source, "size": 5000}, "dest": {"index": dest}});
    let started = Instant::now();
    let answer = client
        .json(
            Method::Post,
            "/_reindex",
            &[("wait_for_completion", "false")],
            Some(&body),
        )
        .await
        .context("while starting _reindex")?;
    let task = answer["task"]
        .as_str()
        .with_context(|| format!("_reindex answered without a task: {answer}"))?
        .to_string();
    let response = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = client
            .json(Method::Get, &format!("/_tasks/{task}"), &[], None)
            .await
            .with_context(|| format!("while polling task {task}"))?;
        if status["completed"] == Value::Bool(true) {
            if let Some(error) = status.get("error") {
                bail!("_reindex task {task} failed: {error}");
            }
            break status["response"].clone();
        }
        if started.elapsed() > timeout {
            let _ = client
                .request(Method::Post, &format!("/_tasks/{task}/_cancel"), &[], None)
                .await;
            bail!(
                "_reindex task {task} did not finish in {} s",
                timeout.as_secs()
            );
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let failures = response["failures"].as_array().map_or(0, Vec::len);
    if failures > 0 {
        bail!("_reindex of {source} reported {failures} failures: {response}");
    }
    let docs =
        response["created"].as_u64().unwrap_or(0) + response["updated"].as_u64().unwrap_or(0);
    let took = response["took"].as_f64().unwrap_or(wall * 1000.0) / 1000.0;
    Ok(ReindexResult {
        source: source.to_string(),
        dest: dest.to_string(),
        docs,
        wall_secs: round3(wall),
        took_secs: round3(took),
        docs_per_sec: round3(docs as f64 / took.max(1e-9)),
    })
}
