//! `rebuilder serve`: the service (see `service`), until SIGTERM or SIGINT.
//! Prints the address it listens on as its first line of output, so that a
//! supervisor (or a test) that asked for port 0 learns the port.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::ServeArgs;
use crate::config::Settings;
use crate::service::serve;

pub async fn run(mut settings: Settings, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(listen) = &args.listen {
        settings.service.listen = listen.clone();
        settings.validate()?;
    }
    let shutdown = super::cancel_on_signals();
    serve(settings, shutdown, |address| {
        println!("listening on http://{address}");
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
