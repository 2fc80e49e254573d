//! The `rebuilder` binary: parses the command line, starts logging, runs one
//! command and turns its error into a message and an exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rebuilder::cli::{Cli, Command, ConfigCommand, MongoCommand};
use rebuilder::config::Settings;
use rebuilder::{commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    telemetry::log_panics();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            let code = commands::exit_code_for(&error);
            if telemetry::logs_are_json() {
                // One more log line, not plain text among JSON ones.
                tracing::error!(error = %format!("{error:#}"), exit_code = code, "The command failed.");
            } else {
                eprintln!("error: {error:#}");
            }
            ExitCode::from(code)
        }
    };
    // The command is done and its work stopped or handed back (logs are
    // written as they come, so nothing waits to be flushed). Dropping the
    // runtime here would cancel the tasks still parked in it (a cancelled
    // read, a driver's pool worker) on two threads in no particular order,
    // and the MongoDB driver panics when its pool's worker is cancelled
    // before a task that still asks it for a connection (seen on SIGTERM in
    // CI). The process ends with the runtime as it is.
    std::mem::forget(runtime);
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(cli.config.as_deref()).context("while loading settings")?;
    if let Some(prefix) = cli.prefix {
        settings.names.prefix = prefix;
        settings.validate().context("while applying --prefix")?;
    }
    match cli.command {
        Command::Run(args) => commands::run::run(&settings, &args).await,
        Command::Status(args) => commands::status::run(&settings, &args).await,
        Command::Rollback(args) => commands::rollback::run(&settings, &args).await,
        Command::Generations => commands::generations::run(&settings).await,
        Command::Smoke => commands::smoke::run(&settings).await,
        Command::Config(ConfigCommand::Check) => commands::config::check(&settings),
        Command::Serve(args) => commands::serve::run(settings, &args).await,
        Command::Live => commands::live::run(settings).await,
        Command::Adopt(args) => commands::adopt::run(&settings, &args).await,
        Command::Mongo(MongoCommand::EnsureIndexes(args)) => {
            commands::mongo::ensure_indexes(&settings, &args).await
        }
        Command::Healthcheck(args) => commands::healthcheck::run(&settings, &args).await,
    }
}
