//! Replaying the journal onto a rebuild's new generations: what its
//! catch-up does with the live changes made since it began. Entries are
//! taken in sequence order, turned back into their changes, resolved with
//! what MongoDB holds now, and applied by name to the master generation
//! being built and, at the swap, to the recommendation generation too (it
//! was copied from the master before the last changes came), so each
//! doctor ends with its latest change over the base load in both. Each
//! chunk is coalesced by doctor as the applier's batches are (only the
//! latest change of a doctor and source is resolved and written), and
//! written in concurrent lanes by document.

use crate::domain::Change;
use crate::handover::MongoHandover;
use crate::retry::RetryPolicy;
use crate::search::updates::{apply_updates_in_lanes, Target, UpdateItem};
use crate::search::SearchClient;
use crate::sources::connection::ConnectionSource;
use crate::sources::gmc::GmcSource;

use super::applier::coalesce::latest;
use super::recorded::Recorded;
use super::resolve::{resolve, Finder};

/// Entries read, coalesced and replayed at a time.
const REPLAY_CHUNK: i64 = 2000;

/// How long a chunk the index refuses (429s through every retry of the
/// retry policy, a write block) is sent again before the replay fails:
/// a change left out of a generation would be lost at its swap, so the
/// replay waits as the live applier does, and past this the run fails
/// with no alias moved (the changes are in the live index and the journal
/// is kept until the run ends).
pub const REPLAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// What one replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Changes applied to the generation.
    pub replayed: u64,
    /// Journaled changes passed over for a later one of the same doctor
    /// and source in the same chunk.
    pub coalesced: u64,
    /// Documents created minus documents deleted (in the first generation).
    pub net_documents: i64,
    /// Changes refused for good (each logged).
    pub failed: u64,
    /// The last sequence number replayed.
    pub last_seq: i64,
}

/// Everything a replay reads from and writes to.
pub struct Replayer<'a> {
    pub handover: &'a MongoHandover,
    pub gmc: &'a GmcSource,
    /// The connection service's data, when the index keeps it.
    pub connection: Option<&'a ConnectionSource>,
    pub search: &'a SearchClient,
    /// The generations to replay onto, by name; counts are the first's.
    pub generations: Vec<&'a str>,
    pub retry: &'a RetryPolicy,
    /// Concurrent requests per chunk (`bulk.concurrency`).
    pub lanes: usize,
}

impl Replayer<'_> {
    /// Replays every entry of run `run_id` in `(seq, through]`.
    pub async fn replay(
        &self,
        run_id: &str,
        seq: i64,
        through: i64,
    ) -> anyhow::Result<ReplayReport> {
        let mut report = ReplayReport {
            last_seq: seq,
            ..ReplayReport::default()
        };
        loop {
            let entries = self
                .handover
                .entries(run_id, report.last_seq, through, REPLAY_CHUNK)
                .await?;
            let Some(last) = entries.last() else {
                // Voided numbers at the end are passed over too.
                if through != i64::MAX {
                    report.last_seq = report.last_seq.max(through);
                }
                return Ok(report);
            };
            report.last_seq = last.seq;
            let changes: Vec<Change> = entries
                .iter()
                .filter_map(|e| match Recorded::from_entry(e).map(|r| r.change()) {
                    Ok(Ok(change)) => Some(change),
                    Ok(Err(reason)) => {
                        tracing::warn!(seq = e.seq, reason, "A journaled change is not a change.");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "An unreadable journal entry.");
                        None
                    }
                })
                .collect();
            let keep = latest(changes.iter().enumerate());
            let superseded = changes.len() - keep.len();
            let changes: Vec<Change> = keep.into_iter().map(|i| changes[i].clone()).collect();
            let updated_at =
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            // The trainees filtered out of TIS are looked for in the first
            // generation; the others are copies of it.
            let finder = Finder {
                search: self.search,
                target: self.generations.first().copied().unwrap_or_default(),
            };
            let items = resolve(self.gmc, self.connection, finder, &changes, &updated_at)
                .await?
                .items;
            for (i, generation) in self.generations.iter().enumerate() {
                let applied = self.apply_settled(generation, &items, &updated_at).await?;
                if i == 0 {
                    report.net_documents += applied.net;
                    report.failed += applied.failed;
                }
            }
            report.replayed += changes.len() as u64;
            report.coalesced += superseded as u64;
        }
    }

    /// Applies `items` to `generation` until no item is left unsettled by
    /// the index (see [`REPLAY_PATIENCE`]); what each attempt created or
    /// deleted adds up (an item applied once is a no-op when sent again).
    async fn apply_settled(
        &self,
        generation: &str,
        items: &[UpdateItem],
        updated_at: &str,
    ) -> anyhow::Result<Settled> {
        let began = std::time::Instant::now();
        let mut waits = self.retry.endless_waits();
        let mut net = 0;
        loop {
            let applied = apply_updates_in_lanes(
                self.search,
                Target::Generation(generation),
                items,
                updated_at,
                self.retry,
                self.lanes,
            )
            .await?;
            net += applied.net_documents();
            let Some(reason) = applied.index_refusal() else {
                return Ok(Settled {
                    net,
                    failed: applied.failed() as u64,
                });
            };
            let delay = waits.next().unwrap_or(self.retry.max_backoff);
            if began.elapsed() + delay > REPLAY_PATIENCE {
                anyhow::bail!(
                    "generation {generation} refused live changes for {} s ({reason}); a change left out would be lost at the swap, so none is made",
                    began.elapsed().as_secs()
                );
            }
            tracing::warn!(
                generation,
                reason,
                delay_ms = delay.as_millis() as u64,
                "The replay of live changes was refused by the index; sending the chunk again."
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// What one chunk did to one generation once settled.
struct Settled {
    net: i64,
    failed: u64,
}
