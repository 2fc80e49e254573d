//! The handlers of the JSON API: the trigger (for the gateway, answering at
//! once), the status of the current run, the run history, the generations,
//! and rollback. Each documents itself for the OpenAPI document.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::runner::{StartError, StartRequest};
use super::AppState;
use crate::rebuild::engine::{rollback_targets, PromotionReport};
use crate::rebuild::record::{RunOutcome, RunRecord, Trigger};
use crate::rebuild::{is_refusal, lease_holder, roll_back};
use crate::search::breakdown::Breakdown;
use crate::search::{Family, GenerationInfo, SearchError};
use crate::state::lease::{lease_collection, read_lease, REBUILD_LEASE};

/// Options of a trigger, in the query or a JSON body (the body wins).
#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SyncOptions {
    /// Build and validate, but move no alias.
    pub dry_run: Option<bool>,
    /// Promote even when the new generation is much smaller than the live one.
    pub force: Option<bool>,
}

/// A started run.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStarted {
    pub run_id: String,
    /// Where to follow it: `/api/runs/<runId>`.
    pub status: String,
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", e.body_text()))
}

/// A JSON body that must be an object, as the document says: serde would
/// also read a struct from an array (`[true, false]`), which nobody means.
fn json_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("bad JSON body: expected an object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

fn options_of(
    query: Result<Query<SyncOptions>, QueryRejection>,
    body: &Bytes,
) -> Result<SyncOptions, ApiError> {
    let Query(mut options) = query.map_err(query_error)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let from_body: SyncOptions = json_object(body)?;
        options.dry_run = from_body.dry_run.or(options.dry_run);
        options.force = from_body.force.or(options.force);
    }
    Ok(options)
}

/// Starts a rebuild in the background and answers at once.
#[utoipa::path(
    post,
    path = "/api/sync",
    tag = "runs",
    params(SyncOptions),
    request_body(content = Option<SyncOptions>, description = "Options, instead of the query", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The run started", body = SyncStarted),
        (status = 400, description = "Bad options", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one", body = ErrorBody),
        (status = 409, description = "A run holds the lease (`run_in_progress`, with its id)", body = ErrorBody),
        (status = 503, description = "A server the run needs is unreachable", body = ErrorBody),
    )
)]
pub async fn trigger_post(
    State(state): State<AppState>,
    query: Result<Query<SyncOptions>, QueryRejection>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let options = options_of(query, &body)?;
    trigger(state, options).await
}

/// The old job's path: the same as `POST /api/sync`.
#[utoipa::path(
    get,
    path = "/api/sync",
    tag = "runs",
    params(SyncOptions),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The run started", body = SyncStarted),
        (status = 400, description = "Bad options", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one", body = ErrorBody),
        (status = 409, description = "A run holds the lease (`run_in_progress`, with its id)", body = ErrorBody),
        (status = 503, description = "A server the run needs is unreachable", body = ErrorBody),
    )
)]
pub async fn trigger_get(
    State(state): State<AppState>,
    query: Result<Query<SyncOptions>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let options = options_of(query, &Bytes::new())?;
    trigger(state, options).await
}

async fn trigger(state: AppState, options: SyncOptions) -> Result<impl IntoResponse, ApiError> {
    let request = StartRequest {
        trigger: Trigger::Http,
        dry_run: options.dry_run.unwrap_or(false),
        force: options.force.unwrap_or(false),
    };
    match state.runner.start(request).await {
        Ok(run_id) => Ok((
            StatusCode::ACCEPTED,
            Json(SyncStarted {
                status: format!("/api/runs/{run_id}"),
                run_id,
            }),
        )),
        Err(StartError::InProgress { run_id, message }) => {
            Err(ApiError::run_in_progress(run_id, message))
        }
        Err(StartError::ShuttingDown) => Err(ApiError::unavailable(
            "the service is shutting down; no run starts",
        )),
        Err(StartError::Failed(e)) => Err(ApiError::unavailable(format!(
            "the run could not start: {e:#}"
        ))),
    }
}

/// The current run (or the last one), with its rate and ETA.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Whether a run (of any replica) is working now.
    pub running: bool,
    /// The current run, or else the last one; none before the first run.
    pub run: Option<RunRecord>,
    /// Documents written per second: over the last 10 s (the current run) or overall (the last).
    pub docs_per_sec: f64,
    /// Seconds left, estimated from the documents of the last successful run.
    pub eta_secs: Option<f64>,
    /// The next start of the schedule (UTC), if it is on.
    pub next_scheduled: Option<String>,
    /// How far behind the live updates are, as the active applier last
    /// reported it (any replica's); none before any applier reported.
    pub live: Option<crate::live::backlog::BacklogReport>,
}

