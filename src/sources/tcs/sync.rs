//! One full sync from TCS: `"syncStart"` published, the sync-data queue
//! consumed with manual acks and a prefetch until `syncEnd` or an idle
//! timeout, each message parsed into a record, a rejection (dead-lettered
//! at once) or the end. A connection lost mid-sync is opened again with
//! backoff, and the unacked messages come back from the broker.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, QueuePurgeOptions};
use lapin::{Channel, Connection, Consumer};
use tracing::{debug, info, warn};

use super::acks::{TcsAcks, TcsTicket};
use super::topology::{
    consume_with_dead_letters, declare_topology, json_properties, publish_confirmed,
};
use crate::config::RabbitSettings;
use crate::domain::{parse_tcs_message_within, GmcNumber, TcsMessage, TcsRecord};
use crate::retry::RetryPolicy;
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
        /// Given before, to a connection that was lost before acking it.
        redelivered: bool,
    },
    /// A message that cannot be a record: already dead-lettered and acked.
    Rejected { reason: &'static str },
    /// `syncEnd`: acked; the sync is complete.
    End,
}

/// A consuming channel on the sync-data queue and a channel for dead
/// letters and `syncStart`.
async fn consume_on(
    connection: &Connection,
    settings: &RabbitSettings,
) -> Result<(Channel, Consumer, Channel), SourceError> {
    consume_with_dead_letters(
        connection,
        &settings.sync_data_queue,
        "rebuilder-sync",
        settings.prefetch,
    )
    .await
}

/// One full sync from TCS, from `syncStart` to `syncEnd`.
pub struct TcsSync {
    settings: RabbitSettings,
    retry: RetryPolicy,
    connection: Connection,
    consumer: Consumer,
    acks: TcsAcks,
    /// The connection the deliveries come from (0 first, +1 a reconnect).
    epoch: u32,
    /// The delivery tag of the last message of this connection.
    last_tag: u64,
    /// Times the connection was lost and opened again.
    pub reconnects: u64,
    /// Messages the broker marked as given before (after a reconnect).
    pub redelivered: u64,
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
    pub async fn start(settings: &RabbitSettings, retry: RetryPolicy) -> Result<Self, SourceError> {
        let connection = rabbit_connection(settings).await?;
        declare_topology(&connection, settings).await?;
        let purge = connection.create_channel().await?;
        let purged_stale = purge
            .queue_purge(
                settings.sync_data_queue.as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        let _ = purge.close(200, "purged".into()).await;
        if purged_stale > 0 {
            warn!(
                queue = %settings.sync_data_queue,
                messages = purged_stale,
                "Discarded messages an earlier sync left on the queue."
            );
        }
        let (consume, consumer, dead_letters) = consume_on(&connection, settings).await?;
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
            settings: settings.clone(),
            retry,
            connection,
            consumer,
            acks: TcsAcks::new(consume, dead_letters, &settings.dead_letter_queue),
            epoch: 0,
            last_tag: 0,
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
            waited: Duration::ZERO,
            received: 0,
            purged_stale: u64::from(purged_stale),
            reconnects: 0,
            redelivered: 0,
        })
    }

    /// The connection was lost mid-sync (a broker restart, a failover, a
    /// network cut): connect again with the retry policy's backoff and
    /// consume the same queue. Nothing is purged and TCS is not asked
    /// again: the broker gives back every message this consumer had not
    /// acked, and the records already written are written again with the
    /// same version, which changes nothing. Gives up with `cause` once the
    /// policy is spent.
    async fn reconnect(&mut self, cause: SourceError) -> Result<(), SourceError> {
        warn!(error = %cause, received = self.received, "Lost the connection to RabbitMQ mid-sync; reconnecting.");
        match self.open_with_backoff().await {
            Ok(connection) => {
                let old = std::mem::replace(&mut self.connection, connection);
                let _ = old.close(200, "replaced".into()).await;
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "Could not reconnect to RabbitMQ; the sync fails.");
                Err(cause)
            }
        }
    }

    /// Opens a connection and its consumer, retried with backoff; installs
    /// the consumer and the channels and returns the connection.
    async fn open_with_backoff(&mut self) -> Result<Connection, SourceError> {
        let mut backoff = backon::BackoffBuilder::build(self.retry.backoff());
        loop {
            let attempt = async {
                let connection = rabbit_connection(&self.settings).await?;
                let (consume, consumer, dead_letters) =
                    consume_on(&connection, &self.settings).await?;
                Ok::<_, SourceError>((connection, consume, consumer, dead_letters))
            };
            match attempt.await {
                Ok((connection, consume, consumer, dead_letters)) => {
                    self.consumer = consumer;
                    self.epoch = self.acks.replace(consume, dead_letters).await;
                    self.last_tag = 0;
                    self.reconnects += 1;
                    self.waited = Duration::ZERO;
                    info!(
                        reconnects = self.reconnects,
                        "Reconnected to RabbitMQ; consuming the sync again (unacked messages come back)."
                    );
                    return Ok(connection);
                }
                Err(e) => {
                    let Some(delay) = backoff.next() else {
                        return Err(e);
                    };
                    let delay = delay.min(self.retry.max_backoff);
                    debug!(error = %e, delay_ms = delay.as_millis() as u64, "RabbitMQ not back yet.");
                    tokio::time::sleep(delay).await;
                }
            }
        }
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
                // With the prefetch window full of messages the run has not
                // settled (OpenSearch slow or away, retries waiting), the
                // broker holds the rest back: that silence is the run's own,
                // not TCS's, and does not count towards the idle timeout.
                if self.acks.unsettled(self.last_tag).await < u64::from(self.settings.prefetch) {
                    self.waited += started.elapsed();
                }
                return if self.waited >= self.idle_timeout {
                    Err(self.idle_error())
                } else {
                    Ok(None)
                };
            }
            Ok(None) => {
                let closed = SourceError::Rabbit(
                    lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "the sync consumer's channel closed",
                    )
                    .into(),
                );
                self.reconnect(closed).await?;
                return Ok(None);
            }
            Ok(Some(Err(e))) => {
                self.reconnect(e.into()).await?;
                return Ok(None);
            }
            Ok(Some(Ok(delivery))) => delivery,
        };
        self.waited = Duration::ZERO;
        self.received += 1;
        self.last_tag = delivery.delivery_tag;
        if delivery.redelivered {
            self.redelivered += 1;
        }
        let redelivered = delivery.redelivered;
        let ticket = TcsTicket {
            delivery_tag: delivery.delivery_tag,
            epoch: self.epoch,
            body: delivery.data,
        };
        match parse_tcs_message_within(&ticket.body, self.settings.max_message_bytes) {
            Ok(TcsMessage::Record(number, record)) => Ok(Some(TcsEvent::Record {
                number,
                record,
                ticket,
                redelivered,
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
            .await
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }

    /// Closes the connection. Messages not acked yet go back to the queue.
    pub async fn close(self) {
        let _ = self.connection.close(200, "sync done".into()).await;
    }
}
