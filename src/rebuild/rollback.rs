//! Rollback as an operation: it takes the same lease as a run, so that it
//! can never interleave with a run's promotion or retention (refused,
//! naming the run, while one holds it), moves every alias with the engine,
//! and releases the lease.

use anyhow::{anyhow, Context};
use tracing::warn;

use super::engine::{Engine, PromoteError, PromotionReport};
use super::record::new_run_id;
use super::run::take_lease;
use super::Refused;
use crate::config::Settings;
use crate::sources::mongo_client;

/// Moves every alias back to the previous served pair (or to `to` and its
/// pair). Refusals (a run holds the lease, nothing to roll back to) carry
/// [`Refused`].
pub async fn roll_back(settings: &Settings, to: Option<&str>) -> anyhow::Result<PromotionReport> {
    let engine = Engine::new(settings)
        .await
        .context("while connecting to OpenSearch")?;
    let mongo = mongo_client(&settings.mongodb)
        .await
        .context("while connecting to MongoDB")?;
    let holder = format!("rollback-{}", new_run_id());
    let lease = take_lease(settings, &mongo, &holder).await?;
    let moved = engine.rollback(to).await;
    if let Err(e) = lease.release().await {
        warn!(error = %e, "Could not release the lease; it expires by itself.");
    }
    match moved {
        Ok(report) => Ok(report),
        Err(e @ PromoteError::Search(_)) => Err(e).context("while rolling back"),
        Err(e) => Err(anyhow!(Refused(e.to_string()))).context("rollback refused"),
    }
}
