//! How far behind the live applier is, said where an operator looks: the
//! update queue's depth (messages not yet delivered) and the change
//! streams' lag (seconds since the server made the last change the applier
//! settled; 0 once nothing waits). The active applier sets them as gauges
//! in its `/metrics`, stores them as one report in MongoDB that every
//! replica's `/api/sync/status` and `/readyz` read, and warns when the lag
//! nears the streams' retention: past it, a resume fails and changes are
//! lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::{Client, Collection};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use utoipa::ToSchema;

use crate::config::Settings;
use crate::sources::tcs::QueueDepth;
use crate::state::{state_collection, StateError};
use crate::telemetry::metric;

const REPORT: &str = "backlog";
/// How often the report is stored (the gauges are set as often).
const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// How often the queue's depth is read.
const DEPTH_EVERY: Duration = Duration::from_secs(5);
/// How often the retention warning is logged while it holds.
const WARN_EVERY: Duration = Duration::from_secs(60);
const UNKNOWN: u64 = u64::MAX;

/// The live updates' backlog, as the active applier last reported it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BacklogReport {
    /// Messages waiting in the TCS update queue (none when unread).
    pub queue_depth: Option<u64>,
    /// Seconds between the server making the change-stream event applied
    /// last and its being applied, grown by the report's age while a
    /// backlog was waiting; 0 when the streams were caught up.
    pub stream_lag_secs: f64,
    /// The lag is over `live.max_lag_secs`.
    pub behind: bool,
    /// The lag is over half of `live.stream_retention_secs`: a lag past
    /// the whole of it loses changes.
    pub near_retention: bool,
    /// When the applier stored it (UTC).
    pub reported_at: String,
    /// Seconds since then.
    pub age_secs: f64,
    /// The applier that stored it.
    pub applier: String,
}

impl BacklogReport {
    /// What `/readyz` says of it, if anything.
    pub fn warnings(&self, settings: &Settings) -> Vec<String> {
        let mut said = Vec::new();
        if self.near_retention {
            said.push(format!(
                "live updates are {:.0} s behind, over half the change streams' retention ({} s, live.stream_retention_secs): past it the stored position is lost and only a rebuild brings the changes",
                self.stream_lag_secs, settings.live.stream_retention_secs
            ));
        } else if self.behind {
            said.push(format!(
                "live updates are {:.0} s behind (live.max_lag_secs = {}); {} TCS updates wait in the queue",
                self.stream_lag_secs,
                settings.live.max_lag_secs,
                self.queue_depth
                    .map_or_else(|| "an unknown number of".to_string(), |d| d.to_string())
            ));
        }
        said
    }
}

/// The active applier's meter: what it applied and what waits.
pub(crate) struct BacklogMeter {
    store: Collection<Document>,
    applier: String,
    max_lag_secs: u64,
    retention_secs: u64,
    depth: Arc<AtomicU64>,
    lag_secs: f64,
    published: Option<Instant>,
    warned: Option<Instant>,
}

impl BacklogMeter {
    pub fn new(mongo: &Client, settings: &Settings, applier: &str) -> Self {
        Self {
            store: state_collection(mongo, &settings.mongodb, &settings.mongodb.live_collection),
            applier: applier.to_string(),
            max_lag_secs: settings.live.max_lag_secs,
            retention_secs: settings.live.stream_retention_secs,
            depth: Arc::new(AtomicU64::new(UNKNOWN)),
            lag_secs: 0.0,
            published: None,
            warned: None,
        }
    }

