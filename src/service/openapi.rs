//! The OpenAPI 3 document of the API, generated from the handlers and the
//! types they answer with (`GET /api/openapi.json`), so that clients and
//! fuzzers read the same contract the code keeps.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, health};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rebuilder",
        description = "Zero-downtime blue/green rebuilder for the revalidation search indices: trigger a rebuild, follow it, list runs and generations, roll back.",
    ),
    paths(
        api::trigger_post,
        api::trigger_get,
        api::status,
        api::runs,
        api::run,
        api::generations,
        api::compare,
        api::rollback,
        health::healthz,
        health::readyz,
        super::metrics_text,
        super::openapi_json,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "runs", description = "Start and follow rebuilds"),
        (name = "generations", description = "Index generations and their aliases"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the mutating endpoints name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_endpoint_and_the_bearer_scheme() {
        let doc = serde_json::to_value(document()).unwrap();
        for path in [
            "/api/sync",
            "/api/sync/status",
            "/api/runs",
            "/api/runs/{run_id}",
            "/api/generations",
            "/api/generations/compare",
            "/api/rollback",
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is documented");
        }
        assert!(doc["paths"]["/api/sync"]["post"].is_object());
        assert!(doc["paths"]["/api/sync"]["get"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["RunRecord"].is_object());
    }
}
