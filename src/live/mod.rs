//! Live updates: the changes TCS and GMC make while the index serves, and
//! while a rebuild runs.
//!
//! - [`applier`]: consumes the TCS update queue and the change streams of
//!   `doctorsForDB` and `recommendation`, applies each change to the live
//!   generation through the write alias, journals it while a rebuild
//!   records, pauses while a rebuild swaps (the protocol is `handover`'s);
//! - [`backlog`]: how far behind the applier is (queue depth, stream lag);
//! - [`resolve`]: a batch of changes into document updates (`domain::change`);
//! - [`recorded`]: a change in its source form, as the journal keeps it;
//! - [`replay`]: the journal onto a generation (a rebuild's catch-up);
//! - [`status`]: whether an applier of this process is active and its
//!   sources open.

pub mod applier;
pub mod backlog;
pub mod recorded;
pub mod replay;
pub mod resolve;
pub mod status;

pub use crate::handover::LIVE_LEASE;
pub use applier::{run_applier, run_applier_with_status, HandedBack};
pub use replay::{ReplayReport, Replayer};
pub use status::{LiveState, LiveStatus};
