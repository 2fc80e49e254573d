//! The catch-up of live changes: nothing changed while the run built is
//! lost in the new generations. The run's side of the handover
//! (`crate::handover` has the protocol and why it holds):
//!
//! - At its start (holding the rebuild lease, before reading any source)
//!   the run begins recording: from then on the live applier journals
//!   every change it writes, before acking it.
//! - After the base load, the run replays the journal onto the new master
//!   generation, round after round, until the backlog is small.
//! - At the swap: it asks the applier to pause and waits (at most
//!   `live.pause_timeout_secs`) until it has, then seals the journal, waits
//!   for every entry reserved before the seal (voiding those that never
//!   come), and replays the rest onto both new generations.
//! - When the run ends, whatever its outcome, the marker goes off and its
//!   entries go.
//!
//! Without an active applier nothing is journaled and nothing is lost
//! either: the changes wait in the update queue and the change streams,
//! and reach whatever generation is live when an applier starts.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tracing::{info, warn};

use super::RunContext;
use crate::handover::{HandoverError, HandoverStore, LeaseView, MongoHandover, Phase, LIVE_LEASE};
use crate::live::{ReplayReport, Replayer};
use crate::rebuild::record::RunPhase;
use crate::rebuild::Refused;
use crate::search::Generation;
use crate::sources::gmc::GmcSource;

/// How the catch-up stands, kept in the run's context.
#[derive(Debug)]
pub(super) struct CatchUp {
    pub handover: MongoHandover,
    /// The last journal sequence number replayed.
    pub seq: i64,
}

/// A refusal of the handover in words a reader of the run can act on.
fn refused(e: HandoverError, what: &str) -> anyhow::Error {
    if e.is_answer() {
        anyhow!(Refused(format!(
            "{what}: {e}; the live applier abandons the journal of a run whose rebuild lease it finds expired, and such a run must not swap. No alias moved; the next run starts afresh"
        )))
    } else {
        anyhow!(e).context(what.to_string())
    }
}

/// Starts recording, before any source is read.
pub(super) async fn begin(context: &mut RunContext<'_>) -> anyhow::Result<()> {
    let run_id = context.run_id();
    context.catch_up.seq = context
        .catch_up
        .handover
        .begin(&run_id)
        .await
        .context("while starting the journal of live changes")?;
    let active = applier_active(context).await;
    context.tracker.record.catch_up.applier_active = active;
    info!(
        applier_active = active,
        "Recording live changes for the catch-up."
    );
    Ok(())
}

/// Whether a live applier holds its lease now (a failed read counts as
/// yes: the run then waits for the pause, which is the careful side).
async fn applier_active(context: &RunContext<'_>) -> bool {
    let lease = context.catch_up.handover.store().lease(LIVE_LEASE).await;
    !matches!(lease, Ok(None) | Ok(Some(LeaseView { expired: true, .. })))
}

/// Replays the journal after the last replayed number through `through`
/// onto `generations` (counts are the first's), moves the catch-up's
/// position and adds what it did to the run's catch-up report.
async fn replay_onto(
    context: &mut RunContext<'_>,
    generations: Vec<&str>,
    through: i64,
) -> anyhow::Result<ReplayReport> {
    let run_id = context.run_id();
    let gmc = GmcSource::new(&context.mongo, &context.settings.mongodb);
    let connection = crate::live::applier::connection_source(&context.mongo, context.settings);
    let report = Replayer {
        handover: &context.catch_up.handover,
        gmc: &gmc,
        connection: connection.as_ref(),
        search: context.engine.client(),
        generations,
        retry: &context.retry,
        lanes: context.settings.bulk.concurrency,
    }
    .replay(&run_id, context.catch_up.seq, through)
    .await?;
    context.catch_up.seq = report.last_seq;
    let c = &mut context.tracker.record.catch_up;
    c.replayed += report.replayed;
    c.coalesced += report.coalesced;
    c.failed += report.failed;
    Ok(report)
}

/// Replays onto the loaded `generations` (the master first: the counts are
/// its own) until the backlog is small; returns documents created minus
/// deleted (the count the master must hold changes by it).
pub(super) async fn rounds(
    context: &mut RunContext<'_>,
    generations: &[&Generation],
) -> anyhow::Result<i64> {
    context.tracker.begin(RunPhase::CatchUp).await;
    let run_id = context.run_id();
    let mut net = 0;
    let max_rounds = context.settings.live.catch_up_rounds.max(1);
    for _ in 0..max_rounds {
        context.check_continue()?;
        let names = generations.iter().map(|g| g.name.as_str()).collect();
        let report = replay_onto(context, names, i64::MAX)
            .await
            .context("while replaying live changes onto the new generation")?;
        net += report.net_documents;
        context.tracker.record.catch_up.rounds += 1;
        let backlog = context
            .catch_up
            .handover
            .backlog(&run_id, context.catch_up.seq)
            .await?;
        info!(
            replayed = report.replayed,
            coalesced = report.coalesced,
            backlog,
            "Catch-up round done."
        );
        context.tracker.save_now().await;
        if backlog < context.settings.live.catch_up_backlog {
            break;
        }
    }
    for generation in generations {
        context
            .engine
            .refresh(generation)
            .await
            .context("while refreshing the new generation after the catch-up")?;
    }
    Ok(net)
}

