//! The benchmark's own names: index and alias prefix `bench_`, MongoDB
//! database `rebuilder_bench`, and an exchange, queues and routing keys that
//! start with `bench.`; the smoke has names of its own, so a CI smoke never
//! touches a full run in progress. The same names reach the child processes
//! (the rebuilder and the simulated services) as `REBUILDER_*` environment
//! variables. Also the guard that keeps every benchmark request on this
//! machine.

use anyhow::bail;

use rebuilder::config::Settings;

/// The names one kind of benchmark run owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchNames {
    /// Index and alias prefix of everything the run creates.
    pub prefix: &'static str,
    /// MongoDB database of the GMC data and the run state.
    pub database: &'static str,
    /// Put before the exchange, every queue and every routing key.
    pub rabbit_prefix: &'static str,
}

/// The names of a full benchmark run.
pub const FULL: BenchNames = BenchNames {
    prefix: "bench_",
    database: "rebuilder_bench",
    rabbit_prefix: "bench.",
};

/// The names of a smoke run (none starts with a full run's prefix).
pub const SMOKE: BenchNames = BenchNames {
    prefix: "benchsmoke_",
    database: "rebuilder_bench_smoke",
    rabbit_prefix: "benchsmoke.",
};

/// The names of the flood benchmark (`--flood`), apart from both.
pub const FLOOD: BenchNames = BenchNames {
    prefix: "benchflood_",
    database: "rebuilder_bench_flood",
    rabbit_prefix: "benchflood.",
};

impl BenchNames {
    pub fn for_run(smoke: bool) -> Self {
        if smoke {
            SMOKE
        } else {
            FULL
        }
    }
}

/// Applies `names` to `settings` (idempotent).
pub fn isolate(settings: &mut Settings, names: BenchNames) {
    settings.names.prefix = names.prefix.to_string();
    settings.mongodb.database = names.database.to_string();
    settings.mongodb.state_database = Some(names.database.to_string());
    for name in settings.amqp_names_mut() {
        if !name.starts_with(names.rabbit_prefix) {
            *name = format!("{}{name}", names.rabbit_prefix);
        }
    }
}

