//! C's first run, which is not measured: it only leaves a live generation
//! behind for the measured run to swap away from. A small data set does
//! that (the share gate bounds the new count from below only) and saves a
//! full rebuild; the full data set is seeded afterwards, and the TCS
//! simulator restarted on it.

use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use rebuilder_dev::datagen::DatasetSpec;

use crate::cli::Args;
use crate::full_run::{self, RebuilderBin, RunMeasurement, SimulatedService, Simulator};
use crate::report::Report;
use crate::seeding;

/// What the first run leaves for the measured one.
pub struct FirstRun {
    pub measurement: RunMeasurement,
    /// The TCS simulator, on the full data set.
    pub simulator: Simulator,
}

/// Seeds, runs `rebuilder run` once unmeasured, and leaves the full data
/// set seeded (recorded in `report`) with a simulator ready for it.
pub async fn run(
    args: &Args,
    bin: &RebuilderBin,
    settings: &Settings,
    search: &SearchClient,
    spec: &DatasetSpec,
    mongo: &mongodb::Client,
    report: &mut Report,
) -> anyhow::Result<FirstRun> {
    let warmup_spec = DatasetSpec::new(spec.seed, args.warmup_doctors.min(spec.doctors).max(1));
    if warmup_spec.doctors < spec.doctors {
        seeding::seed_first_run(mongo, settings, &warmup_spec).await?;
    } else {
        seeding::seed_full(mongo, settings, spec, report).await?;
    }
    let mut simulator = Simulator::start(
        bin,
        settings,
        SimulatedService::Tcs,
        warmup_spec.doctors,
        spec.seed,
        "simulator-warmup.log",
    )
    .await?;
    println!(
        "C: first run on {} doctors (creates the aliases; not measured) ...",
        warmup_spec.doctors
    );
    let warmup = full_run::run_once(
        bin,
        search,
        settings,
        "c-warmup-run",
        None,
        args.probe_every(),
        args.run_timeout(),
    )
    .await;
    let warmup = match warmup {
        Ok((m, _)) => m,
        Err(e) => {
            simulator.stop().await;
            return Err(e);
        }
    };
    println!(
        "C: first run done in {:.1} s ({} docs in {}).",
        warmup.wall_secs,
        warmup.docs,
        warmup.generation.as_deref().unwrap_or("?")
    );
    let reseed = warmup_spec.doctors < spec.doctors;
    if reseed || !simulator.is_running() {
        simulator.stop().await;
        if reseed {
            seeding::seed_full(mongo, settings, spec, report).await?;
        }
        simulator = Simulator::start(
            bin,
            settings,
            SimulatedService::Tcs,
            spec.doctors,
            spec.seed,
            "simulator.log",
        )
        .await?;
    }
    Ok(FirstRun {
        measurement: warmup,
        simulator,
    })
}
