//! Records the git commit the binary is built from, for `webhookd --version`: an operator
//! holding an installed binary can tell which source it came from. A build outside a git
//! checkout (an unpacked tarball) says so rather than guessing.
//!
//! The script reruns only when the checked-out commit changes, so an ordinary edit-and-build
//! cycle never pays for it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let built_from = match &commit {
        Some(commit) => format!("commit {commit}"),
        None => "commit unknown: not built from a git checkout".to_owned(),
    };
    println!("cargo:rustc-env=WEBHOOKD_BUILD_COMMIT={built_from}");
    println!("cargo:rerun-if-changed=build.rs");
    if commit.is_some() {
        rerun_when_head_moves();
    }
}

/// HEAD moves on a checkout or a detached commit; the current branch's ref moves on a commit,
/// in its loose file or, once packed, in packed-refs. Watching that one ref, rather than all of
/// refs/heads, keeps commits on other branches of a shared repository from rebuilding this one.
fn rerun_when_head_moves() {
    let git_path = |name: &str| git(&["rev-parse", "--git-path", name]).map(PathBuf::from);
    let mut watched: Vec<PathBuf> = ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(git_path)
        .filter(|path| path.exists())
        .collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git_path(&r)) {
        if branch.exists() {
            watched.push(branch);
        } else if let Some(folder) = branch.parent().filter(|folder| folder.exists()) {
            // A branch only in packed-refs gets its loose file on the next commit.
            watched.push(folder.to_owned());
        }
    }
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// The trimmed output of a git command that succeeded, else `None` (no git, or no checkout).
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
