//! The container image as ECS runs it (issue 21), and the deployment
//! examples. The image `localhost/rebuilder:latest` (made by
//! `scripts/image`) is started with podman, through `scripts/image podman`
//! (the settings these machines need), on the host's network with nothing
//! but environment variables and a mounted token file, a read-only root
//! filesystem and no capabilities: `/healthz` and `/readyz` answer, the
//! image's own health check passes, the process is not root and logs JSON
//! lines, a trigger with the token runs a rebuild to the swap, and
//! `podman stop` (SIGTERM, as ECS stops a task) aborts a second run at a
//! safe point within `service.shutdown_grace_secs`, the container exiting
//! 0. The image's labels, user, command and health check are read back. The
//! ECS task definition and `compose.yaml` are parsed, and every variable
//! they set is given to `rebuilder config check`.
//!
//! Needs the image (`scripts/image --dev`, or `scripts/image` for a release
//! build; a missing or stale image fails the test saying so) and the local
//! stack (`scripts/stack start`). `SKIP_CONTAINER_TEST=1` skips the tests
//! that need the image, saying so (CI never sets it).

mod common;
#[path = "common/engine_helpers.rs"]
mod engine_helpers;
#[path = "common/run_helpers.rs"]
mod run_helpers;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{alias_targets, count, TestEnv};
use engine_helpers::{all_aliases, engine};
use rebuilder::rebuild::record::RunOutcome;
use rebuilder::state::lease::{lease_collection, read_lease, REBUILD_LEASE};
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::simulator::SimulatorOptions;
use run_helpers::*;
use serde_json::{json, Value};

/// The image `scripts/image` tags last.
const IMAGE: &str = "localhost/rebuilder:latest";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image");
const BUILD_HINT: &str = "build it with `scripts/image --dev` (the test build's binary) or `scripts/image` (a release build); see README, \"Deploying\"";
/// The API token of the test's container, given to it as a file.
const TOKEN: &str = "container-test-token-7c1d9a4e";
/// `service.shutdown_grace_secs` of the test's container.
const GRACE_SECS: u64 = 30;

// ------------------------------------------------------------------ podman

/// `podman ARGS` with the project's podman settings.
fn podman(args: &[&str]) -> Output {
    Command::new(SCRIPT)
        .arg("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{SCRIPT} podman {args:?}: {e}"))
}

/// The output of `podman ARGS`, which must succeed.
fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A line on the test's stderr that the harness does not capture (the
/// figures a CI log should show).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "container: {line}");
}

/// True when the tests that need the image are skipped on purpose.
fn skipped() -> bool {
    let skip = std::env::var("SKIP_CONTAINER_TEST").is_ok_and(|v| v == "1");
    if skip {
        report("SKIPPED: the container tests (SKIP_CONTAINER_TEST=1); the image was not tested");
    }
    skip
}

/// `podman image inspect` of the image, or a failure that says how to get
/// it. The image must hold the binary of the code under test (its revision
/// label is the commit this test was built from).
fn image() -> Value {
    let version = podman(&["version", "--format", "{{.Client.Version}}"]);
    assert!(
        version.status.success(),
        "podman does not run ({}): {}; install it and {BUILD_HINT}",
        version.status,
        String::from_utf8_lossy(&version.stderr).trim()
    );
    let out = podman(&["image", "inspect", IMAGE]);
    assert!(
        out.status.success(),
        "the image {IMAGE} is missing: {BUILD_HINT}"
    );
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("podman answers JSON");
    let image = inspected[0].clone();
    let revision = image["Config"]["Labels"]["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    assert_eq!(
        revision,
        rebuilder::cli::COMMIT,
        "the image {IMAGE} was built from commit {revision}, the code under test is at {}: {BUILD_HINT}",
        rebuilder::cli::COMMIT
    );
    image
}

/// A container of the image, removed when dropped.
struct Container {
    name: String,
}

