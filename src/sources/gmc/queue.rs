//! The GMC side of a rebuild over the recommendation service's queue
//! (`gmc.source = "queue"`): today's `IndexSyncMessage` protocol
//! ([`index_sync`]) asked with `"gmcSyncStart"`, its items
//! (`{"doctor": {...}, "gmcOutcome": "..."}`, [`batch`]) read into the
//! same [`DoctorRead`] and [`OutcomeMap`] the MongoDB read gives. The
//! batches stay unacked until the run has written their documents.
//!
//! [`batch`]: super::batch
//! [`index_sync`]: crate::sources::index_sync

use lapin::Connection;
use serde_json::Value;
use tracing::{debug, info};

use super::batch::{parse_item, BatchItem, ItemOutcome, GMC_MESSAGE_REJECTS};
use super::{DoctorRead, DoctorStore, OutcomeLoad, OutcomeMap};
use crate::config::{GmcSettings, RabbitSettings};
use crate::sources::index_sync::{
    declare_protocol_queues, read_sync, PendingBatches, RejectedItem, SyncError, SyncProtocol,
};
use crate::sources::SourceError;

/// The body of the request, a JSON string as today's integration sends it.
pub const GMC_SYNC_START: &[u8] = br#""gmcSyncStart""#;

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

/// The GMC protocol with the names of `gmc`.
pub fn gmc_protocol(gmc: &GmcSettings) -> SyncProtocol<'_> {
    SyncProtocol {
        what: "GMC",
        service: "the recommendation service",
        request: GMC_SYNC_START,
        start_routing_key: &gmc.sync_start_routing_key,
        start_queue: &gmc.sync_start_queue,
        data_routing_key: &gmc.sync_data_routing_key,
        data_queue: &gmc.sync_data_queue,
        idle_timeout_secs: gmc.idle_timeout_secs,
        idle_timeout_key: "gmc.idle_timeout_secs",
        message_rejects: GMC_MESSAGE_REJECTS,
        consumer_tag: "rebuilder-gmc-sync",
    }
}

/// Asks the recommendation service for a sync and reads it to `syncEnd`;
/// `on_batch` hears how many items each batch held (for progress).
pub async fn read_over_queue(
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
    mut on_batch: impl FnMut(usize),
) -> Result<GmcQueueRead, SyncError> {
    let mut reader = Reader::default();
    let sync = read_sync(rabbit, &gmc_protocol(gmc), |items| {
        on_batch(items.len());
        reader.take(items)
    })
    .await?;
    info!(
        doctors = reader.read.doctors.len(),
        outcomes = reader.outcomes.len(),
        "Read the GMC sync."
    );
    // Dead-lettered messages and items alike, by reason.
    reader.read.rejects = sync.rejects.into_iter().collect();
    Ok(GmcQueueRead {
        doctors: reader.read,
        outcomes: reader.outcomes,
        load: reader.load,
        batches: sync.batches,
        purged_stale: sync.purged_stale,
        pending: sync.pending,
    })
}

/// The exchange, the dead-letter queue and the two queues of the GMC
/// protocol, each declared where missing.
pub async fn declare_queues(
    connection: &Connection,
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
) -> Result<(), SourceError> {
    declare_protocol_queues(connection, rabbit, &gmc_protocol(gmc)).await
}

/// What has been read so far.
struct Reader {
    read: DoctorRead,
    outcomes: OutcomeMap,
    load: OutcomeLoad,
}

impl Default for Reader {
    fn default() -> Self {
        Self {
            read: DoctorRead {
                doctors: DoctorStore::new(),
                ..DoctorRead::default()
            },
            outcomes: OutcomeMap::new(),
            load: OutcomeLoad::default(),
        }
    }
}

impl Reader {
    /// Takes one batch's items; returns those to dead-letter.
    fn take(&mut self, items: Vec<Value>) -> Vec<RejectedItem> {
        let mut rejected = Vec::new();
        for item in &items {
            match parse_item(item) {
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
                    rejected.push(RejectedItem {
                        reason,
                        detail,
                        item,
                    });
                }
            }
        }
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_json_string_gmc_sync_start() {
        let body: String = serde_json::from_slice(GMC_SYNC_START).unwrap();
        assert_eq!(body, "gmcSyncStart");
    }

    #[test]
    fn the_protocol_names_todays_queues_and_the_settings_key_of_its_timeout() {
        let gmc = GmcSettings::default();
        let protocol = gmc_protocol(&gmc);
        assert_eq!(
            protocol.data_queue,
            "reval.queue.revalidationsummary.essync.integration"
        );
        assert_eq!(protocol.idle_timeout_key, "gmc.idle_timeout_secs");
    }
}
