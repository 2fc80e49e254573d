//! The `rebuilder` binary: parses the command line, starts logging, runs one
//! command and turns its error into a message and an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rebuilder::cli::{Cli, Command};
use rebuilder::config::Settings;
use rebuilder::{ops, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(ops::exit_code_for(&error))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(cli.config.as_deref()).context("while loading settings")?;
    if let Some(prefix) = cli.prefix {
        settings.names.prefix = prefix;
        settings.validate().context("while applying --prefix")?;
    }
    match cli.command {
        Command::Smoke => ops::smoke::run(&settings).await,
        Command::Seed(args) => ops::seed::run(&settings, &args).await,
        Command::Run(args) => ops::run::run(&settings, &args).await,
        Command::Status(args) => ops::status::run(&settings, &args).await,
        Command::TcsSimulator(args) => ops::simulator::run(&settings, &args).await,
        Command::Rollback(args) => ops::rollback::run(&settings, &args).await,
        Command::Generations => ops::generations::run(&settings).await,
    }
}
