//! The handover between a rebuild and the live applier against the real
//! servers: each case of the review that found changes lost at the swap,
//! made to happen at its exact moment with the failpoints, ends with every
//! change in the generation readers are served and the promotion made.
//!
//! - case 1: the applier stopped while the run swaps (it was paused with a
//!   change in hand);
//! - case 2: MongoDB unreachable for the applier for 2 s at the pause
//!   (through a Toxiproxy proxy the test makes);
//! - case 3: the applier's lease expired while it was mid-batch (written
//!   to the old generation, not yet journaled) and the run sealed and
//!   swapped meanwhile;
//! - case 4: live creations replayed during the catch-up while other
//!   writers flood the throttled node (real 429s): the exact-count gate
//!   passes and the run promotes (`tests/live_precedence.rs` checks the
//!   counts across retried answers themselves);
//! - case 5: two trainees with one GMC number updated live, during a
//!   rebuild, in the losing order.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::doc;
use common::{alias_targets, count, throttled_opensearch_url, TestEnv};
use live_helpers::{doc_of, wait_for_doc, Applier, TcsPublisher};
use paused_run::PausedRun;
use rebuilder::config::Secret;
use rebuilder::domain::{parse_tcs_message, TcsMessage};
use rebuilder::handover::{Handover, Marker, MongoStore, Phase};
use rebuilder_dev::datagen::{Category, DatasetSpec, GeneratedDoctor};
use run_helpers::*;
use serde_json::{json, Value};

/// The handover marker of the test's database.
async fn marker(env: &TestEnv) -> Marker {
    let mongo = env.mongo().await;
    Handover::new(MongoStore::new(&mongo, &env.settings.mongodb))
        .marker()
        .await
        .expect("the marker reads")
}

/// Trainees with one TCS record, in both sources.
fn trainees(spec: &DatasetSpec) -> Vec<GeneratedDoctor> {
    spec.doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .collect()
}

/// Publishes an update of each trainee's programme to `value`.
async fn publish_programme(env: &TestEnv, doctors: &[GeneratedDoctor], value: &str) {
    let publisher = TcsPublisher::new(env).await;
    for d in doctors {
        let mut update = d.tcs_messages[0].clone();
        update["programmeName"] = json!(value);
        publisher.publish(update.to_string().as_bytes()).await;
    }
    publisher.close().await;
}

/// How many of `doctors` show `value` as their programme behind `target`.
async fn showing(env: &TestEnv, target: &str, doctors: &[GeneratedDoctor], value: &str) -> usize {
    let client = env.search().await;
    let mut n = 0;
    for d in doctors {
        if doc_of(&client, target, &d.gmc_number)
            .await
            .is_some_and(|doc| doc["programmeName"] == value)
        {
            n += 1;
        }
    }
    n
}

