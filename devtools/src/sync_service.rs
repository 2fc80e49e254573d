//! A revalidation service's side of an `IndexSyncMessage` protocol
//! ([`SyncProtocol`]), on a real RabbitMQ: it listens on the protocol's
//! start queue and answers each request with its items as batches
//! (`{"payload": [...], "syncEnd": false}`), then the end message. The
//! recommendation and connection simulators are this with their items.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use lapin::Channel;
use serde_json::{json, Value};
use tracing::{info, warn};

use rebuilder::config::RabbitSettings;
use rebuilder::sources::index_sync::{declare_protocol_queues, SyncProtocol};
use rebuilder::sources::tcs::{consume_with_dead_letters, json_properties};
use rebuilder::sources::{rabbit_connection, SourceError};

use crate::guard::check_amqp_uri;
use crate::simulator::SimulatorError;

/// How a simulated service answers.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Serve one sync, then return.
    pub once: bool,
    /// Items per batch.
    pub batch_size: usize,
    /// Message bodies published after the items and before the end, as
    /// they are (the bad-input tests put malformed batches here).
    pub extra_messages: Vec<Vec<u8>>,
    /// The message that ends a sync.
    pub end_message: Value,
}

impl ServeOptions {
    pub fn new(batch_size: usize) -> Self {
        Self {
            once: false,
            batch_size,
            extra_messages: Vec::new(),
            end_message: json!({"payload": [], "syncEnd": true}),
        }
    }
}

/// What one answered request published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Batches of items (extra messages and the end not included).
    pub batches: u64,
    pub items: u64,
}

/// Serves syncs of `protocol` until the connection fails, or after one
/// with `once`; `items` gives a sync's items. Refuses a broker that is not
/// on loopback: it publishes generated doctors.
pub async fn serve<F, I>(
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
    options: &ServeOptions,
    items: F,
) -> Result<Vec<Served>, SimulatorError>
where
    F: Fn() -> I,
    I: Iterator<Item = Value>,
{
    check_amqp_uri(rabbit.uri.expose())?;
    let connection = rabbit_connection(rabbit).await?;
    declare_protocol_queues(&connection, rabbit, protocol).await?;
    let tag = format!("{}-simulator", protocol.consumer_tag);
    let expected: String = serde_json::from_slice(protocol.request).expect("a JSON string");
    let mut requests = Requests::listen(&connection, protocol.start_queue, &tag, &expected).await?;
    info!(queue = %protocol.start_queue, request = %expected, batch_size = options.batch_size, "Simulated {} listening.", protocol.service);
    let mut served = Vec::new();
    while let Some(request) = requests.next().await? {
        let sync = publish_sync(&requests.publisher, rabbit, protocol, options, items()).await?;
        request.ack(BasicAckOptions::default()).await?;
        served.push(sync);
        if options.once {
            break;
        }
    }
    let _ = connection.close(200, "simulator done".into()).await;
    Ok(served)
}

/// The requests a simulated service answers: one at a time from its start
/// queue, each a JSON string; anything else is acked and ignored, with a
/// warning. `publisher` is a channel in confirm mode to answer on.
pub struct Requests {
    /// The consuming channel, kept open as long as the consumer.
    _channel: Channel,
    consumer: lapin::Consumer,
    expected: String,
    pub publisher: Channel,
}

impl Requests {
    /// Starts consuming `queue` (one unacked request at a time).
    pub async fn listen(
        connection: &lapin::Connection,
        queue: &str,
        consumer_tag: &str,
        expected: &str,
    ) -> Result<Self, SourceError> {
        let (channel, consumer, publisher) =
            consume_with_dead_letters(connection, queue, consumer_tag, 1).await?;
        Ok(Self {
            _channel: channel,
            consumer,
            expected: expected.to_string(),
            publisher,
        })
    }

    /// The next expected request (ack it once answered); `None` when the
    /// consumer ends.
    pub async fn next(&mut self) -> Result<Option<lapin::Acker>, lapin::Error> {
        while let Some(delivery) = self.consumer.next().await {
            let delivery = delivery?;
            let body: Option<String> = serde_json::from_slice(&delivery.data).ok();
            if body.as_deref() == Some(self.expected.as_str()) {
                return Ok(Some(delivery.acker));
            }
            warn!(
                body = %String::from_utf8_lossy(&delivery.data),
                "Ignoring a request that is not {:?}.", self.expected
            );
            delivery.acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(None)
    }
}

/// Publishes one sync: the batches, the extra messages, then the end.
/// `channel` must be in confirm mode.
pub async fn publish_sync(
    channel: &Channel,
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
    options: &ServeOptions,
    items: impl Iterator<Item = Value>,
) -> Result<Served, SourceError> {
    let started = std::time::Instant::now();
    let batch_size = options.batch_size.max(1);
    let mut served = Served::default();
    let mut pending = Vec::new();
    let mut payload = Vec::with_capacity(batch_size);
    let mut items = items.peekable();
    while let Some(item) = items.next() {
        payload.push(item);
        if payload.len() == batch_size || items.peek().is_none() {
            served.items += payload.len() as u64;
            served.batches += 1;
            let body = json!({"payload": std::mem::take(&mut payload), "syncEnd": false});
            pending.push(publish(channel, rabbit, protocol, &body.to_string().into_bytes()).await?);
        }
    }
    for body in &options.extra_messages {
        pending.push(publish(channel, rabbit, protocol, body).await?);
    }
    let end = options.end_message.to_string().into_bytes();
    pending.push(publish(channel, rabbit, protocol, &end).await?);
    for confirm in futures::future::try_join_all(pending).await? {
        if confirm.is_nack() {
            return Err(SourceError::BrokerRefused(format!(
                "a simulated {} batch",
                protocol.what
            )));
        }
    }
    info!(
        batches = served.batches,
        items = served.items,
        secs = started.elapsed().as_secs_f64(),
        "Simulated {} published a {} sync.",
        protocol.service,
        protocol.what
    );
    Ok(served)
}

async fn publish(
    channel: &Channel,
    rabbit: &RabbitSettings,
    protocol: &SyncProtocol<'_>,
    body: &[u8],
) -> Result<lapin::PublisherConfirm, SourceError> {
    Ok(channel
        .basic_publish(
            rabbit.exchange.as_str().into(),
            protocol.data_routing_key.into(),
            BasicPublishOptions::default(),
            body,
            json_properties(),
        )
        .await?)
}
