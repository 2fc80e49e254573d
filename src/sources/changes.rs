//! Live GMC changes: MongoDB change streams on `doctorsForDB` and
//! `recommendation` (DocumentDB has them once enabled per collection),
//! opened after a stored resume token when there is one. Each event becomes
//! a [`GmcEvent`] with the token to store once its change is applied.
//!
//! - a `doctorsForDB` insert, update or replace carries the whole current
//!   document (`fullDocument: updateLookup`); a delete, its `_id`;
//! - a `recommendation` change names its doctor (`gmcNumber` of the full
//!   document); a deleted recommendation names none (its document is gone),
//!   so it is counted and left to the next rebuild;
//! - a connection log or hidden discrepancy written names its doctor
//!   (`gmcId`); a hidden discrepancy deleted (un-hidden) only its `_id`.

use std::time::Duration;

use bson::{Bson, Document};
use futures::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentType;
use mongodb::Collection;

use super::SourceError;
use crate::config::Settings;

/// The skip reason of an event that ends the stream (its collection was
/// dropped or renamed): it must be opened again, from now.
pub const INVALIDATED: &str = "invalidated";

/// Which collection a stream watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watched {
    Doctors,
    Recommendations,
    /// The connection service's `connectionLogs`.
    ConnectionLogs,
    /// The connection service's `hiddenDiscrepancy`.
    HiddenDiscrepancies,
}

impl Watched {
    /// The name of the collection, which also keys its stored position.
    pub fn collection<'a>(&self, settings: &'a Settings) -> &'a str {
        match self {
            Watched::Doctors => &settings.mongodb.doctors_collection,
            Watched::Recommendations => &settings.mongodb.recommendation_collection,
            Watched::ConnectionLogs => &settings.connection.logs_collection,
            Watched::HiddenDiscrepancies => &settings.connection.hidden_collection,
        }
    }
}

/// One event, normalized.
#[derive(Clone, Debug, PartialEq)]
pub enum GmcEvent {
    /// A doctor inserted, updated or replaced: its current document.
    DoctorUpserted(Document),
    /// A doctor deleted: its `_id`.
    DoctorDeleted(Bson),
    /// A recommendation of this doctor (its raw `gmcNumber`) changed.
    RecommendationChanged(String),
    /// A connection log or a hidden discrepancy of this doctor (its raw
    /// `gmcId`) was written: its connection fields must be recomputed.
    ConnectionChanged(String),
    /// A hidden discrepancy was deleted (un-hidden): its `_id`, the only
    /// thing the event says; the document holding it is found by it.
    Unhidden(String),
    /// Nothing to apply (a deleted recommendation, an update whose document
    /// is already gone, another operation); the reason, for counting.
    Skipped(&'static str),
}

/// A string, number or ObjectId as text.
fn raw_text(value: Option<&Bson>) -> Option<String> {
    match value? {
        Bson::String(s) => Some(s.clone()),
        Bson::Int32(n) => Some(n.to_string()),
        Bson::Int64(n) => Some(n.to_string()),
        Bson::ObjectId(o) => Some(o.to_hex()),
        _ => None,
    }
}

/// An event and the token that resumes after it.
#[derive(Clone, Debug)]
pub struct WatchedEvent {
    pub watched: Watched,
    pub event: GmcEvent,
    pub token: Bson,
    /// When the server made the change (its wall time, else its cluster
    /// time), in Unix milliseconds: how far behind the reader is.
    pub made_at_ms: Option<i64>,
}

/// A change stream on one collection.
pub struct GmcStream {
    watched: Watched,
    stream: ChangeStream<ChangeStreamEvent<Document>>,
}

/// Whether a failure to open or read a stream means its history is lost:
/// the stored token is older than what the server keeps (or unusable).
/// Codes: ChangeStreamHistoryLost (286), InvalidResumeToken (260),
/// ChangeStreamFatalError (280), the server has no such position (136).
pub fn history_lost(error: &SourceError) -> bool {
    match error {
        SourceError::Mongo(e) => match &*e.kind {
            mongodb::error::ErrorKind::Command(c) => [286, 260, 280, 136].contains(&c.code),
            _ => false,
        },
        _ => false,
    }
}

impl GmcStream {
    /// Opens the stream after `token` (from now on without one).
    pub async fn open(
        collection: &Collection<Document>,
        watched: Watched,
        token: Option<Bson>,
    ) -> Result<Self, SourceError> {
        let resume = match token {
            Some(t) => Some(bson::from_bson::<ResumeToken>(t).map_err(|e| {
                SourceError::MongoUnreachable(format!("the stored resume token is unreadable: {e}"))
            })?),
            None => None,
        };
        let stream = collection
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(Duration::from_millis(500))
            // A flood comes in big answers, not the server's default 101.
            .batch_size(1000)
            .resume_after(resume)
            .await?;
        Ok(Self { watched, stream })
    }

