//! The single-flight lease: at most one rebuild runs at a time, across
//! processes and hosts. One MongoDB document per lease name records the
//! holder (run id, host, pid) and when the lease expires.
//!
//! Acquiring is one atomic `findOneAndUpdate` with `upsert`, filtered on
//! "this lease, and expired or already mine". When someone else holds it
//! the filter matches nothing, the upsert tries to insert a second document
//! with the same `_id`, and the unique `_id` index answers with a duplicate
//! key error (11000): that is the "held" answer, whoever raced whom. (Checked
//! on MongoDB and SecantusDB; DocumentDB behaves the same.)
//!
//! A background task renews the lease every third of its time to live.
//! When a renewal finds the lease gone or taken, or cannot reach MongoDB
//! for a whole time to live, the lease counts as lost and the run must not
//! promote ([`Lease::confirm`]). A holder that dies stops renewing, and its
//! lease expires `run.lease_ttl_secs` later. Expiry uses the clocks of the
//! hosts, so their skew must stay well below the time to live.

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{is_duplicate_key, state_collection, time_text, StateError};
use crate::config::MongoSettings;

/// The lease every rebuild takes.
pub const REBUILD_LEASE: &str = "rebuild";

/// Who holds a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseHolder {
    pub run_id: String,
    pub host: String,
    pub pid: u32,
}

impl LeaseHolder {
    /// This process, for the given run.
    pub fn this_process(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_string(),
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown-host".into()),
            pid: std::process::id(),
        }
    }
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: LeaseHolder,
    pub acquired_at: String,
    pub expires_at: String,
    /// Whether `expires_at` has passed.
    pub expired: bool,
}

impl LeaseRecord {
    fn from_document(doc: &Document) -> Self {
        let text = |k: &str| doc.get_str(k).unwrap_or_default().to_string();
        let date = |k: &str| doc.get_datetime(k).ok().copied();
        let expires = date("expiresAt");
        Self {
            holder: LeaseHolder {
                run_id: text("runId"),
                host: text("host"),
                pid: doc
                    .get_i64("pid")
                    .ok()
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
            },
            acquired_at: date("acquiredAt")
                .map(|d| time_text(d.to_chrono()))
                .unwrap_or_default(),
            expires_at: expires
                .map(|d| time_text(d.to_chrono()))
                .unwrap_or_default(),
            expired: expires.is_none_or(|d| d < bson::DateTime::now()),
        }
    }
}

/// The collection of leases.
pub fn lease_collection(client: &Client, settings: &MongoSettings) -> Collection<Document> {
    state_collection(client, settings, &settings.lease_collection)
}

/// The stored state of a lease, if it was ever taken.
pub async fn read_lease(
    collection: &Collection<Document>,
    name: &str,
) -> Result<Option<LeaseRecord>, StateError> {
    Ok(collection
        .find_one(doc! {"_id": name})
        .await?
        .map(|d| LeaseRecord::from_document(&d)))
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    shared: Arc<Shared>,
    lost: watch::Receiver<Option<String>>,
    renewer: JoinHandle<()>,
}

struct Shared {
    collection: Collection<Document>,
    name: String,
    holder: LeaseHolder,
    ttl: Duration,
}

impl Shared {
    fn expiry(&self) -> bson::DateTime {
        let ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + ms)
    }

    /// Pushes the expiry forward; `Ok(false)` when the lease is no longer ours.
    async fn renew(&self) -> Result<bool, StateError> {
        let result = self
            .collection
            .update_one(
                doc! {"_id": &self.name, "runId": &self.holder.run_id},
                doc! {"$set": {"expiresAt": self.expiry(), "renewedAt": bson::DateTime::now()}},
            )
            .await?;
        Ok(result.matched_count == 1)
    }
}

