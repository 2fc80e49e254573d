//! An in-memory [`HandoverStore`] for the model test: the same contract as
//! MongoDB's, plus injected failures (the next operation fails, or the next
//! replacement is applied but its answer lost).

use std::collections::BTreeMap;
use std::sync::Mutex;

use bson::Bson;

use super::gate::LeaseView;
use super::marker::{Marker, Reservation};
use super::store::{HandoverStore, JournalEntry, NewEntry, Versioned};
use crate::state::StateError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemEntry {
    pub run: String,
    pub token: String,
    /// `None`: a void.
    pub change: Option<String>,
}

/// Everything the store holds, comparable and hashable for the search.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct MemState {
    pub marker: Marker,
    pub version: i64,
    pub entries: BTreeMap<i64, MemEntry>,
    pub rebuild_lease: Option<LeaseView>,
    /// The next operation fails (a MongoDB blip).
    pub fail_next: bool,
    /// The next replacement is made but answers with an error.
    pub lose_next_answer: bool,
}

#[derive(Debug, Default)]
pub struct MemStore(pub Mutex<MemState>);

impl MemStore {
    pub fn new(state: MemState) -> Self {
        MemStore(Mutex::new(state))
    }

    pub fn into_state(self) -> MemState {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemState) -> T) -> Result<T, StateError> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.fail_next {
            s.fail_next = false;
            return Err(StateError::Unreadable("injected MongoDB blip".into()));
        }
        Ok(f(&mut s))
    }
}

impl HandoverStore for MemStore {
    async fn load(&self) -> Result<Versioned, StateError> {
        self.with(|s| Versioned {
            marker: s.marker.clone(),
            version: s.version,
        })
    }

    async fn replace(&self, version: i64, next: &Marker) -> Result<bool, StateError> {
        let lost = self.with(|s| {
            if s.version != version {
                return Ok(false);
            }
            s.marker = next.clone();
            s.version += 1;
            if s.lose_next_answer {
                s.lose_next_answer = false;
                return Err(());
            }
            Ok(true)
        })?;
        lost.map_err(|_| StateError::Unreadable("injected lost answer".into()))
    }

    async fn insert_entries(
        &self,
        run_id: &str,
        reservation: &Reservation,
        entries: &[NewEntry],
    ) -> Result<bool, StateError> {
        self.with(|s| {
            let mut ours = true;
            for (i, e) in entries.iter().enumerate() {
                let seq = reservation.first + i as i64;
                let entry = s.entries.entry(seq).or_insert_with(|| MemEntry {
                    run: run_id.to_string(),
                    token: reservation.token.clone(),
                    change: Some(e.number.clone()),
                });
                ours &= entry.token == reservation.token && entry.change.is_some();
            }
            ours
        })
    }

    async fn count_entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> Result<u64, StateError> {
        self.with(|s| {
            if through <= after {
                return 0;
            }
            s.entries
                .range(after + 1..=through)
                .filter(|(_, e)| e.run == run_id)
                .count() as u64
        })
    }

    async fn void_missing(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
    ) -> Result<u64, StateError> {
        self.with(|s| {
            let mut voided = 0;
            for seq in after + 1..=through {
                s.entries.entry(seq).or_insert_with(|| {
                    voided += 1;
                    MemEntry {
                        run: run_id.to_string(),
                        token: String::new(),
                        change: None,
                    }
                });
            }
            voided
        })
    }

    async fn entries(
        &self,
        run_id: &str,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StateError> {
        self.with(|s| {
            if through <= after {
                return Vec::new();
            }
            s.entries
                .range(after + 1..=through)
                .filter(|(_, e)| e.run == run_id)
                .take(limit.max(0) as usize)
                .filter_map(|(seq, e)| {
                    e.change.as_ref().map(|c| JournalEntry {
                        seq: *seq,
                        kind: "tcs".into(),
                        number: c.clone(),
                        payload: Bson::Null,
                    })
                })
                .collect()
        })
    }

    async fn delete_entries(&self, run_id: &str, others: bool) -> Result<u64, StateError> {
        self.with(|s| {
            let before = s.entries.len();
            s.entries.retain(|_, e| (e.run == run_id) == others);
            (before - s.entries.len()) as u64
        })
    }

    async fn lease(&self, name: &str) -> Result<Option<LeaseView>, StateError> {
        self.with(|s| {
            if name == super::REBUILD_LEASE {
                s.rebuild_lease.clone()
            } else {
                None
            }
        })
    }
}
