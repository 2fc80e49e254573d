//! Settling a batch once it is written (and journaled when a run records):
//! TCS messages are acked, or dead-lettered when OpenSearch refused their
//! change for good; each change stream's position moves to its last event.

use tracing::warn;

use super::readers::{Incoming, Settle};
use crate::config::Settings;
use crate::search::updates::UpdateResult;
use crate::sources::changes::Watched;
use crate::sources::tcs::{TcsAcks, REJECT_INDEXING_FAILED};
use crate::state::streams::StreamPositions;

/// What settling a batch takes, per source.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    /// TCS messages to ack, in order (their batch positions).
    pub ack: Vec<usize>,
    /// TCS messages to dead-letter, with the reason.
    pub dead_letter: Vec<(usize, String)>,
    /// Each stream's last token (its batch position).
    pub tokens: Vec<(Watched, usize)>,
}

/// The plan for `batch` with the result of each of its changes (by batch
/// position; `Unchanged` for one with nothing to apply).
pub(super) fn plan(batch: &[Incoming], results: &[UpdateResult]) -> Plan {
    let mut plan = Plan::default();
    for (i, (incoming, result)) in batch.iter().zip(results).enumerate() {
        match (&incoming.settle, result) {
            (Settle::Tcs(_), UpdateResult::Failed { reason, .. }) => {
                plan.dead_letter.push((i, reason.clone()))
            }
            (Settle::Tcs(_), _) => plan.ack.push(i),
            (Settle::Stream { watched, .. }, result) => {
                if let UpdateResult::Failed { reason, .. } = result {
                    warn!(reason = %reason, "A GMC change was refused for good; the next rebuild brings it.");
                }
                match plan.tokens.iter_mut().find(|(w, _)| w == watched) {
                    Some(slot) => slot.1 = i,
                    None => plan.tokens.push((*watched, i)),
                }
            }
        }
    }
    plan
}

/// Carries out [`plan`].
pub(super) async fn settle(
    acks: &TcsAcks,
    positions: &StreamPositions,
    settings: &Settings,
    batch: Vec<Incoming>,
    results: &[UpdateResult],
) -> anyhow::Result<()> {
    let plan = plan(&batch, results);
    let mut settles: Vec<Option<Settle>> = batch.into_iter().map(|i| Some(i.settle)).collect();
    for (i, reason) in &plan.dead_letter {
        if let Some(Settle::Tcs(ticket)) = &settles[*i] {
            acks.dead_letter(ticket, REJECT_INDEXING_FAILED, reason)
                .await?;
        }
    }
    let tags: Vec<_> = plan
        .ack
        .iter()
        .filter_map(|i| match &settles[*i] {
            Some(Settle::Tcs(ticket)) => Some(ticket.key()),
            _ => None,
        })
        .collect();
    acks.settle(tags).await?;
    for (watched, i) in plan.tokens {
        if let Some(Settle::Stream { token, .. }) = settles[i].take() {
            positions.store(watched.collection(settings), token).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(watched: Watched, token: &str) -> Incoming {
        Incoming {
            applied: None,
            settle: Settle::Stream {
                watched,
                token: bson::Bson::String(token.into()),
                made_at_ms: None,
            },
        }
    }

    #[test]
    fn each_stream_moves_to_its_last_event_and_refusals_are_not_acks() {
        let batch = vec![
            stream(Watched::Doctors, "d1"),
            stream(Watched::Recommendations, "r1"),
            stream(Watched::Doctors, "d2"),
        ];
        let failed = UpdateResult::Failed {
            kind: "mapper_parsing_exception".into(),
            reason: "bad".into(),
        };
        let results = vec![UpdateResult::Updated, failed, UpdateResult::Created];
        let plan = plan(&batch, &results);
        assert_eq!(
            plan.tokens,
            vec![(Watched::Doctors, 2), (Watched::Recommendations, 1)]
        );
        assert!(plan.ack.is_empty() && plan.dead_letter.is_empty());
    }
}
