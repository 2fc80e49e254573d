//! Settling the bulk writer's outcomes: a TCS record's message is acked once
//! its document is written or superseded (a record of higher precedence won,
//! which is just as final), and dead-lettered with its reason when the
//! document failed for good. Outcomes come in bursts (a bulk request's
//! worth); each burst is settled with one coalesced ack.
//!
//! A failure that is the index's and not the document's (a write block,
//! the flood-stage watermark's read-only block, the index gone, OpenSearch
//! not answering through every retry) stops the load instead: its message
//! is neither dead-lettered nor acked (it goes back to the queue), and the
//! run fails naming the cause. Dead-lettering every record because the disk
//! is full would empty the sync into the dead-letter queue.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use tracing::{error, warn};

use crate::search::bulk::classify::index_refusal;
use crate::search::{BulkOutcome, BulkOutcomes, ItemOutcome};
use crate::sources::tcs::{DeliveryKey, TcsAcks, TcsTicket, REJECT_INDEXING_FAILED};
use crate::sources::SourceError;
use crate::text::clip;

/// What a document sent to the writer carries back in its outcome.
#[derive(Debug)]
pub(super) enum Ticket {
    /// A TCS record's document: settle its message.
    Tcs(TcsTicket),
    /// A GMC-only document: nothing to settle.
    Gmc,
}

/// At most this many ids of failed documents are kept (each is counted).
const MAX_FAILED_IDS: usize = 10_000;

/// What the settling found.
#[derive(Debug, Default)]
pub(super) struct Drained {
    /// Ids whose document failed for good (a few; each also counted).
    pub failed_ids: Vec<String>,
    /// Rejects by reason (`indexing_failed`).
    pub rejects: BTreeMap<String, u64>,
}

/// Why the load must stop, set once by the settling task when OpenSearch
/// refuses the generation itself or the settling cannot go on; the consumer
/// and the GMC-only writer look at it at every safe point.
#[derive(Clone, Debug, Default)]
pub(crate) struct Halt(Arc<OnceLock<String>>);

impl Halt {
    fn set(&self, reason: String) {
        let _ = self.0.set(reason);
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// The load stopped because the index refused writes.
#[derive(Debug, thiserror::Error)]
pub(super) enum SettleError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    IndexRefused(String),
}

/// What to do with one outcome's message.
#[derive(Debug, PartialEq, Eq)]
enum Settlement {
    /// Nothing to do (a GMC-only document written).
    Nothing,
    /// Ack this delivery.
    Ack(DeliveryKey),
    /// Dead-letter the message with this detail, then ack it.
    DeadLetter(String),
    /// A GMC-only document failed: only counted.
    CountFailure,
    /// The index refused the write: stop the load, settle nothing.
    Halt(String),
}

fn settlement(outcome: &BulkOutcome<Ticket>) -> Settlement {
    if let ItemOutcome::Failed {
        status,
        kind,
        reason,
    } = &outcome.outcome
    {
        if let Some(cause) = index_refusal(kind, reason) {
            return Settlement::Halt(format!(
                "the load stopped, the new generation refuses writes: {cause}; the last answer: {status} {}",
                clip(reason, 300)
            ));
        }
    }
    match (&outcome.outcome, &outcome.ticket) {
        (ItemOutcome::Written | ItemOutcome::Superseded, Ticket::Tcs(t)) => {
            Settlement::Ack(t.key())
        }
        (ItemOutcome::Written | ItemOutcome::Superseded, Ticket::Gmc) => Settlement::Nothing,
        (ItemOutcome::Failed { status, reason, .. }, Ticket::Tcs(_)) => {
            Settlement::DeadLetter(format!(
                "OpenSearch refused the document {}: {status} {reason}",
                outcome.id
            ))
        }
        (ItemOutcome::Failed { .. }, Ticket::Gmc) => Settlement::CountFailure,
    }
}

/// Settles every outcome until the writer has finished. If it cannot (the
/// index refuses writes, an ack or a dead letter fails, or the task dies),
/// `halt` says why, so the load stops at its next safe point rather than
/// writing on with nobody settling: the writer's outcomes would be dropped
/// and, once the prefetch window is full of unacked messages, the sync
/// would wait for ever.
pub(super) async fn drain(
    mut outcomes: BulkOutcomes<Ticket>,
    acks: TcsAcks,
    halt: Halt,
) -> Result<Drained, SettleError> {
    let mut guard = HaltUnlessDone {
        halt: halt.clone(),
        done: false,
    };
    let mut drained = Drained::default();
    let mut done: Vec<DeliveryKey> = Vec::new();
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        while let Some(outcome) = next {
            if let Err(e) = settle_one(outcome, &acks, &mut drained, &mut done).await {
                match &e {
                    SettleError::IndexRefused(cause) => {
                        error!(cause = %cause, "Stopping the load.");
                        halt.set(cause.clone());
                    }
                    SettleError::Source(cause) => {
                        halt.set(format!("a write's message could not be settled: {cause}"));
                    }
                }
                return Err(e);
            }
            next = outcomes.try_recv();
        }
        if let Err(e) = acks.settle(done.drain(..)).await {
            halt.set(format!("the TCS messages written could not be acked: {e}"));
            return Err(e.into());
        }
    }
    guard.done = true;
    Ok(drained)
}

