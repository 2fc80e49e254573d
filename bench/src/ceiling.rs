//! A, the ceiling: a minimal `_bulk` loader that sends pre-serialized NDJSON
//! slices with a fixed number of requests in flight, and the sweep over batch
//! sizes and concurrency that finds this node's best. Each point loads into a
//! fresh index with the build settings the rebuilder uses. The loader asks
//! the server to answer only `errors` and failed items (`filter_path`), so
//! neither side spends time on per-item responses it does not need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use opensearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::corpus::Corpus;
use super::indices::{self, IndexSettings};
use super::process::{CpuSnapshot, CpuUsage};
use super::{round3, sample_until, Point};
use opensearch::OpenSearch;
use rebuilder::search::{IndexTemplate, SearchClient};

use crate::raw::raw_client;

/// Attempts per `_bulk` request when the node pushes back (429, 5xx).
const MAX_ATTEMPTS: u32 = 10;

/// One load of documents into one index with one configuration.
#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub index: String,
    pub batch_docs: usize,
    pub concurrency: usize,
    pub docs: u64,
    pub secs: f64,
    pub docs_per_sec: f64,
    pub requests: u64,
    /// Requests sent again after a 429, a 5xx or rejected items.
    pub retried_requests: u64,
    /// Where CPU went during the load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUsage>,
    /// Documents acknowledged over time (seconds since the first request).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Point>,
}

/// What the sweep found, and the index that holds the full load (the source
/// of D's `_reindex`; the caller deletes it).
#[derive(Clone, Debug, Serialize)]
pub struct CeilingOutcome {
    /// The full-size load with the best configuration: the A of the report.
    pub best: LoadResult,
    /// Every sweep point (without series), in the order run.
    pub sweep: Vec<LoadResult>,
    /// Documents each sweep point loaded (all of them, or a prefix at big N).
    pub sweep_docs: usize,
}

/// The sweep's dimensions.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub batch_sizes: Vec<usize>,
    pub concurrencies: Vec<usize>,
    /// Documents per sweep point; the best is then rerun with every document
    /// when the corpus is bigger.
    pub sweep_docs: usize,
}

/// Loads the first `docs` documents of `corpus` into `index` (which must
/// exist) in batches of `batch_docs` with `concurrency` requests in flight.
pub async fn load(
    client: &SearchClient,
    index: &str,
    corpus: &Corpus,
    docs: usize,
    batch_docs: usize,
    concurrency: usize,
) -> anyhow::Result<LoadResult> {
    let raw = raw_client(client)?;
    let batches = corpus.batches(docs, batch_docs);
    let requests = batches.len() as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let path = format!("/{index}/_bulk");
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_before = CpuSnapshot::take();
    let started = Instant::now();
    let sampler = {
        let acked = acked.clone();
        tokio::spawn(sample_until(
            started,
            Duration::from_millis(250),
            stop_rx,
            move || {
                let v = acked.load(Ordering::Relaxed) as f64;
                async move { Some(v) }
            },
        ))
    };
    let sent = futures::stream::iter(batches)
        .map(|(body, n)| {
            let (raw, path, acked, retried) = (&raw, &path, acked.clone(), retried.clone());
            async move {
                send_batch(raw, path, body, &retried).await?;
                acked.fetch_add(n as u64, Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = CpuUsage::between(&cpu_before, &CpuSnapshot::take(), &[]);
    let _ = stop_tx.send(true);
    let series = sampler.await.unwrap_or_default();
    sent.with_context(|| {
        format!("while loading {index} (batch {batch_docs}, {concurrency} in flight)")
    })?;
    let docs = acked.load(Ordering::Relaxed);
    Ok(LoadResult {
        index: index.to_string(),
        batch_docs,
        concurrency,
        docs,
        secs: round3(secs),
        docs_per_sec: round3(docs as f64 / secs.max(1e-9)),
        requests,
        retried_requests: retried.load(Ordering::Relaxed),
        cpu: Some(cpu),
        series,
    })
}

/// Sends one `_bulk` body until every item is written: the whole body goes
/// again on a 429, a 5xx or items the node rejected for load (the `_id`s are
/// explicit, so a resend overwrites instead of duplicating); any other item
/// failure fails the load.
async fn send_batch(
    client: &OpenSearch,
    path: &str,
    body: Bytes,
    retried: &AtomicU64,
) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    let query = [("filter_path", "errors,items.*.error")];
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
        }
        let response = match client
            .send(
                Method::Post,
                path,
                headers.clone(),
                Some(&query),
                Some(body.clone()),
                None,
            )
            .await
        {
            Ok(r) => r,
            Err(e) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "Bulk request failed; sending it again.");
                continue;
            }
            Err(e) => bail!("POST {path} failed: {e}"),
        };
        let status = response.status_code().as_u16();
        let text = response
            .text()
            .await
            .context("while reading a _bulk answer")?;
        if status == 429 || status >= 500 {
            if attempt < MAX_ATTEMPTS {
                continue;
            }
            bail!(
                "POST {path} answered {status} {MAX_ATTEMPTS} times: {}",
                cut(&text)
            );
        }
        if !(200..300).contains(&status) {
            bail!("POST {path} answered {status}: {}", cut(&text));
        }
        match classify(&text)? {
            BulkVerdict::Written => return Ok(()),
            BulkVerdict::Rejected if attempt < MAX_ATTEMPTS => continue,
            BulkVerdict::Rejected => {
                bail!("POST {path}: items still rejected after {MAX_ATTEMPTS} attempts")
            }
            BulkVerdict::Failed(first) => bail!("POST {path}: an item failed: {first}"),
        }
    }
    unreachable!("the last attempt returns or fails")
}

