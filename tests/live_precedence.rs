//! Live partial updates against real OpenSearch nodes, for two rules the
//! rebuild already keeps and the live path must keep too:
//!
//! - exact counts under 429s: a batch of updates retried from its first
//!   refused item reports the documents it created and deleted exactly, so
//!   a catch-up after 429s passes the exact-count gate (the throttled node
//!   on :9201, write pool of one thread and a queue of one);
//! - TCS precedence: of two trainees with one GMC number, a live update
//!   keeps the trainee the rebuild keeps (the latest programme start, then
//!   the greater `tcsPersonId`), whatever order the updates come in (the
//!   node on :9200, a generation made from the project's master template).
//!
//! Needs both OpenSearch nodes (`scripts/stack start`). Every test owns an
//! index prefix and removes it.

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{count, throttled_opensearch_url, TestEnv};
use engine_helpers::{cleanup_search, engine};
use opensearch::http::Method;
use rebuilder::domain::{update_for, Change, DocUpdate, GmcDoctor, GmcNumber, Known, TcsRecord};
use rebuilder::retry::RetryPolicy;
use rebuilder::search::updates::{apply_updates, Target, UpdateItem, UpdateReport, UpdateResult};
use rebuilder::search::{Family, IndexTemplate, SearchClient};
use serde_json::{json, Value};

/// The time of writing the tests stamp on documents (`updatedAt` is a date).
const AT: &str = "2025-06-01T12:00:00.000Z";

fn item(id: impl Into<String>, update: DocUpdate) -> UpdateItem {
    UpdateItem {
        id: id.into(),
        update,
    }
}

/// An upsert of a small master document (a GMC doctor, no TCS trainee).
fn upsert(id: &str, name: &str) -> DocUpdate {
    let doc = json!({"gmcReferenceNumber": id, "doctorFirstName": name, "existsInGmc": true});
    DocUpdate::Merge {
        doc: doc.clone(),
        upsert: doc,
    }
}

/// The `_source` of document `id` of `index`, if there (a realtime get).
async fn source(client: &SearchClient, index: &str, id: &str) -> Option<Value> {
    let (status, v) = client
        .request(Method::Get, &format!("/{index}/_doc/{id}"), &[], None)
        .await
        .expect("a get answers");
    match status {
        404 => None,
        200 => Some(v["_source"].clone()),
        other => panic!("GET {index}/_doc/{id} answered {other}: {v}"),
    }
}

async fn refreshed_count(client: &SearchClient, index: &str) -> u64 {
    client
        .json(Method::Post, &format!("/{index}/_refresh"), &[], None)
        .await
        .expect("refresh");
    count(client, index).await
}

