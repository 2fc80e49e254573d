//! Cutting the incoming changes into batches: up to `max` changes, waiting
//! at most [`IDLE_POLL`] for the first (so an idle applier still looks at
//! the handover marker) and then at most `linger` for more.

use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::mpsc;

use super::readers::Incoming;

/// How long an idle applier waits before it looks at the marker again.
pub(super) const IDLE_POLL: Duration = Duration::from_millis(250);

/// The next batch; empty when nothing came within [`IDLE_POLL`]. Fails when
/// a reader failed or every reader stopped.
pub(super) async fn collect(
    rx: &mut mpsc::Receiver<Result<Incoming, anyhow::Error>>,
    max: usize,
    linger: Duration,
) -> anyhow::Result<Vec<Incoming>> {
    let mut batch = Vec::new();
    match tokio::time::timeout(IDLE_POLL, rx.recv()).await {
        Err(_) => return Ok(batch),
        Ok(None) => return Err(anyhow!("every source of live changes stopped")),
        Ok(Some(first)) => batch.push(first?),
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(next)) => batch.push(next?),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::applier::readers::Settle;
    use crate::sources::changes::Watched;

    fn skipped() -> Incoming {
        Incoming {
            applied: None,
            settle: Settle::Stream {
                watched: Watched::Doctors,
                token: bson::Bson::Null,
                made_at_ms: None,
            },
        }
    }

    #[tokio::test]
    async fn a_batch_is_cut_at_its_size_and_the_rest_waits() {
        let (tx, mut rx) = mpsc::channel(10);
        for _ in 0..5 {
            tx.send(Ok(skipped())).await.unwrap();
        }
        let batch = collect(&mut rx, 3, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(batch.len(), 3);
        let batch = collect(&mut rx, 3, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(batch.len(), 2, "the rest, after the linger");
    }

    #[tokio::test]
    async fn idle_gives_an_empty_batch_and_a_reader_failure_or_the_end_fails() {
        let (tx, mut rx) = mpsc::channel(10);
        let batch = collect(&mut rx, 3, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(batch.is_empty());
        tx.send(Err(anyhow!("the queue went away"))).await.unwrap();
        assert!(collect(&mut rx, 3, Duration::from_millis(10))
            .await
            .is_err());
        drop(tx);
        assert!(collect(&mut rx, 3, Duration::from_millis(10))
            .await
            .is_err());
    }
}
