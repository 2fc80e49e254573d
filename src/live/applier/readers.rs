//! The applier's readers: the TCS update queue and the two change streams,
//! each a task of its own feeding one channel, so that no message is lost
//! half-read when a batch is cut. Each change is parsed once, here: into
//! the change to apply and the journal entry that keeps its source form.

use anyhow::anyhow;
use bson::Bson;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::domain::{Change, GmcDoctor, GmcNumber, RejectReason};
use crate::handover::NewEntry;
use crate::live::recorded::Recorded;
use crate::live::status::LiveStatus;
use crate::sources::changes::{
    history_lost, GmcEvent, GmcStream, Watched, WatchedEvent, INVALIDATED,
};
use crate::sources::tcs::{TcsTicket, TcsUpdates, UpdateEvent};
use crate::sources::SourceError;
use crate::state::streams::StreamPositions;
use crate::telemetry::metric;

/// What settles a change once it is written (and journaled if need be).
#[derive(Debug)]
pub(super) enum Settle {
    Tcs(TcsTicket),
    Stream {
        watched: Watched,
        token: Bson,
        /// When the server made the change (Unix ms), for the lag.
        made_at_ms: Option<i64>,
    },
}

/// A change to apply, with its journal entry.
#[derive(Debug)]
pub(super) struct Applied {
    pub change: Change,
    pub entry: NewEntry,
}

/// One change from a source, with what settles it.
#[derive(Debug)]
pub(super) struct Incoming {
    /// `None`: nothing to apply, only the position to move (a skipped event).
    pub applied: Option<Applied>,
    pub settle: Settle,
}

pub(super) type Feed = mpsc::Sender<Result<Incoming, anyhow::Error>>;

/// The update queue into the channel; rejects are dead-lettered by the
/// queue reader itself.
pub(super) async fn read_updates(mut updates: TcsUpdates, tx: Feed) {
    loop {
        let incoming = match updates.next().await {
            Ok(UpdateEvent::Record {
                number,
                record,
                ticket,
            }) => {
                let entry = Recorded::Tcs(ticket.body.clone()).entry(Some(&number));
                Incoming {
                    applied: Some(Applied {
                        change: Change::Tcs { number, record },
                        entry,
                    }),
                    settle: Settle::Tcs(ticket),
                }
            }
            Ok(UpdateEvent::FilteredOut { person, ticket }) => {
                let entry = Recorded::Tcs(ticket.body.clone()).entry(None);
                Incoming {
                    applied: Some(Applied {
                        change: Change::TcsLeft { person },
                        entry,
                    }),
                    settle: Settle::Tcs(ticket),
                }
            }
            Ok(UpdateEvent::Rejected { reason }) => {
                metrics::counter!(metric::LIVE_REJECTED, "reason" => reason).increment(1);
                warn!(reason, "A TCS update was dead-lettered.");
                continue;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(anyhow!(e).context("while reading the TCS update queue")))
                    .await;
                return;
            }
        };
        if tx.send(Ok(incoming)).await.is_err() {
            return;
        }
    }
}

/// One change stream into the channel. A stored token the server no longer
/// knows (its history is lost) is said loudly, marked for `/readyz`, and
/// the stream starts again from now; an invalidated stream (its collection
/// dropped) starts again from now too.
pub(super) async fn read_stream(
    collection: mongodb::Collection<bson::Document>,
    name: String,
    watched: Watched,
    positions: StreamPositions,
    tx: Feed,
    status: LiveStatus,
) {
    let fail = |e: anyhow::Error, what: &str| {
        let tx = tx.clone();
        let what = format!("while {what} the change stream of {name}");
        async move {
            let _ = tx.send(Err(e.context(what))).await;
        }
    };
    let mut token = match positions.token(&name).await {
        Ok(token) => token,
        Err(e) => return fail(anyhow!(e), "reading the resume token of").await,
    };
    let mut told = false;
    loop {
        let resumed = token.is_some();
        let mut stream = match GmcStream::open(&collection, watched, token.take()).await {
            Ok(stream) => stream,
            Err(e) if resumed && history_lost(&e) => {
                lost(&positions, &name, &e).await;
                continue;
            }
            Err(e) => return fail(anyhow!(e), "opening").await,
        };
        if !told {
            status.source_opened();
            told = true;
        }
        loop {
            match stream.next().await {
                Ok(WatchedEvent {
                    event: GmcEvent::Skipped(INVALIDATED),
                    ..
                }) => {
                    warn!(collection = %name, "The change stream was invalidated; it starts again from now.");
                    let _ = positions.forget(&name).await;
                    break;
                }
                Ok(event) => {
                    crate::failpoint::hit("live_stream_event").await;
                    if tx.send(Ok(incoming_of(event))).await.is_err() {
                        return;
                    }
                }
                Err(e) if resumed && history_lost(&e) => {
                    lost(&positions, &name, &e).await;
                    break;
                }
                Err(e) => return fail(anyhow!(e), "reading").await,
            }
        }
    }
}

