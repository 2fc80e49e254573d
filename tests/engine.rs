//! The blue/green engine against a real OpenSearch node: generations, the
//! bulk writer (exact counts, permanent failures, external versions, real
//! 429s), the recommendation reindex, gates, one atomic promotion, zero
//! downtime under a probe, rollback, retention and orphans.
//!
//! Needs OpenSearch on 127.0.0.1:9200 and the throttled node on :9201
//! (`scripts/stack start`). Every test owns an index prefix and removes it.

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{alias_targets, count, get_json, ids, throttled_opensearch_url, TestEnv};
use engine_helpers::*;
use opensearch::http::Method;
use rebuilder::commands::exit_code_for;
use rebuilder::rebuild::engine::{Engine, MoveKind, PromoteError};
use rebuilder::rebuild::roll_back;
use rebuilder::search::{BulkItem, Family, GenerationState, ItemOutcome, SearchClient};
use rebuilder::state::lease::{lease_collection, Lease, LeaseHolder, REBUILD_LEASE};
use rebuilder_dev::datagen::DatasetSpec;
use serde_json::{json, Value};

/// Asserts that every alias of each family resolves to exactly that generation.
async fn assert_aliases_on(client: &SearchClient, engine: &Engine, master: &str, reco: &str) {
    for (alias, family) in all_aliases(engine) {
        let expected = match family {
            Family::Master => master,
            Family::Recommendation => reco,
        };
        assert_eq!(
            alias_targets(client, &alias).await,
            vec![expected.to_string()],
            "alias {alias}"
        );
    }
}

