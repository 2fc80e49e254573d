//! The journal of live changes made while a rebuild runs, in MongoDB, and
//! the marker through which the run and the live applier coordinate.
//!
//! The marker (`_id: "journal"` in the live collection) says which run
//! records and in what state: `recording` (the applier appends every change
//! it applies, in order, after applying it and before acking it),
//! `pause_requested` (the run is about to swap: the applier finishes its
//! batch and stops), `paused` (the applier acknowledged, with the last
//! sequence number it journaled). A marker whose run no longer holds the
//! rebuild lease is stale: the applier ignores it, and the next run replaces
//! it. Entries carry a sequence number from one counter (`_id: "seq"`), the
//! run they belong to, the doctor, the kind of change and its source form;
//! the run replays them in sequence order and deletes them when it ends,
//! whatever its outcome.

use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection};

use super::{now_text, state_collection, StateError};
use crate::config::MongoSettings;

const MARKER: &str = "journal";
const COUNTER: &str = "seq";

/// What the marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalState {
    /// No run records (or the marker is gone).
    Off,
    Recording {
        run_id: String,
    },
    PauseRequested {
        run_id: String,
    },
    Paused {
        run_id: String,
        last_seq: i64,
    },
}

impl JournalState {
    /// The run the marker names, if any.
    pub fn run_id(&self) -> Option<&str> {
        match self {
            JournalState::Off => None,
            JournalState::Recording { run_id }
            | JournalState::PauseRequested { run_id }
            | JournalState::Paused { run_id, .. } => Some(run_id),
        }
    }

    fn from_document(doc: Option<&Document>) -> Self {
        let Some(doc) = doc else {
            return JournalState::Off;
        };
        let run_id = doc.get_str("runId").unwrap_or_default().to_string();
        match doc.get_str("state").unwrap_or_default() {
            "recording" => JournalState::Recording { run_id },
            "pause_requested" => JournalState::PauseRequested { run_id },
            "paused" => JournalState::Paused {
                run_id,
                last_seq: doc.get_i64("lastSeq").unwrap_or(0),
            },
            _ => JournalState::Off,
        }
    }
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

/// A change to journal (its sequence number comes from the counter).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub kind: &'static str,
    pub number: String,
    pub payload: Bson,
}

/// The journal, its marker and its counter.
#[derive(Clone, Debug)]
pub struct Journal {
    live: Collection<Document>,
    entries: Collection<Document>,
}

impl Journal {
    pub fn new(client: &Client, settings: &MongoSettings) -> Self {
        Self {
            live: state_collection(client, settings, &settings.live_collection),
            entries: state_collection(client, settings, &settings.journal_collection),
        }
    }

    /// What the marker says now.
    pub async fn state(&self) -> Result<JournalState, StateError> {
        let doc = self.live.find_one(doc! {"_id": MARKER}).await?;
        Ok(JournalState::from_document(doc.as_ref()))
    }

    /// Run `run_id` starts recording (it holds the rebuild lease, so any
    /// other marker is stale): the marker says `recording`, and entries of
    /// dead runs are deleted.
    pub async fn begin(&self, run_id: &str) -> Result<(), StateError> {
        self.entries
            .delete_many(doc! {"run": {"$ne": run_id}})
            .await?;
        self.set_marker(run_id, "recording", None).await
    }

    /// Asks the applier to stop after its current batch.
    pub async fn request_pause(&self, run_id: &str) -> Result<(), StateError> {
        self.set_marker(run_id, "pause_requested", None).await
    }

    /// The applier's answer to a pause request: it has stopped, and
    /// journaled everything up to `last_seq`. Only if the marker still
    /// names `run_id` and asks for the pause.
    pub async fn acknowledge_pause(&self, run_id: &str, last_seq: i64) -> Result<bool, StateError> {
        let done = self
            .live
            .update_one(
                doc! {"_id": MARKER, "runId": run_id, "state": "pause_requested"},
                doc! {"$set": {"state": "paused", "lastSeq": last_seq, "pausedAt": now_text()}},
            )
            .await?;
        Ok(done.matched_count == 1)
    }

