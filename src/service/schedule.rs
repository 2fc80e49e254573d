//! The nightly schedule: a cron expression read in a time zone (by default
//! every night at 02:00 British time, so the run follows summer time). At
//! each planned start it asks the runner for the same rebuild as the API,
//! recorded with trigger `schedule`; when a run holds the lease it skips,
//! says why, and counts the skip. Every replica runs the schedule; the
//! lease lets exactly one start.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::metrics;
use super::runner::{Runner, StartError, StartRequest};
use crate::config::ScheduleSettings;
use crate::rebuild::record::Trigger;

/// The next planned start, shared with the status endpoint.
#[derive(Clone, Default)]
pub struct NextStart(Arc<Mutex<Option<DateTime<Utc>>>>);

impl NextStart {
    pub fn get(&self) -> Option<DateTime<Utc>> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, at: Option<DateTime<Utc>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

/// What one planned start did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    Started(String),
    Skipped(Option<String>),
    Failed,
}

/// Asks for one scheduled rebuild.
pub async fn fire(runner: &Runner) -> Fired {
    let request = StartRequest {
        trigger: Trigger::Schedule,
        ..StartRequest::default()
    };
    match runner.start(request).await {
        Ok(run_id) => {
            info!(run_id = %run_id, "The schedule started a rebuild.");
            Fired::Started(run_id)
        }
        Err(StartError::InProgress { run_id, message }) => {
            warn!(holder = ?run_id, reason = %message, "Scheduled rebuild skipped: a run holds the lease.");
            metrics::schedule_skipped();
            Fired::Skipped(run_id)
        }
        Err(StartError::ShuttingDown) => Fired::Failed,
        Err(StartError::Failed(e)) => {
            error!(error = %format!("{e:#}"), "The scheduled rebuild could not start.");
            Fired::Failed
        }
    }
}

/// Sleeps until each planned start and fires, until `stop`.
pub async fn run(
    settings: ScheduleSettings,
    runner: Runner,
    next: NextStart,
    stop: CancellationToken,
) {
    if !settings.enabled {
        info!("The schedule is off (schedule.enabled = false).");
        next.set(None);
        return;
    }
    info!(cron = %settings.cron, time_zone = %settings.time_zone, "The schedule is on.");
    let mut after = Utc::now();
    loop {
        let at = match settings.next_after(after) {
            Ok(at) => at,
            Err(e) => {
                error!(error = %e, "The schedule has no next start; it stops.");
                next.set(None);
                return;
            }
        };
        next.set(Some(at));
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        fire(&runner).await;
        after = at.max(Utc::now());
    }
}
