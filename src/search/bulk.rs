//! The bulk writer: turns a stream of documents into batched, concurrent
//! `_bulk` requests against one generation, and gives back exactly one
//! outcome per document.
//!
//! Shape: the caller sends [`BulkItem`]s through a bounded [`BulkSender`]
//! (`send().await` waits while the writer is busy: that is the
//! backpressure). A dispatcher task cuts the stream into batches bounded by
//! document count and bytes ([`BulkSettings`]) and hands each batch to its
//! own task once the adaptive limiter grants a permit. A batch task sends
//! its request, classifies the answer item by item
//! ([`classify_response`], a pure function), reports what is settled, and
//! sends what may succeed later (429, 5xx, a connection failure, items
//! missing from a malformed answer) again after an exponential backoff with
//! jitter and a cap (`backon`), until `max_retries` is spent; only then does
//! such an item fail, with `retries_exhausted` as its reason.
//!
//! Outcomes: every item gets exactly one [`BulkOutcome`] on [`BulkOutcomes`],
//! matched by position in the answer and verified by `_id`. The outcome
//! channel is bounded (room for every document that can be in flight at
//! once), so memory stays bounded whatever the stream size. The caller must
//! therefore either drain it *concurrently* with sending (another task or a
//! `select!`), or drop it when it needs only the final [`BulkStats`]:
//! outcomes for a dropped receiver are discarded, never waited on. Holding
//! it without reading stalls the writer once the channel is full.
//!
//! Adaptive concurrency: `concurrency` is the upper bound. Two throttled
//! answers (any 429) in a row, both from requests sent since the last
//! change, halve the number of requests allowed in flight (down to 1); a run
//! of clean answers raises it by one again.
//!
//! Ordering: items with the same `_id` in one stream may be written in any
//! order (a retried item can land after a later one). Give such items a
//! `version`: it is written with `version_type=external_gte`, so the higher
//! version wins whatever the arrival order, an equal one is an idempotent
//! replay, and a lower one is [`ItemOutcome::Superseded`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use opensearch::http::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use super::client::{truncate, SearchClient, SearchError};
use crate::config::BulkSettings;

/// A partly filled batch is sent once it is this old, so a slow stream
/// still gets written promptly.
const MAX_LINGER: Duration = Duration::from_millis(50);
/// Throttled answers in a row that lower the concurrency.
const THROTTLED_STREAK_TO_DECREASE: u32 = 2;
/// Clean answers in a row that raise the concurrency by one.
const CLEAN_STREAK_TO_INCREASE: u32 = 10;
/// Only the parts of a `_bulk` answer the classification reads.
const FILTER_PATH: &str =
    "errors,items.*._id,items.*.status,items.*.error.type,items.*.error.reason";

/// One document to write.
#[derive(Clone, Debug)]
pub struct BulkItem<T> {
    /// The document `_id` (the GMC number).
    pub id: String,
    /// The document, serialized JSON.
    pub source: Vec<u8>,
    /// External version: the higher one wins (`external_gte`).
    pub version: Option<u64>,
    /// The caller's handle for this item, given back in its outcome (for
    /// example a RabbitMQ delivery tag to acknowledge).
    pub ticket: T,
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ItemOutcome {
    Written,
    /// A version conflict under external versioning: a document of higher
    /// precedence is already there. Not a failure.
    Superseded,
    /// A permanent failure (or retries exhausted), with the HTTP status of
    /// the item (0 when there was no answer) and the reason.
    Failed {
        status: u16,
        reason: String,
    },
}

/// The outcome of one [`BulkItem`], with its id and ticket.
#[derive(Clone, Debug)]
pub struct BulkOutcome<T> {
    pub id: String,
    pub ticket: T,
    pub outcome: ItemOutcome,
}

/// What a writer did, returned by its join handle when the stream ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BulkStats {
    /// Items received from the sender.
    pub docs: u64,
    pub written: u64,
    pub superseded: u64,
    /// Items that failed for good.
    pub failed: u64,
    /// Failed items by reason (`mapper_parsing_exception`,
    /// `retries_exhausted`, ...).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Item sends beyond the first (an item sent three times counts 2).
    pub retried_items: u64,
    /// `_bulk` requests sent, retries included.
    pub requests: u64,
    /// Whole requests that failed (connection, 429, 5xx, malformed answer).
    pub failed_requests: u64,
    /// NDJSON bytes sent, retries included.
    pub bytes: u64,
    /// Items rejected with 429 (a whole-request 429 counts all its items).
    pub throttled_429: u64,
    /// Answers that carried at least one 429.
    pub throttled_responses: u64,
    /// The configured upper bound of requests in flight.
    pub max_concurrency: usize,
    pub min_concurrency_seen: usize,
    pub final_concurrency: usize,
    pub concurrency_decreases: u64,
    pub concurrency_increases: u64,
    pub elapsed_ms: u64,
    /// Batch tasks that panicked (a bug: their items have no outcome).
    pub lost_batches: u64,
}

