//! Step 6: promotion and retention. The lease is confirmed (a run that lost
//! it stops here), every alias of both families moves in one `_aliases`
//! request, and old generations beyond the retention are deleted. A
//! retention failure does not fail the run: the new generation serves
//! already, and old ones stay until next time.

use anyhow::{anyhow, Context};
use tracing::warn;

use super::RunContext;
use crate::rebuild::gates::GateReport;
use crate::rebuild::record::RunPhase;
use crate::rebuild::Refused;
use crate::search::Generation;

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: &Generation,
    gates: &GateReport,
) -> anyhow::Result<()> {
    context.tracker.begin(RunPhase::Promote).await;
    context
        .lease
        .confirm()
        .await
        .context("while confirming the lease before promoting")?;
    let promotion = match context
        .engine
        .promote_validated(master, recommendation, gates)
        .await
    {
        Ok(p) => p,
        Err(e) if e.is_refusal() => {
            return Err(anyhow!(Refused(format!("promotion refused: {e}"))))
        }
        Err(e) => return Err(e).context("while moving the aliases"),
    };
    context.tracker.record.promotion = Some(promotion);

    context.tracker.begin(RunPhase::Retention).await;
    match context
        .engine
        .apply_retention(&[master.name.clone(), recommendation.name.clone()])
        .await
    {
        Ok(report) => context.tracker.record.retention_deleted = report.deleted,
        Err(e) => warn!(error = %e, "Retention failed; old generations are kept."),
    }
    Ok(())
}
