//! The realistic network of `--latency-ms`: a Toxiproxy proxy in front of
//! each server on loopback (OpenSearch, RabbitMQ, MongoDB), each adding the
//! same latency in both directions, as between services in one cloud
//! region. The proxies listen on fixed loopback ports; the settings handed
//! to the measured processes point at them. Toxiproxy itself is started by
//! `scripts/stack` (its API on 127.0.0.1:8474).

use anyhow::{bail, Context};
use rebuilder::config::{Secret, Settings};
use serde_json::json;
use url::Url;

/// Toxiproxy's API.
pub const TOXIPROXY_API: &str = "http://127.0.0.1:8474";

/// The proxies: name, the port it listens on, and which setting it stands in for.
const PROXIES: [(&str, u16, Server); 3] = [
    ("bench_opensearch", 22920, Server::OpenSearch),
    ("bench_rabbitmq", 22567, Server::RabbitMq),
    ("bench_mongodb", 22701, Server::MongoDb),
];

#[derive(Clone, Copy, Debug)]
enum Server {
    OpenSearch,
    RabbitMq,
    MongoDb,
}

/// The proxies with their latency, removed by [`LatencyNetwork::remove`].
#[derive(Debug)]
pub struct LatencyNetwork {
    http: reqwest::Client,
    pub latency_ms: u64,
    /// The same settings, every server reached through its proxy.
    pub settings: Settings,
}

impl LatencyNetwork {
    /// Creates the proxies (replacing leftovers of an earlier run) with
    /// `latency_ms` added each way, and the settings that use them.
    pub async fn create(settings: &Settings, latency_ms: u64) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let version = http
            .get(format!("{TOXIPROXY_API}/version"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .context(
                "Toxiproxy does not answer on 127.0.0.1:8474 (start it with `scripts/stack start`)",
            )?;
        drop(version);
        let mut proxied = settings.clone();
        for (name, port, server) in PROXIES {
            let upstream = match server {
                Server::OpenSearch => settings.opensearch.url.clone(),
                Server::RabbitMq => settings.rabbitmq.uri.expose().to_string(),
                Server::MongoDb => settings.mongodb.uri.expose().to_string(),
            };
            let (through, target) = through_proxy(&upstream, port, server)?;
            let _ = http
                .delete(format!("{TOXIPROXY_API}/proxies/{name}"))
                .send()
                .await;
            post(
                &http,
                "/proxies",
                json!({"name": name, "listen": format!("127.0.0.1:{port}"),
                       "upstream": target, "enabled": true}),
            )
            .await
            .with_context(|| format!("while creating the proxy {name} to {target}"))?;
            for stream in ["upstream", "downstream"] {
                post(
                    &http,
                    &format!("/proxies/{name}/toxics"),
                    json!({"name": format!("latency_{stream}"), "type": "latency",
                           "stream": stream, "toxicity": 1.0,
                           "attributes": {"latency": latency_ms, "jitter": 0}}),
                )
                .await
                .with_context(|| format!("while adding latency to {name}"))?;
            }
            match server {
                Server::OpenSearch => proxied.opensearch.url = through,
                Server::RabbitMq => proxied.rabbitmq.uri = Secret::new(through),
                Server::MongoDb => proxied.mongodb.uri = Secret::new(through),
            }
        }
        Ok(Self {
            http,
            latency_ms,
            settings: proxied,
        })
    }

    /// The environment that points a child process at the proxies.
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "REBUILDER_OPENSEARCH__URL".into(),
                self.settings.opensearch.url.clone(),
            ),
            (
                "REBUILDER_RABBITMQ__URI".into(),
                self.settings.rabbitmq.uri.expose().to_string(),
            ),
            (
                "REBUILDER_MONGODB__URI".into(),
                self.settings.mongodb.uri.expose().to_string(),
            ),
        ]
    }

    /// Removes the proxies (best effort).
    pub async fn remove(self) {
        for (name, _, _) in PROXIES {
            let _ = self
                .http
                .delete(format!("{TOXIPROXY_API}/proxies/{name}"))
                .send()
                .await;
        }
    }
}

async fn post(http: &reqwest::Client, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let response = http
        .post(format!("{TOXIPROXY_API}{path}"))
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "Toxiproxy answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// `uri` with its host and port replaced by the proxy's, and the
/// `host:port` the proxy forwards to. A MongoDB URI gets
/// `directConnection=true`: a replica-set member would otherwise hand the
/// driver its own address, and the traffic would go around the proxy.
fn through_proxy(uri: &str, port: u16, server: Server) -> anyhow::Result<(String, String)> {
    let mut url = Url::parse(uri).with_context(|| format!("cannot parse {uri:?} as a URL"))?;
    let host = url.host_str().context("the URL has no host")?.to_string();
    let default_port = match server {
        Server::OpenSearch => 9200,
        Server::RabbitMq => 5672,
        Server::MongoDb => 27017,
    };
    let target = format!("{host}:{}", url.port().unwrap_or(default_port));
    if url.host_str().map(|h| h.contains(',')).unwrap_or(false) || uri.contains(',') {
        bail!("{uri:?} names several hosts; a latency proxy stands in front of one");
    }
    url.set_host(Some("127.0.0.1"))?;
    url.set_port(Some(port))
        .map_err(|_| anyhow::anyhow!("cannot set a port on {uri:?}"))?;
    if matches!(server, Server::MongoDb) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("directConnection"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut()
            .clear()
            .extend_pairs(pairs)
            .append_pair("directConnection", "true");
    }
    Ok((url.to_string(), target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_through_the_proxy_keeps_everything_but_host_and_port() {
        let (through, target) = through_proxy(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            22567,
            Server::RabbitMq,
        )
        .unwrap();
        assert_eq!(through, "amqp://guest:guest@127.0.0.1:22567/%2f");
        assert_eq!(target, "127.0.0.1:5672");
        let (through, target) =
            through_proxy("http://localhost:9200", 22920, Server::OpenSearch).unwrap();
        assert_eq!(through, "http://127.0.0.1:22920/");
        assert_eq!(target, "localhost:9200");
    }

    #[test]
    fn a_mongodb_uri_through_the_proxy_connects_directly() {
        let (through, target) = through_proxy(
            "mongodb://127.0.0.1:27017/?retryWrites=false&directConnection=false",
            22701,
            Server::MongoDb,
        )
        .unwrap();
        assert_eq!(
            through,
            "mongodb://127.0.0.1:22701/?retryWrites=false&directConnection=true"
        );
        assert_eq!(target, "127.0.0.1:27017");
    }
}
