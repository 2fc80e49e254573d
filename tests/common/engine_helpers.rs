//! Helpers of the engine tests (`tests/engine.rs`): an engine per test
//! environment, generated master documents, loading a generation through
//! the bulk writer, building a promotable pair, and the alias probe.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opensearch::http::Method;
use rebuilder::rebuild::engine::Engine;
use rebuilder::search::{BulkItem, BulkOutcome, BulkStats, Family, Generation, SearchClient};
use rebuilder_dev::datagen::DatasetSpec;
use serde_json::Value;

use crate::common::TestEnv;

/// An engine on the test's OpenSearch (fails with the start hint if it is down).
pub async fn engine(env: &TestEnv) -> Engine {
    let _ = env.search().await;
    Engine::new(&env.settings)
        .await
        .unwrap_or_else(|e| panic!("engine: {e}"))
}

/// Deletes this test's indices on its OpenSearch node (only OpenSearch:
/// these tests touch no other server).
pub async fn cleanup_search(env: &TestEnv) {
    let client = SearchClient::new(&env.settings.opensearch).expect("client");
    let _ = client
        .request(
            Method::Delete,
            &format!("/{}*", env.settings.names.prefix),
            &[("expand_wildcards", "all")],
            None,
        )
        .await;
}

/// `(id, serialized document)` of generated doctors `range` of a dataset.
pub fn doctor_docs(seed: u64, doctors: usize, variant: u32) -> Vec<(String, Vec<u8>)> {
    let spec = DatasetSpec::new(seed, doctors).with_variant(variant);
    spec.doctors()
        .map(|d| {
            (
                d.gmc_number.clone(),
                serde_json::to_vec(&d.expected).expect("a document serializes"),
            )
        })
        .collect()
}

/// Writes `docs` through a bulk writer, draining outcomes concurrently.
pub async fn write_docs(
    engine: &Engine,
    generation: &Generation,
    docs: Vec<(String, Vec<u8>)>,
) -> (BulkStats, Vec<BulkOutcome<usize>>) {
    let (sender, mut outcomes, writer) = engine.bulk_writer::<usize>(generation);
    let drain = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(o) = outcomes.recv().await {
            all.push(o);
        }
        all
    });
    for (ticket, (id, source)) in docs.into_iter().enumerate() {
        sender
            .send(BulkItem {
                id,
                source: source.into(),
                version: None,
                ticket,
            })
            .await
            .expect("writer accepts");
    }
    drop(sender);
    let stats = writer.await.expect("writer finishes");
    let all = drain.await.expect("drain finishes");
    (stats, all)
}

/// A loaded, ready master generation holding `docs`.
pub async fn load_master(
    engine: &Engine,
    run_id: &str,
    docs: Vec<(String, Vec<u8>)>,
) -> (Generation, BulkStats) {
    let generation = engine
        .create_generation(Family::Master, run_id)
        .await
        .expect("master generation created");
    let (stats, _) = write_docs(engine, &generation, docs).await;
    engine
        .finish_load(&generation)
        .await
        .expect("load finished");
    (generation, stats)
}

/// A master generation and the recommendation generation built from it.
pub struct Pair {
    pub master: Generation,
    pub recommendation: Generation,
    pub stats: BulkStats,
}

pub async fn build_pair(engine: &Engine, run_id: &str, docs: Vec<(String, Vec<u8>)>) -> Pair {
    let (master, stats) = load_master(engine, run_id, docs).await;
    let (recommendation, _) = engine
        .build_recommendation_generation(&master, run_id)
        .await
        .expect("recommendation generation built");
    Pair {
        master,
        recommendation,
        stats,
    }
}

/// Real names of every alias, with the family whose generation holds it.
pub fn all_aliases(engine: &Engine) -> Vec<(String, Family)> {
    engine
        .alias_specs()
        .iter()
        .map(|s| (s.name.clone(), s.family))
        .collect()
}

/// What the probe saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub rounds: u64,
    pub queries: u64,
    pub problems: Vec<String>,
}

/// Queries every alias every 50 ms until stopped; any error, missing alias
/// or empty answer is a problem.
pub struct Probe {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<ProbeReport>,
}

impl Probe {
    pub fn start(client: SearchClient, aliases: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (flag, finished) = (stop.clone(), rounds.clone());
        let handle = tokio::spawn(async move {
            let mut report = ProbeReport::default();
            let body = serde_json::json!({"size": 1, "track_total_hits": true});
            while !flag.load(Ordering::SeqCst) {
                report.rounds += 1;
                for alias in &aliases {
                    report.queries += 1;
                    let answer = client
                        .request(Method::Post, &format!("/{alias}/_search"), &[], Some(&body))
                        .await;
                    match answer {
                        Ok((200, v)) => {
                            let total = v["hits"]["total"]["value"].as_u64().unwrap_or(0);
                            if total == 0 {
                                report.problems.push(format!("{alias}: empty answer"));
                            }
                        }
                        Ok((status, v)) => report
                            .problems
                            .push(format!("{alias}: status {status}: {}", truncate(&v))),
                        Err(e) => report.problems.push(format!("{alias}: {e}")),
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            report
        });
        Self {
            stop,
            rounds,
            handle,
        }
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Waits until `more` further rounds are complete (rather than a fixed
    /// time, which a loaded machine may spend on fewer rounds than planned).
    pub async fn wait_rounds(&self, more: u64) {
        let target = self.rounds() + more;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.rounds() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe did not complete {more} rounds in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops once two more rounds have completed, so every probe also reads
    /// after whatever the test did last.
    pub async fn stop(self) -> ProbeReport {
        self.wait_rounds(2).await;
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("probe finishes")
    }
}

fn truncate(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(300).collect()
}
