//! The classification of a `_bulk` answer, item by item: written,
//! superseded (an external version conflict), to be retried (429, 5xx, an
//! item missing or answered for another id) or failed for good, with the
//! reason. Pure functions, tested from literal JSON.

use serde_json::Value;

use crate::retry::Retriable;
use crate::search::client::SearchError;
use crate::text::clip;

/// The error type OpenSearch gives a write refused by an index or cluster
/// block (`index.blocks.write`, `read_only_allow_delete` from the
/// flood-stage watermark, a cluster-wide block).
pub const BLOCKED: &str = "cluster_block_exception";

/// The kind of an item OpenSearch did not take through every retry.
pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// Whether a failure of kind `kind` with `reason` is a node leaving or the
/// cluster moving shards after one left: the write may land once the
/// cluster has settled (a replica promoted, the shard relocated, a cluster
/// manager elected), whatever status it was answered with (a missing shard
/// answers 404, a departed node 500). Such an item is retried, never failed.
pub fn node_departure(kind: &str, reason: &str) -> bool {
    const KINDS: [&str; 12] = [
        "node_not_connected_exception",
        "node_disconnected_exception",
        "node_closed_exception",
        "connect_transport_exception",
        "receive_timeout_transport_exception",
        "no_shard_available_action_exception",
        "unavailable_shards_exception",
        "shard_not_found_exception",
        "primary_missing_action_exception",
        "illegal_index_shard_state_exception",
        "index_shard_closed_exception",
        "retry_on_primary_exception",
    ];
    // The blocks a cluster sets on itself while it has no elected cluster
    // manager or has not recovered its state (SERVICE_UNAVAILABLE), unlike
    // an index's write block or the flood stage's.
    KINDS.contains(&kind)
        || (kind == BLOCKED
            && ["no cluster-manager", "no master", "state not recovered"]
                .iter()
                .any(|r| reason.contains(r)))
}

/// Why a failure of kind `kind` (an OpenSearch error type, or
/// [`RETRIES_EXHAUSTED`]) is the index's and not the document's, in words:
/// a block, the index gone, OpenSearch not answering. `None`: the document
/// (or change) itself was refused. The bulk load stops on such a failure
/// and the live applier waits on it; neither dead-letters it.
pub fn index_refusal(kind: &str, reason: &str) -> Option<&'static str> {
    Some(match kind {
        BLOCKED if reason.contains("flood-stage") => {
            "OpenSearch made the index read-only: the node's disk passed the flood-stage watermark (free disk space; OpenSearch lifts the block itself)"
        }
        BLOCKED if reason.contains("index write") => {
            "a write block is set on the index (index.blocks.write)"
        }
        BLOCKED => "the index or the cluster is blocked for writes",
        "index_not_found_exception" => "the index is gone (deleted while it was written)",
        RETRIES_EXHAUSTED => {
            "OpenSearch did not take the writes through every retry (down, or overloaded for longer than the retry policy lasts)"
        }
        _ => return None,
    })
}

/// What was sent at one position of a request, for the classification.
#[derive(Clone, Copy, Debug)]
pub struct SentItem<'a> {
    pub id: &'a str,
    pub versioned: bool,
}

/// The classification of one item of one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemVerdict {
    Written,
    Superseded,
    /// May succeed later: 429, 5xx, no answer for it.
    Retry {
        status: u16,
        reason: String,
    },
    /// Permanent; `kind` is the reason's short name for counting.
    Failed {
        status: u16,
        kind: String,
        reason: String,
    },
}

