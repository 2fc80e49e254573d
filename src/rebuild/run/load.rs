//! Step 3: the load. Creates the master generation and its bulk writer,
//! then runs four tasks that overlap: the TCS consumer cuts batches; the
//! merge stage joins them with the GMC side in memory and sends documents;
//! the bulk writer writes; the settling task acks and dead-letters as
//! outcomes arrive. After `syncEnd` the GMC-only doctors follow. A failure
//! stops everything and closes the sync: unacked messages go back to the
//! queue.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use super::gmc_read::Sources;
use super::settle::{drain, SettleError, Ticket};
use super::sink::{DocumentSink, RecommendationWriter};
use super::tcs_merge::{consume, merge_stage, GmcInMemory, LOOKAHEAD};
use super::{gmc_only, RunContext};
use crate::config::RecommendationBuild;
use crate::rebuild::record::RunPhase;
use crate::search::{Family, Generation};
use crate::sources::gmc::GmcNumberSet;

/// What the load delivered.
pub(super) struct Loaded {
    /// Distinct doctors sent to the index.
    pub doctors: u64,
    /// Ids whose document failed for good.
    pub failed_ids: Vec<String>,
}

/// How long a failed load waits for the requests already in flight.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(30);

/// Stops a failed load: no more acks (unacked messages go back to the
/// queue), and the writer finishes the requests already sent (bounded), so
/// that none lands after the generation is deleted: a `_bulk` into a
/// missing index would create it with a dynamic mapping.
async fn stop_writing(
    settling: tokio::task::JoinHandle<Result<super::settle::Drained, SettleError>>,
    writer: crate::search::BulkWriter,
) {
    settling.abort();
    let progress = writer.progress();
    let mut handle = writer.into_future();
    if tokio::time::timeout(IN_FLIGHT_GRACE, &mut handle)
        .await
        .is_err()
    {
        warn!(
            requests = progress.snapshot().requests,
            "The bulk writer did not finish its requests in time; stopping it."
        );
        handle.abort();
    }
}

/// Creates the master generation the load writes into.
pub(super) async fn create_master(context: &mut RunContext<'_>) -> anyhow::Result<Generation> {
    let master = context
        .engine
        .create_generation(Family::Master, &context.run_id())
        .await
        .context("while creating the master generation")?;
    context.tracker.record.generations.push(master.name.clone());
    info!(generation = %master.name, "Master generation created.");
    Ok(master)
}

/// Creates the recommendation generation when it is built alongside the
/// master (`run.recommendation_build = "alongside"`); `None` when it is
/// built by `_reindex` after the load.
pub(super) async fn create_recommendation(
    context: &mut RunContext<'_>,
    master: &Generation,
) -> anyhow::Result<Option<Generation>> {
    if context.settings.run.recommendation_build != RecommendationBuild::Alongside {
        return Ok(None);
    }
    let recommendation = context
        .engine
        .create_recommendation_generation(master, &context.run_id())
        .await
        .context("while creating the recommendation generation")?;
    context
        .tracker
        .record
        .generations
        .push(recommendation.name.clone());
    info!(generation = %recommendation.name, "Recommendation generation created; it is loaded alongside the master.");
    Ok(Some(recommendation))
}

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: Option<&Generation>,
    sources: Sources,
) -> anyhow::Result<Loaded> {
    let Sources {
        mut sync,
        outcomes,
        doctors,
        connections,
    } = sources;
    let gmc = Arc::new(GmcInMemory {
        doctors,
        outcomes,
        connections,
    });
    let (sender, writer_outcomes, writer) = context.engine.bulk_writer::<Ticket>(master);
    let (twin_sender, twin) = match recommendation {
        Some(generation) => {
            let (sender, twin) = RecommendationWriter::spawn(&context.engine, generation);
            (Some(sender), Some(twin))
        }
        None => (None, None),
    };
    let sender = DocumentSink::new(sender, twin_sender);
    context.tracker.watch_bulk(writer.progress());
    context.tracker.begin(RunPhase::TcsMerge).await;
    let settling =
        tokio::spawn(drain(writer_outcomes, sync.acks(), context.halt.clone()).in_current_span());
    let (batches, batches_rx) = mpsc::channel(LOOKAHEAD);
    let merger = tokio::spawn(
        merge_stage(
            gmc.clone(),
            batches_rx,
            sender.clone(),
            context.tracker.merged.clone(),
        )
        .in_current_span(),
    );
    let mut seen = GmcNumberSet::new();
    let mut sent = consume(context, &mut sync, batches, &mut seen).await;
    if sent.is_ok() {
        sent = match merger.await {
            Ok(merged) => merged,
            Err(e) => Err(anyhow!("the merge stage stopped unexpectedly: {e}")),
        };
    } else if !merger.is_finished() {
        merger.abort();
    } else if let Ok(Err(merge_error)) = merger.await {
        // The consumer only saw the closed channel; the cause is here.
        sent = Err(merge_error);
    }
    if sent.is_ok() {
        sent = gmc_only::write(context, &gmc, &sender, &mut seen).await;
    }
    drop(sender);
    if let Err(e) = sent {
        if let Some(twin) = twin {
            twin.stop(IN_FLIGHT_GRACE).await;
        }
        stop_writing(settling, writer).await;
        sync.close().await;
        return Err(e);
    }
    let bulk = writer
        .await
        .context("the bulk writer stopped unexpectedly")?;
    let drained = settling
        .await
        .context("the outcome task stopped unexpectedly")?;
    sync.close().await;
    if let Some(twin) = twin {
        let twin = twin.finish().await?;
        let counts = &mut context.tracker.record.counts;
        counts.recommendation_failed = twin.failed;
        counts.recommendation_written = twin.stats.written + twin.stats.superseded;
    }
    let drained = match drained {
        Ok(drained) => drained,
        Err(SettleError::IndexRefused(cause)) => return Err(anyhow!(cause)),
        Err(e) => return Err(anyhow!(e).context("while acknowledging TCS messages")),
    };
    let lost_batches = bulk.lost_batches;
    context.tracker.bulk_finished(bulk);
    if lost_batches > 0 {
        return Err(anyhow!(
            "the bulk writer lost {lost_batches} batches (their documents have no outcome)"
        ));
    }
    for (reason, n) in &drained.rejects {
        context.tracker.record.reject_many(reason, *n);
    }
    // The writer has logged its figures ("Bulk load finished.").
    info!(doctors = seen.len(), "Load finished.");
    Ok(Loaded {
        doctors: seen.len() as u64,
        failed_ids: drained.failed_ids,
    })
}
