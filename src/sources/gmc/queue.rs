//! The GMC side of a rebuild over the recommendation service's queue
//! (`gmc.source = "queue"`): declares our batch queue and its binding where
//! missing, discards what an earlier aborted sync left on it, publishes
//! `"gmcSyncStart"`, and consumes `IndexSyncMessage` batches ([`batch`])
//! until `syncEnd`, into the same [`DoctorRead`] and [`OutcomeMap`] the
//! MongoDB read gives.
//!
//! Every batch stays unacked until the run has written the documents it
//! carried ([`PendingBatches::ack_written`]); a run that fails closes the
//! connection instead ([`PendingBatches::abandon`]), the broker puts the
//! batches back, and the next run's purge discards them (a sync is a full
//! snapshot, asked for again). So the consumer sets no prefetch limit: the
//! whole sync is held unacked (the broker keeps it; we keep only the
//! compact store). A batch that is not one is dead-lettered whole, an item
//! without a usable doctor alone, each with its reason in the
//! `x-rebuilder-reason` header, as the TCS sync does.
//!
//! A connection lost mid-read fails the run rather than resuming: the
//! recommendation service may still be publishing that sync, and a second
//! `gmcSyncStart` would interleave two syncs whose first `syncEnd` ends
//! ours early.
//!
//! [`batch`]: super::batch

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, ConfirmSelectOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::{debug, info, warn};

use super::batch::{parse_batch, BatchItem, ItemOutcome};
use super::{DoctorRead, DoctorStore, OutcomeLoad, OutcomeMap};
use crate::config::{GmcSettings, RabbitSettings};
use crate::retry::Retriable;
use crate::sources::tcs::topology::{declare_queues_bound, reason_headers};
use crate::sources::tcs::{declare_topology, json_properties, publish_confirmed};
use crate::sources::{rabbit_connection, SourceError};

/// The body of the request, a JSON string as today's integration sends it.
pub const GMC_SYNC_START: &[u8] = br#""gmcSyncStart""#;

#[derive(Debug, thiserror::Error)]
pub enum GmcQueueError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the recommendation service sent nothing for {idle_secs} s after {batches} batches on {queue:?} (gmc.idle_timeout_secs); the GMC sync did not finish (no syncEnd): is the recommendation service running and listening on routing key {routing_key:?}?")]
    Idle {
        idle_secs: u64,
        batches: u64,
        queue: String,
        routing_key: String,
    },
    #[error(
        "the connection to RabbitMQ closed mid-way through the GMC sync, after {batches} batches"
    )]
    Closed { batches: u64 },
}

impl From<lapin::Error> for GmcQueueError {
    fn from(e: lapin::Error) -> Self {
        Self::Source(e.into())
    }
}

impl Retriable for GmcQueueError {
    /// Only a failure before anything was consumed may be tried again
    /// (see the module notes); a silent service is final.
    fn is_retriable(&self) -> bool {
        match self {
            GmcQueueError::Source(e) => e.is_retriable(),
            GmcQueueError::Idle { .. } | GmcQueueError::Closed { .. } => false,
        }
    }
}

/// What one GMC sync over the queue delivered.
pub struct GmcQueueRead {
    /// The doctors, as a read of `doctorsForDB` gives them (`resumes` is 0).
    pub doctors: DoctorRead,
    pub outcomes: OutcomeMap,
    /// `groups`: items with an outcome; `unknown_outcomes`: values that are
    /// no known outcome (the doctor is kept without `gmcStatus`).
    pub load: OutcomeLoad,
    /// Messages received, `syncEnd` and dead-lettered ones included.
    pub batches: u64,
    /// Messages of an earlier sync discarded from the queue at the start.
    pub purged_stale: u64,
    /// The batches, unacked until the run has written their documents.
    pub pending: PendingBatches,
}

/// The consumed batches, not acked yet, and the connection they came on.
pub struct PendingBatches {
    connection: Connection,
    channel: Channel,
    /// The delivery tag of the last message (0: none).
    last_tag: u64,
}

impl PendingBatches {
    /// Acks every batch at once: their documents are written. A failure
    /// only warns: the batches go back to the queue and the next run's
    /// purge discards them, so nothing is lost or applied twice.
    pub async fn ack_written(self) {
        if self.last_tag > 0 {
            if let Err(e) = self
                .channel
                .basic_ack(self.last_tag, BasicAckOptions { multiple: true })
                .await
            {
                warn!(error = %e, "Could not ack the GMC batches; the next run discards them.");
            } else {
                debug!(upto = self.last_tag, "Acked the GMC batches.");
            }
        }
        let _ = self.connection.close(200, "gmc sync done".into()).await;
    }

