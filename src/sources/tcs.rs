//! The TCS side of a rebuild: the RabbitMQ sync protocol. Declares the
//! topology when it is missing, asks TCS for a full sync (`"syncStart"`),
//! then consumes the sync-data queue with manual acks and a prefetch until
//! a `syncEnd` record or an idle timeout.
//!
//! Delivery is at least once: a record's message is acked only when the run
//! says its document is durably written ([`TcsAcks::ack`]). A message that
//! can never become a document (not JSON, not a trainee, no usable GMC
//! number, or a document OpenSearch refuses for good) is published to the
//! dead-letter queue with the reason in the `x-rebuilder-reason` header,
//! confirmed by the broker, and only then acked, so it is never lost.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{rabbit_connection, SourceError};
use crate::config::RabbitSettings;
use crate::domain::{parse_tcs_message, GmcNumber, TcsMessage, TcsRecord};

/// The header that carries a dead-lettered message's reason key.
pub const REASON_HEADER: &str = "x-rebuilder-reason";
/// The header that carries the reason in words.
pub const DETAIL_HEADER: &str = "x-rebuilder-detail";
/// The reject key of a record whose document OpenSearch refused for good.
pub const REJECT_INDEXING_FAILED: &str = "indexing_failed";

/// Declares what the sync protocol needs, where it is missing: the
/// exchange (direct: every routing key names one queue), the sync-start,
/// sync-data and update queues bound to it, and the dead-letter queue
/// (reached through the default exchange by its name). Something that
/// already exists is checked passively and left as it is, so a broker
/// configured by TCS with other arguments is never fought over.
pub async fn declare_topology(
    connection: &Connection,
    settings: &RabbitSettings,
) -> Result<(), SourceError> {
    let channel = connection.create_channel().await?;
    if !exists(connection, Declared::Exchange(&settings.exchange)).await? {
        channel
            .exchange_declare(
                &settings.exchange,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        info!(exchange = %settings.exchange, "Declared the TCS exchange.");
    }
    let queues = [
        (
            &settings.sync_start_queue,
            Some(&settings.sync_start_routing_key),
        ),
        (
            &settings.sync_data_queue,
            Some(&settings.sync_data_routing_key),
        ),
        (&settings.update_queue, Some(&settings.update_routing_key)),
        (&settings.dead_letter_queue, None),
    ];
    for (queue, routing_key) in queues {
        if !exists(connection, Declared::Queue(queue)).await? {
            channel
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            info!(queue = %queue, "Declared a TCS queue.");
        }
        if let Some(key) = routing_key {
            channel
                .queue_bind(
                    queue,
                    &settings.exchange,
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    let _ = channel.close(200, "topology declared").await;
    Ok(())
}

enum Declared<'a> {
    Exchange(&'a str),
    Queue(&'a str),
}

/// Whether an exchange or queue exists, by a passive declare on a channel
/// of its own (a failed passive declare closes its channel).
async fn exists(connection: &Connection, what: Declared<'_>) -> Result<bool, SourceError> {
    let channel = connection.create_channel().await?;
    let found = match what {
        Declared::Exchange(name) => channel
            .exchange_declare(
                name,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok(),
        Declared::Queue(name) => channel
            .queue_declare(
                name,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok(),
    };
    let _ = channel.close(200, "checked").await;
    Ok(found)
}

/// The error for a message the broker refused to take (a publisher nack).
pub(crate) fn broker_refused(what: &str) -> SourceError {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError};
    SourceError::Rabbit(lapin::Error::ProtocolError(AMQPError::new(
        AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR),
        format!("the broker refused (nacked) {what}").into(),
    )))
}

/// The error for a consumer whose channel closed under it.
fn consumer_closed() -> SourceError {
    SourceError::Rabbit(lapin::Error::InvalidChannelState(
        lapin::ChannelState::Closed,
    ))
}

/// Publishes one persistent JSON body to the exchange and waits for the
/// broker's confirm (the channel must be in confirm mode).
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), SourceError> {
    let confirm = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(broker_refused(&format!(
            "a message to {exchange:?} with routing key {routing_key:?}"
        )));
    }
    Ok(())
}

/// Properties of a persistent JSON message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// What a received message turned out to be.
#[derive(Debug)]
pub enum TcsEvent {
    /// A trainee. Ack it (or dead-letter it) through [`TcsAcks`] once its
    /// document's fate is known.
    Record {
        number: GmcNumber,
        record: Box<TcsRecord>,
        ticket: TcsTicket,
    },
    /// A message that cannot be a record: already dead-lettered and acked.
    Rejected { reason: &'static str },
    /// `syncEnd`: acked; the sync is complete.
    End,
}

/// What the run needs to settle one record's message later: its delivery
/// tag and its body (to dead-letter it if its document fails for good).
/// Only the messages in flight hold one, at most `prefetch` of them.
#[derive(Clone, Debug)]
pub struct TcsTicket {
    pub delivery_tag: u64,
    pub body: Vec<u8>,
}

/// Settles messages of one sync: acks and dead-letters. Cheap to clone, so
/// the task that drains the bulk writer's outcomes can own one.
///
/// Acks are coalesced: settling a message marks its delivery tag, and one
/// `basic.ack` with `multiple` covers the longest run of settled tags from
/// the oldest unacked one. Documents settle out of order (concurrent bulk
/// requests, retries), so a tag is acked only once every older delivery is
/// settled too; nothing unsettled is ever acked. One ack per message costs
/// a round through the AMQP connection each and caps a sync at a few
/// hundred messages a second; coalesced, a batch needs one.
#[derive(Clone)]
pub struct TcsAcks {
    consume: Channel,
    dead_letters: Channel,
    dead_letter_queue: String,
    window: Arc<Mutex<AckWindow>>,
}

/// Delivery tags settled but not acked yet, above the acked prefix.
#[derive(Debug)]
struct AckWindow {
    /// The oldest tag not acked (tags start at 1 on a channel).
    next: u64,
    settled: BTreeSet<u64>,
}

impl AckWindow {
    fn new() -> Self {
        Self {
            next: 1,
            settled: BTreeSet::new(),
        }
    }

    /// Marks tags settled; returns the tag to ack with `multiple` when the
    /// acked prefix grows.
    fn settle(&mut self, tags: impl IntoIterator<Item = u64>) -> Option<u64> {
        for tag in tags {
            if tag >= self.next {
                self.settled.insert(tag);
            }
        }
        let before = self.next;
        while self.settled.remove(&self.next) {
            self.next += 1;
        }
        (self.next > before).then(|| self.next - 1)
    }
}

impl TcsAcks {
    /// Acks one message: its document is written (or superseded by a
    /// record that wins over it, which is just as final).
    pub async fn ack(&self, ticket: &TcsTicket) -> Result<(), SourceError> {
        self.settle([ticket.delivery_tag]).await
    }

    /// Marks messages settled and acks every settled message older than
    /// the oldest unsettled one, in one `basic.ack`.
    pub async fn settle(&self, tags: impl IntoIterator<Item = u64>) -> Result<(), SourceError> {
        // The lock is held across the ack so acks leave in tag order.
        let mut window = self.window.lock().await;
        if let Some(upto) = window.settle(tags) {
            self.consume
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(())
    }

    /// Publishes the message to the dead-letter queue with the reason,
    /// waits for the broker's confirm, then acks the original.
    pub async fn dead_letter(
        &self,
        ticket: &TcsTicket,
        reason: &str,
        detail: &str,
    ) -> Result<(), SourceError> {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(REASON_HEADER),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            ShortString::from(DETAIL_HEADER),
            AMQPValue::LongString(LongString::from(truncate(detail, 1000))),
        );
        publish_confirmed(
            &self.dead_letters,
            "",
            &self.dead_letter_queue,
            &ticket.body,
            json_properties().with_headers(headers),
        )
        .await?;
        self.ack(ticket).await
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One full sync from TCS, from `syncStart` to `syncEnd`.
pub struct TcsSync {
    connection: Connection,
    consumer: Consumer,
    acks: TcsAcks,
    idle_timeout: Duration,
    /// Time spent waiting for a message since the last one arrived. Time
    /// the caller spends elsewhere (blocked on OpenSearch) does not count.
    waited: Duration,
    received: u64,
    /// Messages of an earlier sync found on the queue and discarded.
    pub purged_stale: u64,
}

impl TcsSync {
    /// Connects, declares the topology, discards what an earlier sync left
    /// on the sync-data queue, starts consuming (prefetch first) and
    /// publishes `"syncStart"`.
    ///
    /// Why discard: a sync is a full snapshot, and the messages a dead run
    /// left unacked (possibly with that sync's `syncEnd`) would end this
    /// sync early with an old partial stream. The caller holds the lease,
    /// so no other consumer owns them; the new sync sends every record again.
    pub async fn start(settings: &RabbitSettings) -> Result<Self, SourceError> {
        let connection = rabbit_connection(settings).await?;
        declare_topology(&connection, settings).await?;
        let consume = connection.create_channel().await?;
        let purged_stale = consume
            .queue_purge(&settings.sync_data_queue, QueuePurgeOptions::default())
            .await?;
        if purged_stale > 0 {
            warn!(
                queue = %settings.sync_data_queue,
                messages = purged_stale,
                "Discarded messages an earlier sync left on the queue."
            );
        }
        consume
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                &settings.sync_data_queue,
                "rebuilder-sync",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publish_confirmed(
            &dead_letters,
            &settings.exchange,
            &settings.sync_start_routing_key,
            br#""syncStart""#,
            json_properties(),
        )
        .await?;
        info!(
            exchange = %settings.exchange,
            routing_key = %settings.sync_start_routing_key,
            "Asked TCS for a full sync."
        );
        Ok(Self {
            connection,
            consumer,
            acks: TcsAcks {
                consume,
                dead_letters,
                dead_letter_queue: settings.dead_letter_queue.clone(),
                window: Arc::new(Mutex::new(AckWindow::new())),
            },
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
            waited: Duration::ZERO,
            received: 0,
            purged_stale: u64::from(purged_stale),
        })
    }

    /// The handle that acks and dead-letters this sync's messages.
    pub fn acks(&self) -> TcsAcks {
        self.acks.clone()
    }

    /// Messages received so far (records, rejects and `syncEnd`).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next event, waiting at most `wait`: `Ok(None)` when nothing came
    /// in that time (the caller may flush a partial batch and call again),
    /// [`SourceError::TcsIdle`] once the waits since the last message add
    /// up to the idle timeout.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<TcsEvent>, SourceError> {
        let left = self.idle_timeout.saturating_sub(self.waited);
        if left.is_zero() {
            return Err(self.idle_error());
        }
        let wait = wait.min(left);
        let started = Instant::now();
        let delivery = match tokio::time::timeout(wait, self.consumer.next()).await {
            Err(_) => {
                self.waited += started.elapsed();
                return if self.waited >= self.idle_timeout {
                    Err(self.idle_error())
                } else {
                    Ok(None)
                };
            }
            Ok(None) => return Err(consumer_closed()),
            Ok(Some(delivery)) => delivery?,
        };
        self.waited = Duration::ZERO;
        self.received += 1;
        let ticket = TcsTicket {
            delivery_tag: delivery.delivery_tag,
            body: delivery.data,
        };
        match parse_tcs_message(&ticket.body) {
            Ok(TcsMessage::Record(number, record)) => Ok(Some(TcsEvent::Record {
                number,
                record,
                ticket,
            })),
            Ok(TcsMessage::SyncEnd) => {
                self.acks.ack(&ticket).await?;
                info!(messages = self.received, "TCS ended the sync.");
                Ok(Some(TcsEvent::End))
            }
            Err(reason) => {
                debug!(reason = reason.as_str(), detail = %reason, "Dead-lettering a TCS message.");
                self.acks
                    .dead_letter(&ticket, reason.as_str(), &reason.to_string())
                    .await?;
                Ok(Some(TcsEvent::Rejected {
                    reason: reason.as_str(),
                }))
            }
        }
    }

    /// The next event, however long it takes up to the idle timeout.
    pub async fn next(&mut self) -> Result<TcsEvent, SourceError> {
        loop {
            if let Some(event) = self.next_within(self.idle_timeout).await? {
                return Ok(event);
            }
        }
    }

    fn idle_error(&self) -> SourceError {
        SourceError::TcsIdle {
            idle_secs: self.idle_timeout.as_secs(),
            received: self.received,
        }
    }

    /// Stops deliveries (after `syncEnd`); acks keep working until [`close`](Self::close).
    pub async fn stop_consuming(&self) -> Result<(), SourceError> {
        self.acks
            .consume
            .basic_cancel(self.consumer.tag().as_str(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the connection. Messages not acked yet go back to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "sync done").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_cover_only_the_settled_prefix() {
        let mut w = AckWindow::new();
        assert_eq!(w.settle([2, 3]), None, "1 is not settled yet");
        assert_eq!(w.settle([1]), Some(3));
        assert_eq!(w.settle([5]), None);
        assert_eq!(w.settle([4, 6]), Some(6));
        assert_eq!(w.settle([6]), None, "an acked tag is not acked again");
        assert!(w.settled.is_empty());
    }

    #[test]
    fn long_details_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 3), "é");
    }

    #[test]
    fn persistent_json_properties() {
        let p = json_properties();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
    }
}
