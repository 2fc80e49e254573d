//! Where the live applier stands in each change stream: the resume token of
//! the last change it applied (stored only after the write succeeded), and
//! the mark it leaves when a stored token is too old for the server's
//! history (the changes in between are lost to the stream; a rebuild is the
//! way out, and the first successful one after the loss clears the mark).

use bson::{doc, Bson, Document};
use mongodb::{Client, Collection};

use super::{now_text, state_collection, StateError};
use crate::config::MongoSettings;

const LOST: &str = "stream-lost";

/// The resume tokens and the lost mark, in the live collection.
#[derive(Clone, Debug)]
pub struct StreamPositions {
    live: Collection<Document>,
}

/// A stream whose history was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamLost {
    pub collection: String,
    pub since: String,
    pub reason: String,
}

impl StreamPositions {
    pub fn new(client: &Client, settings: &MongoSettings) -> Self {
        Self {
            live: state_collection(client, settings, &settings.live_collection),
        }
    }

    fn key(collection: &str) -> String {
        format!("token:{collection}")
    }

    /// The stored resume token of the stream on `collection`.
    pub async fn token(&self, collection: &str) -> Result<Option<Bson>, StateError> {
        Ok(self
            .live
            .find_one(doc! {"_id": Self::key(collection)})
            .await?
            .and_then(|d| d.get("token").cloned()))
    }

    /// Stores the resume token after its change was applied.
    pub async fn store(&self, collection: &str, token: Bson) -> Result<(), StateError> {
        self.live
            .update_one(
                doc! {"_id": Self::key(collection)},
                doc! {"$set": {"token": token, "storedAt": now_text()}},
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Forgets the token (the stream starts again from now).
    pub async fn forget(&self, collection: &str) -> Result<(), StateError> {
        self.live
            .delete_one(doc! {"_id": Self::key(collection)})
            .await?;
        Ok(())
    }

    /// Marks the history of `collection`'s stream as lost.
    pub async fn mark_lost(&self, collection: &str, reason: &str) -> Result<(), StateError> {
        self.live
            .update_one(
                doc! {"_id": LOST},
                doc! {"$setOnInsert": {"since": now_text()}, "$set": {"collection": collection, "reason": reason}},
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// The lost mark, if any.
    pub async fn lost(&self) -> Result<Option<StreamLost>, StateError> {
        Ok(self
            .live
            .find_one(doc! {"_id": LOST})
            .await?
            .map(|d| StreamLost {
                collection: d.get_str("collection").unwrap_or_default().to_string(),
                since: d.get_str("since").unwrap_or_default().to_string(),
                reason: d.get_str("reason").unwrap_or_default().to_string(),
            }))
    }

    /// A rebuild that started after `started_at` succeeded: it read every
    /// source afresh, so a loss from before it is mended.
    pub async fn clear_lost_before(&self, started_at: &str) -> Result<bool, StateError> {
        let gone = self
            .live
            .delete_one(doc! {"_id": LOST, "since": {"$lt": started_at}})
            .await?;
        Ok(gone.deleted_count == 1)
    }
}
