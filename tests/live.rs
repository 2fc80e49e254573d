//! Live updates against the real servers: the applier consumes the TCS
//! update queue and the change streams of the test's own MongoDB database,
//! and writes through the test's write alias. Outside a rebuild, each kind
//! of change reaches the live index and touches only its source's fields;
//! during a rebuild, thousands of changes spread over the whole run are all
//! in the new generation after the swap, none older than it should be.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bson::doc;
use common::TestEnv;
use live_helpers::*;
use rebuilder::domain::MasterDoctor;
use rebuilder::rebuild::record::RunOutcome;
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_rebuild_each_change_reaches_the_live_index_with_its_own_fields_only() {
    logs();
    let env = TestEnv::new("live_outside");
    let spec = DatasetSpec::new(41, 600);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    // One TCS record each: a duplicated doctor's first record may be the
    // losing trainee, whose live update is rightly a noop.
    let both: Vec<_> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .take(3)
        .collect();
    let (a, b, c) = (&both[0], &both[1], &both[2]);
    let before_a = doc_of(&client, &alias, &a.gmc_number).await.unwrap();
    let before_b = doc_of(&client, &alias, &b.gmc_number).await.unwrap();
    // The sync's own malformed messages are on the dead-letter queue; clear it.
    take_dead_letters(&env).await;

    let applier = Applier::start(&env).await;
    let publisher = TcsPublisher::new(&env).await;
    let (doctors, recommendations) = gmc_collections(&env).await;

    // A TCS update of doctor A: new programme, nothing of GMC's.
    let mut update = a.tcs_messages[0].clone();
    update["programmeName"] = json!("Live Programme A");
    update["programmeMembershipType"] = Value::Null;
    let sent = Instant::now();
    publisher.publish(update.to_string().as_bytes()).await;
    // A GMC change of doctor B: another designated body.
    doctors
        .update_one(
            doc! {"_id": &b.gmc_number},
            doc! {"$set": {"designatedBodyCode": "1-LIVEDB", "underNotice": "YES"}},
        )
        .await
        .unwrap();
    // A new submitted recommendation of doctor C.
    recommendations
        .insert_one(newest_recommendation(&c.gmc_number, "REJECTED", 1))
        .await
        .unwrap();
    // And a malformed update, which must be dead-lettered, not applied.
    publisher.publish(b"{\"gmcReferenceNumber\": ").await;

    let within = Duration::from_secs(60);
    let tcs_latency = wait_for_doc(&client, &alias, &a.gmc_number, within, |d| {
        d.is_some_and(|d| d["programmeName"] == "Live Programme A")
    })
    .await;
    let gmc_latency = wait_for_doc(&client, &alias, &b.gmc_number, within, |d| {
        d.is_some_and(|d| d["designatedBody"] == "1-LIVEDB")
    })
    .await;
    let rec_latency = wait_for_doc(&client, &alias, &c.gmc_number, within, |d| {
        d.is_some_and(|d| d["gmcStatus"] == "Rejected")
    })
    .await;
    println!(
        "live latency after the change (test machine, printed, not asserted): TCS update {:.2} s, doctor change {:.2} s, recommendation {:.2} s (from the first publish: {:.2} s)",
        tcs_latency.as_secs_f64(),
        gmc_latency.as_secs_f64(),
        rec_latency.as_secs_f64(),
        sent.elapsed().as_secs_f64()
    );

    let after_a = doc_of(&client, &alias, &a.gmc_number).await.unwrap();
    assert_eq!(after_a["membershipType"], Value::Null, "cleared by TCS");
    for gmc_field in [
        "designatedBody",
        "underNotice",
        "tisStatus",
        "existsInGmc",
        "gmcStatus",
    ] {
        assert_eq!(
            after_a[gmc_field], before_a[gmc_field],
            "TCS left {gmc_field} alone"
        );
    }
    let after_b = doc_of(&client, &alias, &b.gmc_number).await.unwrap();
    assert_eq!(after_b["underNotice"], "YES");
    for tcs_field in [
        "programmeName",
        "tcsPersonId",
        "tcsDesignatedBody",
        "membershipType",
        "placementGrade",
    ] {
        assert_eq!(
            after_b[tcs_field], before_b[tcs_field],
            "GMC left {tcs_field} alone"
        );
    }
    // The malformed update waits on the dead-letter queue with its reason.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let dead = take_dead_letters(&env).await;
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        dead.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["invalid_json"],
        "the malformed update is dead-lettered"
    );
    let (left, _) = queue_state(&env, &env.settings.rabbitmq.update_queue).await;
    assert_eq!(left, 0, "every update was acked");
    publisher.close().await;
    applier.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_who_leaves_gmc_is_cleared_when_tcs_knows_them_and_removed_otherwise() {
    logs();
    let env = TestEnv::new("live_delete");
    let spec = DatasetSpec::new(42, 600);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let in_both = spec
        .doctors()
        .find(|d| d.category == Category::Both)
        .unwrap();
    let gmc_only = spec
        .doctors()
        .find(|d| d.category == Category::GmcOnly)
        .unwrap();
    let applier = Applier::start(&env).await;
    let (doctors, _) = gmc_collections(&env).await;
    for d in [&in_both, &gmc_only] {
        doctors
            .delete_one(doc! {"_id": &d.gmc_number})
            .await
            .unwrap();
    }
    let within = Duration::from_secs(60);
    wait_for_doc(&client, &alias, &gmc_only.gmc_number, within, |d| {
        d.is_none()
    })
    .await;
    wait_for_doc(&client, &alias, &in_both.gmc_number, within, |d| {
        d.is_some_and(|d| d["existsInGmc"] == false && d.get("designatedBody").is_none())
    })
    .await;
    let kept = doc_of(&client, &alias, &in_both.gmc_number).await.unwrap();
    assert_eq!(
        kept["programmeName"].as_str(),
        in_both.expected.programme_name.as_deref(),
        "the TCS fields stay"
    );
    applier.stop().await;
    env.cleanup().await;
}

