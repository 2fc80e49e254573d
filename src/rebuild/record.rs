//! The record of one run: what started it, its phases and their
//! durations, counts per source, merged counts, the bulk writer's figures,
//! rejects by reason, gate verdicts, the generations it built, what the
//! promotion moved, and its outcome. The run writes it as it goes (the
//! state layer stores it), so `status` and the service read a live run.
//!
//! Times are fixed-width UTC text (`2025-01-31T23:59:59.123Z`) so the same
//! record reads the same in MongoDB, in `status --json` and in logs; run
//! ids start with their UTC start time, so ids sort by age.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::engine::PromotionReport;
use super::gates::GateVerdict;
use crate::search::BulkStats;
use crate::state::lease::LeaseRecord;
use crate::state::now_text;

/// The stored history of runs (see `state::history`).
pub type RunHistory = crate::state::history::RunHistory<RunRecord>;

/// What started a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    Cli,
    Schedule,
    Http,
}

impl Trigger {
    pub const ALL: [Trigger; 3] = [Trigger::Cli, Trigger::Schedule, Trigger::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Cli => "cli",
            Trigger::Schedule => "schedule",
            Trigger::Http => "http",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown trigger {s:?}; expected one of cli, schedule, http"))
    }
}

/// The steps of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    /// Delete half-built generations of dead runs.
    Cleanup,
    /// Read GMC into memory: the latest recommendation outcome per doctor
    /// and every doctor of `doctorsForDB` (runs before this build recorded
    /// a phase `outcomes` here, the aggregation alone).
    #[serde(alias = "outcomes")]
    GmcRead,
    /// Consume the TCS sync, merge with GMC doctors, write.
    TcsMerge,
    /// Write the GMC doctors TCS did not send.
    GmcOnly,
    /// Wait for the last writes, restore serving settings, refresh.
    FinishLoad,
    /// Replay the live changes made since the run began onto the new generation.
    CatchUp,
    Validate,
    /// Build the recommendation generation with `_reindex`.
    Recommendation,
    /// Move every alias in one call.
    Promote,
    Retention,
}

impl RunPhase {
    pub const ALL: [RunPhase; 10] = [
        RunPhase::Cleanup,
        RunPhase::GmcRead,
        RunPhase::TcsMerge,
        RunPhase::GmcOnly,
        RunPhase::FinishLoad,
        RunPhase::CatchUp,
        RunPhase::Validate,
        RunPhase::Recommendation,
        RunPhase::Promote,
        RunPhase::Retention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunPhase::Cleanup => "cleanup",
            RunPhase::GmcRead => "gmc_read",
            RunPhase::TcsMerge => "tcs_merge",
            RunPhase::GmcOnly => "gmc_only",
            RunPhase::FinishLoad => "finish_load",
            RunPhase::CatchUp => "catch_up",
            RunPhase::Validate => "validate",
            RunPhase::Recommendation => "recommendation",
            RunPhase::Promote => "promote",
            RunPhase::Retention => "retention",
        }
    }
}

