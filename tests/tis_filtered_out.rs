//! Today's rule for a trainee filtered out of TIS, against the real
//! servers: a TCS update whose `gmcReferenceNumber` is null (with a
//! `tcsPersonId`) takes the TIS fields off every document holding that
//! trainee; a document only TIS knew goes, as a rebuild would not make it;
//! one without a `tcsPersonId` either is dead-lettered as before. Made
//! during a rebuild, the change holds in the new generation after the swap
//! (the sync there still sends the trainee: the journal's replay, after
//! the load, takes it off again).
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/live_helpers.rs"]
mod live_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::time::{Duration, Instant};

use common::TestEnv;
use live_helpers::{doc_of, wait_for_doc, Applier, TcsPublisher};
use rebuilder::rebuild::record::RunOutcome;
use rebuilder_dev::datagen::{Category, DatasetSpec};
use run_helpers::*;
use serde_json::Value;

/// The TIS fields a filtered-out trainee loses.
const TIS_FIELDS: &[&str] = &[
    "tcsPersonId",
    "programmeName",
    "membershipType",
    "membershipStartDate",
    "membershipEndDate",
    "curriculumEndDate",
    "programmeOwner",
    "tcsDesignatedBody",
    "placementGrade",
];

fn filtered_out(message: &Value) -> Vec<u8> {
    let mut body = message.clone();
    body["gmcReferenceNumber"] = Value::Null;
    body.to_string().into_bytes()
}

fn has_no_tis_fields(doc: &Value) -> bool {
    TIS_FIELDS
        .iter()
        .all(|f| doc.get(*f).is_none_or(Value::is_null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainee_filtered_out_of_tis_leaves_every_document_it_was_on() {
    logs();
    let env = TestEnv::new("tis_filtered_out");
    let spec = DatasetSpec::new(61, 400);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let both = spec
        .doctors()
        .find(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .expect("a doctor GMC and TIS both know");
    let tcs_only = spec
        .doctors()
        .find(|d| d.category == Category::TcsOnly && d.tcs_messages.len() == 1)
        .expect("a doctor only TIS knows");
    let before = doc_of(&client, &alias, &both.gmc_number)
        .await
        .expect("the doctor is indexed");
    assert!(before["tcsPersonId"].is_number() && before["designatedBody"].is_string());
    assert!(doc_of(&client, &alias, &tcs_only.gmc_number)
        .await
        .is_some());

    // The baseline sync's own rejects (the data set has some) go first.
    take_dead_letters(&env).await;
    let applier = Applier::start(&env).await;
    let publisher = TcsPublisher::new(&env).await;
    publisher
        .publish(&filtered_out(&both.tcs_messages[0]))
        .await;
    publisher
        .publish(&filtered_out(&tcs_only.tcs_messages[0]))
        .await;
    // Neither a GMC number nor a tcsPersonId: nothing to act on.
    publisher
        .publish(br#"{"gmcReferenceNumber": null, "programmeName": "Nobody"}"#)
        .await;
    publisher.close().await;

    wait_for_doc(
        &client,
        &alias,
        &both.gmc_number,
        Duration::from_secs(30),
        |d| d.is_some_and(has_no_tis_fields),
    )
    .await;
    let after = doc_of(&client, &alias, &both.gmc_number)
        .await
        .expect("the doctor GMC knows stays");
    for field in ["designatedBody", "gmcReferenceNumber", "existsInGmc"] {
        assert_eq!(after[field], before[field], "{field} is GMC's, untouched");
    }
    wait_for_doc(
        &client,
        &alias,
        &tcs_only.gmc_number,
        Duration::from_secs(30),
        |d| d.is_none(),
    )
    .await;
    // The reader dead-letters the third message on its own time, not in
    // order with the writes waited for above.
    let mut dead = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead.is_empty() && std::time::Instant::now() < deadline {
        dead.extend(take_dead_letters(&env).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dead.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        vec!["missing_gmc_number"],
        "only the message without a tcsPersonId is dead-lettered"
    );
    applier.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainee_filtered_out_during_a_rebuild_stays_out_of_the_new_generation() {
    logs();
    let env = TestEnv::new("tis_filtered_out_run");
    let spec = DatasetSpec::new(62, 2000);
    baseline(&env, &spec).await;
    let client = env.search().await;
    let alias = env.name("masterdoctorindex");
    let leaving: Vec<_> = spec
        .doctors()
        .filter(|d| d.category == Category::Both && d.tcs_messages.len() == 1)
        .take(20)
        .collect();
    let applier = Applier::start(&env).await;

    let tcs = simulator_once(&env, spec);
    let run = start_rebuild(&env).await;
    let publisher = TcsPublisher::new(&env).await;
    for d in &leaving {
        publisher.publish(&filtered_out(&d.tcs_messages[0])).await;
    }
    publisher.close().await;
    let record = run.await.unwrap().expect("the rebuild succeeds");
    tcs.await.unwrap().unwrap();
    assert_eq!(record.outcome, RunOutcome::Succeeded);

    // The sync sent these trainees again; once the applier has caught up,
    // the generation the aliases name holds none of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut holding = Vec::new();
        for d in &leaving {
            let doc = doc_of(&client, &alias, &d.gmc_number)
                .await
                .unwrap_or_else(|| panic!("{} stays: GMC knows it", d.gmc_number));
            if !has_no_tis_fields(&doc) {
                holding.push(d.gmc_number.clone());
            }
        }
        if holding.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} documents still hold a trainee filtered out during the rebuild, e.g. {:?}",
            holding.len(),
            &holding[..holding.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let c = &record.catch_up;
    println!(
        "filtered out during a rebuild: {} changes replayed in {} rounds, {} at the pause",
        c.replayed, c.rounds, c.backlog_at_pause
    );
    applier.stop().await;
    env.cleanup().await;
}