/// The latest value each doctor should show, per source.
#[derive(Default)]
struct Latest {
    programme: BTreeMap<String, String>,
    body: BTreeMap<String, String>,
    status: BTreeMap<String, String>,
    left: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_change_made_during_a_rebuild_is_lost_in_the_new_generation() {
    logs();
    let env = TestEnv::new("live_rebuild");
    let spec = DatasetSpec::new(43, 4000);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let applier = Applier::start(&env).await;

    let tcs_doctors: Vec<_> = spec
        .doctors()
        .filter(|d| {
            matches!(d.category, Category::Both | Category::TcsOnly) && d.tcs_messages.len() == 1
        })
        .collect();
    let gmc_doctors: Vec<_> = spec
        .doctors()
        .filter(|d| matches!(d.category, Category::Both | Category::GmcOnly))
        .collect();

    // The rebuild, with the writer of live changes around it: TCS updates
    // and GMC changes from once the run has begun until after its swap.
    let tcs = simulator_once(&env, spec);
    let mut run = Some(start_rebuild(&env).await);
    let publisher = TcsPublisher::new(&env).await;
    let (doctors, recommendations) = gmc_collections(&env).await;
    let mut latest = Latest::default();
    let (mut tcs_updates, mut gmc_changes, mut after_swap_rounds) = (0usize, 0usize, 0);
    let mut round = 0u32;
    let mut outcome = None;
    while outcome.is_none() || tcs_updates < 2000 || gmc_changes < 2000 || after_swap_rounds < 3 {
        round += 1;
        // 40 TCS updates, 40 GMC changes per round, over rotating doctors.
        for k in 0..40 {
            let d = &tcs_doctors[(round as usize * 40 + k) % tcs_doctors.len()];
            let mut body = d.tcs_messages[0].clone();
            let value = format!("Live {round}-{k}");
            body["programmeName"] = json!(value);
            publisher.publish(body.to_string().as_bytes()).await;
            latest.programme.insert(d.gmc_number.clone(), value);
            tcs_updates += 1;
        }
        for k in 0..40 {
            let d = &gmc_doctors[(round as usize * 40 + k) % gmc_doctors.len()];
            if latest.left.contains(&d.gmc_number) {
                continue;
            }
            match k % 10 {
                0 if round.is_multiple_of(5) && d.category == Category::GmcOnly => {
                    doctors
                        .delete_one(doc! {"_id": &d.gmc_number})
                        .await
                        .unwrap();
                    latest.left.push(d.gmc_number.clone());
                    latest.body.remove(&d.gmc_number);
                    latest.status.remove(&d.gmc_number);
                }
                1..=3 => {
                    let outcome =
                        ["APPROVED", "REJECTED", "UNDER_REVIEW"][(round as usize + k) % 3];
                    recommendations
                        .insert_one(newest_recommendation(
                            &d.gmc_number,
                            outcome,
                            round * 100 + k as u32,
                        ))
                        .await
                        .unwrap();
                    let shown = match outcome {
                        "APPROVED" => "Approved",
                        "REJECTED" => "Rejected",
                        _ => "Under Review",
                    };
                    latest
                        .status
                        .insert(d.gmc_number.clone(), shown.to_string());
                }
                _ => {
                    let body = format!("1-LIVE{round}X{k}");
                    doctors
                        .update_one(
                            doc! {"_id": &d.gmc_number},
                            doc! {"$set": {"designatedBodyCode": &body}},
                        )
                        .await
                        .unwrap();
                    latest.body.insert(d.gmc_number.clone(), body);
                }
            }
            gmc_changes += 1;
        }
        if run.as_ref().is_some_and(|r| r.is_finished()) {
            outcome = Some(run.take().unwrap().await.unwrap());
        } else if outcome.is_some() {
            after_swap_rounds += 1;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let record = outcome
        .unwrap()
        .expect("the rebuild succeeds with live changes around it");
    tcs.await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);
    assert!(record.catch_up.applier_active, "{:?}", record.catch_up);
    assert!(
        record.catch_up.replayed > 0,
        "changes were replayed: {:?}",
        record.catch_up
    );
    println!(
        "catch-up (printed): {} changes replayed in {} rounds, {} left at the pause, applier paused {} ms; {tcs_updates} TCS updates and {gmc_changes} GMC changes made",
        record.catch_up.replayed,
        record.catch_up.rounds,
        record.catch_up.backlog_at_pause,
        record.catch_up.paused_ms
    );

    // The applier keeps applying after the swap: wait until the queue is
    // drained and every doctor shows its latest change, or the deadline
    // passes. A change that was lost never shows, however long we wait; a
    // slow machine only takes longer to get there.
    let generation = record.promotion.as_ref().unwrap().master.to.clone();
    assert_eq!(
        common::alias_targets(&client, &alias).await,
        vec![generation.clone()],
        "the live alias is on the new generation"
    );
    let converging = Instant::now();
    let deadline = converging + Duration::from_secs(120);
    loop {
        let (left, _) = queue_state(&env, &env.settings.rabbitmq.update_queue).await;
        let docs = documents(&client, &alias).await;
        let wrong = not_latest(&latest, &docs);
        if left == 0 && wrong.is_empty() {
            println!(
                "every doctor showed its latest change {:.1} s after the run ended",
                converging.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} updates still queued and {} doctors not showing their latest change {:?} after the run ended, the first: {:?}",
            left,
            wrong.len(),
            converging.elapsed(),
            wrong.iter().take(8).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    publisher.close().await;
    applier.stop().await;
    env.cleanup().await;
}

/// The doctors whose document does not show the latest change made to them.
fn not_latest(latest: &Latest, docs: &BTreeMap<String, MasterDoctor>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (id, value) in &latest.programme {
        let shown = docs.get(id).and_then(|d| d.programme_name.clone());
        if shown.as_deref() != Some(value.as_str()) {
            wrong.push(format!("{id}: programmeName {shown:?}, latest {value}"));
        }
    }
    for (id, value) in &latest.body {
        let shown = docs.get(id).and_then(|d| d.designated_body.clone());
        if shown.as_deref() != Some(value.as_str()) {
            wrong.push(format!("{id}: designatedBody {shown:?}, latest {value}"));
        }
    }
    for (id, value) in &latest.status {
        let shown = docs.get(id).and_then(|d| d.gmc_status.clone());
        if shown.as_deref() != Some(value.as_str()) {
            wrong.push(format!("{id}: gmcStatus {shown:?}, latest {value}"));
        }
    }
    for id in &latest.left {
        if docs.contains_key(id) {
            wrong.push(format!("{id}: still there after leaving GMC"));
        }
    }
    wrong
}

/// What the writer made: the latest programme and designated body per
/// doctor, and how many changes.
type Written = (BTreeMap<String, String>, BTreeMap<String, String>, usize);

/// Makes live changes until stopped, keeping the latest value of each.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Written>,
}

impl Writer {
    /// TCS programme changes and GMC designated-body changes, round after round.
    async fn start(env: &TestEnv, spec: &DatasetSpec) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let publisher = TcsPublisher::new(env).await;
        let (doctors, _) = gmc_collections(env).await;
        let tcs_doctors: Vec<_> = spec
            .doctors()
            .filter(|d| {
                matches!(d.category, Category::Both | Category::TcsOnly)
                    && d.tcs_messages.len() == 1
            })
            .collect();
        let gmc_doctors: Vec<_> = spec
            .doctors()
            .filter(|d| d.category == Category::Both)
            .collect();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut programme, mut body, mut made) = (BTreeMap::new(), BTreeMap::new(), 0);
            let mut round = 0usize;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                round += 1;
                for k in 0..20 {
                    let d = &tcs_doctors[(round * 20 + k) % tcs_doctors.len()];
                    let mut message = d.tcs_messages[0].clone();
                    let value = format!("Restart {round}-{k}");
                    message["programmeName"] = json!(value);
                    publisher.publish(message.to_string().as_bytes()).await;
                    programme.insert(d.gmc_number.clone(), value);
                    let g = &gmc_doctors[(round * 20 + k) % gmc_doctors.len()];
                    let value = format!("1-R{round}X{k}");
                    doctors
                        .update_one(
                            doc! {"_id": &g.gmc_number},
                            doc! {"$set": {"designatedBodyCode": &value}},
                        )
                        .await
                        .unwrap();
                    body.insert(g.gmc_number.clone(), value);
                    made += 2;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            publisher.close().await;
            (programme, body, made)
        });
        Writer { stop, task }
    }

