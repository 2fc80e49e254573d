//! Development and test aids of rebuilder, kept out of the production
//! binary: the deterministic data generator, the seeding of a local
//! MongoDB-compatible server, the TCS simulator that plays TCS on a
//! local RabbitMQ, the recommendation service's side of the GMC sync
//! ([`recommendation_simulator`]) and the connection service's side of its
//! two syncs ([`connection_simulator`]), both on [`sync_service`], and
//! live changes for the demo
//! ([`live_changes`]). The
//! demo, the tests and the benchmark use them; the servers they write to
//! must be on loopback ([`guard`]).

pub mod connection_simulator;
pub mod datagen;
pub mod guard;
pub mod live_changes;
pub mod recommendation_simulator;
pub mod seed;
pub mod simulator;
pub mod sync_service;
