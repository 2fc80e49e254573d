//! Validation of a loaded master generation: the engine gathers each
//! gate's figures from OpenSearch (one breakdown by alias and designated
//! body of the new and of the live generation, retried with the engine's
//! retry policy) and the bulk writer, and the pure gates of `rebuild::gates`
//! judge them. A gate whose figures cannot be gathered fails, saying why.

use std::collections::BTreeMap;

use serde_json::Value;
use tracing::{info, warn};

use super::Engine;
use crate::rebuild::gates::{self, GateReport, GateVerdict};
use crate::retry::with_retry;
use crate::search::breakdown::{self, Breakdown};
use crate::search::generations::{self, Generation};
use crate::search::{BulkStats, Family, SearchError};

/// Picks one set of counts out of a breakdown.
type CountsOf = fn(&Breakdown) -> &BTreeMap<String, u64>;

impl Engine {
    /// Runs every gate against a loaded master generation. Never fails: a
    /// gate whose figures cannot be gathered fails, saying why.
    pub async fn validate(
        &self,
        master: &Generation,
        expected_docs: u64,
        bulk: &BulkStats,
        force: bool,
    ) -> GateReport {
        // One breakdown per generation gives every gate its figures: the
        // total, each alias's count (its filter applied), the bodies.
        let new = self.breakdown(&master.name).await;
        let live = match self.live_generations().await {
            Ok((live, _)) => Ok(live.filter(|l| *l != master.name)),
            Err(e) => Err(e),
        };
        let old = match &live {
            Ok(Some(l)) => self.breakdown(l).await.map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(SearchError::Invalid(e.to_string())),
        };
        let mut verdicts: Vec<GateVerdict> = Vec::new();
        match &new {
            Ok(n) => verdicts.push(gates::count_gate(n.total, expected_docs)),
            Err(e) => verdicts.push(gates::unavailable_gate("count", e)),
        }
        verdicts.push(gates::failed_items_gate(
            bulk,
            self.settings.gates.max_failed_items,
        ));
        match (&new, &old) {
            (Ok(n), Ok(old)) => verdicts.push(gates::share_gate(
                n.total,
                old.as_ref().map(|o| (o.index.as_str(), o.total)),
                self.settings.gates.min_share_of_previous,
                force,
            )),
            (Err(e), _) | (_, Err(e)) => {
                verdicts.push(gates::unavailable_gate("share_of_previous", e))
            }
        }
        for spec in self
            .specs
            .iter()
            .filter(|s| s.family == Family::Master && s.filter().is_some())
        {
            let alias = spec.logical.as_str();
            let count_in = |b: &Breakdown| b.by_alias.get(alias).copied().unwrap_or(0);
            match (&new, &old) {
                (Ok(n), Ok(old)) => verdicts.push(gates::filter_gate(
                    alias,
                    count_in(n),
                    old.as_ref().map(count_in),
                )),
                (Err(e), _) | (_, Err(e)) => {
                    verdicts.push(gates::unavailable_gate(format!("alias_filter:{alias}"), e))
                }
            }
        }
        let limit = gates::DriftLimit {
            max_loss: self.settings.gates.max_body_loss,
            min_docs: self.settings.gates.drift_min_docs,
        };
        let drifts: [(&str, &str, CountsOf); 3] = [
            ("body_drift:designatedBody", "designatedBody", |b| {
                &b.by_designated_body
            }),
            ("body_drift:tcsDesignatedBody", "tcsDesignatedBody", |b| {
                &b.by_tcs_designated_body
            }),
            ("alias_drift", "alias", |b| &b.by_alias),
        ];
        for (name, what, counts) in drifts {
            match (&new, &old) {
                (Ok(new), Ok(old)) => verdicts.push(gates::drift_gate(
                    name,
                    what,
                    counts(new),
                    old.as_ref().map(|o| (o.index.as_str(), counts(o))),
                    limit,
                    force,
                )),
                (Err(e), _) | (_, Err(e)) => verdicts.push(gates::unavailable_gate(name, e)),
            }
        }
        let report = GateReport {
            generation: master.name.clone(),
            gates: verdicts,
            forced: force,
        };
        if report.passed() {
            info!(generation = %master.name, forced = force, "Generation validated.");
        } else {
            warn!(generation = %master.name, failures = %report.summary(), "Generation failed validation.");
        }
        report
    }

    /// `index`'s documents by designated body and by alias, retried while
    /// OpenSearch is briefly unavailable.
    pub async fn breakdown(&self, index: &str) -> Result<Breakdown, SearchError> {
        with_retry(&self.retry, "a breakdown by designated body", || {
            breakdown::breakdown(&self.client, index, &self.specs)
        })
        .await
    }

    /// Documents of `index` matching `query` (all when `None`), retried
    /// while OpenSearch is briefly unavailable.
    pub async fn count(&self, index: &str, query: Option<&Value>) -> Result<u64, SearchError> {
        with_retry(&self.retry, "a document count", || {
            generations::count_matching(&self.client, index, query)
        })
        .await
    }
}