    async fn stop(self) -> Written {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Every doctor shows the latest value the writer gave it, within a minute:
/// the change streams deliver a restarted applier's backlog a while after
/// the queue is empty, more so on a loaded machine.
async fn assert_latest(
    client: &rebuilder::search::SearchClient,
    alias: &str,
    programme: &BTreeMap<String, String>,
    body: &BTreeMap<String, String>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wrong = latest_mismatches(client, alias, programme, body).await;
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} doctors lost their latest change, the first: {:?}",
            wrong.len(),
            wrong.iter().take(8).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn latest_mismatches(
    client: &rebuilder::search::SearchClient,
    alias: &str,
    programme: &BTreeMap<String, String>,
    body: &BTreeMap<String, String>,
) -> Vec<String> {
    let docs = documents(client, alias).await;
    let mut wrong = Vec::new();
    for (id, value) in programme {
        let shown = docs.get(id).and_then(|d| d.programme_name.clone());
        if shown.as_deref() != Some(value.as_str()) {
            wrong.push(format!("{id}: programmeName {shown:?}, latest {value}"));
        }
    }
    for (id, value) in body {
        let shown = docs.get(id).and_then(|d| d.designated_body.clone());
        if shown.as_deref() != Some(value.as_str()) {
            wrong.push(format!("{id}: designatedBody {shown:?}, latest {value}"));
        }
    }
    wrong
}

#[path = "common/service_helpers.rs"]
mod service_helpers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_during_catch_up_and_while_applying_loses_nothing_after_a_restart() {
    use service_helpers::{Service, TOKEN};
    logs();
    let mut env = TestEnv::new("live_restart");
    env.settings.run.lease_ttl_secs = 4;
    let spec = DatasetSpec::new(44, 2500);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    // The catch-up repeats while changes keep coming: a long window to kill in.
    let long_catch_up = [
        ("REBUILDER_LIVE__CATCH_UP_BACKLOG", "0"),
        ("REBUILDER_LIVE__CATCH_UP_ROUNDS", "1000"),
        ("REBUILDER_LIVE__LEASE_TTL_SECS", "4"),
    ];
    let mut first = Service::start(&env, &long_catch_up);
    let writer = Writer::start(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let (status, started) = first.trigger(Some(TOKEN)).await;
    assert_eq!(status, 202, "{started}");
    let run_id = started["runId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, run) = first.get(&format!("/api/runs/{run_id}")).await;
        if run["phase"] == "catch_up" && run["catchUp"]["rounds"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            run["outcome"] == "running",
            "the run ended before its catch-up: {run}"
        );
        assert!(Instant::now() < deadline, "no catch-up: {run}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    tcs.await.unwrap().unwrap();
    let killed = run_record(&env, &run_id).await;
    assert_eq!(
        killed.phase,
        Some(rebuilder::rebuild::record::RunPhase::CatchUp),
        "killed in the catch-up"
    );

    // A second service takes over the applier; it is killed while applying.
    let mut second = Service::start(&env, &[("REBUILDER_LIVE__LEASE_TTL_SECS", "4")]);
    tokio::time::sleep(Duration::from_secs(8)).await;
    second.kill();

    // A third one: the changes the others left unsettled come again.
    let third = Service::start(&env, &[("REBUILDER_LIVE__LEASE_TTL_SECS", "4")]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (programme, body, made) = writer.stop().await;
    assert!(made > 500, "the writer kept writing ({made} changes)");
    let last = programme
        .iter()
        .last()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    wait_for_doc(&client, &alias, &last.0, Duration::from_secs(90), |d| {
        d.is_some_and(|d| d["programmeName"] == last.1.as_str())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ready, _) = queue_state(&env, &env.settings.rabbitmq.update_queue).await;
        if ready == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{ready} updates still queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_latest(&client, &alias, &programme, &body).await;

    // The next rebuild succeeds (the killed run's lease expired), and holds it all.
    let tcs = simulator_once(&env, spec);
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = loop {
        let (status, started) = third.trigger(Some(TOKEN)).await;
        if status == 202 {
            break started["runId"].as_str().unwrap().to_string();
        }
        assert_eq!(status, 409, "{started}");
        assert!(
            Instant::now() < deadline,
            "the dead run's lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let done = third.wait_for_run(&next, Duration::from_secs(180)).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    tcs.await.unwrap().unwrap();
    assert_eq!(
        run_record(&env, &run_id).await.outcome,
        RunOutcome::Abandoned
    );
    // The GMC changes live in MongoDB, which the rebuild reads afresh. (The
    // simulator's sync sends the generated trainees, not TCS's current ones,
    // so the TCS side of a rebuild is checked by the tests above, with the
    // changes made during the run.)
    assert_latest(&client, &alias, &BTreeMap::new(), &body).await;
    env.cleanup().await;
}
