//! GMC over the recommendation service's queue (`gmc.source = "queue"`),
//! against the real servers: a rebuild with every source over the queues
//! (GMC from the recommendation service, connection logs and hidden
//! discrepancies from the connection service) builds the same generation
//! as one over MongoDB; malformed batches and items are
//! dead-lettered and counted while every good doctor arrives; a silent
//! recommendation service fails the run with a message that says so.

mod common;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;

use rebuilder::config::GmcSourceKind;
use rebuilder::domain::MasterDoctor;
use rebuilder::rebuild::record::RunOutcome;
use rebuilder_dev::connection_simulator::ConnectionSimulatorOptions;
use rebuilder_dev::datagen::{Category, DatasetSpec};
use rebuilder_dev::recommendation_simulator::GmcSyncServed;
use rebuilder_dev::sync_service::Served;
use serde_json::json;

use common::TestEnv;
use run_helpers::{
    baseline, connection_service_once, documents, logs, rebuild, recommendations_once, run_record,
    simulator_once, take_dead_letters,
};

/// The document every generated doctor must become over the queue: the
/// MongoDB one, except that the outcome of a recommendation whose doctor
/// is not in `doctorsForDB` (a TCS-only trainee) never travels, as with
/// today's recommendation service.
fn expected_over_the_queue(spec: &DatasetSpec) -> (BTreeMap<String, MasterDoctor>, usize) {
    let mut orphans = 0;
    let expected = spec
        .doctors()
        .map(|d| {
            let mut doc = d.expected;
            if d.category == Category::TcsOnly && doc.gmc_status.is_some() {
                doc.gmc_status = None;
                orphans += 1;
            }
            (d.gmc_number, doc)
        })
        .collect();
    (expected, orphans)
}

