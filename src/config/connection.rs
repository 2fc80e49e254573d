//! The `connection` section: where a rebuild reads the connection service's
//! data from (the connection logs that give `updatedBy` and
//! `lastConnectionDateTime`, and the hidden discrepancies). `mongodb` reads
//! its two collections directly; `none` reads nothing and leaves the three
//! fields out of every document. (The connection service's queue protocol
//! is a later `queue` source; its names will join this section.)

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
    /// Nothing: documents carry no connection fields.
    None,
}

impl ConnectionSourceKind {
    pub const ALL: [ConnectionSourceKind; 2] = [Self::Mongodb, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionSourceKind::Mongodb => "mongodb",
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
            .ok_or_else(|| format!("unknown connection source {s:?}; expected mongodb or none"))
    }
}

/// The connection source and the names of the connection service's
/// collections (on the server of the `mongodb` section).
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
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            source: ConnectionSourceKind::Mongodb,
            database: None,
            logs_collection: "connectionLogs".into(),
            hidden_collection: "hiddenDiscrepancy".into(),
        }
    }
}

impl ConnectionSettings {
    /// The database the collections are in.
    pub fn database<'a>(&'a self, mongo: &'a MongoSettings) -> &'a str {
        self.database.as_deref().unwrap_or(&mongo.database)
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
        assert_eq!(" MongoDB ".parse(), Ok(ConnectionSourceKind::Mongodb));
        let error = "queue".parse::<ConnectionSourceKind>().unwrap_err();
        assert!(error.contains("mongodb or none"), "{error}");
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
