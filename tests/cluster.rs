//! The rebuilder on a real cluster: three OpenSearch nodes on loopback,
//! two zones, primaries and replicas (`scripts/stack start --cluster`).
//! A data node is SIGKILLed during the load, during the replica recovery
//! after it, at the swap and while the live applier writes, and started
//! again. Every case ends with no document lost, no alias in a mixed state,
//! and a promoted generation or a clean refusal naming its cause; the next
//! run is whole. A reader probe queries every alias through each node in
//! turn all along (a node that is down is skipped for that round): no
//! error, no empty result. And the green gate: a generation whose replicas
//! cannot be allocated is refused, naming the shard and OpenSearch's
//! reason, until `--force`.
//!
//! The cases kill and restart the cluster's nodes, so they run one at a
//! time (a lock), and only when asked for: `scripts/stack start --cluster`,
//! then `cargo test --test cluster -- --ignored --nocapture` (CI does, in
//! `.ci/run`). Each prints its figures.

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::doc;
use common::{alias_targets, TestEnv};
use live_helpers::{gmc_collections, wait_for_doc, Applier};
use opensearch::http::Method;
use paused_run::PausedRun;
use rebuilder::config::{OpenSearchSettings, Replicas};
use rebuilder::rebuild::record::{RunOutcome, RunRecord};
use rebuilder::rebuild::{roll_back, RunOptions};
use rebuilder::search::{generations, SearchClient};
use rebuilder_dev::datagen::{Category, DatasetSpec};
use rebuilder_dev::simulator::{SimulatorError, SimulatorOptions, SyncServed};
use run_helpers::*;
use serde_json::json;

const CLUSTER_HINT: &str = "start the three-node cluster with `scripts/stack start --cluster`";
const NODES: [&str; 3] = ["opensearch-c1", "opensearch-c2", "opensearch-c3"];
/// The five aliases, logical names: four on the master generation, one on
/// the recommendation generation.
const MASTER_ALIASES: [&str; 4] = [
    "masterdoctorindex",
    "current_connections",
    "discrepancies",
    "recommendations",
];
const RECOMMENDATION_ALIAS: &str = "recommendationindex";
/// Doctors per case: a few thousand keep the suite to minutes.
const DOCTORS: usize = 2000;

/// One case at a time: each kills and restarts the cluster's nodes.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The URL of each node, in the order of [`NODES`].
fn node_urls() -> Vec<String> {
    match std::env::var("REBUILDER_TEST_CLUSTER_URLS") {
        Ok(list) => list.split(',').map(|u| u.trim().to_string()).collect(),
        Err(_) => (1..=3)
            .map(|n| format!("http://127.0.0.1:921{n}"))
            .collect(),
    }
}

/// A client of one node only (no failover): what the probe asks through.
fn node_client(url: &str) -> SearchClient {
    SearchClient::new(&OpenSearchSettings {
        url: url.to_string(),
        request_timeout_secs: 10,
        ..OpenSearchSettings::default()
    })
    .expect("a node client builds")
}

type Simulator = tokio::task::JoinHandle<Result<Vec<SyncServed>, SimulatorError>>;

/// A test's world on the cluster: its settings name every node, one
/// replica per shard, and a wait for green of three minutes.
struct Cluster {
    env: TestEnv,
    client: SearchClient,
    spec: DatasetSpec,
    /// The TCS simulator, answering every sync of the case.
    tcs: Simulator,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    /// Every node up and in the cluster (one a failed case left down is
    /// started again), the test's data seeded, one good run behind it.
    async fn with_a_first_run(name: &str, data_seed: u64) -> Cluster {
        let guard = CLUSTER.lock().await;
        let mut env = TestEnv::new(name);
        env.settings.opensearch.urls = node_urls();
        env.settings.index.number_of_replicas = Replicas::Fixed(1);
        env.settings.index.green_timeout_secs = 180;
        let urls = node_urls();
        let mut answering = Vec::new();
        for url in &urls {
            answering.push(node_client(url).version().await.is_ok());
        }
        assert!(
            answering.iter().any(|up| *up),
            "no node of the cluster answers at {urls:?}; {CLUSTER_HINT}"
        );
        for (node, up) in NODES.iter().zip(&answering) {
            if !up {
                eprintln!("{node} is down (a case before failed?): starting it");
                stack(&["start", node]);
            }
        }
        let client = SearchClient::new(&env.settings.opensearch).expect("client builds");
        let health = client
            .json(
                Method::Get,
                "/_cluster/health",
                &[("wait_for_nodes", "3"), ("timeout", "60s")],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("the cluster does not answer: {e}; {CLUSTER_HINT}"));
        assert_eq!(
            health["number_of_nodes"], 3,
            "the cluster has not three nodes: {health}; {CLUSTER_HINT}"
        );
        let spec = DatasetSpec::new(data_seed, DOCTORS);
        seed(&env, &spec).await;
        let tcs = simulator(&env, spec, SimulatorOptions::default());
        let first = rebuild(&env).await.expect("the first run");
        assert_eq!(first.outcome, RunOutcome::Succeeded, "{:?}", first.error);
        Cluster {
            env,
            client,
            spec,
            tcs,
            _one_at_a_time: guard,
        }
    }

