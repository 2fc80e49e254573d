//! Everything that talks to OpenSearch: the client, index templates,
//! generations, their health, the bulk writer, aliases, server-side
//! reindex and retention.

pub mod aliases;
pub mod breakdown;
pub mod bulk;
pub mod client;
pub mod generations;
pub mod health;
pub mod reindex;
pub mod retention;
pub mod templates;
pub mod updates;

pub use bulk::{
    BulkItem, BulkOutcome, BulkOutcomes, BulkProgress, BulkSender, BulkStats, BulkWriter,
    ItemOutcome,
};
pub use client::{SearchClient, SearchError};
pub use generations::{Generation, GenerationInfo, GenerationMeta, GenerationState};
pub use health::GenerationHealth;
pub use templates::{Family, IndexTemplate};