impl Container {
    /// Starts the image as the ECS task runs it: the host's network, the
    /// environment and one mounted secret file, a read-only root, no
    /// capabilities; the image's default command (`serve`).
    fn start(name: &str, vars: &[(String, String)], token_file: &Path) -> Container {
        let _ = podman(&["rm", "--force", name]);
        let mount = format!("{}:/run/secrets/rebuilder-token:ro", token_file.display());
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            // No timer (it needs systemd); the test runs the check itself.
            "--health-interval",
            "disable",
            "--volume",
            mount.as_str(),
        ]
        .map(String::from)
        .to_vec();
        for (key, value) in vars {
            args.push("--env".into());
            args.push(format!("{key}={value}"));
        }
        args.push(IMAGE.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_ok(&args);
        Container { name: name.into() }
    }

    fn inspect(&self) -> Value {
        let text = podman_ok(&["container", "inspect", &self.name]);
        let inspected: Value = serde_json::from_str(&text).expect("podman answers JSON");
        inspected[0].clone()
    }

    /// Everything the container wrote, stdout and stderr.
    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn running(&self) -> bool {
        self.inspect()["State"]["Running"] == true
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// A free port on loopback (the container shares the host's network).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Status and JSON of a request to the container's API.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = http.request(method, url).timeout(Duration::from_secs(30));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// Every alias of both families with the generations behind it.
async fn alias_map(env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let client = env.search().await;
    let engine = engine(env).await;
    let mut map = BTreeMap::new();
    for (alias, _) in all_aliases(&engine) {
        let targets = alias_targets(&client, &alias).await;
        map.insert(alias, targets);
    }
    map
}

// ------------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_serves_as_ecs_runs_it_rebuilds_to_the_swap_and_stops_cleanly_on_sigterm() {
    if skipped() {
        return;
    }
    let image = image();
    logs();
    let env = TestEnv::new("container");
    let spec = DatasetSpec::new(41, 1500);
    seed(&env, &spec).await;

    // The secret as a file (ECS: a mounted secret; a trailing newline, as
    // files have), readable by the container's user, not by its owner alone.
    let secrets = std::env::temp_dir().join(format!("{}-secrets", env.id));
    std::fs::create_dir_all(&secrets).unwrap();
    let token_file = secrets.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let port = free_port();
    let mut vars = child_env(&env);
    vars.extend(
        [
            ("REBUILDER_SERVICE__LISTEN", format!("127.0.0.1:{port}")),
            (
                "REBUILDER_SERVICE__TOKEN_FILE",
                "/run/secrets/rebuilder-token".into(),
            ),
            (
                "REBUILDER_SERVICE__SHUTDOWN_GRACE_SECS",
                GRACE_SECS.to_string(),
            ),
            ("REBUILDER_SCHEDULE__ENABLED", "false".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let name = format!("rbt-{}", env.id.replace('_', "-"));
    let started = Instant::now();
    let container = Container::start(&name, &vars, &token_file);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    // Alive and ready.
    let (status, health) = loop {
        let (status, body) = call(
            &http,
            reqwest::Method::GET,
            &format!("{base}/healthz"),
            None,
        )
        .await;
        if status == 200 {
            break (status, body);
        }
        assert!(
            container.running(),
            "the container stopped before it served; its output:\n{}",
            container.logs()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/healthz did not answer within 60 s ({status} {body}); the container's output:\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((status, health), (200, json!({"status": "ok"})));
    report(&format!(
        "{IMAGE}: /healthz answered {:.1} s after podman run",
        started.elapsed().as_secs_f64()
    ));
    let (status, ready) = call(&http, reqwest::Method::GET, &format!("{base}/readyz"), None).await;
    assert_eq!(status, 200, "/readyz: {ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    // The image's HEALTHCHECK (`rebuilder healthcheck`), run by podman in
    // the container, as ECS runs the task definition's.
    let check = podman(&["healthcheck", "run", &name]);
    assert!(
        check.status.success(),
        "the image's health check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Not root, no capabilities, a read-only root filesystem.
    let inspected = container.inspect();
    assert_eq!(inspected["HostConfig"]["ReadonlyRootfs"], true);
    let pid = inspected["State"]["Pid"]
        .as_u64()
        .expect("the container's pid");
    let status_file = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        status_file
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(field("Uid"), ["10001"; 4], "the process runs as uid 10001");
    assert_eq!(field("Gid"), ["10001"; 4], "the process runs as gid 10001");
    assert_eq!(field("CapEff"), ["0000000000000000"], "no capabilities");
    assert_eq!(
        image["Config"]["User"], "10001:10001",
        "the image names its user"
    );

    // A trigger without the token changes nothing; with it, a rebuild runs
    // to the swap.
    let (status, refused) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/sync"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{refused}");
    let tcs = simulator_once(&env, spec);
    let (status, accepted) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/sync"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["runId"].as_str().expect("a run id").to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let run = loop {
        let (status, run) = call(
            &http,
            reqwest::Method::GET,
            &format!("{base}/api/runs/{run_id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{run}");
        if run["outcome"] != "running" {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end in 180 s: {run}\n{}",
            container.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(run["outcome"], "succeeded", "{run}\n{}", container.logs());
    tcs.await.unwrap().unwrap();
    let record = run_record(&env, &run_id).await;
    assert_eq!(
        record.pid, 1,
        "the run ran in the container's process (pid 1 there)"
    );
    let master = env.name("masterdoctorindex");
    let client = env.search().await;
    let live = alias_targets(&client, &master).await;
    assert_eq!(live.len(), 1, "{master} -> {live:?}");
    assert!(
        record.generations.contains(&live[0]),
        "the alias moved to the run's generation: {live:?} / {:?}",
        record.generations
    );
    assert_eq!(count(&client, &master).await, spec.doctors as u64);
    report(&format!(
        "the rebuild in the container: {} documents, {:.1} s",
        spec.doctors,
        record
            .phases
            .iter()
            .filter_map(|p| p.duration_ms)
            .sum::<u64>() as f64
            / 1000.0
    ));

    // SIGTERM in the middle of a second run: TCS sends part of its sync
    // and goes quiet, so the run waits in the merge.
    let before = alias_map(&env).await;
    let tcs = simulator(
        &env,
        spec,
        SimulatorOptions {
            once: true,
            stop_after: Some(800),
            ..SimulatorOptions::default()
        },
    );
    let (status, accepted) = call(
        &http,
        reqwest::Method::POST,
        &format!("{base}/api/sync"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let stopped_run = accepted["runId"].as_str().expect("a run id").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, run) = call(
            &http,
            reqwest::Method::GET,
            &format!("{base}/api/runs/{stopped_run}"),
            None,
        )
        .await;
        if run["bulk"]["written"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the run never wrote: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // As ECS stops a task: SIGTERM, then SIGKILL after the stop timeout,
    // which is longer than the grace period.
    let stopping = Instant::now();
    let stop_timeout = (GRACE_SECS + 30).to_string();
    podman_ok(&["stop", "--time", &stop_timeout, &name]);
    let took = stopping.elapsed();
    let state = &container.inspect()["State"];
    assert_eq!(
        state["ExitCode"],
        0,
        "a clean exit after SIGTERM ({state}); the container's output:\n{}",
        container.logs()
    );
    assert!(
        took < Duration::from_secs(GRACE_SECS),
        "the container took {took:?} to stop, beyond the grace period of {GRACE_SECS} s"
    );
    report(&format!(
        "SIGTERM mid-run: the container exited 0 after {:.1} s",
        took.as_secs_f64()
    ));
    tcs.await.unwrap().unwrap();
    let record = run_record(&env, &stopped_run).await;
    assert_eq!(record.outcome, RunOutcome::Aborted, "{:?}", record.error);
    assert_eq!(alias_map(&env).await, before, "no alias moved");
    let leases = lease_collection(&env.mongo().await, &env.settings.mongodb);
    assert!(
        read_lease(&leases, REBUILD_LEASE).await.unwrap().is_none(),
        "the lease was released"
    );

    // Logs: JSON lines (but the one line that says where it listens),
    // with the runs in them and never the token.
    let output = container.logs();
    let mut lines = 0;
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("listening on http://") {
            continue;
        }
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "a log line without timestamp or level: {line}"
        );
        lines += 1;
    }
    assert!(lines > 10, "the container logged {lines} lines:\n{output}");
    assert!(output.contains(&run_id) && output.contains(&stopped_run));
    assert!(output.contains("SIGTERM"), "{output}");
    assert!(!output.contains(TOKEN), "the token appears in the logs");
    drop(container);
    let _ = std::fs::remove_dir_all(&secrets);
    env.cleanup().await;
}

#[test]
fn the_image_is_labelled_runs_as_its_own_user_and_serves_by_default() {
    if skipped() {
        return;
    }
    let image = image();
    let config = &image["Config"];
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "rebuilder");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        rebuilder::cli::COMMIT
    );
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "{labels}"
    );
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(config["Entrypoint"], json!(["/usr/local/bin/rebuilder"]));
    assert_eq!(config["Cmd"], json!(["serve"]));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert_eq!(
        image["Healthcheck"]["Test"],
        json!(["CMD", "/usr/local/bin/rebuilder", "healthcheck"])
    );
    // No setting baked in but the address to listen on.
    let settings: Vec<&str> = config["Env"]
        .as_array()
        .expect("the image's environment")
        .iter()
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with("REBUILDER_"))
        .collect();
    assert_eq!(settings, ["REBUILDER_SERVICE__LISTEN=0.0.0.0:8080"]);

    // The binary names its version and commit, as the labels do.
    let version = podman_ok(&["run", "--rm", "--network", "none", IMAGE, "--version"]);
    assert_eq!(
        version,
        format!("rebuilder {}", rebuilder::cli::VERSION),
        "rebuilder --version in the image"
    );
    // CA certificates for the TLS of Amazon's services.
    podman_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/bin/test",
        IMAGE,
        "-s",
        "/etc/ssl/certs/ca-certificates.crt",
    ]);
    // Configuration from the environment only: the effective one listens
    // where the image says, and takes what the environment adds.
    let checked = podman_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--env",
        "REBUILDER_SERVICE__TOKEN=not-printed",
        "--env",
        "REBUILDER_NAMES__PREFIX=from_env_",
        IMAGE,
        "config",
        "check",
    ]);
    assert!(checked.contains("listen = \"0.0.0.0:8080\""), "{checked}");
    assert!(checked.contains("prefix = \"from_env_\""), "{checked}");
    assert!(!checked.contains("not-printed"), "{checked}");

    let size = image["Size"].as_u64().unwrap_or(0);
    report(&format!(
        "image {IMAGE} ({}): {} MB",
        image["RepoTags"],
        size / 1_000_000
    ));
}

// ---------------------------------------------------- deployment examples

/// A value for a setting the examples take from a secret store.
fn sample_secret(name: &str) -> &'static str {
    match name {
        "REBUILDER_SERVICE__TOKEN" => "sample-token",
        "REBUILDER_RABBITMQ__URI" => "amqps://rebuilder:sample@mq.example.invalid:5671/%2f",
        "REBUILDER_MONGODB__URI" => {
            "mongodb://rebuilder:sample@docdb.example.invalid:27017/?tls=true&retryWrites=false"
        }
        "REBUILDER_OPENSEARCH__PASSWORD" => "sample",
        other => panic!("no sample value for the secret {other}: add one to sample_secret"),
    }
}

