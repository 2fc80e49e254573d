//! Build script of `rebuilder`: records the commit the binary is built from
//! as `BUILD_GIT_COMMIT`, for `rebuilder --version` (and the image's
//! `org.opencontainers.image.revision` label says the same).
//!
//! The commit is, in order: the `GIT_COMMIT` environment variable (an image
//! build from a context without `.git` passes it as a build argument; CI
//! systems often set it), `git rev-parse HEAD` in the source tree, or
//! `unknown`. The script runs again when `GIT_COMMIT` changes or `HEAD`
//! moves (a commit, a checkout), so the recorded commit follows the tree.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let from_env = std::env::var("GIT_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty() && c != "unknown");
    let commit = match from_env {
        Some(commit) => commit,
        None => {
            watch_head(&root);
            git(&root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}

/// Asks cargo to run this script again when `HEAD` or the branch it names
/// moves (also in a worktree, where `.git` is a file).
fn watch_head(root: &Path) {
    let Some(git_dir) = git(root, &["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let git_dir = PathBuf::from(git_dir);
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        let common = git(root, &["rev-parse", "--git-common-dir"])
            .map(|dir| root.join(dir))
            .unwrap_or(git_dir);
        let reference = common.join(&branch);
        // A branch packed in packed-refs has no file of its own until it
        // moves (its folder is watched then); a path that does not exist
        // would make cargo rerun this script at every build, so only
        // existing ones are named.
        let folder = reference.parent().map(Path::to_path_buf);
        let watched = if reference.exists() {
            Some(reference)
        } else {
            folder
        };
        for path in watched.into_iter().chain([common.join("packed-refs")]) {
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// The trimmed output of a successful `git ARGS` in `root`.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_string())
}
