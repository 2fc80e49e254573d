//! Test harness: every test gets its own index and alias prefix, its own
//! exchange and queue names, and its own MongoDB database, so tests run in
//! parallel against the one local stack. A server that cannot be reached
//! fails the test with the command that starts it.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use opensearch::http::Method;
use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use serde_json::Value;

pub const START_HINT: &str = "start the local servers with `scripts/stack start` (see README)";

/// The local broker's management API (`scripts/stack start`; guest/guest).
pub const RABBIT_MANAGEMENT: &str = "http://127.0.0.1:15672";

/// URL of the second OpenSearch node, whose tiny write queue answers 429.
pub fn throttled_opensearch_url() -> String {
    std::env::var("REBUILDER_TEST_THROTTLED_URL").unwrap_or_else(|_| "http://127.0.0.1:9201".into())
}

pub struct TestEnv {
    pub settings: Settings,
    /// Unique lowercase token of this test, also the index/alias prefix stem.
    pub id: String,
}

impl TestEnv {
    /// Settings isolated for one test. `name` becomes part of every name.
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let clean: String = name
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect();
        let id = format!(
            "t{}{}{}_{clean}",
            std::process::id() % 100_000,
            n,
            rand_suffix()
        );
        let mut settings = Settings::load(None).expect("default settings load");
        if let Ok(url) = std::env::var("REBUILDER_TEST_OPENSEARCH_URL") {
            settings.opensearch.url = url;
        }
        settings.names.prefix = format!("{id}_");
        settings.mongodb.database = format!("rbt_{id}");
        for name in settings.amqp_names_mut() {
            *name = format!("{id}.{name}");
        }
        settings.rabbitmq.idle_timeout_secs = 10;
        settings.gmc.idle_timeout_secs = 20;
        settings.connection.idle_timeout_secs = 20;
        settings.validate().expect("test settings are valid");
        Self { settings, id }
    }

    /// An OpenSearch client that has answered, or a failure that says how to start it.
    pub async fn search(&self) -> SearchClient {
        let client = SearchClient::new(&self.settings.opensearch).expect("client builds");
        if let Err(e) = client.version().await {
            panic!(
                "OpenSearch is not reachable at {}: {e}; {START_HINT}",
                self.settings.opensearch.url
            );
        }
        client
    }

    pub async fn mongo(&self) -> mongodb::Client {
        match rebuilder::sources::mongo_client(&self.settings.mongodb).await {
            Ok(c) => c,
            Err(e) => panic!("the MongoDB-compatible server is not reachable: {e}; {START_HINT}"),
        }
    }

    pub async fn rabbit(&self) -> lapin::Connection {
        match rebuilder::sources::rabbit_connection(&self.settings.rabbitmq).await {
            Ok(c) => c,
            Err(e) => panic!("RabbitMQ is not reachable: {e}; {START_HINT}"),
        }
    }

    /// Qualified name of a logical index or alias.
    pub fn name(&self, logical: &str) -> String {
        self.settings.names.qualify(logical)
    }

    /// Removes this test's indices, database, queues and exchange.
    pub async fn cleanup(&self) {
        let prefix = &self.settings.names.prefix;
        if let Ok(client) = SearchClient::new(&self.settings.opensearch) {
            let _ = client
                .request(
                    Method::Delete,
                    &format!("/{prefix}*"),
                    &[("expand_wildcards", "all")],
                    None,
                )
                .await;
        }
        if let Ok(mongo) = rebuilder::sources::mongo_client(&self.settings.mongodb).await {
            let _ = mongo.database(&self.settings.mongodb.database).drop().await;
        }
        if let Ok(conn) = rebuilder::sources::rabbit_connection(&self.settings.rabbitmq).await {
            if let Ok(ch) = conn.create_channel().await {
                let r = &self.settings.rabbitmq;
                for q in [
                    &r.sync_start_queue,
                    &r.sync_data_queue,
                    &r.update_queue,
                    &r.dead_letter_queue,
                    &self.settings.gmc.sync_start_queue,
                    &self.settings.gmc.sync_data_queue,
                    &self.settings.connection.log_sync_start_queue,
                    &self.settings.connection.log_sync_data_queue,
                    &self.settings.connection.hidden_sync_start_queue,
                    &self.settings.connection.hidden_sync_data_queue,
                ] {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
                let _ = ch
                    .exchange_delete(r.exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = conn.close(200, "test done".into()).await;
        }
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..3)
        .map(|_| (b'a' + rng.random_range(0..26)) as char)
        .collect()
}

/// Count of documents an index or alias returns now (it does not refresh:
/// the caller refreshes first when it must see its latest writes).
pub async fn count(client: &SearchClient, target: &str) -> u64 {
    let v = client
        .json(Method::Get, &format!("/{target}/_count"), &[], None)
        .await
        .unwrap_or_else(|e| panic!("count of {target} failed: {e}"));
    v["count"].as_u64().expect("count is a number")
}

/// The concrete indices an alias points to, sorted.
pub async fn alias_targets(client: &SearchClient, alias: &str) -> Vec<String> {
    let (status, v) = client
        .request(Method::Get, &format!("/_alias/{alias}"), &[], None)
        .await
        .expect("alias lookup");
    if status == 404 {
        return Vec::new();
    }
    let mut names: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The hits of one `_search` over `target` (test-sized data: the test
/// fails if there could be more than 10,000).
pub async fn search_hits(client: &SearchClient, target: &str, body: Value) -> Vec<Value> {
    let v = get_or_post(
        client,
        Method::Post,
        &format!("/{target}/_search"),
        Some(&body),
    )
    .await;
    let hits = v["hits"]["hits"].as_array().expect("hits").clone();
    assert!(
        hits.len() < 10000,
        "test data must stay under 10,000 documents"
    );
    hits
}

/// The JSON answer to a GET, or a failure naming the path.
pub async fn get_json(client: &SearchClient, path: &str) -> Value {
    get_or_post(client, Method::Get, path, None).await
}

async fn get_or_post(
    client: &SearchClient,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Value {
    client
        .json(method, path, &[], body)
        .await
        .unwrap_or_else(|e| panic!("{path} failed: {e}"))
}

/// Every document id an index or alias returns, sorted.
pub async fn ids(client: &SearchClient, target: &str, query: Value) -> Vec<String> {
    let body =
        serde_json::json!({"size": 10000, "_source": false, "query": query, "sort": ["_doc"]});
    let mut out: Vec<String> = search_hits(client, target, body)
        .await
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}
