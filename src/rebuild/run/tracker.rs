//! The record of the running run and when it was last saved: phases begin
//! here, live counts (the bulk writer's, the merge's) are copied in before
//! each save, and a checkpoint saves every few seconds so that `status`
//! shows progress from any process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::rebuild::record::{RunHistory, RunPhase, RunRecord};
use crate::search::{BulkProgress, BulkStats};

/// Seconds between two saves of a live run's record.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// Distinct TCS doctors by whether GMC holds them, counted by the merge
/// stage as it goes (the bulk writer counts documents; this counts doctors).
#[derive(Debug, Default)]
pub(super) struct MergeCounts {
    pub both: AtomicU64,
    pub tcs_only: AtomicU64,
}

impl MergeCounts {
    /// Counts the first record of a doctor, by whether GMC knows it.
    pub fn count_doctor(&self, in_gmc: bool) {
        let counter = if in_gmc { &self.both } else { &self.tcs_only };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(super) struct Tracker {
    history: RunHistory,
    pub record: RunRecord,
    last_save: Instant,
    bulk: Option<BulkProgress>,
    pub merged: Arc<MergeCounts>,
}

impl Tracker {
    pub fn new(history: RunHistory, record: RunRecord) -> Self {
        Self {
            history,
            record,
            last_save: Instant::now(),
            bulk: None,
            merged: Arc::default(),
        }
    }

    /// The history this run is recorded in.
    pub fn history(&self) -> RunHistory {
        self.history.clone()
    }

    /// From now on the record shows this writer's counts as it works.
    pub fn watch_bulk(&mut self, progress: BulkProgress) {
        self.bulk = Some(progress);
    }

    /// The writer is done: its final figures go into the record for good.
    pub fn bulk_finished(&mut self, stats: BulkStats) {
        self.bulk = None;
        self.record.bulk = stats;
    }

    /// Copies the live counts into the record.
    pub fn sync_live(&mut self) {
        if let Some(bulk) = &self.bulk {
            self.record.bulk = bulk.snapshot();
        }
        let counts = &mut self.record.counts;
        counts.merged_both = self.merged.both.load(Ordering::Relaxed);
        counts.merged_tcs_only = self.merged.tcs_only.load(Ordering::Relaxed);
    }

    pub async fn save_now(&mut self) {
        self.sync_live();
        self.record.sample_progress();
        self.last_save = Instant::now();
        self.record.touch();
        if let Err(e) = self.history.save(&self.record.id, &self.record).await {
            warn!(run_id = %self.record.id, error = %e, "Could not save the run record.");
        }
    }

    /// Saves when the last save is a while ago (progress for `status`).
    pub async fn checkpoint(&mut self) {
        if self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save_now().await;
        }
    }

    /// Whether `phase` is the one under way.
    pub fn in_phase(&self, phase: RunPhase) -> bool {
        self.record.phases.last().is_some_and(|p| p.phase == phase)
    }

    pub async fn begin(&mut self, phase: RunPhase) {
        self.record.begin_phase(phase);
        self.save_now().await;
        crate::failpoint::hit(phase.as_str()).await;
    }
}