/// What is happening now, and what happens next.
#[utoipa::path(
    get,
    path = "/api/sync/status",
    tag = "runs",
    responses(
        (status = 200, description = "The current or last run", body = SyncStatus),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = ErrorBody),
        (status = 503, description = "MongoDB is unreachable", body = ErrorBody),
    )
)]
pub async fn status(State(state): State<AppState>) -> Result<Json<SyncStatus>, ApiError> {
    let run = state
        .history
        .current_or_last()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the run history: {e}")))?;
    let lease = rebuild_lease_now(&state).await;
    let running = run.as_ref().is_some_and(|r| r.is_running(lease.as_ref()));
    let seconds = run
        .as_ref()
        .map_or(0.0, |r| r.duration_ms() as f64 / 1000.0);
    let written = run
        .as_ref()
        .map_or(0, |r| r.bulk.written + r.bulk.superseded);
    let overall = if seconds > 0.0 {
        written as f64 / seconds
    } else {
        0.0
    };
    // While a run works, its recent rate (the last 10 s of progress): the
    // overall rate is held down by the GMC read, when nothing is written.
    let docs_per_sec = match run.as_ref().filter(|_| running) {
        Some(r) => recent_rate(&r.progress).unwrap_or(overall),
        None => overall,
    };
    let eta_secs = if running && docs_per_sec > 0.0 {
        let last = state.history.page(20, None).await.unwrap_or_default();
        last.iter()
            .find(|r| r.outcome == RunOutcome::Succeeded)
            .map(|r| r.counts.docs_expected)
            .filter(|total| *total > written)
            .map(|total| (total - written) as f64 / docs_per_sec)
    } else {
        None
    };
    // The backlog is a report beside the run: its absence fails nothing.
    let live = crate::live::backlog::read(&state.mongo, &state.settings)
        .await
        .unwrap_or_default();
    Ok(Json(SyncStatus {
        running,
        run,
        docs_per_sec,
        eta_secs,
        live,
        next_scheduled: state
            .next_start
            .get()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    }))
}

/// Documents per second over the last 10 s of progress points, if they
/// span any time.
fn recent_rate(points: &[crate::rebuild::record::ProgressPoint]) -> Option<f64> {
    let last = points.last()?;
    let from = points
        .iter()
        .find(|p| p.at_ms + 10_000 >= last.at_ms)
        .filter(|p| p.at_ms < last.at_ms)?;
    Some(
        last.written.saturating_sub(from.written) as f64 * 1000.0
            / (last.at_ms - from.at_ms) as f64,
    )
}

/// Paging of the run list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunPage {
    /// How many runs, newest first (1 to 100, default 20; outside that: 400).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Only runs older than this run id (the `next` of the previous page).
    pub before: Option<String>,
}

/// One page of runs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    pub runs: Vec<RunRecord>,
    /// Pass as `before` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Runs, newest first.
#[utoipa::path(
    get,
    path = "/api/runs",
    tag = "runs",
    params(RunPage),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "Bad paging", body = ErrorBody),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = ErrorBody),
        (status = 503, description = "MongoDB is unreachable", body = ErrorBody),
    )
)]
pub async fn runs(
    State(state): State<AppState>,
    page: Result<Query<RunPage>, QueryRejection>,
) -> Result<Json<RunList>, ApiError> {
    let Query(page) = page.map_err(query_error)?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let runs = state
        .history
        .page(i64::from(limit) + 1, page.before.as_deref())
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the run history: {e}")))?;
    let mut runs = runs;
    let next = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok(Json(RunList { runs, next }))
}

/// One run's full report (the content of `rebuilder status --json`).
#[utoipa::path(
    get,
    path = "/api/runs/{run_id}",
    tag = "runs",
    params(("run_id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = RunRecord),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such run (`run_not_found`)", body = ErrorBody),
        (status = 503, description = "MongoDB is unreachable", body = ErrorBody),
    )
)]
pub async fn run(
    State(state): State<AppState>,
    Path(run_id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    state
        .history
        .get(&run_id)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read the run history: {e}")))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("run_not_found", format!("no run {run_id:?}")))
}

/// Both families' generations, oldest first, with the aliases each holds.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerationList {
    pub master: Vec<GenerationInfo>,
    pub recommendation: Vec<GenerationInfo>,
    /// Alias name to the generations that hold it.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Where `POST /api/rollback` without `to` would move the aliases now.
    pub rollback: RollbackPlan,
}

/// The default rollback target, by the service's own rule (the newest
/// served generation older than the live one, with its paired
/// recommendation generation): what the page shows before it is asked.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPlan {
    /// The master generation it would move to; null when there is none.
    pub master: Option<String>,
    /// The recommendation generation it would move to.
    pub recommendation: Option<String>,
    /// Why a rollback would be refused now; null when it would move.
    pub refusal: Option<String>,
}

impl RollbackPlan {
    fn of(listing: &[GenerationInfo]) -> Self {
        let live = |family: Family| {
            listing
                .iter()
                .filter(|g| g.family == family && g.holds_alias())
                .map(|g| g.name.as_str())
                .max()
        };
        match rollback_targets(
            listing,
            live(Family::Master),
            live(Family::Recommendation),
            None,
        ) {
            Ok((master, recommendation)) => Self {
                master: Some(master),
                recommendation: Some(recommendation),
                refusal: None,
            },
            Err(e) => Self {
                refusal: Some(e.to_string()),
                ..Self::default()
            },
        }
    }
}