impl fmt::Display for RunPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = RunPhase::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown phase {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// How a run ended (or that it has not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    #[default]
    Running,
    Succeeded,
    /// Built and validated, not promoted (`--dry-run`).
    DryRun,
    Failed,
    /// Refused on purpose: the lease was held, or a gate failed.
    Refused,
    /// Its process died; a later run found it still marked running.
    Abandoned,
    /// Stopped at a safe point on request (SIGTERM, Ctrl-C); nothing moved.
    Aborted,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::DryRun => "dry_run",
            RunOutcome::Failed => "failed",
            RunOutcome::Refused => "refused",
            RunOutcome::Abandoned => "abandoned",
            RunOutcome::Aborted => "aborted",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One phase of a run: when it started and, once done, how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord {
    pub phase: RunPhase,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// What each source delivered and what the merge made of it (the bulk
/// writer's own figures are in [`RunRecord::bulk`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RunCounts {
    /// Messages received on the sync-data queue (records, rejects, syncEnd).
    pub tcs_messages: u64,
    /// Usable TCS records.
    pub tcs_records: u64,
    /// TCS records for a GMC number already received in this sync.
    pub tcs_duplicates: u64,
    /// Messages of an earlier sync discarded from the queue at the start.
    pub tcs_stale_discarded: u64,
    /// Times the connection to RabbitMQ was lost mid-sync and opened again.
    pub tcs_reconnects: u64,
    /// Messages the broker gave again after a lost connection (records
    /// already taken are not counted again as records or duplicates).
    pub tcs_redelivered: u64,
    /// Batches of an earlier GMC sync over the queue discarded at the start.
    pub gmc_stale_discarded: u64,
    /// Batches of earlier connection-service syncs over the queues
    /// discarded at the start.
    pub connection_stale_discarded: u64,
    /// Doctors with a latest recommendation outcome.
    pub gmc_outcomes: u64,
    /// Usable documents read from `doctorsForDB`.
    pub gmc_doctors: u64,
    /// Times the read of `doctorsForDB` left its cursor (MongoDB gone away,
    /// or a stalled writer) and resumed after the last id read.
    pub gmc_read_resumes: u64,
    /// Distinct doctors from TCS that GMC also holds.
    pub merged_both: u64,
    /// Distinct doctors from TCS only.
    pub merged_tcs_only: u64,
    /// Doctors from GMC only.
    pub merged_gmc_only: u64,
    /// Distinct documents sent to the index (the count it must hold).
    pub docs_expected: u64,
    /// Usable connection logs read from the connection service.
    pub connection_logs: u64,
    /// Usable hidden discrepancies read from the connection service.
    pub hidden_discrepancies: u64,
    /// Hidden discrepancies for a designated body that had already hidden
    /// the doctor (the first stays).
    pub hidden_same_body: u64,
    /// Doctors with connection data but in neither TCS nor GMC: no
    /// document is made for them.
    pub connection_orphans: u64,
    /// Most TCS records held at once waiting for their GMC doctor to be
    /// read (the merge runs while GMC is read; the prefetch bounds it).
    pub tcs_waiting_peak: u64,
    /// Their message bytes at that peak, the waiting records' memory.
    pub tcs_waiting_peak_bytes: u64,
}

/// What the catch-up of live changes did (see `rebuild::run::catchup`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CatchUpReport {
    /// Whether a live applier was active when the run began (without one,
    /// changes wait in their queue and streams and reach the index later).
    pub applier_active: bool,
    /// Live changes replayed onto the new generation, in all.
    pub replayed: u64,
    /// Journaled changes passed over for a later change of the same doctor
    /// and source (coalesced, not written).
    pub coalesced: u64,
    /// Catch-up rounds before validation.
    pub rounds: u32,
    /// Changes left in the journal when the applier paused for the swap.
    pub backlog_at_pause: u64,
    /// How long the applier stayed paused around the swap.
    pub paused_ms: u64,
    /// Replayed changes refused for good.
    pub failed: u64,
    /// The applier did not say it paused within `live.pause_timeout_secs`;
    /// the run sealed the journal without it (the seal fences the batch it
    /// had in hand: that batch is not acked and comes again).
    pub pause_timed_out: bool,
    /// Journal entries reserved before the seal that never came, voided
    /// (their changes are not acked and come again from their sources).
    pub voided: u64,
}

/// Documents written (and superseded) by the bulk writer `at_ms` after the
/// run started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressPoint {
    pub at_ms: u64,
    pub written: u64,
}

/// The most progress points a record keeps.
const MAX_PROGRESS_POINTS: usize = 500;

