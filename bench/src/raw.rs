//! The benchmark's own OpenSearch transport. The ceiling loader, the old
//! per-document path and the probe send pre-built bodies straight through
//! the `opensearch` crate, with none of the product client's decoding, so
//! that they measure the node and not rebuilder; the product client keeps
//! no back door for them.

use std::time::Duration;

use anyhow::Context;
use opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use opensearch::OpenSearch;
use rebuilder::search::SearchClient;

/// A transport to the same node as `client` (the benchmark runs on loopback,
/// without credentials).
pub fn raw_client(client: &SearchClient) -> anyhow::Result<OpenSearch> {
    let url = url::Url::parse(client.url())
        .with_context(|| format!("OpenSearch URL {:?}", client.url()))?;
    let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(Duration::from_secs(120))
        .disable_proxy()
        .build()
        .context("while building the benchmark's OpenSearch transport")?;
    Ok(OpenSearch::new(transport))
}
