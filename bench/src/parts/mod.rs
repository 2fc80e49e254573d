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

use rebuilder::search::{IndexTemplate, SearchClient};

use crate::cli::Args;
use crate::corpus::Corpus;

/// What A, D and B share: the flags, the OpenSearch node on loopback, the
/// master template their indices are created from, the generated documents
/// and the benchmark's index prefix.
pub struct OnTheNode<'a> {
    pub args: &'a Args,
    pub search: &'a SearchClient,
    pub template: &'a IndexTemplate,
    pub corpus: &'a Corpus,
    pub prefix: &'a str,
}
