//! Helpers of the full-run tests (`tests/run.rs`): seeding a test's
//! database, the TCS simulator as a task, running a rebuild in-process or
//! as a child process, reading back documents and the dead-letter queue.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rebuilder::domain::MasterDoctor;
use rebuilder::rebuild::record::{RunHistory, RunOutcome, RunRecord};
use rebuilder::rebuild::{run_rebuild, RunOptions};
use rebuilder::search::SearchClient;
use rebuilder::sources::tcs::REASON_HEADER;
use rebuilder_dev::connection_simulator::{
    run_connection_simulator, ConnectionSimulatorOptions, ConnectionSyncsServed,
};
use rebuilder_dev::datagen::{Category, DatasetSpec};
use rebuilder_dev::recommendation_simulator::{
    run_recommendation_simulator, GmcSyncServed, RecommendationSimulatorOptions,
};
use rebuilder_dev::seed::seed_mongo_with;
use rebuilder_dev::simulator::{run_simulator, SimulatorError, SimulatorOptions, SyncServed};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::common::TestEnv;

/// Logs of the code under test, only when asked for with `RUST_LOG`.
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        rebuilder::telemetry::init();
    }
}

/// Replaces the test's GMC and connection collections with the generated
/// data, bounded in time: a MongoDB side that crawls (SecantusDB with
/// gigabytes of change history on disk) fails the test saying so instead
/// of holding the suite.
pub async fn seed(env: &TestEnv, spec: &DatasetSpec) {
    const SEED_LIMIT: Duration = Duration::from_secs(180);
    let mongo = env.mongo().await;
    let seeded = tokio::time::timeout(
        SEED_LIMIT,
        seed_mongo_with(
            &mongo,
            &env.settings.mongodb,
            &env.settings.connection,
            spec,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "seeding {} doctors took over {} s: the MongoDB-compatible server is crawling; \
             start its data afresh (scripts/stack stop; rm -rf /var/lib/rebuilder/mongo/data; scripts/stack start)",
            spec.doctors,
            SEED_LIMIT.as_secs()
        )
    });
    seeded.unwrap_or_else(|e| panic!("seeding failed: {e:#}"));
}

/// The TCS simulator of this test, serving syncs from `spec` as a task.
pub fn simulator(
    env: &TestEnv,
    spec: DatasetSpec,
    options: SimulatorOptions,
) -> JoinHandle<Result<Vec<SyncServed>, SimulatorError>> {
    let rabbit = env.settings.rabbitmq.clone();
    tokio::spawn(async move { run_simulator(&rabbit, spec, options).await })
}

/// Seeds the test's database with `spec`, serves one sync and runs one
/// rebuild: the live generation a test then works against.
pub async fn baseline(env: &TestEnv, spec: &DatasetSpec) -> RunRecord {
    seed(env, spec).await;
    let tcs = simulator_once(env, *spec);
    let run = rebuild(env).await.expect("the baseline run");
    tcs.await.unwrap().unwrap();
    run
}

/// Takes the dead-letter queue and counts the records blamed on indexing
/// (`indexing_failed`): what an outage or a block must never cause.
pub async fn dead_lettered_for_indexing(env: &TestEnv) -> usize {
    take_dead_letters(env)
        .await
        .iter()
        .filter(|(reason, _)| reason == rebuilder::sources::tcs::REJECT_INDEXING_FAILED)
        .count()
}

/// Serves exactly one full sync.
pub fn simulator_once(
    env: &TestEnv,
    spec: DatasetSpec,
) -> JoinHandle<Result<Vec<SyncServed>, SimulatorError>> {
    simulator(
        env,
        spec,
        SimulatorOptions {
            once: true,
            ..SimulatorOptions::default()
        },
    )
}

