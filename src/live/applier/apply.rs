//! One batch, in this order: pass the handover's gate (pause while a run
//! swaps; hold what cannot be read; stop without writing), resolve and
//! write the changes (retried until they land: nothing is settled before),
//! journal them when the gate named a run (before any ack), then settle.
//! A batch handed back (a stop, a journal the run closed meanwhile) is
//! neither written further nor acked: the sources give it again.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::coalesce::survivors;
use super::readers::Incoming;
use super::settle::settle;
use crate::config::Settings;
use crate::domain::Change;
use crate::handover::{Gate, MongoHandover, NewEntry};
use crate::live::resolve::{resolve, Finder};
use crate::retry::RetryPolicy;
use crate::search::updates::{apply_updates_in_lanes, Target, UpdateResult};
use crate::search::SearchClient;
use crate::sources::connection::ConnectionSource;
use crate::sources::gmc::GmcSource;
use crate::sources::tcs::TcsAcks;
use crate::state::lease::Lease;
use crate::state::streams::StreamPositions;
use crate::telemetry::metric;

/// How often a paused applier looks at the marker.
const PAUSE_POLL: Duration = Duration::from_millis(100);

/// A batch given back unwritten or unacked: the applier restarts its
/// sources so the changes come again, in order.
#[derive(Debug, thiserror::Error)]
#[error("the batch was handed back to its sources: {0}")]
pub struct HandedBack(pub String);

/// Everything an active applier works with.
pub(super) struct Active<'a> {
    pub settings: &'a Settings,
    pub search: SearchClient,
    pub write_alias: String,
    pub gmc: GmcSource,
    /// The connection service's data, when the index keeps it.
    pub connection: Option<ConnectionSource>,
    pub handover: MongoHandover,
    pub positions: StreamPositions,
    pub acks: TcsAcks,
    pub retry: RetryPolicy,
    pub lease: &'a Lease,
    /// Names this applier's journal reservations (with a batch counter).
    pub holder: String,
    pub batches: u64,
}

