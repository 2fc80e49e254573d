//! The live applier: consumes the TCS update queue and the change streams
//! of `doctorsForDB` and `recommendation`, and applies each change to the
//! live generation through the write alias, in bulk batches, as a partial
//! update of that source's fields (`domain::change`).
//!
//! One batch, in this order: honour a pause the swapping run asked for;
//! resolve and apply the updates (retried until they land: nothing is
//! settled before); journal them if a run is recording; then settle: ack
//! the TCS messages (dead-letter those refused for good) and store each
//! stream's resume token. A crash anywhere before the settling makes the
//! sources deliver the changes again, and applying a change twice is
//! harmless (an update sets fields to their current values).
//!
//! Exactly one applier is active across replicas: the `live` lease. The
//! others wait for it. The sources are read by tasks of their own into one
//! channel, so that no message is lost half-read when a batch is cut.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bson::Bson;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use super::recorded::Recorded;
use super::resolve::resolve;
use super::status::LiveStatus;
use crate::config::Settings;
use crate::domain::{Change, GmcNumber};
use crate::rebuild::record::new_run_id;
use crate::retry::RetryPolicy;
use crate::search::updates::{apply_updates, Target, UpdateResult};
use crate::search::SearchClient;
use crate::sources::changes::{
    history_lost, GmcEvent, GmcStream, Watched, WatchedEvent, INVALIDATED,
};
use crate::sources::gmc::GmcSource;
use crate::sources::tcs::{TcsAcks, TcsTicket, TcsUpdates, UpdateEvent, REJECT_INDEXING_FAILED};
use crate::sources::{mongo_client_lazy, SourceError};
use crate::state::journal::{Journal, JournalState, NewEntry};
use crate::state::lease::{lease_collection, read_lease, Lease, LeaseHolder, REBUILD_LEASE};
use crate::state::streams::StreamPositions;
use crate::state::StateError;
use crate::telemetry::metric;

/// The lease of the active applier.
pub const LIVE_LEASE: &str = "live";

/// How long a paused applier waits between two looks at the marker.
const PAUSE_POLL: Duration = Duration::from_millis(100);
/// How long an idle applier waits before it looks at the marker again.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// What to settle once a change is written.
#[derive(Debug)]
enum Settle {
    Tcs(TcsTicket),
    Stream { watched: Watched, token: Bson },
}

/// One change from a source, with what settles it.
#[derive(Debug)]
struct Incoming {
    /// `None`: nothing to apply, only the position to move (a skipped event).
    recorded: Option<(GmcNumber, Recorded)>,
    settle: Settle,
}

/// Runs the applier until `stop`: waits for the live lease, applies while
/// it holds it, and starts again after a failure (a server gone away).
pub async fn run_applier(settings: Arc<Settings>, stop: CancellationToken) -> anyhow::Result<()> {
    run_applier_with_status(settings, stop, LiveStatus::new()).await
}

/// [`run_applier`], telling `status` when it is active and its sources open.
pub async fn run_applier_with_status(
    settings: Arc<Settings>,
    stop: CancellationToken,
    status: LiveStatus,
) -> anyhow::Result<()> {
    let mongo = mongo_client_lazy(&settings.mongodb)
        .await
        .context("while setting up the MongoDB client")?;
    let leases = lease_collection(&mongo, &settings.mongodb);
    let holder = LeaseHolder::this_process(&format!("live-{}", new_run_id()));
    let ttl = Duration::from_secs(settings.live.lease_ttl_secs.max(1));
    let retry = RetryPolicy::new(&settings.retry);
    let mut told_waiting = false;
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        match Lease::acquire(leases.clone(), LIVE_LEASE, holder.clone(), ttl).await {
            Ok(lease) => {
                told_waiting = false;
                info!(holder = %holder.run_id, "Live applier active.");
                metrics::gauge!(metric::LIVE_APPLIER_ACTIVE).set(1.0);
                status.became_active();
                let result = active(&settings, &mongo, &lease, &stop, &status).await;
                status.became_inactive();
                metrics::gauge!(metric::LIVE_APPLIER_ACTIVE).set(0.0);
                let _ = lease.release().await;
                match result {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures += 1;
                        let delay = retry
                            .initial_backoff
                            .saturating_mul(2u32.saturating_pow(failures.min(8)))
                            .min(retry.max_backoff);
                        warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "The live applier stopped; it starts again.");
                        sleep_or_stop(delay, &stop).await;
                    }
                }
            }
            Err(StateError::Held { run_id, host, .. }) => {
                if !told_waiting {
                    info!(active = %run_id, host = %host, "Another live applier is active; this one waits.");
                    told_waiting = true;
                }
                sleep_or_stop(ttl / 2, &stop).await;
            }
            Err(e) => {
                warn!(error = %e, "Could not take the live lease; trying again.");
                sleep_or_stop(ttl / 2, &stop).await;
            }
        }
    }
    info!("Live applier stopped.");
    Ok(())
}

