//! Helpers of the service tests: `rebuilder serve` as a child process on
//! port 0 with a test's settings (its prefix, queues and database), its
//! captured logs, and a small JSON client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::TestEnv;
use crate::run_helpers::child_env;

/// The token every test service requires.
pub const TOKEN: &str = "test-token-5f1b7c9e2d";

/// A running `rebuilder serve`.
pub struct Service {
    child: Child,
    pub base: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Service {
    /// Starts a service with the test's settings, the schedule off, and
    /// `extra` variables (which win).
    pub fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Service {
        let log = std::env::temp_dir().join(format!("{}-serve-{}.log", env.id, rand_tail()));
        let log_file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rebuilder"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(child_env(env))
            .env("REBUILDER_SERVICE__TOKEN", TOKEN)
            .env("REBUILDER_SCHEDULE__ENABLED", "false")
            .env(
                "REBUILDER_MONGODB__DATABASE",
                &env.settings.mongodb.database,
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("rebuilder serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep reading so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "rebuilder serve did not say where it listens; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            }
        };
        let base = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .to_string();
        Service {
            child,
            base,
            log,
            http: reqwest::Client::new(),
        }
    }

    /// A request with an optional bearer token and JSON body: status and JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None, None).await
    }

    /// The raw text of a GET (for `/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    pub async fn trigger(&self, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/api/sync", token, None)
            .await
    }

    /// Polls `/api/runs/{id}` until the run has ended; returns the record.
    pub async fn wait_for_run(&self, run_id: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (status, run) = self.get(&format!("/api/runs/{run_id}")).await;
            assert_eq!(status, 200, "{run}");
            if run["outcome"] != "running" {
                return run;
            }
            assert!(
                started.elapsed() < within,
                "run {run_id} did not end within {within:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Everything the service logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies at once, with nothing cleaned up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the service did not stop after SIGTERM; its log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn rand_tail() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26)))
        .collect()
}
