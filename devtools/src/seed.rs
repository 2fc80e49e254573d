//! Seeding a local MongoDB-compatible server with generated GMC data
//! (`doctorsForDB`, `recommendation`) and the connection service's data
//! (`connectionLogs`, `hiddenDiscrepancy`), and writing the expected merged
//! documents for tests and the demo. Seeding replaces those collections,
//! so it first checks, through [`crate::guard`], that the server is on
//! loopback and that the database is empty or was seeded before.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use bson::Document;
use mongodb::{Client, Collection, IndexModel};

use rebuilder::config::{ConnectionSettings, MongoSettings};

use crate::datagen::DatasetSpec;
use crate::guard::{check_mongo_uri, claim_database};

/// What a seeding wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedSummary {
    pub doctors: u64,
    pub recommendations: u64,
    pub tcs_messages: u64,
    pub connection_logs: u64,
    pub hidden_discrepancies: u64,
}

/// Replaces the GMC collections with the generated data, in batches, and
/// the connection service's collections under their default names in the
/// same database (see [`seed_mongo_with`]).
pub async fn seed_mongo(
    client: &Client,
    settings: &MongoSettings,
    spec: &DatasetSpec,
) -> anyhow::Result<SeedSummary> {
    seed_mongo_with(client, settings, &ConnectionSettings::default(), spec).await
}

/// Replaces the GMC collections and the connection service's collections
/// (where `connection` names them) with the generated data, in batches.
/// Refuses (before writing anything) a server that is not on loopback and
/// a database that holds data seeding did not create.
pub async fn seed_mongo_with(
    client: &Client,
    settings: &MongoSettings,
    connection: &ConnectionSettings,
    spec: &DatasetSpec,
) -> anyhow::Result<SeedSummary> {
    check_mongo_uri(settings.uri.expose())?;
    let db = client.database(&settings.database);
    claim_database(&db).await?;
    let connection_db = client.database(connection.database(settings));
    if connection_db.name() != db.name() {
        claim_database(&connection_db).await?;
    }
    let logs: Collection<Document> = connection_db.collection(&connection.logs_collection);
    let hidden: Collection<Document> = connection_db.collection(&connection.hidden_collection);
    logs.drop()
        .await
        .context("while dropping the connection logs")?;
    hidden
        .drop()
        .await
        .context("while dropping the hidden discrepancies")?;
    let doctors: Collection<Document> = db.collection(&settings.doctors_collection);
    let recommendations: Collection<Document> = db.collection(&settings.recommendation_collection);
    doctors
        .drop()
        .await
        .context("while dropping doctorsForDB")?;
    recommendations
        .drop()
        .await
        .context("while dropping recommendation")?;

    const BATCH: usize = 5_000;
    let mut summary = SeedSummary::default();
    let mut doctor_batch = Vec::with_capacity(BATCH);
    let mut rec_batch = Vec::with_capacity(BATCH);
    let mut log_batch = Vec::with_capacity(BATCH);
    let mut hidden_batch = Vec::new();
    for d in spec.doctors() {
        summary.tcs_messages += d.tcs_messages.len() as u64;
        log_batch.extend(d.connection_logs);
        hidden_batch.extend(d.hidden_discrepancies);
        if log_batch.len() >= BATCH {
            summary.connection_logs += flush(&logs, &mut log_batch).await?;
        }
        if hidden_batch.len() >= BATCH {
            summary.hidden_discrepancies += flush(&hidden, &mut hidden_batch).await?;
        }
        if let Some(doc) = d.gmc_doctor {
            doctor_batch.push(doc);
        }
        rec_batch.extend(d.recommendations);
        if doctor_batch.len() >= BATCH {
            summary.doctors += flush(&doctors, &mut doctor_batch).await?;
        }
        if rec_batch.len() >= BATCH {
            summary.recommendations += flush(&recommendations, &mut rec_batch).await?;
        }
    }
    summary.doctors += flush(&doctors, &mut doctor_batch).await?;
    summary.recommendations += flush(&recommendations, &mut rec_batch).await?;
    summary.connection_logs += flush(&logs, &mut log_batch).await?;
    summary.hidden_discrepancies += flush(&hidden, &mut hidden_batch).await?;
    summary.tcs_messages += spec.malformed_tcs_messages().len() as u64;

    // The latest-outcome aggregation sorts by these.
    recommendations
        .create_index(
            IndexModel::builder()
                .keys(bson::doc! {"gmcNumber": 1, "gmcSubmissionDate": -1})
                .build(),
        )
        .await
        .context("while indexing recommendation by gmcNumber")?;
    Ok(summary)
}

async fn flush(
    collection: &Collection<Document>,
    batch: &mut Vec<Document>,
) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let n = batch.len() as u64;
    collection
        .insert_many(std::mem::take(batch))
        .ordered(false)
        .await
        .with_context(|| format!("while inserting {n} documents into {}", collection.name()))?;
    Ok(n)
}

/// Writes the expected merged documents, one JSON object per line, sorted
/// by GMC number (the generator's order).
pub fn write_expected(path: &Path, spec: &DatasetSpec) -> anyhow::Result<u64> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("while creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut n = 0;
    for d in spec.doctors() {
        serde_json::to_writer(&mut out, &d.expected)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}