async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.cancelled() => {}
    }
}

/// Everything an active applier works with.
struct Active<'a> {
    settings: &'a Settings,
    search: SearchClient,
    write_alias: String,
    gmc: GmcSource,
    journal: Journal,
    positions: StreamPositions,
    mongo: &'a mongodb::Client,
    acks: TcsAcks,
    retry: RetryPolicy,
    last_seq: i64,
}

async fn active(
    settings: &Settings,
    mongo: &mongodb::Client,
    lease: &Lease,
    stop: &CancellationToken,
    status: &LiveStatus,
) -> anyhow::Result<()> {
    let search = SearchClient::connect(&settings.opensearch)
        .await
        .context("while connecting to OpenSearch")?;
    let mut gmc = GmcSource::new(mongo, &settings.mongodb);
    gmc.probe_id_types()
        .await
        .context("while looking at the ids of doctorsForDB")?;
    let journal = Journal::new(mongo, &settings.mongodb);
    let positions = StreamPositions::new(mongo, &settings.mongodb);
    let updates = TcsUpdates::open(&settings.rabbitmq, settings.live.prefetch)
        .await
        .context("while consuming the TCS update queue")?;
    status.source_opened();
    let (tx, mut rx) =
        mpsc::channel::<Result<Incoming, anyhow::Error>>(settings.live.batch_size.max(1) * 2);
    let mut readers = JoinSet::new();
    let acks = updates.acks();
    readers.spawn(read_updates(updates, tx.clone()).in_current_span());
    let db = mongo.database(&settings.mongodb.database);
    for (watched, name) in [
        (
            Watched::Doctors,
            settings.mongodb.doctors_collection.clone(),
        ),
        (
            Watched::Recommendations,
            settings.mongodb.recommendation_collection.clone(),
        ),
    ] {
        readers.spawn(
            read_stream(
                db.collection(&name),
                name,
                watched,
                positions.clone(),
                tx.clone(),
                status.clone(),
            )
            .in_current_span(),
        );
    }
    drop(tx);
    let mut applier = Active {
        settings,
        search,
        write_alias: settings.names.master_family(),
        last_seq: journal.last_seq().await.unwrap_or(0),
        gmc,
        journal,
        positions,
        mongo,
        acks,
        retry: RetryPolicy::new(&settings.retry),
    };
    let max = settings.live.batch_size.max(1);
    let linger = Duration::from_millis(settings.live.linger_ms);
    let result = loop {
        if let Some(reason) = lease.lost_reason() {
            break Err(anyhow!("the live lease was lost: {reason}"));
        }
        let batch = tokio::select! {
            batch = collect(&mut rx, max, linger) => batch,
            _ = stop.cancelled() => break Ok(()),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => break Err(e),
        };
        if let Err(e) = applier.apply(batch, stop).await {
            break Err(e);
        }
    };
    readers.abort_all();
    result
}

