//! Where the load's documents go: the master generation's bulk writer and,
//! when the recommendation generation is built alongside
//! (`run.recommendation_build = "alongside"`, the default), a second bulk
//! writer into it, fed the same documents with the same versions. The two
//! streams run side by side, so the recommendation generation is complete
//! when the load ends: no `_reindex` runs alone afterwards.
//!
//! The TCS messages are acked on the master's outcomes alone (as before:
//! a failed run asks TCS for a whole new sync anyway). The second stream's
//! failures are counted and logged; its own count gate (the same number of
//! documents as the master, after the catch-up) refuses a run that lost
//! one.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use super::settle::Ticket;
use crate::rebuild::engine::Engine;
use crate::search::{
    BulkItem, BulkOutcomes, BulkSender, BulkStats, BulkWriter, Generation, ItemOutcome,
};

/// Failed ids kept for the log, beyond which only the count grows.
const FAILED_EXAMPLES: usize = 10;

/// Sends each document to every generation the load builds.
#[derive(Clone)]
pub(super) struct DocumentSink {
    master: BulkSender<Ticket>,
    recommendation: Option<BulkSender<()>>,
}

impl DocumentSink {
    pub fn new(master: BulkSender<Ticket>, recommendation: Option<BulkSender<()>>) -> Self {
        Self {
            master,
            recommendation,
        }
    }

    /// Sends `item` to the recommendation writer (a copy) and the master
    /// writer; waits while either is busy (the backpressure of both).
    pub async fn send(&self, item: BulkItem<Ticket>) -> anyhow::Result<()> {
        if let Some(recommendation) = &self.recommendation {
            let copy = BulkItem {
                id: item.id.clone(),
                source: item.source.clone(),
                version: item.version,
                ticket: (),
            };
            recommendation
                .send(copy)
                .await
                .map_err(|_| anyhow!("the recommendation generation's bulk writer stopped"))?;
        }
        self.master.send(item).await.map_err(|e| anyhow!("{e}"))
    }
}

/// The bulk writer into the recommendation generation, and the task that
/// counts its outcomes.
pub(super) struct RecommendationWriter {
    writer: BulkWriter,
    outcomes: JoinHandle<Failures>,
    generation: String,
}

#[derive(Debug, Default)]
struct Failures {
    count: u64,
    examples: Vec<String>,
}

/// What the recommendation stream did (its `failed` counts every item that
/// failed for good).
pub(super) struct RecommendationLoad {
    pub stats: BulkStats,
}

impl RecommendationWriter {
    /// A writer into `generation`, its outcomes drained as they come.
    pub fn spawn(engine: &Engine, generation: &Generation) -> (BulkSender<()>, Self) {
        let (sender, outcomes, writer) = engine.bulk_writer::<()>(generation);
        let outcomes = tokio::spawn(count_failures(outcomes).in_current_span());
        (
            sender,
            Self {
                writer,
                outcomes,
                generation: generation.name.clone(),
            },
        )
    }

    /// Waits for the stream to end (every sender dropped) and reports it.
    pub async fn finish(self) -> anyhow::Result<RecommendationLoad> {
        let stats = self
            .writer
            .await
            .context("the recommendation generation's bulk writer stopped unexpectedly")?;
        let failures = self
            .outcomes
            .await
            .context("the recommendation generation's outcome task stopped unexpectedly")?;
        if stats.lost_batches > 0 {
            return Err(anyhow!(
                "the bulk writer into {} lost {} batches (their documents have no outcome)",
                self.generation,
                stats.lost_batches
            ));
        }
        if failures.count > 0 {
            warn!(
                generation = %self.generation,
                failed = failures.count,
                examples = ?failures.examples,
                "Documents failed for good in the recommendation generation; its count gate decides."
            );
        }
        info!(
            generation = %self.generation,
            written = stats.written,
            superseded = stats.superseded,
            requests = stats.requests,
            "Recommendation generation loaded alongside the master."
        );
        Ok(RecommendationLoad { stats })
    }

    /// A failed load: let the requests in flight finish (bounded), so that
    /// none lands after the generation is deleted.
    pub async fn stop(self, grace: Duration) {
        let mut handle = self.writer.into_future();
        if tokio::time::timeout(grace, &mut handle).await.is_err() {
            handle.abort();
        }
        self.outcomes.abort();
    }
}

async fn count_failures(mut outcomes: BulkOutcomes<()>) -> Failures {
    let mut failures = Failures::default();
    while let Some(outcome) = outcomes.recv().await {
        if let ItemOutcome::Failed { kind, .. } = outcome.outcome {
            failures.count += 1;
            if failures.examples.len() < FAILED_EXAMPLES {
                failures.examples.push(format!("{} ({kind})", outcome.id));
            }
        }
    }
    failures
}
