//! Everything that talks to OpenSearch: the client, index templates,
//! generations, the bulk writer, aliases and server-side reindex.

pub mod client;
pub mod templates;

pub use client::{SearchClient, SearchError};
pub use templates::{Family, IndexTemplate};
