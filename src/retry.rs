//! Retry decisions, made in one place. Each boundary error (`SearchError`,
//! `SourceError`, `StateError`) says through [`Retriable`] whether the same
//! call may succeed later; [`RetryPolicy`] says how long to keep trying
//! (exponential backoff with jitter and a cap, from the `retry` settings);
//! [`with_retry`] puts the two together for one-shot calls, and the bulk
//! writer and the consumers consult the same two. Permanent errors are
//! never retried.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tracing::warn;

use crate::config::RetrySettings;

/// An error that knows whether trying again may help.
pub trait Retriable {
    /// True when the call may succeed later (a connection dropped, a server
    /// busy or restarting); false when it never will (bad input, refused).
    fn is_retriable(&self) -> bool;
}

/// How often and how long to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retries: usize,
}

impl RetryPolicy {
    pub fn new(settings: &RetrySettings) -> Self {
        Self {
            initial_backoff: Duration::from_millis(settings.initial_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(settings.max_backoff_ms.max(1)),
            max_retries: settings.max_retries,
        }
    }

    /// No retries at all (tests of the failure paths).
    pub fn never() -> Self {
        Self {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_retries: 0,
        }
    }

    /// The backoff: exponential from `initial_backoff`, capped at
    /// `max_backoff`, with jitter so that many clients do not retry in step.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.max_retries)
            .with_jitter()
    }

    /// The waits of a loop that never gives up (a live batch waits,
    /// unsettled, until it lands): the backoff, then `max_backoff` for ever.
    pub fn endless_waits(&self) -> impl Iterator<Item = Duration> {
        let max = self.max_backoff;
        backon::BackoffBuilder::build(self.backoff()).chain(std::iter::repeat(max))
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new(&RetrySettings::default())
    }
}

/// Runs `call` until it succeeds, fails with an error that is not
/// retriable, or the policy's retries are spent; each retry is logged with
/// `what` (for example "while restoring the serving settings").
pub async fn with_retry<T, E, F, Fut>(policy: &RetryPolicy, what: &str, call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Retriable + Display,
{
    call.retry(policy.backoff())
        .when(|e: &E| e.is_retriable())
        .notify(|e: &E, delay: Duration| {
            warn!(error = %e, delay_ms = delay.as_millis() as u64, "Retrying {what}.");
        })
        .await
}

/// Whether a MongoDB error is transient: the server unreachable or
/// restarting, a pool cleared, a primary stepping down. One classification
/// for the sources and the run state alike.
pub fn mongo_is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    // Codes MongoDB and DocumentDB answer while a node restarts, steps down
    // or loses its network: HostUnreachable, HostNotFound, NetworkTimeout,
    // ShutdownInProgress, PrimarySteppedDown, SocketException,
    // NotWritablePrimary, InterruptedAtShutdown, InterruptedDueToReplStateChange,
    // NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary.
    const TRANSIENT_CODES: [i32; 11] = [6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436];
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        _ => false,
    }
}

/// Whether the server no longer knows a read's cursor: it restarted (or
/// failed over) between two batches, or killed it (CursorNotFound 43,
/// CursorKilled 237). Not transient for the cursor itself, but a read that
/// can start again (or resume after its last id) goes on.
pub fn mongo_cursor_lost(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == 43 || c.code == 237)
}

/// Whether an AMQP error is transient: the connection or its socket broke,
/// or the broker closed the connection (it restarts, or a heartbeat was
/// missed). Channel-level refusals (a missing queue, a bad argument) are not.
pub fn amqp_is_transient(e: &lapin::Error) -> bool {
    use lapin::ErrorKind;
    match e.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_) => true,
        ErrorKind::ProtocolError(_) => e.is_amqp_hard_error(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Flaky(bool);
    impl Retriable for Flaky {
        fn is_retriable(&self) -> bool {
            self.0
        }
    }
    impl Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "flaky({})", self.0)
        }
    }

    fn quick(max_retries: usize) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retries,
        }
    }

    #[tokio::test]
    async fn a_retriable_error_is_tried_again_until_the_call_succeeds() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, Flaky> = with_retry(&quick(5), "a test call", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Flaky(true)),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_permanent_error_is_not_retried_and_retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let result: Result<(), Flaky> = with_retry(&quick(5), "a test call", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Flaky(false))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let result: Result<(), Flaky> = with_retry(&quick(3), "a test call", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Flaky(true))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "one call and three retries"
        );
    }
}