    /// Reads the queue's depth every few seconds into this meter until
    /// `stop` (a failed read leaves it unknown; the applier's own reader
    /// says when the queue is gone).
    pub fn watch_depth(
        &self,
        probe: QueueDepth,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> {
        let slot = self.depth.clone();
        async move {
            // However the watch ends (stopped, or a panic), the last depth
            // it read is no longer known to be true.
            let _unknown_at_end = UnknownOnDrop(slot.clone());
            loop {
                let depth = match probe.waiting().await {
                    Ok(n) => u64::from(n),
                    Err(e) => {
                        debug!(error = %e, "Could not read the update queue's depth.");
                        UNKNOWN
                    }
                };
                slot.store(depth, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(DEPTH_EVERY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// Nothing waits in the streams.
    pub fn caught_up(&mut self) {
        self.lag_secs = 0.0;
    }

    /// The stream event made at `made_at_ms` (Unix ms) was applied now.
    pub fn applied_up_to(&mut self, made_at_ms: i64) {
        let now = chrono::Utc::now().timestamp_millis();
        self.lag_secs = (now - made_at_ms).max(0) as f64 / 1000.0;
    }

    /// Sets the gauges, stores the report (every few seconds) and warns
    /// when the lag nears the retention. Never fails the applier.
    pub async fn publish(&mut self) {
        if self
            .published
            .is_some_and(|at| at.elapsed() < PUBLISH_EVERY)
        {
            return;
        }
        self.published = Some(Instant::now());
        let depth = match self.depth.load(Ordering::Relaxed) {
            UNKNOWN => None,
            n => Some(n),
        };
        metrics::gauge!(metric::LIVE_STREAM_LAG_SECONDS).set(self.lag_secs);
        if let Some(depth) = depth {
            metrics::gauge!(metric::LIVE_QUEUE_DEPTH).set(depth as f64);
        }
        if self.lag_secs * 2.0 > self.retention_secs as f64
            && self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY)
        {
            self.warned = Some(Instant::now());
            warn!(
                lag_secs = self.lag_secs as u64,
                retention_secs = self.retention_secs,
                "Live updates are over half the change streams' retention behind: past it the stored position is lost and only a rebuild brings the changes. Look at what holds the applier (OpenSearch refusing writes, a paused run) or raise the retention."
            );
        } else if self.lag_secs > self.max_lag_secs as f64 {
            debug!(lag_secs = self.lag_secs as u64, "Live updates are behind.");
        }
        let report = doc! {
            "$set": {
                "queueDepth": depth.map(|d| d as i64),
                "streamLagSecs": self.lag_secs,
                "reportedAtMs": chrono::Utc::now().timestamp_millis(),
                "applier": &self.applier,
            }
        };
        if let Err(e) = self
            .store
            .update_one(doc! {"_id": REPORT}, report)
            .upsert(true)
            .await
        {
            debug!(error = %e, "Could not store the live backlog report.");
        }
    }
}

/// The last stored report, judged against `settings` now; `None` before
/// any applier reported.
pub async fn read(
    mongo: &Client,
    settings: &Settings,
) -> Result<Option<BacklogReport>, StateError> {
    let store: Collection<Document> =
        state_collection(mongo, &settings.mongodb, &settings.mongodb.live_collection);
    let Some(found) = store.find_one(doc! {"_id": REPORT}).await? else {
        return Ok(None);
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(Some(judge(&found, now_ms, settings)))
}

/// A stored report as of `now_ms`: a backlog that was waiting has waited
/// since, applier or not.
fn judge(found: &Document, now_ms: i64, settings: &Settings) -> BacklogReport {
    let reported_ms = found.get_i64("reportedAtMs").unwrap_or(now_ms);
    let age_secs = (now_ms - reported_ms).max(0) as f64 / 1000.0;
    let queue_depth = found.get_i64("queueDepth").ok().map(|d| d.max(0) as u64);
    let stored_lag = found.get_f64("streamLagSecs").unwrap_or(0.0);
    let waiting = stored_lag > 0.0 || queue_depth.is_some_and(|d| d > 0);
    let stream_lag_secs = if waiting {
        stored_lag + age_secs
    } else {
        stored_lag
    };
    BacklogReport {
        queue_depth,
        stream_lag_secs,
        behind: stream_lag_secs > settings.live.max_lag_secs as f64,
        near_retention: stream_lag_secs * 2.0 > settings.live.stream_retention_secs as f64,
        reported_at: chrono::DateTime::from_timestamp_millis(reported_ms)
            .map(crate::state::time_text)
            .unwrap_or_default(),
        age_secs,
        applier: found.get_str("applier").unwrap_or_default().to_string(),
    }
}

/// Sets the depth to unknown when dropped.
struct UnknownOnDrop(Arc<AtomicU64>);

impl Drop for UnknownOnDrop {
    fn drop(&mut self) {
        self.0.store(UNKNOWN, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(lag: f64, depth: Option<i64>, at_ms: i64) -> Document {
        doc! {"streamLagSecs": lag, "queueDepth": depth, "reportedAtMs": at_ms, "applier": "live-1"}
    }

    #[test]
    fn a_caught_up_report_stays_caught_up_however_old() {
        let settings = Settings::default();
        let report = judge(&stored(0.0, Some(0), 0), 3_600_000, &settings);
        assert_eq!(report.stream_lag_secs, 0.0);
        assert!(!report.behind && !report.near_retention);
        assert!(report.warnings(&settings).is_empty());
        assert_eq!(report.age_secs, 3600.0);
    }

    #[test]
    fn a_waiting_backlog_grows_with_the_reports_age() {
        let settings = Settings::default();
        let report = judge(&stored(10.0, Some(0), 0), 300_000, &settings);
        assert_eq!(report.stream_lag_secs, 310.0);
        assert!(report.behind, "over max_lag_secs (300)");
        assert!(!report.near_retention);
        let said = report.warnings(&settings).join(" ");
        assert!(
            said.contains("310 s behind") && said.contains("0 TCS updates"),
            "{said}"
        );
        // Messages waiting count as a backlog even with the streams caught up.
        let report = judge(&stored(0.0, Some(40), 0), 301_000, &settings);
        assert!(report.behind);
    }

    #[test]
    fn near_the_retention_is_said_before_it_is_too_late() {
        let settings = Settings::default();
        let half = settings.live.stream_retention_secs as f64 / 2.0;
        let report = judge(&stored(half + 1.0, None, 1_000), 1_000, &settings);
        assert!(report.near_retention && report.behind);
        assert_eq!(report.queue_depth, None);
        let said = report.warnings(&settings).join(" ");
        assert!(
            said.contains("retention") && said.contains("rebuild"),
            "{said}"
        );
    }
}
