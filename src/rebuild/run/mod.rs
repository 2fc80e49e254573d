//! The full rebuild run, as its steps (DESIGN §2), each in a module of its
//! own:
//!
//! 1. `cleanup`: take the single-flight lease, record the run, mark runs
//!    whose process died as abandoned, delete half-built generations of
//!    dead runs.
//! 2. `gmc_read`: ask TCS for a sync (it publishes into the queue while
//!    MongoDB works) and start reading GMC in a task of its own, beside
//!    the load: the latest recommendation outcome of every doctor by one
//!    aggregation, every doctor of `doctorsForDB` by one cursor, page by
//!    page into a compact shared store, and the connection data.
//! 3. `load`: create the master generation and, built alongside
//!    (`run.recommendation_build`, see `sink`), the recommendation
//!    generation, with their bulk writers, then
//!    - `tcs_merge`: consume the TCS records in batches from the start,
//!      join each with its GMC doctor, outcome and connection data in
//!      memory as soon as they are read (records of doctors not read yet
//!      wait, compactly), write (the record's precedence is the external
//!      version, so the best duplicate wins in any arrival order);
//!    - `settle`: ack each record's message once its document is written
//!      or superseded, dead-letter it if the document failed for good;
//!    - `gmc_only`: after `syncEnd` and the GMC read, write the doctors of
//!      `doctorsForDB` that TCS did not send, from memory.
//! 4. `validate`: restore the serving settings, count what is really
//!    there, replay the live changes made since the run began (`catchup`),
//!    run the gates.
//! 5. `recommendation`: check the recommendation generation holds as many
//!    documents as the master (or, with `reindex`, build it by `_reindex`
//!    now).
//! 6. `promote`: confirm the lease, pause the live applier and replay the
//!    last changes (`catchup`), move every alias in one `_aliases` call,
//!    resume the applier, apply retention.
//!
//! Memory holds the GMC side (about 50 bytes a doctor plus each distinct
//! field value once, see `sources::gmc::store`), the outcome map and the
//! seen set (a few tens of bytes a doctor), plus the TCS messages in
//! flight or waiting for their doctor (at most `rabbitmq.prefetch`: they
//! are unacked) and what the writers have in flight; never the TCS data
//! set. A run that fails at any point has moved no alias: only the
//! promotion moves them, in one request, after every check.

mod catchup;
mod cleanup;
mod connection_read;
mod gmc_only;
mod gmc_read;
mod load;
mod promote;
mod recommendation;
mod settle;
mod sink;
mod tcs_merge;
mod tracker;
mod validate;

use anyhow::{anyhow, Context};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use super::engine::Engine;
use super::progress::Progress;
use super::record::{new_run_id, RunHistory, RunOutcome, RunRecord, Trigger};
use super::{is_abort, is_refusal, Aborted};
use crate::config::Settings;
use crate::handover::{Handover, MongoStore};
use crate::retry::RetryPolicy;
use crate::sources::mongo_client;
use crate::state::lease::Lease;
pub(crate) use cleanup::take_lease;
use tracker::Tracker;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Build and validate, do not promote.
    pub dry_run: bool,
    /// Let the `share_of_previous`, drift and `green` gates be overridden.
    pub force: bool,
    pub trigger: Trigger,
    /// Progress bars on stderr when it is a terminal (else log lines).
    pub bars: bool,
    /// Use this run id instead of a new one.
    pub run_id: Option<String>,
    /// Cancelling it stops the run at its next safe point, recorded as
    /// `aborted` (SIGTERM of the service, Ctrl-C of `rebuilder run`).
    pub cancel: CancellationToken,
}

/// What one run works with, handed from step to step.
struct RunContext<'a> {
    settings: &'a Settings,
    options: &'a RunOptions,
    lease: &'a Lease,
    engine: Engine,
    mongo: mongodb::Client,
    progress: Progress,
    retry: RetryPolicy,
    tracker: Tracker,
    catch_up: catchup::CatchUp,
    /// Set when OpenSearch refuses the new generation itself (see `settle`).
    halt: settle::Halt,
}

