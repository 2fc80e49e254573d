//! The connection service's data over its queues (`connection.source =
//! "queue"`): today's two `IndexSyncMessage` protocols ([`index_sync`]),
//! `"connectionLogSyncStart"` (items are `ConnectionLogDto`: `gmcId`,
//! `updatedBy`, `eventDateTime`, ...) and `"hiddenDiscrepancySyncStart"`
//! (items are the hidden discrepancies: `id`, `gmcId`,
//! `hiddenForDesignatedBodyCode`, `hiddenBy`, `reason`, `hiddenDateTime`),
//! asked at once and read into the same [`ConnectionRead`] the MongoDB
//! read gives: each item becomes the document the collection holds and
//! goes through the same [`ConnectionBuilder`], so the two sources cannot
//! disagree on numbers, dates or "the first hidden for a body stays".
//!
//! Dates come as today's `uuuu-MM-dd'T'HH:mm:ss.SSS`, as ISO strings with
//! a zone, as `yyyy-MM-dd HH:mm:ss`, as Extended JSON (`{"$date": ...}`) or
//! as Jackson's `[y, m, d, h, m, s, nanos]` arrays, all read as UTC.
//!
//! [`index_sync`]: crate::sources::index_sync

use std::sync::Mutex;

use bson::{Bson, Document};
use chrono::NaiveDate;
use serde_json::Value;

use super::{ConnectionBuilder, ConnectionRead};
use crate::config::{ConnectionSettings, RabbitSettings};
use crate::sources::index_sync::{
    ext_json_date, kind_of, read_sync, MessageRejects, PendingBatches, RejectedItem, SyncError,
    SyncProtocol, SyncRead,
};

/// The request bodies, JSON strings as today's integration sends them.
pub const CONNECTION_LOG_SYNC_START: &[u8] = br#""connectionLogSyncStart""#;
pub const HIDDEN_DISCREPANCY_SYNC_START: &[u8] = br#""hiddenDiscrepancySyncStart""#;

/// Reject keys of an item that is not a JSON object.
pub const REJECT_LOG_ITEM_NOT_AN_OBJECT: &str = "connection_log_item_not_an_object";
pub const REJECT_HIDDEN_ITEM_NOT_AN_OBJECT: &str = "hidden_discrepancy_item_not_an_object";

/// The connection-log protocol with the names of `settings`.
pub fn log_protocol(settings: &ConnectionSettings) -> SyncProtocol<'_> {
    SyncProtocol {
        what: "connection log",
        service: "the connection service",
        request: CONNECTION_LOG_SYNC_START,
        start_routing_key: &settings.log_sync_start_routing_key,
        start_queue: &settings.log_sync_start_queue,
        data_routing_key: &settings.log_sync_data_routing_key,
        data_queue: &settings.log_sync_data_queue,
        idle_timeout_secs: settings.idle_timeout_secs,
        idle_timeout_key: "connection.idle_timeout_secs",
        message_rejects: MessageRejects {
            invalid_json: "connection_log_batch_invalid_json",
            not_a_sync_message: "connection_log_batch_not_a_sync_message",
            payload_not_a_list: "connection_log_batch_payload_not_a_list",
        },
        consumer_tag: "rebuilder-connection-log-sync",
    }
}

/// The hidden-discrepancy protocol with the names of `settings`.
pub fn hidden_protocol(settings: &ConnectionSettings) -> SyncProtocol<'_> {
    SyncProtocol {
        what: "hidden discrepancy",
        service: "the connection service",
        request: HIDDEN_DISCREPANCY_SYNC_START,
        start_routing_key: &settings.hidden_sync_start_routing_key,
        start_queue: &settings.hidden_sync_start_queue,
        data_routing_key: &settings.hidden_sync_data_routing_key,
        data_queue: &settings.hidden_sync_data_queue,
        idle_timeout_secs: settings.idle_timeout_secs,
        idle_timeout_key: "connection.idle_timeout_secs",
        message_rejects: MessageRejects {
            invalid_json: "hidden_discrepancy_batch_invalid_json",
            not_a_sync_message: "hidden_discrepancy_batch_not_a_sync_message",
            payload_not_a_list: "hidden_discrepancy_batch_payload_not_a_list",
        },
        consumer_tag: "rebuilder-hidden-discrepancy-sync",
    }
}

/// What the two syncs delivered.
pub struct ConnectionQueueRead {
    /// The data, with every dead-lettered message and item among its rejects.
    pub read: ConnectionRead,
    /// Messages received on both queues.
    pub batches: u64,
    /// Messages of earlier syncs discarded from both queues at the start.
    pub purged_stale: u64,
    /// Both syncs' batches, unacked until the run has written the documents.
    pub pending: Vec<PendingBatches>,
}

