//! Step 1: the lease and the clean-up of dead runs. The lease makes the run
//! the only one (a held lease is a refusal naming its holder); holding it,
//! the run marks runs whose process died as abandoned and deletes the
//! half-built generations they left. A run that fails deletes its own.

use std::time::Duration;

use anyhow::{anyhow, Context};
use tracing::{info, warn};

use super::RunContext;
use crate::config::Settings;
use crate::rebuild::engine::Engine;
use crate::rebuild::record::RunPhase;
use crate::rebuild::{LeaseHeld, Refused};
use crate::retry::{with_retry, RetryPolicy};
use crate::state::lease::{lease_collection, Lease, LeaseHolder, REBUILD_LEASE};
use crate::state::StateError;

/// Takes the rebuild lease for `run_id` (a run, or a rollback), or refuses
/// naming the run that holds it.
pub(crate) async fn take_lease(
    settings: &Settings,
    mongo: &mongodb::Client,
    run_id: &str,
) -> anyhow::Result<Lease> {
    let collection = lease_collection(mongo, &settings.mongodb);
    let holder = LeaseHolder::this_process(run_id);
    let ttl = Duration::from_secs(settings.run.lease_ttl_secs.max(1));
    // A transient MongoDB failure is tried again; a held lease is an answer.
    let acquired = with_retry(
        &RetryPolicy::new(&settings.retry),
        "taking the lease",
        || Lease::acquire(collection.clone(), REBUILD_LEASE, holder.clone(), ttl),
    )
    .await;
    match acquired {
        Ok(lease) => Ok(lease),
        Err(held @ StateError::Held { .. }) => {
            warn!(run_id = %run_id, "Refused: the lease is held.");
            let holder = match &held {
                StateError::Held { run_id, .. } => run_id.clone(),
                _ => String::new(),
            };
            Err(anyhow!(Refused(held_message(&held))).context(LeaseHeld { run_id: holder }))
        }
        Err(e) => Err(e).context("while taking the rebuild lease"),
    }
}

/// The refusal a run gets while another holds the lease.
pub(crate) fn held_message(held: &StateError) -> String {
    match held {
        StateError::Held {
            run_id,
            host,
            pid,
            expires_at,
            ..
        } => format!(
            "another rebuild is running: run {run_id} on {host} (pid {pid}) holds the lease until {expires_at} (renewed while it lives)"
        ),
        other => other.to_string(),
    }
}

/// Marks dead runs abandoned and deletes their half-built generations.
pub(super) async fn run(context: &mut RunContext<'_>) -> anyhow::Result<()> {
    let run_id = context.run_id();
    let history = context.tracker.history();
    let abandoned = with_retry(&context.retry, "marking abandoned runs", || {
        history.mark_abandoned(&run_id)
    })
    .await;
    match abandoned {
        Ok(ids) if !ids.is_empty() => {
            warn!(runs = ?ids, "Marked runs whose process died as abandoned.")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Could not mark abandoned runs."),
    }
    context.tracker.begin(RunPhase::Cleanup).await;
    let orphans = context
        .engine
        .delete_orphans(&[])
        .await
        .context("while deleting half-built generations of dead runs")?;
    if !orphans.is_empty() {
        warn!(generations = ?orphans, "Deleted half-built generations left by dead runs.");
    }
    context.tracker.record.orphans_deleted = orphans;
    // From here on, live changes are journaled for this run's catch-up.
    super::catchup::begin(context).await
}

/// Deletes the generations of `run_id` still building. Only this run's:
/// a run that failed because it lost the lease must not touch another's.
pub(super) async fn delete_own_half_built(engine: &Engine, run_id: &str) {
    let listing = match engine.list_generations().await {
        Ok(listing) => listing,
        Err(e) => {
            warn!(error = %e, "Could not list generations to delete the half-built ones.");
            return;
        }
    };
    let others: Vec<String> = listing
        .into_iter()
        .filter(|g| g.run_id() != Some(run_id))
        .map(|g| g.name)
        .collect();
    match engine.delete_orphans(&others).await {
        Ok(deleted) if !deleted.is_empty() => {
            info!(deleted = ?deleted, "Deleted the half-built generations of the failed run.")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "Could not delete the half-built generations."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_run_that_holds_the_lease() {
        let held = StateError::Held {
            lease: "rebuild".into(),
            run_id: "20260101T000000Z-abcdef".into(),
            host: "replica-2".into(),
            pid: 77,
            expires_at: "2026-01-01T00:00:30.000Z".into(),
        };
        let text = held_message(&held);
        assert!(
            text.contains("run 20260101T000000Z-abcdef on replica-2 (pid 77)"),
            "{text}"
        );
        assert!(text.contains("until 2026-01-01T00:00:30.000Z"));
    }
}