    fn alias(&self, logical: &str) -> String {
        self.env.name(logical)
    }

    /// The generations the five aliases are on, checked whole: the four
    /// master aliases on one master generation, `recommendationindex` on
    /// the recommendation generation built from it.
    async fn serving(&self) -> (String, String) {
        let mut masters = BTreeSet::new();
        for alias in MASTER_ALIASES {
            let held = alias_targets(&self.client, &self.alias(alias)).await;
            assert_eq!(held.len(), 1, "{alias} is held by {held:?}");
            masters.insert(held[0].clone());
        }
        assert_eq!(
            masters.len(),
            1,
            "the master aliases are mixed: {masters:?}"
        );
        let master = masters.pop_first().unwrap();
        let held = alias_targets(&self.client, &self.alias(RECOMMENDATION_ALIAS)).await;
        assert_eq!(held.len(), 1, "recommendationindex is held by {held:?}");
        let meta = generations::read_meta(&self.client, &held[0])
            .await
            .unwrap()
            .expect("the recommendation generation has its meta");
        assert_eq!(
            meta.built_from.as_deref(),
            Some(master.as_str()),
            "recommendationindex is on {} but the master aliases on {master}",
            held[0]
        );
        (master, held[0].clone())
    }

    /// No document lost: every doctor of the source behind the master
    /// alias as generated, and as many behind `recommendationindex`.
    async fn assert_whole(&self) {
        assert_documents_match(&self.client, &self.alias("masterdoctorindex"), &self.spec).await;
        let reco = common::count(&self.client, &self.alias(RECOMMENDATION_ALIAS)).await;
        assert_eq!(reco, self.spec.doctors as u64, "recommendationindex count");
    }

    /// The next run, after a case: promoted, and whole.
    async fn next_run_is_whole(&self) -> RunRecord {
        let next = rebuild(&self.env).await.expect("the next run");
        assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
        self.serving().await;
        self.assert_whole().await;
        next
    }

