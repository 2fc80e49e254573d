//! Liveness and readiness. `/healthz` answers while the process serves;
//! `/readyz` asks OpenSearch, RabbitMQ and MongoDB at once (each bounded by
//! `service.ready_timeout_ms`), and looks whether a change stream lost its
//! history, and answers 503 naming each one that is not ready, 200 when
//! all are. A MongoDB index the live path relies on that is missing is a
//! warning in either answer, never a reason to be unready.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::sources::{ping_mongo, rabbit_connection};
use crate::state::streams::StreamPositions;

/// The process is alive.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Liveness: the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// One server's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    pub ok: bool,
    /// Why it is not ready (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of every server the service needs, and the live updates.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    pub opensearch: Check,
    pub rabbitmq: Check,
    pub mongodb: Check,
    /// Not ok while a change stream's history is lost (its resume token was
    /// too old): changes were missed, and a rebuild is the way out.
    pub live_updates: Check,
}

/// Ready: 200 with every check; 503 with the error naming the servers that
/// did not answer, and the checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    pub checks: Readiness,
    /// What works but should be mended (a MongoDB index the live path
    /// relies on is missing, with the command that creates it; live
    /// updates behind by more than `live.max_lag_secs`, or near the change
    /// streams' retention). Never a reason to be unready.
    pub warnings: Vec<String>,
}

/// Not ready: the error body and the checks.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    #[serde(flatten)]
    pub error: ErrorBody,
    pub checks: Readiness,
    /// As in [`Ready`].
    pub warnings: Vec<String>,
}

/// Readiness: OpenSearch, RabbitMQ and MongoDB all answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Every server answers", body = Ready),
        (status = 503, description = "Some do not; the message names them", body = NotReady),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_millis(state.settings.service.ready_timeout_ms.max(100));
    let bounded = |name: &'static str| {
        move |result: Result<Result<(), String>, tokio::time::error::Elapsed>| match result {
            Ok(Ok(())) => Check {
                ok: true,
                error: None,
            },
            Ok(Err(e)) => Check {
                ok: false,
                error: Some(e),
            },
            Err(_) => Check {
                ok: false,
                error: Some(format!(
                    "{name} did not answer within {} ms",
                    timeout.as_millis()
                )),
            },
        }
    };
    let opensearch = tokio::time::timeout(timeout, async {
        state
            .engine
            .client()
            .version()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let rabbitmq = tokio::time::timeout(timeout, async {
        let connection = rabbit_connection(&state.settings.rabbitmq)
            .await
            .map_err(|e| e.to_string())?;
        let _ = connection.close(200, "ready check".into()).await;
        Ok(())
    });
    let mongodb = tokio::time::timeout(timeout, async {
        ping_mongo(&state.mongo).await.map_err(|e| e.to_string())
    });
    let positions = StreamPositions::new(&state.mongo, &state.settings.mongodb);
    let live = tokio::time::timeout(timeout, async {
        match positions.lost().await {
            Ok(None) => Ok(()),
            Ok(Some(lost)) => Err(format!(
                "the change stream of {} lost its history on {} ({}): changes were missed; run a rebuild",
                lost.collection, lost.since, lost.reason
            )),
            // MongoDB itself is judged by its own check.
            Err(_) => Ok(()),
        }
    });
    let indexes = tokio::time::timeout(timeout, async {
        crate::sources::gmc::indexes::missing(&state.mongo, &state.settings.mongodb).await
    });
    let backlog = tokio::time::timeout(
        timeout,
        crate::live::backlog::read(&state.mongo, &state.settings),
    );
    let (o, r, m, l, i, b) = tokio::join!(opensearch, rabbitmq, mongodb, live, indexes, backlog);
    // MongoDB itself is judged by its own check; an index list or a backlog
    // report that does not come is no warning.
    let mut warnings = match i {
        Ok(Ok(missing)) => {
            crate::sources::gmc::indexes::describe(&missing, &state.settings.mongodb.database)
        }
        _ => Vec::new(),
    };
    // Live updates behind are said, never unready: readiness routes API
    // traffic, which a lagging applier does not impair, and a nightly flood
    // would otherwise take every replica out of the load balancer at once.
    if let Ok(Ok(Some(report))) = b {
        warnings.extend(report.warnings(&state.settings));
    }
    let checks = Readiness {
        opensearch: bounded("OpenSearch")(o),
        rabbitmq: bounded("RabbitMQ")(r),
        mongodb: bounded("MongoDB")(m),
        live_updates: bounded("the live updates")(l),
    };
    let down: Vec<&str> = [
        ("OpenSearch", &checks.opensearch),
        ("RabbitMQ", &checks.rabbitmq),
        ("MongoDB", &checks.mongodb),
        (
            "live updates (change-stream history lost; run a rebuild)",
            &checks.live_updates,
        ),
    ]
    .into_iter()
    .filter(|(_, c)| !c.ok)
    .map(|(name, _)| name)
    .collect();
    if down.is_empty() {
        return (
            StatusCode::OK,
            Json(Ready {
                status: "ready".into(),
                checks,
                warnings,
            }),
        )
            .into_response();
    }
    let error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!("unreachable: {}", down.join(", ")),
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(NotReady {
            error: error.body(),
            checks,
            warnings,
        }),
    )
        .into_response()
}
