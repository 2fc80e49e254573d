//! `rebuilder mongo ensure-indexes`: the MongoDB indexes rebuilder relies
//! on, listed when missing and created with `--yes`.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::EnsureIndexesArgs;
use crate::config::Settings;
use crate::sources::gmc::indexes::{ensure, missing, needed};
use crate::sources::mongo_client;

/// Exit 0 when nothing is missing (or all were created), 1 when some are
/// missing and `--yes` was not given.
pub async fn ensure_indexes(
    settings: &Settings,
    args: &EnsureIndexesArgs,
) -> anyhow::Result<ExitCode> {
    let mongo = mongo_client(&settings.mongodb).await?;
    let db = &settings.mongodb.database;
    let absent = missing(&mongo, &settings.mongodb)
        .await
        .context("while listing the indexes of MongoDB")?;
    for index in needed(&settings.mongodb) {
        let state = if absent.contains(&index) {
            "missing"
        } else {
            "present"
        };
        println!(
            "{db}.{} {}: {state} ({})",
            index.collection,
            index.keys_text(),
            index.why
        );
    }
    if absent.is_empty() {
        println!("Every index rebuilder relies on is there.");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes {
        println!(
            "Nothing changed. Run `rebuilder mongo ensure-indexes --yes` to create {} (for a database this deployment owns), or in the MongoDB shell:",
            if absent.len() == 1 { "it" } else { "them" }
        );
        for index in &absent {
            println!("  {}", index.shell_command(db));
        }
        return Ok(ExitCode::from(1));
    }
    let created = ensure(&mongo, &settings.mongodb)
        .await
        .context("while creating the indexes")?;
    for index in &created {
        println!("Created {db}.{} {}.", index.collection, index.keys_text());
    }
    Ok(ExitCode::SUCCESS)
}
