//! The soak of the handover: live TCS and GMC changes at a steady rate
//! through three rebuilds back to back, with a fault during each (the
//! applier SIGKILLed, the broker restarted, MongoDB restarted; in a random
//! order, at a random moment of the run). Afterwards every doctor's
//! document holds the value last written for it by each source.
//!
//! It restarts real servers, so it is a test binary of its own (cargo runs
//! binaries one after another: no other test sees the outages). TCS is
//! played by the test itself: its sync serves each trainee as TCS holds it
//! now (the last update included), as the real TCS dumps its database.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/paused_run.rs"]
mod paused_run;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::doc;
use common::TestEnv;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use live_helpers::doc_of;
use paused_run::PausedRun;
use rand::{Rng, SeedableRng};
use rebuilder::sources::tcs::{declare_topology, json_properties, publish_confirmed};
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::{json, Value};

/// What TCS holds now: every trainee's record(s), by GMC number.
type TcsState = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

/// A child process killed when dropped (also when the test fails).
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `rebuilder live` as a child (SIGKILLed by the test, or on drop).
fn live_child(env: &TestEnv, n: usize) -> KilledOnDrop {
    let log = std::env::temp_dir().join(format!("{}-live-{n}.log", env.id));
    let child = Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .arg("live")
        .envs(child_env(env))
        .env("REBUILDER_LIVE__LEASE_TTL_SECS", "4")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("rebuilder live starts");
    KilledOnDrop(child)
}

