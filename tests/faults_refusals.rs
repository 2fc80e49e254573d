//! The fault suite, part two: the servers refuse the run. OpenSearch puts a
//! write block on the new generation, or makes it read-only because the
//! disk passed the flood-stage watermark; another run steals the lease. In
//! each case `rebuilder run` (a child process) is paused at a failpoint
//! (`FAILPOINTS=<point>=until:<file>`), the test changes the world, then
//! lets the run go on. The run must fail cleanly: a message that names the
//! cause, the aliases untouched, its half-built generation deleted, no TCS
//! record dead-lettered for the index's fault, and the next run whole.
//!
//! The flood stage is real: the disk-threshold monitor of the second node
//! (`opensearch-429`, a cluster of its own that only this binary and the
//! throttling tests use) is given a 1% watermark, and OpenSearch itself
//! marks the indices read-only. The watermark is put back, and the blocks
//! lifted, even when an assertion fails.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bson::doc;
use common::{alias_targets, throttled_opensearch_url, TestEnv};
use engine_helpers::{all_aliases, engine};
use opensearch::http::Method;
use paused_run::PausedRun;
use rebuilder::rebuild::record::{RunOutcome, RunRecord};
use rebuilder::search::{Family, GenerationState, SearchClient};
use rebuilder::state::lease::{lease_collection, read_lease, REBUILD_LEASE};
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::simulator::SimulatorOptions;
use run_helpers::*;
use serde_json::{json, Value};

/// The second node is shared by the test that throttles it and the one that
/// fills its disk: one at a time.
static NODE_429: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every alias of the test and the index holding it.
async fn alias_holders(client: &SearchClient, env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let engine = engine(env).await;
    let mut holders = BTreeMap::new();
    for (alias, _) in all_aliases(&engine) {
        let targets = alias_targets(client, &alias).await;
        holders.insert(alias, targets);
    }
    holders
}

/// The master generation the paused run is making (building, or built and
/// validated but serving nothing yet).
async fn building_master(env: &TestEnv) -> String {
    let engine = engine(env).await;
    let building: Vec<String> = engine
        .list_generations()
        .await
        .unwrap()
        .into_iter()
        .filter(|g| {
            g.family == Family::Master
                && !g.holds_alias()
                && matches!(
                    g.state(),
                    GenerationState::Building | GenerationState::Ready
                )
        })
        .map(|g| g.name)
        .collect();
    assert_eq!(
        building.len(),
        1,
        "one generation in the making: {building:?}"
    );
    building.into_iter().next().unwrap()
}

async fn put(client: &SearchClient, path: &str, body: Value) {
    let (status, answer) = client
        .request(Method::Put, path, &[], Some(&body))
        .await
        .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    assert_eq!(status, 200, "PUT {path}: {answer}");
}

async fn index_exists(client: &SearchClient, index: &str) -> bool {
    let (status, _) = client
        .request(Method::Head, &format!("/{index}"), &[], None)
        .await
        .unwrap();
    status == 200
}

