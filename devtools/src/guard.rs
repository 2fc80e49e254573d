//! The guard of the development aids. They write generated data, so they
//! refuse any server that is not on this machine's loopback interface, and
//! seeding refuses any database it did not create itself: pointed at a real
//! DocumentDB or broker by mistake, they stop before writing anything.

use bson::{doc, Document};
use mongodb::options::{ConnectionString, HostInfo, ServerAddress};
use mongodb::Database;

/// The collection in which seeding marks a database as its own.
pub const SEED_MARKER_COLLECTION: &str = "rebuilderDevSeed";
/// The `_id` of the marker document.
const SEED_MARKER_ID: &str = "rebuilder-dev";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("refusing {what} at {host:?}: the development aids only write to servers on loopback (127.0.0.0/8, ::1, localhost)")]
    NotLoopback { what: &'static str, host: String },
    #[error("refusing {what}: {reason}")]
    Unreadable { what: &'static str, reason: String },
    #[error("refusing to seed database {database:?}: it holds collections that rebuilder-dev did not create ({collections}); seed a database that is empty or was seeded before, for example with REBUILDER_MONGODB__DATABASE=rebuilder_demo")]
    ForeignDatabase {
        database: String,
        collections: String,
    },
    #[error("MongoDB failed while checking the database to seed: {0}")]
    Mongo(#[from] mongodb::error::Error),
}

/// Whether `host` names this machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Every host of a MongoDB connection string is on loopback. `mongodb+srv`
/// URIs name a DNS record, never loopback, and are refused.
pub fn check_mongo_uri(uri: &str) -> Result<(), GuardError> {
    const WHAT: &str = "the MongoDB server";
    let parsed = ConnectionString::parse(uri).map_err(|e| GuardError::Unreadable {
        what: WHAT,
        reason: format!("the MongoDB URI does not parse: {}", e.kind),
    })?;
    let hosts = match parsed.host_info {
        HostInfo::HostIdentifiers(hosts) => hosts,
        HostInfo::DnsRecord(record) => {
            return Err(GuardError::NotLoopback {
                what: WHAT,
                host: record,
            })
        }
        other => {
            return Err(GuardError::Unreadable {
                what: WHAT,
                reason: format!("unknown host form {other:?}"),
            })
        }
    };
    for address in hosts {
        if let ServerAddress::Tcp { host, .. } = &address {
            if !is_loopback_host(host) {
                return Err(GuardError::NotLoopback {
                    what: WHAT,
                    host: host.clone(),
                });
            }
        }
        // A Unix socket is on this machine by definition.
    }
    Ok(())
}

/// The broker of an AMQP URI is on loopback.
pub fn check_amqp_uri(uri: &str) -> Result<(), GuardError> {
    const WHAT: &str = "the RabbitMQ broker";
    let parsed = url::Url::parse(uri).map_err(|e| GuardError::Unreadable {
        what: WHAT,
        reason: format!("the AMQP URI does not parse: {e}"),
    })?;
    let host = parsed.host_str().unwrap_or("");
    if is_loopback_host(host) {
        Ok(())
    } else {
        Err(GuardError::NotLoopback {
            what: WHAT,
            host: host.to_string(),
        })
    }
}

/// Seeding may replace the GMC collections of `db` only when the database
/// is empty (seeding creates it; rebuilder's own `rebuilder*` state
/// collections do not count) or carries the marker of an earlier seeding;
/// the marker is written here, before any data.
pub async fn claim_database(db: &Database) -> Result<(), GuardError> {
    let names = db.list_collection_names().await?;
    let marker = db.collection::<Document>(SEED_MARKER_COLLECTION);
    if names.iter().any(|n| n == SEED_MARKER_COLLECTION)
        && marker
            .find_one(doc! {"_id": SEED_MARKER_ID})
            .await?
            .is_some()
    {
        return Ok(());
    }
    // rebuilder's own state (the lease, the run history, the journal) may
    // be there already: a run or an adoption was pointed at the database.
    let foreign: Vec<String> = names
        .into_iter()
        .filter(|n| !n.starts_with("rebuilder"))
        .collect();
    if !foreign.is_empty() {
        let mut names = foreign;
        names.sort();
        return Err(GuardError::ForeignDatabase {
            database: db.name().to_string(),
            collections: names.join(", "),
        });
    }
    marker
        .insert_one(doc! {
            "_id": SEED_MARKER_ID,
            "note": "created by rebuilder-dev seed; only generated data lives here",
            "createdAt": bson::DateTime::now(),
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.5",
            "docdb.cluster.eu-west-2.docdb.amazonaws.com",
            "0.0.0.0",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn seed_refuses_a_mongodb_uri_that_is_not_on_loopback() {
        check_mongo_uri("mongodb://127.0.0.1:27017/?retryWrites=false").unwrap();
        check_mongo_uri("mongodb://user:pw@localhost,127.0.0.2:27018/").unwrap();
        let e = check_mongo_uri(
            "mongodb://admin:secret@docdb.cluster.eu-west-2.docdb.amazonaws.com:27017/?tls=true",
        )
        .unwrap_err();
        assert!(matches!(e, GuardError::NotLoopback { .. }), "{e}");
        assert!(e.to_string().contains("docdb.cluster"), "{e}");
        assert!(
            !e.to_string().contains("secret"),
            "no credentials in the message"
        );
        let mixed = check_mongo_uri("mongodb://127.0.0.1:27017,db.internal:27017/").unwrap_err();
        assert!(mixed.to_string().contains("db.internal"));
        let srv = check_mongo_uri("mongodb+srv://cluster.example.org/").unwrap_err();
        assert!(matches!(srv, GuardError::NotLoopback { .. }), "{srv}");
        assert!(matches!(
            check_mongo_uri("not a uri").unwrap_err(),
            GuardError::Unreadable { .. }
        ));
    }

    #[test]
    fn the_simulator_refuses_a_broker_that_is_not_on_loopback() {
        check_amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        let e =
            check_amqp_uri("amqps://user:pw@b-1234.mq.eu-west-2.amazonaws.com:5671").unwrap_err();
        assert!(e.to_string().contains("b-1234.mq"), "{e}");
        assert!(!e.to_string().contains("pw@"));
    }
}
