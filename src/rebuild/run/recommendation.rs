//! Step 5: the recommendation generation. Loaded alongside the master
//! (`run.recommendation_build = "alongside"`, see `sink`), it is checked
//! here to hold as many documents as the master: its own count gate. Else,
//! or when that check finds it short (a live change replayed onto it was
//! refused there for good, say by a mapping only it has; 429s are waited
//! out by the replay itself, `live::replay`), it is built
//! now from the validated master generation by server-side `_reindex`
//! (followed through the tasks API) and checked the same way.

use anyhow::Context;
use tracing::{info, warn};

use super::RunContext;
use crate::rebuild::record::RunPhase;
use crate::search::{Generation, SearchError};

pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    alongside: Option<Generation>,
) -> anyhow::Result<Generation> {
    context.tracker.begin(RunPhase::Recommendation).await;
    if let Some(recommendation) = alongside {
        match context
            .engine
            .same_count_in_both(master, &recommendation)
            .await
        {
            Ok((docs, _)) => {
                info!(generation = %recommendation.name, docs, "Recommendation generation checked: as many documents as the master.");
                return Ok(recommendation);
            }
            Err(SearchError::Invalid(short)) => {
                warn!(
                    generation = %recommendation.name,
                    reason = %short,
                    "The recommendation generation loaded alongside does not hold what the master holds; building it again from the master by _reindex."
                );
                context
                    .engine
                    .delete_generation(&recommendation)
                    .await
                    .context("while deleting the recommendation generation that came out short")?;
                context
                    .tracker
                    .record
                    .generations
                    .retain(|g| g != &recommendation.name);
                context.tracker.record.recommendation_rebuilt = true;
            }
            Err(e) => {
                return Err(e).context(
                    "while checking the recommendation generation loaded alongside the master",
                )
            }
        }
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
