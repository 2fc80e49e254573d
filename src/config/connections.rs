//! The connection sections: OpenSearch, RabbitMQ and MongoDB, with their
//! TLS, credential and production options. Certificate verification is on
//! unless a section's `tls_insecure` says otherwise (logged as a warning at
//! every start). Credentials come from the settings file, the environment or
//! a `*_file` (read at start), never from the command line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenSearchSettings {
    /// The one endpoint: a node, or what stands in front of the nodes
    /// (Amazon OpenSearch Service's domain endpoint balances over its data
    /// nodes and leaves out one that is gone, so one URL is right there).
    pub url: String,
    /// Every node of a cluster that has no such endpoint, e.g.
    /// `["http://10.0.1.5:9200", "http://10.0.2.5:9200"]` (or, from the
    /// environment, `REBUILDER_OPENSEARCH__URLS=http://a:9200,http://b:9200`).
    /// When given it replaces `url`: each request goes to one node, and a
    /// node that does not answer, or answers 502/503/504, is left for the
    /// next.
    #[serde(deserialize_with = "list_or_commas")]
    pub urls: Vec<String>,
    /// Basic authentication (with `password` or `password_file`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (its trailing newline is dropped).
    pub password_file: Option<PathBuf>,
    /// AWS SigV4 signing for Amazon OpenSearch Service, with credentials
    /// from the standard AWS provider chain (environment, profile, ECS task
    /// role, web identity, instance metadata).
    pub aws_sigv4: Option<AwsSigV4Settings>,
    /// A PEM file of the certificate authority to trust (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (never in production; warned at every start).
    pub tls_insecure: bool,
    pub request_timeout_secs: u64,
}

impl Default for OpenSearchSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            urls: Vec::new(),
            username: None,
            password: None,
            password_file: None,
            aws_sigv4: None,
            ca_file: None,
            tls_insecure: false,
            request_timeout_secs: 120,
        }
    }
}

impl OpenSearchSettings {
    /// The nodes to send to: `urls` when given, else `url`.
    pub fn node_urls(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }
}

/// A list of strings from a list, or from one comma-separated string (the
/// form an environment variable gives).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Form::deserialize(d)? {
        Form::List(list) => list,
        Form::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// SigV4 request signing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSigV4Settings {
    /// The AWS region of the domain, for example `eu-west-2`.
    pub region: String,
    /// `es` for an OpenSearch Service domain, `aoss` for OpenSearch Serverless.
    pub service: String,
}

impl Default for AwsSigV4Settings {
    fn default() -> Self {
        Self {
            region: String::new(),
            service: "es".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitSettings {
    /// amqp:// or amqps:// URI, including the vhost.
    pub uri: Secret,
    /// A file holding the URI (for credentials kept out of the settings).
    pub uri_file: Option<PathBuf>,
    /// A PEM file of the certificate authority to trust for amqps://.
    pub ca_file: Option<PathBuf>,
    pub exchange: String,
    pub sync_start_queue: String,
    pub sync_start_routing_key: String,
    pub sync_data_queue: String,
    pub sync_data_routing_key: String,
    pub update_queue: String,
    pub update_routing_key: String,
    /// Where unparseable or unusable TCS messages go, with the reason in a header.
    pub dead_letter_queue: String,
    pub prefetch: u16,
    /// A sync that stays silent this long fails the run.
    pub idle_timeout_secs: u64,
    /// A TCS message larger than this is dead-lettered `too_large`, unread
    /// (a trainee record is about a kilobyte).
    pub max_message_bytes: usize,
}

impl Default for RabbitSettings {
    fn default() -> Self {
        Self {
            uri: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            uri_file: None,
            ca_file: None,
            exchange: "reval.exchange".into(),
            sync_start_queue: "reval.queue.connection.syncstart".into(),
            sync_start_routing_key: "reval.connection.syncstart".into(),
            sync_data_queue: "reval.queue.connection.syncdata".into(),
            sync_data_routing_key: "reval.connection.syncdata".into(),
            update_queue: "reval.queue.connection.update".into(),
            update_routing_key: "reval.connection.update".into(),
            dead_letter_queue: "reval.queue.connection.syncdata.dlq".into(),
            prefetch: 2000,
            idle_timeout_secs: 60,
            max_message_bytes: 1024 * 1024,
        }
    }
}

impl RabbitSettings {
    /// The exchange and every queue and routing-key name of the TCS
    /// topology (the prefix the tests and the benchmark give them).
    pub fn names_mut(&mut self) -> [&mut String; 8] {
        [
            &mut self.exchange,
            &mut self.sync_start_queue,
            &mut self.sync_start_routing_key,
            &mut self.sync_data_queue,
            &mut self.sync_data_routing_key,
            &mut self.update_queue,
            &mut self.update_routing_key,
            &mut self.dead_letter_queue,
        ]
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoSettings {
    pub uri: Secret,
    /// A file holding the URI (for credentials kept out of the settings).
    pub uri_file: Option<PathBuf>,
    /// A PEM file of the certificate authority (DocumentDB's
    /// `global-bundle.pem`); setting it turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (never in production; warned at every start).
    pub tls_insecure: bool,
    pub database: String,
    pub doctors_collection: String,
    pub recommendation_collection: String,
    /// Database holding the run state (lease, run history); defaults to `database`.
    pub state_database: Option<String>,
    pub lease_collection: String,
    pub runs_collection: String,
    /// The journal of live changes made while a rebuild runs.
    pub journal_collection: String,
    /// The live applier's state: the journal marker, change-stream resume
    /// tokens, the sequence counter.
    pub live_collection: String,
    pub batch_size: u32,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            uri: Secret::new("mongodb://127.0.0.1:27017/?retryWrites=false"),
            uri_file: None,
            ca_file: None,
            tls_insecure: false,
            database: "revalidation".into(),
            doctors_collection: "doctorsForDB".into(),
            recommendation_collection: "recommendation".into(),
            state_database: None,
            lease_collection: "rebuilderLease".into(),
            runs_collection: "rebuilderRuns".into(),
            journal_collection: "rebuilderJournal".into(),
            live_collection: "rebuilderLive".into(),
            batch_size: 1000,
        }
    }
}

impl MongoSettings {
    pub fn state_database(&self) -> &str {
        self.state_database.as_deref().unwrap_or(&self.database)
    }
}