async fn lost(positions: &StreamPositions, name: &str, e: &SourceError) {
    error!(
        collection = %name,
        error = %e,
        "LIVE UPDATES LOST: the stored resume token is older than the server's change-stream history. Changes in between were not applied; run a rebuild (it reads every source afresh). The stream starts again from now."
    );
    let _ = positions.mark_lost(name, &e.to_string()).await;
    let _ = positions.forget(name).await;
}

fn rejected(reason: &'static str) -> Option<Applied> {
    metrics::counter!(metric::LIVE_REJECTED, "reason" => reason).increment(1);
    None
}

/// A stream event as the change it makes (parsed once) and its entry.
fn incoming_of(event: WatchedEvent) -> Incoming {
    let settle = Settle::Stream {
        watched: event.watched,
        token: event.token,
        made_at_ms: event.made_at_ms,
    };
    let with_entry = |change: Change, recorded: Recorded| {
        let entry = recorded.entry(change.number());
        Some(Applied { change, entry })
    };
    let applied = match event.event {
        GmcEvent::DoctorUpserted(doc) => match GmcDoctor::from_document(&doc) {
            Ok((number, doctor)) => with_entry(
                Change::Doctor {
                    number,
                    doctor: Box::new(doctor),
                },
                Recorded::Doctor(doc),
            ),
            Err(e) => rejected(RejectReason::BadGmcNumber(e).as_str()),
        },
        GmcEvent::DoctorDeleted(id) => {
            let raw = match &id {
                Bson::String(s) => s.clone(),
                Bson::Int32(n) => n.to_string(),
                Bson::Int64(n) => n.to_string(),
                _ => String::new(),
            };
            match GmcNumber::parse(&raw) {
                Ok(number) => with_entry(
                    Change::DoctorLeft {
                        number: number.clone(),
                    },
                    Recorded::DoctorLeft(number),
                ),
                Err(_) => rejected("doctor_deleted_unusable_id"),
            }
        }
        GmcEvent::RecommendationChanged(raw) => match GmcNumber::parse(&raw) {
            Ok(number) => with_entry(
                Change::Recommendation {
                    number: number.clone(),
                },
                Recorded::Recommendation(number),
            ),
            Err(_) => rejected("recommendation_unusable_gmc_number"),
        },
        GmcEvent::ConnectionChanged(raw) => match GmcNumber::parse(&raw) {
            Ok(number) => with_entry(
                Change::Connection {
                    number: number.clone(),
                },
                Recorded::Connection(number),
            ),
            Err(_) => rejected("connection_unusable_gmc_id"),
        },
        GmcEvent::Unhidden(id) => {
            with_entry(Change::Unhidden { id: id.clone() }, Recorded::Unhidden(id))
        }
        GmcEvent::Skipped(reason) => {
            metrics::counter!(metric::LIVE_SKIPPED, "reason" => reason).increment(1);
            None
        }
    };
    Incoming { applied, settle }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn event(event: GmcEvent) -> WatchedEvent {
        WatchedEvent {
            watched: Watched::Doctors,
            token: Bson::String("t1".into()),
            event,
            made_at_ms: None,
        }
    }

    #[test]
    fn a_doctor_event_is_parsed_once_into_its_change_and_entry() {
        let doc = doc! {"_id": "7000002", "designatedBodyCode": "1-AIIDSA"};
        let incoming = incoming_of(event(GmcEvent::DoctorUpserted(doc.clone())));
        let applied = incoming.applied.expect("a change");
        assert!(matches!(applied.change, Change::Doctor { .. }));
        assert_eq!(applied.change.number().unwrap().as_str(), "7000002");
        assert_eq!(applied.entry.kind, "doctor");
        assert_eq!(applied.entry.payload, Bson::Document(doc));
        assert!(matches!(incoming.settle, Settle::Stream { .. }));
    }

    #[test]
    fn unusable_events_move_the_position_and_apply_nothing() {
        for e in [
            GmcEvent::DoctorUpserted(doc! {"x": 1}),
            GmcEvent::DoctorDeleted(Bson::Null),
            GmcEvent::RecommendationChanged("   ".into()),
            GmcEvent::Skipped("other"),
        ] {
            let incoming = incoming_of(event(e));
            assert!(incoming.applied.is_none(), "{:?}", incoming.applied);
            assert!(matches!(incoming.settle, Settle::Stream { .. }));
        }
        let left = incoming_of(event(GmcEvent::DoctorDeleted(Bson::Int32(7000003))));
        assert_eq!(left.applied.unwrap().entry.kind, "doctor_left");
    }
}
