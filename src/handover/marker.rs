//! The marker of the handover as pure code: its phases, and every
//! transition the run and the live applier may make, each a function of the
//! marker alone (no I/O). The store applies a transition by compare-and-set
//! on the marker's version, so what is written is always what these
//! functions decided from what was read.

use serde::{Deserialize, Serialize};

/// Where the handover between a run and the live applier stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No run records: the applier writes and journals nothing.
    Off,
    /// A run builds: the applier journals every change it writes.
    Recording,
    /// The run is about to swap: the applier finishes its batch and stops.
    PauseRequested,
    /// The applier has stopped for the swap (it writes nothing until the
    /// run seals and ends).
    Paused,
    /// The run closed the journal at `through`: nothing more is reserved in
    /// it, and the applier writes nothing until the run ends.
    Sealed,
    /// The applier found the run dead (its rebuild lease gone) and stopped
    /// journaling for it: that run can no longer seal, so it cannot swap.
    Abandoned,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Off => "off",
            Phase::Recording => "recording",
            Phase::PauseRequested => "pause_requested",
            Phase::Paused => "paused",
            Phase::Sealed => "sealed",
            Phase::Abandoned => "abandoned",
        }
    }

    /// An unknown word reads as `None`: the caller fails closed on it.
    pub fn parse(text: &str) -> Option<Phase> {
        [
            Phase::Off,
            Phase::Recording,
            Phase::PauseRequested,
            Phase::Paused,
            Phase::Sealed,
            Phase::Abandoned,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }

    /// Phases in which the applier may reserve journal entries.
    fn journals(self) -> bool {
        matches!(self, Phase::Recording | Phase::PauseRequested)
    }
}

/// The last reservation made, kept so that a reservation whose answer was
/// lost (a MongoDB blip after the write) is given back, not made twice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Reservation {
    pub token: String,
    pub first: i64,
    pub last: i64,
}

/// The marker: which run, in what phase, and the journal's sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Marker {
    pub phase: Phase,
    /// The run the marker belongs to (empty when `Off` and never used).
    pub run_id: String,
    /// The last sequence number reserved. Never goes back, across runs, so
    /// an entry's sequence number is unique for ever.
    pub seq: i64,
    /// The sequence number when the run began: its entries are after it.
    pub since: i64,
    /// Sealed: the last sequence number of the run's journal.
    pub through: i64,
    pub reservation: Option<Reservation>,
}

impl Default for Marker {
    fn default() -> Self {
        Marker {
            phase: Phase::Off,
            run_id: String::new(),
            seq: 0,
            since: 0,
            through: 0,
            reservation: None,
        }
    }
}

/// Why a transition is not allowed from the marker as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the handover marker belongs to run {found:?}, not {asked:?}")]
    OtherRun { asked: String, found: String },
    #[error("the handover marker of run {run_id} is {phase}, which does not allow {what}")]
    Phase {
        run_id: String,
        phase: &'static str,
        what: &'static str,
    },
}

impl Marker {
    fn names(&self, run_id: &str) -> bool {
        self.phase != Phase::Off && self.run_id == run_id
    }

    fn refuse(&self, run_id: &str, what: &'static str) -> Refusal {
        if self.phase == Phase::Off || self.run_id != run_id {
            Refusal::OtherRun {
                asked: run_id.to_string(),
                found: if self.phase == Phase::Off {
                    "(none)".into()
                } else {
                    self.run_id.clone()
                },
            }
        } else {
            Refusal::Phase {
                run_id: run_id.to_string(),
                phase: self.phase.as_str(),
                what,
            }
        }
    }

    /// Run `run_id` (holding the rebuild lease, so any other marker is
    /// stale) begins recording.
    pub fn begin(&self, run_id: &str) -> Marker {
        Marker {
            phase: Phase::Recording,
            run_id: run_id.to_string(),
            seq: self.seq,
            since: self.seq,
            through: 0,
            reservation: None,
        }
    }

    /// Run `run_id`'s marker moved to `to`, allowed from `to` itself or
    /// one of `from`.
    fn advance(
        &self,
        run_id: &str,
        from: &[Phase],
        to: Phase,
        what: &'static str,
    ) -> Result<Marker, Refusal> {
        if !(self.names(run_id) && (self.phase == to || from.contains(&self.phase))) {
            return Err(self.refuse(run_id, what));
        }
        Ok(Marker {
            phase: to,
            ..self.clone()
        })
    }

    /// The run asks the applier to stop after its batch.
    pub fn request_pause(&self, run_id: &str) -> Result<Marker, Refusal> {
        let from = [Phase::Recording];
        self.advance(run_id, &from, Phase::PauseRequested, "a pause request")
    }

    /// The applier says it has stopped.
    pub fn acknowledge_pause(&self, run_id: &str) -> Result<Marker, Refusal> {
        let from = [Phase::PauseRequested];
        self.advance(run_id, &from, Phase::Paused, "a pause acknowledgement")
    }

