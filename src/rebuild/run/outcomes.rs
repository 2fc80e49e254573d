//! Step 2: ask TCS for a full sync, then load the latest recommendation
//! outcome of every doctor with one aggregation. TCS is asked first so that
//! it publishes (into the queue, up to the prefetch into our consumer,
//! nothing acked) while MongoDB aggregates; the two used to run one after
//! the other. The aggregation is read whole before anything is written, so
//! it never waits on OpenSearch; a transient MongoDB failure restarts it.

use anyhow::Context;

use super::RunContext;
use crate::rebuild::record::RunPhase;
use crate::retry::with_retry;
use crate::sources::gmc::{GmcSource, OutcomeLoad, OutcomeMap};
use crate::sources::tcs::TcsSync;

/// Reject keys of recommendations that give no usable outcome.
pub(super) const REJECT_RECOMMENDATION_NUMBER: &str = "recommendation_unusable_gmc_number";
pub(super) const REJECT_RECOMMENDATION_OUTCOME: &str = "recommendation_unknown_outcome";

/// What the load reads from: the sync in progress, the GMC collections and
/// the outcomes.
pub(super) struct Sources {
    pub sync: TcsSync,
    pub gmc: GmcSource,
    pub outcomes: OutcomeMap,
}

impl Sources {
    /// Gives up the sync: messages not acked go back to the queue (the next
    /// run discards them).
    pub async fn abandon(self) {
        self.sync.close().await;
    }
}

pub(super) async fn run(context: &mut RunContext<'_>) -> anyhow::Result<Sources> {
    context.tracker.begin(RunPhase::Outcomes).await;
    let sync = TcsSync::start(&context.settings.rabbitmq)
        .await
        .context("while starting the TCS sync")?;
    context.tracker.record.counts.tcs_stale_discarded = sync.purged_stale;
    let mut gmc = GmcSource::new(&context.mongo, &context.settings.mongodb);
    let loaded = context
        .cancellable(async {
            let numeric = with_retry(
                &context.retry,
                "the look at the ids of doctorsForDB",
                || gmc.has_numeric_ids(),
            )
            .await
            .context("while looking at the ids of doctorsForDB")?;
            gmc.set_numeric_ids(numeric);
            with_retry(&context.retry, "the outcome aggregation", || {
                gmc.latest_outcomes()
            })
            .await
            .context("while loading the latest recommendation outcomes")
        })
        .await;
    let (outcomes, load) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            sync.close().await;
            return Err(e);
        }
    };
    record_outcomes(&mut context.tracker.record, &outcomes, &load);
    tracing::info!(
        doctors = outcomes.len(),
        groups = load.groups,
        unknown_outcomes = load.unknown_outcomes,
        "Loaded the latest recommendation outcomes."
    );
    Ok(Sources {
        sync,
        gmc,
        outcomes,
    })
}

fn record_outcomes(
    record: &mut crate::rebuild::record::RunRecord,
    outcomes: &OutcomeMap,
    load: &OutcomeLoad,
) {
    record.counts.gmc_outcomes = outcomes.len() as u64;
    record.reject_many(REJECT_RECOMMENDATION_NUMBER, load.unusable_numbers);
    record.reject_many(REJECT_RECOMMENDATION_OUTCOME, load.unknown_outcomes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GmcNumber, GmcStatus};
    use crate::rebuild::record::{RunRecord, Trigger};

    #[test]
    fn unusable_recommendations_are_counted_as_rejects_and_clean_loads_add_none() {
        let mut record = RunRecord::start("r", Trigger::Cli, false, false);
        let mut outcomes = OutcomeMap::new();
        outcomes.insert(&GmcNumber::parse("1").unwrap(), GmcStatus::Approved);
        let load = OutcomeLoad {
            groups: 3,
            unknown_outcomes: 1,
            unusable_numbers: 1,
        };
        record_outcomes(&mut record, &outcomes, &load);
        assert_eq!(record.counts.gmc_outcomes, 1);
        assert_eq!(record.rejects[REJECT_RECOMMENDATION_NUMBER], 1);
        assert_eq!(record.rejects[REJECT_RECOMMENDATION_OUTCOME], 1);

        let mut clean = RunRecord::start("r", Trigger::Cli, false, false);
        record_outcomes(&mut clean, &outcomes, &OutcomeLoad::default());
        assert!(clean.rejects.is_empty());
    }
}
