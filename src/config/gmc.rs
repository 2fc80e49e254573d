//! The `gmc` section: where a rebuild reads the GMC side from. `mongodb`
//! reads `doctorsForDB` and `recommendation` directly (the collections of
//! the `mongodb` section); `queue` asks the recommendation service for it
//! over RabbitMQ (`"gmcSyncStart"`, then `IndexSyncMessage` batches), for a
//! deployment that has no access to the recommendation service's database.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a rebuild reads GMC doctors and their outcomes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GmcSourceKind {
    /// `doctorsForDB` and the outcome aggregation over `recommendation`.
    #[default]
    Mongodb,
    /// The recommendation service's batch protocol over RabbitMQ.
    Queue,
}

impl GmcSourceKind {
    pub const ALL: [GmcSourceKind; 2] = [Self::Mongodb, Self::Queue];

    pub fn as_str(self) -> &'static str {
        match self {
            GmcSourceKind::Mongodb => "mongodb",
            GmcSourceKind::Queue => "queue",
        }
    }
}

impl fmt::Display for GmcSourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GmcSourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown GMC source {s:?}; expected mongodb or queue"))
    }
}

/// The GMC source and, for `queue`, the names of today's protocol (on the
/// exchange of the `rabbitmq` section; dead letters go to its dead-letter
/// queue).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GmcSettings {
    pub source: GmcSourceKind,
    /// The routing key of `"gmcSyncStart"`, which the recommendation service listens to.
    pub sync_start_routing_key: String,
    /// The recommendation service's queue for it: declared (and bound) where
    /// missing, so that a request published before the service is up waits.
    pub sync_start_queue: String,
    /// The routing key the recommendation service publishes its batches with.
    pub sync_data_routing_key: String,
    /// Our queue for the batches.
    pub sync_data_queue: String,
    /// A recommendation service silent this long (before its first batch or
    /// between two) fails the run. Its first batch waits for a page of
    /// `doctorsForDB` and its outcomes, so this is longer than TCS's.
    pub idle_timeout_secs: u64,
}

impl Default for GmcSettings {
    fn default() -> Self {
        Self {
            source: GmcSourceKind::Mongodb,
            sync_start_routing_key: "reval.recommendation.syncstart".into(),
            sync_start_queue: "reval.queue.recommendation.syncstart".into(),
            sync_data_routing_key: "reval.routingkey.revalidationsummary.essync".into(),
            sync_data_queue: "reval.queue.revalidationsummary.essync.integration".into(),
            idle_timeout_secs: 300,
        }
    }
}

impl GmcSettings {
    /// The queue and routing-key names of the protocol, with their keys
    /// (validation, and the prefix the tests and the benchmark give them).
    pub fn queue_names_mut(&mut self) -> [(&'static str, &mut String); 4] {
        [
            (
                "gmc.sync_start_routing_key",
                &mut self.sync_start_routing_key,
            ),
            ("gmc.sync_start_queue", &mut self.sync_start_queue),
            ("gmc.sync_data_routing_key", &mut self.sync_data_routing_key),
            ("gmc.sync_data_queue", &mut self.sync_data_queue),
        ]
    }

    /// Why these settings cannot work, naming the key.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if let Some(field) = super::blank_name(self.clone().queue_names_mut()) {
            return Some((field, "must not be empty"));
        }
        if self.idle_timeout_secs == 0 {
            return Some(("gmc.idle_timeout_secs", "must be at least 1"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_source_is_mongodb_with_todays_queue_names() {
        let s = GmcSettings::default();
        assert_eq!(s.source, GmcSourceKind::Mongodb);
        assert_eq!(
            s.sync_data_queue,
            "reval.queue.revalidationsummary.essync.integration"
        );
        assert_eq!(s.problem(), None);
    }

    #[test]
    fn sources_parse_and_unknown_ones_list_the_valid_values() {
        assert_eq!("queue".parse(), Ok(GmcSourceKind::Queue));
        assert_eq!(" MongoDB ".parse(), Ok(GmcSourceKind::Mongodb));
        let error = "documentdb".parse::<GmcSourceKind>().unwrap_err();
        assert!(error.contains("mongodb or queue"), "{error}");
    }

    #[test]
    fn validate_rejects_an_empty_queue_name_and_a_zero_timeout() {
        let mut s = GmcSettings {
            sync_data_queue: " ".into(),
            ..GmcSettings::default()
        };
        assert_eq!(s.problem().map(|p| p.0), Some("gmc.sync_data_queue"));
        s.sync_data_queue = "q".into();
        s.idle_timeout_secs = 0;
        assert_eq!(s.problem().map(|p| p.0), Some("gmc.idle_timeout_secs"));
    }
}
