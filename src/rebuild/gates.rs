//! Validation gates: the checks a new master generation must pass before
//! any alias moves. Each gate is a pure function from figures to a
//! [`GateVerdict`]; the engine gathers the figures from OpenSearch and the
//! bulk writer. Verdicts and figures go into the run report as they are.
//!
//! The gates:
//! - `count`: the generation holds exactly the expected number of documents;
//! - `failed_items`: permanent bulk failures within the configured tolerance;
//! - `share_of_previous`: at least `min_share_of_previous` of the live
//!   generation's count (passes with a note on a first run; `force`
//!   overrides it and the override is recorded);
//! - `alias_filter:<alias>`: each filtered alias's filter, run against the
//!   new generation, finds documents wherever it found some on the live one;
//! - `body_drift:<field>`: no designated body (GMC's `designatedBody`, TCS's
//!   `tcsDesignatedBody`) loses more than `max_body_loss` of its documents
//!   against the live generation, and `alias_drift` the same per alias: a
//!   mass loss for one region is what total counts hide (`force` overrides);
//! - `green`, at the finish, just before the aliases move: both generations
//!   green, every replica allocated and started, within
//!   `index.green_timeout_secs`; else the shards not started and
//!   OpenSearch's reasons (`force` overrides).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::search::breakdown::NO_BODY;
use crate::search::{BulkStats, GenerationHealth};

/// One gate's verdict: what the engine returns and the run record keeps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct GateVerdict {
    pub name: String,
    pub passed: bool,
    /// Failed, but `--force` let it through.
    pub overridden: bool,
    pub detail: String,
    /// The figures the verdict was made from (gate-specific).
    #[schema(value_type = Option<Object>)]
    pub figures: Value,
}

impl GateVerdict {
    fn new(name: impl Into<String>, passed: bool, detail: String, figures: Value) -> Self {
        Self {
            name: name.into(),
            passed,
            overridden: false,
            detail,
            figures,
        }
    }
}

/// Every gate's verdict for one generation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateReport {
    pub generation: String,
    pub gates: Vec<GateVerdict>,
    /// `--force` was given.
    pub forced: bool,
}

impl GateReport {
    /// Whether the generation may be promoted: every gate passed or was overridden.
    pub fn passed(&self) -> bool {
        self.gates.iter().all(|g| g.passed || g.overridden)
    }

    /// The gates that stop the promotion.
    pub fn blocking(&self) -> impl Iterator<Item = &GateVerdict> {
        self.gates.iter().filter(|g| !g.passed && !g.overridden)
    }

    /// One line per blocking gate, for errors and logs.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self
            .blocking()
            .map(|g| format!("{}: {}", g.name, g.detail))
            .collect();
        if failed.is_empty() {
            format!("{}: every gate passed", self.generation)
        } else {
            format!("{}: {}", self.generation, failed.join("; "))
        }
    }
}

/// The generation holds exactly the expected number of documents.
pub fn count_gate(indexed: u64, expected: u64) -> GateVerdict {
    let passed = indexed == expected;
    let detail = if passed {
        format!("{indexed} documents, as expected")
    } else {
        format!("{indexed} documents indexed, {expected} expected")
    };
    GateVerdict::new(
        "count",
        passed,
        detail,
        json!({"indexed": indexed, "expected": expected}),
    )
}

/// Permanent item failures are within the tolerance.
pub fn failed_items_gate(stats: &BulkStats, max_failed_items: u64) -> GateVerdict {
    let passed = stats.failed <= max_failed_items;
    let detail = if stats.failed == 0 {
        "no failed items".to_string()
    } else {
        let reasons: Vec<String> = stats
            .failed_by_reason
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        format!(
            "{} failed items ({}), {max_failed_items} tolerated",
            stats.failed,
            reasons.join(", ")
        )
    };
    GateVerdict::new(
        "failed_items",
        passed,
        detail,
        json!({"failed": stats.failed, "tolerated": max_failed_items, "by_reason": stats.failed_by_reason}),
    )
}

/// The new count is at least `min_share` of the previous live generation's.
pub fn share_gate(
    indexed: u64,
    previous: Option<(&str, u64)>,
    min_share: f64,
    force: bool,
) -> GateVerdict {
    let Some((previous_name, previous_count)) = previous else {
        return GateVerdict::new(
            "share_of_previous",
            true,
            "first run: no previous generation to compare with".into(),
            json!({"indexed": indexed, "previous": null, "min_share": min_share}),
        );
    };
    let required = (previous_count as f64 * min_share).ceil() as u64;
    let share = if previous_count == 0 {
        1.0
    } else {
        indexed as f64 / previous_count as f64
    };
    let passed = indexed >= required;
    let mut verdict = GateVerdict::new(
        "share_of_previous",
        passed,
        format!(
            "{indexed} documents, {:.1}% of {previous_count} in {previous_name} (at least {:.1}% required)",
            share * 100.0,
            min_share * 100.0
        ),
        json!({
            "indexed": indexed,
            "previous": previous_count,
            "previous_generation": previous_name,
            "share": share,
            "min_share": min_share,
            "required": required,
        }),
    );
    if !passed && force {
        verdict.overridden = true;
        verdict.detail.push_str("; overridden by --force");
    }
    verdict
}

