//! Settings: defaults, an optional TOML file, then `REBUILDER_*` environment
//! variables; validated once, with secrets that never print.

use std::fmt;
use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A secret string (password, connection string with credentials) that never
/// appears in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// The secret as it may be printed: a URI keeps its scheme, user, hosts
    /// and path with the password replaced by `***`; anything else is `***`.
    pub fn redacted(&self) -> Secret {
        match redact_uri(&self.0) {
            Some(uri) => Secret(uri),
            None if self.0.is_empty() => Secret(String::new()),
            None => Secret("***".into()),
        }
    }
}

/// `scheme://user:***@hosts/path?query` for a URI with credentials, the URI
/// itself without them; `None` when `text` is not a URI.
pub fn redact_uri(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, hosts)) = authority.rsplit_once('@') else {
        return Some(text.to_string());
    };
    let user = userinfo.split(':').next().unwrap_or("");
    let redacted_userinfo = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        // A user alone (a token as the user name) is a secret too.
        "***".to_string()
    };
    Some(format!("{scheme}://{redacted_userinfo}@{hosts}{tail}"))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything the program can be told. Every index, alias, exchange, queue,
/// database and collection name is here, so that tests can isolate themselves.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub opensearch: OpenSearchSettings,
    pub rabbitmq: RabbitSettings,
    pub mongodb: MongoSettings,
    pub names: IndexNames,
    pub bulk: BulkSettings,
    pub gates: GateSettings,
    pub retention: RetentionSettings,
    pub retry: RetrySettings,
    pub run: RunSettings,
    /// A folder holding `masterdoctorindex.json` and
    /// `recommendationindex.json` to use instead of the templates built
    /// into the binary (the files of `index-templates/` at build time).
    pub templates_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenSearchSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub request_timeout_secs: u64,
}

impl Default for OpenSearchSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:9200".into(),
            username: None,
            password: None,
            request_timeout_secs: 120,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitSettings {
    /// amqp:// or amqps:// URI, including the vhost.
    pub uri: Secret,
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
}

impl Default for RabbitSettings {
    fn default() -> Self {
        Self {
            uri: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
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
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MongoSettings {
    pub uri: Secret,
    pub database: String,
    pub doctors_collection: String,
    pub recommendation_collection: String,
    /// Database holding the run state (lease, run history); defaults to `database`.
    pub state_database: Option<String>,
    pub lease_collection: String,
    pub runs_collection: String,
    pub batch_size: u32,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            uri: Secret::new("mongodb://127.0.0.1:27017/?retryWrites=false"),
            database: "revalidation".into(),
            doctors_collection: "doctorsForDB".into(),
            recommendation_collection: "recommendation".into(),
            state_database: None,
            lease_collection: "rebuilderLease".into(),
            runs_collection: "rebuilderRuns".into(),
            batch_size: 1000,
        }
    }
}

impl MongoSettings {
    pub fn state_database(&self) -> &str {
        self.state_database.as_deref().unwrap_or(&self.database)
    }
}

/// Index families and aliases. `prefix` is put before every index and alias
/// name, so a test can own `t42_masterdoctorindex-*` and `t42_current_connections`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexNames {
    pub prefix: String,
    pub master_family: String,
    pub recommendation_family: String,
}

impl Default for IndexNames {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            master_family: "masterdoctorindex".into(),
            recommendation_family: "recommendationindex".into(),
        }
    }
}

