//! The dispatcher of the bulk writer: cuts the incoming stream into batches
//! bounded by documents and bytes (a partly filled batch leaves once it has
//! lingered), waits for a permit of the concurrency limiter, and hands each
//! batch to a task of its own. Also the NDJSON encoding of a batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, info, Instrument};

use super::limiter::Limiter;
use super::retry::{send_batch, BatchContext};
use super::{BulkItem, BulkOutcome, BulkStats, Counters};
use crate::config::BulkSettings;
use crate::retry::RetryPolicy;
use crate::search::client::SearchClient;

/// A partly filled batch is sent once it is this old, so a slow stream
/// still gets written promptly.
const MAX_LINGER: Duration = Duration::from_millis(50);

/// What the dispatcher needs.
pub(super) struct Dispatch {
    pub client: SearchClient,
    pub index: String,
    pub settings: BulkSettings,
    pub retry: RetryPolicy,
    pub counters: Arc<Counters>,
}

pub(super) async fn dispatch<T: Send + 'static>(
    this: Dispatch,
    mut input: mpsc::Receiver<BulkItem<T>>,
    outcomes: mpsc::Sender<BulkOutcome<T>>,
) -> BulkStats {
    let started = Instant::now();
    let max_docs = this.settings.max_batch_docs.max(1);
    let max_bytes = this.settings.max_batch_bytes.max(1);
    let max_concurrency = this.settings.concurrency.max(1);
    let limiter = Arc::new(Limiter::new(max_concurrency));
    let context = Arc::new(BatchContext {
        client: this.client,
        path: format!("/{}/_bulk", this.index),
        retry: this.retry,
        outcomes,
        counters: this.counters.clone(),
    });
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
            Counters::add(&this.counters.docs, 1);
            if item.source.iter().any(|b| *b == b'\n' || *b == b'\r') {
                let mut owned = item.source.to_vec();
                sanitize_source(&mut owned);
                item.source = owned.into();
            }
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
        tasks.spawn(send_batch(context.clone(), batch.items, permit).in_current_span());
        while let Some(done) = tasks.try_join_next() {
            note_lost(&this.counters, done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        note_lost(&this.counters, done);
    }
    let figures = limiter.figures();
    let stats = BulkStats {
        max_concurrency,
        min_concurrency_seen: figures.min_seen,
        final_concurrency: figures.limit,
        concurrency_decreases: figures.decreases,
        concurrency_increases: figures.increases,
        elapsed_ms: started.elapsed().as_millis() as u64,
        ..this.counters.snapshot()
    };
    info!(
        index = %this.index,
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

fn note_lost(counters: &Counters, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        Counters::add(&counters.lost_batches, 1);
        error!(error = %e, "A bulk batch task died; its items have no outcome.");
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
pub(super) fn item_bytes<T>(item: &BulkItem<T>) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn encoding_writes_one_action_and_one_source_line_per_item() {
        let items = vec![
            BulkItem {
                id: "123\"4".into(),
                source: br#"{"a":1}"#.to_vec().into(),
                version: None,
                ticket: (),
            },
            BulkItem {
                id: "5".into(),
                source: br#"{"b":2}"#.to_vec().into(),
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
}
