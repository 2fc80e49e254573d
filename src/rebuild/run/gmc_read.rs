//! Step 2: ask TCS for a full sync, then read the GMC side once, in a task
//! of its own that runs beside the load (step 3), so that the merge starts
//! with the first page of doctors instead of after the last:
//!
//! - the latest recommendation outcome of every doctor (one aggregation),
//! - every doctor of `doctorsForDB` (one cursor in `_id` order), each page
//!   put in the shared store ([`GmcSide`]) and announced to the merge,
//! - the connection service's data ([`super::connection_read`]).
//!
//! TCS is asked first, so that it publishes into the queue while MongoDB
//! works. Neither read waits on OpenSearch; a transient MongoDB failure
//! restarts the read that saw it.
//!
//! With `gmc.source = "queue"` the GMC side comes from the recommendation
//! service's batches instead (`sources::gmc::queue`), into the same store,
//! announced whole when the sync ends; the batches stay unacked until the
//! load has written their documents ([`QueueBatches`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, Instrument};

use super::connection_read::{self, Delivered};
use super::RunContext;
use crate::config::GmcSourceKind;
use crate::domain::GmcNumber;
use crate::rebuild::progress::PhaseProgress;
use crate::rebuild::record::{RunPhase, RunRecord};
use crate::retry::with_retry;
use crate::sources::connection::{ConnectionMap, ConnectionRead};
use crate::sources::gmc::queue::QueueDoctor;
use crate::sources::gmc::{
    read_over_queue, DoctorRead, DoctorStore, GmcSource, OutcomeLoad, OutcomeMap,
};
use crate::sources::index_sync::PendingBatches;
use crate::sources::tcs::TcsSync;

/// Reject keys of recommendations that give no usable outcome.
pub(super) const REJECT_RECOMMENDATION_NUMBER: &str = "recommendation_unusable_gmc_number";
pub(super) const REJECT_RECOMMENDATION_OUTCOME: &str = "recommendation_unknown_outcome";

/// The GMC side as it is read: the doctors page by page, the outcomes and
/// the connection data once their reads are done. Shared by the reading
/// task (which fills it) and the merge (which looks doctors up).
#[derive(Default)]
pub(super) struct GmcSide {
    doctors: RwLock<DoctorStore>,
    /// Whole once the aggregation is done (MongoDB), or filled with each
    /// doctor (queue: a batch item carries its doctor's outcome).
    outcomes: RwLock<OutcomeMap>,
    outcomes_in: AtomicBool,
    connections: OnceLock<ConnectionMap>,
    /// `Ready` was sent (both reads may end at once and both see the other's
    /// flag: only the first sends it).
    ready_sent: AtomicBool,
}

impl GmcSide {
    /// Whether the doctor of `number` is read yet.
    pub fn has_doctor(&self, number: &GmcNumber) -> bool {
        self.doctors.read().expect("doctor store").contains(number)
    }

    /// The doctor of `number`, if read yet.
    pub fn doctor(&self, number: &GmcNumber) -> Option<crate::domain::GmcDoctor> {
        self.doctors.read().expect("doctor store").get(number)
    }

    /// The latest outcome of `number` (once the outcomes are read).
    pub fn outcome(&self, number: &GmcNumber) -> Option<crate::domain::GmcStatus> {
        self.outcomes.read().expect("outcomes").get(number).copied()
    }

    /// The connection data of `number` (once it is read).
    pub fn connections(&self) -> Option<&ConnectionMap> {
        self.connections.get()
    }

    /// Puts a page of doctors in the store, with their outcomes when the
    /// page carries them (the queue's batches), and tells the merge.
    fn add_page(&self, page: Vec<QueueDoctor>, events: &mpsc::UnboundedSender<GmcEvent>) {
        {
            let mut store = self.doctors.write().expect("doctor store");
            let mut outcomes = self.outcomes.write().expect("outcomes");
            for (number, doctor, outcome) in page {
                if let Some(outcome) = outcome {
                    outcomes.insert(&number, outcome);
                }
                store.insert(&number, doctor);
            }
        }
        let _ = events.send(GmcEvent::Doctors);
    }

    /// Everything, once the reading task and the merge are done with it.
    pub fn into_parts(self) -> (DoctorStore, OutcomeMap, ConnectionMap) {
        (
            self.doctors.into_inner().expect("doctor store"),
            self.outcomes.into_inner().expect("outcomes"),
            self.connections.into_inner().unwrap_or_default(),
        )
    }
}

