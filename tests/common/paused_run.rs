//! `rebuilder run` as a child process paused at a failpoint
//! (`FAILPOINTS=<point>=until:<file>`) until the test lets it go on: the
//! fault tests change the world (a block, a stolen lease, a server
//! restarted) at an exact moment of a real run.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::TestEnv;
use crate::run_helpers::child_env;

/// `rebuilder run` as a child, paused at a failpoint until released.
pub struct PausedRun {
    child: Child,
    log: PathBuf,
    release: PathBuf,
}

impl PausedRun {
    pub fn start(env: &TestEnv, point: &str) -> Self {
        Self::start_with(env, point, &[])
    }

    /// With more environment for the child (settings of its own).
    pub fn start_with(env: &TestEnv, point: &str, extra_env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir();
        let log = dir.join(format!("{}-{point}.log", env.id));
        let release = dir.join(format!("{}-{point}.go", env.id));
        let _ = std::fs::remove_file(&release);
        let child = Command::new(env!("CARGO_BIN_EXE_rebuilder"))
            .arg("run")
            .envs(child_env(env))
            .env("FAILPOINTS", format!("{point}=until:{}", release.display()))
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("rebuilder run starts");
        Self {
            child,
            log,
            release,
        }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the run's log says `what`.
    pub async fn wait_for(&mut self, what: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = self.text();
            if text.contains(what) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the run ended ({status}) before logging {what:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the run did not log {what:?} in {secs} s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn release(&self) {
        std::fs::write(&self.release, b"go").unwrap();
    }

    /// Waits for the run to end; its exit status and log.
    pub async fn finish(mut self, secs: u64) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the run did not end in {secs} s:\n{}", self.text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = self.text();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.release);
        (status, text)
    }
}

impl Drop for PausedRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