    /// The run closes its journal: nothing more can be reserved in it, and
    /// the entries it must replay are those up to `through` (set once).
    pub fn seal(&self, run_id: &str) -> Result<Marker, Refusal> {
        if self.phase == Phase::Sealed && self.names(run_id) {
            return Ok(self.clone());
        }
        let from = [Phase::Recording, Phase::PauseRequested, Phase::Paused];
        let sealed = self.advance(run_id, &from, Phase::Sealed, "sealing")?;
        Ok(Marker {
            through: self.seq,
            ..sealed
        })
    }

    /// The applier reserves `count` sequence numbers in run `run_id`'s
    /// journal for a batch it has written. Only while the run records: once
    /// paused, sealed or abandoned, the batch must not be acked (the
    /// sources give it again). The same `token` gives back the same range.
    pub fn reserve(
        &self,
        run_id: &str,
        count: i64,
        token: &str,
    ) -> Result<(Marker, Reservation), Refusal> {
        if let Some(r) = &self.reservation {
            if r.token == token && self.run_id == run_id {
                return Ok((self.clone(), r.clone()));
            }
        }
        if !(self.phase.journals() && self.names(run_id)) {
            return Err(self.refuse(run_id, "journaling"));
        }
        let reservation = Reservation {
            token: token.to_string(),
            first: self.seq + 1,
            last: self.seq + count.max(1),
        };
        Ok((
            Marker {
                seq: reservation.last,
                reservation: Some(reservation.clone()),
                ..self.clone()
            },
            reservation,
        ))
    }

    /// The applier found run `run_id` dead: that run can no longer seal.
    pub fn abandon(&self, run_id: &str) -> Result<Marker, Refusal> {
        match self.phase {
            Phase::Off => Err(self.refuse(run_id, "abandoning")),
            _ if self.names(run_id) => Ok(Marker {
                phase: Phase::Abandoned,
                ..self.clone()
            }),
            _ => Err(self.refuse(run_id, "abandoning")),
        }
    }

    /// The run ended (swapped or not): the applier goes on unjournaled.
    /// The sequence is kept.
    pub fn end(&self, run_id: &str) -> Result<Marker, Refusal> {
        if self.names(run_id) {
            Ok(Marker {
                phase: Phase::Off,
                run_id: String::new(),
                seq: self.seq,
                since: self.seq,
                through: 0,
                reservation: None,
            })
        } else {
            Err(self.refuse(run_id, "ending"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_records_pauses_seals_and_ends() {
        let m = Marker::default().begin("r1");
        assert_eq!((m.phase, m.since), (Phase::Recording, 0));
        let (m, r) = m.reserve("r1", 3, "a").unwrap();
        assert_eq!((r.first, r.last, m.seq), (1, 3, 3));
        let m = m.request_pause("r1").unwrap();
        let (m, r) = m.reserve("r1", 2, "b").unwrap();
        assert_eq!(
            (r.first, r.last),
            (4, 5),
            "the batch in flight is journaled"
        );
        let m = m.acknowledge_pause("r1").unwrap();
        assert!(
            m.reserve("r1", 1, "c").is_err(),
            "paused: nothing is written"
        );
        let m = m.seal("r1").unwrap();
        assert_eq!((m.phase, m.through), (Phase::Sealed, 5));
        assert!(m.reserve("r1", 1, "d").is_err());
        let m = m.end("r1").unwrap();
        assert_eq!(
            (m.phase, m.seq),
            (Phase::Off, 5),
            "the sequence never goes back"
        );
        assert_eq!(m.begin("r2").since, 5);
    }

    #[test]
    fn a_reservation_asked_again_is_given_back_not_made_twice() {
        let m = Marker::default().begin("r1");
        let (m, first) = m.reserve("r1", 2, "t").unwrap();
        let (again, second) = m.reserve("r1", 2, "t").unwrap();
        assert_eq!(first, second);
        assert_eq!(again.seq, 2);
    }

    #[test]
    fn an_abandoned_run_cannot_seal_and_another_run_cannot_touch_the_marker() {
        let m = Marker::default().begin("r1");
        let abandoned = m.abandon("r1").unwrap();
        assert!(matches!(abandoned.seal("r1"), Err(Refusal::Phase { .. })));
        assert!(abandoned.request_pause("r1").is_err());
        assert!(matches!(m.seal("r2"), Err(Refusal::OtherRun { .. })));
        assert!(m.reserve("r2", 1, "t").is_err());
        assert!(m.end("r2").is_err());
        assert_eq!(abandoned.begin("r2").phase, Phase::Recording);
    }

    #[test]
    fn phases_read_back_from_their_words_and_unknown_words_do_not() {
        for p in [
            Phase::Off,
            Phase::Recording,
            Phase::PauseRequested,
            Phase::Paused,
            Phase::Sealed,
            Phase::Abandoned,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("sleeping"), None);
    }
}
