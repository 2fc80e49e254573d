//! The fault suite, part one: SIGKILL of `rebuilder run` at every phase,
//! just before the `_aliases` call and just after it, against the real
//! servers. The run is told to stop and wait at the point
//! (`FAILPOINTS`, see `rebuilder::failpoint`) and is killed there,
//! with nothing cleaned up. Throughout, an alias probe reads every alias
//! from the cluster state every 50 ms (one `GET /_alias/...` request, so
//! one instant per read) and records any instant when an alias was missing,
//! held by more than one index, or the aliases of a family were not all on
//! one generation. After each kill the next run must succeed, the killed
//! run must be recorded `abandoned`, and no half-built generation may
//! survive. Each case prints its figures (instants probed, problems,
//! seconds until the next run had promoted).
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestEnv;
use engine_helpers::{all_aliases, engine};
use opensearch::http::Method;
use rebuilder::rebuild::record::{RunHistory, RunOutcome, RunRecord};
use rebuilder::search::{Family, GenerationState, SearchClient};
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::simulator::SimulatorOptions;
use run_helpers::*;
use serde_json::Value;

/// What the alias probe saw.
#[derive(Debug, Default)]
struct AliasView {
    instants: u64,
    problems: Vec<String>,
    /// Every (master, recommendation) pair seen serving.
    pairs: BTreeSet<(String, String)>,
}

struct AliasProbe {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<AliasView>,
}

