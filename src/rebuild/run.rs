//! The full rebuild run: the lease, both sources, the merge, the engine,
//! the gates, the promotion, retention and the run record.
//!
//! The flow (DESIGN §2):
//!
//! 1. Take the single-flight lease, record the run, mark runs whose process
//!    died as abandoned, delete half-built generations of dead runs.
//! 2. Load the latest recommendation outcome of every doctor (one
//!    aggregation) into a compact map.
//! 3. Create the master generation and its bulk writer; ask TCS for a sync.
//! 4. Consume TCS records in batches of `run.merge_batch`: fetch the batch's
//!    GMC doctors with one `$in`, merge, send to the writer with the
//!    record's precedence as external version (the best duplicate wins in
//!    any arrival order). A task drains the writer's outcomes and acks each
//!    record's message only once its document is written or superseded; a
//!    document refused for good dead-letters its message. GMC numbers seen
//!    go into a compact set.
//! 5. After `syncEnd`, page through `doctorsForDB` and write the doctors TCS
//!    did not send.
//! 6. Finish the load, validate, build the recommendation generation,
//!    confirm the lease and promote (one `_aliases` call), apply retention.
//!
//! Memory holds the outcome map and the seen set (a few tens of bytes per
//! doctor) plus one batch and what the writer has in flight; never the data
//! set. A run that fails at any point has moved no alias: only the
//! promotion moves them, in one request, after every check.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use futures::{FutureExt, StreamExt};
use opensearch::http::Method;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::engine::Engine;
use super::gates::GateReport;
use super::progress::Progress;
use crate::config::Settings;
use crate::domain::{merge, GmcDoctor, GmcNumber, TcsRecord};
use crate::ops::Refused;
use crate::search::bulk::{
    BulkItem, BulkOutcome, BulkOutcomes, BulkSender, BulkStats, ItemOutcome,
};
use crate::search::generations::Generation;
use crate::search::Family;
use crate::sources::gmc::{reject_key, GmcNumberSet, GmcSource, OutcomeMap};
use crate::sources::tcs::{TcsAcks, TcsEvent, TcsSync, TcsTicket, REJECT_INDEXING_FAILED};
use crate::sources::{mongo_client, SourceError};
use crate::state::history::{
    new_run_id, GateVerdict, PromotionSummary, RunHistory, RunOutcome, RunPhase, RunRecord, Trigger,
};
use crate::state::lease::{lease_collection, Lease, LeaseHolder, REBUILD_LEASE};
use crate::state::StateError;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Build and validate, do not promote.
    pub dry_run: bool,
    /// Let the `share_of_previous` gate be overridden.
    pub force: bool,
    pub trigger: Trigger,
    /// Progress bars on stderr (else log lines).
    pub bars: bool,
    /// Use this run id instead of a new one.
    pub run_id: Option<String>,
}

/// What a finished run did.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub record: RunRecord,
    pub bulk: Option<BulkStats>,
    pub gates: Option<GateReport>,
}

