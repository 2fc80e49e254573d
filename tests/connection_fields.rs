//! The connection service's fields (`updatedBy`, `lastConnectionDateTime`,
//! the nested `hiddenDiscrepancies`) read from its MongoDB collections by a
//! rebuild, checked against the real servers with the connection service's
//! own queries: its Discrepancies page (the nested `must_not` with
//! `ignore_unmapped`, the designated-body `should`, pages of 20 sorted by
//! `gmcReferenceNumber` descending) returns the same doctors before and
//! after a rebuild and never a hidden one; its "hidden" tab returns exactly
//! the hidden ones, also when the next rebuild reads every source over the
//! queues (`gmc.source` and `connection.source` = `queue`); its Connections
//! filters find the right doctors; bad connection data, in the collections
//! or in the connection service's batches, is counted and costs nothing
//! else; a silent connection service fails the run, saying so.

mod common;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::{BTreeMap, BTreeSet};

use bson::doc;
use rebuilder::config::ConnectionSourceKind;
use rebuilder::domain::MasterDoctor;
use rebuilder::search::SearchClient;
use rebuilder::sources::connection::queue::REJECT_LOG_ITEM_NOT_AN_OBJECT;
use rebuilder::sources::connection::{
    REJECT_HIDDEN_BODY, REJECT_HIDDEN_GMC_NUMBER, REJECT_LOG_GMC_NUMBER,
};
use rebuilder_dev::connection_simulator::ConnectionSimulatorOptions;
use rebuilder_dev::datagen::{DatasetSpec, DESIGNATED_BODIES};
use serde_json::{json, Value};

use common::{get_json, search_hits, TestEnv};
use rebuilder::rebuild::record::{RunOutcome, RunRecord};
use run_helpers::{
    assert_documents_match, baseline, connection_service_once, documents, logs, rebuild,
    recommendations_once, simulator_once, take_dead_letters,
};

/// Enough doctors for a few dozen hidden discrepancies.
const DOCTORS: usize = 600;

/// The designated bodies of the user the queries are asked for.
const USER_BODIES: [&str; 4] = [
    DESIGNATED_BODIES[0],
    DESIGNATED_BODIES[1],
    DESIGNATED_BODIES[2],
    DESIGNATED_BODIES[3],
];

fn assert_succeeded(run: &RunRecord) {
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{:?}", run.error);
}

/// A rebuild over the same data again, as the next night's; with
/// `over_queues`, every source is read over the queues from the services'
/// simulators, with the connection collections gone to prove it.
async fn rebuild_again(env: &mut TestEnv, spec: &DatasetSpec, over_queues: bool) {
    let mut services = None;
    if over_queues {
        run_helpers::read_every_source_over_the_queues(env, false).await;
        services = Some((
            recommendations_once(env, *spec, 500, Vec::new()),
            connection_service_once(env, *spec, ConnectionSimulatorOptions::default()),
        ));
    }
    let tcs = simulator_once(env, *spec);
    let run = rebuild(env).await.expect("the second rebuild");
    tcs.await.unwrap().unwrap();
    if let Some((gmc, connection)) = services {
        gmc.await.unwrap().unwrap();
        connection.await.unwrap().unwrap();
    }
    assert_succeeded(&run);
}