impl Active<'_> {
    /// One batch: gate, write, journal, settle.
    pub async fn apply(
        &mut self,
        batch: Vec<Incoming>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let journal_for = self.pass_gate(stop).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let keep = survivors(&batch);
        let results = self.write(&batch, &keep, stop).await?;
        crate::failpoint::hit("live_written").await;
        if let Some(run_id) = journal_for {
            self.journal(&run_id, &batch, &keep, stop).await?;
        }
        settle(&self.acks, &self.positions, self.settings, batch, &results).await?;
        metrics::histogram!(metric::LIVE_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Waits until the gate lets the batch be written; the run to journal
    /// it for, if any.
    async fn pass_gate(&self, stop: &CancellationToken) -> anyhow::Result<Option<String>> {
        let mut waits = self.retry.endless_waits();
        let mut paused: Option<(String, Instant)> = None;
        loop {
            let lost = self.lease.lost_reason();
            match self
                .handover
                .gate(stop.is_cancelled(), lost.as_deref())
                .await
            {
                Gate::Write { journal_for } => {
                    if let Some((run_id, since)) = paused {
                        let secs = since.elapsed().as_secs_f64();
                        metrics::counter!(metric::LIVE_PAUSED_SECONDS)
                            .increment(secs.ceil() as u64);
                        info!(run_id = %run_id, paused_ms = (secs * 1000.0) as u64, "Live applier resumed.");
                    }
                    return Ok(journal_for);
                }
                Gate::Stop { reason } => return Err(anyhow!(HandedBack(reason))),
                Gate::Hold { reason } => {
                    let delay = waits.next().unwrap_or(self.retry.max_backoff);
                    warn!(reason = %reason, delay_ms = delay.as_millis() as u64, "Live applier: holding the batch (nothing written, nothing acked).");
                    sleep_or_stop(delay, stop).await;
                }
                Gate::Pause {
                    run_id,
                    acknowledge,
                } => {
                    if acknowledge {
                        match self.handover.acknowledge_pause(&run_id).await {
                            Ok(()) => info!(run_id = %run_id, "Live applier paused for the swap."),
                            Err(e) => {
                                warn!(error = %e, "Could not acknowledge the pause; looking again.")
                            }
                        }
                    }
                    paused.get_or_insert_with(|| (run_id, Instant::now()));
                    sleep_or_stop(PAUSE_POLL, stop).await;
                }
                Gate::Abandon { run_id } => {
                    if let Err(e) = self.handover.abandon(&run_id).await {
                        warn!(error = %e, "Could not mark the dead run's journal abandoned; looking again.");
                    }
                }
            }
        }
    }

    /// Resolves and writes the batch; the result of each change by batch
    /// position. A batch the live index itself refuses (a write block, a
    /// full disk) waits, unsettled, until the index takes it.
    async fn write(
        &self,
        batch: &[Incoming],
        keep: &[usize],
        stop: &CancellationToken,
    ) -> anyhow::Result<Vec<UpdateResult>> {
        let mut results = vec![UpdateResult::Unchanged; batch.len()];
        let (at, changes): (Vec<usize>, Vec<Change>) = keep
            .iter()
            .filter_map(|&i| batch[i].applied.as_ref().map(|a| (i, a.change.clone())))
            .unzip();
        let superseded = batch.iter().filter(|b| b.applied.is_some()).count() - changes.len();
        if superseded > 0 {
            metrics::counter!(metric::LIVE_COALESCED).increment(superseded as u64);
        }
        if changes.is_empty() {
            return Ok(results);
        }
        let updated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut waits = self.retry.endless_waits();
        let per_change = loop {
            let finder = Finder {
                search: &self.search,
                target: &self.write_alias,
            };
            let attempt = async {
                let resolved = resolve(
                    &self.gmc,
                    self.connection.as_ref(),
                    finder,
                    &changes,
                    &updated_at,
                )
                .await?;
                // Documents apart in concurrent requests, as the bulk
                // writer does: a flood's batches are many doctors.
                let report = apply_updates_in_lanes(
                    &self.search,
                    Target::Alias(&self.write_alias),
                    &resolved.items,
                    &updated_at,
                    &self.retry,
                    self.settings.bulk.concurrency,
                )
                .await?;
                match report.index_refusal() {
                    Some(reason) => Err(anyhow!(
                        "the live index refuses writes ({reason}); the changes wait, unsettled"
                    )),
                    None => Ok(resolved.per_change(report.results, changes.len())),
                }
            };
            match attempt.await {
                Ok(per_change) => break per_change,
                Err(e) => {
                    let delay = waits.next().unwrap_or(self.retry.max_backoff);
                    warn!(error = %format!("{e:#}"), delay_ms = delay.as_millis() as u64, "Live applier: writing the batch failed; trying again.");
                    if !sleep_or_stop(delay, stop).await {
                        return Err(anyhow!(HandedBack("stopped while writing".into())));
                    }
                }
            }
        };
        for (result, i) in per_change.into_iter().zip(&at) {
            results[*i] = result;
        }
        for change in &changes {
            metrics::counter!(metric::LIVE_APPLIED, "source" => change.kind()).increment(1);
        }
        Ok(results)
    }

    /// Journals the written batch for run `run_id` before anything is
    /// acked. Storage failures are retried with the same reservation; a
    /// refusal (the run paused, sealed or ended meanwhile) or a fence hands
    /// the batch back.
    async fn journal(
        &mut self,
        run_id: &str,
        batch: &[Incoming],
        keep: &[usize],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        // Coalesced as the write was: the survivor of each doctor and
        // source is its latest state, which is what a replay needs.
        let entries: Vec<NewEntry> = keep
            .iter()
            .filter_map(|&i| batch[i].applied.as_ref().map(|a| a.entry.clone()))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.batches += 1;
        let token = format!("{}:{}", self.holder, self.batches);
        let mut waits = self.retry.endless_waits();
        loop {
            match self.handover.journal(run_id, &token, &entries).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_answer() => {
                    return Err(anyhow!(HandedBack(format!(
                        "run {run_id} no longer takes journal entries ({e})"
                    ))))
                }
                Err(e) => {
                    let delay = waits.next().unwrap_or(self.retry.max_backoff);
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "Live applier: journaling failed; the batch waits unacked.");
                    if !sleep_or_stop(delay, stop).await {
                        return Err(anyhow!(HandedBack("stopped while journaling".into())));
                    }
                }
            }
        }
    }
}

/// Sleeps `delay`; false when `stop` came first.
pub(super) async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}
