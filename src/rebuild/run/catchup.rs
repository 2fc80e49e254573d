//! The catch-up of live changes: nothing changed while the run built is
//! lost in the new generation.
//!
//! - At its start (holding the rebuild lease, before reading any source)
//!   the run sets the journal marker to `recording`: from then on the live
//!   applier journals every change it applies (after applying it to the
//!   live generation, before acking it).
//! - After the base load, the run replays the journal onto the new
//!   generation, round after round, until the backlog is small.
//! - At the swap, it asks the applier to pause, waits until the applier has
//!   finished its batch and says so, replays the last changes, moves the
//!   aliases, and lets the applier resume, now against the new generation.
//! - When the run ends, whatever its outcome, its marker and entries go.
//!
//! Without an active applier (none runs), nothing is journaled and nothing
//! is lost either: the changes wait in the update queue and the change
//! streams, and reach whatever generation is live when an applier starts.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tracing::{info, warn};

use super::RunContext;
use crate::live::{Replayer, LIVE_LEASE};
use crate::rebuild::record::RunPhase;
use crate::rebuild::Refused;
use crate::search::Generation;
use crate::sources::gmc::GmcSource;
use crate::state::journal::{Journal, JournalState};
use crate::state::lease::{lease_collection, read_lease};

/// How the catch-up stands, kept in the run's context.
#[derive(Debug)]
pub(super) struct CatchUp {
    pub journal: Journal,
    /// The last journal sequence number replayed.
    pub seq: i64,
}

/// Starts recording, before any source is read.
pub(super) async fn begin(context: &mut RunContext<'_>) -> anyhow::Result<()> {
    let run_id = context.run_id();
    context
        .catch_up
        .journal
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

/// Whether a live applier holds its lease now.
async fn applier_active(context: &RunContext<'_>) -> bool {
    let leases = lease_collection(&context.mongo, &context.settings.mongodb);
    matches!(read_lease(&leases, LIVE_LEASE).await, Ok(Some(l)) if !l.expired)
}

fn replayer<'a>(
    context: &'a RunContext<'_>,
    gmc: &'a GmcSource,
    generation: &'a Generation,
) -> Replayer<'a> {
    Replayer {
        journal: &context.catch_up.journal,
        gmc,
        search: context.engine.client(),
        generation: &generation.name,
        retry: &context.retry,
    }
}

/// Replays until the backlog is small; returns documents created minus
/// deleted (the count the generation must hold changes by it).
pub(super) async fn rounds(
    context: &mut RunContext<'_>,
    master: &Generation,
) -> anyhow::Result<i64> {
    context.tracker.begin(RunPhase::CatchUp).await;
    let run_id = context.run_id();
    let gmc = GmcSource::new(&context.mongo, &context.settings.mongodb);
    let mut net = 0;
    let max_rounds = context.settings.live.catch_up_rounds.max(1);
    for _ in 0..max_rounds {
        context.check_continue()?;
        let report = replayer(context, &gmc, master)
            .replay(&run_id, context.catch_up.seq)
            .await
            .context("while replaying live changes onto the new generation")?;
        context.catch_up.seq = report.last_seq;
        net += report.net_documents;
        let c = &mut context.tracker.record.catch_up;
        c.rounds += 1;
        c.replayed += report.replayed;
        c.failed += report.failed;
        let backlog = context
            .catch_up
            .journal
            .count_after(&run_id, context.catch_up.seq)
            .await?;
        info!(replayed = report.replayed, backlog, "Catch-up round done.");
        context.tracker.save_now().await;
        if backlog < context.settings.live.catch_up_backlog {
            break;
        }
    }
    context
        .engine
        .refresh(master)
        .await
        .context("while refreshing the new generation after the catch-up")?;
    Ok(net)
}

/// Pauses the applier for the swap and replays what is left. Fails (the
/// aliases stay) when an active applier does not pause in time: it could
/// otherwise write a change to the old generation after the last replay.
pub(super) async fn pause_and_replay(
    context: &mut RunContext<'_>,
    master: &Generation,
) -> anyhow::Result<Instant> {
    let run_id = context.run_id();
    context.catch_up.journal.request_pause(&run_id).await?;
    let asked = Instant::now();
    if applier_active(context).await {
        let timeout = Duration::from_secs(context.settings.live.pause_timeout_secs.max(1));
        loop {
            match context.catch_up.journal.state().await? {
                JournalState::Paused { run_id: r, .. } if r == run_id => break,
                _ if asked.elapsed() > timeout => {
                    return Err(anyhow!(Refused(format!(
                        "the live applier did not pause within {} s; no alias moved (its changes would be lost to the new generation)",
                        timeout.as_secs()
                    ))))
                }
                _ if !applier_active(context).await => break,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let backlog = context
        .catch_up
        .journal
        .count_after(&run_id, context.catch_up.seq)
        .await?;
    context.tracker.record.catch_up.backlog_at_pause = backlog;
    let gmc = GmcSource::new(&context.mongo, &context.settings.mongodb);
    let report = replayer(context, &gmc, master)
        .replay(&run_id, context.catch_up.seq)
        .await
        .context("while replaying the last live changes before the swap")?;
    context.catch_up.seq = report.last_seq;
    let c = &mut context.tracker.record.catch_up;
    c.replayed += report.replayed;
    c.failed += report.failed;
    info!(
        backlog,
        replayed = report.replayed,
        "Applier paused; last live changes replayed."
    );
    Ok(asked)
}

/// Lets the applier go on (after the swap, or after a refused one).
pub(super) async fn resume(context: &mut RunContext<'_>, paused_at: Instant) {
    let run_id = context.run_id();
    if let Err(e) = context.catch_up.journal.resume(&run_id).await {
        warn!(error = %e, "Could not resume the live applier; it resumes when the run ends.");
    }
    context.tracker.record.catch_up.paused_ms = paused_at.elapsed().as_millis() as u64;
}

/// Ends the journal of run `run_id` (its marker and entries go).
pub(super) async fn end(journal: &Journal, run_id: &str) {
    match journal.end(run_id).await {
        Ok(deleted) if deleted > 0 => info!(entries = deleted, "Journal of live changes cleaned."),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Could not clean the journal; the next run does."),
    }
}
