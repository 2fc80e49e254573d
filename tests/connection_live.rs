//! The connection service's live changes against the real servers: a
//! connection logged, a discrepancy hidden and one un-hidden (its document
//! deleted from `hiddenDiscrepancy`) reach the live generation through the
//! change streams of the connection service's collections, as GMC changes
//! do; made during a rebuild, they are in the new generation after the
//! swap (journaled, replayed), none lost. Change events with text dates
//! (`yyyy-MM-dd HH:mm:ss`) and Extended-JSON ones are read as the sync
//! reads them; one for a doctor no source knows makes no document and
//! holds nothing up.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::TestEnv;
use live_helpers::{doc_of, wait_for_doc, Applier};
use mongodb::Collection;
use rebuilder::rebuild::record::RunOutcome;
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::Value;

/// The connection service's two collections of the test.
async fn connection_collections(env: &TestEnv) -> (Collection<Document>, Collection<Document>) {
    let mongo = env.mongo().await;
    let c = &env.settings.connection;
    let db = mongo.database(c.database(&env.settings.mongodb));
    (
        db.collection(&c.logs_collection),
        db.collection(&c.hidden_collection),
    )
}

fn log(number: &str, by: &str, at_ms: i64) -> Document {
    doc! {
        "_id": format!("log-{number}-{at_ms}"),
        "gmcId": number,
        "newDesignatedBodyCode": "1-LIVE",
        "previousDesignatedBodyCode": "1-OLD",
        "updatedBy": by,
        "requestTime": bson::DateTime::from_millis(at_ms),
    }
}

fn hidden(id: &str, number: &str, body: &str) -> Document {
    doc! {
        "_id": id,
        "gmcId": number,
        "hiddenForDesignatedBodyCode": body,
        "hiddenBy": "live.admin",
        "reason": "a live test",
        "hiddenDateTime": bson::DateTime::from_millis(1_893_456_000_000),
    }
}