/// The GMC side, whole, once read (for the doctors TCS did not send).
pub(super) struct GmcInMemory {
    pub doctors: DoctorStore,
    pub outcomes: OutcomeMap,
    pub connections: ConnectionMap,
}

/// What the reading task tells the merge, in this order per kind.
#[derive(Debug)]
pub(super) enum GmcEvent {
    /// More doctors are in the store (a page or a batch; the merge looks
    /// which of the records waiting now have theirs: the numbers are not
    /// sent, so that a burst of pages costs no memory while the merge is
    /// busy writing).
    Doctors,
    /// The outcomes and the connection data are in: documents may be made.
    Ready,
    /// Every doctor is in the store: a number not there is TCS's alone.
    DoctorsDone,
}

/// What the reading task delivers when it ends well (the maps are in the
/// [`GmcSide`]).
struct GmcReadDone {
    doctors: DoctorRead,
    outcomes: u64,
    outcome_load: OutcomeLoad,
    /// Batches of an earlier GMC sync discarded (queue mode).
    gmc_stale_discarded: u64,
    /// GMC queue batches read (queue mode).
    gmc_batches: Option<u64>,
    connection: Option<(ConnectionRead, u64)>,
    batches: Vec<PendingBatches>,
}

/// The GMC side being read: the store the merge looks in, the events that
/// tell it what changed, and the task (aborted when this is dropped).
pub(super) struct GmcReading {
    pub side: Arc<GmcSide>,
    pub events: mpsc::UnboundedReceiver<GmcEvent>,
    task: Option<JoinHandle<anyhow::Result<GmcReadDone>>>,
}

impl Drop for GmcReading {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The services' batches of the queue reads (GMC, connection logs, hidden
/// discrepancies), unacked until the load has written their documents
/// (nothing to ack for MongoDB reads).
#[derive(Default)]
pub(super) struct QueueBatches(Vec<PendingBatches>);

impl QueueBatches {
    /// The load has written every document: ack the batches that carried them.
    pub async fn ack_written(self) {
        for pending in self.0 {
            pending.ack_written().await;
        }
    }

