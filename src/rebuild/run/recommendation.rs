//! Step 5: the recommendation generation, built from the validated master
//! generation by server-side `_reindex` (followed through the tasks API) and
//! checked to hold as many documents.

use anyhow::Context;
use tracing::info;

use super::RunContext;
use crate::rebuild::record::RunPhase;
use crate::search::Generation;

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
) -> anyhow::Result<Generation> {
    context.tracker.begin(RunPhase::Recommendation).await;
    let (recommendation, reindex) = context
        .engine
        .build_recommendation_generation(master, &context.run_id())
        .await
        .context("while building the recommendation generation")?;
    context
        .tracker
        .record
        .generations
        .push(recommendation.name.clone());
    info!(generation = %recommendation.name, took_ms = reindex.took_ms, "Recommendation generation built.");
    Ok(recommendation)
}
