//! The one error type of the HTTP API: every error is a JSON body
//! `{"error": {"code": "<stable_snake_case>", "message": "..."}}` with a
//! fitting status. Codes are stable; messages are for people.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: a status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The run holding the lease, for `run_in_progress`.
    pub run_id: Option<String>,
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// A stable snake_case code: `unauthorized`, `run_in_progress`,
    /// `run_not_found`, `rollback_refused`, `bad_request`, `not_ready`,
    /// `not_found`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// For `run_in_progress`: the run that holds the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            run_id: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn run_in_progress(run_id: Option<String>, message: impl Into<String>) -> Self {
        Self {
            run_id,
            ..Self::new(StatusCode::CONFLICT, "run_in_progress", message)
        }
    }

    /// A server the service needs did not answer.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A failure of the service itself; the cause chain is logged, and the
    /// message says what failed without internals.
    pub fn internal(error: &anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "Request failed.");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{error:#}"),
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                run_id: self.run_id.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rebuilder\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_has_a_stable_code_and_a_message() {
        let e = ApiError::run_in_progress(Some("r1".into()), "a run is in progress");
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "run_in_progress", "message": "a run is in progress", "runId": "r1"}})
        );
        assert_eq!(e.status, StatusCode::CONFLICT);
        let plain = serde_json::to_value(ApiError::unauthorized("no token").body()).unwrap();
        assert!(plain["error"].get("runId").is_none());
    }
}
