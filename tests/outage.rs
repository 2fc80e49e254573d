//! Tests that stop a real server for a while (`scripts/stack stop SERVER`).
//! They live in a test binary of their own: cargo runs test binaries one
//! after another, so no other test sees the outage, and the tests of this
//! binary take a lock so that they run one at a time. A guard starts the
//! server again even when an assertion fails.

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::time::{Duration, Instant};

use common::{count, TestEnv};
use live_helpers::{Applier, TcsPublisher};
use paused_run::PausedRun;
use rebuilder::rebuild::record::{RunOutcome, RunRecord};
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::json;
use service_helpers::Service;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A server stopped until dropped (or [`Outage::end`]ed).
struct Outage(&'static str, Instant);

impl Outage {
    fn of(server: &'static str) -> Self {
        let began = Instant::now();
        stack(&["stop", server]);
        Self(server, began)
    }

    /// Starts the server again; how long it was away (from the stop to
    /// healthy again).
    fn end(self) -> Duration {
        let began = self.1;
        drop(self);
        began.elapsed()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        stack(&["start", self.0]);
    }
}

/// Settings that make a run's consumption slow enough (small batches, a
/// small prefetch) for a server to go away while the stream is half
/// taken.
const SMALL_STEPS: [(&str, &str); 3] = [
    ("REBUILDER_RABBITMQ__PREFETCH", "100"),
    ("REBUILDER_RUN__MERGE_BATCH", "100"),
    ("REBUILDER_BULK__MAX_BATCH_DOCS", "100"),
];

/// A run paused before it takes the sync, with every message of the sync
/// published and waiting on the queue; returns the number of messages.
async fn paused_with_the_sync_queued(env: &TestEnv, spec: DatasetSpec) -> (PausedRun, u32) {
    let tcs = simulator_once(env, spec);
    let mut run = PausedRun::start_with(env, "tcs_merge", &SMALL_STEPS);
    run.wait_for("Failpoint reached", 180).await;
    tokio::time::timeout(Duration::from_secs(120), tcs)
        .await
        .expect("TCS publishes the sync")
        .unwrap()
        .expect("the simulator");
    let queue = &env.settings.rabbitmq.sync_data_queue;
    let (ready, _) = queue_state(env, queue).await;
    let prefetch = 100;
    (run, ready + prefetch)
}

/// Lets the run go on and returns once it has taken `share` of the queue.
async fn release_until_taken(env: &TestEnv, run: &PausedRun, total: u32, share: f64) -> u32 {
    let queue = &env.settings.rabbitmq.sync_data_queue;
    run.release();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ready, _) = queue_state(env, queue).await;
        let taken = total.saturating_sub(ready);
        if f64::from(taken) >= f64::from(total) * share {
            return taken;
        }
        assert!(
            Instant::now() < deadline,
            "the run took only {taken} of {total} messages:\n{}",
            run.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The run ended well and its index holds every doctor of `spec` exactly
/// as generated, once.
async fn assert_whole(
    env: &TestEnv,
    spec: &DatasetSpec,
    ended: (std::process::ExitStatus, String),
) -> RunRecord {
    let record = assert_run_succeeded(env, ended).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    assert_documents_match(&client, &alias, spec).await;
    assert_eq!(
        count(&client, &alias).await,
        spec.doctors().count() as u64,
        "one document per doctor"
    );
    let blamed = dead_lettered_for_indexing(env).await;
    assert_eq!(blamed, 0, "no record dead-lettered for the outage");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_sync_is_ridden_out_and_every_record_is_indexed_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let env = TestEnv::new("outage_sync");
    // The document checks read every document back: under 10,000.
    let spec = DatasetSpec::new(92, 9_000);
    seed(&env, &spec).await;
    let (run, total) = paused_with_the_sync_queued(&env, spec).await;
    let taken = release_until_taken(&env, &run, total, 0.05).await;
    let outage = Outage::of("rabbitmq");
    let away = outage.end();
    let started = Instant::now();
    let record = assert_whole(&env, &spec, run.finish(300).await).await;
    let counts = &record.counts;
    eprintln!(
        "fault: RabbitMQ restarted mid-sync after {taken} of {total} messages: away {:.1} s; run reconnected {} time(s), {} messages given again, ended {:.1} s after the broker was back; {} documents, every one as generated",
        away.as_secs_f64(),
        counts.tcs_reconnects,
        counts.tcs_redelivered,
        started.elapsed().as_secs_f64(),
        counts.docs_expected
    );
    assert!(
        counts.tcs_reconnects >= 1,
        "the run reconnected: {counts:?}"
    );
    assert!(
        counts.tcs_redelivered > 0,
        "the broker gave the unacked messages again: {counts:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_while_applying_live_updates_loses_none() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let mut env = TestEnv::new("outage_live");
    // Small steps, so the restart finds updates applied, in flight and queued.
    env.settings.live.batch_size = 5;
    env.settings.live.prefetch = 5;
    let spec = DatasetSpec::new(93, 600);
    baseline(&env, &spec).await;
    take_dead_letters(&env).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let trainees: Vec<_> = spec
        .doctors()
        // One TCS record each: a duplicated doctor's first record may be
        // the losing trainee, whose live update is rightly a noop.
        .filter(|d| d.category != Category::GmcOnly && d.tcs_messages.len() == 1)
        .collect();
    let applier = Applier::start(&env).await;
    let publisher = TcsPublisher::new(&env).await;
    for doctor in &trainees {
        let mut update = doctor.tcs_messages[0].clone();
        update["programmeName"] = json!("Across the restart");
        publisher.publish(update.to_string().as_bytes()).await;
    }
    publisher.close().await;
    let outage = Outage::of("rabbitmq");
    let before = count_marked(&client, &alias, "Across the restart").await;
    let away = outage.end();
    let back = Instant::now();
    // Updates sent once the broker is back reach the index too.
    let publisher = TcsPublisher::new(&env).await;
    for doctor in trainees.iter().take(50) {
        let mut update = doctor.tcs_messages[0].clone();
        update["programmeName"] = json!("After the restart");
        publisher.publish(update.to_string().as_bytes()).await;
    }
    publisher.close().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let expected_first = trainees.len() as u64 - 50;
    loop {
        let first = count_marked(&client, &alias, "Across the restart").await;
        let second = count_marked(&client, &alias, "After the restart").await;
        if first == expected_first && second == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "updates lost across the restart: {first} of {expected_first} and {second} of 50 applied"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "fault: RabbitMQ restarted while applying {} live updates ({before} applied when it stopped): away {:.1} s; all applied {:.1} s after it was back, and 50 sent after it",
        trainees.len(),
        away.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    let blamed = dead_lettered_for_indexing(&env).await;
    assert_eq!(blamed, 0);
    applier.stop().await;
    env.cleanup().await;
}

/// Documents of `target` whose programme is `marker`.
async fn count_marked(client: &rebuilder::search::SearchClient, target: &str, marker: &str) -> u64 {
    count_where(client, target, "programmeName.keyword", marker).await
}

/// Documents of `target` whose `field` is `value`.
async fn count_where(
    client: &rebuilder::search::SearchClient,
    target: &str,
    field: &str,
    value: &str,
) -> u64 {
    let (status, answer) = client
        .request(
            opensearch::http::Method::Post,
            &format!("/{target}/_count"),
            &[],
            Some(&json!({"query": {"term": {field: value}}})),
        )
        .await
        .expect("count");
    assert_eq!(status, 200, "{answer}");
    answer["count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_rabbitmq_while_the_broker_is_down_and_is_ready_once_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("outage_readyz");
    let service = Service::start(&env, &[]);
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["rabbitmq"]["ok"], true);

    let outage = Outage::of("rabbitmq");
    let (status, down) = service.get("/readyz").await;
    assert_eq!(status, 503, "{down}");
    assert_eq!(down["error"]["code"], "not_ready");
    let message = down["error"]["message"].as_str().unwrap();
    assert!(message.contains("RabbitMQ"), "{message}");
    assert!(
        !message.contains("OpenSearch") && !message.contains("MongoDB"),
        "{message}"
    );
    assert_eq!(down["checks"]["rabbitmq"]["ok"], false);
    assert_eq!(down["checks"]["opensearch"]["ok"], true);
    assert_eq!(down["checks"]["mongodb"]["ok"], true);
    let (status, alive) = service.get("/healthz").await;
    assert_eq!(
        (status, alive["status"].as_str()),
        (200, Some("ok")),
        "still alive"
    );

    drop(outage);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, ready) = service.get("/readyz").await;
        if status == 200 {
            assert_eq!(ready["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.cleanup().await;
}

/// The alias holders of the test's families, by alias.
async fn holders(env: &TestEnv) -> Vec<(String, Vec<String>)> {
    let client = env.search().await;
    let mut out = Vec::new();
    for alias in [
        "masterdoctorindex",
        "current_connections",
        "recommendations",
    ] {
        let alias = env.name(alias);
        let targets = common::alias_targets(&client, &alias).await;
        out.push((alias, targets));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opensearch_restart_mid_load_is_ridden_out_by_the_bulk_retries() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let env = TestEnv::new("outage_os_load");
    let spec = DatasetSpec::new(94, 6_000);
    baseline(&env, &spec).await;
    take_dead_letters(&env).await;
    let before = holders(&env).await;

    let (run, total) = paused_with_the_sync_queued(&env, spec).await;
    let taken = release_until_taken(&env, &run, total, 0.05).await;
    let outage = Outage::of("opensearch");
    let away = outage.end();
    let started = Instant::now();
    let record = assert_whole(&env, &spec, run.finish(300).await).await;
    let bulk = record.bulk.clone();
    eprintln!(
        "fault: OpenSearch restarted mid-load after {taken} of {total} messages: away {:.1} s; the run resumed: {} items retried, {} requests failed, concurrency {}..{} (final {}), ended {:.1} s after the node was back; {} documents, every one as generated",
        away.as_secs_f64(),
        bulk.retried_items,
        bulk.failed_requests,
        bulk.min_concurrency_seen,
        bulk.max_concurrency,
        bulk.final_concurrency,
        started.elapsed().as_secs_f64(),
        record.counts.docs_expected
    );
    assert!(bulk.retried_items > 0, "writes were retried: {bulk:?}");
    let promotion = record.promotion.expect("promoted");
    let after = holders(&env).await;
    for ((alias, was), (_, now)) in before.iter().zip(&after) {
        assert_ne!(was, now, "{alias} moved to the new generation");
        assert_eq!(now.len(), 1, "{alias} on one index");
    }
    assert_eq!(after[0].1[0], promotion.master.to);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_restart_mid_gmc_read_resumes_after_the_last_id() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let env = TestEnv::new("outage_gmc_read");
    let spec = DatasetSpec::new(95, 5_000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    // Paused after the first page of doctorsForDB, its cursor open; the
    // server goes away there, and the read goes on while it is away.
    let mut run = PausedRun::start(&env, "gmc_page");
    run.wait_for("Failpoint reached", 120).await;
    let outage = Outage::of("mongo");
    run.release();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let away = outage.end();
    let started = Instant::now();
    let ended = run.finish(300).await;
    tcs.await.unwrap().unwrap();
    let log = ended.1.clone();
    let record = assert_whole(&env, &spec, ended).await;
    let retried_outcomes = log.contains("Retrying the outcome aggregation");
    eprintln!(
        "fault: MongoDB restarted mid GMC read: away {:.1} s; doctorsForDB read resumed {} time(s) after the last id, outcome aggregation {}; run ended {:.1} s after the server was back; {} documents, every one as generated",
        away.as_secs_f64(),
        record.counts.gmc_read_resumes,
        if retried_outcomes { "run again" } else { "done before the cut" },
        started.elapsed().as_secs_f64(),
        record.counts.docs_expected
    );
    assert!(
        record.counts.gmc_read_resumes >= 1,
        "the read of doctorsForDB was cut and resumed: {:?}",
        record.counts
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_restart_while_applying_gmc_changes_resumes_the_streams_and_loses_none() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let env = TestEnv::new("outage_streams");
    let spec = DatasetSpec::new(96, 600);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let in_gmc: Vec<String> = spec
        .doctors()
        .filter(|d| matches!(d.category, Category::Both | Category::GmcOnly))
        .map(|d| d.gmc_number.clone())
        .collect();
    assert!(in_gmc.len() > 250, "{}", in_gmc.len());
    let (first, second) = in_gmc.split_at(200);
    let second = &second[..50];

    let applier = Applier::start(&env).await;
    let (doctors, _) = live_helpers::gmc_collections(&env).await;
    for number in first {
        doctors
            .update_one(
                bson::doc! {"_id": number},
                bson::doc! {"$set": {"designatedBodyCode": "1-BEFORE"}},
            )
            .await
            .unwrap();
    }
    let outage = Outage::of("mongo");
    let applied_before = count_where(&client, &alias, "designatedBody.keyword", "1-BEFORE").await;
    let away = outage.end();
    let back = Instant::now();
    let (doctors, _) = live_helpers::gmc_collections(&env).await;
    for number in second {
        doctors
            .update_one(
                bson::doc! {"_id": number},
                bson::doc! {"$set": {"designatedBodyCode": "1-AFTER"}},
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let before = count_where(&client, &alias, "designatedBody.keyword", "1-BEFORE").await;
        let after = count_where(&client, &alias, "designatedBody.keyword", "1-AFTER").await;
        if before == first.len() as u64 && after == second.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GMC changes lost across the restart: {before} of {} and {after} of {} applied",
            first.len(),
            second.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "fault: MongoDB restarted while applying {} GMC changes ({applied_before} applied when it stopped): away {:.1} s; the streams resumed from their tokens, all applied {:.1} s after it was back, and {} made after it",
        first.len(),
        away.as_secs_f64(),
        back.elapsed().as_secs_f64(),
        second.len()
    );
    applier.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opensearch_outage_longer_than_the_retries_fails_the_run_cleanly() {
    let _one = ONE_AT_A_TIME.lock().await;
    logs();
    let env = TestEnv::new("outage_os_long");
    let spec = DatasetSpec::new(97, 3_000);
    seed(&env, &spec).await;
    let tcs = simulator(
        &env,
        spec,
        rebuilder_dev::simulator::SimulatorOptions::default(),
    );
    rebuild(&env).await.expect("the baseline run");
    take_dead_letters(&env).await;
    let before = holders(&env).await;

    // Two retries (100 ms, 200 ms): the outage outlasts them by far.
    let mut run = PausedRun::start_with(
        &env,
        "tcs_merge",
        &[
            SMALL_STEPS[0],
            SMALL_STEPS[1],
            SMALL_STEPS[2],
            ("REBUILDER_RETRY__MAX_RETRIES", "2"),
        ],
    );
    run.wait_for("Failpoint reached", 120).await;
    let outage = Outage::of("opensearch");
    let cut = Instant::now();
    run.release();
    let (status, log) = run.finish(180).await;
    let failed_after = cut.elapsed();
    let away = outage.end();
    assert!(!status.success(), "the run must fail:\n{log}");
    assert!(
        log.contains("did not take the writes through every retry"),
        "the run names the cause:\n{}",
        log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    let record = history(&env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(record.outcome, RunOutcome::Failed);
    assert_eq!(holders(&env).await, before, "no alias moved");
    let blamed = dead_lettered_for_indexing(&env).await;
    assert_eq!(blamed, 0, "no record dead-lettered for the outage");
    // The next run deletes what the failed one could not (OpenSearch was
    // away when it tried) and is whole.
    let next = rebuild(&env).await.expect("the next run");
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
    assert_documents_match(&env.search().await, &env.name("masterdoctorindex"), &spec).await;
    eprintln!(
        "fault: OpenSearch away {:.1} s, longer than the run's retries: failed cleanly {:.1} s after the cut ({}); the next run deleted {} leftover generation(s) and promoted",
        away.as_secs_f64(),
        failed_after.as_secs_f64(),
        record.error.unwrap_or_default().chars().take(160).collect::<String>(),
        next.orphans_deleted.len()
    );
    tcs.abort();
    env.cleanup().await;
}
