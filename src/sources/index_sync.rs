//! Today's batch protocol of the revalidation services over RabbitMQ
//! (`IndexSyncMessage`): ask a service for a full sync with a JSON string
//! on its start routing key, then read `{"payload": [...], "syncEnd":
//! false}` batches from our queue until `{"payload": [], "syncEnd": true}`.
//! The recommendation service answers `"gmcSyncStart"` this way, the
//! connection service `"connectionLogSyncStart"` and
//! `"hiddenDiscrepancySyncStart"`; what a payload item holds belongs to the
//! caller ([`read_sync`]'s `take`).
//!
//! The queues are declared (and bound) where missing, and what an earlier
//! aborted sync left on ours is purged before the request. Every batch
//! stays unacked until the run has written the documents it carried
//! ([`PendingBatches::ack_written`]); a run that fails closes the
//! connection instead ([`PendingBatches::abandon`]), the broker puts the
//! batches back, and the next run's purge discards them (a sync is a full
//! snapshot, asked for again). So the consumer sets no prefetch limit: the
//! whole sync is held unacked by the broker. A message that is not a batch
//! is dead-lettered whole, an unusable item alone, each with its reason in
//! the `x-rebuilder-reason` header, as the TCS sync does.
//!
//! A connection lost mid-read fails the run rather than resuming: the
//! service may still be publishing that sync, and a second request would
//! interleave two syncs whose first `syncEnd` ends ours early.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, ConfirmSelectOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::config::RabbitSettings;
use crate::retry::Retriable;
use crate::sources::tcs::topology::{declare_queues_bound, reason_headers};
use crate::sources::tcs::{declare_topology, json_properties, publish_confirmed};
use crate::sources::{rabbit_connection, SourceError};

/// One sync protocol: who is asked, how, and where the batches arrive (on
/// the exchange of the `rabbitmq` section).
#[derive(Clone, Copy, Debug)]
pub struct SyncProtocol<'a> {
    /// What is synced, for messages: "GMC", "connection log".
    pub what: &'static str,
    /// Who answers: "the recommendation service".
    pub service: &'static str,
    /// The request body, a JSON string (`"gmcSyncStart"`).
    pub request: &'static [u8],
    pub start_routing_key: &'a str,
    /// The service's queue for requests: declared where missing, so that a
    /// request published before the service is up waits for it.
    pub start_queue: &'a str,
    pub data_routing_key: &'a str,
    /// Our queue for the batches.
    pub data_queue: &'a str,
    /// A service silent this long (before its first batch or between two)
    /// fails the read.
    pub idle_timeout_secs: u64,
    /// The settings key of that timeout, named in the error.
    pub idle_timeout_key: &'static str,
    /// The reject keys of a message that is not a batch.
    pub message_rejects: MessageRejects,
    /// The consumer tag on our queue.
    pub consumer_tag: &'static str,
}

/// The reject keys (counted and dead-lettered under) of the three ways a
/// message can fail to be a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRejects {
    pub invalid_json: &'static str,
    pub not_a_sync_message: &'static str,
    pub payload_not_a_list: &'static str,
}

/// Why a whole message cannot be a batch (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not JSON: {0}")]
    InvalidJson(String),
    #[error("not an IndexSyncMessage (an object with payload and syncEnd): {0}")]
    NotASyncMessage(String),
    #[error("the payload is not a list: {0}")]
    PayloadNotAList(String),
}

impl MessageError {
    /// The reject key of this error under `rejects`.
    pub fn reason(&self, rejects: &MessageRejects) -> &'static str {
        match self {
            MessageError::InvalidJson(_) => rejects.invalid_json,
            MessageError::NotASyncMessage(_) => rejects.not_a_sync_message,
            MessageError::PayloadNotAList(_) => rejects.payload_not_a_list,
        }
    }
}

/// A parsed message: its payload items, as JSON, and whether it ends the sync.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncMessage {
    pub items: Vec<Value>,
    pub sync_end: bool,
}