/// Up to `max` changes: waits for the first (at most [`IDLE_POLL`], so an
/// idle applier still looks at the marker), then up to `linger` for more.
async fn collect(
    rx: &mut mpsc::Receiver<Result<Incoming, anyhow::Error>>,
    max: usize,
    linger: Duration,
) -> anyhow::Result<Vec<Incoming>> {
    let mut batch = Vec::new();
    match tokio::time::timeout(IDLE_POLL, rx.recv()).await {
        Err(_) => return Ok(batch),
        Ok(None) => return Err(anyhow!("every source of live changes stopped")),
        Ok(Some(first)) => batch.push(first?),
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(next)) => batch.push(next?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

/// The update queue into the channel; rejects are dead-lettered here.
async fn read_updates(mut updates: TcsUpdates, tx: mpsc::Sender<Result<Incoming, anyhow::Error>>) {
    loop {
        let incoming = match updates.next().await {
            Ok(UpdateEvent::Record { number, ticket, .. }) => Incoming {
                recorded: Some((number, Recorded::Tcs(ticket.body.clone()))),
                settle: Settle::Tcs(ticket),
            },
            Ok(UpdateEvent::Rejected { reason }) => {
                metrics::counter!(metric::LIVE_REJECTED, "reason" => reason).increment(1);
                warn!(reason, "A TCS update was dead-lettered.");
                continue;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(anyhow!(e).context("while reading the TCS update queue")))
                    .await;
                return;
            }
        };
        if tx.send(Ok(incoming)).await.is_err() {
            return;
        }
    }
}

/// One change stream into the channel. A stored token the server no longer
/// knows (its history is lost) is said loudly, marked for `/readyz`, and
/// the stream starts again from now; an invalidated stream (its collection
/// dropped) starts again from now too.
async fn read_stream(
    collection: mongodb::Collection<bson::Document>,
    name: String,
    watched: Watched,
    positions: StreamPositions,
    tx: mpsc::Sender<Result<Incoming, anyhow::Error>>,
    status: LiveStatus,
) {
    let mut token = match positions.token(&name).await {
        Ok(token) => token,
        Err(e) => {
            let _ = tx
                .send(Err(anyhow!(e).context("while reading a resume token")))
                .await;
            return;
        }
    };
    let mut told = false;
    loop {
        let resumed = token.is_some();
        let opened = GmcStream::open(&collection, watched, token.take()).await;
        let mut stream = match opened {
            Ok(stream) => {
                if !told {
                    status.source_opened();
                    told = true;
                }
                stream
            }
            Err(e) if resumed && history_lost(&e) => {
                lost(&positions, &name, &e).await;
                continue;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(anyhow!(e).context(format!(
                        "while opening the change stream of {name}"
                    ))))
                    .await;
                return;
            }
        };
        loop {
            match stream.next().await {
                Ok(WatchedEvent {
                    event: GmcEvent::Skipped(INVALIDATED),
                    ..
                }) => {
                    // A drop or rename invalidates the stream: start from now.
                    warn!(collection = %name, "The change stream was invalidated; it starts again from now.");
                    let _ = positions.forget(&name).await;
                    break;
                }
                Ok(event) => {
                    let incoming = incoming_of(event);
                    if tx.send(Ok(incoming)).await.is_err() {
                        return;
                    }
                }
                Err(e) if resumed && history_lost(&e) => {
                    lost(&positions, &name, &e).await;
                    break;
                }
                Err(e) => {
                    let _ =
                        tx.send(Err(anyhow!(e)
                            .context(format!("while reading the change stream of {name}"))))
                            .await;
                    return;
                }
            }
        }
    }
}

async fn lost(positions: &StreamPositions, name: &str, e: &SourceError) {
    error!(
        collection = %name,
        error = %e,
        "LIVE UPDATES LOST: the stored resume token is older than the server's change-stream history. Changes in between were not applied; run a rebuild (it reads every source afresh). The stream starts again from now."
    );
    let _ = positions.mark_lost(name, &e.to_string()).await;
    let _ = positions.forget(name).await;
}

