//! Whether generations are green: every shard's primary and replicas
//! allocated and started. The finish of a run waits for it before the
//! aliases move ([`wait_green`]); when the wait runs out, the shards that
//! are not started are listed with the reason OpenSearch gives for each
//! (`_cluster/allocation/explain`), so that a refused promotion says why.

use std::time::{Duration, Instant};

use opensearch::http::Method;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::client::{SearchClient, SearchError};
use crate::retry::Retriable;
use crate::text::clip;

/// The longest single `wait_for_status` request (under any request timeout).
const MAX_HEALTH_WAIT: Duration = Duration::from_secs(30);
/// Unassigned shards explained one by one, at most (the rest are counted).
const MAX_EXPLAINED: usize = 4;

/// The health of some generations after a wait.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationHealth {
    /// `green`, `yellow`, `red`, or `unknown` when no node answered.
    pub status: String,
    /// Seconds waited.
    pub waited_secs: u64,
    /// Every shard copy that is not started, with OpenSearch's reason.
    pub not_started: Vec<ShardProblem>,
}

impl GenerationHealth {
    pub fn is_green(&self) -> bool {
        self.status == "green"
    }

    /// The shards not started and why, in one line.
    pub fn describe(&self) -> String {
        if self.not_started.is_empty() {
            return format!("cluster health {}", self.status);
        }
        let listed: Vec<String> = self
            .not_started
            .iter()
            .map(ShardProblem::describe)
            .collect();
        format!("cluster health {}: {}", self.status, listed.join("; "))
    }
}

/// One shard copy that is not started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardProblem {
    pub index: String,
    pub shard: u32,
    pub primary: bool,
    /// `UNASSIGNED`, `INITIALIZING`, `RELOCATING`.
    pub state: String,
    /// OpenSearch's words: the unassigned reason and the allocation
    /// deciders' explanation (empty when not explained).
    pub reason: String,
}

impl ShardProblem {
    fn describe(&self) -> String {
        let copy = if self.primary { "primary" } else { "replica" };
        let mut text = format!("{}[{}] {copy} {}", self.index, self.shard, self.state);
        if !self.reason.is_empty() {
            text.push_str(&format!(" ({})", self.reason));
        }
        text
    }
}