    /// The run failed: give the batches back (the next run discards them).
    pub async fn abandon(self) {
        for pending in self.0 {
            pending.abandon().await;
        }
    }
}

/// Asks TCS for its sync and starts reading the GMC side beside it.
pub(super) async fn start(context: &mut RunContext<'_>) -> anyhow::Result<(TcsSync, GmcReading)> {
    context.tracker.begin(RunPhase::GmcRead).await;
    let sync = TcsSync::start(&context.settings.rabbitmq, context.retry)
        .await
        .context("while starting the TCS sync")?;
    context.tracker.record.counts.tcs_stale_discarded = sync.purged_stale;
    let connections = connection_read::start(context);
    let side = Arc::new(GmcSide::default());
    let (events, events_rx) = mpsc::unbounded_channel();
    let read = match context.settings.gmc.source {
        GmcSourceKind::Queue => {
            let progress = context.progress.phase(RunPhase::GmcRead, "doctors", None);
            let (rabbit, gmc) = (
                context.settings.rabbitmq.clone(),
                context.settings.gmc.clone(),
            );
            let side = side.clone();
            tokio::spawn(
                async move { read_queue(&rabbit, &gmc, progress, side, events, connections).await }
                    .in_current_span(),
            )
        }
        GmcSourceKind::Mongodb => {
            let gmc =
                GmcSource::new(&context.mongo, &context.settings.mongodb).with_retry(context.retry);
            let expected = match gmc.estimated_doctors().await {
                Ok(n) => Some(n),
                Err(e) => {
                    info!(error = %e, "The server did not estimate the number of doctors at once; the read's progress goes without a total.");
                    None
                }
            };
            let progress = context
                .progress
                .phase(RunPhase::GmcRead, "doctors", expected);
            *side.doctors.write().expect("doctor store") =
                DoctorStore::with_capacity(expected.unwrap_or(0) as usize);
            let retry = context.retry;
            let side = side.clone();
            tokio::spawn(
                async move { read_mongodb(gmc, retry, progress, side, events, connections).await }
                    .in_current_span(),
            )
        }
    };
    Ok((
        sync,
        GmcReading {
            side,
            events: events_rx,
            task: Some(read),
        },
    ))
}

/// Sends `Ready` once both the outcomes and the connection data are in.
fn ready_when_both(side: &GmcSide, events: &mpsc::UnboundedSender<GmcEvent>) {
    if side.outcomes_in.load(Ordering::SeqCst)
        && side.connections.get().is_some()
        && !side.ready_sent.swap(true, Ordering::SeqCst)
    {
        info!(
            doctors_read = side.doctors.read().expect("doctor store").len(),
            "The outcomes and the connection data are read: documents are made as their doctors come."
        );
        let _ = events.send(GmcEvent::Ready);
    }
}

/// Waits for the connection data and puts it in the side (then the merge
/// may be ready); gives what is left for the record, and the batches.
async fn connections_into(
    side: &GmcSide,
    events: &mpsc::UnboundedSender<GmcEvent>,
    pending: connection_read::PendingConnectionRead,
) -> anyhow::Result<(Option<(ConnectionRead, u64)>, Vec<PendingBatches>)> {
    let delivered = connection_read::wait(pending).await?;
    let taken = take_connections(side, delivered);
    ready_when_both(side, events);
    Ok(taken)
}

/// Takes the connection data into the side; what is left is for the record.
fn take_connections(
    side: &GmcSide,
    delivered: Option<Delivered>,
) -> (Option<(ConnectionRead, u64)>, Vec<PendingBatches>) {
    let Some((mut read, batches, stale)) = delivered else {
        let _ = side.connections.set(ConnectionMap::new());
        return (None, Vec::new());
    };
    let _ = side.connections.set(std::mem::take(&mut read.map));
    (Some((read, stale)), batches)
}

async fn read_mongodb(
    gmc: GmcSource,
    retry: crate::retry::RetryPolicy,
    progress: PhaseProgress,
    side: Arc<GmcSide>,
    events: mpsc::UnboundedSender<GmcEvent>,
    connections: connection_read::PendingConnectionRead,
) -> anyhow::Result<GmcReadDone> {
    let progress = Mutex::new(progress);
    let outcomes = async {
        let (outcomes, load) =
            with_retry(&retry, "the outcome aggregation", || gmc.latest_outcomes())
                .await
                .context("while loading the latest recommendation outcomes")?;
        let n = outcomes.len() as u64;
        info!(outcomes = n, "Read the latest recommendation outcomes.");
        *side.outcomes.write().expect("outcomes") = outcomes;
        side.outcomes_in.store(true, Ordering::SeqCst);
        ready_when_both(&side, &events);
        anyhow::Ok((n, load))
    };
    let doctors = async {
        let read = with_retry(&retry, "the read of doctorsForDB", || {
            gmc.read_doctor_pages(|page| {
                progress.lock().expect("progress").inc(page.len() as u64);
                let page = page.into_iter().map(|(n, d)| (n, d, None)).collect();
                side.add_page(page, &events);
            })
        })
        .await
        .context("while reading doctorsForDB")?;
        let _ = events.send(GmcEvent::DoctorsDone);
        anyhow::Ok(read)
    };
    let connection = connections_into(&side, &events, connections);
    let (outcomes, doctors, connection) = tokio::join!(outcomes, doctors, connection);
    progress.into_inner().expect("progress").finish();
    let ((outcomes, outcome_load), doctors, (connection, batches)) =
        (outcomes?, doctors?, connection?);
    Ok(GmcReadDone {
        doctors,
        outcomes,
        outcome_load,
        gmc_stale_discarded: 0,
        gmc_batches: None,
        connection,
        batches,
    })
}

/// The GMC side over the recommendation service's queue (see the module
/// notes): each batch's doctors, with their outcomes, go into the store as
/// they come, so the merge starts with the first batch.
async fn read_queue(
    rabbit: &crate::config::RabbitSettings,
    gmc: &crate::config::GmcSettings,
    progress: PhaseProgress,
    side: Arc<GmcSide>,
    events: mpsc::UnboundedSender<GmcEvent>,
    connections: connection_read::PendingConnectionRead,
) -> anyhow::Result<GmcReadDone> {
    // Each doctor comes with its own outcome: none is awaited as a whole.
    side.outcomes_in.store(true, Ordering::SeqCst);
    let progress = Mutex::new(progress);
    let gmc_read = async {
        let read = read_over_queue(rabbit, gmc, |doctors| {
            progress.lock().expect("progress").inc(doctors.len() as u64);
            side.add_page(doctors, &events);
        })
        .await
        .context("while reading GMC from the recommendation service's queue")?;
        let _ = events.send(GmcEvent::DoctorsDone);
        anyhow::Ok(read)
    };
    let connection = connections_into(&side, &events, connections);
    let (gmc_read, connection) = tokio::join!(gmc_read, connection);
    progress.into_inner().expect("progress").finish();
    let (read, (connection, mut batches)) = match (gmc_read, connection) {
        (Ok(read), Ok(taken)) => (read, taken),
        (Ok(read), Err(e)) => {
            read.pending.abandon().await;
            return Err(e);
        }
        (Err(e), Ok((_, batches))) => {
            for pending in batches {
                pending.abandon().await;
            }
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
    };
    let outcomes = side.outcomes.read().expect("outcomes").len() as u64;
    batches.insert(0, read.pending);
    Ok(GmcReadDone {
        doctors: read.doctors,
        outcomes,
        outcome_load: read.load,
        gmc_stale_discarded: read.purged_stale,
        gmc_batches: Some(read.batches),
        connection,
        batches,
    })
}

impl GmcReading {
    /// The events, for the merge stage (this keeps a closed channel).
    pub fn take_events(&mut self) -> mpsc::UnboundedReceiver<GmcEvent> {
        let (_, closed) = mpsc::unbounded_channel();
        std::mem::replace(&mut self.events, closed)
    }

    /// The GMC side, whole, once the read and the merge are done with it.
    pub fn into_memory(mut self) -> anyhow::Result<GmcInMemory> {
        let side = std::mem::take(&mut self.side);
        let side = Arc::try_unwrap(side)
            .map_err(|_| anyhow::anyhow!("the GMC side is still in use after the merge"))?;
        let (doctors, outcomes, connections) = side.into_parts();
        Ok(GmcInMemory {
            doctors,
            outcomes,
            connections,
        })
    }

    /// Whether the reading task has ended (well or not).
    pub fn is_read(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }

    /// Waits for the reading task (the merge may still hold records for
    /// the last doctors), records what it read and gives the services'
    /// batches to ack once the documents are written.
    pub async fn finish(&mut self, context: &mut RunContext<'_>) -> anyhow::Result<QueueBatches> {
        let Some(task) = self.task.as_mut() else {
            return Ok(QueueBatches::default());
        };
        let done = context
            .cancellable(async {
                task.await
                    .context("the read of the GMC side stopped unexpectedly")?
            })
            .await;
        self.task = None;
        let done = done?;
        let side_doctors = self.side.doctors.read().expect("doctor store").len();
        let distinct_values = self
            .side
            .doctors
            .read()
            .expect("doctor store")
            .distinct_values();
        let record = &mut context.tracker.record;
        record.counts.gmc_stale_discarded = done.gmc_stale_discarded;
        record_outcomes(record, done.outcomes, &done.outcome_load);
        record_doctors(record, &done.doctors);
        if let Some((connection, stale)) = &done.connection {
            connection_read::record_delivered(record, connection, *stale);
        }
        info!(
            doctors = side_doctors,
            distinct_values,
            outcomes = done.outcomes,
            groups = done.outcome_load.groups,
            unknown_outcomes = done.outcome_load.unknown_outcomes,
            queue_batches = done.gmc_batches,
            "Read GMC: the doctors and their latest recommendation outcomes."
        );
        Ok(QueueBatches(done.batches))
    }
}

fn record_doctors(record: &mut RunRecord, read: &DoctorRead) {
    record.counts.gmc_doctors = read.rows;
    record.counts.gmc_read_resumes = read.resumes;
    for (reason, n) in &read.rejects {
        record.reject_many(reason, *n);
    }
}

fn record_outcomes(record: &mut RunRecord, outcomes: u64, load: &OutcomeLoad) {
    record.counts.gmc_outcomes = outcomes;
    record.reject_many(REJECT_RECOMMENDATION_NUMBER, load.unusable_numbers);
    record.reject_many(REJECT_RECOMMENDATION_OUTCOME, load.unknown_outcomes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebuild::record::Trigger;

    #[test]
    fn unusable_recommendations_are_counted_as_rejects_and_clean_loads_add_none() {
        let mut record = RunRecord::start("r", Trigger::Cli, false, false);
        let load = OutcomeLoad {
            groups: 3,
            unknown_outcomes: 1,
            unusable_numbers: 1,
        };
        record_outcomes(&mut record, 1, &load);
        assert_eq!(record.counts.gmc_outcomes, 1);
        assert_eq!(record.rejects[REJECT_RECOMMENDATION_NUMBER], 1);
        assert_eq!(record.rejects[REJECT_RECOMMENDATION_OUTCOME], 1);

        let mut clean = RunRecord::start("r", Trigger::Cli, false, false);
        record_outcomes(&mut clean, 1, &OutcomeLoad::default());
        assert!(clean.rejects.is_empty());
    }
}
