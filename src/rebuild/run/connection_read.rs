//! Part of step 2: the connection service's data (connection logs and
//! hidden discrepancies), read once from MongoDB by a task of its own while
//! the GMC side is read, so that it adds no time to the run's critical
//! path. With `connection.source = "none"` nothing is read and documents
//! carry no connection fields.

use anyhow::Context;
use tokio::task::JoinHandle;
use tracing::info;

use super::RunContext;
use crate::config::ConnectionSourceKind;
use crate::rebuild::record::RunRecord;
use crate::retry::with_retry;
use crate::sources::connection::{ConnectionMap, ConnectionRead, ConnectionSource};

/// The read in progress; aborted if dropped (a failed or stopped run).
pub(super) struct PendingConnectionRead(Option<JoinHandle<anyhow::Result<ConnectionRead>>>);

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
    if settings.source == ConnectionSourceKind::None {
        return PendingConnectionRead(None);
    }
    let source = ConnectionSource::new(&context.mongo, settings, &context.settings.mongodb);
    let retry = context.retry;
    let what = format!(
        "the read of {} and {}",
        settings.logs_collection, settings.hidden_collection
    );
    PendingConnectionRead(Some(tokio::spawn(async move {
        with_retry(&retry, &what, || source.read())
            .await
            .with_context(|| format!("while reading the connection service's data ({what})"))
    })))
}

/// Waits for the read and records what it found.
pub(super) async fn finish(
    context: &mut RunContext<'_>,
    mut pending: PendingConnectionRead,
) -> anyhow::Result<ConnectionMap> {
    // Awaited through a borrow, so that a stopped run drops (aborts) it.
    let Some(handle) = pending.0.as_mut() else {
        return Ok(ConnectionMap::new());
    };
    let read = context
        .cancellable(async {
            handle
                .await
                .context("the read of the connection service's data stopped unexpectedly")?
        })
        .await?;
    record(&mut context.tracker.record, &read);
    info!(
        doctors = read.map.len(),
        logs = read.logs,
        hidden = read.hidden,
        hidden_same_body = read.hidden_same_body,
        rejected = read.rejects.values().sum::<u64>(),
        "Read the connection service's data: connection logs and hidden discrepancies."
    );
    Ok(read.map)
}

fn record(record: &mut RunRecord, read: &ConnectionRead) {
    record.counts.connection_logs = read.logs;
    record.counts.hidden_discrepancies = read.hidden;
    record.counts.hidden_same_body = read.hidden_same_body;
    for (reason, n) in &read.rejects {
        record.reject_many(reason, *n);
    }
}
