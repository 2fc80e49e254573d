//! The data sources: connections to MongoDB (GMC data) and RabbitMQ (TCS
//! records), with the `SourceError` boundary type.

pub mod gmc;
pub mod tcs;

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::config::{MongoSettings, RabbitSettings};
use crate::retry::{amqp_is_transient, mongo_is_transient, Retriable};

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
}

impl Retriable for SourceError {
    /// Trying again may help when a connection dropped or a server was
    /// busy or restarting; a silent TCS or a refused publish is final.
    fn is_retriable(&self) -> bool {
        match self {
            SourceError::MongoUnreachable(_) | SourceError::RabbitUnreachable(_) => true,
            SourceError::Mongo(e) => mongo_is_transient(e),
            SourceError::Rabbit(e) => amqp_is_transient(e),
            SourceError::BrokerRefused(_) | SourceError::TcsIdle { .. } => false,
        }
    }
}

/// A MongoDB client that has answered a ping.
pub async fn mongo_client(settings: &MongoSettings) -> Result<Client, SourceError> {
    let mut options = ClientOptions::parse(settings.uri.expose())
        .await
        .map_err(|e| SourceError::MongoUnreachable(e.to_string()))?;
    options.server_selection_timeout = Some(Duration::from_secs(10));
    options.app_name = Some("rebuilder".into());
    let client =
        Client::with_options(options).map_err(|e| SourceError::MongoUnreachable(e.to_string()))?;
    client
        .database("admin")
        .run_command(bson::doc! {"ping": 1})
        .await
        .map_err(|e| SourceError::MongoUnreachable(e.to_string()))?;
    Ok(client)
}

/// An open AMQP connection (lapin runs it on the tokio runtime).
pub async fn rabbit_connection(settings: &RabbitSettings) -> Result<Connection, SourceError> {
    let properties = ConnectionProperties::default().with_connection_name("rebuilder".into());
    Connection::connect(settings.uri.expose(), properties)
        .await
        .map_err(|e| SourceError::RabbitUnreachable(e.to_string()))
}
