//! The handover between a rebuild and the live applier: the one place that
//! decides whether a live change written to the old generation reaches the
//! new one. `live` and `rebuild` both depend on it; it depends on neither.
//!
//! The promise: every change the applier acks is in the generation readers
//! are served after the swap. The protocol:
//!
//! - The marker ([`marker`], pure) has a phase: `off`, `recording`,
//!   `pause_requested`, `paused`, `sealed`, `abandoned`, the run it names,
//!   and the journal's sequence. It changes only by compare-and-set on its
//!   version ([`store`]), so every transition is one of [`Marker`]'s.
//! - The run: `begin` (recording, before any source is read), replays in
//!   rounds, `request_pause`, waits for `paused` (or no live applier), then
//!   `seal`s: the journal closes at `through`, and nothing more can be
//!   reserved in it. It waits for every entry reserved before the seal,
//!   voids those that never come, replays, confirms its lease and that the
//!   marker is still sealed for it, moves the aliases, and `end`s.
//! - The applier, for each batch, after collecting it: decides by
//!   [`gate`] (pure) from the marker and the rebuild lease; writes; if the
//!   gate named a run, journals the batch ([`Handover::journal`]: reserve,
//!   then write the entries); only then acks.
//! - Fails closed: an unreadable marker or lease holds the batch unwritten;
//!   a stop or a lost live lease hands it back unacked; a reservation
//!   refused (the run paused, sealed or ended meanwhile) or fenced (voided)
//!   hands it back unacked too, and the applier restarts its sources so the
//!   changes come again, in order, to whatever generation is live then.
//! - A marker whose run no longer holds the rebuild lease is `abandoned`
//!   by the applier, which then writes unjournaled: that run can no longer
//!   seal, so it cannot swap. The one timing assumption left: a run's
//!   `_aliases` call ends within the rebuild lease's TTL of its last lease
//!   confirmation (the applier abandons only an expired lease).
//!
//! The model test (`model`, tests only) drives this code on an in-memory
//! store through every interleaving of small schedules with stops, lease
//! expiry, storage errors and pause timeouts, and checks the promise after
//! every step.

pub mod gate;
pub mod marker;
pub mod protocol;
pub mod store;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod model;

pub use gate::{Gate, LeaseView};
pub use marker::{Marker, Phase, Refusal, Reservation};
pub use protocol::{Handover, HandoverError, Sealed};
pub use store::{HandoverStore, JournalEntry, MongoStore, NewEntry};

pub use crate::state::lease::REBUILD_LEASE;

/// The lease of the active live applier.
pub const LIVE_LEASE: &str = "live";

/// The handover on MongoDB.
pub type MongoHandover = Handover<MongoStore>;

/// A new run id: the UTC time and six random hex digits
/// (`20261205T093000Z-1a2b3c`), sortable and unique enough for leases.
pub fn new_run_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let tail: String = (0..6)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect();
    format!("{}-{tail}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}