/// The connection service's `match` value for designated bodies: lower
/// case, without `1-`, space-joined.
fn body_match(codes: &[&str]) -> String {
    codes
        .iter()
        .map(|c| c.trim_start_matches("1-").to_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Discrepancies query as the connection service builds it (DESIGN
/// §6), one page of 20; `hidden_tab` swaps its nested `must_not` for `must`.
fn discrepancies_page(codes: &[&str], hidden_tab: bool, page: usize) -> Value {
    let hidden = json!({"nested": {
        "path": "hiddenDiscrepancies",
        "query": {"terms": {"hiddenDiscrepancies.hiddenForDesignatedBodyCode.keyword": codes}},
        "ignore_unmapped": true,
    }});
    let mut must_not = vec![
        json!({"match": {"membershipType": "MILITARY"}}),
        json!({"match": {"placementGrade": "279"}}),
    ];
    let mut must = Vec::new();
    if hidden_tab {
        must.push(hidden);
    } else {
        must_not.push(hidden);
    }
    let bodies = body_match(codes);
    json!({
        "from": page * 20,
        "size": 20,
        "query": {"bool": {
            "must": must,
            "must_not": must_not,
            "should": [
                {"match": {"designatedBody": bodies}},
                {"match": {"tcsDesignatedBody": bodies}},
            ],
            "minimum_should_match": 1,
        }},
        "sort": [{"gmcReferenceNumber": {"order": "desc"}}],
    })
}

/// Every page of a query, in the order the pages give them.
async fn all_pages(
    client: &SearchClient,
    alias: &str,
    query: impl Fn(usize) -> Value,
) -> Vec<String> {
    let mut out = Vec::new();
    for page in 0.. {
        let hits = search_hits(client, alias, query(page)).await;
        out.extend(hits.iter().map(|h| h["_id"].as_str().unwrap().to_string()));
        if hits.len() < 20 {
            break;
        }
    }
    out
}

/// Whether the Discrepancies page's filters other than the hidden clause
/// keep `doc` for a user of `codes` (the alias filter included).
fn on_discrepancies_page(doc: &MasterDoctor, codes: &[&str]) -> bool {
    let in_codes = |b: &Option<String>| b.as_deref().is_some_and(|b| codes.contains(&b));
    let grade_279 = doc
        .placement_grade
        .as_deref()
        .is_some_and(|g| g.split(" | ").any(|x| x == "279"));
    doc.is_discrepancy()
        && (in_codes(&doc.designated_body) || in_codes(&doc.tcs_designated_body))
        && doc.membership_type.as_deref() != Some("MILITARY")
        && !grade_279
}

fn hidden_for_any(doc: &MasterDoctor, codes: &[&str]) -> bool {
    doc.hidden_discrepancies
        .iter()
        .any(|h| codes.contains(&h.hidden_for_designated_body_code.as_str()))
}

/// Ids sorted as the page sorts them (`gmcReferenceNumber` descending;
/// the generated numbers are all seven digits).
fn sorted_desc(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.into_iter().collect();
    v.sort_by(|a, b| b.cmp(a));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_puts_todays_connection_fields_on_every_document() {
    logs();
    let env = TestEnv::new("conn_fields");
    let spec = DatasetSpec::new(2201, DOCTORS);
    let run = baseline(&env, &spec).await;
    assert_succeeded(&run);
    let client = env.search().await;
    // Every document as the data set says, the new fields included.
    assert_documents_match(&client, &env.name("masterdoctorindex"), &spec).await;

    let doctors: Vec<_> = spec.doctors().collect();
    let logs: usize = doctors.iter().map(|d| d.connection_logs.len()).sum();
    let hidden: usize = doctors.iter().map(|d| d.hidden_discrepancies.len()).sum();
    assert_eq!(run.counts.connection_logs, logs as u64);
    assert_eq!(run.counts.hidden_discrepancies, hidden as u64);
    assert_eq!(run.counts.connection_orphans, 0);
    // The data set exercises the rules: several logs (the latest wins),
    // two bodies hiding one doctor, gmcId values padded or numeric.
    assert!(doctors.iter().any(|d| d.connection_logs.len() > 1));
    assert!(doctors.iter().any(|d| d.hidden_discrepancies.len() == 2));
    assert!(doctors
        .iter()
        .flat_map(|d| &d.connection_logs)
        .any(|l| matches!(l.get("gmcId"), Some(bson::Bson::Int64(_)))));

    // A doctor with several logs shows the latest one's.
    let several = doctors
        .iter()
        .find(|d| d.connection_logs.len() > 1)
        .unwrap();
    let latest = several
        .connection_logs
        .iter()
        .max_by_key(|l| l.get_datetime("requestTime").unwrap().timestamp_millis())
        .unwrap();
    let source = get_json(
        &client,
        &format!(
            "/{}/_doc/{}",
            env.name("masterdoctorindex"),
            several.gmc_number
        ),
    )
    .await["_source"]
        .clone();
    assert_eq!(source["updatedBy"], latest.get_str("updatedBy").unwrap());
    let at = latest.get_datetime("requestTime").unwrap().to_chrono();
    assert_eq!(
        source["lastConnectionDateTime"],
        at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
    );

    // Both families map the fields explicitly; the nested one is nested.
    for alias in ["masterdoctorindex", "recommendationindex"] {
        let mapping = get_json(&client, &format!("/{}/_mapping", env.name(alias))).await;
        let properties =
            &mapping.as_object().unwrap().values().next().unwrap()["mappings"]["properties"];
        assert_eq!(
            properties["hiddenDiscrepancies"]["type"], "nested",
            "{alias}"
        );
        assert_eq!(
            properties["lastConnectionDateTime"]["type"], "date",
            "{alias}"
        );
        assert_eq!(
            properties["updatedBy"]["fields"]["keyword"]["type"], "keyword",
            "{alias}"
        );
    }
    // The recommendation generation copied them.
    let hidden_docs = doctors
        .iter()
        .filter(|d| !d.hidden_discrepancies.is_empty())
        .count();
    let copied = search_hits(
        &client,
        &env.name("recommendationindex"),
        json!({"size": 1000, "query": {"nested": {
            "path": "hiddenDiscrepancies",
            "query": {"exists": {"field": "hiddenDiscrepancies.hiddenForDesignatedBodyCode"}},
        }}}),
    )
    .await;
    assert_eq!(copied.len(), hidden_docs);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_discrepancies_stay_hidden_through_a_rebuild() {
    hidden_discrepancies_stay_hidden(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_discrepancies_stay_hidden_through_a_rebuild_over_the_queues() {
    hidden_discrepancies_stay_hidden(true).await;
}

/// The Discrepancies page and its hidden tab, before and after a second
/// rebuild (over the queues or not).
async fn hidden_discrepancies_stay_hidden(over_queues: bool) {
    logs();
    let mut env = TestEnv::new(if over_queues {
        "conn_hidden_q"
    } else {
        "conn_hidden"
    });
    let spec = DatasetSpec::new(2202, DOCTORS);
    let run = baseline(&env, &spec).await;
    assert_succeeded(&run);
    let client = env.search().await;
    let alias = env.name("discrepancies");
    let codes = &USER_BODIES[..];

    let expected: Vec<MasterDoctor> = spec
        .doctors()
        .map(|d| d.expected)
        .filter(|d| on_discrepancies_page(d, codes))
        .collect();
    let shown = sorted_desc(
        expected
            .iter()
            .filter(|d| !hidden_for_any(d, codes))
            .map(|d| d.gmc_reference_number.clone()),
    );
    let hidden = sorted_desc(
        expected
            .iter()
            .filter(|d| hidden_for_any(d, codes))
            .map(|d| d.gmc_reference_number.clone()),
    );
    assert!(
        hidden.len() >= 5 && shown.len() > 20,
        "the data set must hide some of the user's discrepancies and show more than a page: {} hidden, {} shown",
        hidden.len(),
        shown.len()
    );

    let page = |hidden_tab| move |n| discrepancies_page(codes, hidden_tab, n);
    let before = all_pages(&client, &alias, page(false)).await;
    assert_eq!(
        before, shown,
        "the Discrepancies page after the first rebuild"
    );
    let hidden_before = all_pages(&client, &alias, page(true)).await;
    assert_eq!(
        hidden_before, hidden,
        "the hidden tab after the first rebuild"
    );
    // Without its hidden clause the page would show them: the clause is
    // what keeps them off, not a filter that matches nothing.
    let unfiltered: BTreeSet<String> = search_hits(
        &client,
        &alias,
        json!({"size": 1000, "query": {"bool": {
            "should": [
                {"match": {"designatedBody": body_match(codes)}},
                {"match": {"tcsDesignatedBody": body_match(codes)}},
            ],
            "minimum_should_match": 1,
        }}}),
    )
    .await
    .iter()
    .map(|h| h["_id"].as_str().unwrap().to_string())
    .collect();
    assert!(hidden.iter().all(|id| unfiltered.contains(id)));

    rebuild_again(&mut env, &spec, over_queues).await;
    let after = all_pages(&client, &alias, page(false)).await;
    assert_eq!(
        after, before,
        "the Discrepancies page changed across a rebuild"
    );
    assert!(after.iter().all(|id| !hidden.contains(id)));
    assert_eq!(all_pages(&client, &alias, page(true)).await, hidden);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_page_filters_on_the_last_connection_and_who_made_it() {
    logs();
    let env = TestEnv::new("conn_filters");
    let spec = DatasetSpec::new(2203, DOCTORS);
    let run = baseline(&env, &spec).await;
    assert_succeeded(&run);
    let client = env.search().await;
    let alias = env.name("current_connections");
    let connected: Vec<MasterDoctor> = spec
        .doctors()
        .map(|d| d.expected)
        .filter(|d| d.exists_in_gmc && d.last_connection_date_time.is_some())
        .collect();
    assert!(connected.len() > 50);

    // The day of one doctor's last connection, day start to day end.
    let day = connected[0].last_connection_date_time.as_deref().unwrap()[..10].to_string();
    let on_day: BTreeSet<String> = connected
        .iter()
        .filter(|d| {
            d.last_connection_date_time
                .as_deref()
                .unwrap()
                .starts_with(&day)
        })
        .map(|d| d.gmc_reference_number.clone())
        .collect();
    let found: BTreeSet<String> = search_hits(
        &client,
        &alias,
        json!({"size": 100, "query": {"bool": {"must": [{"range": {"lastConnectionDateTime": {
            "gte": format!("{day}T00:00:00"),
            "lte": format!("{day}T23:59:59.999"),
        }}}]}}}),
    )
    .await
    .iter()
    .map(|h| h["_id"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(found, on_day);

    // Who made it: match_phrase on updatedBy, sorted on its keyword.
    let by = connected[1].updated_by.clone().unwrap();
    let by_them: BTreeSet<String> = connected
        .iter()
        .filter(|d| d.updated_by.as_deref() == Some(by.as_str()))
        .map(|d| d.gmc_reference_number.clone())
        .collect();
    let hits = search_hits(
        &client,
        &alias,
        json!({"size": 100, "query": {"match_phrase": {"updatedBy": &by}},
               "sort": [{"updatedBy.keyword": {"order": "asc"}}]}),
    )
    .await;
    let found: BTreeSet<String> = hits
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found, by_them);
    // And sorting everyone by it gives the expected order.
    let sorted: Vec<String> = search_hits(
        &client,
        &alias,
        json!({"size": 1000, "query": {"exists": {"field": "updatedBy"}},
               "sort": [{"updatedBy.keyword": {"order": "asc"}}], "_source": ["updatedBy"]}),
    )
    .await
    .iter()
    .map(|h| h["_source"]["updatedBy"].as_str().unwrap().to_string())
    .collect();
    let mut want: Vec<String> = connected
        .iter()
        .filter_map(|d| d.updated_by.clone())
        .collect();
    want.sort();
    assert_eq!(sorted, want);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connection_data_is_counted_and_costs_nothing_else() {
    logs();
    let env = TestEnv::new("conn_bad");
    let spec = DatasetSpec::new(2204, 300);
    run_helpers::seed(&env, &spec).await;
    let mongo = env.mongo().await;
    let db = mongo.database(&env.settings.mongodb.database);
    let logs_collection = db.collection::<bson::Document>(&env.settings.connection.logs_collection);
    let hidden_collection =
        db.collection::<bson::Document>(&env.settings.connection.hidden_collection);
    let at = bson::DateTime::now();
    logs_collection
        .insert_many([
            // A doctor neither TCS nor GMC knows: no document made.
            doc! {"_id": "bad-1", "gmcId": "9999991", "updatedBy": "x", "requestTime": at},
            // No usable number.
            doc! {"_id": "bad-2", "gmcId": {"n": 1}, "updatedBy": "x", "requestTime": at},
        ])
        .await
        .unwrap();
    hidden_collection
        .insert_many([
            doc! {"_id": "bad-3", "gmcId": "9999992", "hiddenForDesignatedBodyCode": "1-AIIDR8", "hiddenDateTime": at},
            doc! {"_id": "bad-4", "gmcId": "UNKNOWN", "hiddenForDesignatedBodyCode": "1-AIIDR8", "hiddenDateTime": at},
        ])
        .await
        .unwrap();
    let tcs = simulator_once(&env, spec);
    let run = rebuild(&env).await.expect("the rebuild");
    tcs.await.unwrap().unwrap();
    assert_succeeded(&run);

    let doctors: Vec<_> = spec.doctors().collect();
    let logs: usize = doctors.iter().map(|d| d.connection_logs.len()).sum();
    let hidden: usize = doctors.iter().map(|d| d.hidden_discrepancies.len()).sum();
    assert_eq!(run.counts.connection_orphans, 2, "{:?}", run.counts);
    assert_eq!(run.counts.connection_logs, logs as u64 + 1);
    assert_eq!(run.counts.hidden_discrepancies, hidden as u64 + 1);
    assert_eq!(run.rejects.get(REJECT_LOG_GMC_NUMBER), Some(&1));
    assert_eq!(run.rejects.get(REJECT_HIDDEN_GMC_NUMBER), Some(&1));
    // Every generated doctor exactly as expected; no document for the
    // numbers only the connection data has.
    assert_documents_match(&env.search().await, &env.name("masterdoctorindex"), &spec).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_connection_collections_a_rebuild_leaves_the_fields_out() {
    logs();
    let mut env = TestEnv::new("conn_absent");
    let spec = DatasetSpec::new(2205, 200);
    run_helpers::seed(&env, &spec).await;
    // The collections do not exist: read as empty, nothing fails.
    env.settings.connection.logs_collection = "noSuchConnectionLogs".into();
    env.settings.connection.hidden_collection = "noSuchHiddenDiscrepancy".into();
    let tcs = simulator_once(&env, spec);
    let run = rebuild(&env).await.expect("the rebuild");
    tcs.await.unwrap().unwrap();
    assert_succeeded(&run);
    assert_eq!(
        (run.counts.connection_logs, run.counts.hidden_discrepancies),
        (0, 0)
    );
    let documents =
        run_helpers::documents(&env.search().await, &env.name("masterdoctorindex")).await;
    assert_eq!(documents.len(), spec.doctors);
    assert!(documents.values().all(|d| d.updated_by.is_none()
        && d.last_connection_date_time.is_none()
        && d.hidden_discrepancies.is_empty()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connection_batches_and_items_are_dead_lettered_and_counted_and_nothing_else_is_lost(
) {
    logs();
    let mut env = TestEnv::new("conn_queue_bad");
    env.settings.connection.source = ConnectionSourceKind::Queue;
    let spec = DatasetSpec::new(2206, 300);
    run_helpers::seed(&env, &spec).await;
    let mut expected: BTreeMap<String, MasterDoctor> =
        spec.doctors().map(|d| (d.gmc_number, d.expected)).collect();
    let numbers: Vec<String> = expected.keys().take(3).cloned().collect();
    let (a, b, c) = (&numbers[0], &numbers[1], &numbers[2]);
    let bad_logs = vec![
        br#"{"payload": [{"gmcId": "1""#.to_vec(),
        br#"{"logs": [], "end": true}"#.to_vec(),
        json!({"payload": {"gmcId": a}, "syncEnd": false})
            .to_string()
            .into_bytes(),
        json!({"payload": [
            {"updatedBy": "no-number", "eventDateTime": "2030-01-01T00:00:00.000"},
            "not a log",
            {"gmcId": a, "updatedBy": "queue-tester", "eventDateTime": {"$date": "2030-01-02T03:04:05.006Z"}},
            {"gmcId": b, "updatedBy": "queue-spaced", "eventDateTime": "2030-02-03 04:05:06"},
            {"gmcId": "9999991", "updatedBy": "nobody-knows", "eventDateTime": "2030-02-03T04:05:06.000"},
        ], "syncEnd": false})
        .to_string()
        .into_bytes(),
    ];
    let bad_hidden = vec![json!({"payload": [
        {"id": "q-hd-orphan", "gmcId": "9999992", "hiddenForDesignatedBodyCode": "1-AIIDR8"},
        {"id": "q-hd-nobody", "gmcId": c},
        {"id": "q-hd-1", "gmcId": c, "hiddenForDesignatedBodyCode": "1-ZZZZZZ", "hiddenBy": "queue-tester",
         "reason": "r", "hiddenDateTime": {"$date": "2029-05-06T07:08:09.010Z"}},
    ], "syncEnd": false})
    .to_string()
    .into_bytes()];
    let connections = connection_service_once(
        &env,
        spec,
        ConnectionSimulatorOptions {
            batch_size: 40,
            extra_log_messages: bad_logs,
            extra_hidden_messages: bad_hidden,
            ..ConnectionSimulatorOptions::default()
        },
    );
    let tcs = simulator_once(&env, spec);
    let run = rebuild(&env).await.expect("the run over the queues");
    tcs.await.unwrap().unwrap();
    connections.await.unwrap().unwrap();
    assert_succeeded(&run);

    // Each bad message and item: counted under its reason, and on the
    // dead-letter queue with it.
    let new_reasons = [
        "connection_log_batch_invalid_json",
        "connection_log_batch_not_a_sync_message",
        "connection_log_batch_payload_not_a_list",
        REJECT_LOG_GMC_NUMBER,
        REJECT_LOG_ITEM_NOT_AN_OBJECT,
        REJECT_HIDDEN_BODY,
    ];
    let mut want: BTreeMap<String, u64> = spec
        .expected_rejects()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for reason in new_reasons {
        *want.entry(reason.into()).or_default() += 1;
    }
    assert_eq!(run.rejects, want);
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, _) in take_dead_letters(&env).await {
        if new_reasons.contains(&reason.as_str()) {
            *dead.entry(reason).or_default() += 1;
        }
    }
    assert_eq!(
        dead,
        new_reasons.iter().map(|r| (r.to_string(), 1)).collect()
    );
    // A log and a hidden discrepancy for numbers no source knows: counted,
    // and no document made for them.
    assert_eq!(run.counts.connection_orphans, 2, "{:?}", run.counts);

    // The good entries with odd dates arrived; everything else as seeded.
    let doc = expected.get_mut(a).unwrap();
    doc.updated_by = Some("queue-tester".into());
    doc.last_connection_date_time = Some("2030-01-02T03:04:05.006".into());
    let doc = expected.get_mut(b).unwrap();
    doc.updated_by = Some("queue-spaced".into());
    doc.last_connection_date_time = Some("2030-02-03T04:05:06.000".into());
    expected
        .get_mut(c)
        .unwrap()
        .hidden_discrepancies
        .push(rebuilder::domain::HiddenDiscrepancy {
            id: Some("q-hd-1".into()),
            gmc_id: Some(c.clone()),
            hidden_for_designated_body_code: "1-ZZZZZZ".into(),
            hidden_by: Some("queue-tester".into()),
            reason: Some("r".into()),
            hidden_date_time: Some("2029-05-06T07:08:09.010".into()),
        });
    let mut actual = documents(&env.search().await, &env.name("masterdoctorindex")).await;
    for doc in actual.values_mut() {
        assert!(doc.updated_at.take().is_some());
    }
    assert_eq!(actual.len(), expected.len());
    for (id, want) in &expected {
        assert_eq!(actual.get(id), Some(want), "{id}");
    }
    // Every batch was acked once written.
    for queue in [
        &env.settings.connection.log_sync_data_queue,
        &env.settings.connection.hidden_sync_data_queue,
    ] {
        assert_eq!(run_helpers::queue_state(&env, queue).await.0, 0, "{queue}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_service_fails_the_run_naming_the_setting_and_the_routing_key() {
    logs();
    let mut env = TestEnv::new("conn_queue_silent");
    env.settings.connection.source = ConnectionSourceKind::Queue;
    env.settings.connection.idle_timeout_secs = 2;
    let spec = DatasetSpec::new(2207, 50);
    run_helpers::seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let error = rebuild(&env)
        .await
        .expect_err("nobody answers the connection syncs");
    tcs.abort();
    let text = format!("{error:#}");
    assert!(
        text.contains("the connection service sent nothing for 2 s"),
        "{text}"
    );
    assert!(text.contains("connection.idle_timeout_secs"), "{text}");
    assert!(
        text.contains(&env.settings.connection.log_sync_start_routing_key)
            || text.contains(&env.settings.connection.hidden_sync_start_routing_key),
        "{text}"
    );
    // Nothing was promoted: no live generation exists.
    let client = env.search().await;
    assert_eq!(
        common::alias_targets(&client, &env.name("masterdoctorindex")).await,
        Vec::<String>::new()
    );
    env.cleanup().await;
}
