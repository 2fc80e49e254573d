//! The handover's operations over a store: each marker transition applied
//! by compare-and-set (read, decide with [`marker`](super::marker), replace
//! if unchanged, else read again), the journaling of a written batch
//! (reserve, then write the entries), and the run's side of the seal (wait
//! for every reserved entry, void the ones that never come).

use std::time::Duration;

use tracing::{info, warn};

use super::gate::{Facts, Gate, LeaseView};
use super::marker::{Marker, Refusal, Reservation};
use super::store::{HandoverStore, JournalEntry, NewEntry};
use super::REBUILD_LEASE;
use crate::state::StateError;

/// How often a compare-and-set is tried before the marker counts as
/// contended (only a storm of concurrent writers gets there).
const CAS_ATTEMPTS: usize = 50;

/// Why a handover operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The marker does not allow it (another run, a later phase).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A reserved entry was voided by the sealing run: the batch must not
    /// be acked.
    #[error("journal entries {first}..={last} of run {run_id} were voided by the sealing run")]
    Fenced {
        run_id: String,
        first: i64,
        last: i64,
    },
    #[error("the handover marker kept changing under {attempts} attempts")]
    Contended { attempts: usize },
    #[error(transparent)]
    Storage(#[from] StateError),
}

impl HandoverError {
    /// A refusal or a fence is an answer; storage failures may pass.
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            HandoverError::Refused(_) | HandoverError::Fenced { .. }
        )
    }
}

/// What a sealed run must replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sealed {
    /// The run's entries are in `(since, through]`.
    pub since: i64,
    pub through: i64,
}

/// The protocol over a store.
#[derive(Clone, Debug)]
pub struct Handover<S> {
    store: S,
}