/// Halts the load when the settling ends any other way than done: a panic
/// (a defect) unwinds through it too.
struct HaltUnlessDone {
    halt: Halt,
    done: bool,
}

impl Drop for HaltUnlessDone {
    fn drop(&mut self) {
        if !self.done {
            self.halt
                .set("the task that settles the writes (acks, dead letters) stopped".into());
        }
    }
}

async fn settle_one(
    outcome: BulkOutcome<Ticket>,
    acks: &TcsAcks,
    drained: &mut Drained,
    done: &mut Vec<DeliveryKey>,
) -> Result<(), SettleError> {
    let failed = match settlement(&outcome) {
        Settlement::Halt(cause) => return Err(SettleError::IndexRefused(cause)),
        Settlement::Nothing => return Ok(()),
        Settlement::Ack(tag) => {
            done.push(tag);
            return Ok(());
        }
        Settlement::DeadLetter(detail) => {
            if let Ticket::Tcs(ticket) = &outcome.ticket {
                acks.dead_letter(ticket, REJECT_INDEXING_FAILED, &detail)
                    .await?;
            }
            detail
        }
        Settlement::CountFailure => format!("{:?}", outcome.outcome),
    };
    warn!(id = %outcome.id, reason = %failed, "A document failed for good.");
    *drained
        .rejects
        .entry(REJECT_INDEXING_FAILED.to_string())
        .or_default() += 1;
    if drained.failed_ids.len() < MAX_FAILED_IDS {
        drained.failed_ids.push(outcome.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(outcome: ItemOutcome, ticket: Ticket) -> BulkOutcome<Ticket> {
        BulkOutcome {
            id: "123".into(),
            ticket,
            outcome,
        }
    }

    fn tcs(tag: u64) -> Ticket {
        Ticket::Tcs(TcsTicket {
            delivery_tag: tag,
            epoch: 0,
            body: b"{}".to_vec(),
        })
    }

    #[test]
    fn written_and_superseded_records_are_acked_and_gmc_documents_need_nothing() {
        assert_eq!(
            settlement(&outcome(ItemOutcome::Written, tcs(7))),
            Settlement::Ack(DeliveryKey { epoch: 0, tag: 7 })
        );
        assert_eq!(
            settlement(&outcome(ItemOutcome::Superseded, tcs(8))),
            Settlement::Ack(DeliveryKey { epoch: 0, tag: 8 })
        );
        assert_eq!(
            settlement(&outcome(ItemOutcome::Written, Ticket::Gmc)),
            Settlement::Nothing
        );
    }

    #[test]
    fn a_record_whose_document_failed_for_good_is_dead_lettered_with_the_reason() {
        let failed = ItemOutcome::Failed {
            status: 400,
            kind: "mapper_parsing_exception".into(),
            reason: "mapper_parsing_exception: failed to parse [tcsPersonId]".into(),
        };
        match settlement(&outcome(failed.clone(), tcs(9))) {
            Settlement::DeadLetter(detail) => {
                assert!(
                    detail.contains("123")
                        && detail.contains("400")
                        && detail.contains("tcsPersonId"),
                    "{detail}"
                )
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert_eq!(
            settlement(&outcome(failed, Ticket::Gmc)),
            Settlement::CountFailure
        );
    }

    #[test]
    fn a_refusal_of_the_index_itself_stops_the_load_naming_the_cause() {
        let cases = [
            (403, "cluster_block_exception", "cluster_block_exception: index [m] blocked by: [FORBIDDEN/8/index write (api)];", "index.blocks.write"),
            (429, "cluster_block_exception", "cluster_block_exception: index [m] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];", "flood-stage"),
            (404, "index_not_found_exception", "index_not_found_exception: no such index [m]", "is gone"),
            (0, "retries_exhausted", "retries exhausted: request failed: connection refused", "every retry"),
        ];
        for (status, kind, reason, named) in cases {
            let failed = ItemOutcome::Failed {
                status,
                kind: kind.into(),
                reason: reason.into(),
            };
            for ticket in [tcs(3), Ticket::Gmc] {
                match settlement(&outcome(failed.clone(), ticket)) {
                    Settlement::Halt(cause) => {
                        assert!(cause.contains(named), "{cause}");
                        assert!(cause.contains(reason), "the server's words too: {cause}");
                    }
                    other => panic!("{reason}: expected a halt, got {other:?}"),
                }
            }
        }
    }
}
