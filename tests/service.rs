//! `rebuilder serve` against the real servers: the service runs as a child
//! process on port 0 with each test's own prefix, queues and database; the
//! TCS simulator answers its syncs. The trigger and its single flight (also
//! across two processes), authentication, status and paging, rollback under
//! a reader probe, metrics parsed by a real Prometheus parser, graceful
//! shutdown mid-run, the schedule, and the token kept out of the logs.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{alias_targets, TestEnv};
use engine_helpers::{all_aliases, engine, Probe};
use rebuilder::rebuild::record::{RunOutcome, RunRecord, Trigger};
use rebuilder::search::GenerationState;
use rebuilder::state::lease::{lease_collection, Lease, LeaseHolder, REBUILD_LEASE};
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::simulator::SimulatorOptions;
use reqwest::Method;
use run_helpers::*;
use serde_json::{json, Value};
use service_helpers::{Service, TOKEN};

/// Every alias of both families with the generations behind it.
async fn alias_map(env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let client = env.search().await;
    let engine = engine(env).await;
    let mut map = BTreeMap::new();
    for (alias, _) in all_aliases(&engine) {
        let targets = alias_targets(&client, &alias).await;
        map.insert(alias, targets);
    }
    map
}

/// The samples of a Prometheus text, by metric name (labels joined in).
fn parse_metrics(text: &str) -> Vec<prometheus_parse::Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"))
        .samples
}

