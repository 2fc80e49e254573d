//! Promotion: moving every alias of both families to a pair of generations
//! in one `_aliases` request. Every precondition is checked first (both
//! generations exist, belong to their family and are ready; no concrete
//! index holds an alias name), then the request commits everything at once
//! or nothing. A request whose answer is lost is retried with the engine's
//! retry policy; a retry that finds the aliases already where the plan puts
//! them counts as done.

use std::time::Instant;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::Engine;
use crate::rebuild::gates::GateReport;
use crate::retry::with_retry;
use crate::search::aliases::{self, AliasMove, AliasPlan};
use crate::search::generations::{self, Generation, GenerationState};
use crate::search::{Family, SearchError};

/// Why aliases did not move.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("index {name} exists where alias {name} should be: a concrete index (the legacy layout) holds the name; no alias moved. Convert it with `rebuilder adopt` (it prints its plan; `--yes` acts)")]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveKind {
    #[default]
    Promotion,
    Rollback,
}

/// Which generation served a family before and after a move.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct GenerationChange {
    pub from: Option<String>,
    pub to: String,
}

/// What one promotion or rollback did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
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

impl Engine {
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
        crate::failpoint::hit("before_aliases").await;
        with_retry(&self.retry, "the alias move", || async {
            match aliases::apply(&self.client, &planned.plan).await {
                Ok(()) => Ok(()),
                // An earlier attempt may have been applied though its answer
                // was lost; then its remove actions now fail.
                Err(e) if self.already_applied(&planned.plan).await => {
                    info!(error = %e, "The alias move was already applied by an earlier attempt.");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        crate::failpoint::hit("after_aliases").await;
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

    /// Whether every alias of the plan is held by exactly its target.
    async fn already_applied(&self, plan: &AliasPlan) -> bool {
        let names: Vec<String> = plan.moves.iter().map(|m| m.alias.clone()).collect();
        match aliases::current(&self.client, &names).await {
            Ok(now) => plan
                .moves
                .iter()
                .all(|m| now.holders_of(&m.alias) == std::slice::from_ref(&m.to)),
            Err(_) => false,
        }
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
}
