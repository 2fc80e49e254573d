//! `rebuilder smoke`: connects to all three servers and reports what it
//! finds, with a warning for each MongoDB index it relies on that is missing.

use std::process::ExitCode;

use anyhow::Context;
use opensearch::http::Method;

use crate::config::Settings;
use crate::search::SearchClient;
use crate::sources::gmc::indexes;
use crate::sources::{mongo_client, rabbit_connection};

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let search = SearchClient::new(&settings.opensearch)?;
    let version = search
        .version()
        .await
        .context("while asking OpenSearch for its version")?;
    let health = search
        .json(Method::Get, "/_cluster/health", &[], None)
        .await?;
    let aliases = search
        .json(Method::Get, "/_cat/aliases", &[("format", "json")], None)
        .await?;
    println!(
        "OpenSearch {version} at {}: cluster {} is {}, {} aliases",
        search.url(),
        health["cluster_name"].as_str().unwrap_or("?"),
        health["status"].as_str().unwrap_or("?"),
        aliases.as_array().map_or(0, Vec::len)
    );

    let connection = rabbit_connection(&settings.rabbitmq).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            settings.rabbitmq.sync_data_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    match queue {
        Ok(q) => println!(
            "RabbitMQ answered: queue {} holds {} messages",
            settings.rabbitmq.sync_data_queue,
            q.message_count()
        ),
        Err(_) => println!(
            "RabbitMQ answered: queue {} does not exist yet (a run declares it)",
            settings.rabbitmq.sync_data_queue
        ),
    }
    connection.close(200, "smoke check done".into()).await.ok();

    let mongo = mongo_client(&settings.mongodb).await?;
    let info = mongo
        .database("admin")
        .run_command(bson::doc! {"buildInfo": 1})
        .await
        .context("while asking MongoDB for buildInfo")?;
    let db = mongo.database(&settings.mongodb.database);
    let doctors = db
        .collection::<bson::Document>(&settings.mongodb.doctors_collection)
        .estimated_document_count()
        .await?;
    let recommendations = db
        .collection::<bson::Document>(&settings.mongodb.recommendation_collection)
        .estimated_document_count()
        .await?;
    println!(
        "MongoDB-compatible server {} : {}.{} holds {doctors} doctors, {} holds {recommendations} recommendations",
        info.get_str("version").unwrap_or("?"),
        settings.mongodb.database,
        settings.mongodb.doctors_collection,
        settings.mongodb.recommendation_collection
    );
    // Silent when every index is there.
    let missing = indexes::missing(&mongo, &settings.mongodb)
        .await
        .context("while listing the MongoDB indexes")?;
    for line in indexes::describe(&missing, &settings.mongodb.database) {
        println!("warning: {line}");
    }
    Ok(ExitCode::SUCCESS)
}
