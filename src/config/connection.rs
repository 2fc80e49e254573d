//! The `connection` section: where a rebuild reads the connection service's
//! data from (the connection logs that give `updatedBy` and
//! `lastConnectionDateTime`, and the hidden discrepancies). `mongodb` reads
//! its two collections directly; `queue` asks the connection service for
//! them over RabbitMQ (`"connectionLogSyncStart"` and
//! `"hiddenDiscrepancySyncStart"`, then `IndexSyncMessage` batches); `none`
//! reads nothing and leaves the three fields out of every document.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::MongoSettings;

/// Where a rebuild reads the connection service's data from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionSourceKind {
    /// `connectionLogs` and `hiddenDiscrepancy`, read once per rebuild. A
    /// collection that does not exist reads as empty.
    #[default]
    Mongodb,
    /// The connection service's two batch protocols over RabbitMQ.
    Queue,
    /// Nothing: documents carry no connection fields.
    None,
}

impl ConnectionSourceKind {
    pub const ALL: [ConnectionSourceKind; 3] = [Self::Mongodb, Self::Queue, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionSourceKind::Mongodb => "mongodb",
            ConnectionSourceKind::Queue => "queue",
            ConnectionSourceKind::None => "none",
        }
    }
}

impl fmt::Display for ConnectionSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionSourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown connection source {s:?}; expected mongodb, queue or none")
            })
    }
}

/// The connection source, the names of the connection service's
/// collections (on the server of the `mongodb` section) and, for `queue`,
/// the names of its two protocols (on the exchange of the `rabbitmq`
/// section; dead letters go to its dead-letter queue), today's by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionSettings {
    pub source: ConnectionSourceKind,
    /// The connection service's database; `mongodb.database` when unset.
    pub database: Option<String>,
    /// Connection logs: the latest of a GMC number gives `updatedBy` and
    /// `lastConnectionDateTime`.
    pub logs_collection: String,
    /// Hidden discrepancies: the nested `hiddenDiscrepancies` of a document.
    pub hidden_collection: String,
    /// The routing key of `"connectionLogSyncStart"`.
    pub log_sync_start_routing_key: String,
    /// The connection service's queue for it (declared where missing).
    pub log_sync_start_queue: String,
    /// The routing key the connection service publishes log batches with.
    pub log_sync_data_routing_key: String,
    /// Our queue for the log batches.
    pub log_sync_data_queue: String,
    /// The routing key of `"hiddenDiscrepancySyncStart"`.
    pub hidden_sync_start_routing_key: String,
    /// The connection service's queue for it (declared where missing).
    pub hidden_sync_start_queue: String,
    /// The routing key the connection service publishes hidden-discrepancy
    /// batches with.
    pub hidden_sync_data_routing_key: String,
    /// Our queue for the hidden-discrepancy batches.
    pub hidden_sync_data_queue: String,
    /// A connection service silent this long (before its first batch or
    /// between two) fails the run.
    pub idle_timeout_secs: u64,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            source: ConnectionSourceKind::Mongodb,
            database: None,
            logs_collection: "connectionLogs".into(),
            hidden_collection: "hiddenDiscrepancy".into(),
            log_sync_start_routing_key: "reval.routingkey.connectionlog.essyncstart".into(),
            log_sync_start_queue: "reval.queue.connectionlog.essyncstart.connection".into(),
            log_sync_data_routing_key: "reval.routingkey.connectionlog.essyncdata".into(),
            log_sync_data_queue: "reval.queue.connectionlog.essyncdata.integration".into(),
            hidden_sync_start_routing_key: "reval.routingkey.hiddendiscrepancy.essyncstart".into(),
            hidden_sync_start_queue: "reval.queue.hiddendiscrepancy.essyncstart.connection".into(),
            hidden_sync_data_routing_key: "reval.routingkey.hiddendiscrepancy.essyncdata".into(),
            hidden_sync_data_queue: "reval.queue.hiddendiscrepancy.essyncdata.integration".into(),
            idle_timeout_secs: 300,
        }
    }
}

