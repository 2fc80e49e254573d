//! Partial updates of master documents in one `_bulk` request per batch, in
//! order: the live applier sends them through the write alias (with
//! `require_alias`, so a missing alias is an error and never a new concrete
//! index), a rebuild's catch-up to its new generation by name. Items for the
//! same document are applied in request order by the shard; when some item
//! must be retried (429, 5xx), the batch is sent again from the first such
//! item on, so no later change of a doctor is overtaken by an earlier one.
//! A missing document for an update that only applies to present ones (or
//! a delete of one already gone) is not a failure.
//!
//! The count of documents a batch changed is kept apart from the results:
//! an item after the first retriable one may already have been applied
//! (another shard took it) and is sent again only for order, when an upsert
//! that created its document answers `updated` or `noop`. So every
//! `created` and `deleted` of every answer counts, whichever attempt it
//! came in, while each item's result is its last attempt's. A request
//! whose answer is lost (a dropped connection, a timeout) may have applied
//! items that no answer reports; that is beyond what the answers can count.

use opensearch::http::Method;
use serde_json::{json, Value};
use tracing::warn;

use super::client::{SearchClient, SearchError};
use crate::domain::change::{leave_gmc_script, leave_tcs_script, merge_tcs_script};
use crate::domain::DocUpdate;
use crate::retry::RetryPolicy;
use crate::search::bulk::classify::{index_refusal, node_departure, BLOCKED, RETRIES_EXHAUSTED};
use crate::text::clip;

/// One document update to send.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateItem {
    pub id: String,
    pub update: DocUpdate,
}

/// What happened to one update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateResult {
    Created,
    Updated,
    Deleted,
    /// Nothing to do (the document was absent, or already as asked).
    Unchanged,
    /// Refused for good: the reason's short name (OpenSearch's error type,
    /// or `retries_exhausted`) and the reason in words.
    Failed {
        kind: String,
        reason: String,
    },
}

/// The results of one batch, in order, with what they did to the count of
/// documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateReport {
    /// Each item's final result (its last attempt's), in order.
    pub results: Vec<UpdateResult>,
    /// Documents created minus documents deleted by every operation any
    /// answer reports applied, in every attempt: not derivable from
    /// `results`, where a re-sent upsert that created its document in an
    /// earlier attempt answers `updated`.
    pub net: i64,
    pub requests: u64,
}

impl UpdateReport {
    /// Documents created minus documents deleted.
    pub fn net_documents(&self) -> i64 {
        self.net
    }

    /// Takes the answer to a request that carried `items[from..]`
    /// (`answered`, one classified answer per item, `None` when it must be
    /// retried; see [`classify_answer`]): the results before the first item
    /// to retry are final; every applied item counts towards `net`, also
    /// those after the first retry, which are sent again (for order) and
    /// then find their own earlier work. Returns the index in `items` to
    /// send again from, if any.
    pub fn take_answer(
        &mut self,
        items: &[UpdateItem],
        from: usize,
        answered: &[Option<UpdateResult>],
    ) -> Option<usize> {
        debug_assert_eq!(self.results.len(), from, "results are kept in order");
        let mut first_retry = None;
        for (i, item) in items[from..].iter().enumerate() {
            let result = answered.get(i).cloned().flatten();
            self.net += match result {
                Some(UpdateResult::Created) => 1,
                Some(UpdateResult::Deleted) => -1,
                _ => 0,
            };
            match result {
                Some(result) if first_retry.is_none() => {
                    if let UpdateResult::Failed { reason, .. } = &result {
                        warn!(id = %item.id, reason = %reason, "A live update failed for good.");
                    }
                    self.results.push(result);
                }
                // Settled by a later attempt: it is sent again after the retry.
                Some(_) => {}
                None => {
                    first_retry.get_or_insert(from + i);
                }
            }
        }
        first_retry
    }

    /// Ends a batch whose retries are spent at item `at`: each item from
    /// there on keeps what the last answer (`answered`, for `items[from..]`)
    /// said of it when that was final (it was applied, and counted), and
    /// fails with `retries_exhausted` otherwise.
    pub fn give_up(
        &mut self,
        items: &[UpdateItem],
        from: usize,
        at: usize,
        answered: &[Option<UpdateResult>],
    ) {
        debug_assert_eq!(self.results.len(), at, "results are kept in order");
        for (i, item) in items.iter().enumerate().skip(at) {
            match answered.get(i - from).cloned().flatten() {
                Some(result) => self.results.push(result),
                None => {
                    warn!(id = %item.id, "A live update failed after every retry.");
                    self.results.push(UpdateResult::Failed {
                        kind: RETRIES_EXHAUSTED.into(),
                        reason: "retries exhausted".into(),
                    });
                }
            }
        }
    }