impl<S: HandoverStore> Handover<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }

    /// The marker now.
    pub async fn marker(&self) -> Result<Marker, StateError> {
        Ok(self.store.load().await?.marker)
    }

    async fn transition<T>(
        &self,
        decide: impl Fn(&Marker) -> Result<(Marker, T), Refusal>,
    ) -> Result<T, HandoverError> {
        for _ in 0..CAS_ATTEMPTS {
            let read = self.store.load().await?;
            let (next, answer) = decide(&read.marker)?;
            if next == read.marker || self.store.replace(read.version, &next).await? {
                return Ok(answer);
            }
        }
        Err(HandoverError::Contended {
            attempts: CAS_ATTEMPTS,
        })
    }

    /// Run `run_id` begins recording; entries of other runs go. Returns the
    /// sequence number its entries come after.
    pub async fn begin(&self, run_id: &str) -> Result<i64, HandoverError> {
        let since = self
            .transition(|m| {
                let next = m.begin(run_id);
                let since = next.since;
                Ok((next, since))
            })
            .await?;
        self.store.delete_entries(run_id, true).await?;
        Ok(since)
    }

    pub async fn request_pause(&self, run_id: &str) -> Result<(), HandoverError> {
        self.transition(|m| Ok((m.request_pause(run_id)?, ())))
            .await
    }

    pub async fn acknowledge_pause(&self, run_id: &str) -> Result<(), HandoverError> {
        self.transition(|m| Ok((m.acknowledge_pause(run_id)?, ())))
            .await
    }

    pub async fn abandon(&self, run_id: &str) -> Result<(), HandoverError> {
        self.transition(|m| Ok((m.abandon(run_id)?, ()))).await
    }

    /// Closes run `run_id`'s journal.
    pub async fn seal(&self, run_id: &str) -> Result<Sealed, HandoverError> {
        self.transition(|m| {
            let next = m.seal(run_id)?;
            let sealed = Sealed {
                since: next.since,
                through: next.through,
            };
            Ok((next, sealed))
        })
        .await
    }

    /// The run ended (swapped or not): the marker goes off, its entries go.
    pub async fn end(&self, run_id: &str) -> Result<u64, HandoverError> {
        self.release(run_id).await?;
        Ok(self.store.delete_entries(run_id, false).await?)
    }

    /// The marker goes off for run `run_id` (the applier goes on); its
    /// entries stay until [`Handover::end`]. Already off: nothing to do.
    pub async fn release(&self, run_id: &str) -> Result<(), HandoverError> {
        match self.transition(|m| Ok((m.end(run_id)?, ()))).await {
            Ok(()) | Err(HandoverError::Refused(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Journals a written batch for run `run_id`: reserves its sequence
    /// numbers (only while the run records) and writes the entries. `token`
    /// names the batch: asked again after a lost answer, the same numbers
    /// come back. `Ok` means the batch may be acked.
    pub async fn journal(
        &self,
        run_id: &str,
        token: &str,
        entries: &[NewEntry],
    ) -> Result<Reservation, HandoverError> {
        let count = entries.len() as i64;
        let reservation = self.transition(|m| m.reserve(run_id, count, token)).await?;
        if entries.is_empty()
            || self
                .store
                .insert_entries(run_id, &reservation, entries)
                .await?
        {
            Ok(reservation)
        } else {
            Err(HandoverError::Fenced {
                run_id: run_id.to_string(),
                first: reservation.first,
                last: reservation.last,
            })
        }
    }

    /// The sealed run waits until every entry reserved before the seal is
    /// written; what has not come within `timeout` is voided (its writer
    /// is fenced and will not ack it). Returns how many were voided.
    pub async fn await_entries(
        &self,
        run_id: &str,
        sealed: Sealed,
        timeout: Duration,
    ) -> Result<u64, HandoverError> {
        let expected = (sealed.through - sealed.since).max(0) as u64;
        let started = tokio::time::Instant::now();
        loop {
            let present = self
                .store
                .count_entries(run_id, sealed.since, sealed.through)
                .await?;
            if present >= expected {
                return Ok(0);
            }
            if started.elapsed() >= timeout {
                let voided = self
                    .store
                    .void_missing(run_id, sealed.since, sealed.through)
                    .await?;
                warn!(
                    run_id,
                    voided,
                    "Journal entries reserved before the seal never came (an applier stopped mid-journal); they are voided, and their changes come again from the sources."
                );
                return Ok(voided);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Up to `limit` entries of `run_id` in `(after, through]`.
    pub async fn entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StateError> {
        self.store.entries(run_id, after, through, limit).await
    }

    /// Entries of `run_id` after `after` (the backlog), voids included.
    pub async fn backlog(&self, run_id: &str, after: i64) -> Result<u64, StateError> {
        self.store.count_entries(run_id, after, i64::MAX).await
    }

    /// Reads what the applier decides on and decides: see [`gate`](super::gate).
    pub async fn gate(&self, stopping: bool, own_lease_lost: Option<&str>) -> Gate {
        if stopping || own_lease_lost.is_some() {
            // No read needed to stop.
            let m = Marker::default();
            return super::gate::gate(&Facts {
                stopping,
                own_lease_lost,
                marker: Ok(&m),
                rebuild_lease: Ok(None),
            });
        }
        let marker = self.store.load().await.map(|v| v.marker);
        let lease: Result<Option<LeaseView>, StateError> = match &marker {
            Ok(m) if m.phase != super::Phase::Off => self.store.lease(REBUILD_LEASE).await,
            _ => Ok(None),
        };
        let gate = super::gate::gate(&Facts {
            stopping,
            own_lease_lost,
            marker: marker.as_ref().map_err(|e| e.to_string()),
            rebuild_lease: lease
                .as_ref()
                .map(Option::as_ref)
                .map_err(|e| e.to_string()),
        });
        if let Gate::Abandon { run_id } = &gate {
            info!(run_id = %run_id, "The run named by the handover marker no longer holds the rebuild lease; its journal is abandoned.");
        }
        gate
    }
}
