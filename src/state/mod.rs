//! Run state kept in MongoDB, so that every process and host sees the same:
//! the leases (one rebuild at a time, one live applier at a time), the
//! stored history of runs, and
//! the change-stream resume tokens, with the `StateError` boundary type. This layer stores what the rebuild
//! gives it; what a run record means belongs to the rebuild.

pub mod history;
pub mod lease;
pub mod streams;

use mongodb::{Client, Collection};

use crate::config::MongoSettings;
use crate::retry::{mongo_is_transient, Retriable};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("MongoDB failed while reading or writing run state: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error(
        "the lease {lease:?} is held by run {run_id} on {host} (pid {pid}) until {expires_at}"
    )]
    Held {
        lease: String,
        run_id: String,
        host: String,
        pid: u32,
        expires_at: String,
    },
    #[error("the lease {lease:?} was lost: {reason}")]
    Lost { lease: String, reason: String },
    #[error("a stored run record is unreadable: {0}")]
    Decode(#[from] bson::de::Error),
    #[error("a run record cannot be stored: {0}")]
    Encode(#[from] bson::ser::Error),
    #[error("stored state is unreadable: {0}")]
    Unreadable(String),
}

impl Retriable for StateError {
    /// Trying again may help when MongoDB was unreachable or busy. A held
    /// lease is an answer, not a failure: callers report it, they do not
    /// retry it.
    fn is_retriable(&self) -> bool {
        match self {
            StateError::Mongo(e) => mongo_is_transient(e),
            StateError::Held { .. }
            | StateError::Lost { .. }
            | StateError::Decode(_)
            | StateError::Encode(_)
            | StateError::Unreadable(_) => false,
        }
    }
}

/// Whether a write failed only on duplicate keys (an insert of many
/// documents: every one of its write errors).
pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errs| errs.iter().all(|w| w.code == 11000)),
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

/// A collection of the state database.
pub(crate) fn state_collection(
    client: &Client,
    settings: &MongoSettings,
    name: &str,
) -> Collection<bson::Document> {
    client.database(settings.state_database()).collection(name)
}

/// Now, as the fixed-width UTC text the state documents hold
/// (`2025-01-31T23:59:59.123Z`): it sorts as it reads.
pub fn now_text() -> String {
    time_text(chrono::Utc::now())
}

pub fn time_text(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