/// `rebuilder config check` with exactly these variables; its output, or
/// its failure naming `source`.
fn config_check(source: &str, vars: &[(String, String)]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rebuilder"))
        .args(["config", "check"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("rebuilder config check runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "rebuilder config check refused the variables of {source} ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether a variable holds a secret (printed redacted by `config check`).
fn is_secret(key: &str) -> bool {
    ["__TOKEN", "__PASSWORD", "__URI"]
        .iter()
        .any(|s| key.ends_with(s))
}

/// Checks that every variable is a configuration key `config check`
/// accepts, and that each plain value is the one it then prints (secrets
/// print redacted).
fn assert_real_keys(source: &str, vars: &[(String, String)]) {
    for (key, _) in vars {
        assert!(
            key.starts_with("REBUILDER_") || key == "RUST_LOG",
            "{source} sets {key}, which is not a configuration variable (REBUILDER_<SECTION>__<KEY>, or RUST_LOG)"
        );
    }
    let printed = config_check(source, vars).unwrap_or_else(|e| panic!("{e}"));
    let effective: toml::Value = toml::from_str(&printed)
        .unwrap_or_else(|e| panic!("config check printed no TOML ({e}):\n{printed}"));
    for (key, value) in vars {
        let Some(path) = key.strip_prefix("REBUILDER_") else {
            continue;
        };
        if is_secret(key) || path == "CONFIG" {
            continue;
        }
        let mut at = &effective;
        for part in path.split("__") {
            at = at.get(part.to_ascii_lowercase()).unwrap_or_else(|| {
                panic!("{source}: {key} is not in the effective configuration:\n{printed}")
            });
        }
        let shown = match at {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(&shown, value, "{source}: {key} is not taken as given");
    }
}

/// The grace period the variables give (or the default).
fn grace_of(vars: &[(String, String)]) -> u64 {
    vars.iter()
        .find(|(k, _)| k == "REBUILDER_SERVICE__SHUTDOWN_GRACE_SECS")
        .map(|(_, v)| v.parse().expect("a number of seconds"))
        .unwrap_or(rebuilder::config::ServiceSettings::default().shutdown_grace_secs)
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A YAML file as JSON, read by Python's PyYAML.
fn yaml_as_json(path: &Path) -> Value {
    let script = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "python3 is needed to read {} ({e}); scripts/image installs python3-yaml",
                path.display()
            )
        });
    assert!(
        out.status.success(),
        "python3 with PyYAML could not read {} (Debian: python3-yaml; scripts/image installs it):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

/// A text, number or boolean of JSON as the text of a variable.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn the_ecs_task_definition_sets_only_real_keys_and_stops_after_the_grace_period() {
    let source = "deploy/ecs-task-definition.json";
    let text = std::fs::read_to_string(repo_file(source)).unwrap();
    let task: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{source}: {e}"));
    let definitions = task["containerDefinitions"]
        .as_array()
        .expect("containerDefinitions");
    let container = definitions
        .iter()
        .find(|c| c["name"] == "rebuilder")
        .expect("a container named rebuilder");

    let mut vars: Vec<(String, String)> = container["environment"]
        .as_array()
        .expect("environment")
        .iter()
        .map(|e| (as_text(&e["name"]), as_text(&e["value"])))
        .collect();
    let mut secrets = Vec::new();
    for secret in container["secrets"].as_array().expect("secrets") {
        let name = as_text(&secret["name"]);
        assert!(
            as_text(&secret["valueFrom"]).starts_with("arn:aws:secretsmanager:"),
            "{source}: {name} comes from Secrets Manager"
        );
        vars.push((name.clone(), sample_secret(&name).to_string()));
        secrets.push(name);
    }
    for (key, _) in &vars {
        assert_eq!(
            is_secret(key),
            secrets.contains(key),
            "{source}: {key} must come from secrets exactly when it is one"
        );
    }
    assert_real_keys(source, &vars);

    let grace = grace_of(&vars);
    let stop_timeout = container["stopTimeout"].as_u64().expect("stopTimeout");
    assert!(
        stop_timeout > grace && stop_timeout <= 120,
        "{source}: stopTimeout {stop_timeout} must exceed the grace period ({grace} s) and stay within Fargate's 120 s"
    );
    assert_eq!(
        container["healthCheck"]["command"],
        json!(["CMD", "/usr/local/bin/rebuilder", "healthcheck"])
    );
    assert_eq!(container["readonlyRootFilesystem"], true);
    assert_eq!(container["logConfiguration"]["logDriver"], "awslogs");
    let listen = vars
        .iter()
        .find(|(k, _)| k == "REBUILDER_SERVICE__LISTEN")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let port = container["portMappings"][0]["containerPort"]
        .as_u64()
        .unwrap();
    assert!(
        listen.ends_with(&format!(":{port}")),
        "{source}: the mapped port {port} is where it listens ({listen})"
    );

    // The check has teeth: a misspelt key is refused, naming it.
    let mut misspelt = vars.clone();
    misspelt.push(("REBUILDER_SERVICE__SHUTDOWN_GRACE_SEC".into(), "90".into()));
    let refused =
        config_check("a misspelt copy", &misspelt).expect_err("a misspelt key is refused");
    assert!(refused.contains("shutdown_grace_sec"), "{refused}");
}

#[test]
fn the_compose_file_sets_only_real_keys_and_wires_the_stack_together() {
    let source = "compose.yaml";
    let compose = yaml_as_json(&repo_file(source));
    let services = compose["services"].as_object().expect("services");
    let service = &services["rebuilder"];
    let environment = &service["environment"];
    let mut vars: Vec<(String, String)> = match environment {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), as_text(v))).collect(),
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let item = as_text(item);
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        other => panic!("{source}: environment is {other}"),
    };

    // Secret files exist only in the container: stand-ins here.
    let dir = std::env::temp_dir().join(format!("compose-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mounted: Vec<String> = service["secrets"]
        .as_array()
        .map(|list| list.iter().map(as_text).collect())
        .unwrap_or_default();
    for (key, value) in vars.iter_mut() {
        if key.ends_with("_FILE") {
            let secret = value
                .strip_prefix("/run/secrets/")
                .unwrap_or_else(|| panic!("{source}: {key} names a file outside /run/secrets"));
            assert!(
                mounted.iter().any(|m| m == secret) && compose["secrets"][secret].is_object(),
                "{source}: {key} names the secret {secret}, which the service does not mount"
            );
            let stand_in = dir.join(secret);
            std::fs::write(&stand_in, "sample\n").unwrap();
            *value = stand_in.display().to_string();
        }
    }
    assert_real_keys(source, &vars);
    let _ = std::fs::remove_dir_all(&dir);

    let grace = grace_of(&vars);
    let stop = as_text(&service["stop_grace_period"]);
    let stop_secs: u64 = stop
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{source}: stop_grace_period {stop:?} in seconds"));
    assert!(
        stop_secs > grace,
        "{source}: stop_grace_period {stop} must exceed the grace period ({grace} s)"
    );
    assert_eq!(service["read_only"], true);
    assert_eq!(
        service["healthcheck"]["test"],
        json!(["CMD", "/usr/local/bin/rebuilder", "healthcheck"])
    );
    assert_eq!(service["build"]["dockerfile"], "Containerfile");
    // Every server it is told of is a service of the file, and waited for.
    for key in [
        "REBUILDER_OPENSEARCH__URL",
        "REBUILDER_RABBITMQ__URI",
        "REBUILDER_MONGODB__URI",
    ] {
        let value = &vars.iter().find(|(k, _)| k == key).expect(key).1;
        let host = value
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '?']).next())
            .map(|authority| authority.rsplit('@').next().unwrap_or(authority))
            .and_then(|host_port| host_port.split(':').next())
            .unwrap_or_default();
        assert!(
            services.contains_key(host),
            "{source}: {key} points at {host:?}, not a service of the file"
        );
        assert!(
            service["depends_on"][host]["condition"] == "service_healthy",
            "{source}: rebuilder waits for {host} to be healthy"
        );
    }
    let mongo_command = as_text(&services["mongodb"]["command"]);
    assert!(
        mongo_command.contains("--replSet"),
        "{source}: MongoDB runs as a replica set (the live applier reads change streams)"
    );
}
