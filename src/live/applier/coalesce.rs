//! Coalescing a batch by doctor: under a flood (GMC's nightly refresh
//! rewrites every doctor) one doctor's changes pile up, and only the latest
//! of each source matters, because a change is resolved against what its
//! source holds now: a `doctorsForDB` event carries the document as it
//! stands (its last event wins, a delete included), a recommendation change
//! is recomputed from MongoDB, and a TCS message carries the trainee's
//! whole current record (keyed by trainee too, so two trainees of one GMC
//! number each keep their latest, and the precedence rule picks between
//! them). The survivors keep batch order; every message and token of the
//! batch is still settled, after the write. The window is the batch:
//! at most `live.batch_size` changes.

use std::collections::HashMap;

use super::readers::Incoming;
use crate::domain::Change;

/// What a later change supersedes an earlier one under.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    Trainee(&'a str, Option<i64>),
    /// A trainee filtered out of TIS: its later leaving supersedes an
    /// earlier one (its updates in between keep their own key and order).
    TraineeLeft(i64),
    Connection(&'a str),
    Unhidden(&'a str),
    Doctor(&'a str),
    Recommendation(&'a str),
}

fn key_of(change: &Change) -> Key<'_> {
    match change {
        Change::Tcs { number, record } => Key::Trainee(number.as_str(), record.tcs_person_id),
        Change::Doctor { number, .. } | Change::DoctorLeft { number } => {
            Key::Doctor(number.as_str())
        }
        Change::Recommendation { number } => Key::Recommendation(number.as_str()),
        Change::TcsLeft { person } => Key::TraineeLeft(*person),
        Change::Connection { number } => Key::Connection(number.as_str()),
        Change::Unhidden { id } => Key::Unhidden(id),
    }
}

/// The batch positions whose change is written: the last of each doctor
/// and source, in batch order. The others are superseded.
pub(super) fn survivors(batch: &[Incoming]) -> Vec<usize> {
    latest(
        batch
            .iter()
            .enumerate()
            .filter_map(|(i, incoming)| incoming.applied.as_ref().map(|a| (i, &a.change))),
    )
}

/// Of `(position, change)` pairs in order, the positions of the last
/// change of each doctor and source, in order (the journal's replay
/// coalesces its chunks by this too).
pub(in crate::live) fn latest<'a>(
    changes: impl IntoIterator<Item = (usize, &'a Change)>,
) -> Vec<usize> {
    let mut last: HashMap<Key<'a>, usize> = HashMap::new();
    for (i, change) in changes {
        last.insert(key_of(change), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{GmcDoctor, GmcNumber, TcsRecord};
    use crate::handover::NewEntry;
    use crate::live::applier::readers::{Applied, Settle};
    use crate::live::applier::settle::plan;
    use crate::search::updates::UpdateResult;
    use crate::sources::changes::Watched;

    fn n(s: &str) -> GmcNumber {
        GmcNumber::parse(s).unwrap()
    }

    fn incoming(change: Change) -> Incoming {
        let entry = NewEntry {
            kind: change.kind(),
            number: change.number().unwrap().as_str().to_string(),
            payload: bson::Bson::Null,
        };
        Incoming {
            applied: Some(Applied { change, entry }),
            settle: Settle::Stream {
                watched: Watched::Doctors,
                token: bson::Bson::Null,
                made_at_ms: None,
            },
        }
    }

    fn doctor(number: &str) -> Change {
        Change::Doctor {
            number: n(number),
            doctor: Box::new(GmcDoctor::default()),
        }
    }

    fn trainee(number: &str, person: i64) -> Change {
        Change::Tcs {
            number: n(number),
            record: Box::new(TcsRecord {
                tcs_person_id: Some(person),
                ..TcsRecord::default()
            }),
        }
    }

    #[test]
    fn many_changes_of_one_doctor_make_one_write_per_source_and_all_are_settled() {
        let mut batch = Vec::new();
        for _ in 0..10 {
            batch.push(incoming(doctor("7000001")));
        }
        batch.push(incoming(trainee("7000001", 5)));
        batch.push(incoming(Change::Recommendation {
            number: n("7000001"),
        }));
        batch.push(incoming(trainee("7000001", 5)));
        batch.push(incoming(trainee("7000001", 6)));
        batch.push(incoming(Change::DoctorLeft {
            number: n("7000001"),
        }));
        batch.push(incoming(doctor("7000002")));
        let keep = survivors(&batch);
        assert_eq!(
            keep,
            vec![11, 12, 13, 14, 15],
            "the recommendation, each trainee's last, the doctor's last event (its leaving), the other doctor"
        );
        // Everything else is settled as done: its position moves.
        let mut results = vec![UpdateResult::Unchanged; batch.len()];
        for i in &keep {
            results[*i] = UpdateResult::Updated;
        }
        let plan = plan(&batch, &results);
        assert_eq!(
            plan.tokens,
            vec![(Watched::Doctors, 15)],
            "the stream moves past every event"
        );
    }

    #[test]
    fn a_doctor_back_after_leaving_is_written_as_back() {
        let batch = vec![
            incoming(Change::DoctorLeft {
                number: n("7000003"),
            }),
            incoming(doctor("7000003")),
        ];
        assert_eq!(survivors(&batch), vec![1]);
    }
}