impl RunContext<'_> {
    fn run_id(&self) -> String {
        self.tracker.record.id.clone()
    }

    /// The check at every safe point: fails when the lease was lost (the run
    /// must stop before it writes anything another run may write too) or
    /// when the run was asked to stop.
    fn check_continue(&self) -> anyhow::Result<()> {
        if let Some(reason) = self.lease.lost_reason() {
            return Err(anyhow!("the lease was lost mid-run: {reason}"));
        }
        if let Some(cause) = self.halt.reason() {
            return Err(anyhow!("{cause}"));
        }
        if self.options.cancel.is_cancelled() {
            return Err(anyhow!(Aborted(
                "asked to stop; stopped at a safe point".into()
            )));
        }
        Ok(())
    }

    /// `work`, unless the run is asked to stop first.
    async fn cancellable<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::select! {
            done = work => done,
            _ = self.options.cancel.cancelled() => Err(anyhow!(Aborted(
                "asked to stop; stopped while waiting for a server".into()
            ))),
        }
    }
}

/// A run that holds the lease and is recorded as running: what
/// [`start_run`] gives, so that a caller (the service) can answer with its
/// id before the work is done.
pub struct StartedRun {
    settings: Settings,
    options: RunOptions,
    mongo: mongodb::Client,
    lease: Lease,
    tracker: Tracker,
}

/// Takes the lease and records the run as running. A held lease is an
/// error carrying [`Refused`](crate::rebuild::Refused) and
/// [`LeaseHeld`](crate::rebuild::LeaseHeld) naming the holder; the refused
/// attempt is recorded too.
pub async fn start_run(settings: &Settings, options: RunOptions) -> anyhow::Result<StartedRun> {
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let mongo = mongo_client(&settings.mongodb)
        .await
        .context("while connecting to MongoDB")?;
    let history = RunHistory::new(&mongo, &settings.mongodb);
    let record = RunRecord::start(&run_id, options.trigger, options.dry_run, options.force);
    let mut tracker = Tracker::new(history, record);
    let lease = match cleanup::take_lease(settings, &mongo, &run_id).await {
        Ok(lease) => lease,
        Err(error) => {
            let outcome = if is_refusal(&error) {
                RunOutcome::Refused
            } else {
                RunOutcome::Failed
            };
            tracker.record.finish(outcome, Some(format!("{error:#}")));
            tracker.save_now().await;
            return Err(error);
        }
    };
    tracker.save_now().await;
    info!(run_id = %run_id, trigger = %options.trigger, dry_run = options.dry_run, "Rebuild started.");
    Ok(StartedRun {
        settings: settings.clone(),
        options,
        mongo,
        lease,
        tracker,
    })
}

/// Runs one rebuild from start to end and returns its record. A held lease
/// or a failed gate is an error carrying [`Refused`](crate::rebuild::Refused);
/// every run, refused ones included, is recorded.
pub async fn run_rebuild(settings: &Settings, options: RunOptions) -> anyhow::Result<RunRecord> {
    start_run(settings, options).await?.finish().await
}

impl StartedRun {
    pub fn id(&self) -> &str {
        &self.tracker.record.id
    }

    /// Does the work, records how it ended and releases the lease. Every
    /// log line of the run carries its `run_id`.
    pub async fn finish(self) -> anyhow::Result<RunRecord> {
        let span = info_span!("run", run_id = %self.tracker.record.id);
        self.finish_in_span().instrument(span).await
    }

