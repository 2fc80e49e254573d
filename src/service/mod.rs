//! `rebuilder serve`: the rebuild as a service, for the API gateway, the
//! nightly schedule and the operators. It runs as one or more replicas; the
//! MongoDB lease keeps it to one rebuild at a time across all of them.
//!
//! - [`api`]: the JSON API (trigger, status, runs, generations, rollback);
//! - [`auth`]: the bearer token of the mutating endpoints;
//! - [`health`]: liveness and readiness;
//! - [`metrics`]: `/metrics` in the Prometheus text format;
//! - [`openapi`]: the OpenAPI document generated from the handlers;
//! - [`page`]: the operators' page at `/`, on the same API;
//! - [`runner`]: starting runs in the background;
//! - [`schedule`]: the cron schedule;
//! - the live applier (`crate::live`), unless `live.enabled = false`;
//! - [`error`]: the one JSON error shape.
//!
//! Shutdown (SIGTERM, SIGINT): the listener stops accepting, the schedule
//! stops, a run in progress stops at its next safe point (recorded as
//! `aborted`, aliases untouched, its half-built generations deleted, the
//! lease released), then the process exits.

pub mod api;
pub mod auth;
pub mod error;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod runner;
pub mod schedule;
pub mod supervise;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::rebuild::engine::Engine;
use crate::rebuild::record::RunHistory;
use crate::search::SearchClient;
use crate::sources::mongo_client_lazy;
use auth::Auth;
use error::ApiError;
use runner::Runner;
use schedule::NextStart;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub runner: Runner,
    pub history: RunHistory,
    pub mongo: mongodb::Client,
    pub engine: Engine,
    pub next_start: NextStart,
    pub metrics: PrometheusHandle,
}

/// The token the API requires, or why the service must not start.
fn token_of(settings: &Settings) -> anyhow::Result<Option<crate::config::Secret>> {
    match (&settings.service.token, settings.service.allow_unauthenticated) {
        (Some(token), _) if token.expose().trim().is_empty() => {
            bail!("invalid setting service.token: it is empty")
        }
        (Some(token), _) => Ok(Some(token.clone())),
        (None, true) => {
            warn!("SERVING WITHOUT AUTHENTICATION: service.allow_unauthenticated is true, so anyone who reaches this port can start rebuilds and roll back.");
            Ok(None)
        }
        (None, false) => bail!(
            "invalid setting service.token: serve needs a bearer token (service.token, service.token_file or REBUILDER_SERVICE__TOKEN), or service.allow_unauthenticated = true"
        ),
    }
}

/// Warnings every start repeats, for settings that weaken security.
fn warn_insecure(settings: &Settings) {
    if settings.opensearch.tls_insecure {
        warn!("opensearch.tls_insecure is set: certificates of OpenSearch are NOT verified.");
    }
    if settings.mongodb.tls_insecure {
        warn!("mongodb.tls_insecure is set: certificates of MongoDB are NOT verified.");
    }
}

/// Serves until `shutdown` is cancelled (the binary cancels it on SIGTERM
/// or SIGINT). `on_listening` gets the bound address (port 0 picks one).
pub async fn serve(
    settings: Settings,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let token = token_of(&settings)?;
    warn_insecure(&settings);
    let metrics = metrics::install().context("while installing the metrics recorder")?;
    let settings = Arc::new(settings);
    let mongo = mongo_client_lazy(&settings.mongodb)
        .await
        .context("while setting up the MongoDB client")?;
    let search = SearchClient::connect(&settings.opensearch)
        .await
        .context("while setting up the OpenSearch client")?;
    let engine = Engine::with_client(search, &settings).context("while loading the templates")?;
    let runner = Runner::new(settings.clone(), shutdown.clone());
    let next_start = NextStart::default();
    let state_mongo = mongo.clone();
    let state = AppState {
        history: RunHistory::new(&mongo, &settings.mongodb),
        settings: settings.clone(),
        runner: runner.clone(),
        mongo,
        engine,
        next_start: next_start.clone(),
        metrics,
    };
    let app = router(state, Auth::new(token, settings.service.protect_reads));

    let listener = tokio::net::TcpListener::bind(&settings.service.listen)
        .await
        .with_context(|| format!("while binding {}", settings.service.listen))?;
    let address = listener.local_addr()?;
    info!(address = %address, "Listening.");
    on_listening(address);

    // The indexes the live path relies on: a warning at start, not a failure
    // (the service serves without them, the live updates only slower).
    {
        let mongo = state_mongo.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            match crate::sources::gmc::indexes::missing(&mongo, &settings.mongodb).await {
                Ok(missing) => {
                    for line in
                        crate::sources::gmc::indexes::describe(&missing, &settings.mongodb.database)
                    {
                        warn!("{line}");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "Could not list the MongoDB indexes at start; /readyz and `rebuilder smoke` check them.")
                }
            }
        });
    }
    let scheduler = tokio::spawn(schedule::run(
        settings.schedule.clone(),
        runner.clone(),
        next_start,
        shutdown.clone(),
    ));
    let applier = if settings.live.enabled {
        Some(tokio::spawn(crate::live::run_applier(
            settings.clone(),
            shutdown.clone(),
        )))
    } else {
        info!("The live applier is off in this process (live.enabled = false).");
        None
    };
    let supervisor = tokio::spawn(supervise::supervise(
        supervise::Background { scheduler, applier },
        shutdown.clone(),
    ));
    let stopping = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await
        .context("while serving")?;
    info!("Stopped accepting requests; waiting for a run in progress to stop at a safe point.");
    let died = supervisor
        .await
        .unwrap_or_else(|e| Some(format!("the supervisor of the background tasks died: {e}")));
    let grace = Duration::from_secs(settings.service.shutdown_grace_secs);
    if tokio::time::timeout(grace, runner.wait()).await.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "The run did not stop in time; its lease expires by itself and the next run cleans up."
        );
    }
    info!("Service stopped.");
    match died {
        Some(reason) => bail!("{reason}; the service stopped so that it is started again"),
        None => Ok(()),
    }
}

/// Every route, with authentication where it belongs and a request log.
pub fn router(state: AppState, auth: Auth) -> Router {
    let mutating = Router::new()
        .route("/api/sync", post(api::trigger_post).get(api::trigger_get))
        .route("/api/rollback", post(api::rollback))
        .route_layer(middleware::from_fn_with_state(
            auth.clone(),
            auth::require_token,
        ));
    let reads = Router::new()
        .route("/api/sync/status", get(api::status))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{run_id}", get(api::run))
        .route("/api/generations", get(api::generations))
        .route("/api/generations/compare", get(api::compare))
        .route("/metrics", get(metrics_text))
        .route("/api/openapi.json", get(openapi_json))
        .route_layer(middleware::from_fn_with_state(
            auth,
            auth::require_token_for_reads,
        ));
    Router::new()
        .merge(mutating)
        .merge(reads)
        .route("/", get(page::index))
        .route("/page.js", get(page::script))
        .route("/page.css", get(page::style))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see /api/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see /api/openapi.json",
    )
}

/// One log line per request: method, path, status, latency (never headers,
/// so never the token).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "Request served."
    );
    response
}

/// Metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = error::ErrorBody),
    )
)]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = metrics::render(
        &state.metrics,
        &state.history,
        &state.mongo,
        &state.settings,
        &state.engine,
    )
    .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "health",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object),
        (status = 401, description = "Reads are protected and the token is missing or wrong", body = error::ErrorBody),
    )
)]
pub async fn openapi_json() -> impl IntoResponse {
    Json(openapi::document())
}
