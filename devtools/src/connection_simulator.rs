//! The connection service's side of its two sync protocols, on a real
//! RabbitMQ: it answers `"connectionLogSyncStart"` with the generated
//! connection logs (`ConnectionLogDto`: `gmcId`, `newDesignatedBodyCode`,
//! `previousDesignatedBodyCode`, `updatedBy`, `eventDateTime` as
//! `uuuu-MM-dd'T'HH:mm:ss.SSS`, `gmcClientId`, `reason`, `requestType`,
//! `responseCode`) and `"hiddenDiscrepancySyncStart"` with the generated
//! hidden discrepancies, in batches of 5000 (today's
//! `ESSYNC_*_BATCH_SIZE`), ending the latter with `{"payload": null,
//! "syncEnd": true}` as today's service does. The data is what
//! `rebuilder-dev seed` writes into the two collections, so a rebuild over
//! the queues sees what a rebuild over MongoDB sees.
//!
//! One difference, on purpose: today's service sends only the latest log
//! of each `gmcId`; this one sends every log, which gives the same
//! documents (the latest wins either way) and exercises the rule.

use bson::{Bson, Document};
use serde_json::{json, Map, Value};

use rebuilder::config::{ConnectionSettings, RabbitSettings};
use rebuilder::domain::connection::format_connection_time;
use rebuilder::sources::connection::queue::{hidden_protocol, log_protocol};

use crate::datagen::DatasetSpec;
use crate::simulator::SimulatorError;
use crate::sync_service::{serve, ServeOptions, Served};

/// Today's `ESSYNC_CONNECTION_LOG_BATCH_SIZE` and
/// `ESSYNC_HIDDEN_DISCREPANCY_BATCH_SIZE`.
pub const DEFAULT_BATCH_SIZE: usize = 5_000;

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct ConnectionSimulatorOptions {
    /// Serve one sync of each, then return.
    pub once: bool,
    pub batch_size: usize,
    /// Message bodies published after the logs and before their end.
    pub extra_log_messages: Vec<Vec<u8>>,
    /// Message bodies published after the hidden discrepancies and before
    /// their end.
    pub extra_hidden_messages: Vec<Vec<u8>>,
}

impl Default for ConnectionSimulatorOptions {
    fn default() -> Self {
        Self {
            once: false,
            batch_size: DEFAULT_BATCH_SIZE,
            extra_log_messages: Vec::new(),
            extra_hidden_messages: Vec::new(),
        }
    }
}

/// What the two protocols served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionSyncsServed {
    pub logs: Vec<Served>,
    pub hidden: Vec<Served>,
}

/// Serves both protocols until the connection fails, or one sync of each
/// with `once`. Refuses a broker that is not on loopback.
pub async fn run_connection_simulator(
    rabbit: &RabbitSettings,
    settings: &ConnectionSettings,
    spec: DatasetSpec,
    options: ConnectionSimulatorOptions,
) -> Result<ConnectionSyncsServed, SimulatorError> {
    let log_options = ServeOptions {
        once: options.once,
        extra_messages: options.extra_log_messages,
        ..ServeOptions::new(options.batch_size)
    };
    let hidden_options = ServeOptions {
        once: options.once,
        extra_messages: options.extra_hidden_messages,
        end_message: json!({"payload": null, "syncEnd": true}),
        ..ServeOptions::new(options.batch_size)
    };
    let (log_sync, hidden_sync) = (log_protocol(settings), hidden_protocol(settings));
    let (logs, hidden) = tokio::try_join!(
        serve(rabbit, &log_sync, &log_options, || connection_log_items(
            &spec
        )),
        serve(rabbit, &hidden_sync, &hidden_options, || {
            hidden_discrepancy_items(&spec)
        }),
    )?;
    Ok(ConnectionSyncsServed { logs, hidden })
}

/// Every generated connection log as a `ConnectionLogDto`.
pub fn connection_log_items(spec: &DatasetSpec) -> impl Iterator<Item = Value> + '_ {
    spec.doctors().flat_map(|d| {
        d.connection_logs
            .iter()
            .map(|log| {
                let mut out = dto(
                    log,
                    &[
                        "gmcId",
                        "newDesignatedBodyCode",
                        "previousDesignatedBodyCode",
                        "updatedBy",
                        "gmcClientId",
                        "reason",
                        "requestType",
                        "responseCode",
                    ],
                );
                out.insert("eventDateTime".into(), time(log.get("requestTime")));
                Value::Object(out)
            })
            .collect::<Vec<_>>()
    })
}

/// Every generated hidden discrepancy as the service serializes it.
pub fn hidden_discrepancy_items(spec: &DatasetSpec) -> impl Iterator<Item = Value> + '_ {
    spec.doctors().flat_map(|d| {
        d.hidden_discrepancies
            .iter()
            .map(|h| {
                let mut out = dto(
                    h,
                    &[
                        "gmcId",
                        "currentDesignatedBodyCode",
                        "programmeOwnerDesignatedBodyCode",
                        "hiddenForDesignatedBodyCode",
                        "hiddenBy",
                        "reason",
                    ],
                );
                out.insert("id".into(), text(h.get("_id")));
                out.insert("hiddenDateTime".into(), time(h.get("hiddenDateTime")));
                if let Some(Bson::DateTime(until)) = h.get("hiddenUntilDate") {
                    out.insert(
                        "hiddenUntilDate".into(),
                        Value::String(until.to_chrono().format("%Y-%m-%d").to_string()),
                    );
                }
                Value::Object(out)
            })
            .collect::<Vec<_>>()
    })
}

/// The string fields of a DTO (Spring turns a number stored in a string
/// field into its text).
fn dto(doc: &Document, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .map(|k| (k.to_string(), text(doc.get(*k))))
        .collect()
}

fn text(value: Option<&Bson>) -> Value {
    match value {
        Some(Bson::String(s)) => Value::String(s.clone()),
        Some(Bson::Int32(n)) => Value::String(n.to_string()),
        Some(Bson::Int64(n)) => Value::String(n.to_string()),
        _ => Value::Null,
    }
}

/// A `LocalDateTime` as Jackson writes it with today's pattern.
fn time(value: Option<&Bson>) -> Value {
    match value {
        Some(Bson::DateTime(at)) => Value::String(format_connection_time(at.to_chrono())),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_log_and_hidden_discrepancy_travels_once_with_its_time() {
        let spec = DatasetSpec::new(4, 400);
        let logs: usize = spec.doctors().map(|d| d.connection_logs.len()).sum();
        let hidden: usize = spec.doctors().map(|d| d.hidden_discrepancies.len()).sum();
        assert!(logs > 0 && hidden > 0, "the data set has connection data");
        let log_items: Vec<Value> = connection_log_items(&spec).collect();
        let hidden_items: Vec<Value> = hidden_discrepancy_items(&spec).collect();
        assert_eq!((log_items.len(), hidden_items.len()), (logs, hidden));
        assert_eq!(log_items[0]["eventDateTime"].as_str().unwrap().len(), 23);
        assert!(log_items.iter().all(|l| l["gmcId"].is_string()));
        assert!(hidden_items[0]["id"].as_str().unwrap().starts_with("hd-"));
    }
}
