//! Security against the real servers: known secrets in every credential
//! setting (the OpenSearch password, credentials inside the OpenSearch URL,
//! the AMQP URI, the MongoDB URI, the API token) never reach a log line, an
//! error body, a run report or `/metrics`; and names from the API cannot
//! touch an index outside the configured families.
//!
//! The local OpenSearch runs without its security plugin, so it accepts any
//! basic-auth credentials: the run works with them and the test sees where
//! they travel. RabbitMQ gets a user of its own with a secret password.
//! The local MongoDB-compatible server has no users, so the MongoDB
//! password is tried on the failure path (an unreachable server), where
//! error messages are most tempted to quote the URI.
//!
//! Needs the local stack (`scripts/stack start`).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestEnv, RABBIT_MANAGEMENT};
use rebuilder_dev::datagen::DatasetSpec;
use reqwest::Method;
use run_helpers::*;
use serde_json::{json, Value};
use service_helpers::Service;

/// A RabbitMQ user with every permission on `/`, deleted on drop.
struct RabbitUser {
    name: String,
}

impl RabbitUser {
    async fn create(name: &str, password: &str) -> RabbitUser {
        let http = reqwest::Client::new();
        let user = http
            .put(format!("{RABBIT_MANAGEMENT}/api/users/{name}"))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"password": password, "tags": ""}))
            .send()
            .await
            .expect("the RabbitMQ management API answers (scripts/stack start)");
        assert!(
            user.status().is_success(),
            "creating the user: {}",
            user.status()
        );
        let permissions = http
            .put(format!("{RABBIT_MANAGEMENT}/api/permissions/%2f/{name}"))
            .basic_auth("guest", Some("guest"))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .unwrap();
        assert!(permissions.status().is_success());
        RabbitUser {
            name: name.to_string(),
        }
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = Command::new("curl")
            .args([
                "-s",
                "-u",
                "guest:guest",
                "-X",
                "DELETE",
                &format!("{RABBIT_MANAGEMENT}/api/users/{}", self.name),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

fn rand_tail() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26)))
        .collect()
}