/// The recommendation simulator of this test, serving one GMC sync of
/// `spec` in batches of `batch_size`, then `extra_messages` as they are.
pub fn recommendations_once(
    env: &TestEnv,
    spec: DatasetSpec,
    batch_size: usize,
    extra_messages: Vec<Vec<u8>>,
) -> JoinHandle<Result<Vec<GmcSyncServed>, SimulatorError>> {
    let (rabbit, gmc) = (env.settings.rabbitmq.clone(), env.settings.gmc.clone());
    let options = RecommendationSimulatorOptions {
        once: true,
        batch_size,
        extra_messages,
    };
    tokio::spawn(async move { run_recommendation_simulator(&rabbit, &gmc, spec, options).await })
}

/// The connection simulator of this test, serving one sync of each of
/// its protocols from `spec` (`options.once` is set here).
pub fn connection_service_once(
    env: &TestEnv,
    spec: DatasetSpec,
    options: ConnectionSimulatorOptions,
) -> JoinHandle<Result<ConnectionSyncsServed, SimulatorError>> {
    let (rabbit, connection) = (
        env.settings.rabbitmq.clone(),
        env.settings.connection.clone(),
    );
    let options = ConnectionSimulatorOptions {
        once: true,
        ..options
    };
    tokio::spawn(async move { run_connection_simulator(&rabbit, &connection, spec, options).await })
}

/// Switches every source to the queues (`gmc.source` and
/// `connection.source` = `queue`) and drops the collections those modes
/// never read (GMC's too with `drop_gmc`), to prove they are not read.
pub async fn read_every_source_over_the_queues(env: &mut TestEnv, drop_gmc: bool) {
    let db = env.mongo().await.database(&env.settings.mongodb.database);
    let m = &env.settings.mongodb;
    let c = &env.settings.connection;
    let gmc = [&m.doctors_collection, &m.recommendation_collection];
    let connection = [&c.logs_collection, &c.hidden_collection];
    let dropped = if drop_gmc { &gmc[..] } else { &[] };
    for collection in dropped.iter().chain(&connection) {
        db.collection::<bson::Document>(collection)
            .drop()
            .await
            .unwrap();
    }
    env.settings.gmc.source = rebuilder::config::GmcSourceKind::Queue;
    env.settings.connection.source = rebuilder::config::ConnectionSourceKind::Queue;
}

/// One rebuild in-process, bounded in time.
pub async fn rebuild(env: &TestEnv) -> anyhow::Result<RunRecord> {
    rebuild_with(env, RunOptions::default()).await
}

pub async fn rebuild_with(env: &TestEnv, options: RunOptions) -> anyhow::Result<RunRecord> {
    tokio::time::timeout(
        Duration::from_secs(300),
        run_rebuild(&env.settings, options),
    )
    .await
    .expect("a rebuild finishes within 5 minutes")
}

