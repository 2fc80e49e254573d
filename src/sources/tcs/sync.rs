//! One full sync from TCS: `"syncStart"` published, the sync-data queue
//! consumed with manual acks and a prefetch until `syncEnd` or an idle
//! timeout, each message parsed into a record, a rejection (dead-lettered
//! at once) or the end.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use tracing::{debug, info, warn};

use super::acks::{TcsAcks, TcsTicket};
use super::topology::{declare_topology, json_properties, publish_confirmed};
use crate::config::RabbitSettings;
use crate::domain::{parse_tcs_message, GmcNumber, TcsMessage, TcsRecord};
use crate::sources::{rabbit_connection, SourceError};

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
            .queue_purge(
                settings.sync_data_queue.as_str().into(),
                QueuePurgeOptions::default(),
            )
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
                settings.sync_data_queue.as_str().into(),
                "rebuilder-sync".into(),
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
            acks: TcsAcks::new(consume, dead_letters, &settings.dead_letter_queue),
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
            Ok(None) => {
                return Err(SourceError::Rabbit(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "the sync consumer's channel closed",
                    )
                    .into(),
                ))
            }
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

    fn idle_error(&self) -> SourceError {
        SourceError::TcsIdle {
            idle_secs: self.idle_timeout.as_secs(),
            received: self.received,
        }
    }

    /// Stops deliveries (after `syncEnd`); acks keep working until [`close`](Self::close).
    pub async fn stop_consuming(&self) -> Result<(), SourceError> {
        self.acks
            .channel()
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the connection. Messages not acked yet go back to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "sync done".into()).await;
    }
}