/// One run, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RunRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub trigger: Trigger,
    pub host: String,
    pub pid: u32,
    pub dry_run: bool,
    pub force: bool,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    pub outcome: RunOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The phase in progress, while the run lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    pub phases: Vec<PhaseRecord>,
    pub counts: RunCounts,
    /// The bulk writer's figures: live while the load runs, final after.
    pub bulk: BulkStats,
    /// The figures of the bulk writer into the recommendation generation,
    /// when it is loaded alongside the master (`run.recommendation_build =
    /// "alongside"`; all zero with `"reindex"`): the same documents, so
    /// the same `docs`; a duplicate's order can differ between the two
    /// streams, so `written` and `superseded` can too.
    pub recommendation_bulk: BulkStats,
    /// The recommendation generation loaded alongside held fewer documents
    /// than the master after the catch-up (a live change refused there for
    /// good), so it was built again from the master by `_reindex`.
    pub recommendation_rebuilt: bool,
    /// The live changes replayed onto the new generation.
    pub catch_up: CatchUpReport,
    /// Rejected inputs by reason key (both sources).
    pub rejects: BTreeMap<String, u64>,
    pub gates: Vec<GateVerdict>,
    /// Generations this run built.
    pub generations: Vec<String>,
    /// Half-built generations of dead runs this run deleted.
    pub orphans_deleted: Vec<String>,
    /// What the promotion moved, once it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionReport>,
    /// Old generations retention deleted after the promotion.
    pub retention_deleted: Vec<String>,
    /// Documents written over time, one point at each save (every few
    /// seconds), thinned to at most 500 points: the page's chart.
    pub progress: Vec<ProgressPoint>,
    /// When the record was last written.
    pub updated_at: String,
}

impl RunRecord {
    /// Whether this run is running now: recorded as running, and holding
    /// the rebuild lease unexpired (a run whose process died still reads
    /// "running" in the history until the next run marks it abandoned).
    /// The one rule behind `status`, `/api/status` and `/metrics`.
    pub fn is_running(&self, rebuild_lease: Option<&LeaseRecord>) -> bool {
        self.outcome == RunOutcome::Running
            && rebuild_lease.is_some_and(|l| !l.expired && l.holder.run_id == self.id)
    }

    /// A new running record for `id`.
    pub fn start(id: &str, trigger: Trigger, dry_run: bool, force: bool) -> Self {
        let now = now_text();
        Self {
            id: id.to_string(),
            trigger,
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid: std::process::id(),
            dry_run,
            force,
            started_at: now.clone(),
            updated_at: now,
            ..Self::default()
        }
    }

    /// Closes the running phase (if any) and opens `phase`.
    pub fn begin_phase(&mut self, phase: RunPhase) {
        self.end_phase();
        self.phase = Some(phase);
        self.phases.push(PhaseRecord {
            phase,
            started_at: now_text(),
            duration_ms: None,
        });
    }

    /// Records the duration of the running phase.
    pub fn end_phase(&mut self) {
        if let Some(open) = self.phases.last_mut().filter(|p| p.duration_ms.is_none()) {
            open.duration_ms = Some(elapsed_ms(&open.started_at));
        }
        self.phase = None;
    }

    /// Ends the run with an outcome (and the error that caused it).
    pub fn finish(&mut self, outcome: RunOutcome, error: Option<String>) {
        self.end_phase();
        self.outcome = outcome;
        self.error = error;
        self.ended_at = Some(now_text());
    }

    pub fn reject(&mut self, reason: &str) {
        self.reject_many(reason, 1);
    }

    /// Counts `n` rejects of one reason (nothing when `n` is 0).
    pub fn reject_many(&mut self, reason: &str, n: u64) {
        if n > 0 {
            *self.rejects.entry(reason.to_string()).or_default() += n;
        }
    }

    /// Adds a progress point for now; past the limit, every other old
    /// point goes, so a long run keeps its whole curve at a coarser step.
    pub fn sample_progress(&mut self) {
        let point = ProgressPoint {
            at_ms: self.duration_ms(),
            written: self.bulk.written + self.bulk.superseded,
        };
        self.push_progress(point);
    }

    fn push_progress(&mut self, point: ProgressPoint) {
        if self.progress.last().is_some_and(|p| p.at_ms == point.at_ms) {
            return;
        }
        self.progress.push(point);
        if self.progress.len() > MAX_PROGRESS_POINTS {
            let last = self.progress.len() - 1;
            let mut i = 0;
            self.progress.retain(|_| {
                let keep = i % 2 == 0 || i == last;
                i += 1;
                keep
            });
        }
    }

