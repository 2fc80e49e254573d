//! One batch of the bulk writer, from first send to the last outcome: send
//! the request, classify the answer, settle what is final, and send what
//! may succeed later again after the retry policy's next backoff, until the
//! policy gives up; the items still unsettled then fail with
//! `retries_exhausted`. Every item leaves with exactly one outcome.

use std::sync::Arc;

use opensearch::http::Method;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::classify::{
    classify_response, request_error_verdicts, ItemVerdict, SentItem, RETRIES_EXHAUSTED,
};
use super::dispatch::{encode_items, item_bytes};
use super::limiter::Permit;
use super::{BulkItem, BulkOutcome, Counters, ItemOutcome};
use crate::retry::RetryPolicy;
use crate::search::client::SearchClient;
use crate::telemetry::metric;

/// Only the parts of a `_bulk` answer the classification reads.
const FILTER_PATH: &str =
    "errors,items.*._id,items.*.status,items.*.error.type,items.*.error.reason";

/// What every batch task shares.
pub(super) struct BatchContext<T> {
    pub client: SearchClient,
    pub path: String,
    pub retry: RetryPolicy,
    pub outcomes: mpsc::Sender<BulkOutcome<T>>,
    pub counters: Arc<Counters>,
}

/// The items of the last answer that may succeed later, and why.
struct Retries<T> {
    items: Vec<BulkItem<T>>,
    status: u16,
    reason: String,
}

pub(super) async fn send_batch<T: Send + 'static>(
    context: Arc<BatchContext<T>>,
    mut pending: Vec<BulkItem<T>>,
    permit: Permit,
) {
    let mut backoff = backon::BackoffBuilder::build(context.retry.backoff());
    loop {
        let retries = send_once(&context, pending, &permit).await;
        if retries.items.is_empty() {
            break;
        }
        let Some(delay) = backoff.next() else {
            give_up(&context, retries).await;
            break;
        };
        let delay = delay.min(context.retry.max_backoff);
        Counters::add(&context.counters.retried_items, retries.items.len() as u64);
        metrics::counter!(metric::RETRIED_ITEMS).increment(retries.items.len() as u64);
        debug!(
            items = retries.items.len(),
            status = retries.status,
            delay_ms = delay.as_millis() as u64,
            reason = %retries.reason,
            "Retrying bulk items."
        );
        tokio::time::sleep(delay).await;
        pending = retries.items;
    }
    drop(permit);
}

/// Sends `pending` once and settles every item the answer decides;
/// returns the others.
async fn send_once<T>(
    context: &BatchContext<T>,
    pending: Vec<BulkItem<T>>,
    permit: &Permit,
) -> Retries<T> {
    let counters = &context.counters;
    let mut body = Vec::with_capacity(pending.iter().map(item_bytes).sum());
    encode_items(&pending, &mut body);
    Counters::add(&counters.requests, 1);
    Counters::add(&counters.bytes, body.len() as u64);
    let sent_at = std::time::Instant::now();
    let answer = context
        .client
        .request_bytes(
            Method::Post,
            &context.path,
            &[("filter_path", FILTER_PATH)],
            Some(body),
            "application/x-ndjson",
        )
        .await;
    metrics::histogram!(metric::BULK_REQUEST_SECONDS).record(sent_at.elapsed().as_secs_f64());
    let sent: Vec<SentItem<'_>> = pending
        .iter()
        .map(|i| SentItem {
            id: &i.id,
            versioned: i.version.is_some(),
        })
        .collect();
    let verdicts = match &answer {
        Ok((status, value)) => classify_response(&sent, *status, value),
        Err(e) => request_error_verdicts(&sent, e),
    };
    drop(sent);
    if !matches!(&answer, Ok((s, _)) if (200..300).contains(s)) {
        Counters::add(&counters.failed_requests, 1);
    }
    let throttled = verdicts
        .iter()
        .filter(|v| matches!(v, ItemVerdict::Retry { status: 429, .. }))
        .count() as u64;
    if throttled > 0 {
        Counters::add(&counters.throttled_429, throttled);
        Counters::add(&counters.throttled_responses, 1);
        metrics::counter!(metric::THROTTLED_ANSWERS).increment(1);
    }
    permit.record(throttled > 0);

    let mut retries = Retries {
        items: Vec::new(),
        status: 0,
        reason: String::new(),
    };
    let mut written = 0u64;
    for (item, verdict) in pending.into_iter().zip(verdicts) {
        let outcome = match verdict {
            ItemVerdict::Written => {
                written += 1;
                ItemOutcome::Written
            }
            ItemVerdict::Superseded => {
                Counters::add(&counters.superseded, 1);
                ItemOutcome::Superseded
            }
            ItemVerdict::Failed {
                status,
                kind,
                reason,
            } => {
                counters.fail(&kind);
                ItemOutcome::Failed {
                    status,
                    kind,
                    reason,
                }
            }
            ItemVerdict::Retry { status, reason } => {
                retries.status = status;
                retries.reason = reason;
                retries.items.push(item);
                continue;
            }
        };
        emit(context, item, outcome).await;
    }
    Counters::add(&counters.written, written);
    metrics::counter!(metric::DOCUMENTS_WRITTEN).increment(written);
    retries
}

/// The policy is spent: every item still unsettled fails.
async fn give_up<T>(context: &BatchContext<T>, retries: Retries<T>) {
    warn!(
        items = retries.items.len(),
        status = retries.status,
        reason = %retries.reason,
        "Bulk items failed after every retry."
    );
    for item in retries.items {
        context.counters.fail(RETRIES_EXHAUSTED);
        let outcome = ItemOutcome::Failed {
            status: retries.status,
            kind: RETRIES_EXHAUSTED.into(),
            reason: format!("retries exhausted: {}", retries.reason),
        };
        emit(context, item, outcome).await;
    }
}

async fn emit<T>(context: &BatchContext<T>, item: BulkItem<T>, outcome: ItemOutcome) {
    // A dropped receiver means the caller wants only the stats.
    let _ = context
        .outcomes
        .send(BulkOutcome {
            id: item.id,
            ticket: item.ticket,
            outcome,
        })
        .await;
}
