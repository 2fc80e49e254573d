//! The connection service's data, read from its MongoDB collections once per
//! rebuild: every connection log (`connectionLogs`) and every hidden
//! discrepancy (`hiddenDiscrepancy`), both at once, streamed into a map
//! keyed by GMC number ([`ConnectionMap`]). Both collections are small
//! beside `doctorsForDB` (one entry per connection made or discrepancy
//! hidden), and a cursor drained straight away is never left idle.
//!
//! A collection that does not exist reads as empty (MongoDB answers a find
//! on it with nothing): a deployment whose connection service has never
//! written loses nothing. An entry whose `gmcId` is unusable is counted as
//! a reject under its reason, never silently dropped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bson::{doc, Bson, Document};
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::TryStreamExt;
use mongodb::{Client, Collection};

pub mod queue;

use super::SourceError;
use crate::config::{ConnectionSettings, MongoSettings};
use crate::domain::connection::{format_connection_time, HiddenAdded};
use crate::domain::{ConnectionLog, DoctorConnection, GmcNumber, HiddenDiscrepancy};
use crate::sources::gmc::GmcNumberMap;

/// The connection data of every doctor that has some (a plain map: these
/// are far fewer than the doctors, unlike the GMC side's compact maps).
pub type ConnectionMap = GmcNumberMap<DoctorConnection>;

/// Reject reasons of the connection data.
pub const REJECT_LOG_GMC_NUMBER: &str = "connection_log_unusable_gmc_number";
pub const REJECT_LOG_TIME: &str = "connection_log_unusable_time";
pub const REJECT_HIDDEN_GMC_NUMBER: &str = "hidden_discrepancy_unusable_gmc_number";
pub const REJECT_HIDDEN_BODY: &str = "hidden_discrepancy_missing_designated_body";

/// What a read delivered.
#[derive(Clone, Debug, Default)]
pub struct ConnectionRead {
    pub map: ConnectionMap,
    /// Usable connection logs read.
    pub logs: u64,
    /// Usable hidden discrepancies read (a second one for a body included).
    pub hidden: u64,
    /// Hidden discrepancies for a body that had already hidden the doctor:
    /// the first stays (the connection service's unique index prevents
    /// these; they are counted should one slip through).
    pub hidden_same_body: u64,
    /// Unusable entries by reason.
    pub rejects: BTreeMap<&'static str, u64>,
}

/// The connection service's two collections.
pub struct ConnectionSource {
    logs: Collection<Document>,
    hidden: Collection<Document>,
}

impl ConnectionSource {
    pub fn new(client: &Client, settings: &ConnectionSettings, mongo: &MongoSettings) -> Self {
        let db = client.database(settings.database(mongo));
        Self {
            logs: db.collection(&settings.logs_collection),
            hidden: db.collection(&settings.hidden_collection),
        }
    }

    /// Reads both collections at once into the map, a document at a time
    /// as the cursors deliver them: only the map is held, never the
    /// documents (160,000 logs of 200,000 doctors held as documents cost
    /// 260 MB at their peak).
    pub async fn read(&self) -> Result<ConnectionRead, SourceError> {
        let builder = std::sync::Mutex::new(ConnectionBuilder::default());
        let take = |document: &Document, log: bool| {
            let mut builder = builder.lock().expect("builder");
            let _ = if log {
                builder.add_log(document)
            } else {
                builder.add_hidden(document)
            };
        };
        let logs = async {
            let mut cursor = self
                .logs
                .find(doc! {})
                .projection(doc! {"_id": 1, "gmcId": 1, "updatedBy": 1, "requestTime": 1})
                .await?;
            while let Some(document) = cursor.try_next().await? {
                take(&document, true);
            }
            Ok::<_, mongodb::error::Error>(())
        };
        let hidden = async {
            let mut cursor = self
                .hidden
                .find(doc! {})
                .projection(doc! {
                    "_id": 1, "gmcId": 1, "hiddenForDesignatedBodyCode": 1,
                    "hiddenBy": 1, "reason": 1, "hiddenDateTime": 1,
                })
                .await?;
            while let Some(document) = cursor.try_next().await? {
                take(&document, false);
            }
            Ok(())
        };
        tokio::try_join!(logs, hidden)?;
        Ok(builder.into_inner().expect("builder").finish())
    }

