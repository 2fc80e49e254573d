//! `rebuilder rollback [--to GENERATION]`: moves every alias back to the
//! previous served generation of each family (or to the named one and its
//! pair) in one `_aliases` request, under the rebuild lease, and prints
//! what moved.

use std::process::ExitCode;

use crate::cli::RollbackArgs;
use crate::config::Settings;
use crate::rebuild::engine::PromotionReport;
use crate::rebuild::roll_back;

pub async fn run(settings: &Settings, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let report = roll_back(settings, args.to.as_deref()).await?;
    print_report(&report);
    Ok(ExitCode::SUCCESS)
}

pub fn print_report(report: &PromotionReport) {
    let from = |f: &Option<String>| f.clone().unwrap_or_else(|| "(none)".into());
    println!(
        "Rolled back in one request ({} ms):\n  master:         {} -> {}\n  recommendation: {} -> {}",
        report.took_ms,
        from(&report.master.from),
        report.master.to,
        from(&report.recommendation.from),
        report.recommendation.to
    );
    for m in &report.aliases {
        println!("  alias {:<28} -> {}", m.alias, m.to);
    }
}
