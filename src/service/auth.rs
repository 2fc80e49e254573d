//! Bearer-token authentication of the API. The mutating endpoints (the
//! trigger, rollback) always need `Authorization: Bearer <token>`; the
//! read-only ones only with `service.protect_reads`. The token is compared
//! in constant time and never logged or echoed back.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::Secret;

/// Who may call what.
#[derive(Clone, Debug)]
pub struct Auth {
    /// `None`: no token configured (`allow_unauthenticated`), everything open.
    token: Option<Secret>,
    protect_reads: bool,
}

impl Auth {
    pub fn new(token: Option<Secret>, protect_reads: bool) -> Self {
        Self {
            token,
            protect_reads,
        }
    }

    /// Whether a request with these headers may call an endpoint.
    pub fn check(&self, headers: &HeaderMap, mutating: bool) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if !mutating && !self.protect_reads {
            return Ok(());
        }
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "this endpoint needs an Authorization: Bearer <token> header",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        if given.as_bytes().ct_eq(token.expose().as_bytes()).into() {
            Ok(())
        } else {
            Err(ApiError::unauthorized("the bearer token is not valid"))
        }
    }
}

/// Middleware of the mutating routes.
pub async fn require_token(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    auth.check(request.headers(), true)?;
    Ok(next.run(request).await)
}

/// Middleware of the read-only routes.
pub async fn require_token_for_reads(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    auth.check(request.headers(), false)?;
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn mutating_calls_need_the_exact_token_and_reads_only_when_protected() {
        let auth = Auth::new(Some(Secret::new("s3cret")), false);
        assert!(auth.check(&headers(Some("Bearer s3cret")), true).is_ok());
        for wrong in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let e = auth.check(&headers(wrong), true).unwrap_err();
            assert_eq!(e.code, "unauthorized");
            assert!(!e.message.contains("s3cret"), "the token is never echoed");
        }
        assert!(auth.check(&headers(None), false).is_ok(), "reads are open");
        let strict = Auth::new(Some(Secret::new("s3cret")), true);
        assert!(strict.check(&headers(None), false).is_err());
        assert!(strict.check(&headers(Some("Bearer s3cret")), false).is_ok());
        let open = Auth::new(None, true);
        assert!(open.check(&headers(None), true).is_ok());
    }
}
