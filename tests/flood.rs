//! The nightly flood against the real servers: GMC rewrites every doctor
//! several times over (as the recommendation service's nightly refresh
//! does) while TCS updates come in between, all while the applier is down;
//! once it starts, it drains the backlog, coalescing each doctor's changes
//! within a batch, and afterwards every doctor shows its latest value from
//! each source, and the backlog it reported (stream lag, queue depth) went
//! up and back to nothing. It prints the drain rate (a figure, not a timed
//! assertion). A rebuild started in the middle of a flood swaps in a
//! generation where every doctor ends with its latest state.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::doc;
use common::TestEnv;
use live_helpers::{doc_of, gmc_collections, newest_recommendation, Applier, TcsPublisher};
use rebuilder::live::backlog::{self, BacklogReport};
use rebuilder::rebuild::record::RunOutcome;
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::json;
use tokio::task::JoinHandle;

const ROUNDS: usize = 10;
const WRITERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_gmc_rewrites_with_tcs_updates_between_ends_with_every_latest_value() {
    logs();
    let mut env = TestEnv::new("flood");
    // A backlog older than a second is "behind": the flood is.
    env.settings.live.max_lag_secs = 1;
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
    let watcher = BacklogWatcher::start(&env);

    // Drained: every doctor shows its last GMC value, every trainee its last
    // TCS one.
    let last_body = format!("1-FLOOD{}", ROUNDS - 1);
    let deadline = Instant::now() + Duration::from_secs(180);
    let pending: Vec<(String, &str, String)> = doctors
        .iter()
        .map(|d| (d.clone(), "designatedBody", last_body.clone()))
        .chain(
            programme
                .iter()
                .map(|(d, v)| (d.clone(), "programmeName", v.clone())),
        )
        .collect();
    wait_for_latest(&client, &alias, pending, deadline).await;
    let drained = draining.elapsed().as_secs_f64();
    // What the applier reported meanwhile: behind at first, then nothing
    // waiting, as every replica's /api/sync/status and /readyz read it.
    let seen = watcher.until_caught_up(Duration::from_secs(30)).await;
    assert!(
        seen.max_lag_secs > 1.0 && seen.was_behind,
        "the flood showed as a backlog: {seen:?}"
    );
    let last = seen.last.expect("a report");
    assert_eq!(last.queue_depth, Some(0), "{last:?}");
    assert!(!last.behind && !last.near_retention, "{last:?}");
    eprintln!(
        "flood backlog: stream lag up to {:.1} s, queue depth up to {}",
        seen.max_lag_secs, seen.max_queue_depth
    );
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

/// What the stored backlog report said while a test watched it.
#[derive(Debug, Default)]
struct BacklogSeen {
    max_lag_secs: f64,
    max_queue_depth: u64,
    was_behind: bool,
    last: Option<BacklogReport>,
}

/// Reads the applier's backlog report as `/api/sync/status` does, every
/// 200 ms.
struct BacklogWatcher {
    seen: Arc<std::sync::Mutex<BacklogSeen>>,
    task: JoinHandle<()>,
}

impl BacklogWatcher {
    fn start(env: &TestEnv) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(BacklogSeen::default()));
        let settings = env.settings.clone();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mongo = rebuilder::sources::mongo_client(&settings.mongodb)
                    .await
                    .expect("MongoDB answers");
                loop {
                    if let Ok(Some(report)) = backlog::read(&mongo, &settings).await {
                        let mut seen = seen.lock().unwrap();
                        seen.max_lag_secs = seen.max_lag_secs.max(report.stream_lag_secs);
                        seen.max_queue_depth =
                            seen.max_queue_depth.max(report.queue_depth.unwrap_or(0));
                        seen.was_behind |= report.behind;
                        seen.last = Some(report);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        Self { seen, task }
    }

    /// Waits until the report says nothing waits, then stops watching.
    async fn until_caught_up(self, within: Duration) -> BacklogSeen {
        let deadline = Instant::now() + within;
        loop {
            let caught_up = {
                let seen = self.seen.lock().unwrap();
                seen.last.as_ref().is_some_and(|r| {
                    r.stream_lag_secs == 0.0 && r.queue_depth == Some(0) && !r.behind
                })
            };
            if caught_up || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.task.abort();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_started_in_the_middle_of_a_flood_swaps_in_every_doctors_latest_state() {
    logs();
    let env = TestEnv::new("flood_rebuild");
    let spec = DatasetSpec::new(52, 2400);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = common::alias_targets(&client, &alias).await;
    let doctors: Vec<String> = spec
        .doctors()
        .filter(|d| d.category == Category::Both)
        .map(|d| d.gmc_number)
        .take(1500)
        .collect();
    let trainees: Vec<_> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .take(200)
        .collect();
    let applier = Applier::start(&env).await;

    // The flood: every doctor rewritten ROUNDS times, a recommendation for
    // a tenth of them, by WRITERS writers, counted as it goes.
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (collection, recommendations) = gmc_collections(&env).await;
        let mine: Vec<String> = doctors.iter().skip(w).step_by(WRITERS).cloned().collect();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            for (k, number) in mine.iter().enumerate() {
                for round in 0..ROUNDS {
                    collection
                        .update_one(
                            doc! {"_id": number},
                            doc! {"$set": {"designatedBodyCode": format!("1-FLOODR{round}")}},
                        )
                        .await
                        .expect("MongoDB takes the write");
                    written.fetch_add(1, Ordering::Relaxed);
                }
                if k % 10 == 0 {
                    recommendations
                        .insert_one(newest_recommendation(number, "REJECTED", 9_000 + k as u32))
                        .await
                        .expect("MongoDB takes the write");
                }
            }
        }));
    }
    let total = doctors.len() * ROUNDS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while written.load(Ordering::Relaxed) < total / 3 {
        assert!(Instant::now() < deadline, "the flood did not get going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The rebuild starts in the middle of it; TCS updates come once it
    // records (before, the simulator's sync would send the old values).
    let tcs = simulator_once(&env, spec);
    let run = start_rebuild(&env).await;
    let started_at = written.load(Ordering::Relaxed);
    let publisher = TcsPublisher::new(&env).await;
    let mut programme = BTreeMap::new();
    for round in 0..3 {
        for d in &trainees {
            let mut body = d.tcs_messages[0].clone();
            let value = format!("Flood rebuild {round}");
            body["programmeName"] = json!(value);
            publisher.publish(body.to_string().as_bytes()).await;
            programme.insert(d.gmc_number.clone(), value);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publisher.close().await;
    for w in writers {
        w.await.unwrap();
    }
    let record = run
        .await
        .unwrap()
        .expect("the rebuild succeeds in the middle of a flood");
    tcs.await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);
    let after = common::alias_targets(&client, &alias).await;
    assert_ne!(after, before, "the alias moved to the new generation");
    let c = &record.catch_up;
    assert!(c.applier_active && c.replayed > 0, "{c:?}");
    eprintln!(
        "flood rebuild: started after {started_at} of {total} GMC rewrites; catch-up replayed {} ({} coalesced) in {} rounds, {} left at the pause, applier paused {} ms",
        c.replayed, c.coalesced, c.rounds, c.backlog_at_pause, c.paused_ms
    );

    // Every doctor's latest state, in the generation the alias now names.
    let last_body = format!("1-FLOODR{}", ROUNDS - 1);
    let pending: Vec<(String, &str, String)> = doctors
        .iter()
        .map(|d| (d.clone(), "designatedBody", last_body.clone()))
        .chain(
            programme
                .iter()
                .map(|(d, v)| (d.clone(), "programmeName", v.clone())),
        )
        .chain(
            // Writer `i % WRITERS` recommended its every tenth doctor.
            doctors
                .iter()
                .enumerate()
                .filter(|(i, _)| (i / WRITERS).is_multiple_of(10))
                .map(|(_, d)| (d.clone(), "gmcStatus", "Rejected".to_string())),
        )
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    wait_for_latest(&client, &alias, pending, deadline).await;
    assert_eq!(
        common::alias_targets(&client, &alias).await,
        after,
        "still the new generation"
    );
    applier.stop().await;
    env.cleanup().await;
}

/// Waits until every `(doctor, field, value)` shows in `alias`, or fails
/// at `deadline` naming a few that never did.
async fn wait_for_latest(
    client: &rebuilder::search::SearchClient,
    alias: &str,
    mut pending: Vec<(String, &str, String)>,
    deadline: Instant,
) {
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (number, field, value) in pending {
            let doc = doc_of(client, alias, &number).await;
            if doc.as_ref().map(|d| &d[field]) != Some(&json!(value)) {
                still.push((number, field, value));
            }
        }
        pending = still;
        assert!(
            pending.is_empty() || Instant::now() < deadline,
            "{} doctors never showed their latest value in {alias}, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(3)]
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
