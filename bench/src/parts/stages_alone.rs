//! `S_gmc` and `S_tcs`, the stages alone ([`crate::stages`]), measured on
//! C's data just before the measured C; with A and D they give the bound `L`.

use rebuilder::config::Settings;

use crate::report::Report;
use crate::stages;

/// Measures the GMC reads alone, then the TCS sync alone, into `report`.
pub async fn measure(
    settings: &Settings,
    mongo: &mongodb::Client,
    report: &mut Report,
) -> anyhow::Result<()> {
    let s_gmc = stages::gmc_alone(settings, mongo).await?;
    println!(
        "S_gmc: the aggregation and one full read of doctorsForDB: {} records in {:.1} s ({:.1} CPU s).",
        s_gmc.records,
        s_gmc.secs,
        s_gmc.cpu_secs()
    );
    report.s_gmc = Some(s_gmc);
    let s_tcs = stages::tcs_alone(settings).await?;
    println!(
        "S_tcs: the TCS sync alone, taken and acked: {} messages in {:.1} s ({:.1} CPU s).",
        s_tcs.records,
        s_tcs.secs,
        s_tcs.cpu_secs()
    );
    report.s_tcs = Some(s_tcs);
    Ok(())
}