fn hidden_bodies(doc: &Value) -> Vec<String> {
    doc["hiddenDiscrepancies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| {
                    h["hiddenForDesignatedBodyCode"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The GMC numbers of the first `n` doctors both TCS and GMC know.
fn in_both(spec: &DatasetSpec, n: usize) -> Vec<String> {
    spec.doctors()
        .filter(|d| d.category == Category::Both)
        .map(|d| d.gmc_number)
        .take(n)
        .collect()
}

/// 2030-01-01T00:00:00Z plus `minutes`: later than every seeded log.
fn later(minutes: i64) -> i64 {
    1_893_456_000_000 + minutes * 60_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_logged_a_discrepancy_hidden_and_one_unhidden_reach_the_live_index() {
    logs();
    let env = TestEnv::new("connection_live");
    let spec = DatasetSpec::new(71, 400);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let doctors = in_both(&spec, 3);
    let (logs, hiddens) = connection_collections(&env).await;
    let applier = Applier::start(&env).await;

    logs.insert_one(log(&doctors[0], "live.user", later(5)))
        .await
        .unwrap();
    wait_for_doc(&client, &alias, &doctors[0], Duration::from_secs(30), |d| {
        d.is_some_and(|d| {
            d["updatedBy"] == "live.user"
                && d["lastConnectionDateTime"] == "2030-01-01T00:05:00.000"
        })
    })
    .await;

    hiddens
        .insert_one(hidden("hide-live-1", &doctors[1], "1-LIVEBODY"))
        .await
        .unwrap();
    wait_for_doc(&client, &alias, &doctors[1], Duration::from_secs(30), |d| {
        d.is_some_and(|d| hidden_bodies(d).contains(&"1-LIVEBODY".to_string()))
    })
    .await;
    let before = doc_of(&client, &alias, &doctors[1]).await.unwrap();
    let others: Vec<String> = hidden_bodies(&before)
        .into_iter()
        .filter(|b| b != "1-LIVEBODY")
        .collect();

    // Un-hidden: the delete event names only the discrepancy's id.
    hiddens
        .delete_one(doc! {"_id": "hide-live-1"})
        .await
        .unwrap();
    wait_for_doc(&client, &alias, &doctors[1], Duration::from_secs(30), |d| {
        d.is_some_and(|d| !hidden_bodies(d).contains(&"1-LIVEBODY".to_string()))
    })
    .await;
    let after = doc_of(&client, &alias, &doctors[1]).await.unwrap();
    assert_eq!(
        hidden_bodies(&after),
        others,
        "the seeded hidden discrepancies stay"
    );
    for field in ["designatedBody", "programmeName", "gmcStatus"] {
        assert_eq!(after[field], before[field], "{field} untouched");
    }

    // A log for a doctor not in the index makes no document.
    logs.insert_one(log("9999991", "nobody", later(6)))
        .await
        .unwrap();
    logs.insert_one(log(&doctors[2], "live.last", later(7)))
        .await
        .unwrap();
    wait_for_doc(&client, &alias, &doctors[2], Duration::from_secs(30), |d| {
        d.is_some_and(|d| d["updatedBy"] == "live.last")
    })
    .await;
    assert!(doc_of(&client, &alias, "9999991").await.is_none());
    applier.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_changes_made_during_a_rebuild_are_in_the_new_generation() {
    logs();
    let env = TestEnv::new("connection_live_run");
    let spec = DatasetSpec::new(72, 2000);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let doctors: Vec<String> = spec
        .doctors()
        .filter(|d| d.category == Category::Both)
        .map(|d| d.gmc_number)
        .take(30)
        .collect();
    let (logs, hiddens) = connection_collections(&env).await;
    let applier = Applier::start(&env).await;
    // Hidden before the run, un-hidden during it.
    for (k, number) in doctors[20..].iter().enumerate() {
        hiddens
            .insert_one(hidden(&format!("pre-{k}"), number, "1-PRERUN"))
            .await
            .unwrap();
    }
    wait_for_doc(
        &client,
        &alias,
        &doctors[29],
        Duration::from_secs(30),
        |d| d.is_some_and(|d| hidden_bodies(d).contains(&"1-PRERUN".to_string())),
    )
    .await;

    let tcs = simulator_once(&env, spec);
    let run = start_rebuild(&env).await;
    for (k, number) in doctors[..10].iter().enumerate() {
        logs.insert_one(log(number, &format!("run.user{k}"), later(10 + k as i64)))
            .await
            .unwrap();
    }
    for (k, number) in doctors[10..20].iter().enumerate() {
        hiddens
            .insert_one(hidden(&format!("run-{k}"), number, "1-DURINGRUN"))
            .await
            .unwrap();
    }
    for k in 0..10 {
        hiddens
            .delete_one(doc! {"_id": format!("pre-{k}")})
            .await
            .unwrap();
    }
    let record = run.await.unwrap().expect("the rebuild succeeds");
    tcs.await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut wrong = Vec::new();
        for (k, number) in doctors.iter().enumerate() {
            let doc = doc_of(&client, &alias, number).await.unwrap();
            let bodies = hidden_bodies(&doc);
            let right = match k {
                0..=9 => doc["updatedBy"] == format!("run.user{k}").as_str(),
                10..=19 => bodies.contains(&"1-DURINGRUN".to_string()),
                _ => !bodies.contains(&"1-PRERUN".to_string()),
            };
            if !right {
                wrong.push(format!("{number}: {:?} {bodies:?}", doc["updatedBy"]));
            }
        }
        if wrong.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} doctors lack a connection change made during the rebuild, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    applier.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_events_with_text_and_extended_json_dates_are_read_as_the_sync_reads_them() {
    logs();
    let env = TestEnv::new("connection_live_dates");
    let spec = DatasetSpec::new(73, 300);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let doctors = in_both(&spec, 4);
    let (logs, hiddens) = connection_collections(&env).await;
    let mongo = env.mongo().await;
    let gmc = mongo
        .database(&env.settings.mongodb.database)
        .collection::<Document>(&env.settings.mongodb.doctors_collection);
    let applier = Applier::start(&env).await;

    // A connection log and a hidden discrepancy whose times are text in
    // `yyyy-MM-dd HH:mm:ss` (as a relay may write them), taken as UTC.
    let mut spaced = log(&doctors[0], "live.spaced", 0);
    spaced.insert("requestTime", "2030-02-03 04:05:06");
    logs.insert_one(spaced).await.unwrap();
    let mut hidden_spaced = hidden("hide-spaced", &doctors[1], "1-SPACED");
    hidden_spaced.insert("hiddenDateTime", "2029-01-02 03:04:05");
    hiddens.insert_one(hidden_spaced).await.unwrap();
    // A GMC doctor change with a text date and one with an Extended-JSON
    // date (what a relay's `{"$date": ...}` is once parsed: a BSON date).
    gmc.update_one(
        doc! {"_id": &doctors[2]},
        doc! {"$set": {"submissionDate": "2031-04-06 13:14:15"}},
    )
    .await
    .unwrap();
    let extended: Document = bson::Bson::try_from(serde_json::json!({
        "submissionDate": {"$date": "2031-05-07T00:00:00Z"},
        "lastUpdatedDate": {"$date": {"$numberLong": "1950000000000"}},
    }))
    .unwrap()
    .as_document()
    .unwrap()
    .clone();
    gmc.update_one(doc! {"_id": &doctors[3]}, doc! {"$set": extended})
        .await
        .unwrap();
    // A hidden discrepancy for a doctor no source knows: no document.
    hiddens
        .insert_one(hidden("hide-nobody", "9999993", "1-SPACED"))
        .await
        .unwrap();
    // ...and what comes after it still arrives (2031-01-01, the latest).
    logs.insert_one(log(&doctors[0], "live.after", 1_924_992_000_000))
        .await
        .unwrap();

    wait_for_doc(&client, &alias, &doctors[0], Duration::from_secs(30), |d| {
        d.is_some_and(|d| {
            d["updatedBy"] == "live.after"
                && d["lastConnectionDateTime"] == "2031-01-01T00:00:00.000"
        })
    })
    .await;
    // The text-dated log was read: it is the latest but for the one after.
    let mut spaced_only = log(&doctors[1], "live.spaced-2", 0);
    spaced_only.insert("requestTime", "2030-02-03 04:05:06");
    logs.insert_one(spaced_only).await.unwrap();
    wait_for_doc(&client, &alias, &doctors[1], Duration::from_secs(30), |d| {
        d.is_some_and(|d| {
            d["updatedBy"] == "live.spaced-2"
                && d["lastConnectionDateTime"] == "2030-02-03T04:05:06.000"
        })
    })
    .await;
    wait_for_doc(&client, &alias, &doctors[1], Duration::from_secs(30), |d| {
        d.is_some_and(|d| {
            d["hiddenDiscrepancies"].as_array().is_some_and(|a| {
                a.iter().any(|h| {
                    h["hiddenForDesignatedBodyCode"] == "1-SPACED"
                        && h["hiddenDateTime"] == "2029-01-02T03:04:05.000"
                })
            })
        })
    })
    .await;
    wait_for_doc(&client, &alias, &doctors[2], Duration::from_secs(30), |d| {
        d.is_some_and(|d| d["submissionDate"] == "2031-04-06")
    })
    .await;
    wait_for_doc(&client, &alias, &doctors[3], Duration::from_secs(30), |d| {
        d.is_some_and(|d| {
            d["submissionDate"] == "2031-05-07" && d["lastUpdatedDate"] == "2031-10-17"
        })
    })
    .await;
    assert!(doc_of(&client, &alias, "9999993").await.is_none());
    applier.stop().await;
    env.cleanup().await;
}