#[derive(Debug, PartialEq)]
enum BulkVerdict {
    Written,
    /// Some items were refused for load only; the batch may go again.
    Rejected,
    /// An item failed for good; the first error.
    Failed(String),
}

/// Reads a `_bulk` answer filtered to `errors,items.*.error`.
fn classify(text: &str) -> anyhow::Result<BulkVerdict> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("unreadable _bulk answer: {}", cut(text)))?;
    if v["errors"] == Value::Bool(false) {
        return Ok(BulkVerdict::Written);
    }
    let errors: Vec<&Value> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.as_object()?.values().next()?.get("error"))
        .collect();
    let permanent = errors.iter().find(|e| {
        !e["type"]
            .as_str()
            .is_some_and(|t| t.contains("rejected_execution"))
    });
    Ok(match permanent {
        Some(e) => BulkVerdict::Failed(e.to_string()),
        None if errors.is_empty() => {
            BulkVerdict::Failed(format!("errors without items: {}", cut(text)))
        }
        None => BulkVerdict::Rejected,
    })
}

fn cut(text: &str) -> String {
    rebuilder::text::clip(text, 500).into_owned()
}

/// Runs the sweep, then (when the corpus is bigger than a sweep point) the
/// best configuration on every document. Returns the outcome and leaves the
/// best full load's index in place for D; every other index is deleted.
pub async fn sweep(
    client: &SearchClient,
    template: &IndexTemplate,
    corpus: &Corpus,
    plan: &SweepPlan,
    prefix: &str,
) -> anyhow::Result<CeilingOutcome> {
    let sweep_docs = plan.sweep_docs.min(corpus.len()).max(1);
    let mut points: Vec<LoadResult> = Vec::new();
    let mut best: Option<LoadResult> = None;
    for &batch_docs in &plan.batch_sizes {
        for &concurrency in &plan.concurrencies {
            let index = format!("{prefix}ceiling-b{batch_docs}-c{concurrency}");
            indices::delete(client, &index).await?;
            indices::create(client, template, &index, IndexSettings::Build).await?;
            let result = load(client, &index, corpus, sweep_docs, batch_docs, concurrency).await?;
            println!(
                "  A  batch {:>5} x {} in flight: {:>9.0} docs/s ({} docs in {:.1} s{})",
                batch_docs,
                concurrency,
                result.docs_per_sec,
                result.docs,
                result.secs,
                if result.retried_requests > 0 {
                    format!(", {} requests retried", result.retried_requests)
                } else {
                    String::new()
                }
            );
            let better = best
                .as_ref()
                .is_none_or(|b| result.docs_per_sec > b.docs_per_sec);
            let loser = if better {
                best.replace(result.clone()).map(|old| old.index)
            } else {
                Some(index)
            };
            if let Some(loser) = loser {
                indices::delete(client, &loser).await?;
            }
            points.push(LoadResult {
                series: Vec::new(),
                cpu: None,
                ..result
            });
        }
    }
    let mut best = best.context("the sweep has no point (no batch size or concurrency)")?;
    if sweep_docs < corpus.len() {
        indices::delete(client, &best.index).await?;
        let index = format!("{prefix}ceiling-full");
        indices::delete(client, &index).await?;
        indices::create(client, template, &index, IndexSettings::Build).await?;
        best = load(
            client,
            &index,
            corpus,
            corpus.len(),
            best.batch_docs,
            best.concurrency,
        )
        .await?;
        println!(
            "  A  best config on all {} docs: {:.0} docs/s in {:.1} s",
            best.docs, best.docs_per_sec, best.secs
        );
    }
    Ok(CeilingOutcome {
        best,
        sweep: points,
        sweep_docs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_bulk_answer_is_written() {
        assert_eq!(
            classify(r#"{"errors":false}"#).unwrap(),
            BulkVerdict::Written
        );
    }

    #[test]
    fn rejected_items_only_send_the_batch_again() {
        let text = r#"{"errors":true,"items":[{"index":{"error":{"type":"rejected_execution_exception","reason":"queue full"}}}]}"#;
        assert_eq!(classify(text).unwrap(), BulkVerdict::Rejected);
    }

    #[test]
    fn a_mapping_failure_fails_the_load() {
        let text = r#"{"errors":true,"items":[
            {"index":{"error":{"type":"rejected_execution_exception"}}},
            {"index":{"error":{"type":"strict_dynamic_mapping_exception","reason":"no"}}}]}"#;
        assert!(matches!(classify(text).unwrap(), BulkVerdict::Failed(e) if e.contains("strict")));
    }
}
