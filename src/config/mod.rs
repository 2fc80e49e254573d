//! Settings: defaults, an optional TOML file, then `REBUILDER_*` environment
//! variables; secrets read from files where the settings say so; validated
//! once, naming the key that is wrong; secrets that never print.

mod connection;
mod connections;
mod gmc;
mod rebuild;
mod secret;
mod service;

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use connection::{ConnectionSettings, ConnectionSourceKind};
pub use connections::{AwsSigV4Settings, MongoSettings, OpenSearchSettings, RabbitSettings};
pub use gmc::{GmcSettings, GmcSourceKind};
pub use rebuild::{
    BulkSettings, GateSettings, IndexNames, IndexShape, RecommendationBuild, Replicas,
    RetentionSettings, RetrySettings, RunSettings,
};
pub use secret::{redact_text, redact_uri, Secret};
pub use service::{LiveSettings, ScheduleSettings, ServiceSettings};

/// Everything the program can be told. Every index, alias, exchange, queue,
/// database and collection name is here, so that tests can isolate themselves.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub opensearch: OpenSearchSettings,
    pub rabbitmq: RabbitSettings,
    pub mongodb: MongoSettings,
    /// Where a rebuild reads the GMC side from (MongoDB or the recommendation service's queue).
    pub gmc: GmcSettings,
    /// Where a rebuild reads the connection service's logs and hidden discrepancies from.
    pub connection: ConnectionSettings,
    pub names: IndexNames,
    /// Shards and replicas of every generation, and the wait for green.
    pub index: IndexShape,
    pub bulk: BulkSettings,
    pub gates: GateSettings,
    pub retention: RetentionSettings,
    pub retry: RetrySettings,
    pub run: RunSettings,
    pub service: ServiceSettings,
    pub schedule: ScheduleSettings,
    pub live: LiveSettings,
    /// A folder holding `masterdoctorindex.json` and
    /// `recommendationindex.json` to use instead of the templates built
    /// into the binary (the files of `index-templates/` at build time).
    pub templates_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("invalid setting {field}: cannot read {path}: {source}")]
    SecretFile {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The key of the first name that is empty or blank.
pub(crate) fn blank_name<'a>(
    names: impl IntoIterator<Item = (&'static str, &'a mut String)>,
) -> Option<&'static str> {
    names
        .into_iter()
        .find(|(_, name)| name.trim().is_empty())
        .map(|(key, _)| key)
}

impl Settings {
    /// Every RabbitMQ exchange, queue and routing-key name (the `rabbitmq`,
    /// `gmc` and `connection` sections), for giving them all one prefix:
    /// the tests and the benchmark isolate themselves so.
    pub fn amqp_names_mut(&mut self) -> Vec<&mut String> {
        let mut names: Vec<&mut String> = self.rabbitmq.names_mut().into_iter().collect();
        names.extend(self.gmc.queue_names_mut().into_iter().map(|(_, n)| n));
        names.extend(
            self.connection
                .queue_names_mut()
                .into_iter()
                .map(|(_, n)| n),
        );
        names
    }

    /// These settings with every secret redacted, for printing.
    pub fn redacted(&self) -> Settings {
        let mut out = self.clone();
        out.rabbitmq.uri = out.rabbitmq.uri.redacted();
        out.mongodb.uri = out.mongodb.uri.redacted();
        out.opensearch.password = out.opensearch.password.as_ref().map(Secret::redacted);
        out.service.token = out.service.token.as_ref().map(|_| Secret::new("***"));
        if let Some(url) = redact_uri(&out.opensearch.url) {
            out.opensearch.url = url;
        }
        for url in &mut out.opensearch.urls {
            if let Some(shown) = redact_uri(url) {
                *url = shown;
            }
        }
        out
    }