/// Waits until every one of `doctors` shows `value` behind `target`.
async fn wait_all_showing(
    env: &TestEnv,
    target: &str,
    doctors: &[GeneratedDoctor],
    value: &str,
    secs: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = showing(env, target, doctors, value).await;
        if n == doctors.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {} changes {value:?} reached {target}: changes were lost",
            doctors.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The run that just ended succeeded and promoted.
async fn assert_promoted(
    env: &TestEnv,
    ended: (std::process::ExitStatus, String),
    before: &[String],
) {
    assert_run_succeeded(env, ended).await;
    let client = env.search().await;
    let now = alias_targets(&client, &env.name("masterdoctorindex")).await;
    assert_ne!(now, before, "the aliases moved to the new generation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_1_an_applier_stopped_while_the_run_swaps_hands_its_change_back() {
    logs();
    let env = TestEnv::new("handover_stop");
    let spec = DatasetSpec::new(71, 300);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = alias_targets(&client, &alias).await;
    let trainee = trainees(&spec).remove(0);
    let applier = Applier::start(&env).await;

    let tcs = simulator_once(&env, spec);
    let mut run = PausedRun::start(&env, "before_aliases");
    run.wait_for("Failpoint reached", 180).await;
    tcs.await.unwrap().unwrap();
    assert_eq!(
        marker(&env).await.phase,
        Phase::Sealed,
        "the journal is sealed"
    );

    // A change comes while the run swaps: the applier takes it, meets the
    // sealed journal, waits; then it is stopped (a rolling deploy).
    publish_programme(&env, std::slice::from_ref(&trainee), "Sent while sealed").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    applier.stop().await;
    let old = doc_of(&client, &alias, &trainee.gmc_number).await.unwrap();
    assert_ne!(
        old["programmeName"], "Sent while sealed",
        "nothing is written while the run swaps"
    );
    // The change waits on its queue, unacked.
    wait_queue_settled(&env, &env.settings.rabbitmq.update_queue, 1).await;

    run.release();
    assert_promoted(&env, run.finish(120).await, &before).await;
    let applier = Applier::start(&env).await;
    wait_for_doc(
        &client,
        &alias,
        &trainee.gmc_number,
        Duration::from_secs(30),
        |d| d.is_some_and(|d| d["programmeName"] == "Sent while sealed"),
    )
    .await;
    applier.stop().await;
    env.cleanup().await;
}

/// A Toxiproxy proxy to MongoDB of the test's own, removed when dropped.
struct MongoProxy {
    name: String,
    listen: String,
}

const TOXIPROXY: &str = "http://127.0.0.1:8474";

impl MongoProxy {
    async fn new(env: &TestEnv) -> Self {
        let name = format!("mongo_{}", env.id);
        let answer = reqwest::Client::new()
            .post(format!("{TOXIPROXY}/proxies"))
            .json(&json!({"name": name, "listen": "127.0.0.1:0", "upstream": "127.0.0.1:27017", "enabled": true}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("Toxiproxy does not answer on 127.0.0.1:8474 ({e}); start it with `scripts/stack start`"));
        assert!(
            answer.status().is_success(),
            "the proxy is made: {answer:?}"
        );
        let proxy: Value = answer.json().await.unwrap();
        let listen = proxy["listen"].as_str().expect("its address").to_string();
        Self { name, listen }
    }

    async fn enable(&self, enabled: bool) {
        let answer = reqwest::Client::new()
            .post(format!("{TOXIPROXY}/proxies/{}", self.name))
            .json(&json!({"enabled": enabled}))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success());
    }

    fn uri(&self) -> String {
        format!(
            "mongodb://{}/?retryWrites=false&directConnection=true",
            self.listen
        )
    }
}

impl Drop for MongoProxy {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let _ = std::process::Command::new("curl")
                .args(["-s", "-X", "DELETE", &format!("{TOXIPROXY}/proxies/{name}")])
                .status();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_2_mongodb_unreachable_for_two_seconds_at_the_pause_loses_nothing() {
    logs();
    let env = TestEnv::new("handover_blip");
    let spec = DatasetSpec::new(72, 400);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = alias_targets(&client, &alias).await;
    let trainees = trainees(&spec);
    let (early, late) = trainees.split_at(trainees.len() / 2);

    // The applier reaches MongoDB through a proxy; the run directly.
    let proxy = MongoProxy::new(&env).await;
    let mut applier_env = TestEnv {
        settings: env.settings.clone(),
        id: env.id.clone(),
    };
    applier_env.settings.mongodb.uri = Secret::new(proxy.uri());
    applier_env.settings.live.batch_size = 10;
    let applier = Applier::start(&applier_env).await;

    let tcs = simulator_once(&env, spec);
    let mut run = PausedRun::start(&env, "pause_requested");
    run.wait_for("Recording live changes", 180).await;
    publish_programme(&env, early, "Before the blip").await;
    run.wait_for("Failpoint reached", 180).await;
    tcs.await.unwrap().unwrap();

    // Changes in flight, MongoDB gone for the applier, the run waiting for
    // the pause: the applier must neither skip the journal nor ack.
    publish_programme(&env, late, "Around the blip").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.enable(false).await;
    run.release();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.enable(true).await;

    assert_promoted(&env, run.finish(180).await, &before).await;
    wait_all_showing(&env, &alias, early, "Before the blip", 60).await;
    wait_all_showing(&env, &alias, late, "Around the blip", 60).await;
    eprintln!(
        "case 2: {} changes before and {} around a 2 s MongoDB blip at the pause: none lost",
        early.len(),
        late.len()
    );
    applier.stop().await;
    env.cleanup().await;
}

/// `rebuilder live` as a child process, with failpoints.
struct LiveChild {
    child: Child,
    log: PathBuf,
}

impl LiveChild {
    fn start(env: &TestEnv, failpoints: &str) -> Self {
        let log = std::env::temp_dir().join(format!("{}-live.log", env.id));
        let child = Command::new(env!("CARGO_BIN_EXE_rebuilder"))
            .arg("live")
            .envs(child_env(env))
            .env("FAILPOINTS", failpoints)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("rebuilder live starts");
        Self { child, log }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log says `what` at least `times` times.
    async fn wait_for(&mut self, what: &str, times: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if text.matches(what).count() >= times {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the applier ended ({status}) before logging {what:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the applier did not log {what:?} in {secs} s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LiveChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_a_batch_in_flight_when_the_lease_expires_and_the_run_swaps_is_given_again() {
    logs();
    let env = TestEnv::new("handover_expired");
    let spec = DatasetSpec::new(73, 300);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = alias_targets(&client, &alias).await;
    let trainee = trainees(&spec).remove(0);
    let release = std::env::temp_dir().join(format!("{}-live.go", env.id));
    let _ = std::fs::remove_file(&release);
    let mut applier = LiveChild::start(&env, &format!("live_written=until:{}", release.display()));
    applier.wait_for("Live applier active", 1, 60).await;
    // Its queue consumer is open once the queue exists with a consumer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_state(&env, &env.settings.rabbitmq.update_queue)
        .await
        .1
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the applier never consumed:\n{}",
            applier.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let tcs = simulator_once(&env, spec);
    let mut run = PausedRun::start_with(
        &env,
        "no_such_point",
        &[("REBUILDER_LIVE__PAUSE_TIMEOUT_SECS", "3")],
    );
    run.wait_for("Recording live changes", 180).await;
    // The change is written to the live (old) generation, and the applier
    // stops there, before journaling and acking it.
    publish_programme(
        &env,
        std::slice::from_ref(&trainee),
        "In flight at the seal",
    )
    .await;
    applier.wait_for("Failpoint reached", 1, 60).await;
    // Its lease expires under it (taken over by a holder long gone).
    let mongo = env.mongo().await;
    let leases = mongo
        .database(env.settings.mongodb.state_database())
        .collection::<bson::Document>(&env.settings.mongodb.lease_collection);
    let past = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 1000);
    leases
        .update_one(
            doc! {"_id": "live"},
            doc! {"$set": {"runId": "gone-applier", "expiresAt": past}},
        )
        .await
        .unwrap();

    // The run seals and swaps without it.
    assert_promoted(&env, run.finish(180).await, &before).await;
    tcs.await.unwrap().unwrap();
    let served = doc_of(&client, &alias, &trainee.gmc_number).await.unwrap();
    assert_ne!(served["programmeName"], "In flight at the seal");

    // Let the applier go on: its journal is closed, so it must not ack; the
    // change comes again and reaches the generation now served.
    std::fs::write(&release, b"go").unwrap();
    wait_for_doc(
        &client,
        &alias,
        &trainee.gmc_number,
        Duration::from_secs(90),
        |d| d.is_some_and(|d| d["programmeName"] == "In flight at the seal"),
    )
    .await;
    let log = applier.text();
    assert!(
        log.contains("handed back"),
        "the applier says it handed the batch back:\n{log}"
    );
    drop(applier);
    let _ = std::fs::remove_file(&release);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_5_the_losing_trainee_updated_live_during_a_rebuild_does_not_overwrite_the_winner() {
    logs();
    let env = TestEnv::new("handover_precedence");
    let spec = DatasetSpec::new(75, 1500);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = alias_targets(&client, &alias).await;
    let duplicated: Vec<GeneratedDoctor> = spec
        .doctors()
        .filter(|d| d.category != Category::GmcOnly && d.tcs_messages.len() == 2)
        .collect();
    assert!(!duplicated.is_empty(), "the data has duplicated trainees");
    let rank = |body: &Value| match parse_tcs_message(body.to_string().as_bytes()) {
        Ok(TcsMessage::Record(_, record)) => record.precedence(),
        other => panic!("a record: {other:?}"),
    };
    let applier = Applier::start(&env).await;
    let tcs = simulator_once(&env, spec);
    let mut run = PausedRun::start(&env, "pause_requested");
    run.wait_for("Recording live changes", 180).await;
    // During the run: the winner's update, then the loser's.
    let publisher = TcsPublisher::new(&env).await;
    for d in &duplicated {
        let (mut winner, mut loser) = (d.tcs_messages[0].clone(), d.tcs_messages[1].clone());
        if rank(&winner) < rank(&loser) {
            std::mem::swap(&mut winner, &mut loser);
        }
        winner["programmeName"] = json!("Winner live");
        loser["programmeName"] = json!("Loser live");
        publisher.publish(winner.to_string().as_bytes()).await;
        publisher.publish(loser.to_string().as_bytes()).await;
    }
    publisher.close().await;
    run.wait_for("Failpoint reached", 180).await;
    tcs.await.unwrap().unwrap();
    run.release();
    assert_promoted(&env, run.finish(180).await, &before).await;
    wait_all_showing(&env, &alias, &duplicated, "Winner live", 60).await;
    // The loser's update was taken and acked (nothing waits), and lost to
    // the winner on purpose: the queue is empty.
    let (ready, _) = queue_state(&env, &env.settings.rabbitmq.update_queue).await;
    assert_eq!(ready, 0);
    applier.stop().await;
    env.cleanup().await;
}

/// Bulk writes of filler into a scratch index of the throttled node until
/// `stop`, so that the run's own requests meet real 429s.
async fn flood(
    url: String,
    index: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    let client = reqwest::Client::new();
    let mut body = String::new();
    for i in 0..500 {
        body.push_str(&format!(
            "{{\"index\":{{}}}}\n{{\"n\":{i},\"pad\":\"{}\"}}\n",
            "x".repeat(200)
        ));
    }
    let mut throttled = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Ok(answer) = client
            .post(format!("{url}/{index}/_bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await
        {
            let whole = answer.status().as_u16() == 429;
            let text = answer.text().await.unwrap_or_default();
            throttled += if whole {
                500
            } else {
                text.matches("\"status\":429").count() as u64
            };
        }
    }
    throttled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_4_live_creations_replayed_through_429s_keep_the_exact_count_and_promote() {
    logs();
    let mut env = TestEnv::new("handover_429");
    env.settings.opensearch.url = throttled_opensearch_url();
    let spec = DatasetSpec::new(74, 600);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let before = alias_targets(&client, &alias).await;
    let served_before = count(&client, &alias).await;
    let applier = Applier::start(&env).await;

    let tcs = simulator_once(&env, spec);
    // The run keeps the default retry policy: its own base load meets 429s
    // on this one-thread node too, and a policy short enough for the flood
    // to spend it for sure (one retry) failed that load on a slower
    // machine. The flood can still outlast the policy during the replay
    // (CI's run of stop 29 left 90 creations out that way): a replayed
    // change the node kept turning away must be sent again until it lands.
    let mut run = PausedRun::start(&env, "catch_up");
    run.wait_for("Failpoint reached", 180).await;
    tcs.await.unwrap().unwrap();
    // Trainees TCS did not have at the sync: each update creates a document.
    let created: Vec<String> = (0..300).map(|i| format!("98{i:05}")).collect();
    let publisher = TcsPublisher::new(&env).await;
    for (i, number) in created.iter().enumerate() {
        let body = json!({
            "tcsPersonId": 90_000_000 + i,
            "gmcReferenceNumber": number,
            "doctorFirstName": "New",
            "doctorLastName": "Trainee",
            "programmeName": "Created live",
            "programmeMembershipStartDate": "2025-08-01",
        });
        publisher.publish(body.to_string().as_bytes()).await;
    }
    publisher.close().await;
    for number in &created {
        wait_for_doc(&client, &alias, number, Duration::from_secs(60), |d| {
            d.is_some()
        })
        .await;
    }
    // The replay meets a node busy with other writers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(flood(
                env.settings.opensearch.url.clone(),
                env.name("flood"),
                stop.clone(),
            ))
        })
        .collect();
    run.release();
    let ended = run.finish(300).await;
    let copied_again = ended.1.matches("copying again").count();
    let refused_again = ended.1.matches("sending the chunk again").count();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut throttled = 0;
    for f in floods {
        throttled += f.await.unwrap();
    }
    assert_promoted(&env, ended, &before).await;
    let record = history(&env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.catch_up.replayed, 300,
        "every live creation replayed"
    );
    assert_eq!(record.catch_up.failed, 0, "no replayed change was refused");
    let served = count(&client, &alias).await;
    assert_eq!(
        served,
        served_before + 300,
        "the exact count: the base plus the creations"
    );
    eprintln!(
        "case 4: 300 live creations replayed onto the new generation while 3 writers flooded the node ({throttled} of their documents turned away with 429; the recommendation copy made again {copied_again} times; replay chunks sent again once their retries were spent: {refused_again}): promoted, {served} documents"
    );
    applier.stop().await;
    env.cleanup().await;
}

/// A change-stream reader that dies (a panic, `FAILPOINTS`) is not left
/// dead while the other sources go on: the applier starts again, resumes
/// the stream from its stored position, and the change is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_reader_that_panics_is_started_again_and_loses_no_change() {
    logs();
    let env = TestEnv::new("live_reader_panic");
    let spec = DatasetSpec::new(76, 300);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let doctors_known: Vec<GeneratedDoctor> = spec
        .doctors()
        .filter(|d| d.category == Category::Both)
        .take(2)
        .collect();
    let (a, b) = (&doctors_known[0], &doctors_known[1]);
    let (doctors, _) = live_helpers::gmc_collections(&env).await;
    // The second stream event the process meets panics its reader.
    let mut applier = LiveChild::start(&env, "live_stream_event=panic:2");
    applier.wait_for("Live applier active", 1, 60).await;

    // A change of doctor A, made again until it shows: a stream opened
    // without a stored position starts from the moment it opens.
    let mut k = 0;
    'shown: loop {
        k += 1;
        assert!(
            k <= 30,
            "doctor A's change never showed:\n{}",
            applier.text()
        );
        let body = format!("1-LIVEA{k}");
        doctors
            .update_one(
                doc! {"_id": &a.gmc_number},
                doc! {"$set": {"designatedBodyCode": &body}},
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let shown = doc_of(&client, &alias, &a.gmc_number).await;
            if shown.is_some_and(|d| d["designatedBody"] == body.as_str()) {
                break 'shown;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Then one of doctor B: by now the reader has met at least two events.
    doctors
        .update_one(
            doc! {"_id": &b.gmc_number},
            doc! {"$set": {"designatedBodyCode": "1-LIVEB"}},
        )
        .await
        .unwrap();
    wait_for_doc(
        &client,
        &alias,
        &b.gmc_number,
        Duration::from_secs(120),
        |d| d.is_some_and(|d| d["designatedBody"] == "1-LIVEB"),
    )
    .await;
    let log = applier.text();
    assert!(
        log.contains("failpoint live_stream_event: a panic on purpose"),
        "the reader panicked:\n{log}"
    );
    assert!(
        log.contains("stopped: it panicked")
            && log.contains("The live applier stopped; it starts again."),
        "the applier said its reader died and started again:\n{log}"
    );
    drop(applier);
    env.cleanup().await;
}