/// Seconds between two saves of a live run's record.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// How long a partial batch waits for more records before it is written.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How long one wait for a message lasts when no batch is pending (the idle
/// timeout is counted across waits).
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Runs one rebuild from start to end. A held lease or a failed gate is an
/// error carrying [`Refused`]; every run, refused ones included, is recorded.
pub async fn run_rebuild(settings: &Settings, options: RunOptions) -> anyhow::Result<RunReport> {
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let mongo = mongo_client(&settings.mongodb)
        .await
        .context("while connecting to MongoDB")?;
    let history = RunHistory::new(&mongo, &settings.mongodb);
    let mut record = RunRecord::start(&run_id, options.trigger, options.dry_run, options.force);

    let holder = LeaseHolder::this_process(&run_id);
    let lease = match Lease::acquire(
        lease_collection(&mongo, &settings.mongodb),
        REBUILD_LEASE,
        holder,
        Duration::from_secs(settings.run.lease_ttl_secs.max(1)),
    )
    .await
    {
        Ok(lease) => lease,
        Err(StateError::Held {
            run_id: holder,
            host,
            pid,
            expires_at,
            ..
        }) => {
            let message = format!(
                "another rebuild is running: run {holder} on {host} (pid {pid}) holds the lease until {expires_at} (renewed while it lives)"
            );
            warn!(run_id = %run_id, holder = %holder, "Refused: the lease is held.");
            record.finish(RunOutcome::Refused, Some(message.clone()));
            if let Err(e) = history.save(&mut record).await {
                warn!(error = %e, "Could not record the refused run.");
            }
            return Err(anyhow!(Refused(message)));
        }
        Err(e) => return Err(e).context("while taking the rebuild lease"),
    };
    info!(run_id = %run_id, trigger = %options.trigger, dry_run = options.dry_run, "Rebuild started.");

    let mut run = Run {
        settings,
        options: &options,
        tracker: Tracker::new(history, record),
        lease: &lease,
        mongo,
        progress: if options.bars {
            Progress::for_stderr()
        } else {
            Progress::logs()
        },
        engine: None,
        bulk: None,
        gates: None,
    };
    let result = run.execute().await;
    let Run {
        mut tracker,
        engine,
        bulk,
        gates,
        ..
    } = run;
    let outcome = match &result {
        Ok(outcome) => *outcome,
        Err(e) if is_refusal(e) => RunOutcome::Refused,
        Err(_) => RunOutcome::Failed,
    };
    if let (Err(_), Some(engine)) = (&result, &engine) {
        // Nothing moved; delete what this run half-built, best effort (the
        // next run would delete it anyway).
        delete_own_half_built(engine, &run_id).await;
    }
    tracker
        .record
        .finish(outcome, result.as_ref().err().map(|e| format!("{e:#}")));
    tracker.save_now().await;
    if let Err(e) = lease.release().await {
        warn!(error = %e, "Could not release the lease; it expires by itself.");
    }
    let record = tracker.record;
    info!(
        run_id = %record.id,
        outcome = %record.outcome,
        secs = record.duration_ms() / 1000,
        docs = record.counts.docs_expected,
        "Rebuild ended."
    );
    result.map(|_| RunReport {
        record,
        bulk,
        gates,
    })
}

/// Deletes the generations of `run_id` still building. Only this run's:
/// a run that failed because it lost the lease must not touch another's.
async fn delete_own_half_built(engine: &Engine, run_id: &str) {
    let listing = match engine.list_generations().await {
        Ok(listing) => listing,
        Err(e) => {
            warn!(error = %e, "Could not list generations to delete the half-built ones.");
            return;
        }
    };
    let others: Vec<String> = listing
        .into_iter()
        .filter(|g| g.run_id() != Some(run_id))
        .map(|g| g.name)
        .collect();
    match engine.delete_orphans(&others).await {
        Ok(deleted) if !deleted.is_empty() => {
            info!(deleted = ?deleted, "Deleted the half-built generations of the failed run.")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Could not delete the half-built generations."),
    }
}

fn is_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Refused>().is_some())
}

/// The run record and when it was last saved.
struct Tracker {
    history: RunHistory,
    record: RunRecord,
    last_save: Instant,
    live: Arc<LiveCounts>,
}

impl Tracker {
    fn new(history: RunHistory, record: RunRecord) -> Self {
        Self {
            history,
            record,
            last_save: Instant::now(),
            live: Arc::default(),
        }
    }

    fn sync_live(&mut self) {
        let c = &mut self.record.counts;
        c.docs_written = self.live.written.load(Ordering::Relaxed);
        c.docs_superseded = self.live.superseded.load(Ordering::Relaxed);
        c.docs_failed = self.live.failed.load(Ordering::Relaxed);
        c.merged_both = self.live.merged_both.load(Ordering::Relaxed);
        c.merged_tcs_only = self.live.merged_tcs_only.load(Ordering::Relaxed);
    }