impl BulkStats {
    /// Settled items per second over the writer's lifetime.
    pub fn docs_per_sec(&self) -> f64 {
        if self.elapsed_ms == 0 {
            return 0.0;
        }
        (self.written + self.superseded + self.failed) as f64 * 1000.0 / self.elapsed_ms as f64
    }

    fn absorb(&mut self, batch: BatchStats) {
        self.written += batch.written;
        self.superseded += batch.superseded;
        self.failed += batch.failed;
        for (reason, n) in batch.failed_by_reason {
            *self.failed_by_reason.entry(reason).or_default() += n;
        }
        self.retried_items += batch.retried_items;
        self.requests += batch.requests;
        self.failed_requests += batch.failed_requests;
        self.bytes += batch.bytes;
        self.throttled_429 += batch.throttled_429;
        self.throttled_responses += batch.throttled_responses;
    }
}

#[derive(Default)]
struct BatchStats {
    written: u64,
    superseded: u64,
    failed: u64,
    failed_by_reason: BTreeMap<String, u64>,
    retried_items: u64,
    requests: u64,
    failed_requests: u64,
    bytes: u64,
    throttled_429: u64,
    throttled_responses: u64,
}

/// The writer is gone (it panicked or was aborted); the item comes back.
#[derive(Debug, thiserror::Error)]
#[error("the bulk writer has stopped; item {} was not accepted", .0.id)]
pub struct BulkClosed<T>(pub BulkItem<T>);

/// The sending half: `send` waits while the writer is busy. Drop it (and
/// every clone) to end the stream; the join handle then yields the stats.
pub struct BulkSender<T> {
    tx: mpsc::Sender<BulkItem<T>>,
}

impl<T> Clone for BulkSender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> BulkSender<T> {
    pub async fn send(&self, item: BulkItem<T>) -> Result<(), BulkClosed<T>> {
        self.tx.send(item).await.map_err(|e| BulkClosed(e.0))
    }
}

/// The outcome stream: one [`BulkOutcome`] per item sent, in completion
/// order; `None` once the writer has finished. Drain it concurrently with
/// sending, or drop it (see the module documentation).
pub struct BulkOutcomes<T> {
    rx: mpsc::Receiver<BulkOutcome<T>>,
}

impl<T> BulkOutcomes<T> {
    pub async fn recv(&mut self) -> Option<BulkOutcome<T>> {
        self.rx.recv().await
    }
}

/// Starts a writer into `index` (a concrete generation name).
pub fn spawn_writer<T: Send + 'static>(
    client: SearchClient,
    index: String,
    settings: BulkSettings,
) -> (BulkSender<T>, BulkOutcomes<T>, JoinHandle<BulkStats>) {
    let max_batch_docs = settings.max_batch_docs.max(1);
    let concurrency = settings.concurrency.max(1);
    let (tx, rx) = mpsc::channel(max_batch_docs);
    let outcome_room = concurrency
        .saturating_mul(max_batch_docs)
        .saturating_add(max_batch_docs)
        .max(1024);
    let (otx, orx) = mpsc::channel(outcome_room);
    let handle = tokio::spawn(dispatch(client, index, settings, rx, otx));
    (BulkSender { tx }, BulkOutcomes { rx: orx }, handle)
}

