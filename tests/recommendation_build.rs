//! The recommendation generation, built both ways a run can build it
//! (`run.recommendation_build`): loaded alongside the master in the same
//! load (the default), or copied from the loaded master by `_reindex`.
//! Either way `recommendationindex` serves the master's documents, source
//! for source. A recommendation generation loaded alongside that comes out
//! short is built again from the master by `_reindex`; when that fails too
//! the run fails and no alias moves.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;

use common::{alias_targets, search_hits, TestEnv};
use paused_run::PausedRun;
use rebuilder::config::RecommendationBuild;
use rebuilder::rebuild::record::{RunOutcome, RunPhase, RunRecord};
use rebuilder::search::SearchClient;
use rebuilder_dev::datagen::DatasetSpec;
use run_helpers::*;
use serde_json::{json, Value};

/// Every document behind `alias`, by id, with its source.
async fn sources_by_id(client: &SearchClient, alias: &str) -> BTreeMap<String, Value> {
    let body = json!({"size": 9999, "query": {"match_all": {}}, "sort": ["_doc"]});
    search_hits(client, alias, body)
        .await
        .into_iter()
        .map(|hit| {
            (
                hit["_id"].as_str().unwrap().to_string(),
                hit["_source"].clone(),
            )
        })
        .collect()
}

