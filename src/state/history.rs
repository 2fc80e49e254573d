//! The stored history of runs: one MongoDB document per run, written whole
//! each time the run saves it, so that `rebuilder status` and the service
//! show a live run's progress from any process. The store is generic over
//! the record the rebuild defines; it relies on two fields only: `_id`, the
//! run id (ids start with their UTC start time, so they sort by age), and
//! `outcome`, which reads [`RUNNING`] while the run lives and [`REFUSED`]
//! for an attempt that was refused.

use std::marker::PhantomData;

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::{Client, Collection};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{now_text, state_collection, StateError};
use crate::config::MongoSettings;

/// The `outcome` of a run that has not ended.
pub const RUNNING: &str = "running";
/// The `outcome` [`RunHistory::mark_abandoned`] gives a run whose process died.
pub const ABANDONED: &str = "abandoned";
/// The `outcome` of an attempt refused before it did anything (the lease
/// was held); [`RunHistory::current_or_last`] passes over those.
pub const REFUSED: &str = "refused";

/// The runs collection, holding records of type `R`.
#[derive(Debug)]
pub struct RunHistory<R> {
    collection: Collection<Document>,
    record: PhantomData<fn() -> R>,
}

impl<R> Clone for RunHistory<R> {
    fn clone(&self) -> Self {
        Self {
            collection: self.collection.clone(),
            record: PhantomData,
        }
    }
}

impl<R: Serialize + DeserializeOwned> RunHistory<R> {
    pub fn new(client: &Client, settings: &MongoSettings) -> Self {
        Self {
            collection: state_collection(client, settings, &settings.runs_collection),
            record: PhantomData,
        }
    }

    /// Writes the whole record of run `id` (insert or replace).
    pub async fn save(&self, id: &str, record: &R) -> Result<(), StateError> {
        let document = bson::to_document(record)?;
        self.collection
            .replace_one(doc! {"_id": id}, document)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Option<R>, StateError> {
        match self.collection.find_one(doc! {"_id": id}).await? {
            Some(d) => Ok(Some(bson::from_document(d)?)),
            None => Ok(None),
        }
    }

    /// The newest runs first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<R>, StateError> {
        self.page(limit, None).await
    }

    /// Up to `limit` runs older than the run `before` (all runs without
    /// it), newest first: the pages of a run listing.
    pub async fn page(&self, limit: i64, before: Option<&str>) -> Result<Vec<R>, StateError> {
        let filter = match before {
            Some(id) => doc! {"_id": {"$lt": id}},
            None => doc! {},
        };
        let docs: Vec<Document> = self
            .collection
            .find(filter)
            .sort(doc! {"_id": -1})
            .limit(limit)
            .await?
            .try_collect()
            .await?;
        docs.into_iter()
            .map(|d| bson::from_document(d).map_err(StateError::from))
            .collect()
    }

    /// The newest run still running, else the newest run that was not
    /// refused (a refused attempt did nothing to show).
    pub async fn current_or_last(&self) -> Result<Option<R>, StateError> {
        let running = self
            .collection
            .find_one(doc! {"outcome": RUNNING})
            .sort(doc! {"_id": -1})
            .await?;
        let doc = match running {
            Some(d) => Some(d),
            None => {
                self.collection
                    // A run refused at the lease did nothing; one refused
                    // by a gate did the work and must be seen.
                    .find_one(doc! {"$or": [
                        {"outcome": {"$ne": REFUSED}},
                        {"phases": {"$ne": []}},
                    ]})
                    .sort(doc! {"_id": -1})
                    .await?
            }
        };
        doc.map(|d| bson::from_document(d).map_err(StateError::from))
            .transpose()
    }

    /// Marks every run still running except `live_run` as abandoned: only
    /// the lease holder calls this, so no other run can be alive.
    pub async fn mark_abandoned(&self, live_run: &str) -> Result<Vec<String>, StateError> {
        let filter = doc! {"outcome": RUNNING, "_id": {"$ne": live_run}};
        let ids: Vec<String> = self
            .collection
            .find(filter.clone())
            .projection(doc! {"_id": 1})
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect();
        if !ids.is_empty() {
            let now = now_text();
            self.collection
                .update_many(
                    filter,
                    doc! {"$set": {
                        "outcome": ABANDONED,
                        "error": format!("the run's process died; found by run {live_run}"),
                        "endedAt": &now,
                        "updatedAt": &now,
                    }, "$unset": {"phase": ""}},
                )
                .await?;
        }
        Ok(ids)
    }
}