struct Context<T> {
    client: SearchClient,
    path: String,
    backoff: ExponentialBuilder,
    max_backoff: Duration,
    outcomes: mpsc::Sender<BulkOutcome<T>>,
}

async fn dispatch<T: Send + 'static>(
    client: SearchClient,
    index: String,
    settings: BulkSettings,
    mut input: mpsc::Receiver<BulkItem<T>>,
    outcomes: mpsc::Sender<BulkOutcome<T>>,
) -> BulkStats {
    let started = Instant::now();
    let max_docs = settings.max_batch_docs.max(1);
    let max_bytes = settings.max_batch_bytes.max(1);
    let limiter = Arc::new(Limiter::new(settings.concurrency.max(1)));
    let max_backoff = Duration::from_millis(settings.max_backoff_ms);
    let context = Arc::new(Context {
        client,
        path: format!("/{index}/_bulk"),
        backoff: ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(settings.initial_backoff_ms))
            .with_max_delay(max_backoff)
            .with_max_times(settings.max_retries)
            .with_jitter(),
        max_backoff,
        outcomes,
    });
    let mut stats = BulkStats {
        max_concurrency: settings.concurrency.max(1),
        ..BulkStats::default()
    };
    let mut tasks = JoinSet::new();
    let mut carry: Option<BulkItem<T>> = None;
    let mut closed = false;
    while !closed || carry.is_some() {
        let mut batch = Batch::new();
        if let Some(item) = carry.take() {
            batch.push(item);
        }
        let mut deadline = tokio::time::Instant::now() + MAX_LINGER;
        while batch.items.len() < max_docs && !closed {
            let next = match input.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if batch.items.is_empty() => {
                    let item = input.recv().await;
                    deadline = tokio::time::Instant::now() + MAX_LINGER;
                    item
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, input.recv()).await {
                        Ok(item) => item,
                        Err(_) => break,
                    }
                }
            };
            let Some(mut item) = next else {
                closed = true;
                break;
            };
            stats.docs += 1;
            sanitize_source(&mut item.source);
            if !batch.items.is_empty() && batch.bytes + item_bytes(&item) > max_bytes {
                carry = Some(item);
                break;
            }
            batch.push(item);
        }
        if batch.items.is_empty() {
            continue;
        }
        let permit = limiter.acquire().await;
        debug!(
            docs = batch.items.len(),
            bytes = batch.bytes,
            "Bulk batch dispatched."
        );
        tasks.spawn(send_batch(context.clone(), batch.items, permit));
        while let Some(done) = tasks.try_join_next() {
            absorb(&mut stats, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        absorb(&mut stats, done);
    }
    let figures = limiter.figures();
    stats.min_concurrency_seen = figures.min_seen;
    stats.final_concurrency = figures.limit;
    stats.concurrency_decreases = figures.decreases;
    stats.concurrency_increases = figures.increases;
    stats.elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        index = %index,
        docs = stats.docs,
        written = stats.written,
        superseded = stats.superseded,
        failed = stats.failed,
        retried = stats.retried_items,
        throttled_429 = stats.throttled_429,
        requests = stats.requests,
        min_concurrency = stats.min_concurrency_seen,
        docs_per_sec = stats.docs_per_sec() as u64,
        "Bulk load finished."
    );
    stats
}

fn absorb(stats: &mut BulkStats, done: Result<BatchStats, tokio::task::JoinError>) {
    match done {
        Ok(batch) => stats.absorb(batch),
        Err(e) => {
            stats.lost_batches += 1;
            error!(error = %e, "A bulk batch task died; its items have no outcome.");
        }
    }
}