    /// The first failure that is the index's and not the change's (see
    /// `bulk::classify::index_refusal`), in words: such a batch must wait,
    /// not be dead-lettered.
    pub fn index_refusal(&self) -> Option<String> {
        self.results.iter().find_map(|r| match r {
            UpdateResult::Failed { kind, reason } => {
                index_refusal(kind, reason).map(|cause| format!("{cause}: {reason}"))
            }
            _ => None,
        })
    }

    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r, UpdateResult::Failed { .. }))
            .count()
    }
}

/// Where updates go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The write alias of the live generation.
    Alias(&'a str),
    /// A generation by its name (a catch-up).
    Generation(&'a str),
}

/// The NDJSON of `items`, at `updated_at`.
pub fn encode_updates(items: &[UpdateItem], updated_at: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        let action = json!({"update": {"_id": item.id, "retry_on_conflict": 3}});
        let body = match &item.update {
            DocUpdate::Merge { doc, upsert } => json!({"doc": doc, "upsert": upsert}),
            // An absent document is created from `upsert` and the script,
            // the precedence check, runs only against a present one.
            DocUpdate::MergeTcs {
                doc,
                upsert,
                start,
                person,
            } => json!({
                "script": merge_tcs_script(doc, start.as_deref(), *person),
                "upsert": upsert,
            }),
            DocUpdate::MergeIfPresent { doc } => json!({"doc": doc}),
            DocUpdate::LeaveGmc => json!({"script": leave_gmc_script(updated_at)}),
            DocUpdate::LeaveTcs { person, keep } => {
                json!({"script": leave_tcs_script(*person, *keep, updated_at)})
            }
        };
        // Serializing a JSON value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &action);
        out.push(b'\n');
        let _ = serde_json::to_writer(&mut out, &body);
        out.push(b'\n');
    }
    out
}

/// The result of each of `sent` items from the `items` of a `_bulk` answer,
/// in order; `None` for one that must be retried (or that the answer lacks).
pub fn classify_answer(sent: usize, answer: &[Value]) -> Vec<Option<UpdateResult>> {
    (0..sent)
        .map(|i| answer.get(i).and_then(classify_update))
        .collect()
}

/// The result of one answered item; `None` when it must be retried.
pub fn classify_update(item: &Value) -> Option<UpdateResult> {
    let op = item.as_object().and_then(|o| o.values().next())?;
    let status = op["status"].as_u64().unwrap_or(0);
    let kind = op["error"]["type"].as_str().unwrap_or("");
    if !(200..300).contains(&status)
        && node_departure(kind, op["error"]["reason"].as_str().unwrap_or(""))
    {
        return None;
    }
    match status {
        200..=299 => Some(match op["result"].as_str() {
            Some("created") => UpdateResult::Created,
            Some("deleted") => UpdateResult::Deleted,
            Some("noop") => UpdateResult::Unchanged,
            _ => UpdateResult::Updated,
        }),
        404 if kind == "document_missing_exception" => Some(UpdateResult::Unchanged),
        // A block answers 429 under the flood stage: not load, not retried.
        429 | 500.. | 0 if kind != BLOCKED => None,
        _ => Some(UpdateResult::Failed {
            kind: if kind.is_empty() {
                format!("http_{status}")
            } else {
                kind.to_string()
            },
            reason: format!(
                "{status} {kind}: {}",
                clip(op["error"]["reason"].as_str().unwrap_or(""), 300)
            ),
        }),
    }
}

