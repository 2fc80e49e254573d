//! The recommendation service's side of the GMC sync, on a real RabbitMQ:
//! it listens on the `gmcSyncStart` queue and answers each request with
//! the generated doctors of `doctorsForDB` ([`DatasetSpec`]) as
//! `IndexSyncMessage` batches (`{"payload": [{"doctor": {...},
//! "gmcOutcome": "..."}], "syncEnd": false}`, `batch_size` doctors each,
//! 9000 as today's `ESSYNC_BATCH_SIZE`), then `{"payload": [], "syncEnd":
//! true}`. A doctor's `gmcOutcome` is computed from its generated
//! recommendations by the rule of rebuilder's outcome aggregation
//! ([`latest_outcome`]), so a rebuild over the queue sees the doctors and
//! outcomes a rebuild over the seeded MongoDB sees.
//!
//! Like today's service, it sends only doctors of `doctorsForDB`: the
//! outcome of a recommendation whose doctor is not there (a TCS-only
//! trainee) never travels. [`run_recommendation_simulator`] is what the
//! `recommendation-simulator` command runs; tests spawn it as a task.

use bson::{Bson, Document};
use serde_json::{json, Map, Value};

use rebuilder::config::{GmcSettings, RabbitSettings};
use rebuilder::domain::GmcStatus;
use rebuilder::sources::gmc::queue::gmc_protocol;

use crate::datagen::DatasetSpec;
use crate::simulator::SimulatorError;
use crate::sync_service::{serve, ServeOptions};

/// Today's `ESSYNC_BATCH_SIZE`.
pub const DEFAULT_BATCH_SIZE: usize = 9_000;

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct RecommendationSimulatorOptions {
    /// Serve one sync, then return.
    pub once: bool,
    /// Doctors per batch.
    pub batch_size: usize,
    /// Message bodies published after the doctors and before `syncEnd`, as
    /// they are (the bad-input tests put malformed batches here).
    pub extra_messages: Vec<Vec<u8>>,
}

impl Default for RecommendationSimulatorOptions {
    fn default() -> Self {
        Self {
            once: false,
            batch_size: DEFAULT_BATCH_SIZE,
            extra_messages: Vec::new(),
        }
    }
}

/// What one answered request published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GmcSyncServed {
    /// Batches of doctors (extra messages and `syncEnd` not included).
    pub batches: u64,
    pub doctors: u64,
}

/// Serves GMC syncs until the connection fails, or after one with `once`.
/// Refuses a broker that is not on loopback.
pub async fn run_recommendation_simulator(
    rabbit: &RabbitSettings,
    gmc: &GmcSettings,
    spec: DatasetSpec,
    options: RecommendationSimulatorOptions,
) -> Result<Vec<GmcSyncServed>, SimulatorError> {
    let serve_options = ServeOptions {
        once: options.once,
        extra_messages: options.extra_messages,
        ..ServeOptions::new(options.batch_size)
    };
    let served = serve(rabbit, &gmc_protocol(gmc), &serve_options, || {
        index_sync_items(&spec)
    })
    .await?;
    Ok(served
        .into_iter()
        .map(|s| GmcSyncServed {
            batches: s.batches,
            doctors: s.items,
        })
        .collect())
}

/// Every payload item of a sync: each generated doctor of `doctorsForDB`
/// with the outcome of its latest submitted recommendation.
pub fn index_sync_items(spec: &DatasetSpec) -> impl Iterator<Item = Value> + '_ {
    spec.doctors().filter_map(|d| {
        let doctor = d.gmc_doctor.as_ref()?;
        Some(json!({
            "doctor": doctor_json(doctor),
            "gmcOutcome": latest_outcome(&d.recommendations),
        }))
    })
}

/// A `doctorsForDB` document as the recommendation service serializes
/// `DoctorsForDB`: the id as `gmcReferenceNumber`, dates as `yyyy-MM-dd`.
pub fn doctor_json(doctor: &Document) -> Value {
    let mut out = Map::new();
    for (key, value) in doctor {
        let key = if key == "_id" {
            "gmcReferenceNumber"
        } else {
            key.as_str()
        };
        let value = match value {
            Bson::DateTime(d) => Value::String(d.to_chrono().format("%Y-%m-%d").to_string()),
            other => other.clone().into_relaxed_extjson(),
        };
        out.insert(key.to_string(), value);
    }
    Value::Object(out)
}

/// The outcome of the latest submitted recommendation, as shown
/// (`Approved`, `Rejected`, `Under Review`), or `None`. The rule of
/// rebuilder's aggregation: among the recommendations with an
/// `actualSubmissionDate` (drafts have none), the greatest
/// `{gmcSubmissionDate, outcome}` pair.
pub fn latest_outcome(recommendations: &[Document]) -> Option<String> {
    let latest = recommendations
        .iter()
        .filter(|r| !matches!(r.get("actualSubmissionDate"), None | Some(Bson::Null)))
        .map(|r| {
            let submitted = match r.get("gmcSubmissionDate") {
                Some(Bson::DateTime(d)) => Some(d.timestamp_millis()),
                _ => None,
            };
            (
                submitted,
                r.get_str("outcome").unwrap_or_default().to_string(),
            )
        })
        .max()?;
    let outcome = latest.1;
    Some(
        outcome
            .parse::<GmcStatus>()
            .map(|s| s.as_str().to_string())
            .unwrap_or(outcome),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn day(s: &str) -> bson::DateTime {
        bson::DateTime::parse_rfc3339_str(format!("{s}T00:00:00Z")).unwrap()
    }

    #[test]
    fn the_latest_submitted_recommendation_gives_the_outcome_and_drafts_do_not_count() {
        let recs = [
            doc! {"outcome": "APPROVED", "gmcSubmissionDate": day("2024-01-01"), "actualSubmissionDate": day("2024-01-02")},
            doc! {"outcome": "REJECTED", "gmcSubmissionDate": day("2024-06-01"), "actualSubmissionDate": day("2024-06-02")},
            doc! {"outcome": "APPROVED", "gmcSubmissionDate": day("2025-01-01")},
        ];
        assert_eq!(latest_outcome(&recs).as_deref(), Some("Rejected"));
        assert_eq!(latest_outcome(&recs[2..]), None);
        assert_eq!(latest_outcome(&[]), None);
    }

    #[test]
    fn items_carry_every_gmc_doctor_once_with_its_number_and_days() {
        let spec = DatasetSpec::new(9, 300);
        let in_gmc = spec.doctors().filter(|d| d.gmc_doctor.is_some()).count();
        let items: Vec<Value> = index_sync_items(&spec).collect();
        assert_eq!(items.len(), in_gmc);
        let first = &items[0]["doctor"];
        assert!(first["gmcReferenceNumber"].is_string());
        assert!(first.get("_id").is_none());
        assert_eq!(first["submissionDate"].as_str().unwrap().len(), 10);
    }
}
