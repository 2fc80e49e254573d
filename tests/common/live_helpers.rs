//! Helpers of the live-update tests: the applier as a task, live changes
//! made the way TCS and GMC make them (a message on the update queue, a
//! write to `doctorsForDB` or `recommendation`), and reading documents back.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use lapin::options::ConfirmSelectOptions;
use mongodb::Collection;
use rebuilder::live::{run_applier_with_status, LiveStatus};
use rebuilder::search::SearchClient;
use rebuilder::sources::tcs::{json_properties, publish_confirmed};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::TestEnv;

/// The live applier of a test, in-process.
pub struct Applier {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Applier {
    /// Starts it and waits until it is active (holds the live lease) with
    /// every source open: a change stream opened without a stored position
    /// starts from now, so changes made before would be missed.
    pub async fn start(env: &TestEnv) -> Applier {
        let stop = CancellationToken::new();
        let status = LiveStatus::new();
        let task = tokio::spawn(run_applier_with_status(
            Arc::new(env.settings.clone()),
            stop.clone(),
            status.clone(),
        ));
        let ready = status.wait_ready(Duration::from_secs(60)).await;
        assert!(!task.is_finished(), "the live applier stopped");
        assert!(
            ready,
            "the live applier never became active with its sources open: {:?}",
            status.now()
        );
        Applier { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the applier stops");
        result.unwrap().expect("the applier ends cleanly");
    }
}

/// Publishes TCS update messages (confirmed by the broker).
pub struct TcsPublisher {
    connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    routing_key: String,
}

impl TcsPublisher {
    pub async fn new(env: &TestEnv) -> TcsPublisher {
        let connection = env.rabbit().await;
        rebuilder::sources::tcs::declare_topology(&connection, &env.settings.rabbitmq)
            .await
            .expect("topology");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        TcsPublisher {
            connection,
            channel,
            exchange: env.settings.rabbitmq.exchange.clone(),
            routing_key: env.settings.rabbitmq.update_routing_key.clone(),
        }
    }

    pub async fn publish(&self, body: &[u8]) {
        publish_confirmed(
            &self.channel,
            &self.exchange,
            &self.routing_key,
            body,
            json_properties(),
        )
        .await
        .expect("the broker takes the update");
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// The GMC collections of a test.
pub async fn gmc_collections(env: &TestEnv) -> (Collection<Document>, Collection<Document>) {
    let db = env.mongo().await.database(&env.settings.mongodb.database);
    (
        db.collection(&env.settings.mongodb.doctors_collection),
        db.collection(&env.settings.mongodb.recommendation_collection),
    )
}

/// A submitted recommendation newer than any generated one.
pub fn newest_recommendation(gmc_number: &str, outcome: &str, n: u32) -> Document {
    let submitted = bson::DateTime::from_millis(
        // 2030-01-01 plus n minutes: later than every generated submission.
        1_893_456_000_000 + i64::from(n) * 60_000,
    );
    doc! {
        "gmcNumber": gmc_number,
        "outcome": outcome,
        "recommendationType": "REVALIDATE",
        "recommendationStatus": "SUBMITTED_TO_GMC",
        "gmcSubmissionDate": submitted,
        "actualSubmissionDate": submitted,
    }
}

/// The document of one doctor behind `target`, if any (after a refresh).
pub async fn doc_of(client: &SearchClient, target: &str, id: &str) -> Option<Value> {
    let _ = client
        .request(
            opensearch::http::Method::Post,
            &format!("/{target}/_refresh"),
            &[],
            None,
        )
        .await;
    let (status, v) = client
        .request(
            opensearch::http::Method::Get,
            &format!("/{target}/_doc/{id}"),
            &[],
            None,
        )
        .await
        .expect("a get");
    (status == 200 && v["found"] == true).then(|| v["_source"].clone())
}

/// Waits until `check` holds for the document of `id` (None: absent).
pub async fn wait_for_doc(
    client: &SearchClient,
    target: &str,
    id: &str,
    within: Duration,
    check: impl Fn(Option<&Value>) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let doc = doc_of(client, target, id).await;
        if check(doc.as_ref()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "document {id} never reached the expected state: {doc:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
