//! `rebuilder adopt [--yes]`: prints the plan that converts the legacy
//! layout into generations with every alias; with `--yes`, carries it out
//! (see `rebuild::adopt`) and prints what it did, with the write block a
//! legacy writer saw.

use std::process::ExitCode;

use crate::cli::AdoptArgs;
use crate::config::Settings;
use crate::rebuild::adopt::adopt;

pub async fn run(settings: &Settings, args: &AdoptArgs) -> anyhow::Result<ExitCode> {
    let (plan, report) = adopt(settings, args.yes).await?;
    print!("{}", plan.describe());
    match report {
        None => println!("Nothing done. Run `rebuilder adopt --yes` to carry out this plan."),
        Some(report) => {
            println!(
                "Adopted in {} ms; writes were blocked for {} ms.",
                report.took_ms, report.write_block_ms
            );
            for c in &report.copies {
                println!("  {} -> {} ({} documents)", c.from, c.to, c.docs);
            }
            println!("  aliases on the copies: {}", report.aliases.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}
