//! Starting rebuilds for the service: the API trigger and the schedule both
//! come here. A start takes the lease first (one MongoDB round trip), so the
//! caller learns at once whether a run started (its id) or which run holds
//! the lease; the work then goes on in the background. Across replicas the
//! lease keeps it to one run; in this process, the runner remembers its run
//! so that a shutdown can stop it at its next safe point and wait for it.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::metrics;
use crate::config::Settings;
use crate::rebuild::record::Trigger;
use crate::rebuild::{is_refusal, lease_holder, start_run, RunOptions};
use crate::telemetry::panic_message;

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The lease is held (by a run of any replica, or a rollback).
    #[error("{message}")]
    InProgress {
        run_id: Option<String>,
        message: String,
    },
    /// The service is shutting down.
    #[error("the service is shutting down; no run starts")]
    ShuttingDown,
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

/// What to start.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartRequest {
    pub trigger: Trigger,
    pub dry_run: bool,
    pub force: bool,
}

/// Starts runs in the background and keeps the one of this process.
#[derive(Clone)]
pub struct Runner {
    settings: Arc<Settings>,
    shutdown: CancellationToken,
    current: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Runner {
    pub fn new(settings: Arc<Settings>, shutdown: CancellationToken) -> Self {
        Self {
            settings,
            shutdown,
            current: Arc::default(),
        }
    }

    /// Starts a run: `Ok(run id)` once it holds the lease and is recorded.
    pub async fn start(&self, request: StartRequest) -> Result<String, StartError> {
        if self.shutdown.is_cancelled() {
            return Err(StartError::ShuttingDown);
        }
        let options = RunOptions {
            dry_run: request.dry_run,
            force: request.force,
            trigger: request.trigger,
            bars: false,
            run_id: None,
            cancel: self.shutdown.child_token(),
        };
        let started = match start_run(&self.settings, options).await {
            Ok(started) => started,
            Err(e) if is_refusal(&e) => {
                return Err(StartError::InProgress {
                    run_id: lease_holder(&e).map(str::to_string),
                    message: format!("{e:#}"),
                })
            }
            Err(e) => return Err(StartError::Failed(e)),
        };
        let run_id = started.id().to_string();
        info!(run_id = %run_id, trigger = %request.trigger, "Run started in the background.");
        metrics::run_started(request.trigger.as_str());
        let task = tokio::spawn(async move {
            match AssertUnwindSafe(started.finish()).catch_unwind().await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %format!("{e:#}"), "The run did not succeed."),
                // A defect. The service goes on; the run's lease expires by
                // itself and the next run marks it abandoned and cleans up.
                Err(panic) => error!(
                    panic = %panic_message(panic.as_ref()),
                    "The run panicked; it stopped where it was. Its lease expires by itself, and the next run records it abandoned and deletes what it built."
                ),
            }
        });
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = current.replace(task) {
            if !previous.is_finished() {
                // Cannot happen while the lease works; keep waiting for both.
                error!("A second run started in this process while one was running.");
                tokio::spawn(async move {
                    let _ = previous.await;
                });
            }
        }
        Ok(run_id)
    }

    /// Waits for this process's run to end (after the shutdown token was
    /// cancelled, it stops at its next safe point).
    pub async fn wait(&self) {
        let task = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether this process's run is still working.
    pub fn busy(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}
