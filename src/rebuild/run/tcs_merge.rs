//! Step 3a: the TCS records, merged with their GMC doctors while the GMC
//! side is still read (step 2 runs beside the load). The consumer takes the
//! sync until `syncEnd`, counting records, duplicates and rejects, and cuts
//! batches (full, or when the stream pauses). The merge stage merges each
//! record with its GMC doctor and outcome, from memory (no look-up per
//! batch), with the doctor's connection data, as soon as they are read,
//! and sends the documents with the record's precedence as external
//! version.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use tracing::warn;

use super::settle::Ticket;
use super::sink::DocumentSink;
use super::tracker::MergeCounts;
use super::RunContext;
use std::collections::HashMap;

use super::gmc_read::{GmcEvent, GmcReading, GmcSide};
use crate::domain::{merge, parse_tcs_message_within, GmcNumber, TcsMessage, TcsRecord};
use crate::rebuild::record::RunPhase;
use crate::search::BulkItem;
use crate::sources::gmc::GmcNumberSet;
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
    reading: &GmcReading,
) -> anyhow::Result<()> {
    let mut merge_phase = false;
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
        if batches.is_closed() {
            // The merge stage failed (its error is the cause), or the GMC
            // read it waits on stopped.
            return Err(closed());
        }
        if !merge_phase && reading.is_read() {
            // The GMC side is read: what is left is the merge's own time.
            context.tracker.begin(RunPhase::TcsMerge).await;
            merge_phase = true;
        }
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

/// What the merge held back, at its peak: TCS records waiting for their
/// GMC doctor to be read (their messages unacked, so the prefetch window
/// bounds them).
#[derive(Debug, Default)]
pub(super) struct Waited {
    pub peak_records: u64,
    pub peak_bytes: u64,
}

/// A TCS record waiting for its GMC doctor, kept compactly: its message
/// alone (parsed again when the doctor comes).
struct Waiting {
    ticket: TcsTicket,
    first: bool,
}

/// The records waiting, by GMC number, in arrival order per number.
#[derive(Default)]
struct WaitingRoom {
    by_number: HashMap<GmcNumber, Vec<Waiting>>,
    records: u64,
    bytes: u64,
    waited: Waited,
}

impl WaitingRoom {
    fn hold(&mut self, number: GmcNumber, waiting: Waiting) {
        self.records += 1;
        self.bytes += waiting.ticket.body.len() as u64;
        self.waited.peak_records = self.waited.peak_records.max(self.records);
        self.waited.peak_bytes = self.waited.peak_bytes.max(self.bytes);
        self.by_number.entry(number).or_default().push(waiting);
    }

    fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    fn release(&mut self, number: &GmcNumber) -> Vec<Waiting> {
        let released = self.by_number.remove(number).unwrap_or_default();
        self.forget(&released);
        released
    }

    /// Every waiting record whose number `keep` does not hold on to.
    fn release_all_but(&mut self, keep: impl Fn(&GmcNumber) -> bool) -> Vec<(GmcNumber, Waiting)> {
        let numbers: Vec<GmcNumber> = self
            .by_number
            .keys()
            .filter(|n| !keep(n))
            .cloned()
            .collect();
        let mut released = Vec::new();
        for number in numbers {
            for waiting in self.release(&number) {
                released.push((number.clone(), waiting));
            }
        }
        released
    }

    fn forget(&mut self, released: &[Waiting]) {
        self.records -= released.len() as u64;
        self.bytes -= released
            .iter()
            .map(|w| w.ticket.body.len() as u64)
            .sum::<u64>();
    }
}

/// The merge stage, which runs while the GMC side is still read: a TCS
/// record is merged and sent as soon as its GMC doctor is read (or, once
/// every doctor is, as TCS's alone), with the doctor's outcome and
/// connection data, which are read first. Records whose doctor is not read
/// yet wait, compactly ([`Waiting`]); each page of doctors read releases
/// theirs. The record's precedence is the document's version. A task of its
/// own, so that parsing messages and serialising documents use both cores.
pub(super) async fn merge_stage(
    side: Arc<GmcSide>,
    mut batches: mpsc::Receiver<Vec<Pending>>,
    mut events: mpsc::UnboundedReceiver<GmcEvent>,
    sender: DocumentSink,
    merged: Arc<MergeCounts>,
    max_message_bytes: usize,
) -> anyhow::Result<Waited> {
    let mut room = WaitingRoom::default();
    let (mut ready, mut doctors_done) = (false, false);
    let (mut batches_open, mut events_open) = (true, true);
    let write = |number: GmcNumber, record: Box<TcsRecord>, ticket: TcsTicket, first: bool| {
        let side = &side;
        let sender = &sender;
        let merged = &merged;
        async move {
            let doctor = side.doctor(&number);
            if first {
                merged.count_doctor(doctor.is_some());
            }
            let doc = merge(
                &number,
                Some(&record),
                doctor.as_ref(),
                side.outcome(&number),
                side.connections().and_then(|c| c.get(&number)),
                &now_for_documents(),
            );
            let item = BulkItem {
                source: serde_json::to_vec(&doc)?.into(),
                version: Some(record.precedence()),
                id: number.into_string(),
                ticket: Ticket::Tcs(ticket),
            };
            sender
                .send(item)
                .await
                .context("while writing merged TCS doctors")
        }
    };
    let reparse =
        |waiting: Waiting| -> anyhow::Result<(GmcNumber, Box<TcsRecord>, TcsTicket, bool)> {
            match parse_tcs_message_within(&waiting.ticket.body, max_message_bytes) {
                Ok(TcsMessage::Record(number, record)) => {
                    Ok((number, record, waiting.ticket, waiting.first))
                }
                _ => Err(anyhow!(
                    "a TCS message held for its GMC doctor no longer parses as a record"
                )),
            }
        };
    while batches_open || events_open {
        tokio::select! {
            batch = batches.recv(), if batches_open => {
                let Some(batch) = batch else {
                    batches_open = false;
                    continue;
                };
                for pending in batch {
                    if ready && (doctors_done || side.has_doctor(&pending.number)) {
                        write(pending.number, pending.record, pending.ticket, pending.first).await?;
                    } else {
                        room.hold(pending.number, Waiting { ticket: pending.ticket, first: pending.first });
                    }
                }
            }
            event = events.recv(), if events_open => {
                let released: Vec<Waiting> = match event {
                    Some(GmcEvent::Doctors) if ready && !room.is_empty() => {
                        room.release_all_but(|n| !side.has_doctor(n))
                            .into_iter()
                            .map(|(_, w)| w)
                            .collect()
                    }
                    Some(GmcEvent::Doctors) => Vec::new(),
                    Some(GmcEvent::Ready) => {
                        ready = true;
                        let all = doctors_done;
                        room.release_all_but(|n| !all && !side.has_doctor(n))
                            .into_iter()
                            .map(|(_, w)| w)
                            .collect()
                    }
                    Some(GmcEvent::DoctorsDone) => {
                        doctors_done = true;
                        if ready {
                            room.release_all_but(|_| false).into_iter().map(|(_, w)| w).collect()
                        } else {
                            Vec::new()
                        }
                    }
                    None => {
                        events_open = false;
                        if !(ready && doctors_done) {
                            return Err(anyhow!("the read of the GMC side stopped before it ended"));
                        }
                        Vec::new()
                    }
                };
                for waiting in released {
                    let (number, record, ticket, first) = reparse(waiting)?;
                    write(number, record, ticket, first).await?;
                }
            }
        }
    }
    Ok(room.waited)
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
