//! Step 3: the load. Creates the master generation and its bulk writer,
//! then runs four tasks that overlap: the TCS consumer cuts batches; the
//! merge stage joins them with the GMC side in memory and sends documents;
//! the bulk writer writes; the settling task acks and dead-letters as
//! outcomes arrive. After `syncEnd` the GMC-only doctors follow. A failure
//! stops everything and closes the sync: unacked messages go back to the
//! queue.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use super::gmc_read::{GmcReading, QueueBatches};
use super::settle::{drain, SettleError, Ticket};
use super::sink::{DocumentSink, RecommendationWriter};
use super::tcs_merge::{consume, merge_stage, LOOKAHEAD};
use super::{gmc_only, RunContext};
use crate::config::RecommendationBuild;
use crate::rebuild::record::RunPhase;
use crate::search::{Family, Generation};
use crate::sources::gmc::GmcNumberSet;
use crate::sources::tcs::TcsSync;

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

/// The load, while the GMC side is read; gives the services' batches to
/// ack (queue modes) with what it loaded, and gives them back if it fails.
pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: Option<&Generation>,
    sync: TcsSync,
    reading: GmcReading,
) -> anyhow::Result<(Loaded, QueueBatches)> {
    let mut queue_batches = QueueBatches::default();
    match load(
        context,
        master,
        recommendation,
        sync,
        reading,
        &mut queue_batches,
    )
    .await
    {
        Ok(loaded) => Ok((loaded, queue_batches)),
        Err(e) => {
            queue_batches.abandon().await;
            Err(e)
        }
    }
}

async fn load(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: Option<&Generation>,
    mut sync: TcsSync,
    mut reading: GmcReading,
    queue_batches: &mut QueueBatches,
) -> anyhow::Result<Loaded> {
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
    let settling =
        tokio::spawn(drain(writer_outcomes, sync.acks(), context.halt.clone()).in_current_span());
    let (batches, batches_rx) = mpsc::channel(LOOKAHEAD);
    let merger = tokio::spawn(
        merge_stage(
            reading.side.clone(),
            batches_rx,
            reading.take_events(),
            sender.clone(),
            context.tracker.merged.clone(),
            context.settings.rabbitmq.max_message_bytes,
        )
        .in_current_span(),
    );
    let mut seen = GmcNumberSet::new();
    let mut sent = consume(context, &mut sync, batches, &mut seen, &reading).await;
    if sent.is_ok() {
        // The merge ends once the GMC side is read and every record that
        // waited for it is sent.
        sent = match context.cancellable(async { Ok(merger.await) }).await {
            Ok(Ok(Ok(waited))) => {
                let counts = &mut context.tracker.record.counts;
                counts.tcs_waiting_peak = waited.peak_records;
                counts.tcs_waiting_peak_bytes = waited.peak_bytes;
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(anyhow!("the merge stage stopped unexpectedly: {e}")),
            Err(stopped) => Err(stopped),
        };
    } else if !merger.is_finished() {
        merger.abort();
    } else if let Ok(Err(merge_error)) = merger.await {
        // The consumer only saw the closed channel; the cause is here.
        sent = Err(merge_error);
    }
    // The GMC side's own failure is the cause of a merge that stopped for
    // it; a load failed for another reason does not wait for the read.
    if sent.is_ok() || reading.is_read() {
        match reading.finish(context).await {
            Ok(batches) => *queue_batches = batches,
            Err(read_error) => sent = Err(read_error),
        }
    }
    if sent.is_ok() && !context.tracker.in_phase(RunPhase::TcsMerge) {
        context.tracker.begin(RunPhase::TcsMerge).await;
    }
    if sent.is_ok() {
        sent = match reading.into_memory() {
            Ok(gmc) => gmc_only::write(context, &gmc, &sender, &mut seen).await,
            Err(e) => Err(e),
        };
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
        context.tracker.record.recommendation_bulk = twin.stats;
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
