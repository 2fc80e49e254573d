//! The sections that shape a rebuild: index names, the bulk writer, the
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
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            lease_ttl_secs: 30,
            merge_batch: 1000,
        }
    }
}
