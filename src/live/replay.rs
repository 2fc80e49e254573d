//! Replaying the journal onto a generation: what a rebuild's catch-up does
//! with the live changes made since it began. Entries are taken in sequence
//! order, turned back into their changes, resolved with what MongoDB holds
//! now, and applied by name to the generation being built, so each doctor
//! ends with its latest change over the base load.

use crate::domain::Change;
use crate::retry::RetryPolicy;
use crate::search::updates::{apply_updates, Target};
use crate::search::SearchClient;
use crate::sources::gmc::GmcSource;
use crate::state::journal::Journal;

use super::recorded::Recorded;
use super::resolve::resolve;

/// Entries replayed per bulk request.
const REPLAY_CHUNK: i64 = 500;

/// What one replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Changes applied to the generation.
    pub replayed: u64,
    /// Documents created minus documents deleted.
    pub net_documents: i64,
    /// Changes refused for good (each logged).
    pub failed: u64,
    /// The last sequence number replayed.
    pub last_seq: i64,
}

/// Everything a replay reads from and writes to.
pub struct Replayer<'a> {
    pub journal: &'a Journal,
    pub gmc: &'a GmcSource,
    pub search: &'a SearchClient,
    pub generation: &'a str,
    pub retry: &'a RetryPolicy,
}

impl Replayer<'_> {
    /// Replays every entry of run `run_id` after `seq`.
    pub async fn replay(&self, run_id: &str, seq: i64) -> anyhow::Result<ReplayReport> {
        let mut report = ReplayReport {
            last_seq: seq,
            ..ReplayReport::default()
        };
        loop {
            let entries = self
                .journal
                .after(run_id, report.last_seq, REPLAY_CHUNK)
                .await?;
            let Some(last) = entries.last() else {
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
            let updated_at =
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let items = resolve(self.gmc, &changes, &updated_at).await?;
            let applied = apply_updates(
                self.search,
                Target::Generation(self.generation),
                &items,
                &updated_at,
                self.retry,
            )
            .await?;
            report.replayed += changes.len() as u64;
            report.net_documents += applied.net_documents();
            report.failed += applied.failed() as u64;
        }
    }
}