    async fn save_now(&mut self) {
        self.sync_live();
        self.last_save = Instant::now();
        if let Err(e) = self.history.save(&mut self.record).await {
            warn!(run_id = %self.record.id, error = %e, "Could not save the run record.");
        }
    }

    /// Saves when the last save is a while ago (progress for `status`).
    async fn checkpoint(&mut self) {
        if self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save_now().await;
        }
    }

    async fn begin(&mut self, phase: RunPhase) {
        self.record.begin_phase(phase);
        self.save_now().await;
    }
}

/// Bulk outcomes counted by the drain task, read by checkpoints.
#[derive(Default)]
struct LiveCounts {
    written: AtomicU64,
    superseded: AtomicU64,
    failed: AtomicU64,
    merged_both: AtomicU64,
    merged_tcs_only: AtomicU64,
}

/// What a document sent to the writer carries back in its outcome.
#[derive(Debug)]
enum Ticket {
    /// A TCS record's document: settle its message.
    Tcs(TcsTicket),
    /// A GMC-only document: nothing to settle.
    Gmc,
}

/// What the drain task found.
#[derive(Debug, Default)]
struct Drained {
    /// Ids whose document failed for good (a few; each also counted).
    failed_ids: Vec<String>,
    /// Rejects by reason (`indexing_failed`).
    rejects: BTreeMap<String, u64>,
}

/// Settles every outcome: acks written or superseded TCS records,
/// dead-letters TCS records whose document failed for good. Outcomes come
/// in bursts (a bulk request's worth); each burst is settled with one ack.
async fn drain(
    mut outcomes: BulkOutcomes<Ticket>,
    acks: TcsAcks,
    live: Arc<LiveCounts>,
) -> Result<Drained, SourceError> {
    let mut drained = Drained::default();
    let mut done: Vec<u64> = Vec::new();
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        while let Some(outcome) = next {
            settle_one(outcome, &acks, &live, &mut drained, &mut done).await?;
            next = outcomes.recv().now_or_never().flatten();
        }
        acks.settle(done.drain(..)).await?;
    }
    Ok(drained)
}

async fn settle_one(
    outcome: BulkOutcome<Ticket>,
    acks: &TcsAcks,
    live: &LiveCounts,
    drained: &mut Drained,
    done: &mut Vec<u64>,
) -> Result<(), SourceError> {
    match outcome.outcome {
        ItemOutcome::Written | ItemOutcome::Superseded => {
            let counter = if outcome.outcome == ItemOutcome::Written {
                &live.written
            } else {
                &live.superseded
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Ticket::Tcs(t) = outcome.ticket {
                done.push(t.delivery_tag);
            }
        }
        ItemOutcome::Failed { status, reason } => {
            live.failed.fetch_add(1, Ordering::Relaxed);
            warn!(id = %outcome.id, status, reason = %reason, "A document failed for good.");
            if let Ticket::Tcs(t) = &outcome.ticket {
                acks.dead_letter(
                    t,
                    REJECT_INDEXING_FAILED,
                    &format!(
                        "OpenSearch refused the document {}: {status} {reason}",
                        outcome.id
                    ),
                )
                .await?;
            }
            *drained
                .rejects
                .entry(REJECT_INDEXING_FAILED.to_string())
                .or_default() += 1;
            if drained.failed_ids.len() < 10_000 {
                drained.failed_ids.push(outcome.id);
            }
        }
    }
    Ok(())
}

/// One pending TCS record of a batch.
struct Pending {
    number: GmcNumber,
    record: Box<TcsRecord>,
    ticket: TcsTicket,
    /// The first record of this GMC number in the sync.
    first: bool,
}

/// The state of one run while it executes.
struct Run<'a> {
    settings: &'a Settings,
    options: &'a RunOptions,
    tracker: Tracker,
    lease: &'a Lease,
    mongo: mongodb::Client,
    progress: Progress,
    engine: Option<Engine>,
    bulk: Option<BulkStats>,
    gates: Option<GateReport>,
}

