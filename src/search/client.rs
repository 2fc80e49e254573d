//! The OpenSearch connection: one client built from settings, with a small
//! JSON/NDJSON request helper and the `SearchError` boundary type.
//!
//! The client knows every node it is given (`opensearch.urls`) and sends
//! each request to one of them: the node that answered last. A node that
//! does not answer (connection refused or reset, a timeout) or answers that
//! it cannot serve (502, 503, 504) is left for the next one, and the same
//! request goes there, each node tried at most once per request; the
//! caller's retry policy does the rest. Behind one endpoint that does this
//! itself (Amazon OpenSearch Service's), give that one URL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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

/// A cheap-to-clone handle on the OpenSearch nodes of the settings.
#[derive(Clone)]
pub struct SearchClient {
    nodes: Arc<[Node]>,
    /// The index of the node requests go to first (the last that answered).
    current: Arc<AtomicUsize>,
}

/// What SigV4 signing needs: credentials, the region, the service name.
type SigV4 = (
    aws_credential_types::provider::SharedCredentialsProvider,
    aws_types::region::Region,
    String,
);

/// One node: its own connection and its URL, credentials redacted.
struct Node {
    inner: OpenSearch,
    url: String,
}

/// Whether an answer of `status` says that this node cannot serve the
/// request now and another node may: a proxy's or load balancer's 502/504,
/// a node's 503 (no cluster manager, shards unavailable, shutting down).
fn node_cannot_serve(status: u16) -> bool {
    matches!(status, 502..=504)
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

    fn build(settings: &OpenSearchSettings, sigv4: Option<SigV4>) -> Result<Self, SearchError> {
        let nodes = settings
            .node_urls()
            .into_iter()
            .map(|url| Self::node(settings, url, sigv4.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(SearchError::Invalid(
                "opensearch.urls is empty: give at least one node".into(),
            ));
        }
        Ok(Self {
            nodes: nodes.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The connection to one node.
    fn node(
        settings: &OpenSearchSettings,
        url: &str,
        sigv4: Option<SigV4>,
    ) -> Result<Node, SearchError> {
        let shown = redact_uri(url).unwrap_or_else(|| url.to_string());
        let parsed = url::Url::parse(url)
            .map_err(|e| SearchError::Invalid(format!("opensearch.url {shown:?}: {e}")))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(parsed))
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
            warn!(node = %shown, "opensearch.tls_insecure is set: certificates of OpenSearch are NOT verified.");
            builder = builder.cert_validation(CertificateValidation::None);
        }
        let transport = builder.build().map_err(|e| {
            SearchError::Invalid(format!("cannot build the OpenSearch client: {e}"))
        })?;
        Ok(Node {
            inner: OpenSearch::new(transport),
            url: shown,
        })
    }

    /// The URL of the node requests go to first, credentials redacted.
    pub fn url(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].url
    }

    /// Every node's URL, credentials redacted, in the order of the settings.
    pub fn urls(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.url.as_str()).collect()
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
    /// A node that does not answer, or answers 502/503/504, is left for the
    /// next (see the module's notes); the last node's answer is returned.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<(u16, Value), SearchError> {
        // As `Bytes`, the body goes to the HTTP client as it is: given a
        // slice, the client copies it into a buffer of its own for the
        // request (a second copy of every bulk body in flight: 8 × ~3 MB
        // when two writers load side by side), and once per node tried.
        let body = body.map(Bytes::from);
        let count = self.nodes.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        for attempt in 0..count {
            let at = (first + attempt) % count;
            let node = &self.nodes[at];
            let answer = node
                .send(method, path, query, body.clone(), content_type)
                .await;
            let last = attempt + 1 == count;
            let problem = match &answer {
                Err(e @ SearchError::Unreachable { .. }) => e.to_string(),
                Ok((status, _)) if node_cannot_serve(*status) => format!("answered {status}"),
                _ => {
                    self.current.store(at, Ordering::Relaxed);
                    return answer;
                }
            };
            if last {
                return answer;
            }
            let next = &self.nodes[(at + 1) % count].url;
            warn!(node = %node.url, next = %next, path, problem = %clip(&problem, 300), "OpenSearch node cannot serve; trying the next node.");
            self.current.store((at + 1) % count, Ordering::Relaxed);
        }
        unreachable!("the loop returns on its last node")
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

impl Node {
    /// One request to this node, its status and JSON body whatever the status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
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

    /// A stand-in for a node that answers every request with `status` and
    /// `body` (the failover is the client's; what a node answers is not
    /// under test here). Returns its URL and how many requests it took.
    async fn canned_node(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // The request: headers, then Content-Length bytes of body.
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        (url, served)
    }

    /// A URL where nothing listens (connection refused).
    fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn client_of(urls: &[&str]) -> SearchClient {
        let settings = OpenSearchSettings {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            request_timeout_secs: 5,
            ..OpenSearchSettings::default()
        };
        SearchClient::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn a_request_moves_past_a_refusing_node_and_a_503_to_the_node_that_answers() {
        let down = refused_url();
        let (busy, busy_served) =
            canned_node(503, r#"{"error":{"type":"cluster_block_exception"}}"#).await;
        let (up, up_served) = canned_node(200, r#"{"version":{"number":"2.19.6"}}"#).await;
        let client = client_of(&[&down, &busy, &up]);
        assert_eq!(client.version().await.unwrap(), "2.19.6");
        assert_eq!(busy_served.load(Ordering::SeqCst), 1);
        assert_eq!(
            client.url(),
            up,
            "the node that answered is the one used next"
        );
        // The next request goes straight to the node that answered.
        client.version().await.unwrap();
        assert_eq!(busy_served.load(Ordering::SeqCst), 1);
        assert_eq!(up_served.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_that_is_not_a_node_failure_is_returned_from_the_first_node() {
        let (missing, _) =
            canned_node(404, r#"{"error":{"type":"index_not_found_exception"}}"#).await;
        let (other, other_served) = canned_node(200, "{}").await;
        let client = client_of(&[&missing, &other]);
        let (status, _) = client
            .request(Method::Get, "/nothing", &[], None)
            .await
            .unwrap();
        assert_eq!(status, 404);
        assert_eq!(other_served.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn when_every_node_fails_the_last_failure_is_returned() {
        let (a, _) = canned_node(503, "{}").await;
        let b = refused_url();
        let client = client_of(&[&a, &b]);
        let e = client.version().await.unwrap_err();
        assert!(e.is_retriable(), "{e}");
        assert!(matches!(e, SearchError::Unreachable { .. }), "{e}");
    }

    #[test]
    fn overload_and_server_errors_are_retriable_and_client_errors_are_not() {
        assert!(status(429).is_retriable());
        assert!(status(503).is_retriable());
        assert!(!status(400).is_retriable());
        assert!(!status(404).is_retriable());
    }
}
