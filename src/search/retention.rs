//! Retention: which generations stay and which are deleted, decided by a
//! pure function over the listing, then applied with a last alias check
//! before each delete.
//!
//! Per family, newest first:
//! - a generation that holds any alias stays (`live`);
//! - a generation a run is still building (listed as in progress) stays;
//! - a generation still marked `building`, or without our meta, stays: the
//!   first is for orphan cleanup to judge (it knows which runs are alive),
//!   the second was not made by rebuilder;
//! - of the generations that served before (rollback candidates), the
//!   newest `keep_previous` stay;
//! - of the finished generations that never served (refused by a gate), the
//!   newest stays if it is newer than the live one, for inspection;
//! - everything else is deleted.

use opensearch::http::Method;
use serde::Serialize;
use tracing::{info, warn};

use super::client::{SearchClient, SearchError};
use super::generations::{self, GenerationInfo, GenerationState};
use super::templates::Family;

/// Why a generation stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    Live,
    InProgress,
    Building,
    NotOurs,
    Previous,
    LatestUnpromoted,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetentionPlan {
    pub keep: Vec<(String, KeepReason)>,
    pub delete: Vec<String>,
}

/// What retention did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetentionReport {
    pub kept: Vec<(String, KeepReason)>,
    pub deleted: Vec<String>,
    /// Generations that were to go but did not: (name, why).
    pub skipped: Vec<(String, String)>,
}

/// Decides what stays. `generations` may be in any order.
pub fn plan(
    generations: &[GenerationInfo],
    keep_previous: usize,
    in_progress: &[String],
) -> RetentionPlan {
    let mut out = RetentionPlan::default();
    for family in Family::ALL {
        let mut of_family: Vec<&GenerationInfo> =
            generations.iter().filter(|g| g.family == family).collect();
        of_family.sort_by(|a, b| b.name.cmp(&a.name));
        let newest_live = of_family
            .iter()
            .find(|g| g.holds_alias())
            .map(|g| g.name.clone());
        let mut previous_kept = 0;
        let mut unpromoted_kept = false;
        for g in of_family {
            let reason = if g.holds_alias() {
                Some(KeepReason::Live)
            } else if in_progress.contains(&g.name) {
                Some(KeepReason::InProgress)
            } else if g.state() == GenerationState::Building {
                Some(KeepReason::Building)
            } else if g.state() == GenerationState::Unknown {
                Some(KeepReason::NotOurs)
            } else if g.was_served() {
                (previous_kept < keep_previous).then(|| {
                    previous_kept += 1;
                    KeepReason::Previous
                })
            } else {
                let newer_than_live = newest_live.as_ref().is_none_or(|live| g.name > *live);
                (!unpromoted_kept && newer_than_live).then(|| {
                    unpromoted_kept = true;
                    KeepReason::LatestUnpromoted
                })
            };
            match reason {
                Some(r) => out.keep.push((g.name.clone(), r)),
                None => out.delete.push(g.name.clone()),
            }
        }
    }
    out
}

/// Deletes what the plan drops, re-checking just before each delete that
/// the generation still holds no alias.
pub async fn apply(
    client: &SearchClient,
    plan: RetentionPlan,
) -> Result<RetentionReport, SearchError> {
    let mut report = RetentionReport {
        kept: plan.keep,
        ..RetentionReport::default()
    };
    for name in plan.delete {
        let (status, aliases) = client
            .request(Method::Get, &format!("/{name}/_alias"), &[], None)
            .await?;
        if status == 404 {
            continue;
        }
        let holds = aliases[&name]["aliases"]
            .as_object()
            .is_some_and(|a| !a.is_empty());
        if holds {
            warn!(generation = %name, "Generation gained an alias since retention looked; keeping it.");
            report
                .skipped
                .push((name, "holds an alias now".to_string()));
            continue;
        }
        generations::delete(client, &name).await?;
        report.deleted.push(name);
    }
    info!(
        kept = report.kept.len(),
        deleted = report.deleted.len(),
        "Retention applied."
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::generations::GenerationMeta;

    fn generation(
        family: Family,
        n: u32,
        state: GenerationState,
        served: bool,
        alias: bool,
    ) -> GenerationInfo {
        let stem = match family {
            Family::Master => "masterdoctorindex",
            Family::Recommendation => "recommendationindex",
        };
        GenerationInfo {
            name: format!("{stem}-20260101-0000{n:02}"),
            family,
            created: String::new(),
            docs: 1,
            size_bytes: 1,
            aliases: if alias {
                vec![stem.to_string()]
            } else {
                vec![]
            },
            meta: (state != GenerationState::Unknown).then(|| GenerationMeta {
                run_id: format!("r{n}"),
                source_counts: serde_json::Value::Null,
                template_sha256: String::new(),
                created: String::new(),
                state,
                built_from: None,
                served_at: served.then(|| "2026-01-01T00:00:00Z".to_string()),
            }),
        }
    }

    fn names(list: &[(String, KeepReason)]) -> Vec<String> {
        list.iter().map(|(n, _)| n.clone()).collect()
    }

    #[test]
    fn keeps_the_live_one_and_the_previous_n_served_ones() {
        use GenerationState::Ready;
        let gens: Vec<_> = (1..=6)
            .map(|n| generation(Family::Master, n, Ready, true, n == 6))
            .collect();
        let p = plan(&gens, 2, &[]);
        assert_eq!(
            p.keep,
            vec![
                (gens[5].name.clone(), KeepReason::Live),
                (gens[4].name.clone(), KeepReason::Previous),
                (gens[3].name.clone(), KeepReason::Previous),
            ]
        );
        assert_eq!(
            p.delete,
            vec![
                gens[2].name.clone(),
                gens[1].name.clone(),
                gens[0].name.clone()
            ]
        );
    }

    #[test]
    fn never_deletes_alias_holders_in_progress_building_or_foreign_indices() {
        use GenerationState::*;
        let gens = vec![
            generation(Family::Master, 1, Ready, false, true), // old, but holds an alias
            generation(Family::Master, 2, Building, false, false),
            generation(Family::Master, 3, Unknown, false, false),
            generation(Family::Master, 4, Ready, false, false), // in progress
            generation(Family::Master, 5, Ready, true, false),
        ];
        let p = plan(&gens, 0, &[gens[3].name.clone()]);
        assert_eq!(p.delete, vec![gens[4].name.clone()]);
        assert_eq!(names(&p.keep).len(), 4);
    }

    #[test]
    fn keeps_only_the_latest_unpromoted_generation_and_only_if_newer_than_live() {
        use GenerationState::Ready;
        let gens = vec![
            generation(Family::Master, 1, Ready, false, false), // refused long ago
            generation(Family::Master, 2, Ready, true, true),   // live
            generation(Family::Master, 3, Ready, false, false), // refused
            generation(Family::Master, 4, Ready, false, false), // refused, latest
        ];
        let p = plan(&gens, 2, &[]);
        assert_eq!(
            p.keep,
            vec![
                (gens[3].name.clone(), KeepReason::LatestUnpromoted),
                (gens[1].name.clone(), KeepReason::Live),
            ]
        );
        assert_eq!(p.delete, vec![gens[2].name.clone(), gens[0].name.clone()]);
    }

    #[test]
    fn families_are_counted_separately() {
        use GenerationState::Ready;
        let mut gens = Vec::new();
        for family in Family::ALL {
            for n in 1..=4 {
                gens.push(generation(family, n, Ready, true, n == 4));
            }
        }
        let p = plan(&gens, 1, &[]);
        assert_eq!(p.keep.len(), 4);
        assert_eq!(p.delete.len(), 4);
    }
}