/// The environment that gives a child process the same isolated names
/// (and the same sources).
pub fn child_env(settings: &Settings) -> Vec<(String, String)> {
    let m = &settings.mongodb;
    [
        ("NAMES__PREFIX", settings.names.prefix.as_str()),
        ("MONGODB__DATABASE", m.database.as_str()),
        ("MONGODB__STATE_DATABASE", m.state_database()),
        ("GMC__SOURCE", settings.gmc.source.as_str()),
        ("CONNECTION__SOURCE", settings.connection.source.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(rabbit_names(settings))
    .map(|(k, v)| (format!("REBUILDER_{k}"), v))
    .collect()
}

/// Every exchange, queue and routing-key name of the sections that have
/// them, each under the key of the environment variable that sets it
/// (`RABBITMQ__SYNC_DATA_QUEUE`), read from the sections' serialized keys
/// so that a name added to a section is passed on and cleaned up too.
fn rabbit_names(settings: &Settings) -> Vec<(String, String)> {
    let sections = [
        ("RABBITMQ", serde_json::to_value(&settings.rabbitmq)),
        ("GMC", serde_json::to_value(&settings.gmc)),
        ("CONNECTION", serde_json::to_value(&settings.connection)),
    ];
    let mut names = Vec::new();
    for (section, value) in sections {
        let Ok(serde_json::Value::Object(fields)) = value else {
            continue;
        };
        for (key, value) in fields {
            let is_name =
                key == "exchange" || key.ends_with("_queue") || key.ends_with("_routing_key");
            if let (true, Some(name)) = (is_name, value.as_str()) {
                names.push((
                    format!("{section}__{}", key.to_uppercase()),
                    name.to_string(),
                ));
            }
        }
    }
    names
}

/// Refuses settings that would send benchmark traffic anywhere but this
/// machine: a load test only ever targets loopback addresses.
pub fn ensure_loopback(settings: &Settings) -> anyhow::Result<()> {
    let nodes = settings
        .opensearch
        .node_urls()
        .into_iter()
        .map(|url| ("opensearch.urls", url));
    let checks = [
        ("opensearch.url", settings.opensearch.url.as_str()),
        ("rabbitmq.uri", settings.rabbitmq.uri.expose()),
        ("mongodb.uri", settings.mongodb.uri.expose()),
    ]
    .into_iter()
    .chain(nodes);
    for (field, value) in checks {
        let hosts = hosts_of(value);
        if hosts.is_empty() || !hosts.iter().all(|h| is_loopback(h)) {
            bail!(
                "{field} points to {}: the benchmark only loads servers on this machine \
                 (127.0.0.1, localhost or ::1)",
                if hosts.is_empty() {
                    "an unreadable address".to_string()
                } else {
                    hosts.join(", ")
                }
            );
        }
    }
    Ok(())
}

/// Every host named in a URL or a MongoDB URI (which may list several).
fn hosts_of(uri: &str) -> Vec<String> {
    let Some((_, rest)) = uri.split_once("://") else {
        return Vec::new();
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if let Some(v6) = h.strip_prefix('[') {
                v6.split(']').next().unwrap_or("").to_string()
            } else {
                h.split(':').next().unwrap_or("").to_string()
            }
        })
        .collect()
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Removes the benchmark's indices, MongoDB database, queues and exchange.
pub async fn clean(
    search: &rebuilder::search::SearchClient,
    settings: &Settings,
) -> anyhow::Result<()> {
    crate::indices::delete_prefixed(search, &settings.names.prefix).await?;
    let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;
    mongo.database(&settings.mongodb.database).drop().await?;
    let connection = rebuilder::sources::rabbit_connection(&settings.rabbitmq).await?;
    let queues = rabbit_names(settings)
        .into_iter()
        .filter(|(key, _)| key.ends_with("_QUEUE"));
    // A fresh channel for each deletion: a refused one closes its channel.
    for (_, queue) in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(
                settings.rabbitmq.exchange.as_str().into(),
                Default::default(),
            )
            .await;
    }
    let _ = connection.close(200, "bench: cleaned".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_renames_every_index_queue_and_database() {
        let mut s = Settings::default();
        isolate(&mut s, FULL);
        isolate(&mut s, FULL);
        assert_eq!(s.names.master_family(), "bench_masterdoctorindex");
        assert_eq!(s.mongodb.database, "rebuilder_bench");
        assert_eq!(s.mongodb.state_database(), "rebuilder_bench");
        assert_eq!(s.rabbitmq.exchange, "bench.reval.exchange");
        assert_eq!(
            s.rabbitmq.sync_data_queue,
            "bench.reval.queue.connection.syncdata"
        );
        assert_eq!(
            s.gmc.sync_data_queue,
            "bench.reval.queue.revalidationsummary.essync.integration"
        );
        assert_eq!(
            s.connection.hidden_sync_start_routing_key,
            "bench.reval.routingkey.hiddendiscrepancy.essyncstart"
        );
        let env = child_env(&s);
        assert!(env
            .iter()
            .any(|(k, v)| k == "REBUILDER_NAMES__PREFIX" && v == "bench_"));
        assert!(env
            .iter()
            .any(|(k, v)| k == "REBUILDER_CONNECTION__LOG_SYNC_DATA_QUEUE"
                && v == "bench.reval.queue.connectionlog.essyncdata.integration"));
        assert!(env
            .iter()
            .any(|(k, v)| k == "REBUILDER_CONNECTION__SOURCE" && v == "mongodb"));
        assert!(env.iter().all(|(k, _)| k.starts_with("REBUILDER_")));
        // Every exchange, queue and routing key of every section: 8 of
        // `rabbitmq`, 4 of `gmc`, 8 of `connection`, all renamed.
        let names = rabbit_names(&s);
        assert_eq!(names.len(), 20, "{names:?}");
        assert!(
            names.iter().all(|(_, v)| v.starts_with("bench.")),
            "{names:?}"
        );
        s.validate().unwrap();
    }

    #[test]
    fn a_smoke_owns_nothing_of_a_full_run() {
        let (mut full, mut smoke) = (Settings::default(), Settings::default());
        isolate(&mut full, FULL);
        isolate(&mut smoke, SMOKE);
        assert!(!smoke.names.prefix.starts_with(&full.names.prefix));
        assert_ne!(smoke.mongodb.database, full.mongodb.database);
        assert!(!smoke.rabbitmq.exchange.starts_with(FULL.rabbit_prefix));
        assert_ne!(
            smoke.rabbitmq.sync_data_queue,
            full.rabbitmq.sync_data_queue
        );
        smoke.validate().unwrap();
    }

    #[test]
    fn the_default_servers_are_on_loopback() {
        ensure_loopback(&Settings::default()).unwrap();
    }

    #[test]
    fn ensure_loopback_rejects_a_remote_host_anywhere_in_a_uri() {
        let mut s = Settings::default();
        s.opensearch.url = "https://search.example.com:443".into();
        assert!(ensure_loopback(&s).is_err());
        let mut s = Settings::default();
        s.mongodb.uri =
            rebuilder::config::Secret::new("mongodb://u:p@127.0.0.1:27017,10.0.0.5:27017/?x=1");
        assert!(ensure_loopback(&s).is_err());
        let mut s = Settings::default();
        s.rabbitmq.uri = rebuilder::config::Secret::new("amqp://guest:guest@[::1]:5672/%2f");
        ensure_loopback(&s).unwrap();
        let mut s = Settings::default();
        s.opensearch.urls = vec![
            "http://127.0.0.1:9211".into(),
            "http://10.0.0.5:9200".into(),
        ];
        assert!(ensure_loopback(&s).is_err(), "a remote node among the urls");
    }
}
