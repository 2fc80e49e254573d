//! The rebuild: the blue/green engine that builds, validates, promotes,
//! rolls back and retires generations ([`engine`]), the validation gates it
//! applies ([`gates`]), the full run as its steps ([`run`]), the run's
//! record and phases ([`record`]), its progress display ([`progress`]),
//! and rollback as an operation under the same lease ([`rollback`]).

pub mod engine;
pub mod gates;
pub mod progress;
pub mod record;
pub mod rollback;
pub mod run;

pub use rollback::roll_back;
pub use run::{run_rebuild, RunOptions};

/// A run or an operation that was refused on purpose (a lease held, a
/// validation gate failed, nothing to roll back to), as opposed to one that
/// broke: the commands exit with code 3 for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Whether `error` (or any of its causes) is a [`Refused`].
pub fn is_refusal(error: &anyhow::Error) -> bool {
    error.chain().any(|c| c.downcast_ref::<Refused>().is_some())
}