impl Run<'_> {
    async fn execute(&mut self) -> anyhow::Result<RunOutcome> {
        let run_id = self.tracker.record.id.clone();
        self.tracker.save_now().await;
        let history = self.tracker.history.clone();
        match history.mark_abandoned(&run_id).await {
            Ok(ids) if !ids.is_empty() => {
                warn!(runs = ?ids, "Marked runs whose process died as abandoned.")
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Could not mark abandoned runs."),
        }
        let engine = Engine::new(self.settings)
            .await
            .context("while connecting to OpenSearch")?;
        self.engine = Some(engine.clone());

        self.tracker.begin(RunPhase::Cleanup).await;
        let orphans = engine
            .delete_orphans(&[])
            .await
            .context("while deleting half-built generations of dead runs")?;
        if !orphans.is_empty() {
            warn!(generations = ?orphans, "Deleted half-built generations left by dead runs.");
        }
        self.tracker.record.orphans_deleted = orphans;

        self.tracker.begin(RunPhase::Outcomes).await;
        // Ask TCS for the sync first, so that it publishes (into the queue,
        // up to the prefetch into our consumer, nothing acked) while MongoDB
        // aggregates the outcomes: the two used to run one after the other.
        let sync = TcsSync::start(&self.settings.rabbitmq)
            .await
            .context("while starting the TCS sync")?;
        self.tracker.record.counts.tcs_stale_discarded = sync.purged_stale;
        let mut gmc = GmcSource::new(&self.mongo, &self.settings.mongodb);
        let loaded = async {
            gmc.probe_id_types()
                .await
                .context("while looking at the ids of doctorsForDB")?;
            gmc.latest_outcomes()
                .await
                .context("while loading the latest recommendation outcomes")
        }
        .await;
        let (outcomes, load) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // Unacked messages go back to the queue; the next run discards them.
                sync.close().await;
                return Err(e);
            }
        };
        self.tracker.record.counts.gmc_outcomes = outcomes.len() as u64;
        if load.unusable_numbers > 0 {
            *self
                .tracker
                .record
                .rejects
                .entry("recommendation_unusable_gmc_number".into())
                .or_default() += load.unusable_numbers;
        }
        if load.unknown_outcomes > 0 {
            *self
                .tracker
                .record
                .rejects
                .entry("recommendation_unknown_outcome".into())
                .or_default() += load.unknown_outcomes;
        }

        let master = match engine.create_generation(Family::Master, &run_id).await {
            Ok(master) => master,
            Err(e) => {
                sync.close().await;
                return Err(e).context("while creating the master generation");
            }
        };
        self.tracker.record.generations.push(master.name.clone());
        info!(generation = %master.name, "Master generation created.");

        let (sender, writer_outcomes, writer) = engine.bulk_writer::<Ticket>(&master);
        let load_result = self
            .load(
                &gmc,
                sync,
                Arc::new(outcomes),
                sender,
                writer_outcomes,
                writer,
            )
            .await;
        let (bulk, drained, seen) = load_result?;
        let failed_ids = drained.failed_ids;
        for (reason, n) in drained.rejects {
            *self.tracker.record.rejects.entry(reason).or_default() += n;
        }
        self.bulk = Some(bulk.clone());

        self.tracker.begin(RunPhase::FinishLoad).await;
        engine
            .finish_load(&master)
            .await
            .context("while restoring the serving settings of the master generation")?;
        let missing = missing_ids(&engine, &master, &failed_ids).await?;
        let expected = seen - missing;
        self.tracker.record.counts.docs_expected = expected;
        let counts = serde_json::to_value(&self.tracker.record.counts)?;
        if let Err(e) = engine
            .set_source_counts(&master, json!({"run": run_id, "counts": counts}))
            .await
        {
            warn!(error = %e, "Could not record the source counts in the generation.");
        }

        self.tracker.begin(RunPhase::Validate).await;
        let gates = engine
            .validate(&master, expected, &bulk, self.options.force)
            .await;
        self.tracker.record.gates = gates
            .gates
            .iter()
            .map(|g| GateVerdict {
                name: g.name.clone(),
                passed: g.passed,
                overridden: g.overridden,
                detail: g.detail.clone(),
                figures: g.figures.clone(),
            })
            .collect();
        self.gates = Some(gates.clone());
        if !gates.passed() {
            return Err(anyhow!(Refused(format!(
                "validation failed, no alias moved: {}",
                gates.summary()
            ))));
        }

        self.tracker.begin(RunPhase::Recommendation).await;
        let (recommendation, reindex) = engine
            .build_recommendation_generation(&master, &run_id)
            .await
            .context("while building the recommendation generation")?;
        self.tracker
            .record
            .generations
            .push(recommendation.name.clone());
        info!(generation = %recommendation.name, took_ms = reindex.took_ms, "Recommendation generation built.");

        if self.options.dry_run {
            info!(master = %master.name, recommendation = %recommendation.name, "Dry run: built and validated, not promoted.");
            return Ok(RunOutcome::DryRun);
        }

        self.tracker.begin(RunPhase::Promote).await;
        self.lease
            .confirm()
            .await
            .context("while confirming the lease before promoting")?;
        let promotion = match engine
            .promote_validated(&master, &recommendation, &gates)
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_refusal() => {
                return Err(anyhow!(Refused(format!("promotion refused: {e}"))))
            }
            Err(e) => return Err(e).context("while moving the aliases"),
        };
        self.tracker.record.promotion = Some(PromotionSummary {
            master: promotion.master.to.clone(),
            recommendation: promotion.recommendation.to.clone(),
            previous_master: promotion.master.from.clone(),
            previous_recommendation: promotion.recommendation.from.clone(),
            took_ms: promotion.took_ms,
        });

        self.tracker.begin(RunPhase::Retention).await;
        match engine
            .apply_retention(&[master.name.clone(), recommendation.name.clone()])
            .await
        {
            Ok(report) => self.tracker.record.retention_deleted = report.deleted,
            // The new generation serves already; old ones stay until next time.
            Err(e) => warn!(error = %e, "Retention failed; old generations are kept."),
        }
        Ok(RunOutcome::Succeeded)
    }

    /// Steps 3 to 5: TCS and GMC into the writer. Returns the writer's
    /// stats, what the drain found and the number of distinct doctors sent.
    ///
    /// Four tasks overlap: this one consumes TCS and cuts batches; the merge
    /// stage looks up each batch's GMC doctors (running ahead by
    /// [`LOOKAHEAD`] batches), merges and sends; the bulk writer writes; the
    /// drain settles outcomes and acks messages.
    async fn load(
        &mut self,
        gmc: &GmcSource,
        mut sync: TcsSync,
        outcomes: Arc<OutcomeMap>,
        sender: BulkSender<Ticket>,
        writer_outcomes: BulkOutcomes<Ticket>,
        writer: JoinHandle<BulkStats>,
    ) -> anyhow::Result<(BulkStats, Drained, u64)> {
        self.tracker.begin(RunPhase::TcsMerge).await;
        let live = self.tracker.live.clone();
        let drainer = tokio::spawn(drain(writer_outcomes, sync.acks(), live.clone()));
        let (batches, batches_rx) = mpsc::channel(LOOKAHEAD);
        let merger = tokio::spawn(merge_stage(
            gmc.clone(),
            outcomes.clone(),
            batches_rx,
            sender.clone(),
            live,
        ));
        let mut seen = GmcNumberSet::new();
        let mut sent = self.consume_tcs(&mut sync, batches, &mut seen).await;
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
            sent = self
                .write_gmc_only(gmc, &outcomes, &sender, &mut seen)
                .await;
        }
        drop(sender);
        if let Err(e) = sent {
            // Stop here: unacked messages go back to the queue with the connection.
            writer.abort();
            drainer.abort();
            sync.close().await;
            return Err(e);
        }
        let bulk = writer
            .await
            .context("the bulk writer stopped unexpectedly")?;
        let drained = drainer
            .await
            .context("the outcome task stopped unexpectedly")?
            .context("while acknowledging TCS messages");
        sync.close().await;
        let drained = drained?;
        if bulk.lost_batches > 0 {
            return Err(anyhow!(
                "the bulk writer lost {} batches (their documents have no outcome)",
                bulk.lost_batches
            ));
        }
        self.tracker.sync_live();
        // The writer has logged its figures ("Bulk load finished.").
        info!(doctors = seen.len(), "Load finished.");
        Ok((bulk, drained, seen.len() as u64))
    }

    /// Step 4: consumes the sync until `syncEnd`, cutting batches for the
    /// merge stage (full, or when the stream pauses).
    async fn consume_tcs(
        &mut self,
        sync: &mut TcsSync,
        batches: mpsc::Sender<Vec<Pending>>,
        seen: &mut GmcNumberSet,
    ) -> anyhow::Result<()> {
        let batch_size = self
            .settings
            .run
            .merge_batch
            .min(usize::from(self.settings.rabbitmq.prefetch))
            .max(1);
        let mut batch: Vec<Pending> = Vec::with_capacity(batch_size);
        let mut progress = self.progress.phase(RunPhase::TcsMerge, "messages", None);
        let closed = || anyhow!("the merge stage stopped");
        loop {
            if let Some(reason) = self.lease.lost_reason() {
                return Err(anyhow!("the lease was lost mid-run: {reason}"));
            }
            let wait = if batch.is_empty() {
                IDLE_POLL
            } else {
                BATCH_LINGER
            };
            let event = sync
                .next_within(wait)
                .await
                .context("while receiving the TCS sync")?;
            let counts = &mut self.tracker.record.counts;
            counts.tcs_messages = sync.received();
            let flush = match event {
                Some(TcsEvent::Record {
                    number,
                    record,
                    ticket,
                }) => {
                    progress.inc(1);
                    counts.tcs_records += 1;
                    let first = seen.add(&number);
                    if !first {
                        counts.tcs_duplicates += 1;
                    }
                    batch.push(Pending {
                        number,
                        record,
                        ticket,
                        first,
                    });
                    batch.len() >= batch_size
                }
                Some(TcsEvent::Rejected { reason }) => {
                    progress.inc(1);
                    self.tracker.record.reject(reason);
                    false
                }
                Some(TcsEvent::End) => {
                    if !batch.is_empty() {
                        batches.send(batch).await.map_err(|_| closed())?;
                    }
                    break;
                }
                None => true,
            };
            if flush && !batch.is_empty() {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                batches.send(full).await.map_err(|_| closed())?;
            }
            self.tracker.checkpoint().await;
        }
        progress.finish();
        if let Err(e) = sync.stop_consuming().await {
            warn!(error = %e, "Could not stop consuming after syncEnd.");
        }
        Ok(())
    }

    /// Step 5: the doctors of `doctorsForDB` that TCS did not send. The
    /// reader task of [`GmcSource::pages`] fetches ahead while this one sends.
    async fn write_gmc_only(
        &mut self,
        gmc: &GmcSource,
        outcomes: &OutcomeMap,
        sender: &BulkSender<Ticket>,
        seen: &mut GmcNumberSet,
    ) -> anyhow::Result<()> {
        self.tracker.begin(RunPhase::GmcOnly).await;
        let total = gmc.estimated_doctors().await.ok();
        let mut progress = self.progress.phase(RunPhase::GmcOnly, "doctors", total);
        let mut pages = gmc.pages();
        while let Some(page) = pages
            .next_page()
            .await
            .context("while reading doctorsForDB")?
        {
            progress.inc(page.rows.len() as u64);
            let updated_at = now_for_documents();
            for row in page.rows {
                let (number, doctor) = match row {
                    Ok(pair) => pair,
                    Err(e) => {
                        self.tracker.record.reject(reject_key(&e));
                        continue;
                    }
                };
                self.tracker.record.counts.gmc_doctors += 1;
                if !seen.add(&number) {
                    continue;
                }
                self.tracker.record.counts.merged_gmc_only += 1;
                let doc = merge(
                    &number,
                    None,
                    Some(&doctor),
                    outcomes.get(&number).copied(),
                    &updated_at,
                );
                let item = BulkItem {
                    source: serde_json::to_vec(&doc)?,
                    id: number.into_string(),
                    version: None,
                    ticket: Ticket::Gmc,
                };
                sender
                    .send(item)
                    .await
                    .map_err(|e| anyhow!("{e}"))
                    .context("while writing GMC-only doctors")?;
            }
            self.tracker.checkpoint().await;
            if let Some(reason) = self.lease.lost_reason() {
                return Err(anyhow!("the lease was lost mid-run: {reason}"));
            }
        }
        if pages.resumes() > 0 {
            warn!(
                resumes = pages.resumes(),
                "The doctorsForDB cursor was reopened after writer stalls."
            );
        }
        progress.finish();
        Ok(())
    }
}