/// Write tasks the throttled node has refused so far.
async fn write_rejections(client: &SearchClient) -> u64 {
    let v = client
        .json(Method::Get, "/_nodes/stats/thread_pool", &[], None)
        .await
        .expect("node stats");
    v["nodes"]
        .as_object()
        .map(|nodes| {
            nodes
                .values()
                .filter_map(|n| n["thread_pool"]["write"]["rejected"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Keeps the throttled node's write pool busy with bulks of another index
/// until `stop`.
async fn load(client: SearchClient, index: String, stop: Arc<AtomicBool>) {
    let mut body = Vec::new();
    for i in 0..100 {
        body.extend(json!({"index": {"_id": i.to_string()}}).to_string().bytes());
        body.push(b'\n');
        body.extend(json!({"n": i}).to_string().bytes());
        body.push(b'\n');
    }
    let path = format!("/{index}/_bulk");
    while !stop.load(Ordering::Relaxed) {
        let _ = client
            .request_bytes(
                Method::Post,
                &path,
                &[],
                Some(body.clone()),
                "application/x-ndjson",
            )
            .await;
    }
}

/// Created minus deleted as each item's final result says: what the count
/// was before the fix, too low when an upsert applied in an earlier attempt
/// is sent again and answers `noop`.
fn net_of_results(report: &UpdateReport) -> i64 {
    report
        .results
        .iter()
        .map(|r| match r {
            UpdateResult::Created => 1,
            UpdateResult::Deleted => -1,
            _ => 0,
        })
        .sum()
}

/// Case 4. The batch goes to an index of the master template's mappings
/// with two primary shards, on the throttled node, while three other
/// writers keep its write pool (one thread, a queue of one) full. One
/// `_bulk` is one write task per shard, refused or run whole, so with the
/// template's single shard a request is applied all or nothing; with two,
/// one shard's half is often applied while the other's is refused with a
/// real 429, and the applied upserts after the first refused item are sent
/// again (for order) and answer `noop`: the answer that lowered the count
/// before. Each round checks that `net_documents()` is the real change of
/// `_count`. The 429s are real but their timing is not forced (now and then
/// the pool has room for a whole request), so rounds go on, up to six,
/// until one was retried and its results alone would have been short of
/// the real count; the test fails if none was. Two shards, not more: the
/// node refuses its own third concurrent shard task, so a batch on more
/// shards would settle a few items per request even without the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_when_429s_send_applied_upserts_again() {
    let mut env = TestEnv::new("count_429");
    env.settings.opensearch.url = throttled_opensearch_url();
    let client = SearchClient::new(&env.settings.opensearch).unwrap();
    if let Err(e) = client.version().await {
        panic!(
            "the throttled OpenSearch node is not reachable at {}: {e}; {}",
            env.settings.opensearch.url,
            common::START_HINT
        );
    }
    let index = env.name("counted");
    let template = IndexTemplate::builtin(Family::Master).unwrap();
    let mut body = template.create_body(json!({"run_id": "count_429"}));
    body["settings"]["index"]["number_of_shards"] = json!(2);
    client
        .json(Method::Put, &format!("/{index}"), &[], Some(&body))
        .await
        .expect("the counted index is created");
    let load_index = env.name("load");
    client
        .json(
            Method::Put,
            &format!("/{load_index}"),
            &[],
            Some(&json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}})),
        )
        .await
        .expect("the load index is created");
    let retry = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_retries: 1000,
    };

    const ROUNDS: usize = 20;
    const NEW: usize = 2000;
    // Rounds until one met the case: the load leaves the pool room for
    // the whole first request now and then.
    let (mut retried_rounds, mut short_rounds) = (0, 0);
    for round in 0..ROUNDS {
        // Documents the batch updates or deletes: doctors TCS knows (a
        // departure from GMC keeps them) and doctors only GMC knew (a
        // departure deletes them). Written without load, so all at once.
        let mut seed = Vec::new();
        for i in 0..20 {
            let id = format!("r{round}-known-{i}");
            let doc = json!({"gmcReferenceNumber": id, "tcsPersonId": i + 1, "existsInGmc": true, "designatedBody": "1-SEED"});
            seed.push(item(
                id,
                DocUpdate::Merge {
                    doc: doc.clone(),
                    upsert: doc,
                },
            ));
            let id = format!("r{round}-gmc-only-{i}");
            seed.push(item(id.clone(), upsert(&id, "Seed")));
        }
        let seeded = apply_updates(&client, Target::Generation(&index), &seed, AT, &retry)
            .await
            .expect("the seed is written");
        assert_eq!(seeded.failed(), 0, "{seeded:?}");
        let before = refreshed_count(&client, &index).await;

        let mut items = Vec::new();
        for i in 0..NEW {
            let id = format!("r{round}-new-{i}");
            items.push(item(id.clone(), upsert(&id, "New")));
            match i % 100 {
                // A known doctor's GMC change, an update.
                10 => {
                    let id = format!("r{round}-known-{}", i / 100);
                    items.push(item(id.clone(), upsert(&id, "Changed")));
                }
                // A GMC-only doctor leaves GMC: a delete.
                20 => items.push(item(
                    format!("r{round}-gmc-only-{}", i / 100),
                    DocUpdate::LeaveGmc,
                )),
                // A known doctor leaves GMC: kept, cleared.
                30 => items.push(item(
                    format!("r{round}-known-{}", i / 100),
                    DocUpdate::LeaveGmc,
                )),
                // A new doctor who leaves again within the batch: created
                // and deleted, whichever attempts apply the two.
                40 => items.push(item(format!("r{round}-new-{i}"), DocUpdate::LeaveGmc)),
                // A status for a doctor not in the index: nothing.
                50 => items.push(item(
                    format!("r{round}-absent-{i}"),
                    DocUpdate::MergeIfPresent {
                        doc: json!({"gmcStatus": "Approved"}),
                    },
                )),
                _ => {}
            }
        }

        // The load starts first, and the batch only once the node is seen
        // refusing writes; it stops after a while, so the retries settle.
        let stop = Arc::new(AtomicBool::new(false));
        let loaders: Vec<_> = (0..3)
            .map(|_| tokio::spawn(load(client.clone(), load_index.clone(), stop.clone())))
            .collect();
        let refused = write_rejections(&client).await;
        let waited = Instant::now();
        while write_rejections(&client).await == refused {
            assert!(
                waited.elapsed() < Duration::from_secs(30),
                "the load never made the throttled node refuse a write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                stop.store(true, Ordering::Relaxed);
            })
        };
        let report = apply_updates(&client, Target::Generation(&index), &items, AT, &retry)
            .await
            .expect("the batch is applied");
        stop.store(true, Ordering::Relaxed);
        stopper.abort();
        for loader in loaders {
            loader.await.unwrap();
        }
        let after = refreshed_count(&client, &index).await;
        let results_net = net_of_results(&report);
        eprintln!(
            "round {round}: {} requests, net_documents {}, results alone {results_net}, _count {before} -> {after}",
            report.requests,
            report.net_documents(),
        );

        assert_eq!(report.results.len(), items.len());
        assert_eq!(report.failed(), 0, "{:?}", report.index_refusal());
        assert_eq!(
            report.net_documents(),
            after as i64 - before as i64,
            "the reported change of the count is the real one"
        );
        assert_eq!(report.net_documents(), NEW as i64 - 20 - 20);
        for i in [0, 10] {
            let id = format!("r{round}-known-{i}");
            let kept = source(&client, &index, &id).await.expect("kept");
            assert_eq!(kept["existsInGmc"], false, "{id} left GMC last");
        }
        retried_rounds += usize::from(report.requests > 1);
        if report.requests > 1 && results_net != report.net_documents() {
            short_rounds += 1;
            break;
        }
    }
    assert!(
        retried_rounds > 0,
        "in {ROUNDS} rounds no 429 made apply_updates send part of a batch again"
    );
    assert!(
        short_rounds > 0,
        "in {ROUNDS} rounds no answer applied one shard's half of the batch and refused \
         the other's, so the case the count fix is for never came up"
    );
    cleanup_search(&env).await;
}

