//! Settling the bulk writer's outcomes: a TCS record's message is acked once
//! its document is written or superseded (a record of higher precedence won,
//! which is just as final), and dead-lettered with its reason when the
//! document failed for good. Outcomes come in bursts (a bulk request's
//! worth); each burst is settled with one coalesced ack.

use std::collections::BTreeMap;

use tracing::warn;

use crate::search::{BulkOutcome, BulkOutcomes, ItemOutcome};
use crate::sources::tcs::{TcsAcks, TcsTicket, REJECT_INDEXING_FAILED};
use crate::sources::SourceError;

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

/// What to do with one outcome's message.
#[derive(Debug, PartialEq, Eq)]
enum Settlement {
    /// Nothing to do (a GMC-only document written).
    Nothing,
    /// Ack this delivery tag.
    Ack(u64),
    /// Dead-letter the message with this detail, then ack it.
    DeadLetter(String),
    /// A GMC-only document failed: only counted.
    CountFailure,
}

fn settlement(outcome: &BulkOutcome<Ticket>) -> Settlement {
    match (&outcome.outcome, &outcome.ticket) {
        (ItemOutcome::Written | ItemOutcome::Superseded, Ticket::Tcs(t)) => {
            Settlement::Ack(t.delivery_tag)
        }
        (ItemOutcome::Written | ItemOutcome::Superseded, Ticket::Gmc) => Settlement::Nothing,
        (ItemOutcome::Failed { status, reason }, Ticket::Tcs(_)) => {
            Settlement::DeadLetter(format!(
                "OpenSearch refused the document {}: {status} {reason}",
                outcome.id
            ))
        }
        (ItemOutcome::Failed { .. }, Ticket::Gmc) => Settlement::CountFailure,
    }
}

/// Settles every outcome until the writer has finished.
pub(super) async fn drain(
    mut outcomes: BulkOutcomes<Ticket>,
    acks: TcsAcks,
) -> Result<Drained, SourceError> {
    let mut drained = Drained::default();
    let mut done: Vec<u64> = Vec::new();
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        while let Some(outcome) = next {
            settle_one(outcome, &acks, &mut drained, &mut done).await?;
            next = outcomes.try_recv();
        }
        acks.settle(done.drain(..)).await?;
    }
    Ok(drained)
}

async fn settle_one(
    outcome: BulkOutcome<Ticket>,
    acks: &TcsAcks,
    drained: &mut Drained,
    done: &mut Vec<u64>,
) -> Result<(), SourceError> {
    let failed = match settlement(&outcome) {
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
            body: b"{}".to_vec(),
        })
    }

    #[test]
    fn written_and_superseded_records_are_acked_and_gmc_documents_need_nothing() {
        assert_eq!(
            settlement(&outcome(ItemOutcome::Written, tcs(7))),
            Settlement::Ack(7)
        );
        assert_eq!(
            settlement(&outcome(ItemOutcome::Superseded, tcs(8))),
            Settlement::Ack(8)
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
}