/// Both generations are green: every shard's replicas allocated and
/// started, so that the readers the aliases send there are served by more
/// than one copy, and a node lost after the swap loses none of what they
/// were served.
pub fn green_gate(health: &GenerationHealth, timeout_secs: u64, force: bool) -> GateVerdict {
    let passed = health.is_green();
    let detail = if passed {
        format!("green after {} s", health.waited_secs)
    } else {
        format!(
            "not green after {} s (index.green_timeout_secs {timeout_secs}): {}",
            health.waited_secs,
            health.describe()
        )
    };
    let mut verdict = GateVerdict::new(
        "green",
        passed,
        detail,
        serde_json::to_value(health).unwrap_or(Value::Null),
    );
    if !passed && force {
        verdict.overridden = true;
        verdict.detail.push_str("; overridden by --force");
    }
    verdict
}

/// A filtered alias's filter finds documents in the new generation wherever
/// it found some in the live one.
pub fn filter_gate(alias: &str, new: u64, old: Option<u64>) -> GateVerdict {
    let name = format!("alias_filter:{alias}");
    match old {
        None => GateVerdict::new(
            name,
            true,
            format!("{new} documents match; no previous generation to compare with"),
            json!({"new": new, "old": null}),
        ),
        Some(old) => {
            let passed = old == 0 || new > 0;
            let detail = if passed {
                format!("{new} documents match (live generation: {old})")
            } else {
                format!(
                    "no document matches, the live generation has {old}: the alias would go empty"
                )
            };
            GateVerdict::new(name, passed, detail, json!({"new": new, "old": old}))
        }
    }
}

/// How far a set of counts (per body, per alias) may fall against the live
/// generation's.
#[derive(Clone, Copy, Debug)]
pub struct DriftLimit {
    /// The largest share a key may lose (0.2: at most 20% fewer documents).
    pub max_loss: f64,
    /// Keys with fewer documents than this in the live generation are not
    /// judged: small counts move by chance.
    pub min_docs: u64,
}

/// No key (designated body, alias) of `old` loses more than the limit's
/// share in `new`. `what` names the keys in the detail ("designatedBody").
pub fn drift_gate(
    name: impl Into<String>,
    what: &str,
    new: &BTreeMap<String, u64>,
    old: Option<(&str, &BTreeMap<String, u64>)>,
    limit: DriftLimit,
    force: bool,
) -> GateVerdict {
    let name = name.into();
    let Some((old_name, old)) = old else {
        return GateVerdict::new(
            name,
            true,
            "first run: no live generation to compare with".into(),
            json!({"new": new, "old": null}),
        );
    };
    let mut losses = Vec::new();
    let mut judged = 0;
    for (key, &before) in old {
        // Fewer doctors without a body is no region's loss (TCS or GMC
        // now names their body); small counts move by chance.
        if key == NO_BODY || before < limit.min_docs.max(1) {
            continue;
        }
        judged += 1;
        let after = new.get(key).copied().unwrap_or(0);
        let loss = 1.0 - after as f64 / before as f64;
        if loss > limit.max_loss + 1e-9 {
            losses.push((key.clone(), before, after, loss));
        }
    }
    let passed = losses.is_empty();
    let mut detail = if passed {
        format!(
            "no {what} lost more than {:.0}% against {old_name} ({judged} judged)",
            limit.max_loss * 100.0
        )
    } else {
        let named: Vec<String> = losses
            .iter()
            .map(|(key, before, after, loss)| {
                format!(
                    "{what} {key}: {before} -> {after} documents (-{:.1}%)",
                    loss * 100.0
                )
            })
            .collect();
        format!(
            "{} against {old_name}; at most {:.0}% may be lost",
            named.join(", "),
            limit.max_loss * 100.0
        )
    };
    let figures = json!({
        "new": new,
        "old": old,
        "old_generation": old_name,
        "max_loss": limit.max_loss,
        "min_docs": limit.min_docs,
        "lost": losses.iter().map(|(k, b, a, l)| json!({"key": k, "old": b, "new": a, "loss": l})).collect::<Vec<_>>(),
    });
    if !passed && force {
        detail.push_str("; overridden by --force");
    }
    let mut verdict = GateVerdict::new(name, passed, detail, figures);
    verdict.overridden = !passed && force;
    verdict
}