    /// Gives the batches back to the queue unacked (the run failed).
    pub async fn abandon(self) {
        let _ = self
            .connection
            .close(200, "gmc sync abandoned".into())
            .await;
    }
}

/// Asks the recommendation service for a sync and reads it to `syncEnd`;
/// `on_batch` hears how many items each batch held (for progress).
pub async fn read_over_queue(
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
    mut on_batch: impl FnMut(usize),
) -> Result<GmcQueueRead, GmcQueueError> {
    let connection = rabbit_connection(rabbit).await?;
    let started = start(&connection, rabbit, gmc).await;
    let (channel, dead_letters, mut consumer, purged_stale) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = connection.close(200, "gmc sync failed".into()).await;
            return Err(e);
        }
    };
    let mut reader = Reader::new(dead_letters, &rabbit.dead_letter_queue);
    let idle = Duration::from_secs(gmc.idle_timeout_secs);
    let mut last_tag = 0;
    let ended = loop {
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Err(_) => {
                break Err(GmcQueueError::Idle {
                    idle_secs: gmc.idle_timeout_secs,
                    batches: reader.batches,
                    queue: gmc.sync_data_queue.clone(),
                    routing_key: gmc.sync_start_routing_key.clone(),
                })
            }
            Ok(None) | Ok(Some(Err(_))) => {
                break Err(GmcQueueError::Closed {
                    batches: reader.batches,
                })
            }
            Ok(Some(Ok(delivery))) => delivery,
        };
        last_tag = delivery.delivery_tag;
        match reader.take(&delivery.data, &mut on_batch).await {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = ended {
        let _ = connection.close(200, "gmc sync failed".into()).await;
        return Err(e);
    }
    // Nothing after syncEnd belongs to this sync; stop the deliveries.
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    info!(
        batches = reader.batches,
        doctors = reader.read.doctors.len(),
        outcomes = reader.outcomes.len(),
        rejects = reader.rejects.values().sum::<u64>(),
        "The recommendation service ended the GMC sync."
    );
    Ok(reader.finish(
        purged_stale,
        PendingBatches {
            connection,
            channel,
            last_tag,
        },
    ))
}