/// Applies `items` in order; retriable failures are sent again (from the
/// first one on) with the retry policy's backoff. Fails when a whole
/// request fails for good (for example the alias does not exist).
pub async fn apply_updates(
    client: &SearchClient,
    target: Target<'_>,
    items: &[UpdateItem],
    updated_at: &str,
    retry: &RetryPolicy,
) -> Result<UpdateReport, SearchError> {
    let (path, query): (String, &[(&str, &str)]) = match target {
        Target::Alias(alias) => (format!("/{alias}/_bulk"), &[("require_alias", "true")]),
        Target::Generation(index) => (format!("/{index}/_bulk"), &[]),
    };
    let mut report = UpdateReport::default();
    let mut backoff = backon::BackoffBuilder::build(retry.backoff());
    let mut from = 0;
    while from < items.len() {
        // What the last answer said of each item sent; nothing when the
        // whole request failed.
        let mut answered = Vec::new();
        let body = encode_updates(&items[from..], updated_at);
        report.requests += 1;
        let answer = client
            .request_bytes(
                Method::Post,
                &path,
                query,
                Some(body),
                "application/x-ndjson",
            )
            .await;
        let retry_at = match answer {
            Ok((status, value)) if (200..300).contains(&status) => {
                let per_item = value["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                answered = classify_answer(items.len() - from, per_item);
                report.take_answer(items, from, &answered)
            }
            Ok((status, value)) if status == 429 || status >= 500 => {
                warn!(status, answer = %clip(&value.to_string(), 300), "Update batch answered with a retriable status.");
                Some(from)
            }
            Ok((status, value)) => {
                return Err(SearchError::Status {
                    method: "POST".into(),
                    path,
                    status,
                    body: clip(&value.to_string(), 2000).into_owned(),
                })
            }
            Err(e) if crate::retry::Retriable::is_retriable(&e) => Some(from),
            Err(e) => return Err(e),
        };
        match retry_at {
            None => break,
            Some(at) => {
                let Some(delay) = backoff.next() else {
                    report.give_up(items, from, at, &answered);
                    break;
                };
                tokio::time::sleep(delay).await;
                from = at;
            }
        }
    }
    Ok(report)
}

/// [`apply_updates`] in up to `lanes` concurrent requests: the items are
/// dealt into lanes by document id, so every update of one document stays
/// in one lane, in its order; documents apart have no order to keep. The
/// report holds every item's result in `items`' order.
pub async fn apply_updates_in_lanes(
    client: &SearchClient,
    target: Target<'_>,
    items: &[UpdateItem],
    updated_at: &str,
    retry: &RetryPolicy,
    lanes: usize,
) -> Result<UpdateReport, SearchError> {
    let dealt = deal_into_lanes(items, lanes);
    if dealt.len() <= 1 {
        return apply_updates(client, target, items, updated_at, retry).await;
    }
    let sent: Vec<Vec<UpdateItem>> = dealt
        .iter()
        .map(|lane| lane.iter().map(|&i| items[i].clone()).collect())
        .collect();
    let answers = futures::future::try_join_all(
        sent.iter()
            .map(|lane| apply_updates(client, target, lane, updated_at, retry)),
    )
    .await?;
    let mut results = vec![UpdateResult::Unchanged; items.len()];
    let mut report = UpdateReport::default();
    for (lane, answer) in dealt.iter().zip(answers) {
        report.net += answer.net;
        report.requests += answer.requests;
        for (&i, result) in lane.iter().zip(answer.results) {
            results[i] = result;
        }
    }
    report.results = results;
    Ok(report)
}

/// The positions of `items` dealt into at most `lanes` non-empty lanes by
/// document id, each lane in `items`' order.
pub fn deal_into_lanes(items: &[UpdateItem], lanes: usize) -> Vec<Vec<usize>> {
    use std::hash::{Hash, Hasher};
    let lanes = lanes.clamp(1, items.len().max(1));
    let mut dealt = vec![Vec::new(); lanes];
    for (i, item) in items.iter().enumerate() {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        item.id.hash(&mut hasher);
        dealt[(hasher.finish() % lanes as u64) as usize].push(i);
    }
    dealt.retain(|lane| !lane.is_empty());
    dealt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_keep_each_documents_updates_together_and_in_order() {
        let items: Vec<UpdateItem> = (0..200)
            .map(|i| UpdateItem {
                id: format!("{}", 7_000_000 + i % 37),
                update: DocUpdate::MergeIfPresent {
                    doc: json!({ "n": i }),
                },
            })
            .collect();
        let dealt = deal_into_lanes(&items, 4);
        assert_eq!(dealt.len(), 4, "37 ids spread over every lane");
        let mut seen: Vec<usize> = dealt.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>(), "every item once");
        for lane in &dealt {
            assert!(lane.windows(2).all(|w| w[0] < w[1]), "in order");
        }
        for id in items.iter().map(|i| &i.id) {
            let holding = dealt
                .iter()
                .filter(|lane| lane.iter().any(|&i| &items[i].id == id))
                .count();
            assert_eq!(holding, 1, "document {id} in one lane only");
        }
        assert_eq!(deal_into_lanes(&items[..1], 4).len(), 1);
        assert!(deal_into_lanes(&[], 4).is_empty());
    }

    #[test]
    fn updates_encode_as_update_actions_with_their_bodies() {
        let items = vec![
            UpdateItem {
                id: "1".into(),
                update: DocUpdate::Merge {
                    doc: json!({"a": 1}),
                    upsert: json!({"a": 1, "b": 2}),
                },
            },
            UpdateItem {
                id: "2".into(),
                update: DocUpdate::MergeIfPresent {
                    doc: json!({"c": null}),
                },
            },
            UpdateItem {
                id: "3".into(),
                update: DocUpdate::LeaveGmc,
            },
            UpdateItem {
                id: "4".into(),
                update: DocUpdate::MergeTcs {
                    doc: json!({"tcsPersonId": 7, "membershipType": null}),
                    upsert: json!({"tcsPersonId": 7}),
                    start: Some("2024-08-01".into()),
                    person: Some(7),
                },
            },
        ];
        let text = String::from_utf8(encode_updates(&items, "t")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 8);
        assert_eq!(lines[0]["update"]["_id"], "1");
        assert_eq!(
            lines[1],
            json!({"doc": {"a": 1}, "upsert": {"a": 1, "b": 2}})
        );
        assert_eq!(lines[3], json!({"doc": {"c": null}}));
        assert_eq!(lines[5]["script"]["lang"], "painless");
        assert_eq!(lines[6]["update"]["_id"], "4");
        assert_eq!(
            lines[7],
            json!({
                "script": merge_tcs_script(
                    &json!({"tcsPersonId": 7, "membershipType": null}),
                    Some("2024-08-01"),
                    Some(7)
                ),
                "upsert": {"tcsPersonId": 7},
            }),
            "a TCS change is a conditional script with its upsert"
        );
        assert!(lines[7].get("doc").is_none(), "no unconditional doc merge");
        assert_eq!(lines[7]["script"]["params"]["person"], 7);
    }

    #[test]
    fn a_blocked_index_is_a_refusal_of_the_index_not_of_the_change() {
        let flood = json!({"update": {"_id": "1", "status": 429, "error": {"type": "cluster_block_exception", "reason": "index [m] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"}}});
        let write = json!({"update": {"_id": "2", "status": 403, "error": {"type": "cluster_block_exception", "reason": "index [m] blocked by: [FORBIDDEN/8/index write (api)];"}}});
        let mapping = json!({"update": {"_id": "3", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "failed to parse"}}});
        let results: Vec<UpdateResult> = [&flood, &write, &mapping]
            .into_iter()
            .map(|i| classify_update(i).expect("final, not retried"))
            .collect();
        let refused = |results: Vec<UpdateResult>| {
            UpdateReport {
                results,
                ..UpdateReport::default()
            }
            .index_refusal()
        };
        assert!(refused(vec![results[0].clone()])
            .unwrap()
            .contains("flood-stage"));
        assert!(refused(vec![results[1].clone()])
            .unwrap()
            .contains("index write"));
        assert_eq!(
            refused(vec![results[2].clone()]),
            None,
            "the change's own fault"
        );
        assert!(refused(vec![UpdateResult::Failed {
            kind: RETRIES_EXHAUSTED.into(),
            reason: "retries exhausted".into()
        }])
        .is_some());
    }

    #[test]
    fn answers_classify_into_results_and_retries() {
        let item = |status: u64, result: &str, kind: &str| json!({"update": {"_id": "1", "status": status, "result": result, "error": {"type": kind, "reason": "r"}}});
        assert_eq!(
            classify_update(&item(201, "created", "")),
            Some(UpdateResult::Created)
        );
        assert_eq!(
            classify_update(&item(200, "updated", "")),
            Some(UpdateResult::Updated)
        );
        assert_eq!(
            classify_update(&item(200, "deleted", "")),
            Some(UpdateResult::Deleted)
        );
        assert_eq!(
            classify_update(&item(200, "noop", "")),
            Some(UpdateResult::Unchanged)
        );
        assert_eq!(
            classify_update(&item(404, "", "document_missing_exception")),
            Some(UpdateResult::Unchanged)
        );
        assert_eq!(
            classify_update(&item(429, "", "es_rejected_execution_exception")),
            None
        );
        assert_eq!(
            classify_update(&item(503, "", "unavailable_shards_exception")),
            None
        );
        assert!(matches!(
            classify_update(&item(400, "", "mapper_parsing_exception")),
            Some(UpdateResult::Failed { reason: r, .. }) if r.contains("mapper_parsing_exception")
        ));
    }

    fn upserts(ids: &[&str]) -> Vec<UpdateItem> {
        ids.iter()
            .map(|id| UpdateItem {
                id: (*id).into(),
                update: DocUpdate::Merge {
                    doc: json!({"a": 1}),
                    upsert: json!({"a": 1}),
                },
            })
            .collect()
    }

    /// One item of a `_bulk` answer: a result, or an error with its status.
    fn answered(result: &str) -> Value {
        match result {
            "429" => {
                json!({"update": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"}}})
            }
            "missing" => {
                json!({"update": {"status": 404, "error": {"type": "document_missing_exception", "reason": "missing"}}})
            }
            "created" => json!({"update": {"status": 201, "result": "created"}}),
            other => json!({"update": {"status": 200, "result": other}}),
        }
    }

    fn answer(results: &[&str]) -> Vec<Option<UpdateResult>> {
        let items: Vec<Value> = results.iter().map(|r| answered(r)).collect();
        classify_answer(results.len(), &items)
    }

    #[test]
    fn a_document_created_before_its_item_is_sent_again_counts_once() {
        let items = upserts(&["a", "b", "c", "d", "e"]);
        let mut report = UpdateReport::default();
        // Another shard took c and d though b was refused: both are sent
        // again after b, for order, and then find their documents.
        let retry = report.take_answer(
            &items,
            0,
            &answer(&["created", "429", "created", "created", "429"]),
        );
        assert_eq!(retry, Some(1));
        assert_eq!(report.results, vec![UpdateResult::Created]);
        assert_eq!(report.net, 3, "a, c and d were created");
        let retry = report.take_answer(&items, 1, &answer(&["created", "noop", "updated", "429"]));
        assert_eq!(retry, Some(4));
        let retry = report.take_answer(&items, 4, &answer(&["created"]));
        assert_eq!(retry, None);
        assert_eq!(
            report.results,
            vec![
                UpdateResult::Created,
                UpdateResult::Created,
                UpdateResult::Unchanged,
                UpdateResult::Updated,
                UpdateResult::Created,
            ],
            "each item's last answer"
        );
        assert_eq!(report.net_documents(), 5, "five new documents");
    }

    #[test]
    fn deletes_count_in_whichever_attempt_applied_them() {
        let items = upserts(&["a", "b", "c"]);
        let mut report = UpdateReport::default();
        let retry = report.take_answer(&items, 0, &answer(&["deleted", "429", "deleted"]));
        assert_eq!(retry, Some(1));
        // c is gone already when it is sent again.
        let retry = report.take_answer(&items, 1, &answer(&["created", "missing"]));
        assert_eq!(retry, None);
        assert_eq!(
            report.results,
            vec![
                UpdateResult::Deleted,
                UpdateResult::Created,
                UpdateResult::Unchanged
            ]
        );
        assert_eq!(report.net_documents(), -1);
    }

    #[test]
    fn an_item_the_answer_lacks_is_sent_again() {
        let items = upserts(&["a", "b", "c"]);
        let mut report = UpdateReport::default();
        let short = [answered("created")];
        assert_eq!(
            report.take_answer(&items, 0, &classify_answer(3, &short)),
            Some(1)
        );
        assert_eq!(report.net_documents(), 1);
    }

    #[test]
    fn spent_retries_fail_only_the_items_never_applied() {
        let items = upserts(&["a", "b", "c", "d"]);
        let exhausted = UpdateResult::Failed {
            kind: RETRIES_EXHAUSTED.into(),
            reason: "retries exhausted".into(),
        };
        let mut report = UpdateReport::default();
        let last = answer(&["created", "429", "created", "429"]);
        let at = report.take_answer(&items, 0, &last).unwrap();
        report.give_up(&items, 0, at, &last);
        assert_eq!(
            report.results,
            vec![
                UpdateResult::Created,
                exhausted.clone(),
                UpdateResult::Created,
                exhausted.clone()
            ]
        );
        assert_eq!(report.net_documents(), 2);
        assert!(report.index_refusal().is_some(), "the batch waits");

        // A whole request refused: nothing is known of any item.
        let mut report = UpdateReport::default();
        report.give_up(&items, 0, 0, &[]);
        assert_eq!(report.results, vec![exhausted; 4]);
        assert_eq!(report.net_documents(), 0);
    }
}
