//! The live applier: consumes the TCS update queue and the change streams
//! of `doctorsForDB` and `recommendation`, and applies each change to the
//! live generation through the write alias, in bulk batches, as a partial
//! update of that source's fields (`domain::change`).
//!
//! Its rooms: `readers` (the sources into one channel, each change parsed
//! once), `batching` (the channel cut into batches), `apply` (the
//! handover's gate, the write, the journal) and `settle` (acks, dead
//! letters, stream positions). A crash anywhere before the settling makes
//! the sources deliver the changes again, and applying a change twice is
//! harmless (an update sets fields to their current values).
//!
//! Exactly one applier is active across replicas: the `live` lease. The
//! others wait for it. This file owns that loop and the setting up of an
//! active applier.

mod apply;
mod batching;
pub(super) mod coalesce;
mod readers;
mod settle;

pub use apply::HandedBack;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use self::apply::{sleep_or_stop, Active};
use self::batching::collect;
use self::readers::{read_stream, read_updates, Incoming, Settle};
use super::backlog::BacklogMeter;
use super::status::LiveStatus;
use crate::config::{ConnectionSourceKind, Settings};
use crate::handover::{new_run_id, Handover, MongoStore, LIVE_LEASE};
use crate::retry::RetryPolicy;
use crate::search::SearchClient;
use crate::sources::changes::Watched;
use crate::sources::connection::ConnectionSource;
use crate::sources::gmc::GmcSource;
use crate::sources::mongo_client_lazy;
use crate::sources::tcs::TcsUpdates;
use crate::state::lease::{lease_collection, Lease, LeaseHolder};
use crate::state::streams::StreamPositions;
use crate::state::StateError;
use crate::telemetry::{metric, panic_message};

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
    let mut waits = retry.endless_waits();
    while !stop.is_cancelled() {
        match Lease::acquire(leases.clone(), LIVE_LEASE, holder.clone(), ttl).await {
            Ok(lease) => {
                told_waiting = false;
                info!(holder = %holder.run_id, "Live applier active.");
                metrics::gauge!(metric::LIVE_APPLIER_ACTIVE).set(1.0);
                status.became_active(1 + watched_streams(&settings).len() as u8);
                // A panic (a defect) in the applier ends this turn like an
                // error, and the applier starts again, rather than ending
                // live updates for the rest of the process's life.
                let result = AssertUnwindSafe(active(&settings, &mongo, &lease, &stop, &status))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        Err(anyhow!(
                            "the live applier panicked: {}",
                            panic_message(panic.as_ref())
                        ))
                    });
                status.became_inactive();
                metrics::gauge!(metric::LIVE_APPLIER_ACTIVE).set(0.0);
                let _ = lease.release().await;
                match result {
                    Ok(()) => waits = retry.endless_waits(),
                    Err(e) => {
                        let delay = waits.next().unwrap_or(retry.max_backoff);
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
    let positions = StreamPositions::new(mongo, &settings.mongodb);
    let updates = TcsUpdates::open(&settings.rabbitmq, settings.live.prefetch)
        .await
        .context("while consuming the TCS update queue")?;
    status.source_opened();
    let mut meter = BacklogMeter::new(mongo, settings, &lease.holder().run_id);
    let depth_stop = stop.child_token();
    let _depth_guard = depth_stop.clone().drop_guard();
    tokio::spawn(
        meter
            .watch_depth(updates.depth(), depth_stop)
            .in_current_span(),
    );
    let (tx, mut rx) =
        mpsc::channel::<Result<Incoming, anyhow::Error>>(settings.live.batch_size.max(1) * 2);
    let mut readers = JoinSet::new();
    let acks = updates.acks();
    readers.spawn(
        said_if_panicked(
            "the TCS update queue".into(),
            read_updates(updates, tx.clone()),
            tx.clone(),
        )
        .in_current_span(),
    );
    for watched in watched_streams(settings) {
        let database = match watched {
            Watched::ConnectionLogs | Watched::HiddenDiscrepancies => {
                settings.connection.database(&settings.mongodb)
            }
            Watched::Doctors | Watched::Recommendations => &settings.mongodb.database,
        };
        let name = watched.collection(settings);
        readers.spawn(
            said_if_panicked(
                format!("the change stream of {name}"),
                read_stream(
                    mongo.database(database).collection(name),
                    name.to_string(),
                    watched,
                    positions.clone(),
                    tx.clone(),
                    status.clone(),
                ),
                tx.clone(),
            )
            .in_current_span(),
        );
    }
    drop(tx);
    let mut applier = Active {
        settings,
        search,
        write_alias: settings.names.master_family(),
        gmc,
        connection: connection_source(mongo, settings),
        handover: Handover::new(MongoStore::new(mongo, &settings.mongodb)),
        positions,
        acks,
        retry: RetryPolicy::new(&settings.retry),
        lease,
        holder: lease.holder().run_id.clone(),
        batches: 0,
    };
    let max = settings.live.batch_size.max(1);
    let linger = Duration::from_millis(settings.live.linger_ms);
    let result = loop {
        let batch = tokio::select! {
            batch = collect(&mut rx, max, linger) => batch,
            _ = stop.cancelled() => break Ok(()),
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => break Err(e),
        };
        let applied_up_to = stream_progress(&batch, max);
        match applier.apply(batch, stop).await {
            Ok(()) => {
                match applied_up_to {
                    StreamProgress::CaughtUp => meter.caught_up(),
                    StreamProgress::UpTo(made_at_ms) => meter.applied_up_to(made_at_ms),
                    StreamProgress::Unknown => {}
                }
                meter.publish().await;
            }
            // Asked to stop: the batch in hand goes back to its sources.
            Err(_) if stop.is_cancelled() => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Dropping the readers closes the queue's channel: what was delivered
    // and not acked goes back to the queue, in order.
    readers.abort_all();
    result
}

/// Runs a reader; if it panics (a defect), says so on the channel. A
/// reader otherwise ends only after sending its error, and the channel
/// closes only once every reader is gone: without this, a dead reader's
/// source would fall silent while the others go on, and its backlog would
/// read as caught up.
async fn said_if_panicked(
    source: String,
    reader: impl std::future::Future<Output = ()>,
    tx: mpsc::Sender<Result<Incoming, anyhow::Error>>,
) {
    if let Err(panic) = AssertUnwindSafe(reader).catch_unwind().await {
        let _ = tx
            .send(Err(anyhow!(
                "the reader of {source} stopped: it panicked: {}",
                panic_message(panic.as_ref())
            )))
            .await;
    }
}

/// What a batch says of the streams' backlog once it is applied.
#[derive(Debug, PartialEq)]
enum StreamProgress {
    /// Nothing of the streams waited: the batch was not full and held no
    /// stream event (the channel is shared, in arrival order).
    CaughtUp,
    /// Applied up to the stream event made at this Unix ms (the latest).
    UpTo(i64),
    /// A full batch of queue messages: the streams may wait behind it.
    Unknown,
}

fn stream_progress(batch: &[Incoming], max: usize) -> StreamProgress {
    let latest = batch
        .iter()
        .filter_map(|i| match i.settle {
            Settle::Stream { made_at_ms, .. } => made_at_ms,
            Settle::Tcs(_) => None,
        })
        .max();
    match latest {
        Some(made_at_ms) => StreamProgress::UpTo(made_at_ms),
        None if batch.len() < max => StreamProgress::CaughtUp,
        None => StreamProgress::Unknown,
    }
}

/// The change streams an applier reads: GMC's two, and the connection
/// service's two when the connection data comes from MongoDB.
pub fn watched_streams(settings: &Settings) -> Vec<Watched> {
    let mut watched = vec![Watched::Doctors, Watched::Recommendations];
    if settings.connection.source == ConnectionSourceKind::Mongodb {
        watched.extend([Watched::ConnectionLogs, Watched::HiddenDiscrepancies]);
    }
    watched
}

/// Where the connection service's data is read from, when the index keeps
/// it from MongoDB.
pub fn connection_source(mongo: &mongodb::Client, settings: &Settings) -> Option<ConnectionSource> {
    (settings.connection.source == ConnectionSourceKind::Mongodb)
        .then(|| ConnectionSource::new(mongo, &settings.connection, &settings.mongodb))
}