fn metric_value(samples: &[prometheus_parse::Sample], name: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name)
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_answers_202_at_once_a_second_one_409_and_the_run_is_followed_to_its_report() {
    logs();
    let env = TestEnv::new("svc_trigger");
    let spec = DatasetSpec::new(31, 4000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let service = Service::start(&env, &[]);

    let asked = Instant::now();
    let (status, started) = service.trigger(Some(TOKEN)).await;
    assert_eq!(status, 202, "{started}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the trigger answers before the run ends"
    );
    let run_id = started["runId"].as_str().expect("a run id").to_string();
    assert_eq!(started["status"], format!("/api/runs/{run_id}"));

    // While it runs: a second trigger, either method, is refused with its id.
    let (status, again) = service.trigger(Some(TOKEN)).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "run_in_progress");
    assert_eq!(again["error"]["runId"], run_id.as_str());
    let (status, old_path) = service
        .call(Method::GET, "/api/sync", Some(TOKEN), None)
        .await;
    assert_eq!(status, 409, "{old_path}");
    assert_eq!(old_path["error"]["runId"], run_id.as_str());

    // Status shows the run working, then its final report.
    let mut saw_progress = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let final_status = loop {
        let (status, now) = service.get("/api/sync/status").await;
        assert_eq!(status, 200, "{now}");
        assert_eq!(now["run"]["_id"], run_id.as_str());
        if now["running"] == true {
            assert_eq!(now["run"]["outcome"], "running");
            if !now["run"]["phases"].as_array().unwrap().is_empty() {
                assert!(now["run"]["phase"].is_string(), "{now}");
            }
            if now["run"]["counts"]["tcsRecords"].as_u64().unwrap_or(0) > 0 {
                saw_progress = true;
            }
        } else if now["run"]["outcome"] != "running" {
            break now;
        }
        assert!(Instant::now() < deadline, "the run did not end: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        saw_progress,
        "status showed the counts growing while the run worked"
    );
    assert_eq!(
        final_status["run"]["outcome"], "succeeded",
        "{final_status}"
    );
    tcs.await.unwrap().unwrap();

    let report = service.wait_for_run(&run_id, Duration::from_secs(5)).await;
    let record: RunRecord = serde_json::from_value(report.clone()).expect("a run record");
    assert_eq!(record.trigger, Trigger::Http);
    assert_eq!(record.counts.docs_expected, spec.doctors as u64);
    let history = history(&env).await;
    let stored = history.get(&run_id).await.unwrap().unwrap();
    assert_eq!(stored, record, "the API answers the stored report");
    let runs = history.recent(10).await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.outcome == RunOutcome::Succeeded)
            .count(),
        1,
        "exactly one run did the work"
    );
    assert_documents_match(&env.search().await, &env.name("masterdoctorindex"), &spec).await;

    // Metrics: real Prometheus text; the document counter is the report's.
    let (status, text) = service.get_text("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);
    assert_eq!(
        metric_value(&samples, "rebuilder_documents_written_total"),
        Some((record.bulk.written + record.recommendation_bulk.written) as f64),
        "documents written, into both generations"
    );
    assert_eq!(
        metric_value(&samples, "rebuilder_last_run_documents_written"),
        Some(record.bulk.written as f64)
    );
    assert_eq!(
        metric_value(&samples, "rebuilder_run_in_progress"),
        Some(0.0)
    );
    let bulk_requests = samples
        .iter()
        .find(|s| s.metric == "rebuilder_bulk_request_duration_seconds")
        .and_then(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        })
        .expect("the bulk latency histogram");
    assert_eq!(
        bulk_requests,
        (record.bulk.requests + record.recommendation_bulk.requests) as f64,
        "one observation per request, of both writers"
    );
    assert!(
        metric_value(&samples, "rebuilder_live_generation_age_seconds").is_some(),
        "{text}"
    );
    assert!(samples
        .iter()
        .any(|s| s.metric == "rebuilder_last_run_phase_duration_seconds"));

    // The token was used a dozen times and never logged.
    let logs = service.logs();
    assert!(logs.contains(&run_id), "the logs carry the run id");
    assert!(!logs.contains(TOKEN), "the token appears in the logs");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_triggered_at_the_same_moment_start_exactly_one_run() {
    logs();
    let env = TestEnv::new("svc_two");
    let spec = DatasetSpec::new(32, 1500);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let a = Service::start(&env, &[]);
    let b = Service::start(&env, &[]);
    let ((sa, va), (sb, vb)) = tokio::join!(a.trigger(Some(TOKEN)), b.trigger(Some(TOKEN)));
    let mut statuses = [sa, sb];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409], "{va} / {vb}");
    let (winner, loser) = if sa == 202 { (&va, &vb) } else { (&vb, &va) };
    let run_id = winner["runId"].as_str().unwrap();
    assert_eq!(loser["error"]["code"], "run_in_progress");
    assert_eq!(loser["error"]["runId"], run_id, "the refusal names the run");
    let service = if sa == 202 { &a } else { &b };
    let done = service.wait_for_run(run_id, Duration::from_secs(120)).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    tcs.await.unwrap().unwrap();
    let runs = history(&env).await.recent(10).await.unwrap();
    let worked: Vec<&RunRecord> = runs
        .iter()
        .filter(|r| r.outcome != RunOutcome::Refused)
        .collect();
    assert_eq!(worked.len(), 1, "one run started: {runs:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_or_with_a_wrong_one_nothing_starts_and_runs_page_by_age() {
    logs();
    let env = TestEnv::new("svc_auth");
    let service = Service::start(&env, &[]);
    for (method, path) in [
        (Method::POST, "/api/sync"),
        (Method::GET, "/api/sync"),
        (Method::POST, "/api/rollback"),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, body) = service.call(method.clone(), path, token, None).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(body["error"]["message"].is_string());
        }
    }
    let history = history(&env).await;
    assert!(
        history.recent(10).await.unwrap().is_empty(),
        "no run was started or even recorded"
    );
    // Reads stay open without `protect_reads`.
    let (status, status_body) = service.get("/api/sync/status").await;
    assert_eq!(status, 200, "{status_body}");
    assert_eq!(status_body["run"], Value::Null);
    let (status, missing) = service.get("/api/runs/no-such-run").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "run_not_found");
    let (status, unknown) = service.get("/api/nothing-here").await;
    assert_eq!(
        (status, unknown["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    // Paging over stored runs: newest first, `next` as the cursor.
    for n in 1..=5 {
        let mut r = RunRecord::start(
            &format!("20200101T00000{n}Z-aaaaaa"),
            Trigger::Cli,
            false,
            false,
        );
        r.finish(RunOutcome::Succeeded, None);
        history.save(&r.id, &r).await.unwrap();
    }
    let page = |before: Option<&str>| {
        let path = match before {
            Some(b) => format!("/api/runs?limit=2&before={b}"),
            None => "/api/runs?limit=2".to_string(),
        };
        let service = &service;
        async move { service.get(&path).await }
    };
    let ids = |v: &Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["_id"].as_str().unwrap()[14..15].to_string())
            .collect()
    };
    let (status, first) = page(None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(ids(&first), ["5", "4"]);
    let (_, second) = page(first["next"].as_str()).await;
    assert_eq!(ids(&second), ["3", "2"]);
    let (_, third) = page(second["next"].as_str()).await;
    assert_eq!(ids(&third), ["1"]);
    assert_eq!(third["next"], Value::Null);
    let (status, bad) = service.get("/api/runs?limit=0").await;
    assert_eq!(
        (status, bad["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    assert!(!service.logs().contains(TOKEN));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_endpoint_moves_every_alias_back_while_readers_see_no_gap() {
    logs();
    let env = TestEnv::new("svc_rollback");
    let first = DatasetSpec::new(33, 1200);
    seed(&env, &first).await;
    let tcs = simulator_once(&env, first);
    let a = rebuild(&env).await.expect("the first run");
    tcs.await.unwrap().unwrap();
    let second = first.with_variant(1);
    seed(&env, &second).await;
    let tcs = simulator_once(&env, second);
    let b = rebuild(&env).await.expect("the second run");
    tcs.await.unwrap().unwrap();
    let promoted_a = a.promotion.expect("promoted").master.to;
    let promoted_b = b.promotion.expect("promoted").master.to;

    let service = Service::start(&env, &[]);
    let client = env.search().await;
    let aliases: Vec<String> = all_aliases(&engine(&env).await)
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    // The listing says beforehand where a rollback without a target goes.
    let (status, listing) = service.get("/api/generations").await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(
        listing["rollback"]["master"],
        promoted_a.as_str(),
        "{}",
        listing["rollback"]
    );
    assert!(listing["rollback"]["recommendation"].is_string());
    assert!(listing["rollback"]["refusal"].is_null());
    let planned_reco = listing["rollback"]["recommendation"].clone();
    let probe = Probe::start(client.clone(), aliases);
    probe.wait_rounds(3).await;
    let (status, moved) = service
        .call(Method::POST, "/api/rollback", Some(TOKEN), Some(json!({})))
        .await;
    let seen = probe.stop().await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["kind"], "rollback");
    assert_eq!(moved["master"]["from"], promoted_b.as_str());
    assert_eq!(moved["master"]["to"], promoted_a.as_str());
    assert_eq!(
        moved["recommendation"]["to"], planned_reco,
        "as listed: {moved}"
    );
    assert_eq!(moved["aliases"].as_array().unwrap().len(), 5);
    assert!(
        seen.rounds >= 5,
        "the probe read before and after the rollback ({} rounds)",
        seen.rounds
    );
    assert!(
        seen.problems.is_empty(),
        "the probe saw {:?}",
        seen.problems.iter().take(5).collect::<Vec<_>>()
    );
    for (alias, targets) in alias_map(&env).await {
        if alias.ends_with("recommendationindex") {
            continue;
        }
        assert_eq!(targets, vec![promoted_a.clone()], "{alias}");
    }
    // And forward again, naming the newer generation.
    let (status, forward) = service
        .call(
            Method::POST,
            "/api/rollback",
            Some(TOKEN),
            Some(json!({"to": promoted_b})),
        )
        .await;
    assert_eq!(status, 200, "{forward}");
    assert_eq!(forward["master"]["to"], promoted_b.as_str());
    let (status, generations) = service.get("/api/generations").await;
    assert_eq!(status, 200);
    assert_eq!(
        generations["aliases"][env.name("masterdoctorindex")],
        json!([promoted_b])
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_aborts_it_cleanly_and_the_next_trigger_succeeds() {
    logs();
    let env = TestEnv::new("svc_sigterm");
    let spec = DatasetSpec::new(34, 1500);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    rebuild(&env).await.expect("the baseline run");
    tcs.await.unwrap().unwrap();
    let before = alias_map(&env).await;

    // TCS sends part of a sync and goes quiet: the run waits in the merge.
    let tcs = simulator(
        &env,
        spec,
        SimulatorOptions {
            once: true,
            stop_after: Some(800),
            ..SimulatorOptions::default()
        },
    );
    let mut service = Service::start(&env, &[]);
    let (status, started) = service.trigger(Some(TOKEN)).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["runId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, run) = service.get(&format!("/api/runs/{run_id}")).await;
        if run["bulk"]["written"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never wrote: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopping = Instant::now();
    let code = service.terminate();
    assert_eq!(code, Some(0), "a clean exit; log:\n{}", service.logs());
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "it stopped at a safe point"
    );
    tcs.await.unwrap().unwrap();

    let record = run_record(&env, &run_id).await;
    assert_eq!(record.outcome, RunOutcome::Aborted, "{:?}", record.error);
    assert_eq!(alias_map(&env).await, before, "no alias moved");
    let listing = engine(&env).await.list_generations().await.unwrap();
    assert!(
        listing
            .iter()
            .all(|g| g.state() != GenerationState::Building),
        "no half-built generation remains: {:?}",
        listing
            .iter()
            .map(|g| (&g.name, g.state()))
            .collect::<Vec<_>>()
    );
    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    assert!(
        rebuilder::state::lease::read_lease(&leases, REBUILD_LEASE)
            .await
            .unwrap()
            .is_none(),
        "the lease was released"
    );

    let tcs = simulator_once(&env, spec);
    let service = Service::start(&env, &[]);
    let (status, started) = service.trigger(Some(TOKEN)).await;
    assert_eq!(status, 202, "{started}");
    let done = service
        .wait_for_run(started["runId"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    tcs.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_fires_and_skips_while_a_run_holds_the_lease() {
    logs();
    let env = TestEnv::new("svc_schedule");
    let spec = DatasetSpec::new(35, 600);
    seed(&env, &spec).await;
    // A TCS that answers every sync, as long as the test lasts.
    let tcs = simulator(&env, spec, SimulatorOptions::default());
    let service = Service::start(
        &env,
        &[
            ("REBUILDER_SCHEDULE__ENABLED", "true"),
            ("REBUILDER_SCHEDULE__CRON", "*/2 * * * * *"),
            ("REBUILDER_SCHEDULE__TIME_ZONE", "Europe/London"),
        ],
    );
    let (_, status) = service.get("/api/sync/status").await;
    assert!(status["nextScheduled"].is_string(), "{status}");

    let history = history(&env).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let runs = history.recent(10).await.unwrap();
        if let Some(done) = runs
            .iter()
            .find(|r| r.trigger == Trigger::Schedule && r.outcome == RunOutcome::Succeeded)
        {
            break done.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run succeeded: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first.counts.docs_expected, spec.doctors as u64);

    // Another holder takes the lease: the schedule fires, skips, and counts it.
    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    let held = loop {
        match Lease::acquire(
            leases.clone(),
            REBUILD_LEASE,
            LeaseHolder::this_process("test-holder"),
            Duration::from_secs(30),
        )
        .await
        {
            Ok(lease) => break lease,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let skipped =
        |text: &str| metric_value(&parse_metrics(text), "rebuilder_schedule_skipped_total");
    let before = skipped(&service.get_text("/metrics").await.1).unwrap_or(0.0);
    let runs_before = history.recent(100).await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = skipped(&service.get_text("/metrics").await.1).unwrap_or(0.0);
    let runs_during: Vec<RunRecord> = history.recent(100).await.unwrap();
    assert!(after >= before + 1.0, "skips counted: {before} -> {after}");
    assert!(
        runs_during[..runs_during.len() - runs_before]
            .iter()
            .all(|r| r.outcome == RunOutcome::Refused),
        "nothing ran while the lease was held"
    );
    assert!(service.logs().contains("Scheduled rebuild skipped"));
    held.release().await.unwrap();
    drop(service);
    tcs.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_panics_leaves_the_service_serving_and_the_next_trigger_succeeds() {
    logs();
    let mut env = TestEnv::new("svc_panic");
    env.settings.run.lease_ttl_secs = 4;
    let spec = DatasetSpec::new(33, 600);
    seed(&env, &spec).await;
    // One simulator answers every sync, the panicked run's and the next.
    let tcs = simulator(&env, spec, SimulatorOptions::default());
    // The first run to reach validation panics there (a defect).
    let service = Service::start(&env, &[("FAILPOINTS", "validate=panic:1")]);
    let (status, started) = service.trigger(Some(TOKEN)).await;
    assert_eq!(status, 202, "{started}");
    let panicked = started["runId"].as_str().expect("a run id").to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !service.logs().contains("The run panicked") {
        assert!(
            Instant::now() < deadline,
            "the run never reached its panic:\n{}",
            service.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, health) = service.get("/healthz").await;
    assert_eq!(status, 200, "the service serves on: {health}");

    // Refused while the dead run's lease lives, then started and promoted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = loop {
        let (status, body) = service.trigger(Some(TOKEN)).await;
        if status == 202 {
            break body["runId"].as_str().expect("a run id").to_string();
        }
        assert_eq!(status, 409, "{body}");
        assert!(
            Instant::now() < deadline,
            "the dead run's lease never expired: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let report = service.wait_for_run(&next, Duration::from_secs(120)).await;
    assert_eq!(report["outcome"], "succeeded", "{report}");
    let (_, first) = service.get(&format!("/api/runs/{panicked}")).await;
    assert_eq!(first["outcome"], "abandoned", "{first}");
    tcs.abort();
    env.cleanup().await;
}
