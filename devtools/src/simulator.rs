//! The TCS simulator: plays TCS on a real RabbitMQ. It declares the
//! topology, listens on the sync-start queue, and answers each `"syncStart"`
//! by publishing the generated trainees ([`DatasetSpec::tcs_stream`], the
//! malformed messages included) to the exchange with the sync-data routing
//! key, then `{"syncEnd": true}`. Publishing uses publisher confirms in
//! batches, so a sync of 200k messages takes seconds and none is lost.
//!
//! `stop_after` publishes only that many messages and no `syncEnd`: a TCS
//! that dies mid-sync, for failure tests. [`run_simulator`] is what the
//! `tcs-simulator` command runs; tests spawn it as a tokio task.

use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::Channel;
use tracing::info;

use rebuilder::config::RabbitSettings;
use rebuilder::sources::tcs::{declare_topology, json_properties, publish_confirmed};
use rebuilder::sources::{rabbit_connection, SourceError};

use crate::datagen::DatasetSpec;
use crate::guard::{check_amqp_uri, GuardError};
use crate::sync_service::Requests;

/// How the simulator behaves.
#[derive(Clone, Copy, Debug)]
pub struct SimulatorOptions {
    /// Serve one sync, then return.
    pub once: bool,
    /// Publish only this many messages per sync and no `syncEnd`.
    pub stop_after: Option<u64>,
    /// Messages published before waiting for their confirms.
    pub confirm_batch: usize,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        Self {
            once: false,
            stop_after: None,
            confirm_batch: 2_000,
        }
    }
}

/// What one answered sync published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncServed {
    /// Messages published, `syncEnd` not included.
    pub published: u64,
    pub sync_end: bool,
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl From<lapin::Error> for SimulatorError {
    fn from(e: lapin::Error) -> Self {
        Self::Source(e.into())
    }
}

/// Serves syncs until the connection fails, or after one with `once`.
/// Returns the syncs served. Refuses a broker that is not on loopback: it
/// publishes generated trainees, which must never reach a real exchange.
pub async fn run_simulator(
    settings: &RabbitSettings,
    spec: DatasetSpec,
    options: SimulatorOptions,
) -> Result<Vec<SyncServed>, SimulatorError> {
    check_amqp_uri(settings.uri.expose())?;
    let connection = rabbit_connection(settings).await?;
    declare_topology(&connection, settings).await?;
    let mut requests = Requests::listen(
        &connection,
        &settings.sync_start_queue,
        "tcs-simulator",
        "syncStart",
    )
    .await?;
    info!(
        queue = %settings.sync_start_queue,
        doctors = spec.doctors,
        seed = spec.seed,
        variant = spec.variant,
        "TCS simulator listening for syncStart."
    );
    let mut served = Vec::new();
    while let Some(request) = requests.next().await? {
        let sync = publish_sync(&requests.publisher, settings, &spec, options).await?;
        request.ack(BasicAckOptions::default()).await?;
        served.push(sync);
        if options.once {
            break;
        }
    }
    let _ = connection.close(200, "simulator done".into()).await;
    Ok(served)
}

/// Publishes one sync: the stream, then `syncEnd` (unless `stop_after`).
/// `channel` must be in confirm mode.
pub async fn publish_sync(
    channel: &Channel,
    settings: &RabbitSettings,
    spec: &DatasetSpec,
    options: SimulatorOptions,
) -> Result<SyncServed, SourceError> {
    let started = std::time::Instant::now();
    let limit = options.stop_after.unwrap_or(u64::MAX);
    let batch = options.confirm_batch.max(1);
    let mut pending = Vec::with_capacity(batch);
    let mut published = 0u64;
    for body in spec.tcs_stream() {
        if published == limit {
            break;
        }
        pending.push(
            channel
                .basic_publish(
                    settings.exchange.as_str().into(),
                    settings.sync_data_routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    json_properties(),
                )
                .await?,
        );
        published += 1;
        if pending.len() >= batch {
            await_confirms(&mut pending).await?;
        }
    }
    await_confirms(&mut pending).await?;
    let sync_end = options.stop_after.is_none();
    if sync_end {
        publish_confirmed(
            channel,
            &settings.exchange,
            &settings.sync_data_routing_key,
            br#"{"syncEnd": true}"#,
            json_properties(),
        )
        .await?;
    }
    let secs = started.elapsed().as_secs_f64();
    info!(
        published,
        sync_end,
        msgs_per_sec = (published as f64 / secs.max(0.001)) as u64,
        "TCS simulator published a sync."
    );
    Ok(SyncServed {
        published,
        sync_end,
    })
}

async fn await_confirms(pending: &mut Vec<lapin::PublisherConfirm>) -> Result<(), SourceError> {
    for confirm in futures::future::try_join_all(pending.drain(..)).await? {
        if confirm.is_nack() {
            return Err(SourceError::BrokerRefused("a simulated TCS message".into()));
        }
    }
    Ok(())
}
