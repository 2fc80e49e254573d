//! API fuzzing: schemathesis (PyPI, pinned; `scripts/install-schemathesis`,
//! run by `scripts/test`) generates requests from `/api/openapi.json` of a
//! running `rebuilder serve` on the real stack, without the token and with
//! it, a bounded number of examples per operation. Every answer must be a
//! non-5xx that conforms to the document (status code, content type, body
//! schema, headers), and no request without the token may change anything:
//! no run starts and no alias moves.
//!
//! `negative_data_rejection` holds the server to the document's limits:
//! a request the document calls invalid (a `limit` of 0 or 101, a body
//! that is not an object) must be refused.
//!
//! The checks are named, not `all`: `positive_data_acceptance` and
//! `ignored_auth` judge an API whose every mutating call needs a token as
//! failing when it refuses one without it, which is the behaviour wanted.
//!
//! Needs the local stack (`scripts/stack start`) and schemathesis.

mod common;
#[path = "common/run_helpers.rs"]
mod run_helpers;
#[path = "common/service_helpers.rs"]
mod service_helpers;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::TestEnv;
use rebuilder_dev::datagen::DatasetSpec;
use run_helpers::*;
use service_helpers::{Service, TOKEN};

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection";

fn schemathesis() -> PathBuf {
    let cache = std::env::var_os("REBUILDER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rebuilder")
        });
    let bin = cache.join("venv-schemathesis/bin/schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/install-schemathesis",
        bin.display()
    );
    bin
}

/// Runs schemathesis against the service; returns whether it passed and its output.
fn fuzz(service: &Service, token: Option<&str>) -> (bool, String) {
    let mut command = Command::new(schemathesis());
    command
        .args(["--no-color", "run"])
        .arg(format!("{}/api/openapi.json", service.base))
        .args([
            "--checks",
            CHECKS,
            "--max-examples",
            "25",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "20261201",
            "--workers",
            "1",
            "--max-time",
            "45",
        ])
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("schemathesis runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_no_contract_breach_and_no_unauthenticated_change() {
    logs();
    let env = TestEnv::new("fuzz");
    let spec = DatasetSpec::new(61, 300);
    seed(&env, &spec).await;
    let tcs = simulator_once(&env, spec);
    let first = rebuild(&env)
        .await
        .expect("a live generation to fuzz against");
    tcs.await.unwrap().unwrap();

    let service = Service::start(&env, &[]);
    let (_, runs_before) = service.get("/api/runs?limit=100").await;
    let (_, generations_before) = service.get("/api/generations").await;

    let started = Instant::now();
    let (passed, output) = fuzz(&service, None);
    let without = started.elapsed();
    assert!(passed, "schemathesis without the token:\n{output}");
    let (_, runs_after) = service.get("/api/runs?limit=100").await;
    let (_, generations_after) = service.get("/api/generations").await;
    assert_eq!(
        runs_after["runs"], runs_before["runs"],
        "no run started without the token"
    );
    assert_eq!(
        generations_after["aliases"], generations_before["aliases"],
        "no alias moved without the token"
    );
    assert_eq!(
        generations_after["aliases"][env.name("masterdoctorindex")][0],
        first.promotion.unwrap().master.to.as_str()
    );

    let started = Instant::now();
    let (passed, output) = fuzz(&service, Some(TOKEN));
    let with = started.elapsed();
    assert!(passed, "schemathesis with the token:\n{output}");
    eprintln!(
        "schemathesis: {:.1} s without the token, {:.1} s with it",
        without.as_secs_f64(),
        with.as_secs_f64()
    );
    drop(service);
    env.cleanup().await;
}
