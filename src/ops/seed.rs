//! `rebuilder seed`: generated GMC data into MongoDB, expected documents to a file.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::SeedArgs;
use crate::config::Settings;
use crate::dev::seed::{seed_mongo, write_expected};
use crate::sources::mongo_client;

pub async fn run(settings: &Settings, args: &SeedArgs) -> anyhow::Result<ExitCode> {
    let spec = args.dataset.spec();
    let client = mongo_client(&settings.mongodb).await?;
    let summary = seed_mongo(&client, &settings.mongodb, &spec)
        .await
        .context("while seeding MongoDB")?;
    println!(
        "Seeded {}.{}: {} doctors, {} recommendations; the TCS simulator will publish {} messages (seed {}, variant {}).",
        settings.mongodb.database,
        settings.mongodb.doctors_collection,
        summary.doctors,
        summary.recommendations,
        summary.tcs_messages,
        spec.seed,
        spec.variant
    );
    if let Some(path) = &args.expected {
        let n = write_expected(path, &spec)?;
        println!("Wrote {n} expected documents to {}.", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
