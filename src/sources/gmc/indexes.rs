//! The MongoDB indexes `rebuilder` relies on, whether they are there, and
//! creating them for deployments that own the database. Today's
//! recommendation service declares none on `recommendation`, so a
//! production database may lack the one the live path needs: without it,
//! each live batch's latest-outcome aggregation scans the collection (8.6 s
//! a batch on the local server, against 0.002 s with it).

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::{Client, IndexModel};

use crate::config::MongoSettings;
use crate::sources::SourceError;

/// One index that should exist.
#[derive(Clone, Debug, PartialEq)]
pub struct NeededIndex {
    pub collection: String,
    pub keys: Document,
    /// What needs it, and what happens without it.
    pub why: &'static str,
}

impl NeededIndex {
    /// Its keys as the shell writes them: `{gmcNumber: 1, gmcSubmissionDate: -1}`.
    pub fn keys_text(&self) -> String {
        let parts: Vec<String> = self.keys.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{{{}}}", parts.join(", "))
    }

    /// The line that creates it in the MongoDB shell.
    pub fn shell_command(&self, database: &str) -> String {
        format!(
            "db.getSiblingDB(\"{database}\").{}.createIndex({})",
            self.collection,
            self.keys_text()
        )
    }

    /// Whether an index with these keys serves it: same fields in the same
    /// order, as a prefix (the first field's direction is all a
    /// `$match` on it needs).
    fn served_by(&self, keys: &Document) -> bool {
        let mut theirs = keys.keys();
        self.keys.keys().all(|k| theirs.next() == Some(k))
    }
}

/// Every index `rebuilder` relies on (`_id` indexes aside: MongoDB makes
/// those itself).
pub fn needed(settings: &MongoSettings) -> Vec<NeededIndex> {
    vec![NeededIndex {
        collection: settings.recommendation_collection.clone(),
        keys: doc! {"gmcNumber": 1, "gmcSubmissionDate": -1},
        why: "the live applier's latest-outcome look-up (one aggregation a batch, filtered by gmcNumber); without it each batch scans the collection and live updates fall behind",
    }]
}

/// The needed indexes that are missing. A collection that does not exist
/// yet lacks them all.
pub async fn missing(
    client: &Client,
    settings: &MongoSettings,
) -> Result<Vec<NeededIndex>, SourceError> {
    let db = client.database(&settings.database);
    let mut out = Vec::new();
    for index in needed(settings) {
        let collection = db.collection::<Document>(&index.collection);
        let present: Vec<IndexModel> = match collection.list_indexes().await {
            Ok(cursor) => cursor.try_collect().await?,
            // NamespaceNotFound: no collection, so no index either.
            Err(e)
                if e.to_string().contains("NamespaceNotFound")
                    || e.to_string().contains("ns does not exist") =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
        if !present.iter().any(|m| index.served_by(&m.keys)) {
            out.push(index);
        }
    }
    Ok(out)
}

/// Creates the missing indexes; returns those it created.
pub async fn ensure(
    client: &Client,
    settings: &MongoSettings,
) -> Result<Vec<NeededIndex>, SourceError> {
    let missing = missing(client, settings).await?;
    let db = client.database(&settings.database);
    for index in &missing {
        db.collection::<Document>(&index.collection)
            .create_index(IndexModel::builder().keys(index.keys.clone()).build())
            .await?;
    }
    Ok(missing)
}

/// One line per missing index for a warning: what, why, and how to create it.
pub fn describe(missing: &[NeededIndex], database: &str) -> Vec<String> {
    missing
        .iter()
        .map(|i| {
            format!(
                "MongoDB index {}.{} {} is missing: {}. Create it with `rebuilder mongo ensure-indexes --yes` or, in the shell, {}",
                database,
                i.collection,
                i.keys_text(),
                i.why,
                i.shell_command(database)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_with_the_same_leading_fields_serves_and_another_does_not() {
        let needed = &needed(&MongoSettings::default())[0];
        assert!(needed.served_by(&doc! {"gmcNumber": 1, "gmcSubmissionDate": -1}));
        assert!(needed.served_by(&doc! {"gmcNumber": 1, "gmcSubmissionDate": -1, "outcome": 1}));
        assert!(!needed.served_by(&doc! {"gmcNumber": 1}));
        assert!(!needed.served_by(&doc! {"gmcSubmissionDate": -1, "gmcNumber": 1}));
        assert!(!needed.served_by(&doc! {"_id": 1}));
    }

    #[test]
    fn the_warning_names_the_index_and_both_ways_to_create_it() {
        let lines = describe(&needed(&MongoSettings::default()), "revalidation");
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("revalidation.recommendation {gmcNumber: 1, gmcSubmissionDate: -1}")
        );
        assert!(lines[0].contains("rebuilder mongo ensure-indexes --yes"));
        assert!(lines[0].contains("db.getSiblingDB(\"revalidation\").recommendation.createIndex({gmcNumber: 1, gmcSubmissionDate: -1})"));
    }
}
