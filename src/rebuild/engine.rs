//! The blue/green engine: the OpenSearch half of a rebuild. It creates
//! generations, hands out bulk writers into them, restores their serving
//! settings, builds the recommendation generation by `_reindex`, validates,
//! promotes both families in one `_aliases` request, rolls back, applies
//! retention and cleans up orphans. The full run (`rebuild::run`) drives it;
//! the `rollback` and `generations` commands use it directly.
//!
//! Lifecycle markers (`_meta`, see `search::generations`): `state` is
//! `building` until [`Engine::finish_load`], then `ready`; `built_from`
//! pairs a recommendation generation with its master; `served_at` is set on
//! a generation once it is known to have held the aliases. An orphan is a
//! generation still `building`, holding no alias, that no live run claims:
//! [`Engine::delete_orphans`] removes those (call it with the lease held,
//! passing the generations of runs that are alive).

use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::config::Settings;
use crate::search::aliases::{self, AliasMove, AliasPlan, AliasSpec};
use crate::search::bulk::{spawn_writer, BulkOutcomes, BulkSender, BulkStats};
use crate::search::generations::{
    self, Generation, GenerationInfo, GenerationMeta, GenerationState,
};
use crate::search::reindex::{self, ReindexOptions, ReindexReport};
use crate::search::retention::{self, RetentionReport};
use crate::search::{Family, IndexTemplate, SearchClient, SearchError};

use super::gates::{self, GateReport, GateVerdict};

/// Why aliases did not move.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("index {name} exists where alias {name} should be; adopt it with `rebuilder adopt`")]
    AliasNameTaken { name: String },
    #[error("generation {name} does not exist")]
    NoSuchGeneration { name: String },
    #[error("generation {name} is {state}, not ready; only a finished generation can serve")]
    NotReady {
        name: String,
        state: GenerationState,
    },
    #[error("{name} is not a {expected} generation")]
    WrongFamily { name: String, expected: Family },
    #[error("generation {name} never served (a validation gate refused it?); rollback only returns to generations that served, a run with --force promotes a refused one")]
    NeverServed { name: String },
    #[error("validation failed, no alias moved: {0}")]
    GatesFailed(String),
    #[error("nothing to roll back to: {0}")]
    NoRollbackTarget(String),
    #[error(transparent)]
    Search(#[from] SearchError),
}

impl PromoteError {
    /// A refusal on purpose (exit code 3), as opposed to a failure.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, PromoteError::Search(_))
    }
}

/// Promotion or rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    Promotion,
    Rollback,
}

/// Which generation served a family before and after a move.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationChange {
    pub from: Option<String>,
    pub to: String,
}

/// What one promotion or rollback did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromotionReport {
    pub kind: MoveKind,
    pub master: GenerationChange,
    pub recommendation: GenerationChange,
    pub aliases: Vec<AliasMove>,
    pub took_ms: u64,
}

/// A promotion planned and checked, ready to execute (tests may add actions).
#[derive(Clone, Debug)]
pub struct PlannedMove {
    pub kind: MoveKind,
    pub master: GenerationChange,
    pub recommendation: GenerationChange,
    pub plan: AliasPlan,
}

/// The engine: a client, the settings and the loaded templates.
#[derive(Clone)]
pub struct Engine {
    client: SearchClient,
    settings: Settings,
    master_template: IndexTemplate,
    recommendation_template: IndexTemplate,
    specs: Vec<AliasSpec>,
    reindex_options: ReindexOptions,
}

impl Engine {
    /// Loads the templates from `settings.templates_dir` and checks that
    /// OpenSearch answers.
    pub async fn new(settings: &Settings) -> Result<Engine, SearchError> {
        let client = SearchClient::new(&settings.opensearch)?;
        client.version().await?;
        Self::with_client(client, settings)
    }

    /// Like [`new`](Self::new) with a given client, without a network call.
    pub fn with_client(client: SearchClient, settings: &Settings) -> Result<Engine, SearchError> {
        let load = |family| {
            IndexTemplate::load(&settings.templates_dir, family)
                .map_err(|e| SearchError::Invalid(e.to_string()))
        };
        let master_template = load(Family::Master)?;
        let recommendation_template = load(Family::Recommendation)?;
        let specs = aliases::alias_specs(
            &settings.names,
            &[&master_template, &recommendation_template],
        );
        Ok(Engine {
            client,
            settings: settings.clone(),
            master_template,
            recommendation_template,
            specs,
            reindex_options: ReindexOptions::default(),
        })
    }