/// TCS answering each `syncStart` with what it holds now, riding out
/// broker restarts.
async fn tcs_server(env: TestEnv, state: TcsState, stop: Arc<AtomicBool>) {
    let s = &env.settings.rabbitmq;
    while !stop.load(Ordering::SeqCst) {
        let served = async {
            let connection = rebuilder::sources::rabbit_connection(s).await?;
            declare_topology(&connection, s).await?;
            let listen = connection.create_channel().await?;
            listen.basic_qos(1, BasicQosOptions::default()).await?;
            let mut starts = listen
                .basic_consume(
                    s.sync_start_queue.as_str().into(),
                    "soak-tcs".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let publish = connection.create_channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            while let Some(delivery) = starts.next().await {
                let delivery = delivery?;
                let bodies: Vec<Value> =
                    state.lock().unwrap().values().flatten().cloned().collect();
                for body in bodies {
                    publish_confirmed(
                        &publish,
                        &s.exchange,
                        &s.sync_data_routing_key,
                        body.to_string().as_bytes(),
                        json_properties(),
                    )
                    .await?;
                }
                publish_confirmed(
                    &publish,
                    &s.exchange,
                    &s.sync_data_routing_key,
                    br#"{"syncEnd": true}"#,
                    json_properties(),
                )
                .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            Ok::<(), anyhow::Error>(())
        };
        if let Err(e) = served.await {
            eprintln!("soak TCS: {e:#}; connecting again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last values written by each source, as the writer confirmed them.
#[derive(Default)]
struct Written {
    programme: BTreeMap<String, String>,
    body: BTreeMap<String, String>,
    /// GMC writes the server acknowledged without finding the doctor: no
    /// change was made, so none is expected. (Each doctor written exists;
    /// a count above 0 means the server lost or hid documents, and is
    /// printed.)
    unmatched: u64,
}

/// Live changes at a steady rate until `stop`, each kept only once its
/// source confirmed it (a publish confirmed, a write acknowledged):
/// through an outage the writer waits and tries again, as TCS and GMC do.
async fn writer(
    env: TestEnv,
    state: TcsState,
    trainees: Vec<String>,
    doctors: Vec<String>,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> Written {
    let mut written = Written::default();
    let mongo = env.mongo().await;
    let collection = mongo
        .database(&env.settings.mongodb.database)
        .collection::<bson::Document>(&env.settings.mongodb.doctors_collection);
    let mut publisher: Option<(lapin::Connection, lapin::Channel)> = None;
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        for k in 0..10 {
            let number = &trainees[(round * 10 + k) % trainees.len()];
            let value = format!("Soak {round}-{k}");
            loop {
                if publisher.is_none() {
                    publisher = async {
                        let s = &env.settings.rabbitmq;
                        let c = rebuilder::sources::rabbit_connection(s).await.ok()?;
                        declare_topology(&c, s).await.ok()?;
                        let ch = c.create_channel().await.ok()?;
                        ch.confirm_select(ConfirmSelectOptions::default())
                            .await
                            .ok()?;
                        Some((c, ch))
                    }
                    .await;
                }
                let Some((_, channel)) = &publisher else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                // TCS changes its database, then says so on the queue.
                let body = {
                    let mut held = state.lock().unwrap();
                    let record = &mut held.get_mut(number).unwrap()[0];
                    record["programmeName"] = json!(value);
                    record.clone()
                };
                let sent = publish_confirmed(
                    channel,
                    &env.settings.rabbitmq.exchange,
                    &env.settings.rabbitmq.update_routing_key,
                    body.to_string().as_bytes(),
                    json_properties(),
                )
                .await;
                match sent {
                    Ok(()) => break,
                    Err(_) => {
                        publisher = None;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            written.programme.insert(number.clone(), value);
            changes.fetch_add(1, Ordering::SeqCst);
        }
        for k in 0..10 {
            let number = &doctors[(round * 10 + k) % doctors.len()];
            let value = format!("1-SOAK{round}X{k}");
            let matched = loop {
                match collection
                    .update_one(
                        doc! {"_id": number},
                        doc! {"$set": {"designatedBodyCode": &value}},
                    )
                    .await
                {
                    Ok(result) => break result.matched_count,
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            };
            if matched == 0 {
                written.unmatched += 1;
                continue;
            }
            written.body.insert(number.clone(), value);
            changes.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    written
}

/// Doctors whose served document does not hold their last written values.
async fn mismatches(env: &TestEnv, written: &Written) -> Vec<String> {
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let mut wrong = Vec::new();
    for (number, value) in &written.programme {
        let doc = doc_of(&client, &alias, number).await;
        if doc.as_ref().map(|d| &d["programmeName"]) != Some(&json!(value)) {
            wrong.push(format!("{number} programmeName {value:?}: {doc:?}"));
        }
    }
    for (number, value) in &written.body {
        let doc = doc_of(&client, &alias, number).await;
        if doc.as_ref().map(|d| &d["designatedBody"]) != Some(&json!(value)) {
            wrong.push(format!("{number} designatedBody {value:?}: {doc:?}"));
        }
    }
    wrong
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillApplier,
    RestartBroker,
    RestartMongo,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_changes_through_three_rebuilds_with_a_fault_each_are_all_served() {
    logs();
    let env = TestEnv::new("soak");
    let spec = DatasetSpec::new(81, 2000);
    seed(&env, &spec).await;
    let state: TcsState = Arc::new(Mutex::new(
        spec.doctors()
            .filter(|d| !d.tcs_messages.is_empty())
            .map(|d| (d.gmc_number.clone(), d.tcs_messages.clone()))
            .collect(),
    ));
    let stop_tcs = Arc::new(AtomicBool::new(false));
    let clone = |env: &TestEnv| TestEnv {
        settings: env.settings.clone(),
        id: env.id.clone(),
    };
    let tcs = tokio::spawn(tcs_server(clone(&env), state.clone(), stop_tcs.clone()));
    rebuild(&env).await.expect("the first generation");

    let trainees: Vec<String> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .map(|d| d.gmc_number)
        .collect();
    let doctors: Vec<String> = spec
        .doctors()
        .filter(|d| d.category == Category::Both)
        .map(|d| d.gmc_number)
        .collect();
    let mut appliers = 0;
    let mut applier = live_child(&env, appliers);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stop_writer = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(
        clone(&env),
        state.clone(),
        trainees,
        doctors,
        stop_writer.clone(),
        changes.clone(),
    ));

    let seed = rand::rng().random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = [
        Fault::KillApplier,
        Fault::RestartBroker,
        Fault::RestartMongo,
    ];
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.random_range(0..=i));
    }
    let mut outcomes = Vec::new();
    for fault in faults {
        let mut run = PausedRun::start(&env, "no_such_point");
        run.wait_for("Recording live changes", 180).await;
        let after = Duration::from_millis(rng.random_range(300..4000));
        tokio::time::sleep(after).await;
        match fault {
            Fault::KillApplier => {
                drop(applier);
                appliers += 1;
                applier = live_child(&env, appliers);
            }
            Fault::RestartBroker => stack(&["restart", "rabbitmq"]),
            Fault::RestartMongo => stack(&["restart", "mongo"]),
        }
        let (status, log) = run.finish(300).await;
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("Rebuild ended") || l.contains("ERROR"));
        outcomes.push(format!(
            "{fault:?} after {:.1} s: {}",
            after.as_secs_f64(),
            if status.success() {
                "promoted".to_string()
            } else {
                format!("run failed ({})", last.unwrap_or("?"))
            }
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writer.store(true, Ordering::SeqCst);
    let written = writing.await.unwrap();

    // The applier drains what is left; then every last value is served.
    let deadline = Instant::now() + Duration::from_secs(120);
    let wrong = loop {
        let wrong = mismatches(&env, &written).await;
        if wrong.is_empty() || Instant::now() > deadline {
            break wrong;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "soak (seed {seed}): {} live changes ({} doctors by TCS, {} by GMC) through 3 rebuilds; faults: {}; lost: {} ({} of TCS's, {} of GMC's); GMC writes that found no doctor: {}",
        changes.load(Ordering::SeqCst),
        written.programme.len(),
        written.body.len(),
        outcomes.join("; "),
        wrong.len(),
        wrong.iter().filter(|w| w.contains(" programmeName ")).count(),
        wrong.iter().filter(|w| w.contains(" designatedBody ")).count(),
        written.unmatched
    );
    assert!(
        wrong.is_empty(),
        "{} doctors do not hold their last written value, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let promoted = outcomes.iter().filter(|o| o.ends_with("promoted")).count();
    assert!(
        promoted >= 2,
        "most runs promote through their fault: {outcomes:?}"
    );
    drop(applier);
    stop_tcs.store(true, Ordering::SeqCst);
    tcs.abort();
    env.cleanup().await;
}
