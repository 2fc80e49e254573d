//! The parts of one benchmark run, each measured into the
//! [`Report`](crate::report::Report) with the lines it prints as it goes:
//! A, the raw `_bulk` ceiling ([`a_ceiling`]); D, `_reindex` of A's index
//! ([`d_reindex`]); B, the old one-upsert-per-document path ([`b_old_path`]);
//! B and C again through latency proxies ([`latency`]); and C, `rebuilder
//! run` end to end ([`c_rebuilder`]), after its unmeasured first run
//! ([`c_warmup`]) and the stages alone ([`stages_alone`]). The mechanisms
//! they drive live in the crate's other modules.

pub mod a_ceiling;
pub mod b_old_path;
pub mod c_rebuilder;
pub mod c_warmup;
pub mod d_reindex;
pub mod latency;
pub mod stages_alone;
