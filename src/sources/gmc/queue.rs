//! The GMC side of a rebuild over the recommendation service's queue
//! (`gmc.source = "queue"`): today's `IndexSyncMessage` protocol
//! ([`index_sync`]) asked with `"gmcSyncStart"`, its items
//! (`{"doctor": {...}, "gmcOutcome": "..."}`, [`batch`]) handed over
//! batch by batch, each doctor with its outcome (a run merges with them
//! while the rest comes), and counted as a read of `doctorsForDB` is
//! ([`DoctorRead`]). The batches stay unacked until the run has written
//! their documents.
//!
//! [`batch`]: super::batch
//! [`index_sync`]: crate::sources::index_sync

use lapin::Connection;
use serde_json::Value;
use tracing::{debug, info};

use super::batch::{parse_item, BatchItem, ItemOutcome, GMC_MESSAGE_REJECTS};
use super::{DoctorRead, GmcNumberSet, OutcomeLoad};
use crate::config::{GmcSettings, RabbitSettings};
use crate::domain::{GmcDoctor, GmcNumber, GmcStatus};
use crate::sources::index_sync::{
    declare_protocol_queues, read_sync, PendingBatches, RejectedItem, SyncError, SyncProtocol,
};
use crate::sources::SourceError;

/// The body of the request, a JSON string as today's integration sends it.
pub const GMC_SYNC_START: &[u8] = br#""gmcSyncStart""#;

/// One doctor of a GMC batch: its number, its record and its latest
/// outcome, if it has a known one.
pub type QueueDoctor = (GmcNumber, GmcDoctor, Option<GmcStatus>);

/// What one GMC sync over the queue delivered (the doctors went to the
/// caller batch by batch).
pub struct GmcQueueRead {
    /// The counts of a read of `doctorsForDB` (`resumes` is 0; the store is
    /// empty: the doctors went to the caller).
    pub doctors: DoctorRead,
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

/// Asks the recommendation service for a sync and reads it to `syncEnd`,
/// handing each batch's usable doctors to `on_doctors` as it comes (the
/// first of two numbers that trim alike, as in the MongoDB read).
pub async fn read_over_queue(
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
    mut on_doctors: impl FnMut(Vec<QueueDoctor>),
) -> Result<GmcQueueRead, SyncError> {
    let mut reader = Reader::default();
    let sync = read_sync(rabbit, &gmc_protocol(gmc), |items| {
        let (doctors, rejected) = reader.take(items);
        on_doctors(doctors);
        rejected
    })
    .await?;
    info!(
        doctors = reader.seen.len(),
        outcomes = reader.load.groups - reader.load.unknown_outcomes,
        "Read the GMC sync."
    );
    // Dead-lettered messages and items alike, by reason.
    reader.read.rejects = sync.rejects.into_iter().collect();
    Ok(GmcQueueRead {
        doctors: reader.read,
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
#[derive(Default)]
struct Reader {
    read: DoctorRead,
    seen: GmcNumberSet,
    load: OutcomeLoad,
}

impl Reader {
    /// Takes one batch's items: the usable doctors, and the items to
    /// dead-letter.
    fn take(&mut self, items: Vec<Value>) -> (Vec<QueueDoctor>, Vec<RejectedItem>) {
        let mut doctors = Vec::with_capacity(items.len());
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
                    if !self.seen.add(&number) {
                        continue;
                    }
                    let status = match outcome {
                        ItemOutcome::None => None,
                        ItemOutcome::Known(status) => {
                            self.load.groups += 1;
                            Some(status)
                        }
                        ItemOutcome::Unknown(value) => {
                            self.load.groups += 1;
                            self.load.unknown_outcomes += 1;
                            debug!(gmc_number = %number.as_str(), value = %value, "A GMC outcome that is no known outcome.");
                            None
                        }
                    };
                    doctors.push((number, doctor, status));
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
        (doctors, rejected)
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
