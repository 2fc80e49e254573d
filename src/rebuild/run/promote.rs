//! Step 6: promotion and retention. Both generations must be green (the
//! `green` gate: every replica allocated and started, waited for up to
//! `index.green_timeout_secs`; else the promotion is refused, naming the
//! shards and OpenSearch's reasons, unless `--force`). The lease is
//! confirmed (a run that lost it stops here), the live applier pauses, the
//! journal is sealed and the last live changes are replayed onto both
//! generations, the lease and the seal are confirmed again, every alias of
//! both families moves in one `_aliases` request, the journal ends (the
//! applier goes on), and old generations beyond the retention are deleted.
//! A retention failure does not fail the run: the new generation serves
//! already, and old ones stay until next time.

use anyhow::{anyhow, Context};
use tracing::warn;

use super::RunContext;
use crate::rebuild::gates::{green_gate as judge_green, GateReport};
use crate::rebuild::record::RunPhase;
use crate::rebuild::Refused;
use crate::search::Generation;
use crate::state::streams::StreamPositions;

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: &Generation,
    gates: &GateReport,
) -> anyhow::Result<()> {
    context.tracker.begin(RunPhase::Promote).await;
    green_gate(context, master, recommendation).await?;
    context
        .lease
        .confirm()
        .await
        .context("while confirming the lease before promoting")?;
    let paused_at = super::catchup::pause_and_replay(context, master, recommendation).await?;
    // The applier abandons the journal of a run whose lease it finds
    // expired: renew it now, then check the journal is still sealed for
    // this run, right before the aliases move.
    context
        .lease
        .confirm()
        .await
        .context("while confirming the lease after the last replay")?;
    super::catchup::confirm_sealed(context).await?;
    let moved = context
        .engine
        .promote_validated(master, recommendation, gates)
        .await;
    // The applier goes on at once, against whichever generation the
    // aliases name now (the run's end does this too, later).
    super::catchup::resume(&context.catch_up.handover, &context.run_id()).await;
    super::catchup::paused_for(context, paused_at);
    super::catchup::end(&context.catch_up.handover, &context.run_id()).await;
    let promotion = match moved {
        Ok(p) => p,
        Err(e) if e.is_refusal() => {
            return Err(anyhow!(Refused(format!("promotion refused: {e}"))))
        }
        Err(e) => return Err(e).context("while moving the aliases"),
    };
    context.tracker.record.promotion = Some(promotion);
    let positions = StreamPositions::new(&context.mongo, &context.settings.mongodb);
    match positions
        .clear_lost_before(&context.tracker.record.started_at)
        .await
    {
        Ok(true) => tracing::info!(
            "This run read every source afresh: the lost change-stream history is mended."
        ),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "Could not clear the mark of a lost change-stream history."),
    }

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

/// Waits for both generations to be green; refuses the promotion when they
/// are not in time (unless forced). The verdict joins the run's gates.
async fn green_gate(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: &Generation,
) -> anyhow::Result<()> {
    let wait = async {
        context
            .engine
            .wait_green(&[master, recommendation])
            .await
            .context("while waiting for the new generations to be green")
    };
    let health = context.cancellable(wait).await?;
    let verdict = judge_green(
        &health,
        context.settings.index.green_timeout_secs,
        context.options.force,
    );
    let blocking = !verdict.passed && !verdict.overridden;
    if !verdict.passed {
        warn!(detail = %verdict.detail, forced = verdict.overridden, "The new generations are not green.");
    }
    let detail = verdict.detail.clone();
    context.tracker.record.gates.push(verdict);
    if blocking {
        return Err(anyhow!(Refused(format!(
            "promotion refused, no alias moved: {master} and {recommendation} are {detail} (rebuilder run --force promotes anyway)"
        ))));
    }
    Ok(())
}