impl IndexNames {
    /// The real name of a logical index or alias name from a template.
    pub fn qualify(&self, logical: &str) -> String {
        format!("{}{}", self.prefix, logical)
    }
    pub fn master_family(&self) -> String {
        self.qualify(&self.master_family)
    }
    pub fn recommendation_family(&self) -> String {
        self.qualify(&self.recommendation_family)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkSettings {
    pub max_batch_docs: usize,
    pub max_batch_bytes: usize,
    /// Bulk requests in flight at once (the upper bound; 429s lower it).
    pub concurrency: usize,
}

impl Default for BulkSettings {
    /// Chosen by measurement (`examples/bulk_throughput.rs`, 200k documents
    /// of ~540 bytes on the local node): batches of 5000 documents (~2.8 MB)
    /// with 4 in flight were the fastest and steadiest; smaller batches
    /// lose to per-request overhead, more in flight gains nothing.
    fn default() -> Self {
        Self {
            max_batch_docs: 5000,
            max_batch_bytes: 5 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

/// How every call to a server that may fail for a while (a 429, a 5xx, a
/// dropped connection) is retried: bulk items, the one-shot calls of a run,
/// the consumers. Exponential backoff with jitter, capped.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    pub max_retries: usize,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetrySettings {
    /// Twelve retries from 100 ms doubling to a 10 s cap ride out about a
    /// minute of trouble: a node restart, a broker failover.
    fn default() -> Self {
        Self {
            max_retries: 12,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateSettings {
    /// The new generation must hold at least this share of the previous one.
    pub min_share_of_previous: f64,
    /// Permanent item failures tolerated before the gate fails.
    pub max_failed_items: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            min_share_of_previous: 0.9,
            max_failed_items: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Generations kept per family besides the live one.
    pub keep_previous: usize,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self { keep_previous: 2 }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// How long a lease lives without renewal; a crashed holder's lease expires after it.
    pub lease_ttl_secs: u64,
    /// GMC numbers fetched per `$in` query while merging.
    pub merge_batch: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 30,
            merge_batch: 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Settings {
    /// These settings with every secret redacted, for printing.
    pub fn redacted(&self) -> Settings {
        let mut out = self.clone();
        out.rabbitmq.uri = out.rabbitmq.uri.redacted();
        out.mongodb.uri = out.mongodb.uri.redacted();
        out.opensearch.password = out.opensearch.password.as_ref().map(Secret::redacted);
        if let Some(url) = redact_uri(&out.opensearch.url) {
            out.opensearch.url = url;
        }
        out
    }

    /// Defaults, then the TOML file (if given), then `REBUILDER_SECTION__KEY`
    /// environment variables (for example `REBUILDER_OPENSEARCH__URL`).
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("REBUILDER_").split("__"))
            .extract()
            .map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that need no network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if url::Url::parse(&self.opensearch.url).is_err() {
            return invalid("opensearch.url", "not a URL");
        }
        if !self.rabbitmq.uri.expose().starts_with("amqp") {
            return invalid("rabbitmq.uri", "must start with amqp:// or amqps://");
        }
        if !self.mongodb.uri.expose().starts_with("mongodb") {
            return invalid(
                "mongodb.uri",
                "must start with mongodb:// or mongodb+srv://",
            );
        }
        if self.bulk.max_batch_docs == 0 || self.bulk.max_batch_bytes < 1024 {
            return invalid(
                "bulk",
                "max_batch_docs must be > 0 and max_batch_bytes >= 1024",
            );
        }
        if self.bulk.concurrency == 0 {
            return invalid("bulk.concurrency", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.gates.min_share_of_previous) {
            return invalid("gates.min_share_of_previous", "must be between 0 and 1");
        }
        if self.names.prefix.chars().any(|c| c.is_ascii_uppercase()) {
            return invalid("names.prefix", "index names must be lowercase");
        }
        if self.run.merge_batch == 0 || self.rabbitmq.prefetch == 0 {
            return invalid("run.merge_batch / rabbitmq.prefetch", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_use_the_design_names() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.rabbitmq.exchange, "reval.exchange");
        assert_eq!(s.names.master_family(), "masterdoctorindex");
        assert_eq!(s.mongodb.doctors_collection, "doctorsForDB");
    }

    #[test]
    fn validate_rejects_a_zero_concurrency() {
        let mut s = Settings::default();
        s.bulk.concurrency = 0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn validate_rejects_an_uppercase_prefix() {
        let mut s = Settings::default();
        s.names.prefix = "Test_".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn redacted_settings_keep_hosts_and_users_but_no_password() {
        let mut s = Settings::default();
        s.rabbitmq.uri =
            Secret::new("amqps://tcs:s3cret-amqp@b-1.mq.eu-west-2.amazonaws.com:5671/reval");
        s.mongodb.uri = Secret::new(
            "mongodb://reval:s3cret-mongo@docdb-1:27017,docdb-2:27017/?tls=true&retryWrites=false",
        );
        s.opensearch.url = "https://admin:s3cret-url@search.example.org".into();
        s.opensearch.password = Some(Secret::new("s3cret-password"));
        let printed = toml::to_string(&s.redacted()).unwrap();
        for secret in [
            "s3cret-amqp",
            "s3cret-mongo",
            "s3cret-url",
            "s3cret-password",
        ] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(printed.contains("amqps://tcs:***@b-1.mq.eu-west-2.amazonaws.com:5671/reval"));
        assert!(printed.contains("mongodb://reval:***@docdb-1:27017,docdb-2:27017/?tls=true"));
        assert!(printed.contains("https://admin:***@search.example.org"));
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017/").as_deref(),
            Some("mongodb://127.0.0.1:27017/")
        );
        assert_eq!(
            redact_uri("https://token@host/x").as_deref(),
            Some("https://***@host/x")
        );
        assert_eq!(redact_uri("not a uri"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::default();
        let printed = format!("{s:?}");
        assert!(!printed.contains("guest:guest"));
    }

    #[test]
    fn prefix_qualifies_every_name() {
        let mut s = Settings::default();
        s.names.prefix = "t1_".into();
        assert_eq!(
            s.names.qualify("current_connections"),
            "t1_current_connections"
        );
        assert_eq!(s.names.recommendation_family(), "t1_recommendationindex");
    }
}
