//! Watches the service's background tasks (the schedule, the live applier)
//! while it serves. One that dies (a panic, or the applier ending before the
//! service stops) stops the whole service with an error, so that its
//! orchestrator (ECS) starts it again, rather than leaving a process that
//! answers its API while nightly rebuilds or live updates have silently
//! stopped.

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::telemetry::join_error_text;

/// The background tasks of one service process.
pub struct Background {
    pub scheduler: JoinHandle<()>,
    pub applier: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Waits until `shutdown`, or until a task dies: then says why, cancels
/// `shutdown` (the service stops accepting requests and a run in progress
/// stops at a safe point) and returns the reason. Either way the tasks are
/// stopped before it returns: the schedule at once, the applier at its next
/// batch (what it had not settled comes again).
pub async fn supervise(background: Background, shutdown: CancellationToken) -> Option<String> {
    let Background { scheduler, applier } = background;
    let mut scheduler = Some(scheduler);
    let mut applier = applier;
    let died = loop {
        tokio::select! {
            // A stop asked for comes first: the applier ends because of it,
            // and that end is not a death.
            biased;
            _ = shutdown.cancelled() => break None,
            ended = until_done(&mut scheduler) => {
                scheduler = None;
                // A schedule that is off, or has no next start, ends by
                // itself and says so; only a panic is a death.
                if let Err(e) = ended {
                    break Some(format!("the schedule stopped: {}", join_error_text(e)));
                }
            }
            ended = until_done(&mut applier) => {
                applier = None;
                break Some(match ended {
                    Ok(Ok(())) => "the live applier ended while the service was serving".to_string(),
                    Ok(Err(e)) => format!("the live applier stopped: {e:#}"),
                    Err(e) => format!("the live applier stopped: {}", join_error_text(e)),
                });
            }
        }
    };
    if let Some(reason) = &died {
        error!(
            reason = %reason,
            "A background task of the service died; the service stops so that it is started again."
        );
        shutdown.cancel();
    }
    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    if let Some(applier) = applier {
        match applier.await {
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "The live applier ended with an error."),
            Err(e) if e.is_panic() => {
                warn!(error = %join_error_text(e), "The live applier ended with a panic.")
            }
            _ => {}
        }
    }
    died
}

/// The task's end, or never once it has ended (its slot is `None`).
async fn until_done<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match task.as_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An applier that works until the service stops.
    fn until_stopped(shutdown: &CancellationToken) -> JoinHandle<anyhow::Result<()>> {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            Ok(())
        })
    }

    #[tokio::test]
    async fn a_panicking_schedule_stops_the_service_and_says_why() {
        let shutdown = CancellationToken::new();
        let background = Background {
            scheduler: tokio::spawn(async { panic!("the cron went wrong") }),
            applier: Some(until_stopped(&shutdown)),
        };
        let died = supervise(background, shutdown.clone()).await;
        let reason = died.expect("a death");
        assert!(
            reason.contains("the schedule stopped") && reason.contains("the cron went wrong"),
            "{reason}"
        );
        assert!(shutdown.is_cancelled(), "the service is told to stop");
    }

    #[tokio::test]
    async fn a_schedule_that_is_off_ends_quietly_and_the_service_serves_on() {
        let shutdown = CancellationToken::new();
        let background = Background {
            scheduler: tokio::spawn(async {}),
            applier: Some(until_stopped(&shutdown)),
        };
        let supervisor = tokio::spawn(supervise(background, shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!supervisor.is_finished(), "still watching the applier");
        assert!(!shutdown.is_cancelled());
        shutdown.cancel();
        assert_eq!(supervisor.await.unwrap(), None, "a stop asked for");
    }

    #[tokio::test]
    async fn an_applier_that_ends_while_serving_stops_the_service() {
        for (applier, expected) in [
            (
                tokio::spawn(async { Err(anyhow::anyhow!("no MongoDB URI")) }),
                "the live applier stopped: no MongoDB URI",
            ),
            (
                tokio::spawn(async { Ok(()) }),
                "the live applier ended while the service was serving",
            ),
            (
                tokio::spawn(async { panic!("a bug in the applier") }),
                "the live applier stopped: it panicked: a bug in the applier",
            ),
        ] {
            let shutdown = CancellationToken::new();
            let background = Background {
                scheduler: tokio::spawn(std::future::pending::<()>()),
                applier: Some(applier),
            };
            let died = supervise(background, shutdown.clone()).await;
            assert_eq!(died.as_deref(), Some(expected));
            assert!(shutdown.is_cancelled());
        }
    }
}