/// `actual` holds exactly `expected` (`updatedAt` must be set and is ignored).
fn assert_same_documents(
    mut actual: BTreeMap<String, MasterDoctor>,
    expected: &BTreeMap<String, MasterDoctor>,
) {
    let mut mismatches = Vec::new();
    for (id, want) in expected {
        match actual.remove(id) {
            None => mismatches.push(format!("{id} is missing")),
            Some(mut doc) => {
                if doc.updated_at.take().is_none() {
                    mismatches.push(format!("{id} has no updatedAt"));
                }
                if &doc != want {
                    mismatches.push(format!(
                        "{id} differs:\n  actual   {doc:?}\n  expected {want:?}"
                    ));
                }
            }
        }
    }
    mismatches.extend(actual.keys().map(|id| format!("{id} is not expected")));
    assert!(
        mismatches.is_empty(),
        "{} documents are wrong; the first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_with_every_source_over_the_queues_builds_the_generation_mongodb_reads_build() {
    logs();
    let mut env = TestEnv::new("gmc_queue_equal");
    let client = env.search().await;
    let spec = DatasetSpec::new(2201, 1500);
    let master = env.name("masterdoctorindex");

    let from_mongo_run = baseline(&env, &spec).await;
    let mut from_mongo = documents(&client, &master).await;
    assert_eq!(from_mongo.len(), spec.doctors);

    assert!(
        from_mongo_run.counts.hidden_discrepancies > 0 && from_mongo_run.counts.connection_logs > 0,
        "the data set has connection data"
    );

    // Over the queues, the GMC and connection collections are never read:
    // take them away.
    run_helpers::read_every_source_over_the_queues(&mut env, true).await;
    let batch_size = 200;
    let recommendations = recommendations_once(&env, spec, batch_size, Vec::new());
    let connection_batch = 50;
    let connections = connection_service_once(
        &env,
        spec,
        ConnectionSimulatorOptions {
            batch_size: connection_batch,
            ..ConnectionSimulatorOptions::default()
        },
    );
    let tcs = simulator_once(&env, spec);
    let from_queue_run = rebuild(&env).await.expect("the run over the queues");
    tcs.await.unwrap().unwrap();
    let served = recommendations.await.unwrap().unwrap();
    let connection_served = connections.await.unwrap().unwrap();
    let (logs_sent, hidden_sent) = (
        from_mongo_run.counts.connection_logs,
        from_mongo_run.counts.hidden_discrepancies,
    );
    let served_as = |n: u64| {
        vec![Served {
            batches: n.div_ceil(connection_batch as u64),
            items: n,
        }]
    };
    // Every unusable entry of the data set is unusable over the queue too.
    let rejected = |reasons: &[&str]| -> u64 {
        reasons
            .iter()
            .map(|r| from_mongo_run.rejects.get(*r).copied().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        connection_served.logs,
        served_as(
            logs_sent
                + rejected(&[
                    rebuilder::sources::connection::REJECT_LOG_GMC_NUMBER,
                    rebuilder::sources::connection::REJECT_LOG_TIME
                ])
        )
    );
    assert_eq!(
        connection_served.hidden,
        served_as(
            hidden_sent
                + rejected(&[
                    rebuilder::sources::connection::REJECT_HIDDEN_GMC_NUMBER,
                    rebuilder::sources::connection::REJECT_HIDDEN_BODY
                ])
        )
    );
    let in_gmc = spec.doctors().filter(|d| d.gmc_doctor.is_some()).count();
    assert_eq!(
        served,
        vec![GmcSyncServed {
            batches: in_gmc.div_ceil(batch_size) as u64,
            doctors: in_gmc as u64
        }]
    );
    assert_ne!(
        from_queue_run.generations, from_mongo_run.generations,
        "a new generation is live"
    );
    let from_queue = documents(&client, &master).await;

    // Document for document the same, but for the orphan outcomes.
    let (expected, orphans) = expected_over_the_queue(&spec);
    assert!(orphans > 0, "the data set exercises the orphan outcomes");
    for (id, doc) in from_mongo.iter_mut() {
        if doc.gmc_status.is_some() && expected[id].gmc_status.is_none() {
            doc.gmc_status = None;
        }
        doc.updated_at = Some("ignored".into());
    }
    let mut comparable = from_queue.clone();
    for doc in comparable.values_mut() {
        doc.updated_at = Some("ignored".into());
    }
    assert_eq!(comparable, from_mongo);
    assert_same_documents(from_queue, &expected);

    let (a, b) = (&from_mongo_run.counts, &from_queue_run.counts);
    assert_eq!(b.gmc_doctors, a.gmc_doctors);
    assert_eq!(
        (
            b.connection_logs,
            b.hidden_discrepancies,
            b.hidden_same_body,
            b.connection_orphans
        ),
        (
            a.connection_logs,
            a.hidden_discrepancies,
            a.hidden_same_body,
            a.connection_orphans
        )
    );
    assert_eq!(b.gmc_outcomes, a.gmc_outcomes - orphans as u64);
    assert_eq!(
        (
            b.merged_both,
            b.merged_tcs_only,
            b.merged_gmc_only,
            b.docs_expected
        ),
        (
            a.merged_both,
            a.merged_tcs_only,
            a.merged_gmc_only,
            a.docs_expected
        )
    );
    assert_eq!(from_queue_run.rejects, from_mongo_run.rejects);
    // Every batch was acked once written: nothing waits on our queues.
    for queue in [
        &env.settings.gmc.sync_data_queue,
        &env.settings.connection.log_sync_data_queue,
        &env.settings.connection.hidden_sync_data_queue,
    ] {
        let (ready, _) = run_helpers::queue_state(&env, queue).await;
        assert_eq!(ready, 0, "{queue}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_gmc_batches_and_items_are_dead_lettered_and_counted_and_nothing_else_is_lost() {
    logs();
    let mut env = TestEnv::new("gmc_queue_bad");
    env.settings.gmc.source = GmcSourceKind::Queue;
    let client = env.search().await;
    let spec = DatasetSpec::new(2202, 400);
    let doctor = |number: &str, submitted: serde_json::Value, updated: serde_json::Value| {
        json!({"gmcReferenceNumber": number, "doctorFirstName": "Queue", "doctorLastName": "Dates",
            "submissionDate": submitted, "lastUpdatedDate": updated, "underNotice": "NO",
            "doctorStatus": "STARTED", "designatedBodyCode": "1-AIIDR8", "admin": "a@b", "existsInGmc": true})
    };
    let bad_and_odd = vec![
        br#"{"payload": [{"doctor": {"gmcReferenceNumber": "8000009""#.to_vec(),
        br#"{"doctors": [], "end": true}"#.to_vec(),
        json!({"payload": {"doctor": doctor("8000008", json!("2024-01-01"), json!(null))}, "syncEnd": false})
            .to_string()
            .into_bytes(),
        json!({"payload": [
            {"doctor": {"doctorFirstName": "No", "doctorLastName": "Number"}, "gmcOutcome": "Approved"},
            {"doctor": doctor("8000001", json!({"$date": "2024-03-05T00:00:00Z"}), json!({"$date": "2025-01-02T10:11:12.000Z"})), "gmcOutcome": "APPROVED"},
            {"doctor": doctor("8000002", json!("2024-04-06 13:14:15"), json!("2025-02-03 00:00:00")), "gmcOutcome": "Under Review"},
        ], "syncEnd": false})
        .to_string()
        .into_bytes(),
    ];
    let recommendations = recommendations_once(&env, spec, 150, bad_and_odd);
    let tcs = simulator_once(&env, spec);
    let run = rebuild(&env)
        .await
        .expect("the run succeeds with the good doctors");
    tcs.await.unwrap().unwrap();
    recommendations.await.unwrap().unwrap();
    let record = run_record(&env, &run.id).await;
    assert_eq!(record.outcome, RunOutcome::Succeeded);

    // Each bad message and item: counted under its reason...
    let mut want: BTreeMap<String, u64> = spec
        .expected_rejects()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for reason in [
        "gmc_batch_invalid_json",
        "gmc_batch_not_a_sync_message",
        "gmc_batch_payload_not_a_list",
        "missing_gmc_number",
    ] {
        *want.entry(reason.into()).or_default() += 1;
    }
    assert_eq!(record.rejects, want);
    // ...and on the dead-letter queue with that reason.
    let dead: Vec<(String, Vec<u8>)> = take_dead_letters(&env).await;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, _) in &dead {
        *reasons.entry(reason.clone()).or_default() += 1;
    }
    assert_eq!(reasons, want);
    let item = dead
        .iter()
        .find(|(r, body)| r == "missing_gmc_number" && body.starts_with(b"{\"doctor\""))
        .expect("the item without a number is dead-lettered alone");
    let item: serde_json::Value = serde_json::from_slice(&item.1).unwrap();
    assert_eq!(item["doctor"]["doctorLastName"], "Number");

    // Every good doctor is there, the two with odd dates read as days.
    let mut actual = documents(&client, &env.name("masterdoctorindex")).await;
    let extended = actual.remove("8000001").expect("the $date doctor");
    assert_eq!(extended.submission_date.as_deref(), Some("2024-03-05"));
    assert_eq!(extended.last_updated_date.as_deref(), Some("2025-01-02"));
    assert_eq!(extended.gmc_status.as_deref(), Some("Approved"));
    let spaced = actual
        .remove("8000002")
        .expect("the yyyy-MM-dd HH:mm:ss doctor");
    assert_eq!(spaced.submission_date.as_deref(), Some("2024-04-06"));
    assert_eq!(spaced.last_updated_date.as_deref(), Some("2025-02-03"));
    assert_eq!(spaced.gmc_status.as_deref(), Some("Under Review"));
    assert!(spaced.exists_in_gmc && spaced.tcs_person_id.is_none());
    assert!(!actual.contains_key("8000008") && !actual.contains_key("8000009"));
    // Nothing was seeded in MongoDB: no connection data either.
    let mut expected = expected_over_the_queue(&spec).0;
    for doc in expected.values_mut() {
        doc.updated_by = None;
        doc.last_connection_date_time = None;
        doc.hidden_discrepancies.clear();
    }
    assert_same_documents(actual, &expected);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_recommendation_service_fails_the_run_with_a_message_that_says_so() {
    logs();
    let mut env = TestEnv::new("gmc_queue_silent");
    env.settings.gmc.source = GmcSourceKind::Queue;
    env.settings.gmc.idle_timeout_secs = 2;
    let _ = env.search().await;
    let error = rebuild(&env)
        .await
        .expect_err("nobody answers gmcSyncStart");
    let text = format!("{error:#}");
    assert!(
        text.contains("the recommendation service sent nothing for 2 s"),
        "{text}"
    );
    assert!(
        text.contains(&env.settings.gmc.sync_start_routing_key),
        "{text}"
    );
    let record = run_helpers::history(&env)
        .await
        .current_or_last()
        .await
        .unwrap()
        .expect("the run is recorded");
    assert_eq!(record.outcome, RunOutcome::Failed);
    // The load starts beside the GMC read, so the generations were made;
    // the failed run deleted them.
    let client = env.search().await;
    for generation in &record.generations {
        let answer = client
            .json(
                opensearch::http::Method::Get,
                // A pattern: it answers [] when nothing matches (a plain
                // name would answer 404).
                &format!("/_cat/indices/{generation}*"),
                &[("format", "json")],
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            answer.as_array().map(Vec::len),
            Some(0),
            "{generation} was left behind: {answer}"
        );
    }
    env.cleanup().await;
}