/// Declares, purges, starts consuming, then asks for the sync.
async fn start(
    connection: &Connection,
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
) -> Result<(Channel, Channel, lapin::Consumer, u64), GmcQueueError> {
    declare_queues(connection, rabbit, gmc).await?;
    let channel = connection.create_channel().await?;
    let purged = channel
        .queue_purge(
            gmc.sync_data_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    if purged > 0 {
        warn!(
            queue = %gmc.sync_data_queue,
            messages = purged,
            "Discarded GMC batches an earlier sync left on the queue."
        );
    }
    let consumer = channel
        .basic_consume(
            gmc.sync_data_queue.as_str().into(),
            "rebuilder-gmc-sync".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let confirmed = connection.create_channel().await?;
    confirmed
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    publish_confirmed(
        &confirmed,
        &rabbit.exchange,
        &gmc.sync_start_routing_key,
        GMC_SYNC_START,
        json_properties(),
    )
    .await?;
    info!(
        exchange = %rabbit.exchange,
        routing_key = %gmc.sync_start_routing_key,
        "Asked the recommendation service for a GMC sync."
    );
    Ok((channel, confirmed, consumer, u64::from(purged)))
}

/// The exchange and dead-letter queue (the TCS topology), then the two
/// queues of the GMC protocol bound to the exchange, each declared only
/// where missing (a queue the recommendation service declared with its own
/// arguments is left as it is).
pub async fn declare_queues(
    connection: &Connection,
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
) -> Result<(), SourceError> {
    declare_topology(connection, rabbit).await?;
    let channel = connection.create_channel().await?;
    declare_queues_bound(
        connection,
        &channel,
        &rabbit.exchange,
        &[
            (&gmc.sync_start_queue, Some(&gmc.sync_start_routing_key)),
            (&gmc.sync_data_queue, Some(&gmc.sync_data_routing_key)),
        ],
        "GMC",
    )
    .await?;
    let _ = channel.close(200, "gmc queues declared".into()).await;
    Ok(())
}

/// What has been read so far.
struct Reader {
    read: DoctorRead,
    outcomes: OutcomeMap,
    load: OutcomeLoad,
    rejects: HashMap<&'static str, u64>,
    batches: u64,
    dead_letters: Channel,
    dead_letter_queue: String,
}

impl Reader {
    fn new(dead_letters: Channel, dead_letter_queue: &str) -> Self {
        Self {
            read: DoctorRead {
                doctors: DoctorStore::new(),
                ..DoctorRead::default()
            },
            outcomes: OutcomeMap::new(),
            load: OutcomeLoad::default(),
            rejects: HashMap::new(),
            batches: 0,
            dead_letters,
            dead_letter_queue: dead_letter_queue.to_string(),
        }
    }

    /// Takes one message; `true` once it was the end of the sync.
    async fn take(
        &mut self,
        body: &[u8],
        on_batch: &mut impl FnMut(usize),
    ) -> Result<bool, GmcQueueError> {
        self.batches += 1;
        let batch = match parse_batch(body) {
            Ok(batch) => batch,
            Err(e) => {
                warn!(reason = e.as_str(), detail = %e, "Dead-lettering a GMC sync message.");
                self.dead_letter(body, e.as_str(), &e.to_string()).await?;
                return Ok(false);
            }
        };
        on_batch(batch.items.len());
        for item in batch.items {
            match item {
                BatchItem::Doctor {
                    number,
                    doctor,
                    outcome,
                } => {
                    self.read.rows += 1;
                    // As in the MongoDB read, the first of two numbers that
                    // trim alike is kept, with its own outcome.
                    if !self.read.doctors.insert(&number, doctor) {
                        continue;
                    }
                    match outcome {
                        ItemOutcome::None => {}
                        ItemOutcome::Known(status) => {
                            self.load.groups += 1;
                            self.outcomes.insert(&number, status);
                        }
                        ItemOutcome::Unknown(value) => {
                            self.load.groups += 1;
                            self.load.unknown_outcomes += 1;
                            debug!(gmc_number = %number.as_str(), value = %value, "A GMC outcome that is no known outcome.");
                        }
                    }
                }
                BatchItem::Rejected {
                    reason,
                    detail,
                    item,
                } => {
                    let body = serde_json::to_vec(&item).expect("JSON always serializes");
                    self.dead_letter(&body, reason, &detail).await?;
                }
            }
        }
        Ok(batch.sync_end)
    }

    /// Publishes `body` to the dead-letter queue with its reason, confirmed
    /// by the broker, and counts it. The batch it came in is acked with the
    /// others once the run has written them.
    async fn dead_letter(
        &mut self,
        body: &[u8],
        reason: &'static str,
        detail: &str,
    ) -> Result<(), GmcQueueError> {
        let headers = reason_headers(reason, detail);
        publish_confirmed(
            &self.dead_letters,
            "",
            &self.dead_letter_queue,
            body,
            json_properties().with_headers(headers),
        )
        .await?;
        *self.rejects.entry(reason).or_default() += 1;
        Ok(())
    }

    fn finish(mut self, purged_stale: u64, pending: PendingBatches) -> GmcQueueRead {
        let mut rejects: Vec<(&'static str, u64)> = self.rejects.into_iter().collect();
        rejects.sort_unstable();
        self.read.rejects = rejects;
        GmcQueueRead {
            doctors: self.read,
            outcomes: self.outcomes,
            load: self.load,
            batches: self.batches,
            purged_stale,
            pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_service_is_final_and_says_where_it_was_asked() {
        let idle = GmcQueueError::Idle {
            idle_secs: 300,
            batches: 0,
            queue: "reval.queue.revalidationsummary.essync.integration".into(),
            routing_key: "reval.recommendation.syncstart".into(),
        };
        assert!(!idle.is_retriable());
        let text = idle.to_string();
        assert!(text.contains("recommendation service"), "{text}");
        assert!(text.contains("reval.recommendation.syncstart"), "{text}");
        assert!(!GmcQueueError::Closed { batches: 3 }.is_retriable());
    }

    #[test]
    fn the_request_is_the_json_string_gmc_sync_start() {
        let body: String = serde_json::from_slice(GMC_SYNC_START).unwrap();
        assert_eq!(body, "gmcSyncStart");
    }
}