/// Starts one rebuild in-process as a task and waits until it is under
/// way (its record has a phase): a live change made from then on is the
/// run's to catch up.
pub async fn start_rebuild(env: &TestEnv) -> JoinHandle<anyhow::Result<RunRecord>> {
    let run_env = TestEnv {
        settings: env.settings.clone(),
        id: env.id.clone(),
    };
    let run = tokio::spawn(async move { rebuild(&run_env).await });
    let history = history(env).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = history.current_or_last().await.unwrap();
        if current.is_some_and(|r| r.outcome == RunOutcome::Running && !r.phases.is_empty()) {
            return run;
        }
        assert!(Instant::now() < deadline, "the run did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The run history of the test's database.
pub async fn history(env: &TestEnv) -> RunHistory {
    RunHistory::new(&env.mongo().await, &env.settings.mongodb)
}

pub async fn run_record(env: &TestEnv, id: &str) -> RunRecord {
    history(env)
        .await
        .get(id)
        .await
        .expect("history readable")
        .unwrap_or_else(|| panic!("run {id} is recorded"))
}

/// Every document behind `target`, by id (test-sized data: up to 10,000).
pub async fn documents(client: &SearchClient, target: &str) -> BTreeMap<String, MasterDoctor> {
    let body = serde_json::json!({"size": 10000, "query": {"match_all": {}}, "sort": ["_doc"]});
    let hits = crate::common::search_hits(client, target, body).await;
    hits.iter()
        .map(|h| {
            let doc: MasterDoctor = serde_json::from_value(h["_source"].clone())
                .unwrap_or_else(|e| panic!("document {} does not read back: {e}", h["_id"]));
            (h["_id"].as_str().unwrap().to_string(), doc)
        })
        .collect()
}

/// Checks that `target` holds exactly the expected document of every
/// generated doctor (ignoring `updatedAt`, which must be set), and that
/// every category occurs. Returns the doctors per category.
pub async fn assert_documents_match(
    client: &SearchClient,
    target: &str,
    spec: &DatasetSpec,
) -> BTreeMap<Category, usize> {
    let mut actual = documents(client, target).await;
    let mut per_category: BTreeMap<Category, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for doctor in spec.doctors() {
        *per_category.entry(doctor.category).or_default() += 1;
        match actual.remove(&doctor.gmc_number) {
            None => mismatches.push(format!(
                "{} ({}) is missing",
                doctor.gmc_number,
                doctor.category.as_str()
            )),
            Some(mut doc) => {
                if doc.updated_at.take().is_none() {
                    mismatches.push(format!("{} has no updatedAt", doctor.gmc_number));
                }
                if doc != doctor.expected {
                    mismatches.push(format!(
                        "{} ({}) differs:\n  actual   {doc:?}\n  expected {:?}",
                        doctor.gmc_number,
                        doctor.category.as_str(),
                        doctor.expected
                    ));
                }
            }
        }
    }
    for id in actual.keys() {
        mismatches.push(format!("{id} is not a generated doctor"));
    }
    assert!(
        mismatches.is_empty(),
        "{} documents are wrong; the first ones:\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for category in [
        Category::Both,
        Category::TcsOnly,
        Category::GmcOnly,
        Category::NoLongerInGmc,
    ] {
        assert!(
            per_category.get(&category).copied().unwrap_or(0) > 0,
            "the data set has no {} doctor",
            category.as_str()
        );
    }
    per_category
}

/// The messages on the dead-letter queue (taken off it), as
/// `(reason header, body)`.
pub async fn take_dead_letters(env: &TestEnv) -> Vec<(String, Vec<u8>)> {
    let connection = env.rabbit().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(
            env.settings.rabbitmq.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get on the dead-letter queue")
    {
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h: &FieldTable| h.inner().get(REASON_HEADER).cloned())
            .map(|v| match v {
                AMQPValue::LongString(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        out.push((reason, message.delivery.data.clone()));
    }
    let _ = connection.close(200, "test done".into()).await;
    out
}

/// `(ready messages, consumers)` of a queue.
pub async fn queue_state(env: &TestEnv, queue: &str) -> (u32, u32) {
    let connection = env.rabbit().await;
    let channel = connection.create_channel().await.expect("channel");
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    let _ = connection.close(200, "test done".into()).await;
    (q.message_count(), q.consumer_count())
}

/// Waits (up to 30 s) until `queue` holds `ready` messages and no consumer:
/// a consumer that stopped hands its unacked messages back only once the
/// broker has seen its channel close, a moment after `stop` returns.
pub async fn wait_queue_settled(env: &TestEnv, queue: &str, ready: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = queue_state(env, queue).await;
        if state == (ready, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} holds {} ready with {} consumers after 30 s, not {ready} ready and none",
            state.0,
            state.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `REBUILDER_*` environment that gives a child process this test's settings.
pub fn child_env(env: &TestEnv) -> Vec<(String, String)> {
    let s = &env.settings;
    let r = &s.rabbitmq;
    [
        ("OPENSEARCH__URL", s.opensearch.url.clone()),
        ("OPENSEARCH__URLS", s.opensearch.urls.join(",")),
        (
            "INDEX__NUMBER_OF_SHARDS",
            s.index.number_of_shards.to_string(),
        ),
        (
            "INDEX__NUMBER_OF_REPLICAS",
            s.index.number_of_replicas.to_string(),
        ),
        (
            "INDEX__GREEN_TIMEOUT_SECS",
            s.index.green_timeout_secs.to_string(),
        ),
        ("NAMES__PREFIX", s.names.prefix.clone()),
        ("MONGODB__DATABASE", s.mongodb.database.clone()),
        ("RABBITMQ__EXCHANGE", r.exchange.clone()),
        ("RABBITMQ__SYNC_START_QUEUE", r.sync_start_queue.clone()),
        (
            "RABBITMQ__SYNC_START_ROUTING_KEY",
            r.sync_start_routing_key.clone(),
        ),
        ("RABBITMQ__SYNC_DATA_QUEUE", r.sync_data_queue.clone()),
        (
            "RABBITMQ__SYNC_DATA_ROUTING_KEY",
            r.sync_data_routing_key.clone(),
        ),
        ("RABBITMQ__UPDATE_QUEUE", r.update_queue.clone()),
        ("RABBITMQ__UPDATE_ROUTING_KEY", r.update_routing_key.clone()),
        ("RABBITMQ__DEAD_LETTER_QUEUE", r.dead_letter_queue.clone()),
        ("RABBITMQ__PREFETCH", r.prefetch.to_string()),
        (
            "RABBITMQ__IDLE_TIMEOUT_SECS",
            r.idle_timeout_secs.to_string(),
        ),
        ("GMC__SOURCE", s.gmc.source.to_string()),
        ("GMC__SYNC_START_QUEUE", s.gmc.sync_start_queue.clone()),
        (
            "GMC__SYNC_START_ROUTING_KEY",
            s.gmc.sync_start_routing_key.clone(),
        ),
        ("GMC__SYNC_DATA_QUEUE", s.gmc.sync_data_queue.clone()),
        (
            "GMC__SYNC_DATA_ROUTING_KEY",
            s.gmc.sync_data_routing_key.clone(),
        ),
        (
            "GMC__IDLE_TIMEOUT_SECS",
            s.gmc.idle_timeout_secs.to_string(),
        ),
        ("RUN__LEASE_TTL_SECS", s.run.lease_ttl_secs.to_string()),
        // A service's /readyz allows each server 10 s, not 2: on a loaded
        // test machine a first connection can take longer than 2 s, and
        // the tests that read /readyz stop servers rather than hang them.
        ("SERVICE__READY_TIMEOUT_MS", "10000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("REBUILDER_{k}"), v))
    .collect()
}

/// The ids of the expected documents that match a predicate, sorted.
pub fn expected_ids(spec: &DatasetSpec, keep: impl Fn(&MasterDoctor) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = spec
        .doctors()
        .filter(|d| keep(&d.expected))
        .map(|d| d.gmc_number)
        .collect();
    ids.sort();
    ids
}

/// A field of a JSON value as text, for messages.
pub fn text(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

/// A child run ended (its exit status and log) with success, and is
/// recorded as succeeded; its record.
pub async fn assert_run_succeeded(
    env: &TestEnv,
    ended: (std::process::ExitStatus, String),
) -> RunRecord {
    let (status, log) = ended;
    let tail: String = log.lines().rev().take(25).collect::<Vec<_>>().join("\n");
    assert!(status.success(), "the run must succeed ({status}):\n{tail}");
    let record = history(env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("the run is recorded");
    assert_eq!(
        record.outcome,
        rebuilder::rebuild::record::RunOutcome::Succeeded,
        "{:?}",
        record.error
    );
    record
}

/// `scripts/stack ARGS`, which must succeed.
pub fn stack(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let status = std::process::Command::new(script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{script} {args:?}: {e}"));
    assert!(status.success(), "scripts/stack {args:?} failed");
}