    /// The connection data of `numbers` only (the live applier recomputes
    /// a doctor's connection fields this way), by `$in` look-ups of
    /// [`IN_CHUNK`](crate::sources::gmc::IN_CHUNK) numbers: a long `$in`
    /// costs SecantusDB the square of its length. Numbers are asked for as
    /// written and, when numeric, as integers too.
    pub async fn of(&self, numbers: &[GmcNumber]) -> Result<ConnectionMap, SourceError> {
        let mut logs = Vec::new();
        let mut hidden = Vec::new();
        for chunk in numbers.chunks(crate::sources::gmc::IN_CHUNK) {
            let mut wanted: Vec<Bson> = Vec::with_capacity(chunk.len() * 2);
            for n in chunk {
                wanted.push(Bson::String(n.as_str().to_string()));
                if let Ok(k) = n.as_str().parse::<i64>() {
                    wanted.push(Bson::Int64(k));
                }
            }
            let filter = doc! {"gmcId": {"$in": wanted}};
            let (l, h) = tokio::try_join!(
                async {
                    self.logs
                        .find(filter.clone())
                        .await?
                        .try_collect::<Vec<Document>>()
                        .await
                },
                async {
                    self.hidden
                        .find(filter.clone())
                        .await?
                        .try_collect::<Vec<Document>>()
                        .await
                },
            )?;
            logs.extend(l);
            hidden.extend(h);
        }
        Ok(build(&logs, &hidden).map)
    }
}

/// The map from the documents of both collections (see the module notes).
pub fn build(logs: &[Document], hidden: &[Document]) -> ConnectionRead {
    let mut builder = ConnectionBuilder::default();
    for log in logs {
        let _ = builder.add_log(log);
    }
    for h in hidden {
        let _ = builder.add_hidden(h);
    }
    builder.finish()
}

/// Collects connection logs and hidden discrepancies, one at a time, into
/// a [`ConnectionRead`]. Hidden discrepancies are taken in the order they
/// were hidden (then by id) at the end, so that "the first for a body is
/// kept" does not depend on the order they arrived in.
#[derive(Default)]
pub struct ConnectionBuilder {
    read: ConnectionRead,
    hidden: Vec<(Option<DateTime<Utc>>, GmcNumber, HiddenDiscrepancy)>,
    /// Each `updatedBy` once: a million doctors' logs name a few hundred people.
    names: HashSet<Arc<str>>,
}

impl ConnectionBuilder {
    /// Takes one connection log (`gmcId`, `updatedBy`, `requestTime`), or
    /// counts it under the reason it is unusable and returns that reason.
    pub fn add_log(&mut self, log: &Document) -> Result<(), &'static str> {
        let Some(number) = gmc_number(log.get("gmcId")) else {
            return Err(self.reject(REJECT_LOG_GMC_NUMBER));
        };
        let Some(event_time) = date_time(log.get("requestTime")) else {
            return Err(self.reject(REJECT_LOG_TIME));
        };
        self.read.logs += 1;
        let updated_by = text(log.get("updatedBy")).map(|name| self.shared_name(name));
        entry(&mut self.read.map, number).add_log(ConnectionLog {
            updated_by,
            event_time,
        });
        Ok(())
    }

    fn shared_name(&mut self, name: String) -> Arc<str> {
        if let Some(shared) = self.names.get(name.as_str()) {
            return shared.clone();
        }
        let shared: Arc<str> = name.into();
        self.names.insert(shared.clone());
        shared
    }

    /// Takes one hidden discrepancy (`_id`, `gmcId`,
    /// `hiddenForDesignatedBodyCode`, `hiddenBy`, `reason`,
    /// `hiddenDateTime`), or counts it under the reason it is unusable.
    pub fn add_hidden(&mut self, h: &Document) -> Result<(), &'static str> {
        let Some(number) = gmc_number(h.get("gmcId")) else {
            return Err(self.reject(REJECT_HIDDEN_GMC_NUMBER));
        };
        let Some(body) = text(h.get("hiddenForDesignatedBodyCode")) else {
            return Err(self.reject(REJECT_HIDDEN_BODY));
        };
        let at = date_time(h.get("hiddenDateTime"));
        let entry = HiddenDiscrepancy {
            id: text(h.get("_id")),
            gmc_id: Some(number.as_str().to_string()),
            hidden_for_designated_body_code: body,
            hidden_by: text(h.get("hiddenBy")),
            reason: text(h.get("reason")),
            hidden_date_time: at.map(format_connection_time),
        };
        self.hidden.push((at, number, entry));
        Ok(())
    }

    fn reject(&mut self, reason: &'static str) -> &'static str {
        *self.read.rejects.entry(reason).or_default() += 1;
        reason
    }

    pub fn finish(mut self) -> ConnectionRead {
        let mut usable = std::mem::take(&mut self.hidden);
        // Undated ones last: they cannot be placed in time.
        usable.sort_by(|a, b| (a.0.is_none(), a.0, &a.2.id).cmp(&(b.0.is_none(), b.0, &b.2.id)));
        let mut read = self.read;
        for (_, number, h) in usable {
            read.hidden += 1;
            if entry(&mut read.map, number).add_hidden(h) == HiddenAdded::SameBodyKept {
                read.hidden_same_body += 1;
            }
        }
        read
    }
}

fn entry(map: &mut ConnectionMap, number: GmcNumber) -> &mut DoctorConnection {
    map.get_or_default(&number)
}