/// The generations of both families.
#[utoipa::path(
    get,
    path = "/api/generations",
    tag = "generations",
    responses(
        (status = 200, description = "Both families", body = GenerationList),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = ErrorBody),
        (status = 503, description = "OpenSearch is unreachable", body = ErrorBody),
    )
)]
pub async fn generations(State(state): State<AppState>) -> Result<Json<GenerationList>, ApiError> {
    let listing = state
        .engine
        .list_generations()
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot list the generations: {e}")))?;
    let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &listing {
        for a in &g.aliases {
            aliases.entry(a.clone()).or_default().push(g.name.clone());
        }
    }
    let rollback = RollbackPlan::of(&listing);
    let (master, recommendation) = listing
        .into_iter()
        .partition(|g| g.family == Family::Master);
    Ok(Json(GenerationList {
        master,
        recommendation,
        aliases,
        rollback,
    }))
}

/// Which master generations to compare.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CompareQuery {
    /// A master generation; the live one when absent.
    pub generation: Option<String>,
    /// Another master generation; the newest other one that served when absent.
    pub against: Option<String>,
}

/// Two master generations' documents by designated body and by alias.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GenerationComparison {
    /// None when nothing is live and no generation was named.
    pub generation: Option<Breakdown>,
    /// None when there is no other generation to compare with.
    pub against: Option<Breakdown>,
}

/// Documents per designated body and per alias, side by side for two
/// master generations (by default the live one and the one before it).
#[utoipa::path(
    get,
    path = "/api/generations/compare",
    tag = "generations",
    params(CompareQuery),
    responses(
        (status = 200, description = "Both breakdowns", body = GenerationComparison),
        (status = 400, description = "Not a master generation of this family", body = ErrorBody),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = ErrorBody),
        (status = 503, description = "OpenSearch is unreachable", body = ErrorBody),
    )
)]
pub async fn compare(
    State(state): State<AppState>,
    query: Result<Query<CompareQuery>, QueryRejection>,
) -> Result<Json<GenerationComparison>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let unavailable = |e: SearchError| ApiError::unavailable(format!("cannot compare: {e}"));
    let masters: Vec<GenerationInfo> = state
        .engine
        .list_generations()
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|g| g.family == Family::Master)
        .collect();
    // Only names of this family's generations reach OpenSearch.
    let known = |name: &str| -> Result<String, ApiError> {
        masters
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.name.clone())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name:?} is not a master generation of this service"
                ))
            })
    };
    let generation = match &query.generation {
        Some(name) => Some(known(name)?),
        None => {
            state
                .engine
                .live_generations()
                .await
                .map_err(unavailable)?
                .0
        }
    };
    let against = match &query.against {
        Some(name) => Some(known(name)?),
        None => masters
            .iter()
            .rev()
            .find(|g| Some(&g.name) != generation.as_ref() && g.was_served())
            .map(|g| g.name.clone()),
    };
    let mut out = GenerationComparison {
        generation: None,
        against: None,
    };
    if let Some(name) = generation {
        out.generation = Some(state.engine.breakdown(&name).await.map_err(unavailable)?);
    }
    if let Some(name) = against {
        out.against = Some(state.engine.breakdown(&name).await.map_err(unavailable)?);
    }
    Ok(Json(out))
}

/// Where to roll back to.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A generation (master or recommendation) and its pair; the previous
    /// served pair when absent. A newer one rolls forward.
    pub to: Option<String>,
}

/// Moves every alias back to the previous generation (or to `to`).
#[utoipa::path(
    post,
    path = "/api/rollback",
    tag = "generations",
    request_body(content = Option<RollbackRequest>, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The alias moves made, in one request", body = PromotionReport),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "No token, or a wrong one", body = ErrorBody),
        (status = 409, description = "A run holds the lease (`run_in_progress`), or nothing to roll back to (`rollback_refused`)", body = ErrorBody),
        (status = 503, description = "A server is unreachable", body = ErrorBody),
    )
)]
pub async fn rollback(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<PromotionReport>, ApiError> {
    let request: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        json_object(&body)?
    };
    match roll_back(&state.settings, request.to.as_deref()).await {
        Ok(report) => Ok(Json(report)),
        Err(e) if lease_holder(&e).is_some() => Err(ApiError::run_in_progress(
            lease_holder(&e).map(str::to_string),
            format!("{e:#}"),
        )),
        Err(e) if is_refusal(&e) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollback_refused",
            format!("{e:#}"),
        )),
        Err(e) => Err(ApiError::unavailable(format!("{e:#}"))),
    }
}

/// Whether the lease is held now, and by which run.
pub async fn rebuild_lease_now(state: &AppState) -> Option<crate::state::lease::LeaseRecord> {
    let leases = lease_collection(&state.mongo, &state.settings.mongodb);
    read_lease(&leases, REBUILD_LEASE).await.ok().flatten()
}
