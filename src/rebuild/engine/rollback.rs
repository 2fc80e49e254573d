//! Rollback: every alias back to the previous generation that served (or
//! to a chosen one), with its paired recommendation generation, in one
//! `_aliases` request. Which pair to move to is a pure function of the
//! listing ([`rollback_targets`]).

use super::promote::{MoveKind, PromoteError, PromotionReport};
use super::Engine;
use crate::search::generations::{GenerationInfo, GenerationState};
use crate::search::Family;

impl Engine {
    /// family (or to `to` and its pair) in one request.
    pub async fn rollback(&self, to: Option<&str>) -> Result<PromotionReport, PromoteError> {
        let listing = self.list_generations().await?;
        let (live_master, live_reco) = self.live_generations().await?;
        let (master, recommendation) =
            rollback_targets(&listing, live_master.as_deref(), live_reco.as_deref(), to)?;
        let planned = self
            .plan_move(MoveKind::Rollback, &master, &recommendation)
            .await?;
        self.execute(planned).await
    }
}

/// Chooses the generations a rollback moves to: `(master, recommendation)`.
///
/// Without `to`: the newest served master generation older than the live
/// one, and the recommendation generation built from it (else the newest
/// served recommendation generation older than the live one). With `to`: that
/// generation and its pair (`built_from` links them either way).
pub fn rollback_targets(
    listing: &[GenerationInfo],
    live_master: Option<&str>,
    live_reco: Option<&str>,
    to: Option<&str>,
) -> Result<(String, String), PromoteError> {
    let ready = |g: &&GenerationInfo| g.state() == GenerationState::Ready;
    let paired_reco = |master: &str| {
        listing
            .iter()
            .filter(ready)
            .filter(|g| g.family == Family::Recommendation && g.built_from() == Some(master))
            .map(|g| g.name.clone())
            .max()
    };
    let newest_served_before = |family: Family, before: Option<&str>| {
        listing
            .iter()
            .filter(ready)
            .filter(|g| g.family == family && g.was_served() && !g.holds_alias())
            .filter(|g| before.is_none_or(|b| g.name.as_str() < b))
            .map(|g| g.name.clone())
            .max()
    };
    match to {
        None => {
            let Some(live) = live_master else {
                return Err(PromoteError::NoRollbackTarget(
                    "no master generation is live".into(),
                ));
            };
            let master = newest_served_before(Family::Master, Some(live)).ok_or_else(|| {
                PromoteError::NoRollbackTarget(format!(
                    "no served master generation older than {live} is retained"
                ))
            })?;
            let reco = paired_reco(&master)
                .or_else(|| newest_served_before(Family::Recommendation, live_reco))
                .ok_or_else(|| {
                    PromoteError::NoRollbackTarget(format!(
                        "no recommendation generation to go with {master} is retained"
                    ))
                })?;
            Ok((master, reco))
        }
        Some(name) => {
            let Some(target) = listing.iter().find(|g| g.name == name) else {
                return Err(PromoteError::NoSuchGeneration {
                    name: name.to_string(),
                });
            };
            if target.state() != GenerationState::Ready {
                return Err(PromoteError::NotReady {
                    name: name.to_string(),
                    state: target.state(),
                });
            }
            if !target.was_served() {
                return Err(PromoteError::NeverServed {
                    name: name.to_string(),
                });
            }
            match target.family {
                Family::Master => {
                    let reco = paired_reco(name).ok_or_else(|| {
                        PromoteError::NoRollbackTarget(format!(
                            "no recommendation generation built from {name} is retained"
                        ))
                    })?;
                    Ok((name.to_string(), reco))
                }
                Family::Recommendation => {
                    let master = target
                        .built_from()
                        .filter(|m| listing.iter().filter(ready).any(|g| g.name == *m))
                        .ok_or_else(|| {
                            PromoteError::NoRollbackTarget(format!(
                                "the master generation {name} was built from is not retained"
                            ))
                        })?;
                    Ok((master.to_string(), name.to_string()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::GenerationMeta;
    use serde_json::Value;

    fn info(
        family: Family,
        n: u32,
        served: bool,
        live: bool,
        built_from: Option<u32>,
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
            aliases: if live { vec![stem.into()] } else { vec![] },
            meta: Some(GenerationMeta {
                run_id: format!("r{n}"),
                source_counts: Value::Null,
                template_sha256: String::new(),
                created: String::new(),
                state: GenerationState::Ready,
                built_from: built_from.map(|m| format!("masterdoctorindex-20260101-0000{m:02}")),
                served_at: served.then(|| "x".into()),
            }),
        }
    }

    fn listing() -> Vec<GenerationInfo> {
        vec![
            info(Family::Master, 1, true, false, None),
            info(Family::Master, 3, false, false, None), // refused, never served
            info(Family::Master, 5, true, true, None),
            info(Family::Recommendation, 2, true, false, Some(1)),
            info(Family::Recommendation, 4, false, false, Some(3)),
            info(Family::Recommendation, 6, true, true, Some(5)),
        ]
    }

    #[test]
    fn rollback_goes_to_the_previous_served_pair() {
        let l = listing();
        let (m, r) = rollback_targets(&l, Some(&l[2].name), Some(&l[5].name), None).unwrap();
        assert_eq!(m, l[0].name);
        assert_eq!(r, l[3].name);
    }

    #[test]
    fn rollback_to_a_named_generation_takes_its_pair_from_either_side() {
        let l = listing();
        let (m, r) = rollback_targets(&l, None, None, Some(&l[0].name)).unwrap();
        assert_eq!((m, r), (l[0].name.clone(), l[3].name.clone()));
        let (m, r) = rollback_targets(&l, None, None, Some(&l[3].name)).unwrap();
        assert_eq!((m, r), (l[0].name.clone(), l[3].name.clone()));
    }

    #[test]
    fn rollback_to_a_generation_that_never_served_is_refused() {
        let l = listing();
        let e = rollback_targets(&l, None, None, Some(&l[1].name)).unwrap_err();
        assert!(matches!(e, PromoteError::NeverServed { .. }), "{e}");
        assert!(e.to_string().contains("--force"));
    }

    #[test]
    fn rollback_without_a_previous_generation_is_refused() {
        let l = vec![
            info(Family::Master, 5, true, true, None),
            info(Family::Recommendation, 6, true, true, Some(5)),
        ];
        let e = rollback_targets(&l, Some(&l[0].name), Some(&l[1].name), None).unwrap_err();
        assert!(matches!(e, PromoteError::NoRollbackTarget(_)));
        assert!(e.is_refusal());
        let e = rollback_targets(&l, None, None, Some("masterdoctorindex-20990101-000000"))
            .unwrap_err();
        assert!(matches!(e, PromoteError::NoSuchGeneration { .. }));
    }

    #[test]
    fn the_alias_conflict_error_names_the_index_and_points_to_adopt() {
        let e = PromoteError::AliasNameTaken {
            name: "current_connections".into(),
        };
        let text = e.to_string();
        assert!(text.starts_with(
            "index current_connections exists where alias current_connections should be"
        ));
        assert!(text.contains("no alias moved"), "{text}");
        assert!(
            text.contains("rebuilder adopt"),
            "points to the command that converts it"
        );
        assert!(e.is_refusal());
    }
}