/// Waits up to `timeout` for `indices` to be green. A node that does not
/// answer meanwhile is waited through (the client tries the others). At
/// the end, the copies not started are listed and explained.
pub async fn wait_green(
    client: &SearchClient,
    indices: &[&str],
    timeout: Duration,
) -> Result<GenerationHealth, SearchError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let path = format!("/_cluster/health/{}", indices.join(","));
    let mut status = "unknown".to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = left.min(MAX_HEALTH_WAIT).max(Duration::from_secs(1));
        let wait_text = format!("{}s", wait.as_secs());
        match client
            .request(
                Method::Get,
                &path,
                &[("wait_for_status", "green"), ("timeout", &wait_text)],
                None,
            )
            .await
        {
            // A wait that ran out answers 408, with the health as it is.
            Ok((200 | 408, health)) => {
                status = health["status"].as_str().unwrap_or("unknown").to_string();
                if status == "green" {
                    let waited_secs = started.elapsed().as_secs();
                    info!(indices = %indices.join(","), waited_secs, "Generations are green.");
                    return Ok(GenerationHealth {
                        status,
                        waited_secs,
                        not_started: Vec::new(),
                    });
                }
            }
            // A node gone, no cluster manager for a moment: waited through.
            Ok((answered, health)) if answered == 429 || answered >= 500 => {
                warn!(status = answered, answer = %clip(&health.to_string(), 300), "Cluster health did not answer; waiting on.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok((answered, health)) => {
                return Err(SearchError::Status {
                    method: "GET".into(),
                    path,
                    status: answered,
                    body: clip(&health.to_string(), 2000).into_owned(),
                })
            }
            Err(e) if e.is_retriable() => {
                warn!(error = %e, "Cluster health did not answer; waiting on.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let not_started = not_started(client, indices).await?;
    Ok(GenerationHealth {
        status,
        waited_secs: started.elapsed().as_secs(),
        not_started,
    })
}

/// Every shard copy of `indices` that is not started, the unassigned ones
/// explained by `_cluster/allocation/explain`.
pub async fn not_started(
    client: &SearchClient,
    indices: &[&str],
) -> Result<Vec<ShardProblem>, SearchError> {
    let rows = client
        .json(
            Method::Get,
            &format!("/_cat/shards/{}", indices.join(",")),
            &[
                ("format", "json"),
                ("h", "index,shard,prirep,state,node,unassigned.reason"),
            ],
            None,
        )
        .await?;
    let mut out = Vec::new();
    for row in rows.as_array().into_iter().flatten() {
        let Some(mut problem) = shard_problem(row) else {
            continue;
        };
        if problem.state == "UNASSIGNED" && out.len() < MAX_EXPLAINED {
            let body =
                json!({"index": problem.index, "shard": problem.shard, "primary": problem.primary});
            match client
                .json(
                    Method::Post,
                    "/_cluster/allocation/explain",
                    &[],
                    Some(&body),
                )
                .await
            {
                Ok(explained) => {
                    let words = explanation(&explained);
                    if !words.is_empty() {
                        problem.reason = format!("{}: {words}", problem.reason);
                    }
                }
                Err(e) => warn!(error = %e, "Could not explain an unassigned shard."),
            }
        }
        out.push(problem);
    }
    Ok(out)
}

/// A `_cat/shards` row that is not a started copy.
fn shard_problem(row: &Value) -> Option<ShardProblem> {
    let state = row["state"].as_str()?;
    if state == "STARTED" {
        return None;
    }
    let field = |k: &str| row[k].as_str().unwrap_or("").to_string();
    let mut reason = field("unassigned.reason");
    if state != "UNASSIGNED" {
        reason = format!("on {}", field("node"));
    }
    Some(ShardProblem {
        index: field("index"),
        shard: field("shard").parse().unwrap_or(0),
        primary: field("prirep") == "p",
        state: state.to_string(),
        reason,
    })
}

/// OpenSearch's explanation of an unassigned shard, in one line: its
/// overall explanation and the first refusing decider of each node.
fn explanation(explained: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(text) = explained["allocate_explanation"].as_str() {
        parts.push(text.to_string());
    }
    for node in explained["node_allocation_decisions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let refusal = node["deciders"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["decision"] == "NO");
        if let Some(decider) = refusal {
            parts.push(format!(
                "{}: {}",
                node["node_name"].as_str().unwrap_or("a node"),
                clip(decider["explanation"].as_str().unwrap_or(""), 200)
            ));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unassigned_replica_is_described_with_the_deciders_reasons() {
        let row = json!({"index": "m-1", "shard": "0", "prirep": "r", "state": "UNASSIGNED", "node": null, "unassigned.reason": "NODE_LEFT"});
        let mut problem = shard_problem(&row).unwrap();
        let explained = json!({
            "index": "m-1", "shard": 0, "primary": false, "current_state": "unassigned",
            "unassigned_info": {"reason": "NODE_LEFT"},
            "can_allocate": "no",
            "allocate_explanation": "cannot allocate because allocation is not permitted to any of the nodes",
            "node_allocation_decisions": [
                {"node_name": "opensearch-c1", "deciders": [
                    {"decider": "max_retry", "decision": "YES", "explanation": "fine"},
                    {"decider": "same_shard", "decision": "NO", "explanation": "a copy of this shard is already allocated to this node [[m-1][0], node[x], [P], s[STARTED]]"}
                ]}
            ]
        });
        problem.reason = format!("{}: {}", problem.reason, explanation(&explained));
        let health = GenerationHealth {
            status: "yellow".into(),
            waited_secs: 10,
            not_started: vec![problem],
        };
        let text = health.describe();
        assert!(
            text.starts_with(
                "cluster health yellow: m-1[0] replica UNASSIGNED (NODE_LEFT: cannot allocate"
            ),
            "{text}"
        );
        assert!(
            text.contains("opensearch-c1: a copy of this shard is already allocated"),
            "{text}"
        );
        assert!(!text.contains("fine"), "{text}");
        assert!(!health.is_green());
    }

    #[test]
    fn started_copies_are_not_problems_and_recovering_ones_name_their_node() {
        let started =
            json!({"index": "m", "shard": "0", "prirep": "p", "state": "STARTED", "node": "c1"});
        assert_eq!(shard_problem(&started), None);
        let recovering = json!({"index": "m", "shard": "1", "prirep": "r", "state": "INITIALIZING", "node": "opensearch-c3"});
        let p = shard_problem(&recovering).unwrap();
        assert_eq!(p.describe(), "m[1] replica INITIALIZING (on opensearch-c3)");
    }
}