impl ConnectionSettings {
    /// The database the collections are in.
    pub fn database<'a>(&'a self, mongo: &'a MongoSettings) -> &'a str {
        self.database.as_deref().unwrap_or(&mongo.database)
    }

    /// The queue and routing-key names of both protocols, with their keys
    /// (validation, and the prefix the tests and the benchmark give them).
    pub fn queue_names_mut(&mut self) -> [(&'static str, &mut String); 8] {
        [
            (
                "connection.log_sync_start_routing_key",
                &mut self.log_sync_start_routing_key,
            ),
            (
                "connection.log_sync_start_queue",
                &mut self.log_sync_start_queue,
            ),
            (
                "connection.log_sync_data_routing_key",
                &mut self.log_sync_data_routing_key,
            ),
            (
                "connection.log_sync_data_queue",
                &mut self.log_sync_data_queue,
            ),
            (
                "connection.hidden_sync_start_routing_key",
                &mut self.hidden_sync_start_routing_key,
            ),
            (
                "connection.hidden_sync_start_queue",
                &mut self.hidden_sync_start_queue,
            ),
            (
                "connection.hidden_sync_data_routing_key",
                &mut self.hidden_sync_data_routing_key,
            ),
            (
                "connection.hidden_sync_data_queue",
                &mut self.hidden_sync_data_queue,
            ),
        ]
    }

    /// Why these settings cannot work, naming the key.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self
            .database
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            return Some((
                "connection.database",
                "must not be empty (leave it out to use mongodb.database)",
            ));
        }
        for (field, name) in [
            ("connection.logs_collection", &self.logs_collection),
            ("connection.hidden_collection", &self.hidden_collection),
        ] {
            if name.trim().is_empty() {
                return Some((field, "must not be empty"));
            }
        }
        if let Some(field) = super::blank_name(self.clone().queue_names_mut()) {
            return Some((field, "must not be empty"));
        }
        if self.idle_timeout_secs == 0 {
            return Some(("connection.idle_timeout_secs", "must be at least 1"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_source_is_mongodb_with_todays_collection_names() {
        let s = ConnectionSettings::default();
        assert_eq!(s.source, ConnectionSourceKind::Mongodb);
        assert_eq!(s.logs_collection, "connectionLogs");
        assert_eq!(s.hidden_collection, "hiddenDiscrepancy");
        assert_eq!(
            s.log_sync_data_queue,
            "reval.queue.connectionlog.essyncdata.integration"
        );
        assert_eq!(
            s.hidden_sync_start_routing_key,
            "reval.routingkey.hiddendiscrepancy.essyncstart"
        );
        assert_eq!(s.problem(), None);
    }

    #[test]
    fn the_database_defaults_to_the_mongodb_sections() {
        let mongo = MongoSettings::default();
        let mut s = ConnectionSettings::default();
        assert_eq!(s.database(&mongo), mongo.database);
        s.database = Some("connection".into());
        assert_eq!(s.database(&mongo), "connection");
    }

    #[test]
    fn sources_parse_and_unknown_ones_list_the_valid_values() {
        assert_eq!("none".parse(), Ok(ConnectionSourceKind::None));
        assert_eq!("queue".parse(), Ok(ConnectionSourceKind::Queue));
        assert_eq!(" MongoDB ".parse(), Ok(ConnectionSourceKind::Mongodb));
        let error = "sqs".parse::<ConnectionSourceKind>().unwrap_err();
        assert!(error.contains("mongodb, queue or none"), "{error}");
    }

    #[test]
    fn validate_rejects_an_empty_collection_or_database_name() {
        let mut s = ConnectionSettings {
            hidden_collection: " ".into(),
            ..ConnectionSettings::default()
        };
        assert_eq!(
            s.problem().map(|p| p.0),
            Some("connection.hidden_collection")
        );
        s.hidden_collection = "h".into();
        s.database = Some(String::new());
        assert_eq!(s.problem().map(|p| p.0), Some("connection.database"));
    }
}