struct Batch<T> {
    items: Vec<BulkItem<T>>,
    bytes: usize,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, item: BulkItem<T>) {
        self.bytes += item_bytes(&item);
        self.items.push(item);
    }
}

/// NDJSON bytes an item takes: an action line of about this size, the
/// source and two newlines.
fn item_bytes<T>(item: &BulkItem<T>) -> usize {
    item.source.len() + item.id.len() + 2 + if item.version.is_some() { 72 } else { 22 }
}

/// A JSON document may only hold raw line breaks as whitespace between
/// tokens (inside strings they are escaped), so blanking them keeps the
/// document and the NDJSON framing intact.
fn sanitize_source(source: &mut [u8]) {
    for b in source.iter_mut() {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
}

/// Appends the NDJSON of `items` to `out`.
pub fn encode_items<T>(items: &[BulkItem<T>], out: &mut Vec<u8>) {
    for item in items {
        out.extend_from_slice(b"{\"index\":{\"_id\":");
        // Writing a String into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &item.id);
        if let Some(version) = item.version {
            out.extend_from_slice(b",\"version\":");
            out.extend_from_slice(version.to_string().as_bytes());
            out.extend_from_slice(b",\"version_type\":\"external_gte\"");
        }
        out.extend_from_slice(b"}}\n");
        out.extend_from_slice(&item.source);
        out.push(b'\n');
    }
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
    if status == 429 || status >= 500 {
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
    match status {
        200..=299 => ItemVerdict::Written,
        409 if sent.versioned && kind == "version_conflict_engine_exception" => {
            ItemVerdict::Superseded
        }
        429 | 500.. => ItemVerdict::Retry {
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
        Value::Null => truncate(&body.to_string(), 300),
        other => truncate(&other.to_string(), 300),
    }
}

async fn send_batch<T: Send + 'static>(
    context: Arc<Context<T>>,
    mut pending: Vec<BulkItem<T>>,
    permit: Permit,
) -> BatchStats {
    let mut stats = BatchStats::default();
    let mut backoff = context.backoff.build();
    loop {
        let mut body = Vec::with_capacity(pending.iter().map(item_bytes).sum());
        encode_items(&pending, &mut body);
        stats.requests += 1;
        stats.bytes += body.len() as u64;
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
            stats.failed_requests += 1;
        }
        let throttled = verdicts
            .iter()
            .filter(|v| matches!(v, ItemVerdict::Retry { status: 429, .. }))
            .count() as u64;
        if throttled > 0 {
            stats.throttled_429 += throttled;
            stats.throttled_responses += 1;
        }
        permit.record(throttled > 0);

        let mut retry = Vec::new();
        let mut last_retry_reason = String::new();
        let mut last_retry_status = 0;
        for (item, verdict) in pending.into_iter().zip(verdicts) {
            let outcome = match verdict {
                ItemVerdict::Written => {
                    stats.written += 1;
                    ItemOutcome::Written
                }
                ItemVerdict::Superseded => {
                    stats.superseded += 1;
                    ItemOutcome::Superseded
                }
                ItemVerdict::Failed {
                    status,
                    kind,
                    reason,
                } => {
                    stats.failed += 1;
                    *stats.failed_by_reason.entry(kind).or_default() += 1;
                    ItemOutcome::Failed { status, reason }
                }
                ItemVerdict::Retry { status, reason } => {
                    last_retry_status = status;
                    last_retry_reason = reason;
                    retry.push(item);
                    continue;
                }
            };
            emit(&context, item, outcome).await;
        }
        if retry.is_empty() {
            break;
        }
        match backoff.next() {
            Some(delay) => {
                let delay = delay.min(context.max_backoff);
                stats.retried_items += retry.len() as u64;
                debug!(
                    items = retry.len(),
                    status = last_retry_status,
                    delay_ms = delay.as_millis() as u64,
                    reason = %last_retry_reason,
                    "Retrying bulk items."
                );
                tokio::time::sleep(delay).await;
                pending = retry;
            }
            None => {
                warn!(
                    items = retry.len(),
                    status = last_retry_status,
                    reason = %last_retry_reason,
                    "Bulk items failed after every retry."
                );
                for item in retry {
                    stats.failed += 1;
                    *stats
                        .failed_by_reason
                        .entry("retries_exhausted".into())
                        .or_default() += 1;
                    let outcome = ItemOutcome::Failed {
                        status: last_retry_status,
                        reason: format!("retries exhausted: {last_retry_reason}"),
                    };
                    emit(&context, item, outcome).await;
                }
                break;
            }
        }
    }
    drop(permit);
    stats
}

/// A request that got no usable answer: retried unless the error says a
/// retry cannot help.
fn request_error_verdicts(sent: &[SentItem<'_>], error: &SearchError) -> Vec<ItemVerdict> {
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

async fn emit<T>(context: &Context<T>, item: BulkItem<T>, outcome: ItemOutcome) {
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

// ------------------------------------------------------------ the limiter

/// Grants permits for requests in flight, up to a limit that throttling
/// lowers and clean answers raise.
struct Limiter {
    state: Mutex<LimitState>,
    notify: Notify,
}

#[derive(Clone, Debug, PartialEq)]
struct LimitState {
    max: usize,
    limit: usize,
    in_flight: usize,
    /// Bumped at each decrease; a permit remembers the epoch it was granted
    /// in, so that answers to requests sent before a decrease do not count
    /// towards the next one.
    epoch: u64,
    throttled_streak: u32,
    clean_streak: u32,
    min_seen: usize,
    decreases: u64,
    increases: u64,
}

/// What one answer changed.
#[derive(Debug, PartialEq, Eq)]
enum Adjustment {
    None,
    Decreased(usize),
    Increased(usize),
}

impl LimitState {
    fn new(max: usize) -> Self {
        Self {
            max,
            limit: max,
            in_flight: 0,
            epoch: 0,
            throttled_streak: 0,
            clean_streak: 0,
            min_seen: max,
            decreases: 0,
            increases: 0,
        }
    }

    /// The AIMD rule, applied to one answer of a request granted in `epoch`.
    fn on_answer(&mut self, epoch: u64, throttled: bool) -> Adjustment {
        if throttled {
            self.clean_streak = 0;
            if epoch < self.epoch {
                return Adjustment::None;
            }
            self.throttled_streak += 1;
            if self.throttled_streak >= THROTTLED_STREAK_TO_DECREASE && self.limit > 1 {
                self.limit = (self.limit / 2).max(1);
                self.min_seen = self.min_seen.min(self.limit);
                self.epoch += 1;
                self.throttled_streak = 0;
                self.decreases += 1;
                return Adjustment::Decreased(self.limit);
            }
        } else {
            self.throttled_streak = 0;
            self.clean_streak += 1;
            if self.clean_streak >= CLEAN_STREAK_TO_INCREASE && self.limit < self.max {
                self.limit += 1;
                self.clean_streak = 0;
                self.increases += 1;
                return Adjustment::Increased(self.limit);
            }
        }
        Adjustment::None
    }
}

struct Permit {
    limiter: Arc<Limiter>,
    epoch: u64,
}

impl Permit {
    fn record(&self, throttled: bool) {
        let adjustment = {
            let mut state = self.limiter.lock();
            state.on_answer(self.epoch, throttled)
        };
        match adjustment {
            Adjustment::Decreased(limit) => {
                warn!(
                    concurrency = limit,
                    "OpenSearch is throttling bulk requests; lowering concurrency."
                )
            }
            Adjustment::Increased(limit) => {
                info!(
                    concurrency = limit,
                    "Bulk answers are clean again; raising concurrency."
                );
                self.limiter.notify.notify_one();
            }
            Adjustment::None => {}
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.lock().in_flight -= 1;
        self.limiter.notify.notify_one();
    }
}

struct LimiterFigures {
    limit: usize,
    min_seen: usize,
    decreases: u64,
    increases: u64,
}

impl Limiter {
    fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(LimitState::new(max)),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until fewer requests than the limit are in flight. Only the
    /// dispatcher waits here, so `notify_one` (which stores a wake-up when
    /// nobody waits) never loses one.
    async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            {
                let mut state = self.lock();
                if state.in_flight < state.limit {
                    state.in_flight += 1;
                    return Permit {
                        limiter: self.clone(),
                        epoch: state.epoch,
                    };
                }
            }
            self.notify.notified().await;
        }
    }

    fn figures(&self) -> LimiterFigures {
        let state = self.lock();
        LimiterFigures {
            limit: state.limit,
            min_seen: state.min_seen,
            decreases: state.decreases,
            increases: state.increases,
        }
    }
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

    #[test]
    fn encoding_writes_one_action_and_one_source_line_per_item() {
        let items = vec![
            BulkItem {
                id: "123\"4".into(),
                source: br#"{"a":1}"#.to_vec(),
                version: None,
                ticket: (),
            },
            BulkItem {
                id: "5".into(),
                source: br#"{"b":2}"#.to_vec(),
                version: Some(17),
                ticket: (),
            },
        ];
        let mut out = Vec::new();
        encode_items(&items, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], r#"{"index":{"_id":"123\"4"}}"#);
        assert_eq!(lines[1], r#"{"a":1}"#);
        let action: Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(
            action,
            json!({"index": {"_id": "5", "version": 17, "version_type": "external_gte"}})
        );
        assert!(text.ends_with('\n'));
        assert!(item_bytes(&items[0]) >= lines[0].len() + lines[1].len() + 2);
        assert!(item_bytes(&items[1]) >= lines[2].len() + lines[3].len() + 2);
    }

    #[test]
    fn line_breaks_in_a_pretty_printed_source_do_not_break_the_framing() {
        let mut source = b"{\n  \"a\": \"x\\ny\"\r\n}".to_vec();
        sanitize_source(&mut source);
        let v: Value = serde_json::from_slice(&source).unwrap();
        assert_eq!(v["a"], "x\ny");
        assert!(!source.contains(&b'\n'));
    }

    #[test]
    fn sustained_throttling_halves_the_limit_down_to_one_and_clean_answers_raise_it() {
        let mut s = LimitState::new(8);
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(0, true), Adjustment::Decreased(4));
        // Answers to requests granted before the decrease are stale.
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(0, true), Adjustment::None);
        assert_eq!(s.on_answer(1, true), Adjustment::None);
        assert_eq!(s.on_answer(1, true), Adjustment::Decreased(2));
        assert_eq!(s.on_answer(2, true), Adjustment::None);
        assert_eq!(s.on_answer(2, true), Adjustment::Decreased(1));
        assert_eq!(s.on_answer(3, true), Adjustment::None);
        assert_eq!(s.on_answer(3, true), Adjustment::None);
        assert_eq!(s.limit, 1);
        assert_eq!(s.min_seen, 1);
        for _ in 0..CLEAN_STREAK_TO_INCREASE - 1 {
            assert_eq!(s.on_answer(3, false), Adjustment::None);
        }
        assert_eq!(s.on_answer(3, false), Adjustment::Increased(2));
    }

    #[test]
    fn a_single_throttled_answer_between_clean_ones_changes_nothing() {
        let mut s = LimitState::new(4);
        for _ in 0..5 {
            assert_eq!(s.on_answer(0, true), Adjustment::None);
            assert_eq!(s.on_answer(0, false), Adjustment::None);
        }
        assert_eq!(s.limit, 4);
    }

    #[tokio::test]
    async fn the_limiter_never_grants_more_than_the_limit() {
        let limiter = Arc::new(Limiter::new(2));
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await.epoch }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        assert_eq!(waiting.await.unwrap(), 0);
    }
}
