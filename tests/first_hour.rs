//! What a new operator meets in the first hour, against the real servers:
//! the MongoDB index the live path relies on (named with the command that
//! creates it when missing, in `smoke` and `/readyz`, created by `mongo
//! ensure-indexes --yes`, silent once there), the `/api/runs` limit as the
//! document states it, and a TCS message over the size limit.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TestEnv;
use live_helpers::{doc_of, Applier, TcsPublisher};
use rebuilder_dev::datagen::DatasetSpec;
use run_helpers::*;
use serde_json::json;
use service_helpers::Service;

/// `rebuilder ARGS` with the test's settings.
fn rebuilder(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .args(args)
        .envs(child_env(env))
        .env("RUST_LOG", "warn")
        .output()
        .expect("rebuilder runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const INDEX: &str = "recommendation {gmcNumber: 1, gmcSubmissionDate: -1}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_is_named_with_its_command_and_created_only_when_asked() {
    logs();
    let env = TestEnv::new("first_hour_index");
    seed(&env, &DatasetSpec::new(61, 200)).await;

    // Seeded as the development data is: the index is there, nothing is said.
    let smoke = rebuilder(&env, &["smoke"]);
    assert!(smoke.status.success(), "{smoke:?}");
    assert!(!stdout(&smoke).contains("warning"), "{}", stdout(&smoke));

    // As production may be: dropped.
    let mongo = env.mongo().await;
    let recommendations = mongo
        .database(&env.settings.mongodb.database)
        .collection::<bson::Document>(&env.settings.mongodb.recommendation_collection);
    recommendations
        .drop_index("gmcNumber_1_gmcSubmissionDate_-1")
        .await
        .expect("the seeded index drops");
    let smoke = stdout(&rebuilder(&env, &["smoke"]));
    assert!(
        smoke.contains("warning") && smoke.contains(INDEX),
        "smoke names the index:\n{smoke}"
    );
    assert!(
        smoke.contains("rebuilder mongo ensure-indexes --yes"),
        "{smoke}"
    );
    assert!(smoke.contains(".recommendation.createIndex({gmcNumber: 1, gmcSubmissionDate: -1})"));

    let service = Service::start(&env, &[]);
    let (_, ready) = service.get("/readyz").await;
    let warnings = ready["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{ready}");
    assert!(warnings[0].as_str().unwrap().contains(INDEX));

    // Without --yes nothing is created, and the exit status says so.
    let dry = rebuilder(&env, &["mongo", "ensure-indexes"]);
    assert_eq!(dry.status.code(), Some(1), "{dry:?}");
    assert!(stdout(&dry).contains("missing") && stdout(&dry).contains("Nothing changed"));
    assert!(
        stdout(&rebuilder(&env, &["smoke"])).contains(INDEX),
        "still missing"
    );

    let made = rebuilder(&env, &["mongo", "ensure-indexes", "--yes"]);
    assert!(made.status.success(), "{made:?}");
    assert!(stdout(&made).contains("Created"), "{}", stdout(&made));
    let smoke = rebuilder(&env, &["smoke"]);
    assert!(!stdout(&smoke).contains("warning"), "{}", stdout(&smoke));
    let (_, ready) = service.get("/readyz").await;
    assert_eq!(ready["warnings"], json!([]), "{ready}");
    let again = rebuilder(&env, &["mongo", "ensure-indexes"]);
    assert!(again.status.success());
    drop(service);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_limit_is_what_the_document_says() {
    logs();
    let env = TestEnv::new("first_hour_limit");
    let service = Service::start(&env, &[]);
    let (_, doc) = service.get("/api/openapi.json").await;
    let limit = doc["paths"]["/api/runs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("the limit parameter")["schema"]
        .clone();
    assert_eq!(
        (limit["minimum"].as_u64(), limit["maximum"].as_u64()),
        (Some(1), Some(100)),
        "{limit}"
    );
    for (value, status) in [(0, 400), (1, 200), (100, 200), (101, 400)] {
        let (got, body) = service.get(&format!("/api/runs?limit={value}")).await;
        assert_eq!(got, status, "limit={value}: {body}");
    }
    drop(service);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_over_the_size_limit_is_dead_lettered_unread() {
    logs();
    let env = TestEnv::new("first_hour_large");
    let spec = DatasetSpec::new(62, 200);
    baseline(&env, &spec).await;
    take_dead_letters(&env).await;
    let applier = Applier::start(&env).await;
    let publisher = TcsPublisher::new(&env).await;
    let big = json!({
        "tcsPersonId": 77,
        "gmcReferenceNumber": "7099999",
        "programmeName": "Too large",
        "notes": "x".repeat(2 * 1024 * 1024),
    });
    publisher.publish(big.to_string().as_bytes()).await;
    publisher.close().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = take_dead_letters(&env).await;
        if !letters.is_empty() || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 1, "dead-lettered once");
    assert_eq!(letters[0].0, "too_large");
    assert!(letters[0].1.len() > 2 * 1024 * 1024, "whole");
    let client = env.search().await;
    assert!(
        doc_of(&client, &env.name("masterdoctorindex"), "7099999")
            .await
            .is_none(),
        "not indexed"
    );
    applier.stop().await;
    env.cleanup().await;
}