impl AliasProbe {
    fn start(client: SearchClient, aliases: Vec<(String, Family)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let names: Vec<String> = aliases.iter().map(|(a, _)| a.clone()).collect();
        let path = format!("/_alias/{}", names.join(","));
        let handle = tokio::spawn(async move {
            let mut view = AliasView::default();
            while !flag.load(Ordering::SeqCst) {
                view.instants += 1;
                match client.request(Method::Get, &path, &[], None).await {
                    Ok((200, answer)) => judge(&answer, &aliases, &mut view),
                    Ok((status, answer)) => view.problems.push(format!(
                        "status {status}: {}",
                        answer.to_string().chars().take(200).collect::<String>()
                    )),
                    Err(e) => view.problems.push(format!("no answer: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            view
        });
        Self { stop, handle }
    }

    async fn stop(self) -> AliasView {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("the probe finishes")
    }
}

/// One instant: every alias held by exactly one index, each family's
/// aliases on one generation.
fn judge(answer: &Value, aliases: &[(String, Family)], view: &mut AliasView) {
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (index, body) in answer.as_object().into_iter().flatten() {
        for alias in body["aliases"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(a, _)| a)
        {
            holders
                .entry(alias.as_str())
                .or_default()
                .push(index.as_str());
        }
    }
    let mut by_family: BTreeMap<Family, BTreeSet<&str>> = BTreeMap::new();
    for (alias, family) in aliases {
        match holders.get(alias.as_str()).map(Vec::as_slice) {
            Some([one]) => {
                by_family.entry(*family).or_default().insert(one);
            }
            Some(many) => view.problems.push(format!("{alias} held by {many:?}")),
            None => view.problems.push(format!("{alias} missing")),
        }
    }
    for (family, generations) in &by_family {
        if generations.len() > 1 {
            view.problems
                .push(format!("{family:?} aliases on {generations:?} at once"));
        }
    }
    if let (Some(m), Some(r)) = (
        by_family.get(&Family::Master).and_then(|g| g.first()),
        by_family
            .get(&Family::Recommendation)
            .and_then(|g| g.first()),
    ) {
        view.pairs.insert((m.to_string(), r.to_string()));
    }
}

/// `rebuilder run` as a child with these `FAILPOINTS`, logging to `log`.
fn run_child(env: &TestEnv, failpoints: &str, log: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .arg("run")
        .envs(child_env(env))
        .env("FAILPOINTS", failpoints)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("rebuilder run starts")
}

/// Starts `rebuilder run` told to wait at `point`, waits until it does,
/// SIGKILLs it; returns the killed run's id.
async fn kill_at(env: &TestEnv, point: &str) -> String {
    let log = std::env::temp_dir().join(format!("{}-{point}.log", env.id));
    let mut child = run_child(env, point, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Failpoint reached") {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before reaching {point}:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the run did not reach {point}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(&log);
    let history = RunHistory::new(&env.mongo().await, &env.settings.mongodb);
    let killed: RunRecord = history
        .current_or_last()
        .await
        .unwrap()
        .expect("the killed run is recorded");
    assert_eq!(
        killed.outcome,
        RunOutcome::Running,
        "killed mid-run: {point}"
    );
    killed.id
}

/// The next run, retried while the dead run's lease has not expired.
async fn next_run(env: &TestEnv) -> RunRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rebuild(env).await {
            Ok(run) if run.outcome == RunOutcome::Succeeded => return run,
            Ok(run) if run.outcome == RunOutcome::Refused && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(run) => panic!(
                "the next run did not succeed: {:?} {:?}",
                run.outcome, run.error
            ),
            Err(e) if format!("{e:#}").contains("lease") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the next run failed: {e:#}"),
        }
    }
}

/// Kills a run at each of `points` in turn, each followed by a good run.
async fn kill_at_each(name: &str, seed_value: u64, points: &[&str]) {
    logs();
    let mut env = TestEnv::new(name);
    // A dead run's lease must expire before the next run may start.
    env.settings.run.lease_ttl_secs = 4;
    let spec = DatasetSpec::new(seed_value, 800);
    seed(&env, &spec).await;
    // One simulator answers every sync, of the killed runs and the others.
    let tcs = simulator(&env, spec, SimulatorOptions::default());
    next_run(&env).await;
    let engine = engine(&env).await;
    let client = env.search().await;
    let history = RunHistory::new(&env.mongo().await, &env.settings.mongodb);
    for point in points {
        let probe = AliasProbe::start(client.clone(), all_aliases(&engine));
        let killed = kill_at(&env, point).await;
        let killed_at = Instant::now();
        let next = next_run(&env).await;
        let recovered = killed_at.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let view = probe.stop().await;
        eprintln!(
            "fault: SIGKILL at {point}: {} instants probed, {} problems, {} serving pairs seen, next run promoted {:.1} s after the kill",
            view.instants,
            view.problems.len(),
            view.pairs.len(),
            recovered.as_secs_f64()
        );
        assert!(view.instants > 10, "the probe ran ({})", view.instants);
        assert!(
            view.problems.is_empty(),
            "SIGKILL at {point}: the probe saw {:?}",
            view.problems.iter().take(5).collect::<Vec<_>>()
        );
        let record = history
            .get(&killed)
            .await
            .unwrap()
            .expect("the killed run's record");
        assert_eq!(
            record.outcome,
            RunOutcome::Abandoned,
            "the next run marks the killed run abandoned ({point})"
        );
        let listing = engine.list_generations().await.unwrap();
        let building: Vec<_> = listing
            .iter()
            .filter(|g| g.state() == GenerationState::Building)
            .map(|g| g.name.clone())
            .collect();
        assert!(
            building.is_empty(),
            "half-built generations survived {point}: {building:?}"
        );
        let live = next.promotion.expect("promoted").master.to;
        assert!(listing.iter().any(|g| g.name == live && g.holds_alias()));
    }
    tcs.abort();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_loading_leaves_the_aliases_whole_and_the_next_run_succeeds() {
    kill_at_each(
        "fault_load",
        71,
        &["cleanup", "gmc_read", "tcs_merge", "gmc_only"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_checking_leaves_the_aliases_whole_and_the_next_run_succeeds() {
    kill_at_each(
        "fault_check",
        72,
        &["finish_load", "catch_up", "validate", "recommendation"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_around_the_alias_move_leaves_the_aliases_whole_and_the_next_run_succeeds() {
    kill_at_each(
        "fault_promote",
        73,
        &["promote", "before_aliases", "after_aliases", "retention"],
    )
    .await;
}

/// Runs `rebuilder run` with a panic armed at `point`; returns its exit
/// status and its log lines (stderr, JSON as in production).
async fn panic_at(env: &TestEnv, point: &str) -> (std::process::ExitStatus, Vec<String>) {
    let log = std::env::temp_dir().join(format!("{}-{point}-panic.log", env.id));
    let mut child = run_child(env, &format!("{point}=panic"), &log);
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the run did not end within 180 s of a panic at {point}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, text.lines().map(str::to_string).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_run_is_one_json_error_line_and_moves_no_alias() {
    logs();
    let mut env = TestEnv::new("fault_panic");
    env.settings.run.lease_ttl_secs = 4;
    // More doctors than a page of `doctorsForDB` (1,000), so `gmc_page` is met.
    let spec = DatasetSpec::new(74, 2500);
    seed(&env, &spec).await;
    let tcs = simulator(&env, spec, SimulatorOptions::default());
    next_run(&env).await;
    let client = env.search().await;
    let engine = engine(&env).await;
    let aliases = all_aliases(&engine);
    let served = |client: SearchClient, aliases: Vec<(String, Family)>| async move {
        let names: Vec<String> = aliases.iter().map(|(a, _)| a.clone()).collect();
        client
            .json(
                Method::Get,
                &format!("/_alias/{}", names.join(",")),
                &[],
                None,
            )
            .await
            .expect("the aliases read")
    };
    let mut before = served(client.clone(), aliases.clone()).await;

    // In the run's own flow (a phase start) and in a task of its own (the
    // doctors' reader, after its first page).
    for point in ["validate", "gmc_page"] {
        let (status, lines) = panic_at(&env, point).await;
        assert!(
            !status.success(),
            "a panic at {point} ends the run in failure"
        );
        let records: Vec<Value> = lines
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|_| {
                    panic!("a log line that is not JSON (panic at {point}): {l}")
                })
            })
            .collect();
        let panics: Vec<&Value> = records
            .iter()
            .filter(|r| r["message"] == "A thread panicked.")
            .collect();
        let ours = format!("failpoint {point}: a panic on purpose");
        assert!(
            panics
                .iter()
                .any(|r| r["level"] == "ERROR" && r["panic"] == ours.as_str()
                    && r["location"].as_str().is_some_and(|l| l.contains("failpoint.rs"))),
            "the panic at {point} is logged as one JSON error line with its message and place: {panics:?}"
        );
        if point == "gmc_page" {
            // The reader's task died with doctors unread: the run fails and
            // says so (its channel's end is not taken for the last doctor).
            let failed = records
                .iter()
                .find(|r| r["message"] == "The command failed.")
                .unwrap_or_else(|| panic!("no final error line: {records:?}"));
            let error = failed["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("the reader of doctorsForDB stopped before the end")
                    && error.contains(&ours),
                "{error}"
            );
        }
        eprintln!(
            "fault: panic at {point}: exit {status}, {} log lines, all JSON, {} panic lines",
            records.len(),
            panics.len()
        );
        assert_eq!(
            served(client.clone(), aliases.clone()).await,
            before,
            "no alias moved after a panic at {point}"
        );
        // The next run succeeds (once a lease the panicking run left has
        // expired).
        next_run(&env).await;
        let moved = served(client.clone(), aliases.clone()).await;
        assert_ne!(moved, before, "the next run promoted");
        before = moved;
    }
    tcs.abort();
    env.cleanup().await;
}
