//! `rebuilder tcs-simulator`: plays TCS on RabbitMQ until interrupted (or
//! after one sync with `--once`).

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::SimulatorArgs;
use crate::config::Settings;
use crate::dev::simulator::{run_simulator, SimulatorOptions};

pub async fn run(settings: &Settings, args: &SimulatorArgs) -> anyhow::Result<ExitCode> {
    let options = SimulatorOptions {
        once: args.once,
        stop_after: args.stop_after,
        ..SimulatorOptions::default()
    };
    let spec = args.dataset.spec();
    tokio::select! {
        served = run_simulator(&settings.rabbitmq, spec, options) => {
            let served = served.context("while simulating TCS")?;
            for s in &served {
                println!(
                    "Served a sync: {} messages{}.",
                    s.published,
                    if s.sync_end { " and syncEnd" } else { ", no syncEnd" }
                );
            }
        }
        _ = tokio::signal::ctrl_c() => println!("TCS simulator stopped."),
    }
    Ok(ExitCode::SUCCESS)
}