    /// The master generation in the making (not serving).
    async fn building_master(&self) -> String {
        let (serving, _) = self.serving().await;
        let pattern = format!("{}-*", self.alias("masterdoctorindex"));
        let cat = self
            .client
            .json(
                Method::Get,
                &format!("/_cat/indices/{pattern}"),
                &[("format", "json"), ("h", "index")],
                None,
            )
            .await
            .unwrap();
        let mut building: Vec<String> = cat
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["index"].as_str().map(str::to_string))
            .filter(|i| *i > serving)
            .collect();
        building.sort();
        building.pop().expect("a master generation in the making")
    }

    /// The node that holds the primary of `index`'s shard 0.
    async fn primary_node(&self, index: &str) -> &'static str {
        let rows = self
            .client
            .json(
                Method::Get,
                &format!("/_cat/shards/{index}"),
                &[("format", "json"), ("h", "prirep,state,node")],
                None,
            )
            .await
            .unwrap();
        let node = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["prirep"] == "p" && r["state"] == "STARTED")
            .and_then(|r| r["node"].as_str())
            .unwrap_or_else(|| panic!("no started primary of {index}: {rows}"))
            .to_string();
        NODES
            .into_iter()
            .find(|n| *n == node)
            .unwrap_or_else(|| panic!("{node} is not a node of the stack's cluster"))
    }

    /// Waits until `index` has taken `writes` documents (its indexing
    /// statistics: nothing is refreshed while it loads).
    async fn wait_for_writes(&self, index: &str, writes: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stats = self
                .client
                .json(Method::Get, &format!("/{index}/_stats/indexing"), &[], None)
                .await
                .unwrap();
            let taken = stats["_all"]["primaries"]["indexing"]["index_total"]
                .as_u64()
                .unwrap_or(0);
            if taken >= writes {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{index} took {taken} documents, not {writes}, in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn end(self) {
        self.tcs.abort();
        self.env.cleanup().await;
    }
}

/// What the reader probe saw.
#[derive(Debug, Default)]
struct ProbeFigures {
    rounds: u64,
    queries: u64,
    /// Queries not sent (or whose failure did not count): the node was down.
    skipped: u64,
    problems: Vec<String>,
}

/// Queries every alias through each node in turn, every 100 ms, until
/// stopped. A node marked down is skipped.
struct ReaderProbe {
    stop: Arc<AtomicBool>,
    down: Arc<Mutex<BTreeSet<&'static str>>>,
    handle: tokio::task::JoinHandle<ProbeFigures>,
}

impl ReaderProbe {
    fn start(cluster: &Cluster) -> ReaderProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let down: Arc<Mutex<BTreeSet<&'static str>>> = Arc::default();
        let aliases: Vec<String> = MASTER_ALIASES
            .iter()
            .chain([&RECOMMENDATION_ALIAS])
            .map(|a| cluster.alias(a))
            .collect();
        let nodes: Vec<(&'static str, SearchClient)> = NODES
            .into_iter()
            .zip(node_urls())
            .map(|(n, url)| (n, node_client(&url)))
            .collect();
        let (flag, marked) = (stop.clone(), down.clone());
        let handle = tokio::spawn(async move {
            let mut figures = ProbeFigures::default();
            let body = json!({"size": 1, "query": {"match_all": {}}});
            while !flag.load(Ordering::SeqCst) {
                figures.rounds += 1;
                for (node, client) in &nodes {
                    for alias in &aliases {
                        if marked.lock().unwrap().contains(node) {
                            figures.skipped += 1;
                            continue;
                        }
                        let answer = client
                            .request(Method::Post, &format!("/{alias}/_search"), &[], Some(&body))
                            .await;
                        if marked.lock().unwrap().contains(node) {
                            // Killed while the query was under way.
                            figures.skipped += 1;
                            continue;
                        }
                        figures.queries += 1;
                        match answer {
                            Ok((200, v)) if v["hits"]["total"]["value"].as_u64() > Some(0) => {}
                            Ok((200, v)) => figures
                                .problems
                                .push(format!("{alias} through {node}: empty: {v}")),
                            Ok((status, v)) => figures.problems.push(format!(
                                "{alias} through {node}: {status} {}",
                                v.to_string().chars().take(300).collect::<String>()
                            )),
                            Err(e) => figures
                                .problems
                                .push(format!("{alias} through {node}: {e}")),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            figures
        });
        ReaderProbe { stop, down, handle }
    }

    /// SIGKILLs `node` (marked down first, so the probe skips it).
    fn kill(&self, node: &'static str) {
        self.down.lock().unwrap().insert(node);
        stack(&["kill", node]);
    }

    /// Starts `node` again and waits until it is in the cluster.
    fn restart(&self, node: &'static str) {
        stack(&["start", node]);
        self.down.lock().unwrap().remove(node);
    }

    /// Stops the probe; fails on any error or empty result.
    async fn finish(self, case: &str) -> ProbeFigures {
        self.stop.store(true, Ordering::SeqCst);
        let figures = self.handle.await.expect("the probe finishes");
        assert!(
            figures.problems.is_empty(),
            "{case}: readers saw {} errors or empty results, the first: {:?}",
            figures.problems.len(),
            figures.problems.iter().take(5).collect::<Vec<_>>()
        );
        assert!(figures.queries > 0, "{case}: the probe asked nothing");
        figures
    }
}

/// What a node-loss case measured.
struct Faulted {
    /// The node killed.
    victim: &'static str,
    /// `promoted`, or `refused: <the cause>`.
    outcome: String,
    /// Seconds from the kill to the run's end.
    secs: f64,
    retries: String,
    /// The pair the aliases were on before the run.
    before: (String, String),
}

/// Which node a case kills.
#[derive(Clone, Copy, PartialEq)]
enum Victim {
    /// The node holding the primary of the generation in the making.
    Primary,
    /// The elected cluster manager (two of three left keep the quorum).
    ClusterManager,
}

/// A child run paused at `point`; there the `victim` node is SIGKILLed, at once or, with
/// `writes_first`, once the run (released) has written that many documents
/// into it; it is started again 5 s later. The run must end promoted and
/// whole, or refused cleanly with the aliases where they were, naming the
/// cause.
async fn lose_a_node(
    cluster: &Cluster,
    probe: &ReaderProbe,
    victim: Victim,
    point: &str,
    writes_first: Option<u64>,
    extra_env: &[(&str, &str)],
) -> Faulted {
    let before = cluster.serving().await;
    let mut run = PausedRun::start_with(&cluster.env, point, extra_env);
    run.wait_for("Failpoint reached", 180).await;
    let generation = cluster.building_master().await;
    let primary = cluster.primary_node(&generation).await;
    let manager = cluster
        .client
        .json(
            Method::Get,
            "/_cat/cluster_manager",
            &[("format", "json"), ("h", "node")],
            None,
        )
        .await
        .unwrap();
    let manager = NODES
        .into_iter()
        .find(|n| manager[0]["node"] == *n)
        .unwrap_or_else(|| panic!("no elected cluster manager among the nodes: {manager}"));
    let victim = match victim {
        Victim::Primary => primary,
        Victim::ClusterManager => manager,
    };
    eprintln!(
        "killing {victim}: the new generation's primary is on {primary}, the elected cluster manager is {manager}"
    );
    if let Some(writes) = writes_first {
        run.release();
        cluster.wait_for_writes(&generation, writes).await;
    }
    let killed = Instant::now();
    probe.kill(victim);
    run.release();
    tokio::time::sleep(Duration::from_secs(5)).await;
    probe.restart(victim);
    let (status, log) = run.finish(420).await;
    let secs = killed.elapsed().as_secs_f64();
    let after = cluster.serving().await;
    let outcome = if status.success() {
        assert_ne!(after, before, "a run that succeeded moved the aliases");
        "promoted".to_string()
    } else {
        assert_eq!(
            after, before,
            "a refused run left the aliases where they were"
        );
        let record = last_record(cluster).await;
        let cause = record.error.clone().unwrap_or_default();
        assert!(
            matches!(record.outcome, RunOutcome::Refused | RunOutcome::Failed) && !cause.is_empty(),
            "a run that did not promote ends refused or failed, naming the cause: {:?} {cause:?}\n{}",
            record.outcome,
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        format!("refused: {cause}")
    };
    cluster.assert_whole().await;
    let record = last_record(cluster).await;
    let retries = format!(
        "{} bulk items retried, {} calls retried, {} requests moved to another node",
        record.bulk.retried_items,
        log.matches("Retrying").count(),
        log.matches("trying the next node").count()
    );
    Faulted {
        victim,
        outcome,
        secs,
        retries,
        before,
    }
}

impl Faulted {
    /// "killed <node> (<role>), back after 5 s; run <outcome> <secs> s after
    /// the kill (<retries>)".
    fn describe(&self, role: &str) -> String {
        format!(
            "killed {} ({role}), back after 5 s; run {} {:.1} s after the kill ({})",
            self.victim, self.outcome, self.secs, self.retries
        )
    }
}

/// A case's start: the cluster with a first run behind it, the reader
/// probe going, the clock.
async fn start_case(name: &str, data_seed: u64) -> (Cluster, ReaderProbe, Instant) {
    logs();
    let cluster = Cluster::with_a_first_run(name, data_seed).await;
    let probe = ReaderProbe::start(&cluster);
    (cluster, probe, Instant::now())
}

async fn last_record(cluster: &Cluster) -> RunRecord {
    history(&cluster.env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("the run is recorded")
}

/// A case's end: the next run whole, the probe's verdict, the figures printed.
async fn finish_case(
    cluster: Cluster,
    probe: ReaderProbe,
    case: &str,
    started: Instant,
    detail: String,
) {
    let next = cluster.next_run_is_whole().await;
    let figures = probe.finish(case).await;
    eprintln!(
        "cluster: {case}: {detail}; next run succeeded ({} docs); case {:.1} s; probe {} rounds, {} queries, {} skipped, 0 errors, 0 empty",
        next.counts.docs_expected,
        started.elapsed().as_secs_f64(),
        figures.rounds,
        figures.queries,
        figures.skipped
    );
    cluster.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn a_data_node_killed_during_the_load_loses_no_doctor() {
    let (cluster, probe, started) = start_case("cl_load", 301).await;
    // The load writes into a generation without replicas, in batches of
    // 200: once it has written 400 documents, the node with its primary
    // is lost, and back 5 s later.
    let batches = [("REBUILDER_BULK__MAX_BATCH_DOCS", "200")];
    let f = lose_a_node(
        &cluster,
        &probe,
        Victim::Primary,
        "tcs_merge",
        Some(400),
        &batches,
    )
    .await;
    let detail = f.describe("the generation's primary, after 400 documents written");
    finish_case(cluster, probe, "node lost during the load", started, detail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn a_data_node_killed_during_the_replica_recovery_after_the_load_loses_no_doctor() {
    let (cluster, probe, started) = start_case("cl_recovery", 302).await;
    // `catch_up` begins right after the finish restored the replicas: they
    // are recovering when the primary's node is lost.
    let f = lose_a_node(&cluster, &probe, Victim::Primary, "catch_up", None, &[]).await;
    let green = last_record(&cluster)
        .await
        .gates
        .into_iter()
        .find(|g| g.name == "green")
        .map_or_else(|| "not reached".into(), |g| g.detail);
    let detail = format!("{}; green gate: {green}", f.describe("the primary's"));
    finish_case(
        cluster,
        probe,
        "node lost during the replica recovery",
        started,
        detail,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn a_data_node_killed_at_the_swap_and_a_rollback_keep_every_alias_whole_and_answering() {
    let (cluster, probe, started) = start_case("cl_swap", 303).await;
    // Just before the one `_aliases` call: the node holding the new
    // generation's primary is lost (its replica, green a moment ago, takes over).
    let f = lose_a_node(
        &cluster,
        &probe,
        Victim::Primary,
        "before_aliases",
        None,
        &[],
    )
    .await;
    let promoted = cluster.serving().await;
    // A rollback while the readers read.
    let rollback_started = Instant::now();
    roll_back(&cluster.env.settings, None)
        .await
        .expect("the rollback");
    assert_eq!(
        cluster.serving().await,
        f.before,
        "the rollback put the first run's pair back"
    );
    cluster.assert_whole().await;
    let detail = format!(
        "{}; serving {promoted:?}; rollback {:.1} s",
        f.describe("the new primary's, just before the _aliases call"),
        rollback_started.elapsed().as_secs_f64()
    );
    finish_case(cluster, probe, "node lost at the swap", started, detail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn the_elected_cluster_manager_killed_at_the_swap_leaves_every_alias_whole() {
    let (cluster, probe, started) = start_case("cl_manager", 306).await;
    // The `_aliases` call is a change of the cluster state: the node that
    // makes it is lost just before it, and the other two elect another.
    let f = lose_a_node(
        &cluster,
        &probe,
        Victim::ClusterManager,
        "before_aliases",
        None,
        &[],
    )
    .await;
    let detail = f.describe("the elected cluster manager, just before the _aliases call");
    finish_case(
        cluster,
        probe,
        "cluster manager lost at the swap",
        started,
        detail,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn a_data_node_killed_while_the_live_applier_writes_loses_no_change() {
    logs();
    let cluster = Cluster::with_a_first_run("cl_live", 304).await;
    let (serving, _) = cluster.serving().await;
    let victim = cluster.primary_node(&serving).await;
    let probe = ReaderProbe::start(&cluster);
    let started = Instant::now();
    let applier = Applier::start(&cluster.env).await;
    let (doctors, _) = gmc_collections(&cluster.env).await;
    let alias = cluster.alias("masterdoctorindex");
    // 60 changes, one every 150 ms; the live generation's primary node is
    // lost after the 15th and back after the 40th.
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    let gmc: Vec<String> = cluster
        .spec
        .doctors()
        .filter(|d| matches!(d.category, Category::Both | Category::GmcOnly))
        .take(60)
        .map(|d| d.gmc_number)
        .collect();
    let mut killed_at = None;
    for (k, number) in gmc.iter().enumerate() {
        if k == 15 {
            probe.kill(victim);
            killed_at = Some(Instant::now());
        }
        if k == 40 {
            probe.restart(victim);
        }
        let body = format!("1-CLUSTER{k}");
        doctors
            .update_one(
                doc! {"_id": number},
                doc! {"$set": {"designatedBodyCode": &body}},
            )
            .await
            .unwrap();
        latest.insert(number.clone(), body);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut slowest = Duration::ZERO;
    for (number, body) in &latest {
        let took = wait_for_doc(
            &cluster.client,
            &alias,
            number,
            Duration::from_secs(180),
            |d| d.is_some_and(|d| d["designatedBody"] == body.as_str()),
        )
        .await;
        slowest = slowest.max(took);
    }
    let since_kill = killed_at.unwrap().elapsed().as_secs_f64();
    applier.stop().await;
    let count = common::count(&cluster.client, &alias).await;
    assert_eq!(count, cluster.spec.doctors as u64, "no document lost");
    let next = rebuild(&cluster.env).await.expect("the next run");
    assert_eq!(next.outcome, RunOutcome::Succeeded, "{:?}", next.error);
    cluster.serving().await;
    for (number, body) in &latest {
        let d = live_helpers::doc_of(&cluster.client, &alias, number).await;
        assert_eq!(
            d.as_ref().map(|d| d["designatedBody"].clone()),
            Some(json!(body)),
            "{number} keeps its live change through the next run"
        );
    }
    let figures = probe.finish("live").await;
    eprintln!(
        "cluster: node lost while the live applier writes: killed {victim} (the live generation's primary) after 15 of 60 changes, back after 40; every change applied {since_kill:.1} s after the kill (the last one waited at most {:.1} s); next run succeeded; case {:.1} s; probe {} rounds, {} queries, {} skipped, 0 errors, 0 empty",
        slowest.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        figures.rounds,
        figures.queries,
        figures.skipped
    );
    cluster.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs the three-node cluster: scripts/stack start --cluster"]
async fn a_generation_whose_replicas_cannot_be_allocated_is_refused_naming_the_shard_until_forced()
{
    logs();
    let mut cluster = Cluster::with_a_first_run("cl_green", 305).await;
    let before = cluster.serving().await;
    let probe = ReaderProbe::start(&cluster);
    let started = Instant::now();
    // Three replicas of one shard need four nodes: one copy stays unassigned.
    cluster.env.settings.index.number_of_replicas = Replicas::Fixed(3);
    cluster.env.settings.index.green_timeout_secs = 5;
    let refused = rebuild(&cluster.env).await;
    let message = match refused {
        Ok(run) => {
            assert_eq!(run.outcome, RunOutcome::Refused, "{:?}", run.error);
            run.error.unwrap_or_default()
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        message.contains("promotion refused")
            && message.contains("not green")
            && message.contains("replica UNASSIGNED")
            && message.contains("--force"),
        "the refusal names the unassigned replica: {message}"
    );
    assert!(
        message.contains("a copy of this shard is already allocated to this node"),
        "the refusal gives OpenSearch's reason: {message}"
    );
    assert_eq!(cluster.serving().await, before, "no alias moved");
    let refused_secs = started.elapsed().as_secs_f64();

    let forced = rebuild_with(
        &cluster.env,
        RunOptions {
            force: true,
            ..RunOptions::default()
        },
    )
    .await
    .expect("the forced run");
    assert_eq!(forced.outcome, RunOutcome::Succeeded, "{:?}", forced.error);
    let gate = forced.gates.iter().find(|g| g.name == "green").unwrap();
    assert!(!gate.passed && gate.overridden, "{gate:?}");
    assert_ne!(cluster.serving().await, before, "the forced run promoted");
    cluster.assert_whole().await;

    cluster.env.settings.index.number_of_replicas = Replicas::Fixed(1);
    cluster.env.settings.index.green_timeout_secs = 180;
    let detail =
        format!("refused after {refused_secs:.1} s naming the shard: {message}; --force promoted");
    finish_case(
        cluster,
        probe,
        "replicas that cannot be allocated (3 replicas, 3 nodes)",
        started,
        detail,
    )
    .await;
}
