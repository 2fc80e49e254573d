//! Proof that each local server is the real thing: OpenSearch runs the
//! template with its aliases (painless filter included), RabbitMQ redelivers
//! what was not acked, and the MongoDB-compatible server aggregates.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{alias_targets, count, ids, TestEnv};
use futures::{StreamExt, TryStreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use opensearch::http::Method;
use rebuilder::search::{Family, IndexTemplate};
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::seed::seed_mongo;
use serde_json::{json, Value};

#[tokio::test]
async fn opensearch_serves_the_template_through_every_alias_including_the_script_filter() {
    let env = TestEnv::new("servers_os");
    let client = env.search().await;
    let template =
        IndexTemplate::resolve(env.settings.templates_dir.as_deref(), Family::Master).unwrap();
    let index = env.name("masterdoctorindex-20260101-000000");
    let mut body = template.create_body(json!({"run_id": "servers-test"}));
    // Serve straight away: this test reads immediately.
    body["settings"]["index"]["refresh_interval"] = json!("1s");
    let aliases: serde_json::Map<String, Value> = template
        .aliases
        .iter()
        .map(|(name, def)| (env.name(name), def.clone()))
        .collect();
    body["aliases"] = Value::Object(aliases);
    client
        .json(Method::Put, &format!("/{index}"), &[], Some(&body))
        .await
        .expect("the template creates an index with its aliases");

    let spec = DatasetSpec::new(11, 300);
    let mut ndjson = Vec::new();
    for d in spec.doctors() {
        ndjson.extend(serde_json::to_vec(&json!({"index": {"_id": d.gmc_number}})).unwrap());
        ndjson.push(b'\n');
        ndjson.extend(serde_json::to_vec(&d.expected).unwrap());
        ndjson.push(b'\n');
    }
    let (status, response) = client
        .request_bytes(
            Method::Post,
            &format!("/{index}/_bulk"),
            &[("refresh", "true")],
            Some(ndjson),
            "application/x-ndjson",
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(response["errors"], false, "bulk failed: {response}");

    let expected: Vec<_> = spec.doctors().map(|d| d.expected).collect();
    let mut want_connections: Vec<String> = expected
        .iter()
        .filter(|d| d.exists_in_gmc)
        .map(|d| d.gmc_reference_number.clone())
        .collect();
    let mut want_discrepancies: Vec<String> = expected
        .iter()
        .filter(|d| d.is_discrepancy())
        .map(|d| d.gmc_reference_number.clone())
        .collect();
    want_connections.sort();
    want_discrepancies.sort();
    assert!(!want_discrepancies.is_empty() && want_discrepancies.len() < expected.len());

    assert_eq!(count(&client, &env.name("masterdoctorindex")).await, 300);
    assert_eq!(count(&client, &env.name("recommendations")).await, 300);
    assert_eq!(
        ids(
            &client,
            &env.name("current_connections"),
            json!({"match_all": {}})
        )
        .await,
        want_connections
    );
    assert_eq!(
        ids(
            &client,
            &env.name("discrepancies"),
            json!({"match_all": {}})
        )
        .await,
        want_discrepancies
    );
    assert_eq!(
        alias_targets(&client, &env.name("discrepancies")).await,
        vec![index.clone()]
    );

    // A reader's query of today works unchanged: a designated body match on
    // the lower-cased code without its prefix, sorted by last name.
    let some_body = expected
        .iter()
        .find_map(|d| d.designated_body.clone())
        .unwrap();
    let code = some_body.trim_start_matches("1-").to_lowercase();
    let query = json!({"query": {"match": {"designatedBody": code}},
                       "sort": [{"doctorLastName": "asc"}, {"designatedBody.keyword": "asc"}], "size": 5});
    let found = client
        .json(
            Method::Post,
            &format!("/{}/_search", env.name("current_connections")),
            &[],
            Some(&query),
        )
        .await
        .expect("the legacy designated-body query runs");
    assert!(found["hits"]["total"]["value"].as_u64().unwrap() > 0);
    env.cleanup().await;
}

#[tokio::test]
async fn rabbitmq_redelivers_a_message_that_was_not_acked_before_the_channel_closed() {
    let env = TestEnv::new("servers_mq");
    let queue = env.settings.rabbitmq.sync_data_queue.clone();
    let connection = env.rabbit().await;

    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for body in [b"first".as_slice(), b"second".as_slice()] {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Take both, ack only the first, then close the channel.
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "servers-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = next_delivery(&mut consumer).await;
    let second = next_delivery(&mut consumer).await;
    assert_eq!(first.data, b"first");
    assert_eq!(second.data, b"second");
    assert!(!second.redelivered);
    first.ack(BasicAckOptions::default()).await.unwrap();
    channel
        .close(200, "leaving one unacked".into())
        .await
        .unwrap();

    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "servers-test-2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.data, b"second", "only the unacked message comes back");
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.unwrap();
    let nothing_more = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        nothing_more.is_err(),
        "the acked message must not come back"
    );
    connection.close(200, "done".into()).await.ok();
    env.cleanup().await;
}

async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .expect("a delivery, not an error")
}

#[tokio::test]
async fn mongodb_holds_the_generated_data_and_finds_each_latest_recommendation_in_one_aggregation()
{
    let env = TestEnv::new("servers_db");
    let mongo = env.mongo().await;
    let spec = DatasetSpec::new(5, 2_000);
    let summary = seed_mongo(&mongo, &env.settings.mongodb, &spec)
        .await
        .unwrap();
    let expected_doctors = spec.doctors().filter(|d| d.gmc_doctor.is_some()).count() as u64;
    assert_eq!(summary.doctors, expected_doctors);

    let db = mongo.database(&env.settings.mongodb.database);
    let doctors = db.collection::<bson::Document>(&env.settings.mongodb.doctors_collection);
    assert_eq!(
        doctors.count_documents(bson::doc! {}).await.unwrap(),
        expected_doctors
    );

    let pipeline = vec![
        bson::doc! {"$match": {"actualSubmissionDate": {"$exists": true, "$ne": null}}},
        bson::doc! {"$sort": {"gmcNumber": 1, "gmcSubmissionDate": -1}},
        bson::doc! {"$group": {"_id": "$gmcNumber", "outcome": {"$first": "$outcome"}}},
    ];
    let latest: BTreeMap<String, String> = db
        .collection::<bson::Document>(&env.settings.mongodb.recommendation_collection)
        .aggregate(pipeline)
        .allow_disk_use(true)
        .await
        .unwrap()
        .map_ok(|d| {
            (
                d.get_str("_id").unwrap().to_string(),
                d.get_str("outcome")
                    .unwrap()
                    .parse::<rebuilder::domain::GmcStatus>()
                    .unwrap()
                    .as_str()
                    .to_string(),
            )
        })
        .try_collect()
        .await
        .unwrap();
    let want: BTreeMap<String, String> = spec
        .doctors()
        .filter_map(|d| d.expected.gmc_status.map(|s| (d.gmc_number, s)))
        .collect();
    assert!(want.len() > 500, "the data has recommendations to check");
    assert_eq!(latest, want);
    env.cleanup().await;
}