fn incoming_of(event: WatchedEvent) -> Incoming {
    let settle = Settle::Stream {
        watched: event.watched,
        token: event.token,
    };
    let recorded = match event.event {
        GmcEvent::DoctorUpserted(doc) => match Recorded::Doctor(doc.clone()).change() {
            Ok(change) => Some((change.number().clone(), Recorded::Doctor(doc))),
            Err(reason) => {
                metrics::counter!(metric::LIVE_REJECTED, "reason" => reason).increment(1);
                None
            }
        },
        GmcEvent::DoctorDeleted(id) => {
            let raw = match &id {
                Bson::String(s) => s.clone(),
                Bson::Int32(n) => n.to_string(),
                Bson::Int64(n) => n.to_string(),
                _ => String::new(),
            };
            match GmcNumber::parse(&raw) {
                Ok(number) => Some((number.clone(), Recorded::DoctorLeft(number))),
                Err(_) => None,
            }
        }
        GmcEvent::RecommendationChanged(raw) => match GmcNumber::parse(&raw) {
            Ok(number) => Some((number.clone(), Recorded::Recommendation(number))),
            Err(_) => {
                metrics::counter!(metric::LIVE_REJECTED, "reason" => "recommendation_unusable_gmc_number")
                    .increment(1);
                None
            }
        },
        GmcEvent::Skipped(reason) => {
            metrics::counter!(metric::LIVE_SKIPPED, "reason" => reason).increment(1);
            None
        }
    };
    Incoming { recorded, settle }
}