/// TCS batches whose GMC lookups run ahead of the one being sent.
const LOOKAHEAD: usize = 2;

/// The merge stage: for each TCS batch, looks up its GMC doctors (spawned,
/// up to [`LOOKAHEAD`] batches ahead, so MongoDB works while the writer
/// applies backpressure), merges each record with its doctor and outcome,
/// and sends the documents with the record's precedence as version.
async fn merge_stage(
    gmc: GmcSource,
    outcomes: Arc<OutcomeMap>,
    batches: mpsc::Receiver<Vec<Pending>>,
    sender: BulkSender<Ticket>,
    live: Arc<LiveCounts>,
) -> anyhow::Result<()> {
    let lookups = futures::stream::unfold(batches, |mut rx| async move {
        rx.recv().await.map(|batch| (batch, rx))
    })
    .map(|batch: Vec<Pending>| {
        let gmc = gmc.clone();
        tokio::spawn(async move {
            let mut numbers: Vec<GmcNumber> = batch.iter().map(|p| p.number.clone()).collect();
            numbers.sort_unstable();
            numbers.dedup();
            let doctors = gmc.doctors_by_number(&numbers).await;
            (batch, doctors)
        })
    })
    .buffered(LOOKAHEAD);
    futures::pin_mut!(lookups);
    while let Some(joined) = lookups.next().await {
        let (batch, doctors) = joined.context("a GMC lookup task stopped unexpectedly")?;
        let doctors: HashMap<GmcNumber, GmcDoctor> = doctors
            .context("while fetching GMC doctors for a batch of TCS records")?
            .into_iter()
            .collect();
        let updated_at = now_for_documents();
        for pending in batch {
            let doctor = doctors.get(&pending.number);
            if pending.first {
                let counter = if doctor.is_some() {
                    &live.merged_both
                } else {
                    &live.merged_tcs_only
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            let doc = merge(
                &pending.number,
                Some(&pending.record),
                doctor,
                outcomes.get(&pending.number).copied(),
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
                .map_err(|e| anyhow!("{e}"))
                .context("while writing merged TCS doctors")?;
        }
    }
    Ok(())
}

/// `updatedAt` of the documents written now.
fn now_for_documents() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How many of the documents that failed for good are really absent (a
/// duplicate of the same doctor may have been written instead).
async fn missing_ids(
    engine: &Engine,
    generation: &Generation,
    failed_ids: &[String],
) -> anyhow::Result<u64> {
    if failed_ids.is_empty() {
        return Ok(0);
    }
    let mut distinct: Vec<&String> = failed_ids.iter().collect();
    distinct.sort();
    distinct.dedup();
    let body = json!({"query": {"ids": {"values": distinct}}});
    let found = engine
        .client()
        .json(
            Method::Post,
            &format!("/{}/_count", generation.name),
            &[],
            Some(&body),
        )
        .await
        .context("while counting the documents that failed")?;
    let present = found["count"].as_u64().unwrap_or(0);
    Ok((distinct.len() as u64).saturating_sub(present))
}