/// Parses one message body. The last message may carry no payload, or a
/// null one (the connection service's hidden-discrepancy end has none).
pub fn parse_message(body: &[u8]) -> Result<SyncMessage, MessageError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| MessageError::InvalidJson(e.to_string()))?;
    let Value::Object(mut message) = value else {
        return Err(MessageError::NotASyncMessage(format!(
            "a JSON {}",
            kind_of(&value)
        )));
    };
    let sync_end = message.get("syncEnd").and_then(Value::as_bool);
    let items = match (message.remove("payload"), sync_end) {
        (Some(Value::Array(items)), _) => items,
        (None | Some(Value::Null), Some(true)) => Vec::new(),
        (None, _) => {
            return Err(MessageError::NotASyncMessage(
                "an object without a payload".into(),
            ))
        }
        (Some(other), _) => {
            return Err(MessageError::PayloadNotAList(format!(
                "a JSON {}",
                kind_of(&other)
            )))
        }
    };
    Ok(SyncMessage {
        items,
        sync_end: sync_end == Some(true),
    })
}

/// A payload item the caller cannot use: dead-lettered (its JSON) with
/// its reason, and counted.
#[derive(Clone, Debug, PartialEq)]
pub struct RejectedItem {
    pub reason: &'static str,
    pub detail: String,
    pub item: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{service} sent nothing for {idle_secs} s after {batches} batches on {queue:?} ({key}); the {what} sync did not finish (no syncEnd): is {service} running and listening on routing key {routing_key:?}?")]
    Idle {
        what: &'static str,
        service: &'static str,
        key: &'static str,
        idle_secs: u64,
        batches: u64,
        queue: String,
        routing_key: String,
    },
    #[error("the connection to RabbitMQ closed mid-way through the {what} sync, after {batches} batches")]
    Closed { what: &'static str, batches: u64 },
}

impl From<lapin::Error> for SyncError {
    fn from(e: lapin::Error) -> Self {
        Self::Source(e.into())
    }
}

impl Retriable for SyncError {
    /// Only a failure before anything was consumed may be tried again
    /// (see the module notes); a silent service is final.
    fn is_retriable(&self) -> bool {
        match self {
            SyncError::Source(e) => e.is_retriable(),
            SyncError::Idle { .. } | SyncError::Closed { .. } => false,
        }
    }
}

/// What one sync delivered, besides what `take` kept.
pub struct SyncRead {
    /// Messages received, `syncEnd` and dead-lettered ones included.
    pub batches: u64,
    /// Messages of an earlier sync discarded from the queue at the start.
    pub purged_stale: u64,
    /// Dead-lettered messages and items by reason.
    pub rejects: BTreeMap<&'static str, u64>,
    /// The batches, unacked until the run has written their documents.
    pub pending: PendingBatches,
}

/// The consumed batches, not acked yet, and the connection they came on.
pub struct PendingBatches {
    what: &'static str,
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
                warn!(error = %e, what = self.what, "Could not ack the sync's batches; the next run discards them.");
            } else {
                debug!(
                    upto = self.last_tag,
                    what = self.what,
                    "Acked the sync's batches."
                );
            }
        }
        let _ = self.connection.close(200, "sync done".into()).await;
    }

    /// Gives the batches back to the queue unacked (the run failed).
    pub async fn abandon(self) {
        let _ = self.connection.close(200, "sync abandoned".into()).await;
    }
}

