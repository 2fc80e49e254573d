//! The nightly flood against the real servers: GMC rewrites every doctor
//! several times over (as the recommendation service's nightly refresh
//! does) while TCS updates come in between, all while the applier is down;
//! once it starts, it drains the backlog, coalescing each doctor's changes
//! within a batch, and afterwards every doctor shows its latest value from
//! each source. It prints the drain rate (a figure, not a timed assertion).
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bson::doc;
use common::TestEnv;
use live_helpers::{doc_of, gmc_collections, Applier, TcsPublisher};
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::json;

const ROUNDS: usize = 10;
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_gmc_rewrites_with_tcs_updates_between_ends_with_every_latest_value() {
    logs();
    let env = TestEnv::new("flood");
    let spec = DatasetSpec::new(51, 2400);
    baseline(&env, &spec).await;
    let doctors: Vec<String> = spec
        .doctors()
        .filter(|d| d.category == Category::Both)
        .map(|d| d.gmc_number)
        .take(2000)
        .collect();
    let trainees: Vec<_> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .take(300)
        .collect();
    // The applier has applied a change (so its stream positions are
    // stored), then is down while the flood comes: the whole flood waits
    // in front of it, as after a restart during the nightly refresh.
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let applier = Applier::start(&env).await;
    let (warm, _) = gmc_collections(&env).await;
    warm.update_one(
        doc! {"_id": &doctors[0]},
        doc! {"$set": {"designatedBodyCode": "1-WARM"}},
    )
    .await
    .unwrap();
    live_helpers::wait_for_doc(&client, &alias, &doctors[0], Duration::from_secs(30), |d| {
        d.is_some_and(|d| d["designatedBody"] == "1-WARM")
    })
    .await;
    applier.stop().await;

    // GMC: every doctor rewritten ROUNDS times, by WRITERS writers (each
    // doctor always by the same one, so its values come in order).
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (collection, _) = gmc_collections(&env).await;
        let mine: Vec<String> = doctors.iter().skip(w).step_by(WRITERS).cloned().collect();
        writers.push(tokio::spawn(async move {
            // Each doctor's rewrites back to back, as a refresh that
            // touches a doctor's record several times does: they meet in
            // one batch of the applier.
            for number in &mine {
                for round in 0..ROUNDS {
                    collection
                        .update_one(
                            doc! {"_id": number},
                            doc! {"$set": {"designatedBodyCode": format!("1-FLOOD{round}")}},
                        )
                        .await
                        .expect("MongoDB takes the write");
                }
            }
            mine.len() * ROUNDS
        }));
    }
    // TCS: three updates of each of 300 trainees in between.
    let publisher = TcsPublisher::new(&env).await;
    let mut programme = BTreeMap::new();
    for round in 0..3 {
        for d in &trainees {
            let mut body = d.tcs_messages[0].clone();
            let value = format!("Flood {round}");
            body["programmeName"] = json!(value);
            publisher.publish(body.to_string().as_bytes()).await;
            programme.insert(d.gmc_number.clone(), value);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    publisher.close().await;
    let mut gmc_changes = 0;
    for w in writers {
        gmc_changes += w.await.unwrap();
    }
    let written = started.elapsed();
    let applier = Applier::start(&env).await;
    let draining = Instant::now();

    // Drained: every doctor shows its last GMC value, every trainee its last
    // TCS one.
    let last_body = format!("1-FLOOD{}", ROUNDS - 1);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut pending: Vec<(String, &str, String)> = doctors
        .iter()
        .map(|d| (d.clone(), "designatedBody", last_body.clone()))
        .chain(
            programme
                .iter()
                .map(|(d, v)| (d.clone(), "programmeName", v.clone())),
        )
        .collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (number, field, value) in pending {
            let doc = doc_of(&client, &alias, &number).await;
            if doc.as_ref().map(|d| &d[field]) != Some(&json!(value)) {
                still.push((number, field, value));
            }
        }
        pending = still;
        assert!(
            pending.is_empty() || Instant::now() < deadline,
            "{} doctors never showed their latest value, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(3)]
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let drained = draining.elapsed().as_secs_f64();
    let changes = gmc_changes + trainees.len() * 3;
    eprintln!(
        "flood: {gmc_changes} GMC changes over {} doctors and {} TCS updates, written in {:.1} s while the applier was down; drained in {drained:.1} s once it started ({:.0} changes/s)",
        doctors.len(),
        trainees.len() * 3,
        written.as_secs_f64(),
        changes as f64 / drained
    );
    applier.stop().await;
    env.cleanup().await;
}
