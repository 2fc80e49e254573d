//! Settling the messages of a sync: coalesced acks of the settled prefix,
//! and dead letters (published with their reason, confirmed by the broker,
//! then acked), so that no message is ever lost or acked unsettled.
//!
//! A consumer that lost its connection and opened a new one hands the new
//! channels over ([`TcsAcks::replace`]): a delivery tag means something only
//! on the channel that delivered it, so messages of the old channel are
//! neither acked nor dead-lettered on the new one. The broker gives them
//! again (they were unacked when the connection closed), and they are
//! settled when they come back.

use std::collections::BTreeSet;
use std::sync::Arc;

use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::Mutex;
use tracing::warn;

use super::topology::{json_properties, publish_confirmed, reason_headers};
use crate::sources::SourceError;

/// What the run needs to settle one record's message later: its delivery
/// tag and its body (to dead-letter it if its document fails for good).
/// Only the messages in flight hold one, at most `prefetch` of them.
#[derive(Clone, Debug)]
pub struct TcsTicket {
    pub delivery_tag: u64,
    /// Which connection of the consumer delivered it (see [`TcsAcks::replace`]).
    pub epoch: u32,
    pub body: Vec<u8>,
}

impl TcsTicket {
    /// What settles it.
    pub fn key(&self) -> DeliveryKey {
        DeliveryKey {
            epoch: self.epoch,
            tag: self.delivery_tag,
        }
    }
}

/// One delivery: its tag on the channel of its connection (`epoch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryKey {
    pub epoch: u32,
    pub tag: u64,
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
    dead_letter_queue: String,
    state: Arc<Mutex<AckState>>,
}

/// The channels of the consumer's current connection and what is acked
/// on them.
struct AckState {
    epoch: u32,
    consume: Channel,
    dead_letters: Channel,
    window: AckWindow,
}

impl TcsAcks {
    /// Settles deliveries of `consume`; dead letters are published on
    /// `dead_letters` (a channel in confirm mode) to `dead_letter_queue`.
    pub fn new(consume: Channel, dead_letters: Channel, dead_letter_queue: &str) -> Self {
        Self {
            dead_letter_queue: dead_letter_queue.to_string(),
            state: Arc::new(Mutex::new(AckState {
                epoch: 0,
                consume,
                dead_letters,
                window: AckWindow::new(),
            })),
        }
    }

    /// The channel whose deliveries these acks settle now.
    pub async fn channel(&self) -> Channel {
        self.state.lock().await.consume.clone()
    }

    /// The epoch of the current connection: the tickets it delivers carry it.
    pub async fn epoch(&self) -> u32 {
        self.state.lock().await.epoch
    }

    /// Deliveries of the current connection up to `last_tag` not settled
    /// yet: when they fill the prefetch window, the broker sends nothing
    /// more until the run settles some, so a silent queue is not a silent
    /// TCS.
    pub async fn unsettled(&self, last_tag: u64) -> u64 {
        let state = self.state.lock().await;
        let window = &state.window;
        last_tag
            .saturating_sub(window.next - 1)
            .saturating_sub(window.settled.len() as u64)
    }

    /// The consumer reconnected: settle on these channels from now on.
    /// Returns the new epoch; tickets of earlier ones are ignored.
    pub async fn replace(&self, consume: Channel, dead_letters: Channel) -> u32 {
        let mut state = self.state.lock().await;
        state.epoch += 1;
        state.consume = consume;
        state.dead_letters = dead_letters;
        state.window = AckWindow::new();
        state.epoch
    }
}

/// Whether an ack or a publish failed because its channel is gone: the
/// message was not acked and the broker gives it again, so it is not an
/// error of the settling.
fn channel_gone(channel: &Channel) -> bool {
    !channel.status().connected()
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
        self.settle([ticket.key()]).await
    }

    /// Marks messages settled and acks every settled message older than
    /// the oldest unsettled one, in one `basic.ack`. Messages of an earlier
    /// connection are skipped: the broker gives them again.
    pub async fn settle(
        &self,
        keys: impl IntoIterator<Item = DeliveryKey>,
    ) -> Result<(), SourceError> {
        // The lock is held across the ack so acks leave in tag order.
        let mut state = self.state.lock().await;
        let epoch = state.epoch;
        let tags = keys.into_iter().filter(|k| k.epoch == epoch).map(|k| k.tag);
        if let Some(upto) = state.window.settle(tags) {
            if let Err(e) = state
                .consume
                .basic_ack(upto, BasicAckOptions { multiple: true })
                .await
            {
                if !channel_gone(&state.consume) {
                    return Err(e.into());
                }
                warn!(error = %e, "The connection closed before these messages were acked; the broker gives them again.");
            }
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
        let headers = reason_headers(reason, detail);
        let (epoch, channel) = {
            let state = self.state.lock().await;
            (state.epoch, state.dead_letters.clone())
        };
        if ticket.epoch != epoch {
            // Delivered on a connection that is gone: it comes again and is
            // dead-lettered then, once.
            return Ok(());
        }
        if let Err(e) = publish_confirmed(
            &channel,
            "",
            &self.dead_letter_queue,
            &ticket.body,
            json_properties().with_headers(headers),
        )
        .await
        {
            if !channel_gone(&channel) {
                return Err(e);
            }
            warn!(error = %e, "The connection closed before a dead letter was confirmed; the message comes again.");
            return Ok(());
        }
        self.ack(ticket).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_unsettled_is_delivered_minus_acked_minus_settled_above_the_prefix() {
        let mut w = AckWindow::new();
        w.settle([1, 2, 5]);
        // Delivered 1..=6: 1 and 2 acked, 5 settled, 3, 4 and 6 unsettled.
        let unsettled = 6u64 - (w.next - 1) - w.settled.len() as u64;
        assert_eq!(unsettled, 3);
    }

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
}