impl Active<'_> {
    /// One batch: pause if asked, apply, journal, settle.
    async fn apply(
        &mut self,
        batch: Vec<Incoming>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.honour_pause(stop).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut changes: Vec<Change> = Vec::new();
        let mut at: Vec<usize> = Vec::new();
        for (i, incoming) in batch.iter().enumerate() {
            if let Some((_, recorded)) = &incoming.recorded {
                match recorded.change() {
                    Ok(change) => {
                        changes.push(change);
                        at.push(i);
                    }
                    Err(reason) => {
                        metrics::counter!(metric::LIVE_REJECTED, "reason" => reason).increment(1)
                    }
                }
            }
        }
        let updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut results = vec![UpdateResult::Unchanged; batch.len()];
        if !changes.is_empty() {
            let items = self
                .until_done(stop, "resolving live changes", || {
                    resolve(&self.gmc, &changes, &updated_at)
                })
                .await?;
            // A batch the live index itself refuses (a write block, a full
            // disk) waits, unsettled, and is tried again until the index
            // takes it: dead-lettering it would drop live changes for a
            // state of the cluster that an operator will mend.
            let report = self
                .until_done(stop, "applying live changes", || async {
                    let report = apply_updates(
                        &self.search,
                        Target::Alias(&self.write_alias),
                        &items,
                        &updated_at,
                        &self.retry,
                    )
                    .await
                    .map_err(anyhow::Error::from)?;
                    match report.index_refusal() {
                        Some(reason) => Err(anyhow!(
                            "the live index refuses writes ({reason}); the changes wait, unsettled"
                        )),
                        None => Ok(report),
                    }
                })
                .await?;
            for (result, i) in report.results.into_iter().zip(&at) {
                results[*i] = result;
            }
            for change in &changes {
                metrics::counter!(metric::LIVE_APPLIED, "source" => change.kind()).increment(1);
            }
        }
        self.record(&batch, stop).await?;
        self.settle(batch, results).await?;
        metrics::histogram!(metric::LIVE_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Runs `call` until it succeeds; the batch waits, unsettled (a server
    /// down, the write alias missing before the first rebuild).
    async fn until_done<T, E, F, Fut>(
        &self,
        stop: &CancellationToken,
        what: &str,
        mut call: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut delay = self.retry.initial_backoff;
        loop {
            match call().await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "Live applier: {what} failed; trying again.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Err(anyhow!("stopped while {what}")),
                    }
                    delay = (delay * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    /// Whether run `run_id` still holds the rebuild lease (a marker of a
    /// dead run is ignored).
    async fn alive(&self, run_id: &str) -> bool {
        let leases = lease_collection(self.mongo, &self.settings.mongodb);
        matches!(
            read_lease(&leases, REBUILD_LEASE).await,
            Ok(Some(l)) if !l.expired && l.holder.run_id == run_id
        )
    }

    /// Appends the batch to the journal when a live run records.
    async fn record(&mut self, batch: &[Incoming], stop: &CancellationToken) -> anyhow::Result<()> {
        let entries: Vec<NewEntry> = batch
            .iter()
            .filter_map(|i| i.recorded.as_ref())
            .map(|(number, recorded)| recorded.entry(number))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let state = self
            .until_done(stop, "reading the journal marker", || self.journal.state())
            .await?;
        let run_id = match &state {
            JournalState::Recording { run_id } | JournalState::PauseRequested { run_id } => {
                run_id.clone()
            }
            _ => return Ok(()),
        };
        if !self.alive(&run_id).await {
            return Ok(());
        }
        self.last_seq = self
            .until_done(stop, "journaling live changes", || {
                self.journal.append(&run_id, &entries)
            })
            .await?;
        Ok(())
    }

    /// Acks or dead-letters the TCS messages, stores the streams' tokens.
    async fn settle(&self, batch: Vec<Incoming>, results: Vec<UpdateResult>) -> anyhow::Result<()> {
        let mut tags = Vec::new();
        let mut tokens: Vec<(Watched, Bson)> = Vec::new();
        for (incoming, result) in batch.into_iter().zip(results) {
            match incoming.settle {
                Settle::Tcs(ticket) => match result {
                    UpdateResult::Failed { reason, .. } => {
                        self.acks
                            .dead_letter(&ticket, REJECT_INDEXING_FAILED, &reason)
                            .await?;
                    }
                    _ => tags.push(ticket.key()),
                },
                Settle::Stream { watched, token } => {
                    if let UpdateResult::Failed { reason, .. } = &result {
                        warn!(reason = %reason, "A GMC change was refused for good; the next rebuild brings it.");
                    }
                    match tokens.iter_mut().find(|(w, _)| *w == watched) {
                        Some(slot) => slot.1 = token,
                        None => tokens.push((watched, token)),
                    }
                }
            }
        }
        self.acks.settle(tags).await?;
        for (watched, token) in tokens {
            let name = match watched {
                Watched::Doctors => &self.settings.mongodb.doctors_collection,
                Watched::Recommendations => &self.settings.mongodb.recommendation_collection,
            };
            self.positions.store(name, token).await?;
        }
        Ok(())
    }

    /// Stops while a live run swaps: acknowledges the pause with the last
    /// journaled sequence number, then waits until the run resumes it.
    async fn honour_pause(&self, stop: &CancellationToken) -> anyhow::Result<()> {
        let state = match self.journal.state().await {
            Ok(state) => state,
            Err(e) => {
                warn!(error = %e, "Could not read the journal marker.");
                return Ok(());
            }
        };
        let run_id = match &state {
            JournalState::PauseRequested { run_id } | JournalState::Paused { run_id, .. } => {
                run_id.clone()
            }
            _ => return Ok(()),
        };
        if !self.alive(&run_id).await {
            return Ok(());
        }
        if matches!(state, JournalState::PauseRequested { .. }) {
            self.journal
                .acknowledge_pause(&run_id, self.last_seq)
                .await?;
        }
        let paused = Instant::now();
        info!(run_id = %run_id, last_seq = self.last_seq, "Live applier paused for the swap.");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PAUSE_POLL) => {}
                _ = stop.cancelled() => return Ok(()),
            }
            match self.journal.state().await {
                Ok(
                    JournalState::Paused { run_id: r, .. }
                    | JournalState::PauseRequested { run_id: r },
                ) if r == run_id && self.alive(&r).await => {}
                _ => break,
            }
        }
        let secs = paused.elapsed().as_secs_f64();
        metrics::counter!(metric::LIVE_PAUSED_SECONDS).increment(secs.ceil() as u64);
        info!(run_id = %run_id, paused_ms = (secs * 1000.0) as u64, "Live applier resumed.");
        Ok(())
    }
}
