//! Step 5: the recommendation generation. Loaded alongside the master
//! (`run.recommendation_build = "alongside"`, see `sink`), it is checked
//! here to hold as many documents as the master: its own count gate. Else
//! it is built now from the validated master generation by server-side
//! `_reindex` (followed through the tasks API) and checked the same way.

use anyhow::Context;
use tracing::info;

use super::RunContext;
use crate::rebuild::record::RunPhase;
use crate::search::Generation;

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    alongside: Option<Generation>,
) -> anyhow::Result<Generation> {
    context.tracker.begin(RunPhase::Recommendation).await;
    if let Some(recommendation) = alongside {
        let (docs, _) = context
            .engine
            .same_count_in_both(master, &recommendation)
            .await
            .context("while checking the recommendation generation loaded alongside the master")?;
        info!(generation = %recommendation.name, docs, "Recommendation generation checked: as many documents as the master.");
        return Ok(recommendation);
    }
    let built = context
        .engine
        .build_recommendation_generation_until(master, &context.run_id(), &context.options.cancel)
        .await;
    let (recommendation, reindex) = match built {
        Ok(built) => built,
        Err(e) => {
            // A reindex cancelled because the run was asked to stop is an abort.
            context.check_continue()?;
            return Err(e).context("while building the recommendation generation");
        }
    };
    context
        .tracker
        .record
        .generations
        .push(recommendation.name.clone());
    info!(generation = %recommendation.name, took_ms = reindex.took_ms, "Recommendation generation built.");
    Ok(recommendation)
}
