//! The full rebuild run against real servers: RabbitMQ with the TCS
//! simulator, the MongoDB-compatible store seeded with generated GMC data,
//! and OpenSearch. End to end per category, zero downtime across a second
//! run over changed data, the dead-letter queue, safe failures, the
//! single-flight lease, and a run killed mid-build.
//!
//! Needs the local stack (`scripts/stack start`). Every test owns its
//! index prefix, queues and database, and removes them at the end.

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{alias_targets, ids, TestEnv};
use engine_helpers::{all_aliases, engine, Probe};
use paused_run::PausedRun;
use rebuilder::rebuild::record::{RunOutcome, RunRecord};
use rebuilder::rebuild::Refused;
use rebuilder::rebuild::RunOptions;
use rebuilder::search::{GenerationState, SearchClient};
use rebuilder::sources::gmc::GmcSource;
use rebuilder::sources::SourceError;
use rebuilder::state::lease::{lease_collection, read_lease, Lease, LeaseHolder, REBUILD_LEASE};
use rebuilder::state::StateError;
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::simulator::SimulatorOptions;
use run_helpers::*;
use serde_json::json;

/// Every alias of both families with the generation it points to.
async fn alias_map(client: &SearchClient, env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let engine = engine(env).await;
    let mut map = BTreeMap::new();
    for (alias, _) in all_aliases(&engine) {
        let targets = alias_targets(client, &alias).await;
        map.insert(alias, targets);
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_every_doctor_as_merged_and_promotes_both_families() {
    logs();
    let env = TestEnv::new("run_e2e");
    let client = env.search().await;
    let spec = DatasetSpec::new(11, 3000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);

    let report = rebuild(&env).await.expect("the run succeeds");
    let served = tcs.await.unwrap().expect("the simulator served the sync");
    assert!(served[0].sync_end);

    let record = &report;
    assert_eq!(record.outcome, RunOutcome::Succeeded);
    assert_eq!(
        record.generations.len(),
        2,
        "a master and a recommendation generation"
    );
    let promotion = record.promotion.as_ref().expect("promoted");
    assert_eq!(promotion.master.from, None, "first run");

    let master_alias = env.name("masterdoctorindex");
    let per_category = assert_documents_match(&client, &master_alias, &spec).await;
    let c = &record.counts;
    assert_eq!(c.docs_expected, spec.doctors as u64);
    assert_eq!(
        c.merged_both + c.merged_tcs_only + c.merged_gmc_only,
        spec.doctors as u64
    );
    assert_eq!(
        c.merged_gmc_only,
        per_category[&rebuilder_dev::datagen::Category::GmcOnly] as u64
    );
    let duplicated = spec.doctors().filter(|d| d.tcs_messages.len() > 1).count() as u64;
    assert!(duplicated > 0);
    assert_eq!(c.tcs_duplicates, duplicated);
    assert_eq!(record.bulk.failed, 0);

    let connections = ids(
        &client,
        &env.name("current_connections"),
        json!({"match_all": {}}),
    )
    .await;
    assert_eq!(connections, expected_ids(&spec, |d| d.exists_in_gmc));
    let discrepancies = ids(
        &client,
        &env.name("discrepancies"),
        json!({"match_all": {}}),
    )
    .await;
    assert_eq!(discrepancies, expected_ids(&spec, |d| d.is_discrepancy()));
    let recommendations = ids(
        &client,
        &env.name("recommendationindex"),
        json!({"match_all": {}}),
    )
    .await;
    assert_eq!(recommendations.len(), spec.doctors);

    // The run is recorded as it ended, and the lease is free again.
    let stored = run_record(&env, &record.id).await;
    assert_eq!(stored.outcome, RunOutcome::Succeeded);
    assert!(stored.phases.iter().all(|p| p.duration_ms.is_some()));
    assert_eq!(stored.gates.len(), record.gates.len());
    assert!(stored.gates.iter().all(|g| g.passed));
    let lease = read_lease(
        &lease_collection(&env.mongo().await, &env.settings.mongodb),
        REBUILD_LEASE,
    )
    .await
    .unwrap();
    assert!(lease.is_none(), "the lease is released: {lease:?}");
    env.cleanup().await;
}

/// The malformed messages of `spec` are counted by reason in the run
/// report, lie on the dead-letter queue by reason and unchanged, and every
/// sync message was acked.
async fn assert_rejects_dead_lettered_and_acked(
    env: &TestEnv,
    spec: &DatasetSpec,
    report: &RunRecord,
) {
    let expected = spec.expected_rejects();
    let recorded: BTreeMap<&str, u64> = report
        .rejects
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(recorded, expected, "rejects by reason in the run record");

    let dead = take_dead_letters(env).await;
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (reason, _) in &dead {
        *by_reason.entry(reason.as_str()).or_default() += 1;
    }
    assert_eq!(
        by_reason, expected,
        "messages on the dead-letter queue by reason"
    );
    let mut bodies: Vec<Vec<u8>> = dead.into_iter().map(|(_, b)| b).collect();
    let mut malformed: Vec<Vec<u8>> = spec
        .malformed_tcs_messages()
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    bodies.sort();
    malformed.sort();
    // Not assert_eq: a body may be 10 MB.
    assert!(
        bodies == malformed,
        "the dead letters are the malformed bodies, unchanged ({} dead letters, {} sent)",
        bodies.len(),
        malformed.len()
    );

    let (left, _) = queue_state(env, &env.settings.rabbitmq.sync_data_queue).await;
    assert_eq!(left, 0, "every sync message was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tcs_messages_are_dead_lettered_and_counted_and_the_run_succeeds() {
    logs();
    let env = TestEnv::new("run_dlq");
    let spec = DatasetSpec::new(12, 1500);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let report = rebuild(&env)
        .await
        .expect("the run succeeds despite bad input");
    tcs.await.unwrap().unwrap();

    assert_rejects_dead_lettered_and_acked(&env, &spec, &report).await;
    env.cleanup().await;
}

/// The bad-input matrix (README, "Reliability"): every class of bad sync
/// message is dead-lettered unchanged and counted under its reason, and
/// no good record is lost: the generation holds every expected document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_bad_sync_message_is_counted_and_loses_no_other_record() {
    logs();
    let env = TestEnv::new("run_bad_inputs");
    let spec = DatasetSpec::new(14, 1200).with_bad_inputs();
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let report = rebuild(&env)
        .await
        .expect("the run succeeds despite every bad input");
    tcs.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::Succeeded);
    assert!(spec.expected_rejects().values().sum::<u64>() >= 14);
    assert_rejects_dead_lettered_and_acked(&env, &spec, &report).await;
    let client = env.search().await;
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_over_changed_data_keeps_every_alias_answering() {
    logs();
    let env = TestEnv::new("run_zero_downtime");
    let client = env.search().await;
    let first = DatasetSpec::new(13, 2500);
    seed(&env, &first).await;
    let tcs = simulator_once(&env, first);
    rebuild(&env).await.expect("the first run succeeds");
    tcs.await.unwrap().unwrap();
    let before = alias_map(&client, &env).await;

    let changed = first.with_variant(1);
    seed(&env, &changed).await;
    let tcs = simulator_once(&env, changed);
    let engine = engine(&env).await;
    let aliases: Vec<String> = all_aliases(&engine).into_iter().map(|(a, _)| a).collect();
    let probe = Probe::start(client.clone(), aliases);
    let report = rebuild(&env).await.expect("the second run succeeds");
    let seen = probe.stop().await;
    tcs.await.unwrap().unwrap();

    assert!(
        seen.rounds > 10,
        "the probe ran through the rebuild ({} rounds)",
        seen.rounds
    );
    assert!(
        seen.problems.is_empty(),
        "{} problems seen by the probe, the first: {:?}",
        seen.problems.len(),
        seen.problems.iter().take(5).collect::<Vec<_>>()
    );
    let after = alias_map(&client, &env).await;
    assert_ne!(before, after, "the aliases moved");
    let promotion = report.promotion.expect("promoted");
    assert_eq!(
        promotion.master.from.as_deref(),
        before[&env.name("masterdoctorindex")]
            .first()
            .map(String::as_str)
    );
    assert_documents_match(&client, &env.name("masterdoctorindex"), &changed).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_fails_and_moves_no_alias_when_tcs_is_silent_or_stops_before_sync_end() {
    logs();
    let mut env = TestEnv::new("run_safe_failures");
    let client = env.search().await;
    let spec = DatasetSpec::new(14, 1000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    rebuild(&env).await.expect("the baseline run succeeds");
    tcs.await.unwrap().unwrap();
    let before = alias_map(&client, &env).await;
    // Short, but not so short that a loaded machine's pause between the
    // simulator's first and last message reads as TCS falling silent.
    env.settings.rabbitmq.idle_timeout_secs = 6;

    // TCS sends nothing at all: no simulator.
    let error = rebuild(&env).await.expect_err("a silent TCS fails the run");
    let idle = error
        .chain()
        .find_map(|e| e.downcast_ref::<SourceError>())
        .unwrap_or_else(|| panic!("not a source error: {error:#}"));
    assert!(
        matches!(idle, SourceError::TcsIdle { received: 0, .. }),
        "{error:#}"
    );
    assert_eq!(alias_map(&client, &env).await, before, "no alias moved");
    let last = history(&env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.outcome, RunOutcome::Failed);
    assert!(last
        .error
        .as_deref()
        .unwrap_or("")
        .contains("TCS sent nothing"));
    // The simulator answers the syncStart the failed run left; drain it.
    let leftover = simulator_once(&env, spec);
    leftover.await.unwrap().unwrap();

    // TCS stops mid-sync: 300 messages and no syncEnd.
    let tcs = simulator(
        &env,
        spec,
        SimulatorOptions {
            once: true,
            stop_after: Some(300),
            ..SimulatorOptions::default()
        },
    );
    let error = rebuild(&env)
        .await
        .expect_err("a sync without syncEnd fails the run");
    assert!(
        error.chain().any(|e| matches!(
            e.downcast_ref::<SourceError>(),
            Some(SourceError::TcsIdle { received: 300, .. })
        )),
        "{error:#}"
    );
    assert!(!tcs.await.unwrap().unwrap()[0].sync_end);
    assert_eq!(alias_map(&client, &env).await, before, "no alias moved");

    // What the failed runs built was deleted; only the served pair remains.
    let listing = engine(&env).await.list_generations().await.unwrap();
    assert!(
        listing.iter().all(|g| g.state() == GenerationState::Ready),
        "no half-built generation is left: {:?}",
        listing
            .iter()
            .map(|g| (&g.name, g.state()))
            .collect::<Vec<_>>()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_runs_exactly_one_proceeds_and_the_other_names_it() {
    logs();
    let env = TestEnv::new("run_single_flight");
    let spec = DatasetSpec::new(15, 1000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let (a, b) = tokio::join!(rebuild(&env), rebuild(&env));
    tcs.await.unwrap().unwrap();

    let (winner, refused) = match (a, b) {
        (Ok(w), Err(r)) | (Err(r), Ok(w)) => (w, r),
        (a, b) => panic!(
            "expected exactly one run to proceed: {:?} / {:?}",
            a.map(|r| r.id),
            b.map(|r| r.id)
        ),
    };
    let refusal = refused
        .chain()
        .find_map(|e| e.downcast_ref::<Refused>())
        .unwrap_or_else(|| panic!("the other run is refused: {refused:#}"));
    assert!(
        refusal.0.contains(&winner.id),
        "the refusal names the run holding the lease: {}",
        refusal.0
    );
    assert_eq!(rebuilder::commands::exit_code_for(&refused), 3);
    let runs = history(&env).await.recent(10).await.unwrap();
    let outcomes: Vec<RunOutcome> = runs.iter().map(|r| r.outcome).collect();
    assert_eq!(runs.len(), 2, "both runs are recorded: {outcomes:?}");
    assert!(outcomes.contains(&RunOutcome::Succeeded) && outcomes.contains(&RunOutcome::Refused));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_lease_expires_and_a_live_one_is_renewed() {
    logs();
    let env = TestEnv::new("run_lease");
    let mongo = env.mongo().await;
    let leases = lease_collection(&mongo, &env.settings.mongodb);
    // Long enough that a renewal delayed by a loaded machine (the whole
    // suite runs in parallel against one MongoDB) still lands in time.
    let ttl = Duration::from_secs(6);

    let first = Lease::acquire(
        leases.clone(),
        "test",
        LeaseHolder::this_process("run-a"),
        ttl,
    )
    .await
    .unwrap();
    // Renewed while it lives: still held after several times its ttl.
    tokio::time::sleep(ttl * 2).await;
    match Lease::acquire(
        leases.clone(),
        "test",
        LeaseHolder::this_process("run-b"),
        ttl,
    )
    .await
    {
        Err(StateError::Held { run_id, .. }) => assert_eq!(run_id, "run-a"),
        other => panic!(
            "expected the lease to be held by run-a: {:?}",
            other.map(|l| l.holder().clone())
        ),
    }
    first.confirm().await.expect("run-a still holds it");
    // The holder dies: no release, no renewal. The lease expires after its ttl.
    drop(first);
    let died = Instant::now();
    let second = loop {
        match Lease::acquire(
            leases.clone(),
            "test",
            LeaseHolder::this_process("run-b"),
            ttl,
        )
        .await
        {
            Ok(lease) => break lease,
            Err(StateError::Held { .. }) if died.elapsed() < ttl * 3 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("the dead holder's lease did not expire: {e}"),
        }
    };
    assert!(died.elapsed() >= ttl / 2, "taken over only once expired");
    assert_eq!(second.holder().run_id, "run-b");
    second.release().await.unwrap();
    assert!(read_lease(&leases, "test").await.unwrap().is_none());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_build_moves_no_alias_and_the_next_run_cleans_up_and_loses_nothing() {
    logs();
    let mut env = TestEnv::new("run_crash");
    // Long enough to outlast what the test checks between the kill and the
    // run that must be refused (several new connections on a loaded machine).
    env.settings.run.lease_ttl_secs = 20;
    // A prefetch window well under what TCS sends, so that what the broker
    // still holds ready tells how many the child has surely acked.
    let prefetch = 300;
    env.settings.rabbitmq.prefetch = prefetch;
    let client = env.search().await;
    let spec = DatasetSpec::new(16, 2500);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    rebuild(&env).await.expect("the baseline run succeeds");
    tcs.await.unwrap().unwrap();
    let before = alias_map(&client, &env).await;

    // TCS delivers part of a sync and then goes quiet; the child run writes
    // and acks what it got, then waits for more.
    let sent = 1800;
    let tcs = simulator(
        &env,
        spec,
        SimulatorOptions {
            once: true,
            stop_after: Some(sent),
            ..SimulatorOptions::default()
        },
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .arg("run")
        .envs(child_env(&env))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the rebuilder binary starts");
    let history = history(&env).await;
    let queue = env.settings.rabbitmq.sync_data_queue.clone();
    let started = Instant::now();
    // Kill it once it has written documents and surely acked some messages.
    // Written is not yet acked: acks leave in delivery order, each once
    // every earlier message is settled, and a record waits unacked until
    // its doctor's GMC record is read. Once TCS has sent everything, the
    // child holds at most `prefetch` unacked, so fewer than `sent -
    // prefetch` still ready means acks were taken. (The ready count of a
    // passive declare is current; the management API's figures lag, and
    // CI once read a stale zero from them as acks.)
    let (child_run, ready_before_kill) = loop {
        let current = history.current_or_last().await.unwrap();
        if let Some(r) = current.filter(|r| r.outcome == RunOutcome::Running && r.bulk.written > 0)
        {
            if tcs.is_finished() {
                let (ready, _) = queue_state(&env, &queue).await;
                if u64::from(ready) + u64::from(prefetch) < sent {
                    break (r, ready);
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the child run never wrote anything, or the broker never saw an ack"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child run ended early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().expect("SIGKILL the child run");
    child.wait().unwrap();
    tcs.await.unwrap().unwrap();

    // The aliases did not move, and the child left a half-built generation.
    assert_eq!(alias_map(&client, &env).await, before);
    let listing = engine(&env).await.list_generations().await.unwrap();
    let orphans: Vec<String> = listing
        .iter()
        .filter(|g| g.state() == GenerationState::Building)
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(
        orphans.len(),
        2,
        "one half-built pair (the master and the recommendation generation loaded alongside it): {orphans:?}"
    );
    // What it acked stays acked: those messages do not come back; the rest
    // came back when its connection died.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ready, _) = loop {
        let state = queue_state(&env, &queue).await;
        if state.1 == 0 || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "killed after {:.1?}: {ready_before_kill} ready before the kill, {ready} after it, of {sent} sent",
        started.elapsed()
    );
    // At least `sent - prefetch - ready_before_kill` were acked.
    assert!(
        ready <= ready_before_kill + u32::from(prefetch),
        "the messages acked before the crash stay acked: {ready} ready after it, {ready_before_kill} ready before it with at most {prefetch} unacked, of {sent} sent"
    );

    // The dead child's lease expires by itself; the next run then cleans up
    // and succeeds.
    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    let held = read_lease(&leases, REBUILD_LEASE)
        .await
        .unwrap()
        .expect("the child held the lease");
    assert_eq!(held.holder.run_id, child_run.id);
    let refused = rebuild(&env)
        .await
        .expect_err("refused while the dead lease lives");
    assert!(
        refused
            .chain()
            .any(|c| c.downcast_ref::<Refused>().is_some()),
        "{refused:#}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_lease(&leases, REBUILD_LEASE)
        .await
        .unwrap()
        .is_none_or(|l| l.expired)
    {
        assert!(
            Instant::now() < deadline,
            "the dead child's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tcs = simulator_once(&env, spec);
    let report = rebuild(&env)
        .await
        .expect("the run after the crash succeeds");
    tcs.await.unwrap().unwrap();
    let mut deleted = report.orphans_deleted.clone();
    deleted.sort();
    let mut orphans = orphans;
    orphans.sort();
    assert_eq!(deleted, orphans, "the orphans were deleted");
    assert_eq!(report.counts.tcs_stale_discarded, u64::from(ready));
    assert_eq!(
        run_record(&env, &child_run.id).await.outcome,
        RunOutcome::Abandoned
    );
    // No acked message's data is missing: every doctor is there, as expected.
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_builds_and_validates_but_moves_no_alias() {
    logs();
    let env = TestEnv::new("run_dry");
    let client = env.search().await;
    let spec = DatasetSpec::new(17, 600);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let report = rebuild_with(
        &env,
        RunOptions {
            dry_run: true,
            ..RunOptions::default()
        },
    )
    .await
    .expect("the dry run succeeds");
    tcs.await.unwrap().unwrap();
    assert_eq!(report.outcome, RunOutcome::DryRun);
    assert!(report.promotion.is_none());
    assert!(
        !report.gates.is_empty() && report.gates.iter().all(|g| g.passed),
        "validated: {:?}",
        report.gates
    );
    assert_eq!(report.generations.len(), 2);
    assert!(
        alias_map(&client, &env)
            .await
            .values()
            .all(|t| t.is_empty()),
        "no alias exists"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctors_reader_reopens_its_cursor_after_a_stall_and_reads_each_doctor_once() {
    logs();
    let mut env = TestEnv::new("gmc_reader");
    env.settings.mongodb.batch_size = 50;
    let spec = DatasetSpec::new(18, 700);
    seed(&env, &spec).await;
    let mongo = env.mongo().await;
    // One doctor stored with a numeric _id, as some old records were.
    mongo
        .database(&env.settings.mongodb.database)
        .collection::<bson::Document>(&env.settings.mongodb.doctors_collection)
        .insert_one(bson::doc! {"_id": 42_i64, "doctorLastName": "Numeric", "existsInGmc": true})
        .await
        .unwrap();
    let mut gmc = GmcSource::new(&mongo, &env.settings.mongodb);

    // 650 doctors in pages of 50; the writer stalls twice, each time until
    // the reader has given up its cursor.
    // A guard of a second: long for a reader to wait on a page it cannot
    // hand over, so a loaded machine does not add a stall of its own.
    let mut pages = gmc.pages_with_guard(Duration::from_secs(1));
    let mut read = Vec::new();
    let mut n = 0;
    while let Some(page) = pages.next_page().await.expect("a page") {
        n += 1;
        if n == 2 || n == 6 {
            let resumed = pages.resumes();
            let deadline = Instant::now() + Duration::from_secs(60);
            while pages.resumes() == resumed {
                assert!(
                    Instant::now() < deadline,
                    "the reader never gave up its cursor"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        read.extend(
            page.rows
                .into_iter()
                .map(|r| r.expect("a usable id").0.into_string()),
        );
    }
    assert_eq!(
        pages.resumes(),
        2,
        "the cursor was reopened after each stall"
    );
    let mut expected: Vec<String> = spec
        .doctors()
        .filter(|d| d.gmc_doctor.is_some())
        .map(|d| d.gmc_number)
        .collect();
    expected.push("42".into());
    let mut sorted = read.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every doctor once, none twice");

    // Lookups find the numeric id too, once the probe has seen one.
    assert!(gmc.probe_id_types().await.unwrap());
    let wanted = [
        rebuilder::domain::GmcNumber::parse("42").unwrap(),
        rebuilder::domain::GmcNumber::parse(&expected[0]).unwrap(),
        rebuilder::domain::GmcNumber::parse("999").unwrap(),
    ];
    let found = gmc.doctors_by_number(&wanted).await.unwrap();
    let mut found: Vec<String> = found.into_iter().map(|(n, _)| n.into_string()).collect();
    found.sort();
    assert_eq!(found, vec![expected[0].clone(), "42".to_string()]);
    env.cleanup().await;
}

/// The merge does not wait for the whole GMC side: with the read of
/// `doctorsForDB` held after its first page, the documents of that page's
/// doctors are written already, while the records of the others wait; once
/// the read goes on, every doctor arrives as merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_written_from_the_first_page_of_gmc_doctors_and_none_is_lost() {
    logs();
    let env = TestEnv::new("run_first_page");
    let client = env.search().await;
    let spec = DatasetSpec::new(17, 3000);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let run = PausedRun::start_with(
        &env,
        "gmc_page",
        &[("REBUILDER_MONGODB__BATCH_SIZE", "1000")],
    );

    let history = history(&env).await;
    let started = Instant::now();
    let early = loop {
        let current = history.current_or_last().await.unwrap();
        if let Some(r) = current.filter(|r| r.outcome == RunOutcome::Running && r.bulk.written > 0)
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing was written while the GMC read was held after its first page:\n{}",
            run.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let phase = early.phases.last().map(|p| p.phase);
    assert_eq!(
        phase,
        Some(rebuilder::rebuild::record::RunPhase::GmcRead),
        "documents are written while GMC is still read"
    );
    // Hold the read a moment longer: what is written stays within the first
    // page's doctors (the others' records wait).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = history.current_or_last().await.unwrap().unwrap();
    assert!(
        held.bulk.written < spec.doctors as u64 / 2,
        "only the first page's doctors can be written yet: {} of {}",
        held.bulk.written,
        spec.doctors
    );
    run.release();
    let (status, log) = run.finish(120).await;
    assert!(status.success(), "the run succeeds:\n{log}");
    tcs.await.unwrap().unwrap();
    let record = history.current_or_last().await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);
    assert!(
        record.counts.tcs_waiting_peak > 0,
        "records waited for their doctors: {:?}",
        record.counts
    );
    assert_eq!(record.counts.docs_expected, spec.doctors as u64);
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;
    env.cleanup().await;
}