/// A gate whose figures could not be gathered fails, saying why.
pub fn unavailable_gate(name: impl Into<String>, error: &dyn std::fmt::Display) -> GateVerdict {
    GateVerdict::new(
        name,
        false,
        format!("could not be checked: {error}"),
        Value::Null,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_must_match_exactly() {
        assert!(count_gate(10, 10).passed);
        assert!(!count_gate(9, 10).passed);
        assert!(!count_gate(11, 10).passed);
    }

    #[test]
    fn failed_items_respect_the_tolerance_and_name_their_reasons() {
        let mut stats = BulkStats::default();
        assert!(failed_items_gate(&stats, 0).passed);
        stats.failed = 2;
        stats
            .failed_by_reason
            .insert("mapper_parsing_exception".into(), 2);
        let v = failed_items_gate(&stats, 0);
        assert!(!v.passed);
        assert!(v.detail.contains("mapper_parsing_exception"));
        assert!(failed_items_gate(&stats, 2).passed);
    }

    #[test]
    fn a_short_generation_fails_the_share_gate_unless_forced() {
        let v = share_gate(800, Some(("old", 1000)), 0.9, false);
        assert!(!v.passed && !v.overridden);
        let forced = share_gate(800, Some(("old", 1000)), 0.9, true);
        assert!(!forced.passed && forced.overridden);
        assert!(forced.detail.contains("--force"));
        assert!(share_gate(900, Some(("old", 1000)), 0.9, false).passed);
        let first = share_gate(5, None, 0.9, false);
        assert!(first.passed && first.detail.contains("first run"));
    }

    #[test]
    fn force_overrides_only_the_share_gate() {
        let report = GateReport {
            generation: "g".into(),
            gates: vec![
                share_gate(1, Some(("old", 1000)), 0.9, true),
                count_gate(1, 1),
            ],
            forced: true,
        };
        assert!(report.passed());
        let report = GateReport {
            generation: "g".into(),
            gates: vec![
                share_gate(1, Some(("old", 1000)), 0.9, true),
                count_gate(1, 2),
            ],
            forced: true,
        };
        assert!(!report.passed());
        assert!(report.summary().contains("count"));
    }

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    const LIMIT: DriftLimit = DriftLimit {
        max_loss: 0.2,
        min_docs: 10,
    };

    #[test]
    fn a_body_that_loses_more_than_the_limit_is_named() {
        let old = counts(&[
            ("1-AIIDR8", 1000),
            ("1-AIIDSA", 1000),
            ("tiny", 5),
            (NO_BODY, 900),
        ]);
        let new = counts(&[
            ("1-AIIDR8", 400),
            ("1-AIIDSA", 800),
            ("tiny", 0),
            (NO_BODY, 10),
        ]);
        let v = drift_gate(
            "body_drift:designatedBody",
            "designatedBody",
            &new,
            Some(("old", &old)),
            LIMIT,
            false,
        );
        assert!(!v.passed && !v.overridden);
        assert!(v.detail.contains("1-AIIDR8: 1000 -> 400"), "{}", v.detail);
        // Exactly 20% is allowed; a body under min_docs is not judged.
        assert!(
            !v.detail.contains("1-AIIDSA") && !v.detail.contains("tiny"),
            "{}",
            v.detail
        );
        let gone = counts(&[("1-AIIDSA", 1000)]);
        let v = drift_gate(
            "b",
            "designatedBody",
            &gone,
            Some(("old", &old)),
            LIMIT,
            false,
        );
        assert!(v.detail.contains("1-AIIDR8: 1000 -> 0"), "{}", v.detail);
    }

    #[test]
    fn drift_passes_on_a_first_run_and_is_overridden_by_force() {
        let new = counts(&[("a", 1)]);
        assert!(drift_gate("b", "body", &new, None, LIMIT, false).passed);
        let old = counts(&[("a", 100)]);
        let v = drift_gate("b", "body", &new, Some(("old", &old)), LIMIT, true);
        assert!(!v.passed && v.overridden && v.detail.contains("--force"));
        let grown = counts(&[("a", 500)]);
        assert!(drift_gate("b", "body", &grown, Some(("old", &old)), LIMIT, false).passed);
    }

    #[test]
    fn an_alias_filter_may_not_go_empty() {
        assert!(!filter_gate("current_connections", 0, Some(5)).passed);
        assert!(filter_gate("current_connections", 3, Some(5)).passed);
        assert!(filter_gate("discrepancies", 0, Some(0)).passed);
        assert!(filter_gate("discrepancies", 0, None).passed);
    }
}
