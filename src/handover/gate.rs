//! The live applier's one decision before it writes a batch, as pure code:
//! write (journaling for a run or not), pause, abandon a dead run's marker,
//! hold, or stop. Everything it cannot tell for sure fails closed: an
//! unreadable marker or lease holds the batch (nothing written, nothing
//! acked), a stop or a lost live lease hands it back to the sources.

use super::marker::{Marker, Phase};

/// What the applier knows of the rebuild lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseView {
    pub run_id: String,
    pub expired: bool,
}

/// What the applier read just before deciding, each read possibly failed.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// The applier was asked to stop.
    pub stopping: bool,
    /// Why this applier's own live lease is lost, if it is.
    pub own_lease_lost: Option<&'a str>,
    pub marker: Result<&'a Marker, String>,
    pub rebuild_lease: Result<Option<&'a LeaseView>, String>,
}

/// What to do with the batch in hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Write it; then journal it for this run (before acking) if named.
    Write { journal_for: Option<String> },
    /// Write nothing: the run is swapping. Acknowledge the pause first if
    /// `acknowledge`, then look again.
    Pause { run_id: String, acknowledge: bool },
    /// The marker's run is dead (its lease gone, expired or another's):
    /// mark it abandoned, so that run can never seal, then look again.
    Abandon { run_id: String },
    /// Cannot tell: write nothing, look again after a backoff.
    Hold { reason: String },
    /// Write nothing, ack nothing: the sources give the batch again to
    /// whichever applier goes on.
    Stop { reason: String },
}

/// The decision. Order matters: a stop wins over everything, then what
/// cannot be read, then what the marker says.
pub fn gate(facts: &Facts<'_>) -> Gate {
    if facts.stopping {
        return Gate::Stop {
            reason: "the applier is stopping".into(),
        };
    }
    if let Some(reason) = facts.own_lease_lost {
        return Gate::Stop {
            reason: format!("the live lease was lost: {reason}"),
        };
    }
    let marker = match &facts.marker {
        Ok(marker) => *marker,
        Err(e) => {
            return Gate::Hold {
                reason: format!("the handover marker is unreadable: {e}"),
            }
        }
    };
    if matches!(marker.phase, Phase::Off | Phase::Abandoned) {
        return Gate::Write { journal_for: None };
    }
    let run_id = marker.run_id.clone();
    let alive = match &facts.rebuild_lease {
        Ok(Some(lease)) => !lease.expired && lease.run_id == run_id,
        Ok(None) => false,
        Err(e) => {
            return Gate::Hold {
                reason: format!("the rebuild lease is unreadable: {e}"),
            }
        }
    };
    if !alive {
        return Gate::Abandon { run_id };
    }
    match marker.phase {
        Phase::Recording => Gate::Write {
            journal_for: Some(run_id),
        },
        Phase::PauseRequested => Gate::Pause {
            run_id,
            acknowledge: true,
        },
        _ => Gate::Pause {
            run_id,
            acknowledge: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(marker: &'a Marker, lease: Option<&'a LeaseView>) -> Facts<'a> {
        Facts {
            stopping: false,
            own_lease_lost: None,
            marker: Ok(marker),
            rebuild_lease: Ok(lease),
        }
    }

    fn alive(run: &str) -> LeaseView {
        LeaseView {
            run_id: run.into(),
            expired: false,
        }
    }

    #[test]
    fn a_recording_run_alive_is_journaled_for() {
        let m = Marker::default().begin("r1");
        let lease = alive("r1");
        assert_eq!(
            gate(&facts(&m, Some(&lease))),
            Gate::Write {
                journal_for: Some("r1".into())
            }
        );
    }

    #[test]
    fn no_run_means_writing_without_a_journal() {
        let m = Marker::default();
        assert_eq!(gate(&facts(&m, None)), Gate::Write { journal_for: None });
        let abandoned = m.begin("r1").abandon("r1").unwrap();
        assert_eq!(
            gate(&facts(&abandoned, None)),
            Gate::Write { journal_for: None }
        );
    }

    #[test]
    fn a_pause_is_acknowledged_once_then_waited_in_and_a_sealed_run_is_waited_for() {
        let lease = alive("r1");
        let asked = Marker::default().begin("r1").request_pause("r1").unwrap();
        assert!(matches!(
            gate(&facts(&asked, Some(&lease))),
            Gate::Pause {
                acknowledge: true,
                ..
            }
        ));
        let paused = asked.acknowledge_pause("r1").unwrap();
        assert!(matches!(
            gate(&facts(&paused, Some(&lease))),
            Gate::Pause {
                acknowledge: false,
                ..
            }
        ));
        let sealed = paused.seal("r1").unwrap();
        assert!(matches!(
            gate(&facts(&sealed, Some(&lease))),
            Gate::Pause {
                acknowledge: false,
                ..
            }
        ));
    }

    #[test]
    fn a_dead_run_is_abandoned_whatever_its_phase() {
        let m = Marker::default().begin("r1");
        let expired = LeaseView {
            run_id: "r1".into(),
            expired: true,
        };
        let other = alive("r2");
        for lease in [None, Some(&expired), Some(&other)] {
            assert_eq!(
                gate(&facts(&m, lease)),
                Gate::Abandon {
                    run_id: "r1".into()
                }
            );
        }
    }

    #[test]
    fn what_cannot_be_read_holds_and_a_stop_or_a_lost_lease_stops() {
        let m = Marker::default().begin("r1").request_pause("r1").unwrap();
        let lease = alive("r1");
        let mut f = facts(&m, Some(&lease));
        f.marker = Err("timed out".into());
        assert!(
            matches!(gate(&f), Gate::Hold { .. }),
            "case 2: a blip at the marker"
        );
        let mut f = facts(&m, Some(&lease));
        f.rebuild_lease = Err("timed out".into());
        assert!(
            matches!(gate(&f), Gate::Hold { .. }),
            "case 2: a blip at the lease"
        );
        let mut f = facts(&m, Some(&lease));
        f.stopping = true;
        assert!(
            matches!(gate(&f), Gate::Stop { .. }),
            "case 1: stopped while paused"
        );
        let mut f = facts(&m, Some(&lease));
        f.own_lease_lost = Some("expired");
        assert!(
            matches!(gate(&f), Gate::Stop { .. }),
            "case 3: the applier's lease expired"
        );
    }
}
