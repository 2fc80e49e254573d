//! Adopting the legacy layout with readers and a legacy writer running, on
//! the real OpenSearch node: `masterdoctorindex` and `recommendationindex`
//! as concrete indices, `current_connections` an alias of the first, no
//! `discrepancies`. Readers never see an error or an empty answer; every
//! write the legacy writer got acknowledged is in the adopted generation;
//! the next rebuild promotes over the adopted layout.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{alias_targets, count, TestEnv};
use engine_helpers::{doctor_docs, Probe};
use opensearch::http::Method;
use rebuilder::rebuild::adopt::adopt;
use rebuilder::rebuild::record::RunOutcome;
use rebuilder::search::SearchClient;
use rebuilder_dev::datagen::DatasetSpec;
use run_helpers::*;
use serde_json::json;

/// The legacy layout, as the old sync job left it.
async fn legacy_layout(client: &SearchClient, env: &TestEnv, spec: &DatasetSpec) -> u64 {
    let master = env.name("masterdoctorindex");
    let reco = env.name("recommendationindex");
    let docs = doctor_docs(spec.seed, spec.doctors, 0);
    for index in [&master, &reco] {
        client
            .json(
                Method::Put,
                &format!("/{index}"),
                &[],
                Some(&json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
            )
            .await
            .unwrap();
        let mut body = Vec::new();
        for (id, source) in &docs {
            body.extend_from_slice(json!({"index": {"_id": id}}).to_string().as_bytes());
            body.push(b'\n');
            body.extend_from_slice(source);
            body.push(b'\n');
        }
        let (status, answer) = client
            .request_bytes(
                Method::Post,
                &format!("/{index}/_bulk"),
                &[("refresh", "true")],
                Some(body),
                "application/x-ndjson",
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["errors"], false, "{answer}");
    }
    client
        .json(
            Method::Post,
            "/_aliases",
            &[],
            Some(&json!({"actions": [{"add": {"index": master, "alias": env.name("current_connections"), "filter": {"term": {"existsInGmc": true}}}}]})),
        )
        .await
        .unwrap();
    docs.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_moves_the_legacy_layout_under_aliases_with_readers_and_a_writer_running() {
    logs();
    let env = TestEnv::new("adopt");
    let client = env.search().await;
    let spec = DatasetSpec::new(51, 3000);
    let legacy = legacy_layout(&client, &env, &spec).await;
    let master = env.name("masterdoctorindex");

    // Without --yes: a plan, and nothing moves.
    let (plan, report) = adopt(&env.settings, false).await.expect("a plan");
    assert!(report.is_none());
    assert_eq!(plan.copies.len(), 2);
    assert!(
        plan.aliases_missing.contains(&env.name("discrepancies")),
        "{plan:?}"
    );
    assert!(plan.describe().contains("--yes"));
    assert_eq!(
        alias_targets(&client, &master).await,
        Vec::<String>::new(),
        "still a concrete index"
    );

    let probe = Probe::start(
        client.clone(),
        vec![
            master.clone(),
            env.name("current_connections"),
            env.name("recommendationindex"),
        ],
    );
    // A legacy writer: one document every 20 ms through the name, retried
    // while the write block refuses it; it keeps what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (client, master, stop, written) = (
            client.clone(),
            master.clone(),
            stop.clone(),
            written.clone(),
        );
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0u64);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("W{n:05}");
                let body = json!({"gmcReferenceNumber": id, "doctorLastName": "Writer", "existsInGmc": true});
                loop {
                    let (status, _) = client
                        .request(
                            Method::Put,
                            &format!("/{master}/_doc/{id}"),
                            &[],
                            Some(&body),
                        )
                        .await
                        .expect("OpenSearch answers");
                    if (200..300).contains(&status) {
                        acked.push(id.clone());
                        written.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    assert!(status == 403 || status == 429, "the writer got {status}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (acked, refused)
        })
    };
    // The writer and the probe at work before the adoption and after it
    // (counted, not timed: a loaded machine does less in a fixed time).
    let writes_after = |n: u64| {
        let target = written.load(Ordering::SeqCst) + n;
        let written = written.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while written.load(Ordering::SeqCst) < target {
                assert!(Instant::now() < deadline, "the writer stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    writes_after(6).await;
    probe.wait_rounds(3).await;
    let (_, report) = adopt(&env.settings, true).await.expect("adopted");
    let report = report.expect("a report");
    writes_after(6).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = writer.await.unwrap();
    let seen = probe.stop().await;
    println!(
        "adoption (printed): {} ms in all, writes blocked {} ms; the writer was refused {refused} times and retried",
        report.took_ms, report.write_block_ms
    );
    assert!(
        seen.rounds >= 5,
        "the probe read before and after the adoption ({} rounds)",
        seen.rounds
    );
    // The aliases move before the legacy indices go, so their readers never
    // fail. A search on a legacy index's own name that OpenSearch resolved
    // in the instant it deletes that index fails with "all shards failed"
    // (the name never goes missing, nor empty): at most once per index.
    let at_deletion = |p: &String| {
        (p.starts_with(&format!("{master}:"))
            || p.starts_with(&format!("{}:", env.name("recommendationindex"))))
            && p.contains("all shards failed")
    };
    let (instant, other): (Vec<&String>, Vec<&String>) =
        seen.problems.iter().partition(|p| at_deletion(p));
    assert!(other.is_empty(), "the probe saw {other:?}");
    assert!(
        instant.len() <= 2,
        "more than the deletion instant: {instant:?}"
    );
    println!(
        "probe (printed): {} queries, {} failed at the instant a legacy index was deleted",
        seen.queries,
        instant.len()
    );

    // Every name is an alias on the copies, discrepancies included.
    let master_copy = &report.copies[0].to;
    let reco_copy = &report.copies[1].to;
    for alias in [
        "masterdoctorindex",
        "current_connections",
        "discrepancies",
        "recommendations",
    ] {
        assert_eq!(
            alias_targets(&client, &env.name(alias)).await,
            vec![master_copy.clone()],
            "{alias}"
        );
    }
    assert_eq!(
        alias_targets(&client, &env.name("recommendationindex")).await,
        vec![reco_copy.clone()]
    );
    assert!(
        count(&client, &env.name("discrepancies")).await > 0,
        "the filter works on the copy"
    );
    // No acknowledged write is lost, before or after the swap.
    let _ = client
        .request(Method::Post, &format!("/{master}/_refresh"), &[], None)
        .await;
    assert!(
        acked.len() > 10,
        "the writer wrote through the swap ({})",
        acked.len()
    );
    let found = common::ids(
        &client,
        &master,
        json!({"prefix": {"gmcReferenceNumber.keyword": "W"}}),
    )
    .await;
    let missing: Vec<&String> = acked.iter().filter(|id| !found.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are missing: {missing:?}",
        missing.len()
    );
    assert_eq!(count(&client, &master).await, legacy + acked.len() as u64);

    // The next rebuild promotes over the adopted layout.
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let record = rebuild(&env).await.expect("the rebuild after adoption");
    tcs.await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);
    assert_eq!(
        record.promotion.as_ref().unwrap().master.from.as_deref(),
        Some(master_copy.as_str())
    );
    assert_documents_match(&client, &master, &spec).await;
    env.cleanup().await;
}