/// A `gmcId` as the doctors' numbers are read: trimmed text, or a number
/// stored as one (the connection service's DTO has it as a string, but a
/// hand-made entry may hold an integer).
fn gmc_number(value: Option<&Bson>) -> Option<GmcNumber> {
    let raw = match value? {
        Bson::String(s) => s.clone(),
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(f) if f.fract() == 0.0 && f.abs() < 1e15 => (*f as i64).to_string(),
        _ => return None,
    };
    GmcNumber::parse(&raw).ok()
}

fn text(value: Option<&Bson>) -> Option<String> {
    match value? {
        Bson::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Bson::Int32(n) => Some(n.to_string()),
        Bson::Int64(n) => Some(n.to_string()),
        Bson::ObjectId(id) => Some(id.to_hex()),
        _ => None,
    }
}

/// A BSON date (what Spring Data stores), or text in ISO form or
/// `yyyy-MM-dd HH:mm:ss` (taken as UTC).
fn date_time(value: Option<&Bson>) -> Option<DateTime<Utc>> {
    match value? {
        Bson::DateTime(dt) => Some(dt.to_chrono()),
        Bson::String(s) => {
            let s = s.trim();
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .ok()
                .or_else(|| {
                    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                        .iter()
                        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
                        .map(|n| n.and_utc())
                })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> bson::DateTime {
        bson::DateTime::from_millis(ms)
    }

    fn number(s: &str) -> GmcNumber {
        GmcNumber::parse(s).unwrap()
    }

    #[test]
    fn padded_and_numeric_gmc_ids_join_the_doctors_number() {
        let logs = [
            doc! {"gmcId": " 1234567 ", "updatedBy": "a", "requestTime": at(1_000)},
            doc! {"gmcId": 1234567_i64, "updatedBy": "b", "requestTime": at(3_000)},
            doc! {"gmcId": 1234567_i32, "updatedBy": "c", "requestTime": at(2_000)},
        ];
        let read = build(&logs, &[]);
        assert_eq!(read.logs, 3);
        assert_eq!(read.map.len(), 1);
        let c = read.map.get(&number("1234567")).unwrap();
        assert_eq!(c.updated_by().as_deref(), Some("b"));
        assert_eq!(
            c.last_connection_date_time().as_deref(),
            Some("1970-01-01T00:00:03.000")
        );
    }

    #[test]
    fn unusable_entries_are_counted_by_reason() {
        let logs = [
            doc! {"gmcId": "UNKNOWN", "requestTime": at(1)},
            doc! {"updatedBy": "x", "requestTime": at(1)},
            doc! {"gmcId": "1", "requestTime": "not a date"},
        ];
        let hidden = [
            doc! {"_id": "h1", "gmcId": "  ", "hiddenForDesignatedBodyCode": "1-AIIDR8"},
            doc! {"_id": "h2", "gmcId": "2"},
        ];
        let read = build(&logs, &hidden);
        assert!(read.map.is_empty());
        assert_eq!(read.rejects[REJECT_LOG_GMC_NUMBER], 2);
        assert_eq!(read.rejects[REJECT_LOG_TIME], 1);
        assert_eq!(read.rejects[REJECT_HIDDEN_GMC_NUMBER], 1);
        assert_eq!(read.rejects[REJECT_HIDDEN_BODY], 1);
    }

    #[test]
    fn the_earliest_hidden_discrepancy_of_a_body_is_kept_whatever_the_order_read() {
        let hidden = [
            doc! {"_id": "late", "gmcId": "5", "hiddenForDesignatedBodyCode": "1-AIIDR8", "hiddenDateTime": at(2_000)},
            doc! {"_id": "other", "gmcId": "5", "hiddenForDesignatedBodyCode": "1-AIIDSA", "hiddenDateTime": at(3_000)},
            doc! {"_id": "early", "gmcId": "5", "hiddenForDesignatedBodyCode": "1-AIIDR8", "hiddenDateTime": at(1_000), "hiddenBy": "u", "reason": "r"},
        ];
        let read = build(&[], &hidden);
        assert_eq!((read.hidden, read.hidden_same_body), (3, 1));
        let kept = read.map.get(&number("5")).unwrap().hidden().to_vec();
        let ids: Vec<_> = kept.iter().map(|h| h.id.clone().unwrap()).collect();
        assert_eq!(ids, ["early", "other"]);
        assert_eq!(kept[0].hidden_by.as_deref(), Some("u"));
        assert_eq!(kept[0].gmc_id.as_deref(), Some("5"));
        assert_eq!(
            kept[0].hidden_date_time.as_deref(),
            Some("1970-01-01T00:00:01.000")
        );
    }

    #[test]
    fn text_dates_are_read_as_utc() {
        for (s, ms) in [
            ("2026-01-02T03:04:05.006Z", 6),
            ("2026-01-02T03:04:05.006", 6),
            ("2026-01-02 03:04:05", 0),
        ] {
            let t = date_time(Some(&Bson::String(s.into()))).unwrap();
            assert_eq!(
                format_connection_time(t),
                format!("2026-01-02T03:04:05.{ms:03}"),
                "{s}"
            );
        }
    }
}
