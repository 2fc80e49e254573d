//! The benchmark's own names: index and alias prefix `bench_`, MongoDB
//! database `rebuilder_bench`, and an exchange, queues and routing keys that
//! start with `bench.`; the smoke has names of its own, so a CI smoke never
//! touches a full run in progress. The same names reach the child processes
//! (the rebuilder and the TCS simulator) as `REBUILDER_*` environment
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
    let r = &mut settings.rabbitmq;
    let g = &mut settings.gmc;
    for name in [
        &mut r.exchange,
        &mut r.sync_start_queue,
        &mut r.sync_start_routing_key,
        &mut r.sync_data_queue,
        &mut r.sync_data_routing_key,
        &mut r.update_queue,
        &mut r.update_routing_key,
        &mut r.dead_letter_queue,
        &mut g.sync_start_queue,
        &mut g.sync_start_routing_key,
        &mut g.sync_data_queue,
        &mut g.sync_data_routing_key,
    ] {
        if !name.starts_with(names.rabbit_prefix) {
            *name = format!("{}{name}", names.rabbit_prefix);
        }
    }
}

/// The environment that gives a child process the same isolated names.
pub fn child_env(settings: &Settings) -> Vec<(String, String)> {
    let r = &settings.rabbitmq;
    let m = &settings.mongodb;
    [
        ("NAMES__PREFIX", settings.names.prefix.as_str()),
        ("MONGODB__DATABASE", m.database.as_str()),
        ("MONGODB__STATE_DATABASE", m.state_database()),
        ("RABBITMQ__EXCHANGE", r.exchange.as_str()),
        ("RABBITMQ__SYNC_START_QUEUE", r.sync_start_queue.as_str()),
        (
            "RABBITMQ__SYNC_START_ROUTING_KEY",
            r.sync_start_routing_key.as_str(),
        ),
        ("RABBITMQ__SYNC_DATA_QUEUE", r.sync_data_queue.as_str()),
        (
            "RABBITMQ__SYNC_DATA_ROUTING_KEY",
            r.sync_data_routing_key.as_str(),
        ),
        ("RABBITMQ__UPDATE_QUEUE", r.update_queue.as_str()),
        (
            "RABBITMQ__UPDATE_ROUTING_KEY",
            r.update_routing_key.as_str(),
        ),
        ("RABBITMQ__DEAD_LETTER_QUEUE", r.dead_letter_queue.as_str()),
        ("GMC__SOURCE", settings.gmc.source.as_str()),
        (
            "GMC__SYNC_START_QUEUE",
            settings.gmc.sync_start_queue.as_str(),
        ),
        (
            "GMC__SYNC_START_ROUTING_KEY",
            settings.gmc.sync_start_routing_key.as_str(),
        ),
        (
            "GMC__SYNC_DATA_QUEUE",
            settings.gmc.sync_data_queue.as_str(),
        ),
        (
            "GMC__SYNC_DATA_ROUTING_KEY",
            settings.gmc.sync_data_routing_key.as_str(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("REBUILDER_{k}"), v.to_string()))
    .collect()
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
    let r = &settings.rabbitmq;
    // A fresh channel for each deletion: a refused one closes its channel.
    for queue in [
        &r.sync_start_queue,
        &r.sync_data_queue,
        &r.update_queue,
        &r.dead_letter_queue,
    ] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(r.exchange.as_str().into(), Default::default())
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
        let env = child_env(&s);
        assert!(env
            .iter()
            .any(|(k, v)| k == "REBUILDER_NAMES__PREFIX" && v == "bench_"));
        assert!(env.iter().all(|(k, _)| k.starts_with("REBUILDER_")));
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