    /// The run swapped (or gave up): the applier goes on, still recording.
    pub async fn resume(&self, run_id: &str) -> Result<(), StateError> {
        self.set_marker(run_id, "recording", None).await
    }

    /// The run ended: its marker and its entries go.
    pub async fn end(&self, run_id: &str) -> Result<u64, StateError> {
        self.live
            .delete_one(doc! {"_id": MARKER, "runId": run_id})
            .await?;
        let gone = self.entries.delete_many(doc! {"run": run_id}).await?;
        Ok(gone.deleted_count)
    }

    async fn set_marker(
        &self,
        run_id: &str,
        state: &str,
        last_seq: Option<i64>,
    ) -> Result<(), StateError> {
        let mut fields = doc! {"runId": run_id, "state": state, "updatedAt": now_text()};
        if let Some(seq) = last_seq {
            fields.insert("lastSeq", seq);
        }
        self.live
            .update_one(doc! {"_id": MARKER}, doc! {"$set": fields})
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Appends `entries` for run `run_id`, in order; returns the last
    /// sequence number given.
    pub async fn append(&self, run_id: &str, entries: &[NewEntry]) -> Result<i64, StateError> {
        if entries.is_empty() {
            return self.last_seq().await;
        }
        let n = entries.len() as i64;
        let counter = self
            .live
            .find_one_and_update(doc! {"_id": COUNTER}, doc! {"$inc": {"next": n}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .and_then(|d| d.get_i64("next").ok())
            .unwrap_or(n);
        let first = counter - n + 1;
        let at = now_text();
        let docs: Vec<Document> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                doc! {
                    "_id": first + i as i64,
                    "run": run_id,
                    "kind": e.kind,
                    "number": &e.number,
                    "payload": e.payload.clone(),
                    "at": &at,
                }
            })
            .collect();
        self.entries.insert_many(docs).await?;
        Ok(counter)
    }

    /// The last sequence number given so far (0 before the first).
    pub async fn last_seq(&self) -> Result<i64, StateError> {
        Ok(self
            .live
            .find_one(doc! {"_id": COUNTER})
            .await?
            .and_then(|d| d.get_i64("next").ok())
            .unwrap_or(0))
    }

    /// Up to `limit` entries of run `run_id` after `seq`, in order.
    pub async fn after(
        &self,
        run_id: &str,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StateError> {
        let docs: Vec<Document> = self
            .entries
            .find(doc! {"run": run_id, "_id": {"$gt": seq}})
            .sort(doc! {"_id": 1})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .into_iter()
            .map(|d| JournalEntry {
                seq: d.get_i64("_id").unwrap_or(0),
                kind: d.get_str("kind").unwrap_or_default().to_string(),
                number: d.get_str("number").unwrap_or_default().to_string(),
                payload: d.get("payload").cloned().unwrap_or(Bson::Null),
            })
            .collect())
    }

    /// Entries of run `run_id` after `seq` (the backlog).
    pub async fn count_after(&self, run_id: &str, seq: i64) -> Result<u64, StateError> {
        Ok(self
            .entries
            .count_documents(doc! {"run": run_id, "_id": {"$gt": seq}})
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_reads_back_as_its_state() {
        assert_eq!(JournalState::from_document(None), JournalState::Off);
        let paused = doc! {"_id": MARKER, "runId": "r1", "state": "paused", "lastSeq": 42_i64};
        assert_eq!(
            JournalState::from_document(Some(&paused)),
            JournalState::Paused {
                run_id: "r1".into(),
                last_seq: 42
            }
        );
        let odd = doc! {"_id": MARKER, "runId": "r1", "state": "sleeping"};
        assert_eq!(JournalState::from_document(Some(&odd)), JournalState::Off);
        assert_eq!(
            JournalState::Recording {
                run_id: "r2".into()
            }
            .run_id(),
            Some("r2")
        );
    }
}