fn gmc_number(n: &str) -> GmcNumber {
    GmcNumber::parse(n).unwrap()
}

/// A trainee of `number` whose programme membership starts at `start`.
fn trainee(number: &str, person: i64, start: &str, programme: &str) -> Change {
    Change::Tcs {
        number: gmc_number(number),
        record: Box::new(TcsRecord {
            tcs_person_id: Some(person),
            gmc_reference_number: Some(number.into()),
            doctor_first_name: Some(format!("First-{person}")),
            programme_name: Some(programme.into()),
            programme_membership_type: Some(format!("TYPE-{person}")),
            programme_membership_start_date: Some(start.into()),
            tcs_designated_body: Some(format!("DB-{person}")),
            ..TcsRecord::default()
        }),
    }
}

/// Applies `changes` (resolved with nothing looked up) one batch in order
/// to `generation`, and returns each one's result.
async fn apply(
    client: &SearchClient,
    generation: &str,
    changes: &[Change],
    retry: &RetryPolicy,
) -> Vec<UpdateResult> {
    let items: Vec<UpdateItem> = changes
        .iter()
        .map(|c| {
            item(
                c.number().expect("a doctor change").as_str(),
                update_for(c, &Known::default(), AT),
            )
        })
        .collect();
    let report = apply_updates(client, Target::Generation(generation), &items, AT, retry)
        .await
        .expect("the updates are applied");
    assert_eq!(report.failed(), 0, "{:?}", report.results);
    report.results
}