impl Lease {
    /// Takes the lease, or fails with [`StateError::Held`] naming the holder.
    pub async fn acquire(
        collection: Collection<Document>,
        name: &str,
        holder: LeaseHolder,
        ttl: Duration,
    ) -> Result<Lease, StateError> {
        let shared = Arc::new(Shared {
            collection,
            name: name.to_string(),
            holder,
            ttl,
        });
        let now = bson::DateTime::now();
        let result = shared
            .collection
            .find_one_and_update(
                doc! {
                    "_id": name,
                    "$or": [{"expiresAt": {"$lt": now}}, {"runId": &shared.holder.run_id}],
                },
                doc! {"$set": {
                    "runId": &shared.holder.run_id,
                    "host": &shared.holder.host,
                    "pid": i64::from(shared.holder.pid),
                    "acquiredAt": now,
                    "renewedAt": now,
                    "expiresAt": shared.expiry(),
                }},
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                let held = read_lease(&shared.collection, name).await?;
                return Err(match held {
                    Some(r) => StateError::Held {
                        lease: name.to_string(),
                        run_id: r.holder.run_id,
                        host: r.holder.host,
                        pid: r.holder.pid,
                        expires_at: r.expires_at,
                    },
                    // Released between our attempt and the read: report it
                    // as held anyway; the caller may simply try again.
                    None => StateError::Held {
                        lease: name.to_string(),
                        run_id: "(just released)".into(),
                        host: "-".into(),
                        pid: 0,
                        expires_at: "-".into(),
                    },
                });
            }
            Err(e) => return Err(e.into()),
        }
        info!(
            lease = name,
            run_id = %shared.holder.run_id,
            ttl_secs = ttl.as_secs(),
            "Acquired the lease."
        );
        let (lost_tx, lost) = watch::channel(None);
        let renewer = tokio::spawn(renew_loop(shared.clone(), lost_tx));
        Ok(Lease {
            shared,
            lost,
            renewer,
        })
    }

    pub fn holder(&self) -> &LeaseHolder {
        &self.shared.holder
    }

    /// Why the lease was lost, if it was. The renewer says why whenever it
    /// gives up; a renewer that ended without a word died (a panic), and
    /// a lease nobody renews is as good as lost.
    pub fn lost_reason(&self) -> Option<String> {
        let said = self.lost.borrow().clone();
        if said.is_none() && self.renewer.is_finished() {
            return Some("the task that renews it stopped".into());
        }
        said
    }

    /// Renews now and fails unless the lease is still ours: the check to
    /// make right before an irreversible step (promotion).
    pub async fn confirm(&self) -> Result<(), StateError> {
        if let Some(reason) = self.lost_reason() {
            return Err(self.lost_error(reason));
        }
        if self.shared.renew().await? {
            Ok(())
        } else {
            Err(self.lost_error("another run holds it now".into()))
        }
    }

    fn lost_error(&self, reason: String) -> StateError {
        StateError::Lost {
            lease: self.shared.name.clone(),
            reason,
        }
    }

    /// Stops renewing and deletes the lease if it is still ours.
    pub async fn release(self) -> Result<(), StateError> {
        self.renewer.abort();
        self.shared
            .collection
            .delete_one(doc! {"_id": &self.shared.name, "runId": &self.shared.holder.run_id})
            .await?;
        info!(lease = %self.shared.name, run_id = %self.shared.holder.run_id, "Released the lease.");
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without release (a panic, a cancelled run) the lease just expires.
        self.renewer.abort();
    }
}

async fn renew_loop(shared: Arc<Shared>, lost: watch::Sender<Option<String>>) {
    let every = (shared.ttl / 3).max(Duration::from_millis(100));
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match shared.renew().await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => {
                warn!(lease = %shared.name, run_id = %shared.holder.run_id, "The lease was taken over.");
                let _ = lost.send(Some("another run took it over".into()));
                return;
            }
            Err(e) => {
                warn!(lease = %shared.name, error = %e, "Could not renew the lease.");
                if last_renewed.elapsed() >= shared.ttl {
                    let _ = lost.send(Some(format!(
                        "not renewed for {} s: {e}",
                        shared.ttl.as_secs()
                    )));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_lease_reads_back_with_its_holder() {
        let later = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 60_000);
        let stored = doc! {"_id": "rebuild", "runId": "r1", "host": "h", "pid": 42_i64,
        "acquiredAt": bson::DateTime::now(), "expiresAt": later};
        let lease = LeaseRecord::from_document(&stored);
        assert_eq!(lease.holder.run_id, "r1");
        assert_eq!(lease.holder.pid, 42);
        assert!(!lease.expired);
        assert!(lease.expires_at.ends_with('Z'));
    }

    #[test]
    fn a_lease_without_expiry_counts_as_expired() {
        assert!(LeaseRecord::from_document(&doc! {"_id": "rebuild"}).expired);
    }
}