    async fn finish_in_span(self) -> anyhow::Result<RunRecord> {
        let StartedRun {
            settings,
            options,
            mongo,
            lease,
            mut tracker,
        } = self;
        let run_id = tracker.record.id.clone();
        let result = match Engine::new(&settings)
            .await
            .context("while connecting to OpenSearch")
        {
            Ok(engine) => {
                let mut context = RunContext {
                    settings: &settings,
                    options: &options,
                    lease: &lease,
                    engine,
                    mongo: mongo.clone(),
                    progress: if options.bars {
                        Progress::for_stderr()
                    } else {
                        Progress::logs()
                    },
                    retry: RetryPolicy::new(&settings.retry),
                    tracker,
                    catch_up: catchup::CatchUp {
                        handover: Handover::new(MongoStore::new(&mongo, &settings.mongodb)),
                        seq: 0,
                    },
                    halt: settle::Halt::default(),
                };
                let result = execute(&mut context).await;
                // The journal is bounded by the run, whatever its outcome.
                catchup::end(&context.catch_up.handover, &run_id).await;
                if result.is_err() {
                    // Nothing moved; delete what this run half-built, best
                    // effort (the next run would delete it anyway).
                    cleanup::delete_own_half_built(&context.engine, &run_id).await;
                }
                tracker = context.tracker;
                result
            }
            Err(e) => Err(e),
        };
        let outcome = outcome_of(&result);
        tracker
            .record
            .finish(outcome, result.as_ref().err().map(|e| format!("{e:#}")));
        tracker.save_now().await;
        if let Err(e) = lease.release().await {
            warn!(error = %e, "Could not release the lease; it expires by itself.");
        }
        let record = tracker.record;
        info!(
            run_id = %record.id,
            outcome = %record.outcome,
            secs = record.duration_ms() / 1000,
            docs = record.counts.docs_expected,
            "Rebuild ended."
        );
        result.map(|_| record)
    }
}

/// The steps, in order; each records its phase.
async fn execute(context: &mut RunContext<'_>) -> anyhow::Result<RunOutcome> {
    cleanup::run(context).await?;
    context.check_continue()?;
    let (sync, reading) = gmc_read::start(context).await?;
    let master = match load::create_master(context).await {
        Ok(master) => master,
        Err(e) => {
            sync.close().await;
            return Err(e);
        }
    };
    let alongside = match load::create_recommendation(context, &master).await {
        Ok(alongside) => alongside,
        Err(e) => {
            sync.close().await;
            return Err(e);
        }
    };
    let (loaded, queue_batches) =
        load::run(context, &master, alongside.as_ref(), sync, reading).await?;
    // Every document is written (or counted as failed): the services'
    // batches that carried them may go (queue modes only).
    queue_batches.ack_written().await;
    context.check_continue()?;
    let gates = validate::run(context, &master, alongside.as_ref(), loaded).await?;
    context.check_continue()?;
    let recommendation = recommendation::run(context, &master, alongside).await?;
    if context.options.dry_run {
        info!(master = %master.name, recommendation = %recommendation.name, "Dry run: built and validated, not promoted.");
        return Ok(RunOutcome::DryRun);
    }
    // The last safe point: from here on the run promotes, and finishes.
    context.check_continue()?;
    promote::run(context, &master, &recommendation, &gates).await?;
    Ok(RunOutcome::Succeeded)
}

/// How a run that ended with `result` is recorded.
fn outcome_of(result: &anyhow::Result<RunOutcome>) -> RunOutcome {
    match result {
        Ok(outcome) => *outcome,
        Err(e) if is_abort(e) => RunOutcome::Aborted,
        Err(e) if is_refusal(e) => RunOutcome::Refused,
        Err(_) => RunOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebuild::Refused;

    #[test]
    fn a_run_is_recorded_as_refused_only_when_refused_on_purpose() {
        assert_eq!(
            outcome_of(&Ok::<_, anyhow::Error>(RunOutcome::DryRun)),
            RunOutcome::DryRun
        );
        let refused: anyhow::Result<RunOutcome> =
            Err(anyhow!(Refused("the lease is held".into()))).context("while starting");
        assert_eq!(outcome_of(&refused), RunOutcome::Refused);
        let broken: anyhow::Result<RunOutcome> = Err(anyhow!("OpenSearch answered 500"));
        assert_eq!(outcome_of(&broken), RunOutcome::Failed);
        let stopped: anyhow::Result<RunOutcome> =
            Err(anyhow!(Aborted("asked to stop".into()))).context("while loading");
        assert_eq!(outcome_of(&stopped), RunOutcome::Aborted);
    }
}
