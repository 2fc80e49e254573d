//! Seeding MongoDB with the GMC data for C (`rebuilder_dev::seed`): a small
//! data set for C's first, unmeasured run, and the full one for the
//! measured run, timed and recorded in the report's data set (not a
//! measurement).

use std::time::Instant;

use anyhow::Context;
use rebuilder::config::Settings;
use rebuilder_dev::datagen::DatasetSpec;

use crate::report::Report;
use crate::round3;

/// Seeds the small data set of C's first run.
pub async fn seed_first_run(
    mongo: &mongodb::Client,
    settings: &Settings,
    spec: &DatasetSpec,
) -> anyhow::Result<()> {
    rebuilder_dev::seed::seed_mongo(mongo, &settings.mongodb, spec)
        .await
        .context("while seeding MongoDB for C's first run")?;
    Ok(())
}

/// Seeds the full data set for the measured run (timed, not measured).
pub async fn seed_full(
    mongo: &mongodb::Client,
    settings: &Settings,
    spec: &DatasetSpec,
    report: &mut Report,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let seeded = rebuilder_dev::seed::seed_mongo(mongo, &settings.mongodb, spec)
        .await
        .context("while seeding MongoDB for C")?;
    report.dataset.seed_mongo_secs = Some(round3(t.elapsed().as_secs_f64()));
    report.dataset.gmc_doctors = Some(seeded.doctors);
    report.dataset.recommendations = Some(seeded.recommendations);
    report.dataset.tcs_messages = Some(seeded.tcs_messages);
    println!(
        "C: seeded {} GMC doctors and {} recommendations in {:.1} s (not measured).",
        seeded.doctors,
        seeded.recommendations,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
