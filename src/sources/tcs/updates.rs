//! The TCS update queue: one trainee's current TCS fields per message (the
//! same body as a sync record), consumed with manual acks and a prefetch by
//! the live applier. A message is settled through [`TcsAcks`] once its
//! change is written; one that cannot be a change is dead-lettered with its
//! reason at once.

use futures::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tracing::debug;

use super::acks::{TcsAcks, TcsTicket};
use super::topology::{consume_with_dead_letters, declare_topology};
use crate::config::RabbitSettings;
use crate::domain::{parse_tcs_update, GmcNumber, TcsMessage, TcsRecord, TcsUpdate};
use crate::sources::{rabbit_connection, SourceError};

/// What one message of the update queue is.
#[derive(Debug)]
pub enum UpdateEvent {
    /// A trainee's change; settle the ticket once it is written.
    Record {
        number: GmcNumber,
        record: Box<TcsRecord>,
        ticket: TcsTicket,
    },
    /// A trainee filtered out of TIS (no GMC number, a `tcsPersonId`):
    /// settle the ticket once its TIS fields are gone from the index.
    FilteredOut { person: i64, ticket: TcsTicket },
    /// Not a change: dead-lettered (or, for a stray `syncEnd`, acked).
    Rejected { reason: &'static str },
}

/// The consumer of the update queue.
pub struct TcsUpdates {
    connection: Connection,
    consumer: Consumer,
    acks: TcsAcks,
    max_message_bytes: usize,
    depth: QueueDepth,
}

/// Reads how many messages wait in the update queue (ready, not yet
/// delivered to the applier), on a channel of its own.
#[derive(Clone)]
pub struct QueueDepth {
    channel: Channel,
    queue: String,
}

impl QueueDepth {
    /// The messages waiting now (a passive declare: it creates nothing).
    pub async fn waiting(&self) -> Result<u32, SourceError> {
        let queue = self
            .channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }
}

impl TcsUpdates {
    /// Connects, declares the topology where missing, and consumes the
    /// update queue with `prefetch` messages in flight.
    pub async fn open(settings: &RabbitSettings, prefetch: u16) -> Result<Self, SourceError> {
        let connection = rabbit_connection(settings).await?;
        declare_topology(&connection, settings).await?;
        let (consume, consumer, dead_letters) = consume_with_dead_letters(
            &connection,
            &settings.update_queue,
            "rebuilder-live",
            prefetch,
        )
        .await?;
        let depth = QueueDepth {
            channel: connection.create_channel().await?,
            queue: settings.update_queue.clone(),
        };
        Ok(Self {
            connection,
            consumer,
            acks: TcsAcks::new(consume, dead_letters, &settings.dead_letter_queue),
            max_message_bytes: settings.max_message_bytes,
            depth,
        })
    }

    /// The handle that acks and dead-letters this consumer's messages.
    pub fn acks(&self) -> TcsAcks {
        self.acks.clone()
    }

    /// The handle that reads the queue's depth.
    pub fn depth(&self) -> QueueDepth {
        self.depth.clone()
    }

    /// The next message; waits until one comes.
    pub async fn next(&mut self) -> Result<UpdateEvent, SourceError> {
        let delivery = match self.consumer.next().await {
            Some(delivery) => delivery?,
            None => {
                return Err(SourceError::Rabbit(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "the update consumer's channel closed",
                    )
                    .into(),
                ))
            }
        };
        let ticket = TcsTicket {
            delivery_tag: delivery.delivery_tag,
            // The applier opens a new consumer (and new acks) after a lost
            // connection, so its tickets all belong to the first one.
            epoch: 0,
            body: delivery.data,
        };
        match parse_tcs_update(&ticket.body, self.max_message_bytes) {
            Ok(TcsUpdate::Message(TcsMessage::Record(number, record))) => Ok(UpdateEvent::Record {
                number,
                record,
                ticket,
            }),
            Ok(TcsUpdate::FilteredOut { person }) => {
                Ok(UpdateEvent::FilteredOut { person, ticket })
            }
            Ok(TcsUpdate::Message(TcsMessage::SyncEnd)) => {
                // A syncEnd belongs to the sync queue; here it changes nothing.
                self.acks.ack(&ticket).await?;
                Ok(UpdateEvent::Rejected {
                    reason: "sync_end_on_update_queue",
                })
            }
            Err(reason) => {
                debug!(reason = reason.as_str(), detail = %reason, "Dead-lettering a TCS update.");
                self.acks
                    .dead_letter(&ticket, reason.as_str(), &reason.to_string())
                    .await?;
                Ok(UpdateEvent::Rejected {
                    reason: reason.as_str(),
                })
            }
        }
    }

    /// Closes the connection; unacked messages go back to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "live applier done".into()).await;
    }
}