/// Asks the connection service for both syncs at once and reads them to
/// their `syncEnd`. Either failing gives the other's batches back.
pub async fn read_over_queues(
    rabbit: &RabbitSettings,
    settings: &ConnectionSettings,
) -> Result<ConnectionQueueRead, SyncError> {
    let builder = Mutex::new(ConnectionBuilder::default());
    let (log_sync, hidden_sync) = (log_protocol(settings), hidden_protocol(settings));
    let logs = read_sync(rabbit, &log_sync, |items| take(&builder, items, Kind::Log));
    let hidden = read_sync(rabbit, &hidden_sync, |items| {
        take(&builder, items, Kind::Hidden)
    });
    let (logs, hidden) = tokio::join!(logs, hidden);
    let (logs, hidden) = match (logs, hidden) {
        (Ok(logs), Ok(hidden)) => (logs, hidden),
        (Err(e), other) | (other, Err(e)) => {
            if let Ok(read) = other {
                read.pending.abandon().await;
            }
            return Err(e);
        }
    };
    let mut read = builder.into_inner().expect("builder").finish();
    // The dead letters count every unusable message and item, by reason;
    // the builder's own counts are the item part of the same.
    read.rejects.clear();
    for sync in [&logs, &hidden] {
        for (reason, n) in &sync.rejects {
            *read.rejects.entry(reason).or_default() += n;
        }
    }
    let totals = |f: fn(&SyncRead) -> u64| f(&logs) + f(&hidden);
    Ok(ConnectionQueueRead {
        read,
        batches: totals(|s| s.batches),
        purged_stale: totals(|s| s.purged_stale),
        pending: vec![logs.pending, hidden.pending],
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Log,
    Hidden,
}

/// Takes one batch's items into the builder; returns those to dead-letter.
fn take(builder: &Mutex<ConnectionBuilder>, items: Vec<Value>, kind: Kind) -> Vec<RejectedItem> {
    let mut builder = builder.lock().expect("builder");
    let mut rejected = Vec::new();
    for item in items {
        let (document, not_an_object) = match kind {
            Kind::Log => (log_document(&item), REJECT_LOG_ITEM_NOT_AN_OBJECT),
            Kind::Hidden => (hidden_document(&item), REJECT_HIDDEN_ITEM_NOT_AN_OBJECT),
        };
        let outcome = match &document {
            None => Err(not_an_object),
            Some(d) => match kind {
                Kind::Log => builder.add_log(d),
                Kind::Hidden => builder.add_hidden(d),
            },
        };
        if let Err(reason) = outcome {
            let detail = match document {
                None => format!("a payload item that is a JSON {}", kind_of(&item)),
                Some(_) => format!("an item the index cannot use ({reason})"),
            };
            rejected.push(RejectedItem {
                reason,
                detail,
                item,
            });
        }
    }
    rejected
}

/// A `ConnectionLogDto` as the `connectionLogs` document the MongoDB read
/// takes (`eventDateTime` is the collection's `requestTime`).
pub fn log_document(item: &Value) -> Option<Document> {
    let item = item.as_object()?;
    let mut doc = Document::new();
    doc.insert("gmcId", scalar(item.get("gmcId")));
    doc.insert("updatedBy", scalar(item.get("updatedBy")));
    let time = item
        .get("eventDateTime")
        .or_else(|| item.get("requestTime"));
    doc.insert("requestTime", date(time));
    Some(doc)
}

/// A hidden discrepancy as the `hiddenDiscrepancy` document (`id` is `_id`).
pub fn hidden_document(item: &Value) -> Option<Document> {
    let item = item.as_object()?;
    let mut doc = Document::new();
    doc.insert("_id", scalar(item.get("id").or_else(|| item.get("_id"))));
    for key in ["gmcId", "hiddenForDesignatedBodyCode", "hiddenBy", "reason"] {
        doc.insert(key, scalar(item.get(key)));
    }
    doc.insert("hiddenDateTime", date(item.get("hiddenDateTime")));
    Some(doc)
}

fn scalar(value: Option<&Value>) -> Bson {
    match value {
        Some(Value::String(s)) => Bson::String(s.clone()),
        Some(Value::Number(n)) => n.as_i64().map_or(Bson::Null, Bson::Int64),
        _ => Bson::Null,
    }
}

/// A date-time in any of the forms of the module notes: strings stay
/// strings (the builder parses them), the rest become BSON dates.
fn date(value: Option<&Value>) -> Bson {
    match value {
        Some(Value::String(s)) => Bson::String(s.clone()),
        Some(object @ Value::Object(_)) => ext_json_date(object).map_or(Bson::Null, Bson::DateTime),
        Some(Value::Array(parts)) => jackson_array(parts).map_or(Bson::Null, Bson::DateTime),
        _ => Bson::Null,
    }
}

/// Jackson's array form of a `LocalDateTime` without JavaTimeModule's
/// string setting: `[y, m, d]` up to `[y, m, d, h, min, s, nanos]`.
fn jackson_array(parts: &[Value]) -> Option<bson::DateTime> {
    let n: Vec<i64> = parts.iter().map(Value::as_i64).collect::<Option<_>>()?;
    let part = |i: usize| n.get(i).copied().unwrap_or(0);
    if n.len() < 3 {
        return None;
    }
    let at = NaiveDate::from_ymd_opt(
        i32::try_from(part(0)).ok()?,
        u32::try_from(part(1)).ok()?,
        u32::try_from(part(2)).ok()?,
    )?
    .and_hms_nano_opt(
        u32::try_from(part(3)).ok()?,
        u32::try_from(part(4)).ok()?,
        u32::try_from(part(5)).ok()?,
        u32::try_from(part(6)).ok()?,
    )?;
    Some(bson::DateTime::from_chrono(at.and_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::GmcNumber;
    use serde_json::json;

    fn built(logs: Vec<Value>, hidden: Vec<Value>) -> (ConnectionRead, Vec<RejectedItem>) {
        let builder = Mutex::new(ConnectionBuilder::default());
        let mut rejected = take(&builder, logs, Kind::Log);
        rejected.extend(take(&builder, hidden, Kind::Hidden));
        (builder.into_inner().unwrap().finish(), rejected)
    }

    #[test]
    fn every_date_form_of_a_log_reads_as_the_same_instant() {
        for form in [
            json!("2026-01-02T03:04:05.006"),
            json!("2026-01-02T03:04:05.006Z"),
            json!({"$date": "2026-01-02T03:04:05.006Z"}),
            json!({"$date": 1_767_323_045_006_i64}),
            json!({"$date": {"$numberLong": "1767323045006"}}),
            json!([2026, 1, 2, 3, 4, 5, 6_000_000]),
        ] {
            let (read, rejected) = built(
                vec![json!({"gmcId": "7", "updatedBy": "u", "eventDateTime": form.clone()})],
                vec![],
            );
            assert!(rejected.is_empty(), "{form}");
            let c = read.map.get(&GmcNumber::parse("7").unwrap()).unwrap();
            assert_eq!(
                c.last_connection_date_time().as_deref(),
                Some("2026-01-02T03:04:05.006"),
                "{form}"
            );
        }
        let (read, _) = built(
            vec![json!({"gmcId": "7", "eventDateTime": "2026-01-02 03:04:05"})],
            vec![],
        );
        assert_eq!(
            read.map
                .get(&GmcNumber::parse("7").unwrap())
                .unwrap()
                .last_connection_date_time()
                .as_deref(),
            Some("2026-01-02T03:04:05.000")
        );
    }

    #[test]
    fn a_hidden_discrepancy_reads_as_the_stored_one() {
        let stored = bson::doc! {"_id": "h1", "gmcId": "5", "hiddenForDesignatedBodyCode": "1-AIIDR8",
        "hiddenBy": "u", "reason": "r", "hiddenDateTime": bson::DateTime::from_millis(1_000)};
        let from_mongo = super::super::build(&[], &[stored]);
        let (from_queue, rejected) = built(
            vec![],
            vec![
                json!({"id": "h1", "gmcId": "5", "hiddenForDesignatedBodyCode": "1-AIIDR8",
                "hiddenBy": "u", "reason": "r", "hiddenDateTime": "1970-01-01T00:00:01.000",
                "hiddenUntilDate": "1970-04-01", "currentDesignatedBodyCode": "1-X"}),
            ],
        );
        assert!(rejected.is_empty());
        assert_eq!(from_queue.map, from_mongo.map);
    }

    #[test]
    fn unusable_items_are_rejected_with_their_reason_and_kept_whole() {
        let (read, rejected) = built(
            vec![
                json!("7"),
                json!({"updatedBy": "u", "eventDateTime": "2026-01-02T03:04:05.006"}),
                json!({"gmcId": "7", "eventDateTime": "yesterday"}),
                json!({"gmcId": "8", "eventDateTime": "2026-01-02T03:04:05.006"}),
            ],
            vec![json!(null), json!({"id": "h", "gmcId": "8"})],
        );
        let reasons: Vec<_> = rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                REJECT_LOG_ITEM_NOT_AN_OBJECT,
                super::super::REJECT_LOG_GMC_NUMBER,
                super::super::REJECT_LOG_TIME,
                REJECT_HIDDEN_ITEM_NOT_AN_OBJECT,
                super::super::REJECT_HIDDEN_BODY,
            ]
        );
        assert_eq!(rejected[0].item, json!("7"));
        assert_eq!((read.logs, read.hidden), (1, 0));
    }

    #[test]
    fn the_protocols_name_todays_queues() {
        let settings = ConnectionSettings::default();
        let logs = log_protocol(&settings);
        assert_eq!(
            logs.start_queue,
            "reval.queue.connectionlog.essyncstart.connection"
        );
        assert_eq!(
            serde_json::from_slice::<String>(logs.request).unwrap(),
            "connectionLogSyncStart"
        );
        let hidden = hidden_protocol(&settings);
        assert_eq!(
            hidden.data_queue,
            "reval.queue.hiddendiscrepancy.essyncdata.integration"
        );
        assert_eq!(
            serde_json::from_slice::<String>(hidden.request).unwrap(),
            "hiddenDiscrepancySyncStart"
        );
    }
}
