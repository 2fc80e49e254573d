//! The bulk writer: turns a stream of documents into batched, concurrent
//! `_bulk` requests against one generation, and gives back exactly one
//! outcome per document.
//!
//! Shape: the caller sends [`BulkItem`]s through a bounded [`BulkSender`]
//! (`send().await` waits while the writer is busy: that is the
//! backpressure). The dispatcher ([`dispatch`]) cuts the stream into batches
//! bounded by document count and bytes ([`BulkSettings`]) and hands each
//! batch to its own task once the adaptive [`limiter`] grants a permit. A
//! batch task ([`retry`]) sends its request, classifies the answer item by
//! item ([`classify`], pure functions), reports what is settled, and sends
//! what may succeed later (429, 5xx, a connection failure, items missing
//! from a malformed answer) again after the retry policy's backoff, until
//! its retries are spent; only then does such an item fail, with
//! `retries_exhausted` as its reason.
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
//! Figures: the writer keeps its counts in one place, readable while it
//! runs through [`BulkProgress`] and returned whole by the [`BulkWriter`]
//! when the stream ends.
//!
//! Ordering: items with the same `_id` in one stream may be written in any
//! order (a retried item can land after a later one). Give such items a
//! `version`: it is written with `version_type=external_gte`, so the higher
//! version wins whatever the arrival order, an equal one is an idempotent
//! replay, and a lower one is [`ItemOutcome::Superseded`].

pub mod classify;
pub mod dispatch;
pub mod limiter;
pub mod retry;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tracing::Instrument;

pub use classify::{classify_response, ItemVerdict, SentItem};
pub use dispatch::encode_items;

use super::client::SearchClient;
use crate::config::BulkSettings;
use crate::retry::RetryPolicy;

/// One document to write.
#[derive(Clone, Debug)]
pub struct BulkItem<T> {
    /// The document `_id` (the GMC number).
    pub id: String,
    /// The document, serialized JSON. Shared, not copied, when the same
    /// document goes to two writers (the master and the recommendation
    /// generation): each writer holds its items until they are settled, and
    /// at the end of a 1M load both pipelines are full at once.
    pub source: Bytes,
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
        /// The reason's short name: OpenSearch's error type, or
        /// `retries_exhausted` (see [`classify::index_refusal`]).
        kind: String,
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

/// What a writer did: read live from [`BulkProgress`], returned whole by
/// the [`BulkWriter`] when the stream ends, and kept in the run record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, rename_all = "camelCase")]
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
        self.settled() as f64 * 1000.0 / self.elapsed_ms as f64
    }

    /// Items whose outcome is known.
    pub fn settled(&self) -> u64 {
        self.written + self.superseded + self.failed
    }
}

/// The counters of one writer, shared by its tasks.
#[derive(Default)]
struct Counters {
    docs: AtomicU64,
    written: AtomicU64,
    superseded: AtomicU64,
    failed: AtomicU64,
    failed_by_reason: Mutex<BTreeMap<String, u64>>,
    retried_items: AtomicU64,
    requests: AtomicU64,
    failed_requests: AtomicU64,
    bytes: AtomicU64,
    throttled_429: AtomicU64,
    throttled_responses: AtomicU64,
    lost_batches: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn fail(&self, reason: &str) {
        Self::add(&self.failed, 1);
        let mut by_reason = self
            .failed_by_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_reason.entry(reason.to_string()).or_default() += 1;
    }

    fn snapshot(&self) -> BulkStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BulkStats {
            docs: get(&self.docs),
            written: get(&self.written),
            superseded: get(&self.superseded),
            failed: get(&self.failed),
            failed_by_reason: self
                .failed_by_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            retried_items: get(&self.retried_items),
            requests: get(&self.requests),
            failed_requests: get(&self.failed_requests),
            bytes: get(&self.bytes),
            throttled_429: get(&self.throttled_429),
            throttled_responses: get(&self.throttled_responses),
            lost_batches: get(&self.lost_batches),
            ..BulkStats::default()
        }
    }
}

/// A live view of a writer's counts, cheap to clone: what the run record
/// and progress show while the writer works.
#[derive(Clone)]
pub struct BulkProgress {
    counters: Arc<Counters>,
}

impl BulkProgress {
    /// The counts so far (the concurrency figures and the elapsed time are
    /// only in the final stats).
    pub fn snapshot(&self) -> BulkStats {
        self.counters.snapshot()
    }
}

/// The writer is gone (it panicked or was aborted); the item comes back.
#[derive(Debug, thiserror::Error)]
#[error("the bulk writer has stopped; item {} was not accepted", .0.id)]
pub struct BulkClosed<T>(pub BulkItem<T>);

/// The sending half: `send` waits while the writer is busy. Drop it (and
/// every clone) to end the stream; the [`BulkWriter`] then yields the stats.
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

    /// An outcome that is already waiting, without waiting for one.
    pub fn try_recv(&mut self) -> Option<BulkOutcome<T>> {
        self.rx.try_recv().ok()
    }
}

/// The running writer. Await it (after dropping every sender) for its
/// final [`BulkStats`].
pub struct BulkWriter {
    handle: JoinHandle<BulkStats>,
    counters: Arc<Counters>,
}

impl BulkWriter {
    /// A live view of the counts.
    pub fn progress(&self) -> BulkProgress {
        BulkProgress {
            counters: self.counters.clone(),
        }
    }

    /// Stops the writer; items in flight get no outcome.
    pub fn abort(&self) {
        self.handle.abort();
    }
}

impl IntoFuture for BulkWriter {
    type Output = Result<BulkStats, JoinError>;
    type IntoFuture = JoinHandle<BulkStats>;

    fn into_future(self) -> Self::IntoFuture {
        self.handle
    }
}

/// Starts a writer into `index` (a concrete generation name).
pub fn spawn_writer<T: Send + 'static>(
    client: SearchClient,
    index: String,
    settings: BulkSettings,
    retry: RetryPolicy,
) -> (BulkSender<T>, BulkOutcomes<T>, BulkWriter) {
    let max_batch_docs = settings.max_batch_docs.max(1);
    let concurrency = settings.concurrency.max(1);
    let (tx, rx) = mpsc::channel(max_batch_docs);
    let outcome_room = concurrency
        .saturating_mul(max_batch_docs)
        .saturating_add(max_batch_docs)
        .max(1024);
    let (otx, orx) = mpsc::channel(outcome_room);
    let counters = Arc::new(Counters::default());
    // The writer's tasks log within the caller's span (a run's `run_id`).
    let handle = tokio::spawn(
        dispatch::dispatch(
            dispatch::Dispatch {
                client,
                index,
                settings,
                retry,
                counters: counters.clone(),
            },
            rx,
            otx,
        )
        .in_current_span(),
    );
    (
        BulkSender { tx },
        BulkOutcomes { rx: orx },
        BulkWriter { handle, counters },
    )
}
