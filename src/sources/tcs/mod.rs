//! The TCS side of a rebuild: the RabbitMQ sync protocol. Declares the
//! topology when it is missing ([`topology`]), asks TCS for a full sync
//! (`"syncStart"`), then consumes the sync-data queue with manual acks and
//! a prefetch until a `syncEnd` record or an idle timeout ([`sync`]).
//!
//! Delivery is at least once: a record's message is acked only when the run
//! says its document is durably written ([`TcsAcks::settle`]). A message
//! that can never become a document (not JSON, not a trainee, no usable GMC
//! number, or a document OpenSearch refuses for good) is published to the
//! dead-letter queue with the reason in the `x-rebuilder-reason` header,
//! confirmed by the broker, and only then acked, so it is never lost
//! ([`acks`]).

pub mod acks;
pub mod sync;
pub mod topology;
pub mod updates;

pub use acks::{DeliveryKey, TcsAcks, TcsTicket};
pub use sync::{TcsEvent, TcsSync};
pub use topology::{
    consume_with_dead_letters, declare_topology, json_properties, publish_confirmed,
};
pub use updates::{QueueDepth, TcsUpdates, UpdateEvent};

/// The header that carries a dead-lettered message's reason key.
pub const REASON_HEADER: &str = "x-rebuilder-reason";
/// The header that carries the reason in words.
pub const DETAIL_HEADER: &str = "x-rebuilder-detail";
/// The reject key of a record whose document OpenSearch refused for good.
pub const REJECT_INDEXING_FAILED: &str = "indexing_failed";