    /// Stamps `updated_at` before the record is saved.
    pub fn touch(&mut self) {
        self.updated_at = now_text();
    }

    /// Milliseconds since the start, or the whole run once it ended.
    pub fn duration_ms(&self) -> u64 {
        match &self.ended_at {
            Some(end) => ms_between(&self.started_at, end),
            None => elapsed_ms(&self.started_at),
        }
    }
}

fn parse_time(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

fn elapsed_ms(since: &str) -> u64 {
    ms_between(since, &now_text())
}

fn ms_between(from: &str, to: &str) -> u64 {
    match (parse_time(from), parse_time(to)) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(0) as u64,
        _ => 0,
    }
}

pub use crate::handover::new_run_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_keeps_its_whole_curve_within_the_limit() {
        let mut run = RunRecord::start("r1", Trigger::Cli, false, false);
        for i in 0..2000u64 {
            run.push_progress(ProgressPoint {
                at_ms: i * 1000,
                written: i * 10,
            });
        }
        assert!(run.progress.len() <= MAX_PROGRESS_POINTS);
        assert!(run.progress.len() > MAX_PROGRESS_POINTS / 2);
        assert_eq!(run.progress.first().unwrap().at_ms, 0);
        assert_eq!(run.progress.last().unwrap().at_ms, 1_999_000);
        assert!(run.progress.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    }

    #[test]
    fn a_run_record_round_trips_through_bson() {
        let mut run = RunRecord::start("r1", Trigger::Http, true, false);
        run.begin_phase(RunPhase::GmcRead);
        run.begin_phase(RunPhase::TcsMerge);
        run.reject("invalid_json");
        run.reject("invalid_json");
        run.counts.tcs_records = 7;
        run.bulk.written = 7;
        run.gates.push(GateVerdict {
            name: "count".into(),
            passed: true,
            detail: "7 of 7".into(),
            figures: serde_json::json!({"indexed": 7, "share": 0.5}),
            ..GateVerdict::default()
        });
        run.finish(RunOutcome::DryRun, None);
        let stored = bson::to_document(&run).unwrap();
        assert_eq!(stored.get_str("_id").unwrap(), "r1");
        assert_eq!(stored.get_str("outcome").unwrap(), "dry_run");
        let back: RunRecord = bson::from_document(stored).unwrap();
        assert_eq!(back, run);
        assert_eq!(back.rejects["invalid_json"], 2);
        assert!(back.phases.iter().all(|p| p.duration_ms.is_some()));
        assert_eq!(back.phase, None);
    }

    #[test]
    fn the_stored_outcomes_are_the_ones_the_history_store_relies_on() {
        assert_eq!(RunOutcome::Running.as_str(), crate::state::history::RUNNING);
        assert_eq!(
            RunOutcome::Abandoned.as_str(),
            crate::state::history::ABANDONED
        );
        assert_eq!(RunOutcome::Refused.as_str(), crate::state::history::REFUSED);
        let stored = bson::to_document(&RunRecord::start("r", Trigger::Cli, false, false)).unwrap();
        assert_eq!(
            stored.get_str("outcome").unwrap(),
            crate::state::history::RUNNING
        );
    }

    #[test]
    fn triggers_parse_and_list_the_valid_values() {
        assert_eq!("HTTP".parse::<Trigger>(), Ok(Trigger::Http));
        assert!("cron".parse::<Trigger>().unwrap_err().contains("schedule"));
        assert_eq!("tcs_merge".parse::<RunPhase>(), Ok(RunPhase::TcsMerge));
        assert!("x".parse::<RunPhase>().unwrap_err().contains("promote"));
    }

    #[test]
    fn run_ids_sort_by_start_time() {
        let a = new_run_id();
        assert_eq!(a.len(), "20250101T000000Z-abcdef".len());
        assert!(a.starts_with("20"));
        assert!(a[17..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn durations_come_from_the_stored_times() {
        assert_eq!(
            ms_between("2025-01-01T00:00:00.000Z", "2025-01-01T00:00:01.500Z"),
            1500
        );
        assert_eq!(ms_between("garbage", "2025-01-01T00:00:01.500Z"), 0);
    }
}
