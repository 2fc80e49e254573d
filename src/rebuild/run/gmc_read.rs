//! Step 2: ask TCS for a full sync, then read GMC once: the latest
//! recommendation outcome of every doctor (one aggregation) and every
//! doctor of `doctorsForDB` (one cursor in `_id` order) into memory, the
//! two reads at once. TCS is asked first, so that it publishes into the
//! queue while MongoDB works (nothing is consumed, nor acked, yet). Neither
//! read waits on OpenSearch; a transient MongoDB failure restarts the read
//! that saw it.
//!
//! With `gmc.source = "queue"` the GMC side comes from the recommendation
//! service's batches instead (`sources::gmc::queue`), into the same maps,
//! still while TCS publishes; the batches stay unacked until the load has
//! written their documents ([`QueueBatches`]).
//!
//! Beside either, the connection service's data is read once
//! ([`super::connection_read`]).

use std::sync::Mutex;

use anyhow::Context;

use super::{connection_read, RunContext};
use crate::config::GmcSourceKind;
use crate::rebuild::record::RunPhase;
use crate::retry::with_retry;
use crate::sources::connection::ConnectionMap;
use crate::sources::gmc::{
    read_over_queue, DoctorRead, DoctorStore, GmcSource, OutcomeLoad, OutcomeMap,
};
use crate::sources::index_sync::PendingBatches;
use crate::sources::tcs::TcsSync;

/// Reject keys of recommendations that give no usable outcome.
pub(super) const REJECT_RECOMMENDATION_NUMBER: &str = "recommendation_unusable_gmc_number";
pub(super) const REJECT_RECOMMENDATION_OUTCOME: &str = "recommendation_unknown_outcome";

/// What the load reads from: the sync in progress and the GMC side, read.
pub(super) struct Sources {
    pub sync: TcsSync,
    pub outcomes: OutcomeMap,
    pub doctors: DoctorStore,
    pub connections: ConnectionMap,
}

impl Sources {
    /// Gives up the sync: messages not acked go back to the queue (the next
    /// run discards them).
    pub async fn abandon(self) {
        self.sync.close().await;
    }
}

/// The services' batches of the queue reads (GMC, connection logs, hidden
/// discrepancies), unacked until the load has written their documents
/// (nothing to ack for MongoDB reads).
#[derive(Default)]
pub(super) struct QueueBatches(Vec<PendingBatches>);

impl QueueBatches {
    /// The load has written every document: ack the batches that carried them.
    pub async fn ack_written(self) {
        for pending in self.0 {
            pending.ack_written().await;
        }
    }

    /// The run failed: give the batches back (the next run discards them).
    pub async fn abandon(self) {
        for pending in self.0 {
            pending.abandon().await;
        }
    }
}

pub(super) async fn run(context: &mut RunContext<'_>) -> anyhow::Result<(Sources, QueueBatches)> {
    context.tracker.begin(RunPhase::GmcRead).await;
    let sync = TcsSync::start(&context.settings.rabbitmq, context.retry)
        .await
        .context("while starting the TCS sync")?;
    context.tracker.record.counts.tcs_stale_discarded = sync.purged_stale;
    let connections = connection_read::start(context);
    if context.settings.gmc.source == GmcSourceKind::Queue {
        let read = match read_queue(context).await {
            Ok((outcomes, doctors, pending)) => {
                match connection_read::finish(context, connections).await {
                    Ok((connections, mut batches)) => {
                        batches.insert(0, pending);
                        Ok((outcomes, doctors, connections, QueueBatches(batches)))
                    }
                    Err(e) => {
                        pending.abandon().await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        return match read {
            Ok((outcomes, doctors, connections, batches)) => Ok((
                Sources {
                    sync,
                    outcomes,
                    doctors,
                    connections,
                },
                batches,
            )),
            Err(e) => {
                sync.close().await;
                Err(e)
            }
        };
    }
    let gmc = GmcSource::new(&context.mongo, &context.settings.mongodb).with_retry(context.retry);
    let expected = gmc.estimated_doctors().await.ok();
    let progress = Mutex::new(
        context
            .progress
            .phase(RunPhase::GmcRead, "doctors", expected),
    );
    let expected = expected.unwrap_or(0) as usize;
    let outcomes = with_retry(&context.retry, "the outcome aggregation", || {
        gmc.latest_outcomes()
    });
    let doctors = with_retry(&context.retry, "the read of doctorsForDB", || {
        gmc.read_doctors(expected, |n| {
            progress.lock().expect("progress").inc(n as u64)
        })
    });
    let read = context
        .cancellable(async {
            let (outcomes, doctors) = tokio::join!(outcomes, doctors);
            let outcomes = outcomes.context("while loading the latest recommendation outcomes")?;
            let doctors = doctors.context("while reading doctorsForDB")?;
            Ok((outcomes, doctors))
        })
        .await;
    progress.into_inner().expect("progress").finish();
    let read = match read {
        Ok(read) => connection_read::finish(context, connections)
            .await
            .map(|c| (read, c)),
        Err(e) => Err(e),
    };
    let (((outcomes, load), read), (connections, batches)) = match read {
        Ok(read) => read,
        Err(e) => {
            sync.close().await;
            return Err(e);
        }
    };
    record_outcomes(&mut context.tracker.record, &outcomes, &load);
    record_doctors(&mut context.tracker.record, &read);
    tracing::info!(
        doctors = read.doctors.len(),
        distinct_values = read.doctors.distinct_values(),
        outcomes = outcomes.len(),
        groups = load.groups,
        unknown_outcomes = load.unknown_outcomes,
        "Read GMC: the doctors and their latest recommendation outcomes."
    );
    Ok((
        Sources {
            sync,
            outcomes,
            doctors: read.doctors,
            connections,
        },
        QueueBatches(batches),
    ))
}

/// The GMC side over the recommendation service's queue (see the module notes).
async fn read_queue(
    context: &mut RunContext<'_>,
) -> anyhow::Result<(OutcomeMap, DoctorStore, PendingBatches)> {
    let progress = Mutex::new(context.progress.phase(RunPhase::GmcRead, "doctors", None));
    let read = context
        .cancellable(async {
            read_over_queue(&context.settings.rabbitmq, &context.settings.gmc, |n| {
                progress.lock().expect("progress").inc(n as u64)
            })
            .await
            .context("while reading GMC from the recommendation service's queue")
        })
        .await;
    progress.into_inner().expect("progress").finish();
    let read = read?;
    let record = &mut context.tracker.record;
    record.counts.gmc_stale_discarded = read.purged_stale;
    record_outcomes(record, &read.outcomes, &read.load);
    record_doctors(record, &read.doctors);
    tracing::info!(
        doctors = read.doctors.doctors.len(),
        distinct_values = read.doctors.doctors.distinct_values(),
        outcomes = read.outcomes.len(),
        batches = read.batches,
        unknown_outcomes = read.load.unknown_outcomes,
        "Read GMC from the recommendation service: the doctors and their latest outcomes."
    );
    Ok((read.outcomes, read.doctors.doctors, read.pending))
}

fn record_doctors(record: &mut crate::rebuild::record::RunRecord, read: &DoctorRead) {
    record.counts.gmc_doctors = read.rows;
    record.counts.gmc_read_resumes = read.resumes;
    for (reason, n) in &read.rejects {
        record.reject_many(reason, *n);
    }
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