    /// Reads the secrets that the settings keep in files (`*_file`).
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        fn read(field: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
            std::fs::read_to_string(path)
                .map(|text| Secret::new(text.trim_end_matches(['\n', '\r'])))
                .map_err(|source| ConfigError::SecretFile {
                    field,
                    path: path.to_path_buf(),
                    source,
                })
        }
        if let Some(path) = &self.opensearch.password_file {
            self.opensearch.password = Some(read("opensearch.password_file", path)?);
        }
        if let Some(path) = &self.rabbitmq.uri_file {
            self.rabbitmq.uri = read("rabbitmq.uri_file", path)?;
        }
        if let Some(path) = &self.mongodb.uri_file {
            self.mongodb.uri = read("mongodb.uri_file", path)?;
        }
        if let Some(path) = &self.service.token_file {
            self.service.token = Some(read("service.token_file", path)?);
        }
        Ok(())
    }

    /// Defaults, then the TOML file (if given), then `REBUILDER_SECTION__KEY`
    /// environment variables (for example `REBUILDER_OPENSEARCH__URL`).
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut settings: Settings = figment
            .merge(Env::prefixed("REBUILDER_").split("__"))
            .extract()
            .map_err(Box::new)?;
        settings.read_secret_files()?;
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
        if self
            .opensearch
            .urls
            .iter()
            .any(|u| url::Url::parse(u).is_err())
        {
            return invalid("opensearch.urls", "every entry must be a URL");
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
        for (field, name) in [
            ("names.prefix", self.names.prefix.as_str()),
            ("names.master_family", self.names.master_family.as_str()),
            (
                "names.recommendation_family",
                self.names.recommendation_family.as_str(),
            ),
        ] {
            if let Some(reason) = index_name_problem(name, field == "names.prefix") {
                return invalid(field, reason);
            }
        }
        let (master, reco) = (
            self.names.master_family.as_str(),
            self.names.recommendation_family.as_str(),
        );
        if master == reco
            || master.starts_with(&format!("{reco}-"))
            || reco.starts_with(&format!("{master}-"))
        {
            return invalid(
                "names.recommendation_family",
                "the two families must not share names: one family's generations would be taken for the other's",
            );
        }
        if self.index.number_of_shards == 0 {
            return invalid("index.number_of_shards", "must be at least 1");
        }
        if let Some(reason) = self.index.number_of_replicas.problem() {
            return invalid("index.number_of_replicas", reason);
        }
        if !(0.0..=1.0).contains(&self.gates.max_body_loss) {
            return invalid("gates.max_body_loss", "must be between 0 and 1");
        }
        if let Some((field, reason)) = self.gmc.problem() {
            return invalid(field, reason);
        }
        if let Some((field, reason)) = self.connection.problem() {
            return invalid(field, reason);
        }
        if self.run.merge_batch == 0 || self.rabbitmq.prefetch == 0 {
            return invalid("run.merge_batch / rabbitmq.prefetch", "must be at least 1");
        }
        if self.live.batch_size == 0 || self.live.prefetch == 0 {
            return invalid("live.batch_size / live.prefetch", "must be at least 1");
        }
        if self.retry.max_backoff_ms < self.retry.initial_backoff_ms {
            return invalid(
                "retry.max_backoff_ms",
                "must not be smaller than retry.initial_backoff_ms",
            );
        }
        if let Some(aws) = &self.opensearch.aws_sigv4 {
            if aws.region.trim().is_empty() {
                return invalid(
                    "opensearch.aws_sigv4.region",
                    "is required for SigV4 signing",
                );
            }
            if !["es", "aoss"].contains(&aws.service.as_str()) {
                return invalid("opensearch.aws_sigv4.service", "must be es or aoss");
            }
            if self.opensearch.username.is_some() {
                return invalid(
                    "opensearch.username",
                    "basic auth and aws_sigv4 exclude each other",
                );
            }
        }
        if self.opensearch.username.is_some() != self.opensearch.password.is_some() {
            return invalid(
                "opensearch.password",
                "basic auth needs both opensearch.username and opensearch.password (or password_file)",
            );
        }
        if self.service.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("service.listen", "must be an address like 0.0.0.0:8080");
        }
        if let Err(reason) = self.schedule.parsed() {
            let field = if reason.starts_with("time zone") {
                "schedule.time_zone"
            } else {
                "schedule.cron"
            };
            return invalid(field, &reason);
        }
        Ok(())
    }
}

/// Why `name` cannot be (part of) an OpenSearch index or alias name, if it
/// cannot: the server's own rules, plus no wildcard, comma or path
/// character, so that no name from configuration can reach an index
/// outside the configured families (`*`, `_all`, `a,b`, `../x`). `part`:
/// a prefix, which may be empty and is followed by the family name.
pub fn index_name_problem(name: &str, part: bool) -> Option<&'static str> {
    if name.is_empty() {
        return (!part).then_some("must not be empty");
    }
    if name.len() > 200 {
        return Some("must be at most 200 bytes");
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("index names must be lowercase");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if !name.chars().all(allowed) {
        return Some("only lowercase letters, digits, '-', '_' and '.' are allowed");
    }
    if name.starts_with(['-', '_', '.']) {
        return Some("must not start with '-', '_' or '.'");
    }
    if name.contains("..") {
        return Some("must not contain '..'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_reach_other_indices_are_refused() {
        for bad in [
            "*", "_all", "a,b", "../x", "x/y", "a b", "Ab", "-x", ".x", "a..b", "x?", "a#b",
        ] {
            assert!(index_name_problem(bad, false).is_some(), "{bad:?} passed");
            let mut s = Settings::default();
            s.names.master_family = bad.into();
            assert!(s.validate().is_err(), "master_family {bad:?} passed");
        }
        assert_eq!(index_name_problem("", true), None);
        assert!(index_name_problem("", false).is_some());
        assert_eq!(index_name_problem("t1_", true), None);
        assert_eq!(index_name_problem("masterdoctorindex", false), None);
        let mut s = Settings::default();
        s.names.recommendation_family = "masterdoctorindex-reco".into();
        assert!(s.validate().is_err(), "overlapping families passed");
        s.names.recommendation_family = "masterdoctorindex".into();
        assert!(s.validate().is_err(), "the same family twice passed");
    }

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
    fn opensearch_urls_come_from_a_list_or_a_comma_separated_string() {
        // A comma-separated string is what `REBUILDER_OPENSEARCH__URLS` gives.
        let load = |toml: &str| -> Settings {
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Toml::string(toml))
                .extract()
                .unwrap()
        };
        let list =
            load("[opensearch]\nurls = [\"http://127.0.0.1:9211\", \"http://127.0.0.1:9212\"]");
        assert_eq!(
            list.opensearch.node_urls(),
            ["http://127.0.0.1:9211", "http://127.0.0.1:9212"]
        );
        list.validate().unwrap();
        let text = load("[opensearch]\nurls = \"http://a:9200, http://b:9200,http://c:9200\"");
        assert_eq!(
            text.opensearch.node_urls(),
            ["http://a:9200", "http://b:9200", "http://c:9200"]
        );
        let bad = load("[opensearch]\nurls = \"http://a:9200,not a url\"");
        assert!(bad.validate().is_err());
        assert_eq!(
            Settings::default().opensearch.node_urls(),
            ["http://127.0.0.1:9200"]
        );
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