/// Classifies the answer to a `_bulk` request: one verdict per sent item, in
/// order. Items are matched by position and verified by `_id`; an item the
/// answer lacks, or answers for another id, is retried, never lost.
pub fn classify_response(sent: &[SentItem<'_>], status: u16, body: &Value) -> Vec<ItemVerdict> {
    let kind = body["error"]["type"].as_str().unwrap_or("");
    let reason = body["error"]["reason"].as_str().unwrap_or("");
    let blocked = kind == BLOCKED && !node_departure(kind, reason);
    if (status == 429 || status >= 500) && !blocked {
        let reason = format!("request answered {status}: {}", error_summary(body));
        return sent
            .iter()
            .map(|_| ItemVerdict::Retry {
                status,
                reason: reason.clone(),
            })
            .collect();
    }
    if !(200..300).contains(&status) {
        let kind = body["error"]["type"]
            .as_str()
            .map_or_else(|| format!("request_rejected_{status}"), str::to_string);
        let reason = format!("request answered {status}: {}", error_summary(body));
        return sent
            .iter()
            .map(|_| ItemVerdict::Failed {
                status,
                kind: kind.clone(),
                reason: reason.clone(),
            })
            .collect();
    }
    let answered = body["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    sent.iter()
        .enumerate()
        .map(|(i, item)| classify_item(item, answered.get(i)))
        .collect()
}

fn classify_item(sent: &SentItem<'_>, answered: Option<&Value>) -> ItemVerdict {
    let retry = |reason: &str| ItemVerdict::Retry {
        status: 0,
        reason: reason.to_string(),
    };
    let Some(answered) = answered else {
        return retry("missing from the bulk answer");
    };
    let Some(op) = answered.as_object().and_then(|o| o.values().next()) else {
        return retry("malformed item in the bulk answer");
    };
    if op["_id"].as_str() != Some(sent.id) {
        return retry("the bulk answer names another _id at this position");
    }
    let Some(status) = op["status"].as_u64().map(|s| s as u16) else {
        return retry("no status for the item in the bulk answer");
    };
    let kind = op["error"]["type"].as_str().unwrap_or("");
    if !(200..300).contains(&status)
        && node_departure(kind, op["error"]["reason"].as_str().unwrap_or(""))
    {
        return ItemVerdict::Retry {
            status,
            reason: error_summary(op),
        };
    }
    match status {
        200..=299 => ItemVerdict::Written,
        409 if sent.versioned && kind == "version_conflict_engine_exception" => {
            ItemVerdict::Superseded
        }
        // A block on the index or the cluster (the flood stage's read-only
        // block answers 429) is the index's state, not load: it fails,
        // and the caller decides (see `index_refusal`).
        429 | 500.. if kind != BLOCKED => ItemVerdict::Retry {
            status,
            reason: error_summary(op),
        },
        _ => ItemVerdict::Failed {
            status,
            kind: if kind.is_empty() {
                format!("http_{status}")
            } else {
                kind.to_string()
            },
            reason: error_summary(op),
        },
    }
}

fn error_summary(body: &Value) -> String {
    match &body["error"] {
        Value::Object(e) => format!(
            "{}: {}",
            e.get("type").and_then(Value::as_str).unwrap_or("error"),
            e.get("reason").and_then(Value::as_str).unwrap_or("")
        ),
        Value::Null => clip(&body.to_string(), 300).into_owned(),
        other => clip(&other.to_string(), 300).into_owned(),
    }
}

/// A request that got no usable answer: retried unless the error says a
/// retry cannot help.
pub(super) fn request_error_verdicts(
    sent: &[SentItem<'_>],
    error: &SearchError,
) -> Vec<ItemVerdict> {
    let retriable = error.is_retriable() || matches!(error, SearchError::Decode { .. });
    sent.iter()
        .map(|_| {
            if retriable {
                ItemVerdict::Retry {
                    status: error.status().unwrap_or(0),
                    reason: error.to_string(),
                }
            } else {
                ItemVerdict::Failed {
                    status: error.status().unwrap_or(0),
                    kind: "request_error".into(),
                    reason: error.to_string(),
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sent<'a>(ids: &[&'a str], versioned: bool) -> Vec<SentItem<'a>> {
        ids.iter().map(|id| SentItem { id, versioned }).collect()
    }

    #[test]
    fn a_clean_answer_writes_every_item() {
        let body = json!({"errors": false, "items": [
            {"index": {"_id": "1", "status": 201}},
            {"index": {"_id": "2", "status": 200}}
        ]});
        let v = classify_response(&sent(&["1", "2"], false), 200, &body);
        assert_eq!(v, vec![ItemVerdict::Written, ItemVerdict::Written]);
    }

    #[test]
    fn errors_true_with_mixed_items_retries_only_the_retriable_ones() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "1", "status": 201}},
            {"index": {"_id": "2", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}}},
            {"index": {"_id": "3", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [tcsPersonId] of type [long]"}}},
            {"index": {"_id": "4", "status": 503, "error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}}}
        ]});
        let v = classify_response(&sent(&["1", "2", "3", "4"], false), 200, &body);
        assert_eq!(v[0], ItemVerdict::Written);
        assert!(
            matches!(&v[1], ItemVerdict::Retry { status: 429, reason } if reason.contains("es_rejected_execution_exception"))
        );
        assert!(
            matches!(&v[2], ItemVerdict::Failed { status: 400, kind, reason }
            if kind == "mapper_parsing_exception" && reason.contains("tcsPersonId"))
        );
        assert!(matches!(&v[3], ItemVerdict::Retry { status: 503, .. }));
    }

    #[test]
    fn a_blocked_index_fails_for_good_even_when_answered_429() {
        let flood = json!({"errors": true, "items": [
            {"index": {"_id": "1", "status": 429, "error": {"type": "cluster_block_exception", "reason": "index [m] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}},
            {"index": {"_id": "2", "status": 403, "error": {"type": "cluster_block_exception", "reason": "index [m] blocked by: [FORBIDDEN/8/index write (api)];"}}}
        ]});
        let v = classify_response(&sent(&["1", "2"], false), 200, &flood);
        assert!(
            matches!(&v[0], ItemVerdict::Failed { status: 429, kind, reason } if kind == BLOCKED && reason.contains("flood-stage"))
        );
        assert!(matches!(&v[1], ItemVerdict::Failed { status: 403, kind, .. } if kind == BLOCKED));
        let whole = json!({"error": {"type": "cluster_block_exception", "reason": "blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark]"}, "status": 429});
        assert!(matches!(
            &classify_response(&sent(&["1"], false), 429, &whole)[0],
            ItemVerdict::Failed { status: 429, kind, .. } if kind == BLOCKED
        ));
    }

    #[test]
    fn a_node_leaving_is_retried_whatever_its_status() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "1", "status": 404, "error": {"type": "shard_not_found_exception", "reason": "no such shard"}}},
            {"index": {"_id": "2", "status": 500, "error": {"type": "node_not_connected_exception", "reason": "[opensearch-c2][127.0.0.1:9312] Node not connected"}}},
            {"index": {"_id": "3", "status": 503, "error": {"type": "no_shard_available_action_exception", "reason": "No shard available"}}},
            {"index": {"_id": "4", "status": 503, "error": {"type": "cluster_block_exception", "reason": "blocked by: [SERVICE_UNAVAILABLE/2/no cluster-manager];"}}},
            {"index": {"_id": "5", "status": 404, "error": {"type": "index_not_found_exception", "reason": "no such index [m]"}}}
        ]});
        let v = classify_response(&sent(&["1", "2", "3", "4", "5"], false), 200, &body);
        for (i, verdict) in v[..4].iter().enumerate() {
            assert!(
                matches!(verdict, ItemVerdict::Retry { .. }),
                "item {i}: {verdict:?}"
            );
        }
        assert!(matches!(&v[4], ItemVerdict::Failed { status: 404, .. }));
        let whole = json!({"error": {"type": "cluster_block_exception", "reason": "blocked by: [SERVICE_UNAVAILABLE/2/no cluster-manager];"}, "status": 503});
        assert!(matches!(
            &classify_response(&sent(&["1"], false), 503, &whole)[0],
            ItemVerdict::Retry { status: 503, .. }
        ));
        assert!(node_departure(
            BLOCKED,
            "blocked by: [SERVICE_UNAVAILABLE/2/no cluster-manager];"
        ));
        assert!(!node_departure(
            BLOCKED,
            "blocked by: [FORBIDDEN/8/index write (api)];"
        ));
    }

    #[test]
    fn an_external_version_conflict_is_superseded_not_failed() {
        let body = json!({"errors": true, "items": [
            {"index": {"_id": "7", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "[7]: version conflict, current version [5] is higher than the one provided [3]"}}}
        ]});
        assert_eq!(
            classify_response(&sent(&["7"], true), 200, &body),
            vec![ItemVerdict::Superseded]
        );
        // Without a version we sent, a conflict is a real failure.
        assert!(matches!(
            &classify_response(&sent(&["7"], false), 200, &body)[0],
            ItemVerdict::Failed { status: 409, .. }
        ));
    }

    #[test]
    fn a_short_item_array_retries_the_missing_items() {
        let body = json!({"errors": false, "items": [
            {"index": {"_id": "1", "status": 201}}
        ]});
        let v = classify_response(&sent(&["1", "2", "3"], false), 200, &body);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], ItemVerdict::Written);
        assert!(matches!(v[1], ItemVerdict::Retry { status: 0, .. }));
        assert!(matches!(v[2], ItemVerdict::Retry { status: 0, .. }));
    }

    #[test]
    fn an_answer_for_another_id_at_a_position_is_retried() {
        let body = json!({"errors": false, "items": [
            {"index": {"_id": "2", "status": 201}},
            {"index": {"_id": "1", "status": 201}}
        ]});
        let v = classify_response(&sent(&["1", "2"], false), 200, &body);
        assert!(v.iter().all(|x| matches!(x, ItemVerdict::Retry { .. })));
    }

    #[test]
    fn a_2xx_without_items_retries_everything() {
        let v = classify_response(&sent(&["1", "2"], false), 200, &json!({"took": 3}));
        assert!(v.iter().all(|x| matches!(x, ItemVerdict::Retry { .. })));
        let v = classify_response(&sent(&["1"], false), 200, &Value::Null);
        assert!(matches!(v[0], ItemVerdict::Retry { .. }));
    }

    #[test]
    fn whole_request_429_and_5xx_are_retried_and_other_4xx_fail() {
        let busy = json!({"error": {"type": "rejected_execution_exception", "reason": "rejected"}, "status": 429});
        let v = classify_response(&sent(&["1", "2"], false), 429, &busy);
        assert!(v
            .iter()
            .all(|x| matches!(x, ItemVerdict::Retry { status: 429, .. })));
        let v = classify_response(
            &sent(&["1"], false),
            502,
            &Value::String("Bad Gateway".into()),
        );
        assert!(matches!(v[0], ItemVerdict::Retry { status: 502, .. }));
        let bad = json!({"error": {"type": "illegal_argument_exception", "reason": "Malformed action/metadata line [1]"}, "status": 400});
        let v = classify_response(&sent(&["1"], false), 400, &bad);
        assert!(
            matches!(&v[0], ItemVerdict::Failed { status: 400, kind, .. } if kind == "illegal_argument_exception")
        );
    }
}
