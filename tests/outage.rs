//! Tests that stop a real server for a while (`scripts/stack stop SERVER`).
//! They live in a test binary of their own: cargo runs test binaries one
//! after another, so no other test sees the outage, and the tests of this
//! binary take a lock so that they run one at a time. A guard starts the
//! server again even when an assertion fails.

mod common;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;
use service_helpers::Service;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/stack ARGS`, which must succeed.
fn stack(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack");
    let status = Command::new(script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{script} {args:?}: {e}"));
    assert!(status.success(), "scripts/stack {args:?} failed");
}

/// A server stopped until dropped.
struct Outage(&'static str);

impl Outage {
    fn of(server: &'static str) -> Self {
        stack(&["stop", server]);
        Self(server)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        stack(&["start", self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_rabbitmq_while_the_broker_is_down_and_is_ready_once_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new("outage_readyz");
    let service = Service::start(&env, &[]);
    let (status, ready) = service.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["rabbitmq"]["ok"], true);

    let outage = Outage::of("rabbitmq");
    let (status, down) = service.get("/readyz").await;
    assert_eq!(status, 503, "{down}");
    assert_eq!(down["error"]["code"], "not_ready");
    let message = down["error"]["message"].as_str().unwrap();
    assert!(message.contains("RabbitMQ"), "{message}");
    assert!(
        !message.contains("OpenSearch") && !message.contains("MongoDB"),
        "{message}"
    );
    assert_eq!(down["checks"]["rabbitmq"]["ok"], false);
    assert_eq!(down["checks"]["opensearch"]["ok"], true);
    assert_eq!(down["checks"]["mongodb"]["ok"], true);
    let (status, alive) = service.get("/healthz").await;
    assert_eq!(
        (status, alive["status"].as_str()),
        (200, Some("ok")),
        "still alive"
    );

    drop(outage);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, ready) = service.get("/readyz").await;
        if status == 200 {
            assert_eq!(ready["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    env.cleanup().await;
}