/// Runs the binary with the test's settings plus `extra`; returns its exit
/// code and everything it printed.
fn run_binary(env: &TestEnv, args: &[&str], extra: &[(String, String)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .args(args)
        .envs(child_env(env))
        .env("RUST_LOG", "info,rebuilder=debug")
        .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret:?}:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_secrets_reach_no_log_error_body_report_or_metrics() {
    logs();
    let env = TestEnv::new("sec_secrets");
    let tail = rand_tail();
    let os_password = format!("os-password-{tail}");
    let os_url_password = format!("os-url-{tail}");
    let amqp_password = format!("amqp-{tail}");
    let mongo_password = format!("mongo-{tail}");
    let api_token = format!("api-token-{tail}");
    let secrets = [
        os_password.as_str(),
        os_url_password.as_str(),
        amqp_password.as_str(),
        mongo_password.as_str(),
        api_token.as_str(),
    ];
    let rabbit_user = format!("sec-{tail}");
    let _user = RabbitUser::create(&rabbit_user, &amqp_password).await;
    let amqp_uri = format!("amqp://{rabbit_user}:{amqp_password}@127.0.0.1:5672/%2f");

    let spec = DatasetSpec::new(51, 600);
    seed(&env, &spec).await;
    let mut captured = String::new();

    // 1. A whole run with the password setting and the AMQP URI.
    let with_password = vec![
        (
            "REBUILDER_OPENSEARCH__USERNAME".to_string(),
            "admin".to_string(),
        ),
        (
            "REBUILDER_OPENSEARCH__PASSWORD".to_string(),
            os_password.clone(),
        ),
        ("REBUILDER_RABBITMQ__URI".to_string(), amqp_uri.clone()),
    ];
    let tcs = simulator_once(&env, spec);
    let (code, out) = run_binary(&env, &["run"], &with_password);
    tcs.await.unwrap().unwrap();
    assert_eq!(code, Some(0), "the run works with the credentials:\n{out}");
    captured.push_str(&out);
    let (code, out) = run_binary(&env, &["status", "--json"], &with_password);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"succeeded\""), "{out}");
    captured.push_str(&out);
    let (_, out) = run_binary(&env, &["config", "check"], &with_password);
    captured.push_str(&out);

    // 2. Credentials inside the OpenSearch URL.
    let in_url = vec![
        (
            "REBUILDER_OPENSEARCH__URL".to_string(),
            format!("http://admin:{os_url_password}@127.0.0.1:9200"),
        ),
        ("REBUILDER_RABBITMQ__URI".to_string(), amqp_uri.clone()),
    ];
    let (code, out) = run_binary(&env, &["generations"], &in_url);
    assert_eq!(code, Some(0), "the URL's credentials work:\n{out}");
    captured.push_str(&out);

    // 3. Failure paths: unreachable servers behind secret-bearing URIs.
    let unreachable = vec![
        (
            "REBUILDER_MONGODB__URI".to_string(),
            format!("mongodb://reval:{mongo_password}@127.0.0.1:9/?serverSelectionTimeoutMS=1500&connectTimeoutMS=1000"),
        ),
        (
            "REBUILDER_OPENSEARCH__URL".to_string(),
            format!("http://admin:{os_url_password}@127.0.0.1:9"),
        ),
        (
            "REBUILDER_RABBITMQ__URI".to_string(),
            format!("amqp://{rabbit_user}:{amqp_password}@127.0.0.1:9/%2f"),
        ),
        ("REBUILDER_RETRY__MAX_RETRIES".to_string(), "1".to_string()),
    ];
    let (code, out) = run_binary(&env, &["run"], &unreachable);
    assert_ne!(code, Some(0), "a run against closed ports fails:\n{out}");
    captured.push_str(&out);

    // 4. The service: the token, the password and the URIs; every endpoint.
    let service_env: Vec<(&str, &str)> = vec![
        ("REBUILDER_SERVICE__TOKEN", api_token.as_str()),
        ("REBUILDER_SERVICE__PROTECT_READS", "true"),
        ("REBUILDER_OPENSEARCH__USERNAME", "admin"),
        ("REBUILDER_OPENSEARCH__PASSWORD", os_password.as_str()),
        ("REBUILDER_RABBITMQ__URI", amqp_uri.as_str()),
    ];
    let service = Service::start(&env, &service_env);
    let token = Some(api_token.as_str());
    let wrong = format!("{api_token}-wrong");
    let mut bodies = Vec::new();
    for (method, path, token, body) in [
        (Method::GET, "/api/sync/status", token, None),
        (Method::GET, "/api/runs", token, None),
        (Method::GET, "/api/generations", token, None),
        (Method::GET, "/api/generations/compare", token, None),
        (Method::GET, "/api/sync/status", Some(wrong.as_str()), None),
        (Method::GET, "/api/runs?limit=0", token, None),
        (Method::POST, "/api/sync", Some(wrong.as_str()), None),
        (Method::POST, "/api/sync?dryRun=maybe", token, None),
        (
            Method::POST,
            "/api/rollback",
            token,
            Some(json!({"to": "nothing-here"})),
        ),
        (Method::GET, "/readyz", None, None),
        (Method::GET, "/api/openapi.json", token, None),
    ] {
        let (status, answer) = service.call(method, path, token, body).await;
        assert!(
            status < 500 || path == "/readyz",
            "{path}: {status} {answer}"
        );
        bodies.push(format!("{path} {status} {answer}"));
    }
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", service.base))
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rebuilder_"),
        "metrics answered: {metrics:.200}"
    );
    captured.push_str(&bodies.join("\n"));
    captured.push_str(&metrics);
    tokio::time::sleep(Duration::from_millis(300)).await;
    captured.push_str(&service.logs());
    drop(service);

    // The service against unreachable servers: readiness names them, and
    // says nothing of the credentials.
    let failing: Vec<(&str, &str)> = unreachable
        .iter()
        .filter(|(k, _)| k != "REBUILDER_RETRY__MAX_RETRIES")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("REBUILDER_SERVICE__TOKEN", api_token.as_str())])
        .collect();
    let service = Service::start(&env, &failing);
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    captured.push_str(&ready.to_string());
    let (_, answer) = service.trigger(token).await;
    captured.push_str(&answer.to_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    captured.push_str(&service.logs());
    drop(service);

    // The stored run reports too.
    let history = env.mongo().await;
    let runs: Vec<bson::Document> = {
        use futures::TryStreamExt;
        history
            .database(env.settings.mongodb.state_database())
            .collection::<bson::Document>(&env.settings.mongodb.runs_collection)
            .find(bson::doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    for run in &runs {
        captured.push_str(&run.to_string());
    }

    assert!(
        captured.len() > 10_000,
        "something was captured ({} bytes)",
        captured.len()
    );
    assert!(
        captured.contains("admin"),
        "the user name may show, as context"
    );
    assert_no_secret("the captured output", &captured, &secrets);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_api_cannot_reach_an_index_outside_the_families() {
    logs();
    let env = TestEnv::new("sec_names");
    let spec = DatasetSpec::new(52, 300);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let first = rebuild(&env).await.expect("the first run");
    tcs.await.unwrap().unwrap();
    let live = first.promotion.expect("promoted").master.to;

    // An index of another family (another prefix), which must stay untouched.
    let client = env.search().await;
    let outsider = format!("{}outsider-index", env.name("x"));
    client
        .json(
            opensearch::http::Method::Put,
            &format!("/{outsider}"),
            &[],
            None,
        )
        .await
        .unwrap();

    let service = Service::start(&env, &[]);
    let token = Some(service_helpers::TOKEN);
    let before = service.get("/api/generations").await.1["aliases"].clone();
    for name in [
        "../x".to_string(),
        "*".to_string(),
        "_all".to_string(),
        format!("{live},{outsider}"),
        outsider.clone(),
        env.name("masterdoctorindex"),
        env.name("recommendationindex-*"),
        "masterdoctorindex-20200101-000000".to_string(),
        format!("{live}/_doc/1"),
        "".to_string(),
    ] {
        let (status, answer) = service
            .call(
                Method::POST,
                "/api/rollback",
                token,
                Some(json!({"to": name})),
            )
            .await;
        assert!(
            (400..500).contains(&status),
            "rollback to {name:?} was not refused: {status} {answer}"
        );
        assert!(answer["error"]["message"].is_string(), "{answer}");
        let query = format!("/api/generations/compare?generation={}", url_escape(&name));
        let (status, answer) = service.get(&query).await;
        assert!(
            (400..500).contains(&status),
            "compare with {name:?} was not refused: {status} {answer}"
        );
    }
    let (_, now) = service.get("/api/generations").await;
    assert_eq!(now["aliases"], before, "no alias moved");
    let listed: Vec<String> = now["master"]
        .as_array()
        .unwrap()
        .iter()
        .chain(now["recommendation"].as_array().unwrap())
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !listed.contains(&outsider),
        "the listing holds only the families"
    );
    let exists = client
        .request(
            opensearch::http::Method::Head,
            &format!("/{outsider}"),
            &[],
            None,
        )
        .await
        .unwrap()
        .0;
    assert_eq!(exists, 200, "the outsider index is untouched");
    client
        .request(
            opensearch::http::Method::Delete,
            &format!("/{outsider}"),
            &[],
            None,
        )
        .await
        .unwrap();
    let _: Value = now;
    env.cleanup().await;
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