/// The run as recorded, by the id in its log.
async fn recorded(env: &TestEnv) -> RunRecord {
    history(env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("the run is recorded")
}

/// The run failed cleanly: non-zero exit, `cause` named in its log and its
/// record, the aliases as they were, no half-built generation left, no record
/// dead-lettered for the index's fault.
async fn assert_failed_cleanly(
    env: &TestEnv,
    client: &SearchClient,
    (status, log): (ExitStatus, String),
    cause: &str,
    before: &BTreeMap<String, Vec<String>>,
    generation: &str,
) -> RunRecord {
    assert!(!status.success(), "the run must fail ({status}):\n{log}");
    assert!(
        log.contains(cause),
        "the run's log names the cause ({cause:?}):\n{}",
        log.lines().rev().take(15).collect::<Vec<_>>().join("\n")
    );
    let record = recorded(env).await;
    assert_eq!(record.outcome, RunOutcome::Failed, "{:?}", record.error);
    let error = record.error.clone().unwrap_or_default();
    assert!(error.contains(cause), "the record names the cause: {error}");
    assert!(record.promotion.is_none(), "nothing promoted");
    assert_eq!(
        &alias_holders(client, env).await,
        before,
        "the aliases are untouched"
    );
    // A generation still building is deleted; one built and validated
    // (the run stopped at promotion) may stay, ready and serving nothing,
    // until retention removes it like any generation that is not served.
    if index_exists(client, generation).await {
        let left = engine(env)
            .await
            .list_generations()
            .await
            .unwrap()
            .into_iter()
            .find(|g| g.name == generation)
            .unwrap();
        assert!(
            left.state() == GenerationState::Ready && !left.holds_alias(),
            "the run left {generation} half-built or serving: {left:?}"
        );
    }
    let blamed = dead_lettered_for_indexing(env).await;
    assert_eq!(
        blamed, 0,
        "no TCS record is dead-lettered for the index's fault: {blamed} were"
    );
    record
}

/// A test's world with one good run behind it and a second run paused at
/// `point` (its master generation made): what the refusal tests change.
struct Paused {
    /// The simulator, answering every sync (of the paused run and the next).
    tcs: tokio::task::JoinHandle<
        Result<Vec<rebuilder_dev::simulator::SyncServed>, rebuilder_dev::simulator::SimulatorError>,
    >,
    client: SearchClient,
    /// The aliases as the first run left them.
    before: BTreeMap<String, Vec<String>>,
    run: PausedRun,
    /// The paused run's master generation.
    generation: String,
}

async fn first_run_then_paused_at(env: &TestEnv, spec: DatasetSpec, point: &str) -> Paused {
    seed(env, &spec).await;
    let tcs = simulator(env, spec, SimulatorOptions::default());
    let first = rebuild(env).await.expect("the first run");
    assert_eq!(first.outcome, RunOutcome::Succeeded, "{:?}", first.error);
    let _ = take_dead_letters(env).await;
    let client = env.search().await;
    let before = alias_holders(&client, env).await;
    let mut run = PausedRun::start(env, point);
    run.wait_for("Failpoint reached", 180).await;
    let generation = building_master(env).await;
    Paused {
        tcs,
        client,
        before,
        run,
        generation,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_block_on_the_new_generation_fails_the_run_naming_the_block() {
    logs();
    let env = TestEnv::new("refuse_block");
    let spec = DatasetSpec::new(81, 600);
    let Paused {
        tcs,
        client,
        before,
        run,
        generation,
    } = first_run_then_paused_at(&env, spec, "tcs_merge").await;
    put(
        &client,
        &format!("/{generation}/_settings"),
        json!({"index.blocks.write": true}),
    )
    .await;
    let started = Instant::now();
    run.release();
    let ended = run.finish(120).await;
    let failed_after = started.elapsed();
    let record = assert_failed_cleanly(
        &env,
        &client,
        ended,
        "index.blocks.write",
        &before,
        &generation,
    )
    .await;
    eprintln!(
        "fault: write block on {generation}: run failed {:.1} s after the block, error: {}",
        failed_after.as_secs_f64(),
        record.error.unwrap_or_default()
    );

    let next = rebuild(&env).await.expect("the next run");
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
    let master = env.name("masterdoctorindex");
    assert_documents_match(&client, &master, &spec).await;
    tcs.abort();
    env.cleanup().await;
}

/// The flood-stage watermark of the second node, put back when dropped.
struct FloodStage {
    client: SearchClient,
}

const WATERMARKS: [&str; 5] = [
    "cluster.routing.allocation.disk.threshold_enabled",
    "cluster.info.update.interval",
    "cluster.routing.allocation.disk.watermark.low",
    "cluster.routing.allocation.disk.watermark.high",
    "cluster.routing.allocation.disk.watermark.flood_stage",
];

impl FloodStage {
    /// Every disk on the node is "full": more than 1% used.
    async fn raise(client: SearchClient) -> Self {
        let values = ["true", "10s", "1%", "1%", "1%"];
        let transient: serde_json::Map<String, Value> = WATERMARKS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        put(
            &client,
            "/_cluster/settings",
            json!({ "transient": transient }),
        )
        .await;
        Self { client }
    }
}

impl Drop for FloodStage {
    fn drop(&mut self) {
        let client = self.client.clone();
        let transient: serde_json::Map<String, Value> = WATERMARKS
            .iter()
            .map(|k| (k.to_string(), Value::Null))
            .collect();
        // Drop cannot await; a thread of its own with its own runtime.
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                for (path, body) in [
                    ("/_cluster/settings", json!({ "transient": transient })),
                    (
                        "/_all/_settings",
                        json!({"index.blocks.read_only_allow_delete": null}),
                    ),
                    (
                        "/_cluster/settings",
                        json!({"transient": {"cluster.blocks.create_index": null},
                               "persistent": {"cluster.blocks.create_index": null}}),
                    ),
                ] {
                    if let Err(e) = client.request(Method::Put, path, &[], Some(&body)).await {
                        eprintln!("could not undo the flood stage ({path}): {e}");
                    }
                }
            })
        })
        .join()
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_run_fail_naming_the_flood_stage_watermark() {
    let _node = NODE_429.lock().await;
    logs();
    let mut env = TestEnv::new("refuse_flood");
    env.settings.opensearch.url = throttled_opensearch_url();
    let spec = DatasetSpec::new(82, 300);
    let Paused {
        tcs,
        client,
        before,
        run,
        generation,
    } = first_run_then_paused_at(&env, spec, "tcs_merge").await;
    let flood = FloodStage::raise(client.clone()).await;
    // OpenSearch's disk monitor marks the indices read-only on its own
    // schedule (every 10 s at the shortest).
    let raised = Instant::now();
    let deadline = raised + Duration::from_secs(90);
    loop {
        let (_, settings) = client
            .request(
                Method::Get,
                &format!("/{generation}/_settings"),
                &[("flat_settings", "true")],
                None,
            )
            .await
            .unwrap();
        if settings[&generation]["settings"]["index.blocks.read_only_allow_delete"] == "true" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OpenSearch did not mark {generation} read-only: {settings}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let blocked_after = raised.elapsed();
    let started = Instant::now();
    run.release();
    let ended = run.finish(120).await;
    let failed_after = started.elapsed();
    let record =
        assert_failed_cleanly(&env, &client, ended, "flood-stage", &before, &generation).await;
    eprintln!(
        "fault: flood stage: OpenSearch blocked the generation {:.1} s after the watermark; run failed {:.1} s later, error: {}",
        blocked_after.as_secs_f64(),
        failed_after.as_secs_f64(),
        record.error.clone().unwrap_or_default()
    );

    // While the disk is still full, a new run cannot even create its
    // generation, and says why.
    let refused = rebuild(&env).await;
    let message = match refused {
        Ok(run) => run.error.unwrap_or_default(),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        message.contains("create-index blocked") || message.contains("flood-stage"),
        "a run on a full disk names the block: {message}"
    );
    assert_eq!(alias_holders(&client, &env).await, before);

    drop(flood);
    let next = rebuild(&env).await.expect("the next run");
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;
    tcs.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_is_stolen_stops_before_promotion_and_says_so() {
    logs();
    let mut env = TestEnv::new("refuse_lease");
    // Renewed every second: the theft is seen within about one.
    env.settings.run.lease_ttl_secs = 3;
    let spec = DatasetSpec::new(83, 400);
    // Paused at the start of promotion: everything is built and validated.
    let Paused {
        tcs,
        client,
        before,
        mut run,
        generation,
    } = first_run_then_paused_at(&env, spec, "promote").await;
    // Another process takes the lease over, as one would after this run's
    // renewals stopped for longer than its time to live (a paused VM, a
    // partition): the holder is replaced, valid for a minute.
    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    let later = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 60_000);
    let stolen = leases
        .update_one(
            doc! {"_id": REBUILD_LEASE},
            doc! {"$set": {"runId": "thief-run", "host": "elsewhere", "pid": 1_i64, "expiresAt": later}},
        )
        .await
        .unwrap();
    assert_eq!(stolen.matched_count, 1, "the run held the lease");
    run.wait_for("The lease was taken over", 30).await;
    run.release();
    let ended = run.finish(60).await;
    let record = assert_failed_cleanly(
        &env,
        &client,
        ended,
        "another run took it over",
        &before,
        &generation,
    )
    .await;
    eprintln!(
        "fault: lease stolen before promotion: error: {}",
        record.error.unwrap_or_default()
    );
    let lease = read_lease(&leases, REBUILD_LEASE)
        .await
        .unwrap()
        .expect("the thief's lease");
    assert_eq!(
        lease.holder.run_id, "thief-run",
        "the run did not release a lease it no longer held"
    );
    leases
        .delete_one(doc! {"_id": REBUILD_LEASE})
        .await
        .unwrap();
    let next = rebuild(&env).await.expect("the next run");
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
    tcs.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_a_throttling_node_backs_off_and_loses_no_document() {
    let _node = NODE_429.lock().await;
    logs();
    let mut env = TestEnv::new("refuse_429");
    // The second node has one write thread and a queue of one: the run's
    // own load gets real 429s.
    env.settings.opensearch.url = throttled_opensearch_url();
    // Batches of 100: enough answers for the limiter to back off and to
    // climb again after a run of clean ones.
    env.settings.bulk.max_batch_docs = 100;
    // Eight requests in flight against one write thread: throttled for sure.
    env.settings.bulk.concurrency = 8;
    let spec = DatasetSpec::new(84, 9_000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let started = Instant::now();
    let run = rebuild(&env).await.expect("the run");
    let secs = started.elapsed().as_secs_f64();
    tcs.await.unwrap().unwrap();
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{:?}", run.error);
    let client = env.search().await;
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;
    let bulk = &run.bulk;
    eprintln!(
        "fault: a throttling node (write pool 1, queue 1): {} docs in {secs:.1} s, {} requests, {} answers with 429s ({} items), {} items retried, concurrency {} -> min {} -> final {} ({} decreases, {} increases), {} failed",
        bulk.docs,
        bulk.requests,
        bulk.throttled_responses,
        bulk.throttled_429,
        bulk.retried_items,
        bulk.max_concurrency,
        bulk.min_concurrency_seen,
        bulk.final_concurrency,
        bulk.concurrency_decreases,
        bulk.concurrency_increases,
        bulk.failed
    );
    assert!(bulk.throttled_429 > 0, "the node throttled: {bulk:?}");
    assert!(
        bulk.concurrency_decreases > 0 && bulk.min_concurrency_seen < bulk.max_concurrency,
        "concurrency backed off: {bulk:?}"
    );
    // Whether it climbed again is printed, not asserted: that needs ten
    // clean answers in a row, which a slow node may never give within the
    // run. The limiter's unit tests cover the climb.
    assert_eq!(bulk.failed, 0, "no document failed: {bulk:?}");
    assert_eq!(dead_lettered_for_indexing(&env).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_block_on_the_live_index_holds_live_updates_until_it_is_lifted() {
    logs();
    let env = TestEnv::new("refuse_live_block");
    let spec = DatasetSpec::new(85, 300);
    baseline(&env, &spec).await;
    take_dead_letters(&env).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let live = alias_targets(&client, &alias).await.remove(0);
    let trainee = spec
        .doctors()
        .find(|d| d.tcs_messages.len() == 1)
        .expect("a trainee");

    let applier = live_helpers::Applier::start(&env).await;
    put(
        &client,
        &format!("/{live}/_settings"),
        json!({"index.blocks.write": true}),
    )
    .await;
    let publisher = live_helpers::TcsPublisher::new(&env).await;
    let mut update = trainee.tcs_messages[0].clone();
    update["programmeName"] = json!("Held by the block");
    publisher.publish(update.to_string().as_bytes()).await;
    publisher.close().await;
    // The applier tries, is refused, waits and tries again: meanwhile the
    // update is neither applied nor dead-lettered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = live_helpers::doc_of(&client, &alias, &trainee.gmc_number)
        .await
        .expect("the doctor's document");
    assert_ne!(held["programmeName"], "Held by the block");
    let dead = take_dead_letters(&env).await;
    assert!(
        dead.is_empty(),
        "nothing dead-lettered: {:?}",
        dead.iter().map(|(r, _)| r).collect::<Vec<_>>()
    );
    let (_, consumers) = queue_state(&env, &env.settings.rabbitmq.update_queue).await;
    assert_eq!(consumers, 1, "the applier still consumes");

    put(
        &client,
        &format!("/{live}/_settings"),
        json!({"index.blocks.write": null}),
    )
    .await;
    let latency = live_helpers::wait_for_doc(
        &client,
        &alias,
        &trainee.gmc_number,
        Duration::from_secs(60),
        |d| d.is_some_and(|d| d["programmeName"] == "Held by the block"),
    )
    .await;
    eprintln!(
        "fault: write block on the live index: the update waited unsettled, nothing dead-lettered; applied {:.1} s after the block was lifted",
        latency.as_secs_f64()
    );
    assert!(take_dead_letters(&env).await.is_empty());
    applier.stop().await;
    env.cleanup().await;
}
