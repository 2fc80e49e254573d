//! Step 3a: the TCS records, merged with their GMC doctors. The consumer
//! takes the sync until `syncEnd`, counting records, duplicates and
//! rejects, and cuts batches (full, or when the stream pauses). The merge
//! stage merges each record with its GMC doctor and outcome, both read into
//! memory before (step 2, no look-up per batch), with the doctor's
//! connection data, and sends the documents with the record's precedence
//! as external version.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use tracing::warn;

use super::settle::Ticket;
use super::sink::DocumentSink;
use super::tracker::MergeCounts;
use super::RunContext;
use crate::domain::{merge, GmcNumber, TcsRecord};
use crate::rebuild::record::RunPhase;
use crate::search::BulkItem;
use crate::sources::connection::ConnectionMap;
use crate::sources::gmc::{DoctorStore, GmcNumberSet, OutcomeMap};
use crate::sources::tcs::{TcsEvent, TcsSync, TcsTicket};

/// How long a partial batch waits for more records before it is written.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How long one wait for a message lasts when no batch is pending (the idle
/// timeout is counted across waits).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// TCS batches cut ahead of the one being merged.
pub(super) const LOOKAHEAD: usize = 2;

/// One pending TCS record of a batch.
pub(super) struct Pending {
    pub number: GmcNumber,
    pub record: Box<TcsRecord>,
    pub ticket: TcsTicket,
    /// The first record of this GMC number in the sync.
    pub first: bool,
}

/// Cuts a stream into batches of at most `size`.
#[derive(Debug)]
struct Batcher<T> {
    size: usize,
    pending: Vec<T>,
}

impl<T> Batcher<T> {
    fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            size,
            pending: Vec::with_capacity(size),
        }
    }

    /// Adds one item; a batch comes out when it is full.
    fn push(&mut self, item: T) -> Option<Vec<T>> {
        self.pending.push(item);
        (self.pending.len() >= self.size).then(|| self.take())
    }

    /// What is pending, if anything (the stream paused or ended).
    fn flush(&mut self) -> Option<Vec<T>> {
        (!self.pending.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<T> {
        std::mem::replace(&mut self.pending, Vec::with_capacity(self.size))
    }

    /// How long to wait for the next message: briefly while a batch is
    /// pending (it is written soon), longer otherwise.
    fn wait(&self) -> Duration {
        if self.pending.is_empty() {
            IDLE_POLL
        } else {
            BATCH_LINGER
        }
    }
}

/// Consumes the sync until `syncEnd`, sending batches to the merge stage.
pub(super) async fn consume(
    context: &mut RunContext<'_>,
    sync: &mut TcsSync,
    batches: mpsc::Sender<Vec<Pending>>,
    seen: &mut GmcNumberSet,
) -> anyhow::Result<()> {
    let batch_size = context
        .settings
        .run
        .merge_batch
        .min(usize::from(context.settings.rabbitmq.prefetch));
    let mut batcher = Batcher::new(batch_size);
    let mut progress = context.progress.phase(RunPhase::TcsMerge, "messages", None);
    let closed = || anyhow!("the merge stage stopped");
    loop {
        context.check_continue()?;
        let event = sync
            .next_within(batcher.wait())
            .await
            .context("while receiving the TCS sync")?;
        let record = &mut context.tracker.record;
        record.counts.tcs_messages = sync.received();
        record.counts.tcs_reconnects = sync.reconnects;
        record.counts.tcs_redelivered = sync.redelivered;
        let full = match event {
            Some(TcsEvent::Record {
                number,
                record: tcs,
                ticket,
                redelivered,
            }) => {
                progress.inc(1);
                let first = seen.add(&number);
                if redelivered && !first {
                    // Given again after a lost connection: written again
                    // with its version (an idempotent replay), not a new
                    // record. (A true duplicate redelivered is counted here
                    // too: after a reconnect the two cannot be told apart.)
                } else {
                    record.counts.tcs_records += 1;
                    if !first {
                        record.counts.tcs_duplicates += 1;
                    }
                }
                batcher.push(Pending {
                    number,
                    record: tcs,
                    ticket,
                    first,
                })
            }
            Some(TcsEvent::Rejected { reason }) => {
                progress.inc(1);
                record.reject(reason);
                None
            }
            Some(TcsEvent::End) => {
                if let Some(last) = batcher.flush() {
                    batches.send(last).await.map_err(|_| closed())?;
                }
                break;
            }
            // The stream paused: write what is pending now.
            None => batcher.flush(),
        };
        if let Some(batch) = full {
            batches.send(batch).await.map_err(|_| closed())?;
        }
        context.tracker.checkpoint().await;
    }
    progress.finish();
    if let Err(e) = sync.stop_consuming().await {
        warn!(error = %e, "Could not stop consuming after syncEnd.");
    }
    Ok(())
}

/// The merge stage: merges each record of a TCS batch with its GMC doctor
/// and outcome (both in memory) and sends the documents with the record's
/// precedence as version. A task of its own, so that parsing messages and
/// serialising documents use both cores.
pub(super) async fn merge_stage(
    gmc: Arc<GmcInMemory>,
    mut batches: mpsc::Receiver<Vec<Pending>>,
    sender: DocumentSink,
    merged: Arc<MergeCounts>,
) -> anyhow::Result<()> {
    while let Some(batch) = batches.recv().await {
        let updated_at = now_for_documents();
        for pending in batch {
            let doctor = gmc.doctors.get(&pending.number);
            if pending.first {
                merged.count_doctor(doctor.is_some());
            }
            let doc = merge(
                &pending.number,
                Some(&pending.record),
                doctor.as_ref(),
                gmc.outcomes.get(&pending.number).copied(),
                gmc.connections.get(&pending.number),
                &updated_at,
            );
            let item = BulkItem {
                source: serde_json::to_vec(&doc)?,
                version: Some(pending.record.precedence()),
                id: pending.number.into_string(),
                ticket: Ticket::Tcs(pending.ticket),
            };
            sender
                .send(item)
                .await
                .context("while writing merged TCS doctors")?;
        }
    }
    Ok(())
}

/// The GMC side of the run, read once into memory by step 2, with the
/// connection service's data.
pub(super) struct GmcInMemory {
    pub doctors: DoctorStore,
    pub outcomes: OutcomeMap,
    pub connections: ConnectionMap,
}

/// `updatedAt` of the documents written now.
pub(super) fn now_for_documents() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_leaves_when_full_and_what_is_left_on_a_flush() {
        let mut b = Batcher::new(3);
        assert_eq!(b.wait(), IDLE_POLL, "nothing pending: wait long");
        assert_eq!(b.push(1), None);
        assert_eq!(b.wait(), BATCH_LINGER, "a batch pending: write it soon");
        assert_eq!(b.push(2), None);
        assert_eq!(b.push(3), Some(vec![1, 2, 3]));
        assert_eq!(b.flush(), None, "nothing left after a full batch");
        assert_eq!(b.push(4), None);
        assert_eq!(b.flush(), Some(vec![4]));
        assert_eq!(b.wait(), IDLE_POLL);
    }

    #[test]
    fn a_zero_batch_size_still_makes_batches_of_one() {
        let mut b = Batcher::new(0);
        assert_eq!(b.push('a'), Some(vec!['a']));
    }

    #[test]
    fn documents_are_stamped_in_utc_with_milliseconds() {
        let t = now_for_documents();
        assert!(
            t.ends_with('Z') && t.len() == "2026-01-01T00:00:00.000Z".len(),
            "{t}"
        );
    }
}
