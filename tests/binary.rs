//! The release shape of the binary: it carries its index templates, so it
//! works from any directory on a machine without the source tree, and its
//! configuration check prints no secret. Runs the built `rebuilder` binary
//! in an empty temporary directory with a scrubbed environment; the
//! generations listing needs OpenSearch (`scripts/stack start`).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::TestEnv;
use rebuilder::search::{Family, IndexTemplate};

/// An empty directory of its own, removed when dropped.
struct EmptyDir(PathBuf);

impl EmptyDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rebuilder-{name}-{}-{}",
            std::process::id(),
            rebuilder::rebuild::record::new_run_id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, copied into `dir` (as a release binary is copied to a
/// server) and run there with only the given `REBUILDER_*` variables.
fn run_copied(dir: &EmptyDir, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = dir.0.join("rebuilder");
    std::fs::copy(env!("CARGO_BIN_EXE_rebuilder"), &bin).expect("the binary copies");
    let mut command = Command::new(&bin);
    command.args(args).current_dir(&dir.0).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    // Another test thread forking while this one writes the copy can hold
    // its file open for a moment (inherited until that child's exec):
    // exec then answers "text file busy". Wait a little and try again.
    for _ in 0..50 {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.expect("the binary runs"),
        }
    }
    command.output().expect("the binary runs")
}

#[test]
fn a_binary_started_in_an_empty_directory_finds_its_templates() {
    let dir = EmptyDir::new("templates");
    let out = run_copied(&dir, &["config", "check"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "config check failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in Family::ALL {
        let built_in = IndexTemplate::builtin(family).unwrap();
        assert!(
            stdout.contains(&format!(
                "# template {family}: built into the binary, sha256 {}",
                &built_in.sha256[..12]
            )),
            "{stdout}"
        );
    }
    assert!(
        std::fs::read_dir(&dir.0).unwrap().count() == 1,
        "nothing but the binary in the directory"
    );
}

#[test]
fn config_check_names_the_invalid_key_and_prints_no_secret() {
    let dir = EmptyDir::new("config");
    let out = run_copied(
        &dir,
        &["config", "check"],
        &[
            (
                "REBUILDER_RABBITMQ__URI",
                "amqps://tcs:hunter2-amqp@mq.example.org:5671/reval",
            ),
            (
                "REBUILDER_MONGODB__URI",
                "mongodb://reval:hunter2-mongo@docdb.example.org:27017/?retryWrites=false",
            ),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("amqps://tcs:***@mq.example.org:5671/reval"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let out = run_copied(
        &dir,
        &["config", "check"],
        &[("REBUILDER_BULK__CONCURRENCY", "0")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bulk.concurrency"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_in_an_empty_directory_lists_generations_with_its_built_in_templates() {
    let env = TestEnv::new("binary_generations");
    let _ = env.search().await;
    let dir = EmptyDir::new("generations");
    let out = run_copied(
        &dir,
        &["--prefix", &env.settings.names.prefix, "generations"],
        &[("REBUILDER_OPENSEARCH__URL", &env.settings.opensearch.url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No generations"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