    pub fn client(&self) -> &SearchClient {
        &self.client
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn template(&self, family: Family) -> &IndexTemplate {
        match family {
            Family::Master => &self.master_template,
            Family::Recommendation => &self.recommendation_template,
        }
    }

    /// Every alias of both families, qualified.
    pub fn alias_specs(&self) -> &[AliasSpec] {
        &self.specs
    }

    /// Creates a generation with build settings; its `_meta` says `building`.
    pub async fn create_generation(
        &self,
        family: Family,
        run_id: &str,
    ) -> Result<Generation, SearchError> {
        self.create(family, run_id, None).await
    }

    async fn create(
        &self,
        family: Family,
        run_id: &str,
        built_from: Option<&str>,
    ) -> Result<Generation, SearchError> {
        let template = self.template(family);
        let meta = GenerationMeta::building(run_id, template, built_from);
        generations::create(&self.client, &self.settings.names, template, &meta).await
    }

    /// A bulk writer into `generation` with the configured bulk settings.
    /// See `search::bulk`: drain the outcomes concurrently, or drop them.
    pub fn bulk_writer<T: Send + 'static>(
        &self,
        generation: &Generation,
    ) -> (
        BulkSender<T>,
        BulkOutcomes<T>,
        tokio::task::JoinHandle<BulkStats>,
    ) {
        spawn_writer(
            self.client.clone(),
            generation.name.clone(),
            self.settings.bulk.clone(),
        )
    }

    /// Serving settings back from the template, a refresh, state `ready`.
    pub async fn finish_load(&self, generation: &Generation) -> Result<(), SearchError> {
        generations::finish_load(&self.client, generation, self.template(generation.family)).await
    }

    /// Records what each source delivered in the generation's `_meta`.
    pub async fn set_source_counts(
        &self,
        generation: &Generation,
        source_counts: Value,
    ) -> Result<(), SearchError> {
        generations::update_meta(&self.client, &generation.name, |m| {
            m.source_counts = source_counts
        })
        .await
        .map(|_| ())
    }

    /// Builds the recommendation generation from a loaded master generation
    /// with server-side `_reindex`, restores its serving settings and checks
    /// that both hold the same number of documents.
    pub async fn build_recommendation_generation(
        &self,
        master: &Generation,
        run_id: &str,
    ) -> Result<(Generation, ReindexReport), SearchError> {
        self.expect_family(master, Family::Master)?;
        self.client
            .json(
                opensearch::http::Method::Post,
                &format!("/{}/_refresh", master.name),
                &[],
                None,
            )
            .await?;
        let generation = self
            .create(Family::Recommendation, run_id, Some(&master.name))
            .await?;
        let mut report = reindex::reindex(
            &self.client,
            &master.name,
            &generation.name,
            self.reindex_options,
        )
        .await?;
        self.finish_load(&generation).await?;
        report.source_count = generations::count(&self.client, &master.name).await?;
        report.dest_count = generations::count(&self.client, &generation.name).await?;
        if report.source_count != report.dest_count {
            return Err(SearchError::Invalid(format!(
                "recommendation generation {} holds {} documents but master generation {} holds {}",
                generation.name, report.dest_count, master.name, report.source_count
            )));
        }
        info!(
            generation = %generation.name,
            master = %master.name,
            docs = report.dest_count,
            "Recommendation generation built."
        );
        Ok((generation, report))
    }

    fn expect_family(&self, generation: &Generation, family: Family) -> Result<(), SearchError> {
        if generation.family == family
            && generations::generation_time(&self.settings.names, family, &generation.name)
                .is_some()
        {
            Ok(())
        } else {
            Err(SearchError::Invalid(format!(
                "{} is not a {family} generation",
                generation.name
            )))
        }
    }

