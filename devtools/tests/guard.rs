//! The development aids refuse to touch what is not theirs, against the
//! real MongoDB-compatible server of `scripts/stack start`: seeding a
//! database that holds data it did not create is refused and loses nothing;
//! a database it created (or an empty one) is seeded; the binary refuses a
//! server that is not on loopback before connecting anywhere.

use bson::{doc, Document};
use rebuilder::config::Settings;
use rebuilder::sources::mongo_client;
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::seed::seed_mongo;

const START_HINT: &str = "start the local servers with `scripts/stack start` (see README)";

fn settings(database: &str) -> Settings {
    let mut settings = Settings::load(None).expect("default settings");
    settings.mongodb.database = format!("rbdev_{database}_{}", std::process::id());
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_refuses_a_database_with_data_it_did_not_create_and_loses_nothing() {
    let settings = settings("foreign");
    let mongo = mongo_client(&settings.mongodb)
        .await
        .unwrap_or_else(|e| panic!("MongoDB is not reachable: {e}; {START_HINT}"));
    let db = mongo.database(&settings.mongodb.database);
    let doctors = db.collection::<Document>(&settings.mongodb.doctors_collection);
    doctors
        .insert_one(doc! {"_id": "7000001", "doctorLastName": "Real"})
        .await
        .unwrap();

    let error = seed_mongo(&mongo, &settings.mongodb, &DatasetSpec::new(1, 50))
        .await
        .expect_err("a database with foreign data is refused");
    let text = format!("{error:#}");
    assert!(text.contains("did not create"), "{text}");
    assert!(
        text.contains(&settings.mongodb.doctors_collection),
        "{text}"
    );
    assert_eq!(
        doctors.count_documents(doc! {}).await.unwrap(),
        1,
        "nothing was dropped"
    );
    db.drop().await.unwrap();

    // An empty database is claimed and seeded, and seeded again later.
    let summary = seed_mongo(&mongo, &settings.mongodb, &DatasetSpec::new(1, 50))
        .await
        .expect("an empty database is seeded");
    assert!(summary.doctors > 0);
    seed_mongo(&mongo, &settings.mongodb, &DatasetSpec::new(1, 60))
        .await
        .expect("a database seeded before is seeded again");
    db.drop().await.unwrap();
}

#[test]
fn the_seed_command_refuses_a_server_that_is_not_on_loopback() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rebuilder-dev"))
        .args(["seed", "--doctors", "10"])
        .env(
            "REBUILDER_MONGODB__URI",
            "mongodb://admin:pw@docdb.cluster.example.org:27017/?retryWrites=false",
        )
        .output()
        .expect("rebuilder-dev runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("docdb.cluster.example.org") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert!(!stderr.contains("admin:pw"), "{stderr}");
}