/// The run succeeded and `recommendationindex` holds exactly the documents
/// `masterdoctorindex` holds, with the same sources.
async fn assert_recommendation_matches_master(env: &TestEnv, record: &RunRecord, doctors: usize) {
    assert_eq!(record.outcome, RunOutcome::Succeeded, "{:?}", record.error);
    let client = env.search().await;
    let master = sources_by_id(&client, &env.name("masterdoctorindex")).await;
    let recommendation = sources_by_id(&client, &env.name("recommendationindex")).await;
    assert_eq!(master.len(), doctors, "every doctor is in the master");
    assert_eq!(
        recommendation.len(),
        master.len(),
        "the recommendation generation holds as many documents"
    );
    let differing: Vec<&String> = master
        .iter()
        .filter(|(id, source)| recommendation.get(*id) != Some(source))
        .map(|(id, _)| id)
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "documents differ between the generations: {differing:?}"
    );
    let promotion = record.promotion.as_ref().expect("promoted");
    assert_eq!(
        alias_targets(&client, &env.name("recommendationindex")).await,
        vec![promotion.recommendation.to.clone()],
        "recommendationindex names the run's recommendation generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_alongside_or_by_reindex_the_recommendation_generation_holds_the_master_documents() {
    let mut env = TestEnv::new("reco_build");
    let spec = DatasetSpec::new(24, 1500);
    seed(&env, &spec).await;

    assert_eq!(
        env.settings.run.recommendation_build,
        RecommendationBuild::Alongside,
        "alongside is the default"
    );
    let tcs = simulator_once(&env, spec);
    let alongside = rebuild(&env).await.expect("the run succeeds");
    tcs.await.unwrap().expect("the simulator served the sync");
    assert_recommendation_matches_master(&env, &alongside, spec.doctors).await;
    let twin = &alongside.recommendation_bulk;
    assert_eq!(
        twin.docs, alongside.bulk.docs,
        "every document the master's writer took went to the recommendation generation too"
    );
    assert_eq!(twin.written + twin.superseded, twin.docs);
    assert_eq!(twin.failed, 0);
    assert!(
        alongside
            .phases
            .iter()
            .any(|p| p.phase == RunPhase::Recommendation),
        "the recommendation generation's check is a phase of its own"
    );

    env.settings.run.recommendation_build = RecommendationBuild::Reindex;
    let tcs = simulator_once(&env, spec);
    let reindexed = rebuild(&env).await.expect("the run succeeds");
    tcs.await.unwrap().expect("the simulator served the sync");
    assert_recommendation_matches_master(&env, &reindexed, spec.doctors).await;
    assert_eq!(
        reindexed.recommendation_bulk.docs, 0,
        "nothing is written to it during the load"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommendation_generation_that_loses_documents_is_built_again_and_else_moves_no_alias() {
    let mut env = TestEnv::new("reco_gate");
    let spec = DatasetSpec::new(25, 600);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let first = rebuild(&env).await.expect("the first run succeeds");
    tcs.await.unwrap().expect("the simulator served the sync");
    let client = env.search().await;
    let served_before = (
        alias_targets(&client, &env.name("masterdoctorindex")).await,
        alias_targets(&client, &env.name("recommendationindex")).await,
    );

    // A recommendation template whose strict mapping lacks a field every
    // document carries: OpenSearch refuses each document there, and only
    // there (the master's template is the built-in one).
    let dir = std::env::temp_dir().join(format!("{}_templates", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("masterdoctorindex.json"),
        include_str!("../index-templates/masterdoctorindex.json"),
    )
    .unwrap();
    let mut template: Value =
        serde_json::from_str(include_str!("../index-templates/recommendationindex.json")).unwrap();
    let properties = template["mappings"]["properties"].as_object_mut().unwrap();
    assert!(properties.remove("doctorLastName").is_some());
    std::fs::write(
        dir.join("recommendationindex.json"),
        serde_json::to_vec(&template).unwrap(),
    )
    .unwrap();
    env.settings.templates_dir = Some(dir.clone());

    let tcs = simulator_once(&env, spec);
    let error = rebuild(&env).await.expect_err("the run must fail");
    tcs.abort();
    let text = format!("{error:#}");
    assert!(
        text.contains("while building the recommendation generation"),
        "the failure names the recommendation generation: {text}"
    );
    let failed = history(&env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("the failed run is recorded");
    assert_eq!(failed.outcome, RunOutcome::Failed);
    assert_eq!(
        failed.recommendation_bulk.failed, failed.bulk.docs,
        "every document sent there failed (duplicates included); the master took them all"
    );
    assert_eq!(failed.bulk.failed, 0);
    assert!(
        failed.recommendation_rebuilt,
        "found short, it was built again from the master by _reindex (which the template refuses too)"
    );
    assert_eq!(
        (
            alias_targets(&client, &env.name("masterdoctorindex")).await,
            alias_targets(&client, &env.name("recommendationindex")).await,
        ),
        served_before,
        "no alias moved"
    );
    assert!(first.promotion.is_some());
    std::fs::remove_dir_all(&dir).ok();
    env.cleanup().await;
}

/// A recommendation generation loaded alongside that comes out short (here
/// documents deleted from it while the run is held at its check) is built
/// again from the master by `_reindex`, and the run promotes it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommendation_generation_found_short_is_copied_again_from_the_master() {
    let env = TestEnv::new("reco_short");
    let spec = DatasetSpec::new(26, 800);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let run = PausedRun::start(&env, "recommendation");
    let history = history(&env).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let held = loop {
        let current = history.current_or_last().await.unwrap();
        if let Some(r) = current.filter(|r| {
            r.phases
                .last()
                .is_some_and(|p| p.phase == RunPhase::Recommendation)
        }) {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never reached its recommendation check:\n{}",
            run.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let loaded = held
        .generations
        .iter()
        .find(|g| g.contains("recommendationindex"))
        .expect("the recommendation generation loaded alongside")
        .clone();
    let client = env.search().await;
    client
        .json(
            opensearch::http::Method::Post,
            &format!("/{loaded}/_delete_by_query"),
            &[("refresh", "true")],
            Some(&json!({"query": {"match_all": {}}, "max_docs": 50})),
        )
        .await
        .expect("documents deleted from the recommendation generation");
    run.release();
    let (status, log) = run.finish(120).await;
    assert!(status.success(), "the run succeeds:\n{log}");
    tcs.await.unwrap().expect("the simulator served the sync");
    let record = history.current_or_last().await.unwrap().unwrap();
    assert!(record.recommendation_rebuilt, "{:?}", record);
    let promoted = record.promotion.as_ref().expect("promoted");
    assert_ne!(
        promoted.recommendation.to, loaded,
        "the short generation is not the one served"
    );
    assert_recommendation_matches_master(&env, &record, spec.doctors).await;
    env.cleanup().await;
}
