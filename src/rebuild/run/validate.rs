//! Step 4: finish the load and validate. The serving settings come back
//! and the generation is refreshed; the documents that failed for good are
//! looked up (a duplicate of the same doctor may have been written instead);
//! the live changes made since the run began are replayed (`catchup`), and
//! with the documents they created or removed that gives the count the
//! generation must hold; then every gate runs. A failed gate refuses the
//! run: no alias moves.

use anyhow::{anyhow, Context};
use serde_json::json;
use tracing::warn;

use super::load::Loaded;
use super::RunContext;
use crate::rebuild::gates::GateReport;
use crate::rebuild::record::RunPhase;
use crate::rebuild::Refused;
use crate::search::Generation;

/// `alongside` is the recommendation generation when it was loaded with
/// the master: it is finished and caught up with it.
pub(super) async fn run(
    context: &mut RunContext<'_>,
    master: &Generation,
    alongside: Option<&Generation>,
    loaded: Loaded,
) -> anyhow::Result<GateReport> {
    context.tracker.begin(RunPhase::FinishLoad).await;
    let mut loaded_generations = vec![master];
    loaded_generations.extend(alongside);
    for generation in &loaded_generations {
        context
            .engine
            .finish_load(generation)
            .await
            .with_context(|| {
                format!(
                    "while restoring the serving settings of {}",
                    generation.name
                )
            })?;
    }
    let absent = absent_count(context, master, &loaded.failed_ids).await?;
    let net = super::catchup::rounds(context, &loaded_generations).await?;
    let expected = (loaded.doctors.saturating_sub(absent) as i64 + net).max(0) as u64;
    context.tracker.record.counts.docs_expected = expected;
    let counts = serde_json::to_value(&context.tracker.record.counts)?;
    if let Err(e) = context
        .engine
        .set_source_counts(master, json!({"run": context.run_id(), "counts": counts}))
        .await
    {
        warn!(error = %e, "Could not record the source counts in the generation.");
    }

    context.tracker.begin(RunPhase::Validate).await;
    let gates = context
        .engine
        .validate(
            master,
            expected,
            &context.tracker.record.bulk,
            context.options.force,
        )
        .await;
    context.tracker.record.gates = gates.gates.clone();
    if !gates.passed() {
        return Err(anyhow!(Refused(format!(
            "validation failed, no alias moved: {}",
            gates.summary()
        ))));
    }
    Ok(gates)
}

/// How many of the documents that failed for good are really absent from
/// the generation.
async fn absent_count(
    context: &RunContext<'_>,
    master: &Generation,
    failed_ids: &[String],
) -> anyhow::Result<u64> {
    let distinct = distinct_ids(failed_ids);
    if distinct.is_empty() {
        return Ok(0);
    }
    let query = json!({"ids": {"values": distinct}});
    let present = context
        .engine
        .count(&master.name, Some(&query))
        .await
        .context("while counting the documents that failed")?;
    Ok((distinct.len() as u64).saturating_sub(present))
}

fn distinct_ids(ids: &[String]) -> Vec<&String> {
    let mut distinct: Vec<&String> = ids.iter().collect();
    distinct.sort();
    distinct.dedup();
    distinct
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doctor_that_failed_twice_is_looked_up_once() {
        let ids = vec!["2".to_string(), "1".to_string(), "2".to_string()];
        assert_eq!(distinct_ids(&ids), vec!["1", "2"]);
        assert!(distinct_ids(&[]).is_empty());
    }
}
