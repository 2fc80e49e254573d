//! The data sources: connections to MongoDB (GMC data and its change
//! streams, the connection service's data) and RabbitMQ (TCS syncs and
//! updates), with the `SourceError` boundary type.

pub mod changes;
pub mod connection;
pub mod gmc;
pub mod index_sync;
pub mod tcs;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongodb::Client;
use tracing::warn;

use crate::config::{redact_text, MongoSettings, RabbitSettings};
use crate::retry::{amqp_is_transient, mongo_cursor_lost, mongo_is_transient, Retriable};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach MongoDB: {0} (start the local stack with `scripts/stack start`)")]
    MongoUnreachable(String),
    #[error("MongoDB failed: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("cannot reach RabbitMQ: {0} (start the local stack with `scripts/stack start`)")]
    RabbitUnreachable(String),
    #[error("RabbitMQ failed: {0}")]
    Rabbit(#[from] lapin::Error),
    #[error("the broker refused (nacked) {0}")]
    BrokerRefused(String),
    #[error("TCS sent nothing for {idle_secs} s after {received} messages; the sync did not finish (no syncEnd)")]
    TcsIdle { idle_secs: u64, received: u64 },
    /// A task that reads a source ended without saying it had read
    /// everything (a defect: it panicked). Its channel's end must not be
    /// taken for the source's end.
    #[error("the reader of {source_name} stopped before the end: {cause}")]
    ReaderDied { source_name: String, cause: String },
}

impl Retriable for SourceError {
    /// Trying again may help when a connection dropped or a server was
    /// busy or restarting; a silent TCS or a refused publish is final.
    fn is_retriable(&self) -> bool {
        match self {
            SourceError::MongoUnreachable(_) | SourceError::RabbitUnreachable(_) => true,
            // A cursor the server no longer knows (it restarted between two
            // batches) ends a one-shot read that can simply be run again:
            // the outcome aggregation, the connection read. (The doctor
            // read resumes after its last id instead: `gmc::pages`.)
            SourceError::Mongo(e) => mongo_is_transient(e) || mongo_cursor_lost(e),
            SourceError::Rabbit(e) => amqp_is_transient(e),
            SourceError::BrokerRefused(_)
            | SourceError::TcsIdle { .. }
            | SourceError::ReaderDied { .. } => false,
        }
    }
}

/// A MongoDB client that has answered a ping.
pub async fn mongo_client(settings: &MongoSettings) -> Result<Client, SourceError> {
    let client = mongo_client_lazy(settings).await?;
    ping_mongo(&client).await?;
    Ok(client)
}

/// A MongoDB client that has not connected yet (the driver connects on
/// first use): for a service that must start while MongoDB is down.
///
/// Production options are applied here: `retryWrites=false` is enforced
/// (DocumentDB refuses retryable writes), with a warning when the URI asks
/// for them; `ca_file` turns TLS on with that authority (DocumentDB's
/// bundle); `tls_insecure` accepts any certificate, with a warning.
pub async fn mongo_client_lazy(settings: &MongoSettings) -> Result<Client, SourceError> {
    let mut options = ClientOptions::parse(settings.uri.expose())
        .await
        .map_err(|e| SourceError::MongoUnreachable(redact_text(&e.to_string())))?;
    if options.retry_writes == Some(true) {
        warn!("mongodb.uri asks for retryWrites=true; DocumentDB refuses retryable writes, so rebuilder turns them off.");
    }
    options.retry_writes = Some(false);
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.app_name = Some("rebuilder".into());
    if settings.ca_file.is_some() || settings.tls_insecure {
        let mut tls = TlsOptions::default();
        if let Some(ca) = &settings.ca_file {
            tls.ca_file_path = Some(ca.clone());
        }
        if settings.tls_insecure {
            warn!(
                "mongodb.tls_insecure is set: certificates of the MongoDB server are NOT verified."
            );
            tls.allow_invalid_certificates = Some(true);
        }
        options.tls = Some(Tls::Enabled(tls));
    }
    Client::with_options(options)
        .map_err(|e| SourceError::MongoUnreachable(redact_text(&e.to_string())))
}

/// One `ping` round trip.
pub async fn ping_mongo(client: &Client) -> Result<(), SourceError> {
    client
        .database("admin")
        .run_command(bson::doc! {"ping": 1})
        .await
        .map(|_| ())
        .map_err(|e| SourceError::MongoUnreachable(redact_text(&e.to_string())))
}

/// An open AMQP connection (lapin runs it on the tokio runtime). For
/// `amqps://`, `rabbitmq.ca_file` adds a certificate authority to trust
/// (Amazon MQ's certificates chain to public roots, which are trusted anyway).
pub async fn rabbit_connection(settings: &RabbitSettings) -> Result<Connection, SourceError> {
    let properties = ConnectionProperties::default().with_connection_name("rebuilder".into());
    let unreachable = |e: lapin::Error| SourceError::RabbitUnreachable(redact_text(&e.to_string()));
    match &settings.ca_file {
        None => Connection::connect(settings.uri.expose(), properties)
            .await
            .map_err(unreachable),
        Some(ca) => {
            let chain = std::fs::read_to_string(ca).map_err(|e| {
                SourceError::RabbitUnreachable(format!(
                    "cannot read rabbitmq.ca_file {}: {e}",
                    ca.display()
                ))
            })?;
            let tls = lapin::tcp::OwnedTLSConfig {
                identity: None,
                cert_chain: Some(chain),
            };
            let runtime = lapin::runtime::default_runtime().map_err(unreachable)?;
            Connection::connect_with_config(settings.uri.expose(), properties, tls, runtime)
                .await
                .map_err(unreachable)
        }
    }
}
