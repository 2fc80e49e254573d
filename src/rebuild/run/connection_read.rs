//! Part of step 2: the connection service's data (connection logs and
//! hidden discrepancies), read once by a task of its own while the GMC
//! side is read, so that it adds no time to the run's critical path: from
//! MongoDB (`connection.source = "mongodb"`), or asked of the connection
//! service over its two queues (`"queue"`; the batches stay unacked until
//! the load has written the documents). With `"none"` nothing is read and
//! documents carry no connection fields.

use anyhow::Context;
use tokio::task::JoinHandle;
use tracing::info;

use super::RunContext;
use crate::config::ConnectionSourceKind;
use crate::rebuild::record::RunRecord;
use crate::retry::with_retry;
use crate::sources::connection::queue::read_over_queues;
use crate::sources::connection::{ConnectionRead, ConnectionSource};
use crate::sources::index_sync::PendingBatches;

/// What the task delivers: the data, the batches that carried it (queue
/// mode) and the stale batches discarded first.
pub(super) type Delivered = (ConnectionRead, Vec<PendingBatches>, u64);

/// The read in progress; aborted if dropped (a failed or stopped run).
pub(super) struct PendingConnectionRead(Option<JoinHandle<anyhow::Result<Delivered>>>);

impl Drop for PendingConnectionRead {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Starts the read (nothing to read for `none`).
pub(super) fn start(context: &RunContext<'_>) -> PendingConnectionRead {
    let settings = &context.settings.connection;
    match settings.source {
        ConnectionSourceKind::None => return PendingConnectionRead(None),
        ConnectionSourceKind::Queue => {
            let (rabbit, settings) = (context.settings.rabbitmq.clone(), settings.clone());
            return PendingConnectionRead(Some(tokio::spawn(async move {
                let read = read_over_queues(&rabbit, &settings)
                    .await
                    .context("while reading the connection service's data from its queues")?;
                info!(
                    batches = read.batches,
                    "Read the connection service's syncs over its queues."
                );
                Ok((read.read, read.pending, read.purged_stale))
            })));
        }
        ConnectionSourceKind::Mongodb => {}
    }
    let source = ConnectionSource::new(&context.mongo, settings, &context.settings.mongodb);
    let retry = context.retry;
    let what = format!(
        "the read of {} and {}",
        settings.logs_collection, settings.hidden_collection
    );
    PendingConnectionRead(Some(tokio::spawn(async move {
        let read = with_retry(&retry, &what, || source.read())
            .await
            .with_context(|| format!("while reading the connection service's data ({what})"))?;
        Ok((read, Vec::new(), 0))
    })))
}

/// Waits for the read (`None` when nothing is read). Awaited by the task
/// that reads the GMC side; dropping the future aborts the read.
pub(super) async fn wait(mut pending: PendingConnectionRead) -> anyhow::Result<Option<Delivered>> {
    let Some(handle) = pending.0.as_mut() else {
        return Ok(None);
    };
    let delivered = handle
        .await
        .context("the read of the connection service's data stopped unexpectedly")??;
    let (read, _, _) = &delivered;
    info!(
        doctors = read.map.len(),
        logs = read.logs,
        hidden = read.hidden,
        hidden_same_body = read.hidden_same_body,
        rejected = read.rejects.values().sum::<u64>(),
        "Read the connection service's data: connection logs and hidden discrepancies."
    );
    Ok(Some(delivered))
}

/// Records what the read found (its map has gone to the merge).
pub(super) fn record_delivered(record: &mut RunRecord, read: &ConnectionRead, stale: u64) {
    self::record(record, read);
    record.counts.connection_stale_discarded = stale;
}

fn record(record: &mut RunRecord, read: &ConnectionRead) {
    record.counts.connection_logs = read.logs;
    record.counts.hidden_discrepancies = read.hidden;
    record.counts.hidden_same_body = read.hidden_same_body;
    for (reason, n) in &read.rejects {
        record.reject_many(reason, *n);
    }
}
