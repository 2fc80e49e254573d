//! The RabbitMQ topology of the TCS protocol and the publishing helpers:
//! the exchange and queues declared where missing (never re-declared with
//! other arguments), persistent JSON properties, and a publish that waits
//! for the broker's confirm.

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use tracing::info;

use super::{DETAIL_HEADER, REASON_HEADER};
use crate::config::RabbitSettings;
use crate::sources::SourceError;
use crate::text::clip;

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
                settings.exchange.as_str().into(),
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
    declare_queues_bound(connection, &channel, &settings.exchange, &queues, "TCS").await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// Declares each of `queues` where missing (durable) and binds it to
/// `exchange` under its routing key, if it has one; `protocol` names them
/// in the log. A queue that exists is left with its own arguments.
pub(crate) async fn declare_queues_bound(
    connection: &Connection,
    channel: &Channel,
    exchange: &str,
    queues: &[(&String, Option<&String>)],
    protocol: &str,
) -> Result<(), SourceError> {
    for (queue, routing_key) in queues {
        if !exists(connection, Declared::Queue(queue)).await? {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            info!(queue = %queue, protocol, "Declared a queue.");
        }
        if let Some(key) = routing_key {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// The headers of a dead-lettered message: its reason (a short key) and
/// the detail in words, clipped.
pub(crate) fn reason_headers(reason: &str, detail: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(REASON_HEADER),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        ShortString::from(DETAIL_HEADER),
        AMQPValue::LongString(LongString::from(clip(detail, 1000).as_ref())),
    );
    headers
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
                name.into(),
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
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok(),
    };
    let _ = channel.close(200, "checked".into()).await;
    Ok(found)
}

/// A channel consuming `queue` with `prefetch` messages in flight (set
/// before the consumer starts) and a channel in confirm mode (for dead
/// letters, or answers): what the sync and the update consumers both open,
/// and the simulators' request listeners.
pub async fn consume_with_dead_letters(
    connection: &Connection,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer, Channel), SourceError> {
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(prefetch.max(1), BasicQosOptions::default())
        .await?;
    let consumer = consume
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let dead_letters = connection.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((consume, consumer, dead_letters))
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
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(SourceError::BrokerRefused(format!(
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

#[cfg(test)]
mod tests {
    use super::*;

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
