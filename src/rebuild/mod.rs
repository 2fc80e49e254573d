//! The rebuild: the blue/green engine that builds, validates, promotes,
//! rolls back and retires generations ([`engine`]), the validation gates it
//! applies ([`gates`]), the full run as its steps ([`run`]), the run's
//! record and phases ([`record`]), its progress display ([`progress`]),
//! and rollback as an operation under the same lease ([`rollback`]).

pub mod adopt;
pub mod engine;
pub mod gates;
pub mod progress;
pub mod record;
pub mod rollback;
pub mod run;

pub use rollback::roll_back;
pub use run::{run_rebuild, start_run, RunOptions, StartedRun};

/// A run or an operation that was refused on purpose (a lease held, a
/// validation gate failed, nothing to roll back to), as opposed to one that
/// broke: the commands exit with code 3 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Attached to the refusal of a run or rollback while the lease is held:
/// which run holds it (the service answers 409 with its id).
#[derive(Debug, thiserror::Error)]
#[error("the rebuild lease is held by run {run_id}")]
pub struct LeaseHeld {
    pub run_id: String,
}

/// A run stopped at a safe point because it was asked to (SIGTERM, Ctrl-C):
/// no alias moved, its half-built generations are deleted.
#[derive(Debug, thiserror::Error)]
#[error("aborted: {0}")]
pub struct Aborted(pub String);

/// Whether `error` (or any of its causes) is a [`Refused`].
pub fn is_refusal(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.downcast_ref::<Refused>().is_some())
}

/// The run holding the lease, when `error` is a refusal for that reason.
pub fn lease_holder(error: &anyhow::Error) -> Option<&str> {
    // A context is found by anyhow's own downcast (through every layer of
    // context), not by the cause chain.
    error.downcast_ref::<LeaseHeld>().map(|h| h.run_id.as_str())
}

/// Whether `error` is an [`Aborted`] run.
pub fn is_abort(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.downcast_ref::<Aborted>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::anyhow;

    #[test]
    fn a_held_lease_names_its_holder_through_every_layer_of_context() {
        let refused = anyhow!(Refused("held".into()))
            .context(LeaseHeld {
                run_id: "run-7".into(),
            })
            .context("while starting the run");
        assert!(is_refusal(&refused));
        assert_eq!(lease_holder(&refused), Some("run-7"));
        assert!(!is_abort(&refused));
        assert_eq!(lease_holder(&anyhow!("broken")), None);
        let aborted = anyhow!(Aborted("asked to stop".into())).context("while loading");
        assert!(is_abort(&aborted) && !is_refusal(&aborted));
    }
}
