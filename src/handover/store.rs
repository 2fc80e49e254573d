//! Where the handover is kept: the marker (one document, replaced only by
//! compare-and-set on its version), the journal entries, and the leases.
//! A small trait, so the protocol runs the same on MongoDB and on the
//! in-memory store of the model test.

use std::future::Future;

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::options::InsertManyOptions;
use mongodb::{Client, Collection};

use super::gate::LeaseView;
use super::marker::{Marker, Phase, Reservation};
use crate::config::MongoSettings;
use crate::state::lease::{lease_collection, read_lease};
use crate::state::{is_duplicate_key, now_text, state_collection, StateError};

const MARKER: &str = "journal";

/// A marker as read, with the version a replacement must name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Versioned {
    pub marker: Marker,
    /// 0: no marker stored yet.
    pub version: i64,
}

/// One journaled change.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    pub seq: i64,
    /// `tcs`, `doctor`, `doctor_left`, `recommendation`.
    pub kind: String,
    pub number: String,
    /// The change's source form (a TCS body, a `doctorsForDB` document).
    pub payload: Bson,
}

/// A change to journal (its sequence number comes from a reservation).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub kind: &'static str,
    pub number: String,
    pub payload: Bson,
}

/// The storage the protocol needs.
pub trait HandoverStore: Send + Sync {
    fn load(&self) -> impl Future<Output = Result<Versioned, StateError>> + Send;
    /// Replaces the marker if its version is still `version`; false if not.
    fn replace(
        &self,
        version: i64,
        next: &Marker,
    ) -> impl Future<Output = Result<bool, StateError>> + Send;
    /// Writes `entries` at the sequence numbers of `reservation`. True when
    /// every one of those numbers holds this reservation's entry (written
    /// now or before); false when one was voided by the run (fenced).
    fn insert_entries(
        &self,
        run_id: &str,
        reservation: &Reservation,
        entries: &[NewEntry],
    ) -> impl Future<Output = Result<bool, StateError>> + Send;
    /// Entries of `run_id` present in `(after, through]`, voids included.
    fn count_entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> impl Future<Output = Result<u64, StateError>> + Send;
    /// Fills every absent sequence number in `(after, through]` with a void
    /// entry, so a late writer of it is fenced; returns how many.
    fn void_missing(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> impl Future<Output = Result<u64, StateError>> + Send;
    /// Up to `limit` entries of `run_id` in `(after, through]`, in order,
    /// voids left out.
    fn entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<JournalEntry>, StateError>> + Send;
    /// Deletes the entries of `run_id`, or of every run but it when `others`.
    fn delete_entries(
        &self,
        run_id: &str,
        others: bool,
    ) -> impl Future<Output = Result<u64, StateError>> + Send;
    /// The lease `name` as the applier needs to judge it.
    fn lease(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<LeaseView>, StateError>> + Send;
}

/// The MongoDB store: the marker in the live collection, entries in the
/// journal collection (`_id` = sequence number), leases in theirs.
#[derive(Clone, Debug)]
pub struct MongoStore {
    live: Collection<Document>,
    entries: Collection<Document>,
    leases: Collection<Document>,
}

impl MongoStore {
    pub fn new(client: &Client, settings: &MongoSettings) -> Self {
        Self {
            live: state_collection(client, settings, &settings.live_collection),
            entries: state_collection(client, settings, &settings.journal_collection),
            leases: lease_collection(client, settings),
        }
    }
}

fn marker_of(doc: &Document) -> Result<Versioned, StateError> {
    // A marker of the protocol before versions (no `version`): one naming a
    // run reads as that run's pause, so this applier writes nothing while
    // that run lives (the older run never sees its pause acknowledged and
    // refuses to swap; nothing is lost), and abandons it once the run is
    // gone; otherwise it reads as none. Either way the next run replaces it.
    let Ok(version) = doc.get_i64("version") else {
        let run_id = doc.get_str("runId").unwrap_or_default();
        let active = matches!(
            doc.get_str("state").unwrap_or_default(),
            "recording" | "pause_requested" | "paused"
        );
        let marker = if active && !run_id.is_empty() {
            Marker {
                phase: Phase::Paused,
                run_id: run_id.to_string(),
                ..Marker::default()
            }
        } else {
            Marker::default()
        };
        return Ok(Versioned { marker, version: 0 });
    };
    let word = doc.get_str("phase").unwrap_or_default();
    let phase = Phase::parse(word).ok_or_else(|| {
        StateError::Unreadable(format!("the handover marker's phase {word:?} is unknown"))
    })?;
    let reservation = doc.get_document("reservation").ok().map(|r| Reservation {
        token: r.get_str("token").unwrap_or_default().to_string(),
        first: r.get_i64("first").unwrap_or(0),
        last: r.get_i64("last").unwrap_or(0),
    });
    Ok(Versioned {
        marker: Marker {
            phase,
            run_id: doc.get_str("runId").unwrap_or_default().to_string(),
            seq: doc.get_i64("seq").unwrap_or(0),
            since: doc.get_i64("since").unwrap_or(0),
            through: doc.get_i64("through").unwrap_or(0),
            reservation,
        },
        version,
    })
}

fn fields_of(marker: &Marker, version: i64) -> Document {
    let reservation = match &marker.reservation {
        Some(r) => Bson::Document(doc! {"token": &r.token, "first": r.first, "last": r.last}),
        None => Bson::Null,
    };
    doc! {
        "phase": marker.phase.as_str(),
        "runId": &marker.run_id,
        "seq": marker.seq,
        "since": marker.since,
        "through": marker.through,
        "reservation": reservation,
        "version": version,
        "updatedAt": now_text(),
    }
}

impl HandoverStore for MongoStore {
    async fn load(&self) -> Result<Versioned, StateError> {
        match self.live.find_one(doc! {"_id": MARKER}).await? {
            Some(doc) => marker_of(&doc),
            None => Ok(Versioned {
                marker: Marker::default(),
                version: 0,
            }),
        }
    }

    async fn replace(&self, version: i64, next: &Marker) -> Result<bool, StateError> {
        let filter = if version == 0 {
            doc! {"_id": MARKER, "version": {"$exists": false}}
        } else {
            doc! {"_id": MARKER, "version": version}
        };
        let done = self
            .live
            .update_one(filter, doc! {"$set": fields_of(next, version + 1)})
            .upsert(version == 0)
            .await;
        match done {
            Ok(done) => Ok(done.matched_count == 1 || done.upserted_id.is_some()),
            // Two first markers at once: the other won.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn insert_entries(
        &self,
        run_id: &str,
        reservation: &Reservation,
        entries: &[NewEntry],
    ) -> Result<bool, StateError> {
        let at = now_text();
        let docs: Vec<Document> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                doc! {
                    "_id": reservation.first + i as i64,
                    "run": run_id,
                    "token": &reservation.token,
                    "kind": e.kind,
                    "number": &e.number,
                    "payload": e.payload.clone(),
                    "at": &at,
                }
            })
            .collect();
        let written = self
            .entries
            .insert_many(docs)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await;
        match written {
            Ok(_) => return Ok(true),
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        // Some were there already: ours from an earlier try, or voids.
        let ours = self
            .entries
            .count_documents(doc! {
                "_id": {"$gte": reservation.first, "$lte": reservation.last},
                "token": &reservation.token,
            })
            .await?;
        Ok(ours == entries.len() as u64)
    }

    async fn count_entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> Result<u64, StateError> {
        Ok(self
            .entries
            .count_documents(doc! {"run": run_id, "_id": {"$gt": after, "$lte": through}})
            .await?)
    }

    async fn void_missing(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> Result<u64, StateError> {
        let present: std::collections::HashSet<i64> = self
            .entries
            .find(doc! {"_id": {"$gt": after, "$lte": through}})
            .projection(doc! {"_id": 1})
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .iter()
            .filter_map(|d| d.get_i64("_id").ok())
            .collect();
        let missing: Vec<Document> = (after + 1..=through)
            .filter(|s| !present.contains(s))
            .map(|s| doc! {"_id": s, "run": run_id, "void": true, "at": now_text()})
            .collect();
        let count = missing.len() as u64;
        if count == 0 {
            return Ok(0);
        }
        match self
            .entries
            .insert_many(missing)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .await
        {
            Ok(_) => Ok(count),
            // A late entry won the race for its number: it is there.
            Err(e) if is_duplicate_key(&e) => Ok(count),
            Err(e) => Err(e.into()),
        }
    }

    async fn entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StateError> {
        let docs: Vec<Document> = self
            .entries
            .find(doc! {"run": run_id, "_id": {"$gt": after, "$lte": through}})
            .sort(doc! {"_id": 1})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .filter(|d| !d.get_bool("void").unwrap_or(false))
            .map(|d| JournalEntry {
                seq: d.get_i64("_id").unwrap_or(0),
                kind: d.get_str("kind").unwrap_or_default().to_string(),
                number: d.get_str("number").unwrap_or_default().to_string(),
                payload: d.get("payload").cloned().unwrap_or(Bson::Null),
            })
            .collect())
    }

    async fn delete_entries(&self, run_id: &str, others: bool) -> Result<u64, StateError> {
        let filter = if others {
            doc! {"run": {"$ne": run_id}}
        } else {
            doc! {"run": run_id}
        };
        Ok(self.entries.delete_many(filter).await?.deleted_count)
    }

    async fn lease(&self, name: &str) -> Result<Option<LeaseView>, StateError> {
        Ok(read_lease(&self.leases, name).await?.map(|l| LeaseView {
            run_id: l.holder.run_id,
            expired: l.expired,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_as_written_and_an_older_versions_by_its_run() {
        let (m, _) = Marker::default().begin("r1").reserve("r1", 3, "t").unwrap();
        let back = marker_of(&fields_of(&m, 7)).unwrap();
        assert_eq!(
            back,
            Versioned {
                marker: m,
                version: 7
            }
        );
        let legacy = doc! {"_id": MARKER, "runId": "r0", "state": "recording"};
        let read = marker_of(&legacy).unwrap();
        assert_eq!(read.version, 0);
        assert_eq!(
            (read.marker.phase, read.marker.run_id.as_str()),
            (Phase::Paused, "r0"),
            "an older version's run is waited for, never written past"
        );
        let ended = doc! {"_id": MARKER, "runId": "r0", "state": "off"};
        assert_eq!(marker_of(&ended).unwrap().marker, Marker::default());
        let odd = doc! {"_id": MARKER, "phase": "sleeping", "version": 2_i64};
        assert!(marker_of(&odd).is_err(), "an unknown phase fails closed");
    }
}