/// Asks for a sync and reads it to `syncEnd`. `take` gets each batch's
/// items and returns those it cannot use, which are dead-lettered.
pub async fn read_sync(
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
    mut take: impl FnMut(Vec<Value>) -> Vec<RejectedItem>,
) -> Result<SyncRead, SyncError> {
    let connection = rabbit_connection(rabbit).await?;
    let (channel, dead_letters, mut consumer, purged_stale) =
        match start(&connection, rabbit, protocol).await {
            Ok(started) => started,
            Err(e) => {
                let _ = connection.close(200, "sync failed".into()).await;
                return Err(e);
            }
        };
    let mut letters = DeadLetters {
        channel: dead_letters,
        queue: &rabbit.dead_letter_queue,
        rejects: BTreeMap::new(),
    };
    let idle = Duration::from_secs(protocol.idle_timeout_secs);
    let mut batches = 0;
    let mut last_tag = 0;
    let ended: Result<(), SyncError> = loop {
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Err(_) => {
                break Err(SyncError::Idle {
                    what: protocol.what,
                    service: protocol.service,
                    key: protocol.idle_timeout_key,
                    idle_secs: protocol.idle_timeout_secs,
                    batches,
                    queue: protocol.data_queue.to_string(),
                    routing_key: protocol.start_routing_key.to_string(),
                })
            }
            Ok(None) | Ok(Some(Err(_))) => {
                break Err(SyncError::Closed {
                    what: protocol.what,
                    batches,
                })
            }
            Ok(Some(Ok(delivery))) => delivery,
        };
        batches += 1;
        last_tag = delivery.delivery_tag;
        let message = match parse_message(&delivery.data) {
            Ok(message) => message,
            Err(e) => {
                let reason = e.reason(&protocol.message_rejects);
                warn!(reason, detail = %e, what = protocol.what, "Dead-lettering a sync message.");
                if let Err(e) = letters.send(&delivery.data, reason, &e.to_string()).await {
                    break Err(e);
                }
                continue;
            }
        };
        let mut failed = None;
        for rejected in take(message.items) {
            let body = serde_json::to_vec(&rejected.item).expect("JSON always serializes");
            if let Err(e) = letters.send(&body, rejected.reason, &rejected.detail).await {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if message.sync_end {
            break Ok(());
        }
    };
    if let Err(e) = ended {
        let _ = connection.close(200, "sync failed".into()).await;
        return Err(e);
    }
    // Nothing after syncEnd belongs to this sync; stop the deliveries.
    let _ = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    info!(
        what = protocol.what,
        batches,
        rejects = letters.rejects.values().sum::<u64>(),
        "{} ended the {} sync.",
        protocol.service,
        protocol.what
    );
    Ok(SyncRead {
        batches,
        purged_stale,
        rejects: letters.rejects,
        pending: PendingBatches {
            what: protocol.what,
            connection,
            channel,
            last_tag,
        },
    })
}

/// Declares, purges, starts consuming, then asks for the sync.
async fn start(
    connection: &Connection,
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
) -> Result<(Channel, Channel, lapin::Consumer, u64), SyncError> {
    declare_protocol_queues(connection, rabbit, protocol).await?;
    let channel = connection.create_channel().await?;
    let purged = channel
        .queue_purge(protocol.data_queue.into(), QueuePurgeOptions::default())
        .await?;
    if purged > 0 {
        warn!(
            queue = %protocol.data_queue,
            messages = purged,
            what = protocol.what,
            "Discarded batches an earlier sync left on the queue."
        );
    }
    let consumer = channel
        .basic_consume(
            protocol.data_queue.into(),
            protocol.consumer_tag.into(),
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
        protocol.start_routing_key,
        protocol.request,
        json_properties(),
    )
    .await?;
    info!(
        exchange = %rabbit.exchange,
        routing_key = %protocol.start_routing_key,
        "Asked {} for a {} sync.",
        protocol.service,
        protocol.what
    );
    Ok((channel, confirmed, consumer, u64::from(purged)))
}

/// The exchange and dead-letter queue (the TCS topology), then the two
/// queues of the protocol bound to the exchange, each declared only where
/// missing (a queue the service declared with its own arguments is left
/// as it is).
pub async fn declare_protocol_queues(
    connection: &Connection,
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
) -> Result<(), SourceError> {
    declare_topology(connection, rabbit).await?;
    let channel = connection.create_channel().await?;
    let names = [
        protocol.start_queue.to_string(),
        protocol.start_routing_key.to_string(),
        protocol.data_queue.to_string(),
        protocol.data_routing_key.to_string(),
    ];
    declare_queues_bound(
        connection,
        &channel,
        &rabbit.exchange,
        &[(&names[0], Some(&names[1])), (&names[2], Some(&names[3]))],
        protocol.what,
    )
    .await?;
    let _ = channel.close(200, "sync queues declared".into()).await;
    Ok(())
}

/// The dead-letter queue, and what was sent to it.
struct DeadLetters<'a> {
    channel: Channel,
    queue: &'a str,
    rejects: BTreeMap<&'static str, u64>,
}