    /// The token that resumes from where the stream is now (before any
    /// event, the position it opened at).
    pub fn position(&self) -> Option<Bson> {
        self.stream
            .resume_token()
            .and_then(|t| bson::to_bson(&t).ok())
    }

    /// The next event; waits until one comes.
    pub async fn next(&mut self) -> Result<WatchedEvent, SourceError> {
        match self.stream.next().await {
            Some(Ok(event)) => Ok(self.normalize(event)),
            Some(Err(e)) => Err(e.into()),
            None => Err(SourceError::MongoUnreachable(
                "the change stream ended".into(),
            )),
        }
    }

    fn normalize(&self, event: ChangeStreamEvent<Document>) -> WatchedEvent {
        let token = bson::to_bson(&event.id).unwrap_or(Bson::Null);
        let id = event
            .document_key
            .as_ref()
            .and_then(|k| k.get("_id").cloned());
        let normalized = match (self.watched, &event.operation_type) {
            (
                Watched::Doctors,
                OperationType::Insert | OperationType::Update | OperationType::Replace,
            ) => match event.full_document {
                Some(doc) => GmcEvent::DoctorUpserted(doc),
                // Deleted before the lookup: its delete event follows.
                None => GmcEvent::Skipped("doctor_gone_before_lookup"),
            },
            (Watched::Doctors, OperationType::Delete) => match id {
                Some(id) => GmcEvent::DoctorDeleted(id),
                None => GmcEvent::Skipped("delete_without_id"),
            },
            (
                Watched::Recommendations,
                OperationType::Insert | OperationType::Update | OperationType::Replace,
            ) => match event
                .full_document
                .as_ref()
                .and_then(|d| match d.get("gmcNumber") {
                    Some(Bson::String(s)) => Some(s.clone()),
                    Some(Bson::Int32(n)) => Some(n.to_string()),
                    Some(Bson::Int64(n)) => Some(n.to_string()),
                    _ => None,
                }) {
                Some(number) => GmcEvent::RecommendationChanged(number),
                None => GmcEvent::Skipped("recommendation_without_gmc_number"),
            },
            (Watched::Recommendations, OperationType::Delete) => {
                GmcEvent::Skipped("recommendation_deleted")
            }
            (
                Watched::ConnectionLogs | Watched::HiddenDiscrepancies,
                OperationType::Insert | OperationType::Update | OperationType::Replace,
            ) => match event
                .full_document
                .as_ref()
                .and_then(|d| raw_text(d.get("gmcId")))
            {
                Some(number) => GmcEvent::ConnectionChanged(number),
                None => GmcEvent::Skipped("connection_without_gmc_id"),
            },
            (Watched::HiddenDiscrepancies, OperationType::Delete) => match raw_text(id.as_ref()) {
                Some(id) => GmcEvent::Unhidden(id),
                None => GmcEvent::Skipped("delete_without_id"),
            },
            // Connection logs are a history: one going away changes nothing
            // the index shows until the next rebuild recomputes the latest.
            (Watched::ConnectionLogs, OperationType::Delete) => {
                GmcEvent::Skipped("connection_log_deleted")
            }
            (
                _,
                OperationType::Invalidate
                | OperationType::Drop
                | OperationType::Rename
                | OperationType::DropDatabase,
            ) => GmcEvent::Skipped(INVALIDATED),
            _ => GmcEvent::Skipped("other_operation"),
        };
        let made_at_ms = event
            .wall_time
            .map(|t| t.timestamp_millis())
            .or_else(|| event.cluster_time.map(|t| i64::from(t.time) * 1000));
        WatchedEvent {
            watched: self.watched,
            event: normalized,
            token,
            made_at_ms,
        }
    }
}