    /// Runs every gate against a loaded master generation. Never fails: a
    /// gate whose figures cannot be gathered fails, saying why.
    pub async fn validate(
        &self,
        master: &Generation,
        expected_docs: u64,
        bulk: &BulkStats,
        force: bool,
    ) -> GateReport {
        let mut verdicts: Vec<GateVerdict> = Vec::new();
        let indexed = generations::count(&self.client, &master.name).await;
        match &indexed {
            Ok(n) => verdicts.push(gates::count_gate(*n, expected_docs)),
            Err(e) => verdicts.push(gates::unavailable_gate("count", e)),
        }
        verdicts.push(gates::failed_items_gate(
            bulk,
            self.settings.gates.max_failed_items,
        ));
        let live = match self.live_generations().await {
            Ok((live, _)) => Ok(live.filter(|l| *l != master.name)),
            Err(e) => Err(e),
        };
        let previous = match &live {
            Ok(Some(name)) => generations::count(&self.client, name)
                .await
                .map(|n| Some((name.clone(), n))),
            Ok(None) => Ok(None),
            Err(e) => Err(SearchError::Invalid(e.to_string())),
        };
        match (&indexed, &previous) {
            (Ok(n), Ok(prev)) => verdicts.push(gates::share_gate(
                *n,
                prev.as_ref().map(|(name, c)| (name.as_str(), *c)),
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
            let filter = spec.filter();
            let name = format!("alias_filter:{}", spec.logical);
            let new = generations::count_matching(&self.client, &master.name, filter).await;
            let old = match &live {
                Ok(Some(l)) => generations::count_matching(&self.client, l, filter)
                    .await
                    .map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(SearchError::Invalid(e.to_string())),
            };
            match (new, old) {
                (Ok(new), Ok(old)) => verdicts.push(gates::filter_gate(&spec.logical, new, old)),
                (Err(e), _) | (_, Err(e)) => verdicts.push(gates::unavailable_gate(name, &e)),
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

    /// Promotes only if the gates passed; otherwise nothing moves.
    pub async fn promote_validated(
        &self,
        master: &Generation,
        recommendation: &Generation,
        gates: &GateReport,
    ) -> Result<PromotionReport, PromoteError> {
        if !gates.passed() || gates.generation != master.name {
            return Err(PromoteError::GatesFailed(gates.summary()));
        }
        self.promote(master, recommendation).await
    }

    /// Moves every alias of both families to these generations in one
    /// `_aliases` request. On the first run the aliases are created.
    pub async fn promote(
        &self,
        master: &Generation,
        recommendation: &Generation,
    ) -> Result<PromotionReport, PromoteError> {
        let planned = self
            .plan_move(MoveKind::Promotion, &master.name, &recommendation.name)
            .await?;
        self.execute(planned).await
    }

    /// Checks every precondition and plans the one `_aliases` request that
    /// puts master aliases on `master` and recommendation aliases on
    /// `recommendation`.
    pub async fn plan_move(
        &self,
        kind: MoveKind,
        master: &str,
        recommendation: &str,
    ) -> Result<PlannedMove, PromoteError> {
        for (name, family) in [
            (master, Family::Master),
            (recommendation, Family::Recommendation),
        ] {
            if generations::family_of(&self.settings.names, name) != Some(family) {
                return Err(PromoteError::WrongFamily {
                    name: name.to_string(),
                    expected: family,
                });
            }
            let meta = match generations::read_meta(&self.client, name).await {
                Ok(meta) => meta,
                Err(e) if e.status() == Some(404) => {
                    return Err(PromoteError::NoSuchGeneration {
                        name: name.to_string(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let state = meta.map_or(GenerationState::Unknown, |m| m.state);
            if state != GenerationState::Ready {
                return Err(PromoteError::NotReady {
                    name: name.to_string(),
                    state,
                });
            }
        }
        let alias_names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        let taken = aliases::concrete_indices_named(&self.client, &alias_names).await?;
        if let Some(name) = taken.into_iter().next() {
            return Err(PromoteError::AliasNameTaken { name });
        }
        let now = aliases::current(&self.client, &alias_names).await?;
        let live = |family| {
            aliases::primary_alias(&self.specs, family)
                .and_then(|s| now.holders_of(&s.name).last().cloned())
        };
        let target = |family| match family {
            Family::Master => master.to_string(),
            Family::Recommendation => recommendation.to_string(),
        };
        let plan = aliases::plan_moves(&self.specs, &now, target);
        Ok(PlannedMove {
            kind,
            master: GenerationChange {
                from: live(Family::Master),
                to: master.to_string(),
            },
            recommendation: GenerationChange {
                from: live(Family::Recommendation),
                to: recommendation.to_string(),
            },
            plan,
        })
    }

    /// Sends a planned move as one `_aliases` request, and records which
    /// generations have served.
    pub async fn execute(&self, planned: PlannedMove) -> Result<PromotionReport, PromoteError> {
        let started = Instant::now();
        let old: Vec<String> = planned
            .plan
            .moves
            .iter()
            .flat_map(|m| m.from.iter().cloned())
            .collect();
        self.mark_served(&old).await;
        aliases::apply(&self.client, &planned.plan).await?;
        self.mark_served(&[planned.master.to.clone(), planned.recommendation.to.clone()])
            .await;
        let report = PromotionReport {
            kind: planned.kind,
            master: planned.master,
            recommendation: planned.recommendation,
            aliases: planned.plan.moves,
            took_ms: started.elapsed().as_millis() as u64,
        };
        info!(
            kind = ?report.kind,
            master = %report.master.to,
            recommendation = %report.recommendation.to,
            previous_master = ?report.master.from,
            "Aliases moved."
        );
        Ok(report)
    }

    /// Sets `served_at` on those of `names` that are our generations and lack it.
    async fn mark_served(&self, names: &[String]) {
        let mut seen: Vec<&String> = Vec::new();
        for name in names {
            if seen.contains(&name) || generations::family_of(&self.settings.names, name).is_none()
            {
                continue;
            }
            seen.push(name);
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let result = generations::update_meta(&self.client, name, |m| {
                if m.served_at.is_none() {
                    m.served_at = Some(now);
                }
            })
            .await;
            if let Err(e) = result {
                warn!(generation = %name, error = %e, "Could not record that the generation served.");
            }
        }
    }

    /// Moves every alias back to the previous served generation of each
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

    /// Keeps the live and previous N generations of each family and deletes
    /// the rest (see `search::retention` for the exact rule).
    pub async fn apply_retention(
        &self,
        in_progress: &[String],
    ) -> Result<RetentionReport, SearchError> {
        let listing = self.list_generations().await?;
        let plan = retention::plan(&listing, self.settings.retention.keep_previous, in_progress);
        retention::apply(&self.client, plan).await
    }

    /// Every generation of both families, oldest first.
    pub async fn list_generations(&self) -> Result<Vec<GenerationInfo>, SearchError> {
        generations::list(&self.client, &self.settings.names).await
    }

    /// The master and recommendation generations behind the write aliases.
    pub async fn live_generations(&self) -> Result<(Option<String>, Option<String>), SearchError> {
        let primary: Vec<String> = Family::ALL
            .iter()
            .filter_map(|f| aliases::primary_alias(&self.specs, *f).map(|s| s.name.clone()))
            .collect();
        let now = aliases::current(&self.client, &primary).await?;
        let live = |family| {
            aliases::primary_alias(&self.specs, family)
                .and_then(|s| now.holders_of(&s.name).last().cloned())
        };
        Ok((live(Family::Master), live(Family::Recommendation)))
    }

    /// Deletes generations still `building` that hold no alias and are not
    /// in `keep` (the generations of runs that are alive). Returns their names.
    pub async fn delete_orphans(&self, keep: &[String]) -> Result<Vec<String>, SearchError> {
        let orphans: Vec<String> = self
            .list_generations()
            .await?
            .into_iter()
            .filter(|g| {
                g.state() == GenerationState::Building
                    && !g.holds_alias()
                    && !keep.contains(&g.name)
            })
            .map(|g| g.name)
            .collect();
        let plan = retention::RetentionPlan {
            keep: Vec::new(),
            delete: orphans,
        };
        let report = retention::apply(&self.client, plan).await?;
        if !report.deleted.is_empty() {
            info!(deleted = ?report.deleted, "Orphan generations deleted.");
        }
        Ok(report.deleted)
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
    fn the_alias_conflict_error_points_to_adopt() {
        let e = PromoteError::AliasNameTaken {
            name: "current_connections".into(),
        };
        assert_eq!(
            e.to_string(),
            "index current_connections exists where alias current_connections should be; adopt it with `rebuilder adopt`"
        );
    }
}