impl DeadLetters<'_> {
    /// Publishes `body` with its reason, confirmed by the broker, and
    /// counts it. The batch it came in is acked with the others once the
    /// run has written them.
    async fn send(
        &mut self,
        body: &[u8],
        reason: &'static str,
        detail: &str,
    ) -> Result<(), SyncError> {
        publish_confirmed(
            &self.channel,
            "",
            self.queue,
            body,
            json_properties().with_headers(reason_headers(reason, detail)),
        )
        .await?;
        *self.rejects.entry(reason).or_default() += 1;
        Ok(())
    }
}

/// An Extended-JSON date (`{"$date": "...Z"}`, `{"$date": millis}`,
/// `{"$date": {"$numberLong": "..."}}`), as the services' relays write
/// BSON dates; `None` for anything else.
pub fn ext_json_date(value: &Value) -> Option<bson::DateTime> {
    match value.get("$date")? {
        Value::String(s) => bson::DateTime::parse_rfc3339_str(s).ok(),
        Value::Number(n) => n.as_i64().map(bson::DateTime::from_millis),
        Value::Object(long) => long
            .get("$numberLong")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<i64>().ok())
            .map(bson::DateTime::from_millis),
        _ => None,
    }
}

/// The JSON type of a value, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REJECTS: MessageRejects = MessageRejects {
        invalid_json: "x_invalid_json",
        not_a_sync_message: "x_not_a_sync_message",
        payload_not_a_list: "x_payload_not_a_list",
    };

    #[test]
    fn malformed_messages_say_what_they_are_not() {
        let error = |body: &[u8]| parse_message(body).unwrap_err().reason(&REJECTS);
        assert_eq!(error(b"{\"payload\": ["), "x_invalid_json");
        assert_eq!(error(b"\"gmcSyncStart\""), "x_not_a_sync_message");
        assert_eq!(error(b"[{\"doctor\": {}}]"), "x_not_a_sync_message");
        assert_eq!(error(b"{\"doctors\": []}"), "x_not_a_sync_message");
        assert_eq!(
            error(b"{\"payload\": {\"doctor\": {}}, \"syncEnd\": false}"),
            "x_payload_not_a_list"
        );
        assert_eq!(
            error(b"{\"payload\": null, \"syncEnd\": false}"),
            "x_payload_not_a_list"
        );
    }

    #[test]
    fn a_batch_keeps_every_item_in_order_and_every_form_of_the_end_is_recognised() {
        let batch =
            parse_message(br#"{"payload": [{"a": 1}, 2, "three"], "syncEnd": false}"#).unwrap();
        assert!(!batch.sync_end);
        assert_eq!(batch.items.len(), 3);
        assert_eq!(batch.items[2], Value::String("three".into()));
        for end in [
            &br#"{"payload": [], "syncEnd": true}"#[..],
            br#"{"syncEnd": true}"#,
            br#"{"payload": null, "syncEnd": true}"#,
        ] {
            let batch = parse_message(end).unwrap();
            assert!(batch.sync_end && batch.items.is_empty());
        }
    }

    #[test]
    fn a_silent_service_is_final_and_says_where_it_was_asked() {
        let idle = SyncError::Idle {
            what: "GMC",
            service: "the recommendation service",
            key: "gmc.idle_timeout_secs",
            idle_secs: 300,
            batches: 0,
            queue: "reval.queue.revalidationsummary.essync.integration".into(),
            routing_key: "reval.recommendation.syncstart".into(),
        };
        assert!(!idle.is_retriable());
        let text = idle.to_string();
        assert!(text.contains("the recommendation service"), "{text}");
        assert!(text.contains("reval.recommendation.syncstart"), "{text}");
        assert!(text.contains("gmc.idle_timeout_secs"), "{text}");
        assert!(!SyncError::Closed {
            what: "GMC",
            batches: 3
        }
        .is_retriable());
    }
}