/// Case 5. A live TCS update is a script that does nothing when the stored
/// document holds another trainee who ranks higher, and merges its fields
/// otherwise; one update at a time, so each result is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_of_the_losing_trainee_leaves_the_winner_in_place() {
    let env = TestEnv::new("tcs_precedence");
    let engine = engine(&env).await;
    let client = env.search().await;
    let generation = engine
        .create_generation(Family::Master, "run-precedence")
        .await
        .unwrap();
    let g = generation.name.as_str();
    let retry = RetryPolicy::new(&env.settings.retry);
    let one = |change: Change| vec![change];

    // The winner first, then the loser (an earlier programme start, though
    // a greater person id): the loser's update changes nothing.
    let winner = trainee("7200001", 10, "2024-08-01", "Winner");
    let loser = trainee("7200001", 99, "2023-08-01", "Loser");
    let loser_again = loser.clone();
    assert_eq!(
        apply(&client, g, &one(winner), &retry).await,
        [UpdateResult::Created],
        "the winner creates the document"
    );
    assert_eq!(
        apply(&client, g, &one(loser), &retry).await,
        [UpdateResult::Unchanged]
    );
    let doc = source(&client, g, "7200001").await.unwrap();
    assert_eq!(doc["tcsPersonId"], 10);
    assert_eq!(doc["programmeName"], "Winner");
    assert_eq!(doc["membershipStartDate"], "2024-08-01");
    assert_eq!(doc["membershipType"], "TYPE-10");
    assert_eq!(doc["doctorFirstName"], "First-10");

    // The reverse order: the loser creates the document, the winner
    // overwrites every TCS field of it.
    let winner_b = trainee("7200002", 10, "2024-08-01T00:00:00Z", "Winner");
    let loser_b = trainee("7200002", 99, "2023-08-01", "Loser");
    assert_eq!(
        apply(&client, g, &one(loser_b), &retry).await,
        [UpdateResult::Created]
    );
    assert_eq!(
        apply(&client, g, &one(winner_b), &retry).await,
        [UpdateResult::Updated]
    );
    let doc = source(&client, g, "7200002").await.unwrap();
    assert_eq!(doc["tcsPersonId"], 10);
    assert_eq!(doc["programmeName"], "Winner");
    assert_eq!(doc["tcsDesignatedBody"], "DB-10");

    // The winner's own record always applies, even when it moves to an
    // earlier programme than the loser's; fields it lacks are cleared to
    // null, as a partial `doc` merge clears them.
    let Change::Tcs { record, .. } = trainee("7200001", 10, "2022-01-01", "Winner, earlier") else {
        unreachable!()
    };
    let mut moved = *record;
    moved.programme_membership_type = None;
    let moved = Change::Tcs {
        number: gmc_number("7200001"),
        record: Box::new(moved),
    };
    assert_eq!(
        apply(&client, g, &one(moved), &retry).await,
        [UpdateResult::Updated]
    );
    let doc = source(&client, g, "7200001").await.unwrap();
    assert_eq!(doc["programmeName"], "Winner, earlier");
    assert_eq!(doc["membershipStartDate"], "2022-01-01");
    assert_eq!(doc.get("membershipType"), Some(&Value::Null), "{doc}");
    // Now the loser ranks higher, and its next update applies (the known
    // gap: nothing sends its record again before that, or a rebuild).
    assert_eq!(
        apply(&client, g, &one(loser_again), &retry).await,
        [UpdateResult::Updated]
    );
    assert_eq!(
        source(&client, g, "7200001").await.unwrap()["tcsPersonId"],
        99
    );

    // One programme start: the greater person id wins, in either order.
    let first = trainee("7200003", 7, "2024-08-01", "Seven");
    assert_eq!(
        apply(&client, g, &one(first), &retry).await,
        [UpdateResult::Created]
    );
    let smaller = trainee("7200003", 5, "2024-08-01", "Five");
    assert_eq!(
        apply(&client, g, &one(smaller), &retry).await,
        [UpdateResult::Unchanged]
    );
    let greater = trainee("7200003", 8, "2024-08-01", "Eight");
    assert_eq!(
        apply(&client, g, &one(greater), &retry).await,
        [UpdateResult::Updated]
    );
    assert_eq!(
        source(&client, g, "7200003").await.unwrap()["programmeName"],
        "Eight"
    );

    // A doctor only GMC knew: a trainee applies, GMC's fields stay, and a
    // later GMC change does not stop a losing trainee being refused.
    let doctor = |body: &str| Change::Doctor {
        number: gmc_number("7200004"),
        doctor: Box::new(GmcDoctor {
            designated_body_code: Some(body.into()),
            exists_in_gmc: true,
            ..GmcDoctor::default()
        }),
    };
    let winner_d = trainee("7200004", 3, "2025-02-01", "Winner");
    let loser_d = trainee("7200004", 4, "2025-01-31", "Loser");
    assert_eq!(
        apply(
            &client,
            g,
            &[doctor("1-GMC"), winner_d, doctor("1-GMC2"), loser_d],
            &retry
        )
        .await,
        [
            UpdateResult::Created,
            UpdateResult::Updated,
            UpdateResult::Updated,
            UpdateResult::Unchanged
        ]
    );
    let doc = source(&client, g, "7200004").await.unwrap();
    assert_eq!(doc["programmeName"], "Winner");
    assert_eq!(doc["tcsPersonId"], 3);
    assert_eq!(doc["designatedBody"], "1-GMC2");
    assert_eq!(doc["existsInGmc"], true);
    assert_eq!(
        doc.get("membershipEndDate"),
        Some(&Value::Null),
        "the script sets a field the trainee lacks to null: {doc}"
    );

    // ... as a partial doc merge does.
    let set = |end: Value| {
        item(
            "7200005",
            DocUpdate::Merge {
                doc: json!({"membershipEndDate": end}),
                upsert: json!({"gmcReferenceNumber": "7200005", "membershipEndDate": end}),
            },
        )
    };
    let report = apply_updates(
        &client,
        Target::Generation(g),
        &[set(json!("2026-01-01")), set(Value::Null)],
        AT,
        &retry,
    )
    .await
    .unwrap();
    assert_eq!(
        report.results,
        [UpdateResult::Created, UpdateResult::Updated]
    );
    let doc = source(&client, g, "7200005").await.unwrap();
    assert_eq!(doc.get("membershipEndDate"), Some(&Value::Null), "{doc}");
    cleanup_search(&env).await;
}
