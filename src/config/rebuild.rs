//! The sections that shape a rebuild: index names, the shape of every
//! generation (shards, replicas, the wait for green), the bulk writer, the
//! retry policy, the gates, retention and the run itself.

use serde::{Deserialize, Serialize};

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
    /// The largest share of its documents one designated body (or one
    /// alias) may lose against the live generation (0.2 = 20%).
    pub max_body_loss: f64,
    /// Bodies and aliases with fewer live documents than this are not judged.
    pub drift_min_docs: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            min_share_of_previous: 0.9,
            max_failed_items: 0,
            max_body_loss: 0.2,
            drift_min_docs: 20,
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
    /// How the recommendation generation is built (see [`RecommendationBuild`]).
    pub recommendation_build: RecommendationBuild,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 30,
            merge_batch: 1000,
            recommendation_build: RecommendationBuild::Alongside,
        }
    }
}

/// How a run builds its recommendation generation, which holds the same
/// documents as its master generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecommendationBuild {
    /// Written in the load itself: every document goes to both generations,
    /// in two bulk streams side by side, so nothing is left to do after the
    /// load (no serial step while the rest of the machine idles).
    #[default]
    Alongside,
    /// Copied from the loaded master by server-side `_reindex` after the
    /// load: the server does the second copy instead of the client, at the
    /// cost of a step that runs alone.
    Reindex,
}

/// The shape every generation serves with: shards, replicas, and how long
/// the finish of a run waits for the replicas before it refuses to promote.
/// Named here, not left to defaults: they are a decision per deployment
/// (see the README's "Shards and replicas").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexShape {
    /// Primary shards of each generation. One is right up to 30–50 GB of
    /// index; a million doctors make one to two.
    pub number_of_shards: u32,
    /// Replicas of each shard: a number (`1`: one copy more, on another
    /// node, in another zone when the cluster knows zones), or an
    /// auto-expand range (`0-1`: one replica when the cluster has two data
    /// nodes or more, none on a lone node, where a replica can never be
    /// allocated; `0-all`: one on every node).
    pub number_of_replicas: Replicas,
    /// How long the finish of a run waits for both generations to be green
    /// (every replica allocated and started) before it refuses to promote.
    pub green_timeout_secs: u64,
}

impl Default for IndexShape {
    fn default() -> Self {
        Self {
            number_of_shards: 1,
            number_of_replicas: Replicas::AutoExpand("0-1".into()),
            green_timeout_secs: 600,
        }
    }
}

/// A replica count, fixed or an OpenSearch `auto_expand_replicas` range.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Replicas {
    Fixed(u32),
    /// `MIN-MAX` or `MIN-all`; a plain number given as text is a fixed count.
    AutoExpand(String),
}

impl Replicas {
    /// Why this is not a replica count OpenSearch takes, if it is not.
    pub fn problem(&self) -> Option<&'static str> {
        let Replicas::AutoExpand(range) = self else {
            return None;
        };
        if range.trim().parse::<u32>().is_ok() {
            return None;
        }
        let Some((min, max)) = range.split_once('-') else {
            return Some("must be a number (1) or an auto-expand range (0-1, 0-all)");
        };
        match (min.parse::<u32>(), max.parse::<u32>()) {
            (Ok(_), _) if max == "all" => None,
            (Ok(a), Ok(b)) if a <= b => None,
            _ => Some("must be a number (1) or an auto-expand range (0-1, 0-all)"),
        }
    }

    /// The index settings that say it: `number_of_replicas` with
    /// auto-expand off, or `auto_expand_replicas` (which then sets the count).
    pub fn index_settings(&self) -> serde_json::Value {
        let fixed = match self {
            Replicas::Fixed(n) => Some(*n),
            Replicas::AutoExpand(text) => text.trim().parse().ok(),
        };
        match (fixed, self) {
            (Some(n), _) => {
                serde_json::json!({"number_of_replicas": n, "auto_expand_replicas": false})
            }
            (None, Replicas::AutoExpand(range)) => {
                serde_json::json!({"auto_expand_replicas": range.trim()})
            }
            (None, Replicas::Fixed(_)) => unreachable!("a fixed count is a number"),
        }
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replicas::Fixed(n) => write!(f, "{n}"),
            Replicas::AutoExpand(range) => f.write_str(range),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_a_number_or_an_auto_expand_range() {
        for good in ["0-1", "0-all", "1-2", "2"] {
            assert_eq!(Replicas::AutoExpand(good.into()).problem(), None, "{good}");
        }
        for bad in ["", "one", "1-", "2-1", "all", "0-some"] {
            assert!(
                Replicas::AutoExpand(bad.into()).problem().is_some(),
                "{bad}"
            );
        }
        assert_eq!(
            Replicas::Fixed(1).index_settings(),
            serde_json::json!({"number_of_replicas": 1, "auto_expand_replicas": false})
        );
        assert_eq!(
            Replicas::AutoExpand("2".into()).index_settings(),
            Replicas::Fixed(2).index_settings()
        );
        assert_eq!(
            Replicas::AutoExpand("0-1".into()).index_settings(),
            serde_json::json!({"auto_expand_replicas": "0-1"})
        );
    }
}
