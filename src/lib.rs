//! rebuilder: a zero-downtime blue/green rebuilder for the revalidation
//! search indices. The binary in `main.rs` is a thin command line over these
//! modules.

pub mod bench;
pub mod cli;
pub mod config;
pub mod dev;
pub mod domain;
pub mod ops;
pub mod rebuild;
pub mod search;
pub mod sources;
pub mod state;
pub mod telemetry;