/// Replays what came in since the catch-up rounds (validation and the
/// recommendation generation took their time, and a flood goes on) onto
/// both new generations, round after round while the backlog is at least
/// `live.catch_up_backlog` (at most `live.catch_up_rounds`): the pause that
/// follows then replays only what came during the last round.
async fn last_rounds(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: &Generation,
) -> anyhow::Result<()> {
    let run_id = context.run_id();
    for _ in 0..context.settings.live.catch_up_rounds.max(1) {
        let backlog = context
            .catch_up
            .handover
            .backlog(&run_id, context.catch_up.seq)
            .await?;
        if backlog < context.settings.live.catch_up_backlog {
            break;
        }
        context.check_continue()?;
        let report = replay_onto(context, vec![&master.name, &recommendation.name], i64::MAX)
            .await
            .context("while replaying live changes before the pause")?;
        context.tracker.record.catch_up.rounds += 1;
        info!(
            replayed = report.replayed,
            coalesced = report.coalesced,
            backlog,
            "Catch-up round before the pause done."
        );
    }
    Ok(())
}

/// Pauses the applier, seals the journal and replays what is left onto
/// both new generations. Fails (the aliases stay) only when the run may
/// not swap: its journal abandoned, or the store unreachable.
pub(super) async fn pause_and_replay(
    context: &mut RunContext<'_>,
    master: &Generation,
    recommendation: &Generation,
) -> anyhow::Result<Instant> {
    let run_id = context.run_id();
    last_rounds(context, master, recommendation).await?;
    let handover = &context.catch_up.handover;
    handover
        .request_pause(&run_id)
        .await
        .map_err(|e| refused(e, "while asking the live applier to pause"))?;
    crate::failpoint::hit("pause_requested").await;
    let asked = Instant::now();
    let timeout = Duration::from_secs(context.settings.live.pause_timeout_secs.max(1));
    let mut timed_out = false;
    while applier_active(context).await {
        match handover.marker().await {
            Ok(m) if m.phase == Phase::Paused && m.run_id == run_id => break,
            _ if asked.elapsed() > timeout => {
                timed_out = true;
                warn!(
                    timeout_s = timeout.as_secs(),
                    "The live applier did not say it paused in time; sealing the journal without it (its batch in hand is fenced: not acked, given again)."
                );
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let sealed = handover
        .seal(&run_id)
        .await
        .map_err(|e| refused(e, "while sealing the journal of live changes"))?;
    let voided = handover
        .await_entries(&run_id, sealed, timeout)
        .await
        .map_err(|e| refused(e, "while waiting for the last journal entries"))?;
    let backlog = (sealed.through - context.catch_up.seq).max(0) as u64;
    let c = &mut context.tracker.record.catch_up;
    c.pause_timed_out = timed_out;
    c.voided = voided;
    c.backlog_at_pause = backlog;
    let report = replay_onto(
        context,
        vec![&master.name, &recommendation.name],
        sealed.through,
    )
    .await
    .context("while replaying the last live changes before the swap")?;
    // Both hold the same documents unless a replayed change was refused
    // for good on one of them: then the pair must not be served.
    if let Err(e) = context
        .engine
        .same_count_in_both(master, recommendation)
        .await
    {
        return Err(match e {
            crate::search::SearchError::Invalid(why) => anyhow!(Refused(format!(
                "after the last replay {why}; no alias moved"
            ))),
            other => {
                anyhow!(other).context("while counting the new generations after the last replay")
            }
        });
    }
    info!(
        backlog,
        replayed = report.replayed,
        voided,
        "Journal sealed; last live changes replayed onto both generations."
    );
    Ok(asked)
}

/// Checks, just before the aliases move, that the journal is still sealed
/// for this run (an applier that found the run's lease expired abandons
/// it, and then writes unjournaled: this run must not swap).
pub(super) async fn confirm_sealed(context: &RunContext<'_>) -> anyhow::Result<()> {
    let run_id = context.run_id();
    let marker = context
        .catch_up
        .handover
        .marker()
        .await
        .context("while confirming the journal is sealed before the swap")?;
    if marker.phase == Phase::Sealed && marker.run_id == run_id {
        Ok(())
    } else {
        Err(anyhow!(Refused(format!(
            "the journal of live changes is {} for run {:?}, not sealed for this run; no alias moved",
            marker.phase.as_str(),
            marker.run_id
        ))))
    }
}

/// Records how long the applier waited (it goes on when the run ends).
pub(super) fn paused_for(context: &mut RunContext<'_>, paused_at: Instant) {
    context.tracker.record.catch_up.paused_ms = paused_at.elapsed().as_millis() as u64;
}

/// Lets the applier go on after the swap: the marker goes off for run
/// `run_id`; the entries stay for [`end`] (deleting thousands takes a
/// while, and the applier need not wait for it).
pub(super) async fn resume(handover: &MongoHandover, run_id: &str) {
    if let Err(e) = handover.release(run_id).await {
        warn!(error = %e, "Could not let the live applier go on; the run's end tries again, and the applier abandons the journal once this run's lease expires.")
    }
}

/// Ends the journal of run `run_id`: the marker goes off (the applier goes
/// on, against whichever generation the aliases name) and its entries go.
pub(super) async fn end(handover: &MongoHandover, run_id: &str) {
    match handover.end(run_id).await {
        Ok(deleted) if deleted > 0 => info!(entries = deleted, "Journal of live changes cleaned."),
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "Could not end the journal; the applier abandons it once this run's lease expires.")
        }
    }
}
