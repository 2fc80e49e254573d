//! The OpenSearch connection: one client built from settings, with a small
//! JSON/NDJSON request helper and the `SearchError` boundary type.

use std::time::Duration;

use opensearch::auth::Credentials;
use opensearch::cert::{Certificate, CertificateValidation};
use opensearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::http::Method;
use opensearch::OpenSearch;
use serde_json::Value;

use tracing::warn;

use crate::config::{redact_uri, OpenSearchSettings};
use crate::retry::Retriable;
use crate::text::clip;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("cannot reach OpenSearch at {url}: {message} (start the local stack with `scripts/stack start`)")]
    Unreachable { url: String, message: String },
    #[error("OpenSearch answered {status} to {method} {path}: {body}")]
    Status {
        method: String,
        path: String,
        status: u16,
        body: String,
    },
    #[error("OpenSearch sent an unreadable answer to {path}: {message}")]
    Decode { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Retriable for SearchError {
    /// The same request may succeed later when the node was unreachable,
    /// overloaded (429) or failing (5xx). Everything else is permanent.
    fn is_retriable(&self) -> bool {
        match self {
            SearchError::Unreachable { .. } => true,
            SearchError::Status { status, .. } => *status == 429 || *status >= 500,
            SearchError::Decode { .. } | SearchError::Invalid(_) => false,
        }
    }
}

impl SearchError {
    pub fn status(&self) -> Option<u16> {
        match self {
            SearchError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A cheap-to-clone handle on one OpenSearch endpoint.
#[derive(Clone)]
pub struct SearchClient {
    inner: OpenSearch,
    url: String,
}

impl SearchClient {
    /// A client from settings without SigV4 (which needs [`connect`](Self::connect)
    /// to load AWS credentials).
    pub fn new(settings: &OpenSearchSettings) -> Result<Self, SearchError> {
        if settings.aws_sigv4.is_some() {
            return Err(SearchError::Invalid(
                "opensearch.aws_sigv4 needs the credentials of the AWS provider chain; use SearchClient::connect".into(),
            ));
        }
        Self::build(settings, None)
    }

    /// A client from settings, with SigV4 signing when `opensearch.aws_sigv4`
    /// is set (credentials from the standard AWS provider chain: the
    /// environment, the profile, the ECS task role, web identity, instance
    /// metadata).
    pub async fn connect(settings: &OpenSearchSettings) -> Result<Self, SearchError> {
        let sigv4 = match &settings.aws_sigv4 {
            None => None,
            Some(aws) => {
                let region = aws_types::region::Region::new(aws.region.clone());
                let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(region.clone())
                    .load()
                    .await;
                let provider = config.credentials_provider().ok_or_else(|| {
                    SearchError::Invalid(
                        "opensearch.aws_sigv4: the AWS provider chain found no credentials provider".into(),
                    )
                })?;
                Some((provider, region, aws.service.clone()))
            }
        };
        Self::build(settings, sigv4)
    }

    fn build(
        settings: &OpenSearchSettings,
        sigv4: Option<(
            aws_credential_types::provider::SharedCredentialsProvider,
            aws_types::region::Region,
            String,
        )>,
    ) -> Result<Self, SearchError> {
        let shown = redact_uri(&settings.url).unwrap_or_else(|| settings.url.clone());
        let url = url::Url::parse(&settings.url)
            .map_err(|e| SearchError::Invalid(format!("opensearch.url {shown:?}: {e}")))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            .disable_proxy();
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        if let Some((provider, region, service)) = sigv4 {
            builder = builder
                .auth(Credentials::AwsSigV4(provider, region))
                .service_name(&service);
        }
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                SearchError::Invalid(format!(
                    "cannot read opensearch.ca_file {}: {e}",
                    ca.display()
                ))
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|e| {
                SearchError::Invalid(format!(
                    "opensearch.ca_file {} is not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            builder = builder.cert_validation(CertificateValidation::Full(certificate));
        }
        if settings.tls_insecure {
            warn!("opensearch.tls_insecure is set: certificates of OpenSearch are NOT verified.");
            builder = builder.cert_validation(CertificateValidation::None);
        }
        let transport = builder.build().map_err(|e| {
            SearchError::Invalid(format!("cannot build the OpenSearch client: {e}"))
        })?;
        Ok(Self {
            inner: OpenSearch::new(transport),
            url: shown,
        })
    }

    /// The node's URL, credentials redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and returns the status and JSON body whatever the
    /// status (callers that care about 404 look at it themselves).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(u16, Value), SearchError> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("a JSON value always serializes"));
        self.request_bytes(method, path, query, bytes, "application/json")
            .await
    }

    /// Like [`request`](Self::request), but fails on any status outside 2xx.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, SearchError> {
        let (status, value) = self.request(method, path, query, body).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(SearchError::Status {
                method: method_name(method),
                path: path.to_string(),
                status,
                body: clip(&value.to_string(), 2000).into_owned(),
            })
        }
    }

    /// Sends raw bytes (NDJSON for `_bulk`), returning status and JSON body.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<(u16, Value), SearchError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let query = if query.is_empty() { None } else { Some(query) };
        let response = self
            .inner
            .send(method, path, headers, query, body, None)
            .await
            .map_err(|e| SearchError::Unreachable {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        let status = response.status_code().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| SearchError::Unreachable {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        match serde_json::from_str(&text) {
            Ok(value) => Ok((status, value)),
            // 429s and proxies can answer with plain text; keep it readable.
            Err(_) if !(200..300).contains(&status) => Ok((status, Value::String(text))),
            Err(e) => Err(SearchError::Decode {
                path: path.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// The node's version number, proving the node answers.
    pub async fn version(&self) -> Result<String, SearchError> {
        let info = self.json(Method::Get, "/", &[], None).await?;
        Ok(info["version"]["number"]
            .as_str()
            .unwrap_or("unknown")
            .to_string())
    }
}

fn method_name(method: Method) -> String {
    format!("{method:?}").to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> SearchError {
        SearchError::Status {
            method: "POST".into(),
            path: "/_bulk".into(),
            status: code,
            body: String::new(),
        }
    }

    #[test]
    fn overload_and_server_errors_are_retriable_and_client_errors_are_not() {
        assert!(status(429).is_retriable());
        assert!(status(503).is_retriable());
        assert!(!status(400).is_retriable());
        assert!(!status(404).is_retriable());
    }
}
