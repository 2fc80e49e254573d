//! rebuilder: a zero-downtime blue/green rebuilder for the revalidation
//! search indices. The binary in `main.rs` is a thin command line over
//! these modules. Dependencies point one way:
//!
//! ```text
//! main → cli / commands → service → rebuild → live → sources / search / state → domain / config / retry / text
//! ```
//!
//! The development aids (data generator, seeding, TCS simulator) and the
//! benchmark are crates of their own (`devtools/`, `bench/`); the product
//! never depends on them.

pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod failpoint;
pub mod handover;
pub mod live;
pub mod rebuild;
pub mod retry;
pub mod search;
pub mod service;
pub mod sources;
pub mod state;
pub mod telemetry;
pub mod text;