async fn meta_of(client: &SearchClient, index: &str) -> Value {
    let v = get_json(client, &format!("/{index}/_mapping")).await;
    v[index]["mappings"]["_meta"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_record_what_built_them_and_get_serving_settings_back() {
    let env = TestEnv::new("gen_meta");
    let engine = engine(&env).await;
    let client = env.search().await;

    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(
            engine
                .create_generation(Family::Master, "run-meta")
                .await
                .unwrap(),
        );
    }
    let unique: HashSet<_> = names.iter().map(|g| g.name.clone()).collect();
    assert_eq!(
        unique.len(),
        3,
        "names taken in the same second step forward"
    );
    assert!(names.windows(2).all(|w| w[0].name < w[1].name), "{names:?}");
    let first = &names[0];
    assert!(first
        .name
        .starts_with(&format!("{}masterdoctorindex-", env.settings.names.prefix)));

    let meta = meta_of(&client, &first.name).await;
    assert_eq!(meta["run_id"], "run-meta");
    assert_eq!(meta["state"], "building");
    assert_eq!(
        meta["template_sha256"],
        engine.template(Family::Master).sha256.as_str()
    );
    let settings = get_json(&client, &format!("/{}/_settings", first.name)).await;
    assert_eq!(
        settings[&first.name]["settings"]["index"]["refresh_interval"],
        "-1"
    );

    engine
        .set_source_counts(first, json!({"tcs": 10, "gmc": 12}))
        .await
        .unwrap();
    engine.finish_load(first).await.unwrap();
    let meta = meta_of(&client, &first.name).await;
    assert_eq!(meta["state"], "ready");
    assert_eq!(meta["source_counts"]["gmc"], 12);
    let settings = get_json(&client, &format!("/{}/_settings", first.name)).await;
    let index = &settings[&first.name]["settings"]["index"];
    assert_eq!(index["refresh_interval"], "1s");
    assert_eq!(index["auto_expand_replicas"], "0-1");
    assert_eq!(index["translog"]["durability"], "request");

    let listing = engine.list_generations().await.unwrap();
    assert_eq!(listing.len(), 3);
    assert_eq!(listing[0].name, first.name);
    assert_eq!(listing[0].state(), GenerationState::Ready);
    assert_eq!(listing[0].run_id(), Some("run-meta"));
    assert_eq!(listing[1].state(), GenerationState::Building);

    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writer_writes_a_100k_stream_with_exact_counts_and_contents() {
    let env = TestEnv::new("bulk_100k");
    let engine = engine(&env).await;
    let client = env.search().await;
    const N: usize = 100_000;
    let spec = DatasetSpec::new(7, N);
    let generation = engine
        .create_generation(Family::Master, "run-100k")
        .await
        .unwrap();

    let (sender, mut outcomes, writer) = engine.bulk_writer::<usize>(&generation);
    let drain = tokio::spawn(async move {
        let mut seen = vec![0u8; N];
        let mut not_written = Vec::new();
        while let Some(o) = outcomes.recv().await {
            seen[o.ticket] += 1;
            if o.outcome != ItemOutcome::Written {
                not_written.push((o.id, o.outcome));
            }
        }
        (seen, not_written)
    });
    let producer = tokio::spawn(async move {
        for (i, d) in spec.doctors().enumerate() {
            let item = BulkItem {
                id: d.gmc_number,
                source: serde_json::to_vec(&d.expected).unwrap().into(),
                version: None,
                ticket: i,
            };
            sender.send(item).await.unwrap();
        }
    });
    producer.await.unwrap();
    let stats = writer.await.unwrap();
    let (seen, not_written) = drain.await.unwrap();

    assert!(
        seen.iter().all(|n| *n == 1),
        "every item has exactly one outcome"
    );
    assert!(
        not_written.is_empty(),
        "{:?}",
        &not_written[..not_written.len().min(5)]
    );
    assert_eq!(stats.docs, N as u64);
    assert_eq!(stats.written, N as u64);
    assert_eq!(stats.failed, 0);
    assert!(stats.requests >= (N / env.settings.bulk.max_batch_docs) as u64);

    engine.finish_load(&generation).await.unwrap();
    assert_eq!(count(&client, &generation.name).await, N as u64);

    // Spot-check contents: the stored source is the document sent.
    let picks: Vec<usize> = (0..50).map(|k| (k * 7919 + 13) % N).collect();
    let docs: Vec<Value> = picks
        .iter()
        .map(|i| json!({"_id": spec.doctor(*i).gmc_number}))
        .collect();
    let answer = client
        .json(
            Method::Post,
            &format!("/{}/_mget", generation.name),
            &[],
            Some(&json!({ "docs": docs })),
        )
        .await
        .unwrap();
    for (k, i) in picks.iter().enumerate() {
        let expected = serde_json::to_value(spec.doctor(*i).expected).unwrap();
        let got = &answer["docs"][k];
        assert_eq!(got["found"], true);
        assert_eq!(got["_source"], expected, "document {i}");
    }
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_fail_permanently_are_reported_with_their_reason() {
    let env = TestEnv::new("bulk_permanent");
    let engine = engine(&env).await;
    let generation = engine
        .create_generation(Family::Master, "run-bad")
        .await
        .unwrap();
    let mut docs = doctor_docs(3, 200, 0);
    let bad_type = ["B1", "B2", "B3"];
    for id in bad_type {
        docs.push((
            id.into(),
            json!({"gmcReferenceNumber": id, "tcsPersonId": "not-a-number", "existsInGmc": true})
                .to_string()
                .into_bytes(),
        ));
    }
    docs.push((
        "B4".into(),
        json!({"gmcReferenceNumber": "B4", "favouriteColour": "green", "existsInGmc": true})
            .to_string()
            .into_bytes(),
    ));

    let (stats, outcomes) = write_docs(&engine, &generation, docs).await;
    assert_eq!(outcomes.len(), 204);
    assert_eq!(stats.written, 200);
    assert_eq!(stats.failed, 4);
    let failed: BTreeMap<String, (u16, String)> = outcomes
        .into_iter()
        .filter_map(|o| match o.outcome {
            ItemOutcome::Failed { status, reason, .. } => Some((o.id, (status, reason))),
            _ => None,
        })
        .collect();
    assert_eq!(
        failed.keys().cloned().collect::<Vec<_>>(),
        vec!["B1", "B2", "B3", "B4"]
    );
    for id in bad_type {
        let (status, reason) = &failed[id];
        assert_eq!(*status, 400);
        assert!(reason.contains("tcsPersonId"), "{reason}");
    }
    assert!(failed["B4"].1.contains("strict"), "{}", failed["B4"].1);
    assert_eq!(stats.failed_by_reason.values().sum::<u64>(), 4);
    assert!(
        stats.failed_by_reason.keys().any(|k| k.contains("parsing")),
        "{:?}",
        stats.failed_by_reason
    );
    // The failed-items gate refuses such a generation.
    engine.finish_load(&generation).await.unwrap();
    let report = engine.validate(&generation, 200, &stats, false).await;
    assert!(!report.passed());
    assert!(
        report.summary().contains("failed_items"),
        "{}",
        report.summary()
    );
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_versions_keep_the_document_of_highest_precedence() {
    let mut env = TestEnv::new("bulk_versions");
    // One request in flight keeps the four items in sending order.
    env.settings.bulk.concurrency = 1;
    let engine = engine(&env).await;
    let client = env.search().await;
    let generation = engine
        .create_generation(Family::Master, "run-v")
        .await
        .unwrap();
    let doc = |name: &str| {
        json!({"gmcReferenceNumber": "X1", "doctorFirstName": name, "existsInGmc": true})
            .to_string()
            .into_bytes()
    };
    let (sender, mut outcomes, writer) = engine.bulk_writer::<&'static str>(&generation);
    for (version, name) in [(3, "third"), (1, "first"), (2, "second"), (3, "third")] {
        sender
            .send(BulkItem {
                id: "X1".into(),
                source: doc(name).into(),
                version: Some(version),
                ticket: name,
            })
            .await
            .unwrap();
    }
    drop(sender);
    let stats = writer.await.unwrap();
    let mut got = Vec::new();
    while let Some(o) = outcomes.recv().await {
        got.push((o.ticket, o.outcome));
    }
    assert_eq!(
        got,
        vec![
            ("third", ItemOutcome::Written),
            ("first", ItemOutcome::Superseded),
            ("second", ItemOutcome::Superseded),
            ("third", ItemOutcome::Written),
        ]
    );
    assert_eq!((stats.written, stats.superseded, stats.failed), (2, 2, 0));
    let stored = get_json(&client, &format!("/{}/_doc/X1", generation.name)).await;
    assert_eq!(stored["_source"]["doctorFirstName"], "third");
    assert_eq!(stored["_version"], 3);
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_429s_are_retried_until_every_document_is_written() {
    let mut env = TestEnv::new("bulk_429");
    env.settings.opensearch.url = throttled_opensearch_url();
    let client = SearchClient::new(&env.settings.opensearch).unwrap();
    if let Err(e) = client.version().await {
        panic!(
            "the throttled OpenSearch node is not reachable at {}: {e}; {}",
            env.settings.opensearch.url,
            common::START_HINT
        );
    }
    env.settings.bulk.concurrency = 16;
    env.settings.bulk.max_batch_docs = 50;
    env.settings.retry.initial_backoff_ms = 20;
    env.settings.retry.max_backoff_ms = 1000;
    env.settings.retry.max_retries = 40;
    let engine = Engine::new(&env.settings).await.unwrap();
    const N: usize = 20_000;
    let generation = engine
        .create_generation(Family::Master, "run-429")
        .await
        .unwrap();
    let (stats, outcomes) = write_docs(&engine, &generation, doctor_docs(11, N, 0)).await;
    eprintln!("429 run: {stats:?}");

    assert!(
        stats.throttled_429 > 0,
        "the throttled node must answer 429: {stats:?}"
    );
    assert_eq!(stats.written, N as u64, "{stats:?}");
    assert_eq!(stats.failed, 0, "{:?}", stats.failed_by_reason);
    assert!(stats.retried_items >= stats.throttled_429);
    assert!(
        stats.min_concurrency_seen < 16,
        "sustained 429s lower the concurrency: {stats:?}"
    );
    assert_eq!(outcomes.len(), N);
    let tickets: HashSet<usize> = outcomes.iter().map(|o| o.ticket).collect();
    assert_eq!(tickets.len(), N);
    engine.finish_load(&generation).await.unwrap();
    assert_eq!(count(&client, &generation.name).await, N as u64);
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendationindex_holds_the_same_documents_as_its_master_generation() {
    let env = TestEnv::new("reco_reindex");
    let engine = engine(&env).await;
    let client = env.search().await;
    let (master, _) = load_master(&engine, "run-reco", doctor_docs(5, 3000, 0)).await;
    let (reco, report) = engine
        .build_recommendation_generation(&master, "run-reco")
        .await
        .unwrap();
    assert_eq!(reco.family, Family::Recommendation);
    assert_eq!(report.source_count, 3000);
    assert_eq!(report.dest_count, 3000);
    assert_eq!(report.total, 3000);
    assert!(report.task.contains(':'), "a task id: {}", report.task);
    assert_eq!(
        ids(&client, &master.name, json!({"match_all": {}})).await,
        ids(&client, &reco.name, json!({"match_all": {}})).await
    );
    let meta = meta_of(&client, &reco.name).await;
    assert_eq!(meta["built_from"], master.name.as_str());
    assert_eq!(meta["state"], "ready");
    for id in ["1000000", "1001234", "1002999"] {
        let a = get_json(&client, &format!("/{}/_doc/{id}", master.name)).await;
        let b = get_json(&client, &format!("/{}/_doc/{id}", reco.name)).await;
        assert_eq!(a["_source"], b["_source"], "{id}");
    }
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_moves_every_alias_to_the_new_generations_at_once() {
    let env = TestEnv::new("promote_atomic");
    let engine = engine(&env).await;
    let client = env.search().await;
    let a = build_pair(&engine, "run-a", doctor_docs(1, 500, 0)).await;

    // First run: there are no aliases yet; promotion creates them.
    let (live_master, live_reco) = engine.live_generations().await.unwrap();
    assert_eq!((live_master, live_reco), (None, None));
    let report = engine.promote(&a.master, &a.recommendation).await.unwrap();
    assert_eq!(report.kind, MoveKind::Promotion);
    assert_eq!(report.master.from, None);
    assert_eq!(report.aliases.len(), 5);
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;
    let write = get_json(
        &client,
        &format!("/_alias/{}", env.name("masterdoctorindex")),
    )
    .await;
    assert_eq!(
        write[&a.master.name]["aliases"][env.name("masterdoctorindex")]["is_write_index"],
        true
    );
    // The filters came from the template.
    let connected = DatasetSpec::new(1, 500)
        .doctors()
        .filter(|d| d.expected.exists_in_gmc)
        .count() as u64;
    let discrepant = DatasetSpec::new(1, 500)
        .doctors()
        .filter(|d| d.expected.is_discrepancy())
        .count() as u64;
    assert_eq!(
        count(&client, &env.name("current_connections")).await,
        connected
    );
    assert_eq!(count(&client, &env.name("discrepancies")).await, discrepant);
    assert_eq!(count(&client, &env.name("recommendations")).await, 500);

    let b = build_pair(&engine, "run-b", doctor_docs(1, 520, 1)).await;
    let report = engine.promote(&b.master, &b.recommendation).await.unwrap();
    assert_eq!(report.master.from.as_deref(), Some(a.master.name.as_str()));
    assert_eq!(
        report.recommendation.from.as_deref(),
        Some(a.recommendation.name.as_str())
    );
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    assert_eq!(
        engine.live_generations().await.unwrap(),
        (
            Some(b.master.name.clone()),
            Some(b.recommendation.name.clone())
        )
    );
    assert_eq!(count(&client, &env.name("recommendationindex")).await, 520);
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_action_leaves_every_alias_where_it_was() {
    let env = TestEnv::new("promote_fails");
    let engine = engine(&env).await;
    let client = env.search().await;
    let a = build_pair(&engine, "run-a", doctor_docs(2, 300, 0)).await;
    engine.promote(&a.master, &a.recommendation).await.unwrap();
    let b = build_pair(&engine, "run-b", doctor_docs(2, 300, 1)).await;

    // One action of the request names a missing index.
    let mut planned = engine
        .plan_move(MoveKind::Promotion, &b.master.name, &b.recommendation.name)
        .await
        .unwrap();
    planned.plan.actions.push(json!({"add": {
        "index": env.name("no-such-index"),
        "alias": env.name("recommendations")
    }}));
    let error = engine.execute(planned).await.unwrap_err();
    assert!(matches!(error, PromoteError::Search(_)), "{error}");
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;

    // A plan made stale by another change (an alias removed behind its back)
    // fails as a whole too: its removes name the holders it saw.
    let planned = engine
        .plan_move(MoveKind::Promotion, &b.master.name, &b.recommendation.name)
        .await
        .unwrap();
    client
        .json(
            Method::Post,
            "/_aliases",
            &[],
            Some(&json!({"actions": [{"remove": {"index": a.master.name, "alias": env.name("discrepancies")}}]})),
        )
        .await
        .unwrap();
    assert!(engine.execute(planned).await.is_err());
    assert_eq!(
        alias_targets(&client, &env.name("current_connections")).await,
        vec![a.master.name.clone()]
    );
    assert_eq!(
        alias_targets(&client, &env.name("recommendationindex")).await,
        vec![a.recommendation.name.clone()]
    );
    assert!(alias_targets(&client, &env.name("discrepancies"))
        .await
        .is_empty());

    // A fresh promotion repairs everything, the missing alias included.
    engine.promote(&b.master, &b.recommendation).await.unwrap();
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_is_refused_when_a_concrete_index_holds_an_alias_name() {
    let env = TestEnv::new("promote_adopt");
    let engine = engine(&env).await;
    let client = env.search().await;
    client
        .json(
            Method::Put,
            &format!("/{}", env.name("current_connections")),
            &[],
            None,
        )
        .await
        .unwrap();
    let a = build_pair(&engine, "run-a", doctor_docs(4, 100, 0)).await;
    let error = engine
        .promote(&a.master, &a.recommendation)
        .await
        .unwrap_err();
    assert!(error.is_refusal());
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "index {} exists where alias {} should be",
            env.name("current_connections"),
            env.name("current_connections")
        )),
        "{message}"
    );
    assert!(message.contains("no alias moved"), "{message}");
    assert!(alias_targets(&client, &env.name("masterdoctorindex"))
        .await
        .is_empty());
    assert!(alias_targets(&client, &env.name("recommendationindex"))
        .await
        .is_empty());
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_refuse_a_short_generation_and_force_promotes_it() {
    let env = TestEnv::new("gates_short");
    let engine = engine(&env).await;
    let client = env.search().await;
    let a = build_pair(&engine, "run-a", doctor_docs(6, 2000, 0)).await;
    let first = engine.validate(&a.master, 2000, &a.stats, false).await;
    assert!(first.passed(), "{}", first.summary());
    let share = first
        .gates
        .iter()
        .find(|g| g.name == "share_of_previous")
        .unwrap();
    assert!(share.detail.contains("first run"));
    engine
        .promote_validated(&a.master, &a.recommendation, &first)
        .await
        .unwrap();

    // Half the documents: the sources shrank.
    let short_docs: Vec<_> = doctor_docs(6, 2000, 0).into_iter().take(1000).collect();
    let b = build_pair(&engine, "run-b", short_docs).await;
    let refused = engine.validate(&b.master, 1000, &b.stats, false).await;
    assert!(!refused.passed());
    let share = refused
        .gates
        .iter()
        .find(|g| g.name == "share_of_previous")
        .unwrap();
    assert!(!share.passed && !share.overridden);
    assert_eq!(share.figures["previous"], 2000);
    assert_eq!(share.figures["indexed"], 1000);
    let error = engine
        .promote_validated(&b.master, &b.recommendation, &refused)
        .await
        .unwrap_err();
    assert!(matches!(error, PromoteError::GatesFailed(_)), "{error}");
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;

    // The count gate compares with what the sources delivered.
    let miscounted = engine.validate(&b.master, 1001, &b.stats, true).await;
    assert!(!miscounted.passed(), "force overrides only the share gate");

    let forced = engine.validate(&b.master, 1000, &b.stats, true).await;
    assert!(forced.passed(), "{}", forced.summary());
    assert!(forced.forced);
    let share = forced
        .gates
        .iter()
        .find(|g| g.name == "share_of_previous")
        .unwrap();
    assert!(!share.passed && share.overridden);
    assert!(share.detail.contains("--force"));
    engine
        .promote_validated(&b.master, &b.recommendation, &forced)
        .await
        .unwrap();
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    cleanup_search(&env).await;
}

/// A region losing its doctors refuses promotion even when the total
/// passes: the drift gate names the body and both counts; `force` overrides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_designated_body_that_loses_its_doctors_refuses_promotion() {
    let env = TestEnv::new("gates_drift");
    let engine = engine(&env).await;
    let client = env.search().await;
    let docs = doctor_docs(12, 3000, 0);
    let a = build_pair(&engine, "run-a", docs.clone()).await;
    let first = engine.validate(&a.master, 3000, &a.stats, false).await;
    assert!(first.passed(), "{}", first.summary());
    engine
        .promote_validated(&a.master, &a.recommendation, &first)
        .await
        .unwrap();

    // The busiest GMC designated body loses every doctor.
    let body_of = |source: &[u8]| -> Option<String> {
        let v: Value = serde_json::from_slice(source).unwrap();
        v["designatedBody"].as_str().map(str::to_string)
    };
    let mut per_body: BTreeMap<String, usize> = BTreeMap::new();
    for (_, source) in &docs {
        if let Some(body) = body_of(source) {
            *per_body.entry(body).or_default() += 1;
        }
    }
    let (lost_body, lost) = per_body.iter().max_by_key(|(_, n)| **n).unwrap();
    let (lost_body, lost) = (lost_body.clone(), *lost);
    assert!((100..300).contains(&lost), "{lost} doctors in {lost_body}");
    let kept: Vec<_> = docs
        .into_iter()
        .filter(|(_, s)| body_of(s).as_deref() != Some(lost_body.as_str()))
        .collect();
    let kept_count = kept.len() as u64;
    let b = build_pair(&engine, "run-b", kept).await;
    let refused = engine
        .validate(&b.master, kept_count, &b.stats, false)
        .await;
    assert!(!refused.passed());
    let share = refused
        .gates
        .iter()
        .find(|g| g.name == "share_of_previous")
        .unwrap();
    assert!(share.passed, "the total alone passes: {}", share.detail);
    let drift = refused
        .gates
        .iter()
        .find(|g| g.name == "body_drift:designatedBody")
        .unwrap();
    assert!(!drift.passed && !drift.overridden);
    assert!(
        drift.detail.contains(&format!(
            "designatedBody {lost_body}: {lost} -> 0 documents"
        )),
        "{}",
        drift.detail
    );
    assert!(
        refused.summary().contains(&lost_body),
        "{}",
        refused.summary()
    );
    let error = engine
        .promote_validated(&b.master, &b.recommendation, &refused)
        .await
        .unwrap_err();
    assert!(matches!(error, PromoteError::GatesFailed(_)), "{error}");
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;

    let forced = engine.validate(&b.master, kept_count, &b.stats, true).await;
    assert!(forced.passed(), "{}", forced.summary());
    let drift = forced
        .gates
        .iter()
        .find(|g| g.name == "body_drift:designatedBody")
        .unwrap();
    assert!(drift.overridden && drift.detail.contains("--force"));
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_would_empty_an_alias_fails_its_gate() {
    let env = TestEnv::new("gates_filter");
    let engine = engine(&env).await;
    let a = build_pair(&engine, "run-a", doctor_docs(8, 400, 0)).await;
    engine.promote(&a.master, &a.recommendation).await.unwrap();
    // Same doctors, but nobody exists in GMC any more: current_connections would go empty.
    let docs: Vec<_> = DatasetSpec::new(8, 400)
        .doctors()
        .map(|d| {
            let mut doc = d.expected;
            doc.exists_in_gmc = false;
            (d.gmc_number, serde_json::to_vec(&doc).unwrap())
        })
        .collect();
    let (b, stats) = load_master(&engine, "run-b", docs).await;
    let report = engine.validate(&b, 400, &stats, true).await;
    assert!(!report.passed());
    let blocking: Vec<_> = report.blocking().map(|g| g.name.clone()).collect();
    assert_eq!(blocking, vec!["alias_filter:current_connections"]);
    let gate = &report.gates.iter().find(|g| g.name == blocking[0]).unwrap();
    assert_eq!(gate.figures["new"], 0);
    assert!(gate.figures["old"].as_u64().unwrap() > 0);
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_every_alias_answers_through_promotions_and_rollbacks() {
    let env = TestEnv::new("zero_downtime");
    let engine = engine(&env).await;
    let client = env.search().await;
    let a = build_pair(&engine, "run-a", doctor_docs(9, 2000, 0)).await;
    let b = build_pair(&engine, "run-b", doctor_docs(9, 2000, 1)).await;
    engine.promote(&a.master, &a.recommendation).await.unwrap();
    let aliases: Vec<String> = all_aliases(&engine).into_iter().map(|(n, _)| n).collect();
    for alias in &aliases {
        assert!(
            count(&client, alias).await > 0,
            "{alias} has documents before"
        );
    }

    let probe = Probe::start(client.clone(), aliases.clone());
    probe.wait_rounds(2).await;
    let before_moves = probe.rounds();
    let mut moves = 0;
    engine.promote(&b.master, &b.recommendation).await.unwrap();
    moves += 1;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let back = engine.rollback(None).await.unwrap();
        assert_eq!(back.master.to, a.master.name);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let forward = engine.rollback(Some(&b.master.name)).await.unwrap();
        assert_eq!(forward.recommendation.to, b.recommendation.name);
        moves += 2;
    }
    let during_moves = probe.rounds() - before_moves;
    let report = probe.stop().await;
    eprintln!(
        "probe: {} rounds, {} queries, {} problems",
        report.rounds,
        report.queries,
        report.problems.len()
    );

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Rounds that ended while the aliases moved (about a second of moves
    // and pauses; a round takes tens of milliseconds).
    assert!(
        during_moves >= 1,
        "the probe ran through the moves: {report:?}"
    );
    assert_eq!(report.queries, report.rounds * aliases.len() as u64);
    assert_eq!(moves, 7);
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_round_trip_and_the_commands() {
    let env = TestEnv::new("rollback_trip");
    let engine = engine(&env).await;
    let client = env.search().await;
    let prefix = env.settings.names.prefix.clone();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rebuilder"))
            .arg("--prefix")
            .arg(&prefix)
            .args(args)
            .env("REBUILDER_OPENSEARCH__URL", &env.settings.opensearch.url)
            .env(
                "REBUILDER_MONGODB__DATABASE",
                &env.settings.mongodb.database,
            )
            .output()
            .expect("the binary runs")
    };

    // Nothing live: a refusal, exit code 3.
    let out = cli(&["rollback"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let a = build_pair(&engine, "run-a", doctor_docs(10, 200, 0)).await;
    engine.promote(&a.master, &a.recommendation).await.unwrap();
    let error = engine.rollback(None).await.unwrap_err();
    assert!(
        matches!(error, PromoteError::NoRollbackTarget(_)),
        "{error}"
    );
    let b = build_pair(&engine, "run-b", doctor_docs(10, 210, 1)).await;
    engine.promote(&b.master, &b.recommendation).await.unwrap();

    let back = engine.rollback(None).await.unwrap();
    assert_eq!(back.kind, MoveKind::Rollback);
    assert_eq!(back.master.from.as_deref(), Some(b.master.name.as_str()));
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;
    assert_eq!(count(&client, &env.name("recommendations")).await, 200);

    // Forward again, naming the newer generation.
    engine.rollback(Some(&b.master.name)).await.unwrap();
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    // Naming a recommendation generation brings its master along.
    engine.rollback(Some(&a.recommendation.name)).await.unwrap();
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;

    // The same through the command line.
    let out = cli(&["rollback", "--to", &b.master.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&b.master.name));
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;
    let out = cli(&["rollback"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;

    let out = cli(&["generations"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_eq!(lines.len(), 5, "{table}");
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&a.master.name))
        .unwrap();
    assert!(
        row_a.contains("run-a") && row_a.contains(&env.name("current_connections")),
        "{row_a}"
    );
    assert!(row_a.contains(" 200 "), "{row_a}");
    let row_b = lines
        .iter()
        .find(|l| l.starts_with(&b.master.name))
        .unwrap();
    assert!(row_b.contains("run-b") && row_b.contains(" - "), "{row_b}");
    cleanup_search(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_refused_while_a_run_holds_the_lease_and_names_the_run() {
    let env = TestEnv::new("rollback_lease");
    let engine = engine(&env).await;
    let client = env.search().await;
    let a = build_pair(&engine, "run-a", doctor_docs(12, 150, 0)).await;
    engine.promote(&a.master, &a.recommendation).await.unwrap();
    let b = build_pair(&engine, "run-b", doctor_docs(12, 160, 1)).await;
    engine.promote(&b.master, &b.recommendation).await.unwrap();

    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    let busy = Lease::acquire(
        leases,
        REBUILD_LEASE,
        LeaseHolder::this_process("run-busy"),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let refused = roll_back(&env.settings, None)
        .await
        .expect_err("refused while a run holds the lease");
    assert_eq!(exit_code_for(&refused), 3, "{refused:#}");
    assert!(
        format!("{refused:#}").contains("run run-busy"),
        "{refused:#}"
    );
    assert_aliases_on(&client, &engine, &b.master.name, &b.recommendation.name).await;

    busy.release().await.unwrap();
    let report = roll_back(&env.settings, None).await.expect("rolled back");
    assert_eq!(report.master.to, a.master.name);
    assert_aliases_on(&client, &engine, &a.master.name, &a.recommendation.name).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_live_generation_and_the_previous_two() {
    let mut env = TestEnv::new("retention");
    env.settings.retention.keep_previous = 2;
    let engine = engine(&env).await;
    let docs = || doctor_docs(12, 50, 0);

    let mut pairs = Vec::new();
    let mut refused = Vec::new();
    for round in 1..=5 {
        let pair = build_pair(&engine, &format!("run-{round}"), docs()).await;
        engine
            .promote(&pair.master, &pair.recommendation)
            .await
            .unwrap();
        pairs.push(pair);
        if round == 2 {
            // Refused by a gate: loaded, never promoted.
            refused.push(load_master(&engine, "run-refused-old", docs()).await.0);
        }
    }
    let refused_new = load_master(&engine, "run-refused-new", docs()).await.0;
    let in_progress = engine
        .create_generation(Family::Master, "run-now")
        .await
        .unwrap();
    let orphan = engine
        .create_generation(Family::Master, "run-dead")
        .await
        .unwrap();

    let report = engine
        .apply_retention(std::slice::from_ref(&in_progress.name))
        .await
        .unwrap();
    let mut deleted = report.deleted.clone();
    deleted.sort();
    let mut expected_deleted = vec![
        pairs[0].master.name.clone(),
        pairs[1].master.name.clone(),
        refused[0].name.clone(),
        pairs[0].recommendation.name.clone(),
        pairs[1].recommendation.name.clone(),
    ];
    expected_deleted.sort();
    assert_eq!(deleted, expected_deleted);

    let mut left: Vec<String> = engine
        .list_generations()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    left.sort();
    let mut expected_left = vec![
        pairs[2].master.name.clone(),
        pairs[3].master.name.clone(),
        pairs[4].master.name.clone(),
        refused_new.name.clone(),
        in_progress.name.clone(),
        orphan.name.clone(),
        pairs[2].recommendation.name.clone(),
        pairs[3].recommendation.name.clone(),
        pairs[4].recommendation.name.clone(),
    ];
    expected_left.sort();
    assert_eq!(left, expected_left);

    // Orphans: still building, no alias, no live run claims them.
    let removed = engine
        .delete_orphans(std::slice::from_ref(&in_progress.name))
        .await
        .unwrap();
    assert_eq!(removed, vec![orphan.name.clone()]);
    let names: Vec<String> = engine
        .list_generations()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert!(names.contains(&in_progress.name));
    assert!(!names.contains(&orphan.name));
    // Rollback still has its previous generation.
    let back = engine.rollback(None).await.unwrap();
    assert_eq!(back.master.to, pairs[3].master.name);
    cleanup_search(&env).await;
}
