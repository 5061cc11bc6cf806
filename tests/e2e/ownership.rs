//! `sudo webhookd webhooks …` with the daemon stopped, on a state directory another user owns
//! (as systemd's `StateDirectory=` makes it for the `webhookd` user): the store it writes belongs
//! to that user, and the daemon started as that user opens it. Here the user is `nobody`, and the
//! test runs as root, as CI does.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::StatusCode;

use crate::support::daemon::{Daemon, Settings, BIN};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// `nobody`'s uid and gid, from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|line| line.starts_with("nobody:"))
        .expect("a nobody user");
    let fields: Vec<&str> = line.split(':').collect();
    (
        fields[2].parse().expect("uid"),
        fields[3].parse().expect("gid"),
    )
}

/// Every file and directory under `root`, with its owner.
fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).expect("metadata");
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        }
        found.push((path.display().to_string(), metadata.uid(), metadata.gid()));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_run_as_root_writes_the_store_as_its_owner_who_can_then_run_the_daemon() {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(
        me, 0,
        "this test needs root (CI and scripts/test.sh run as root)"
    );
    let (uid, gid) = nobody();

    // The state directory (the daemon's temp dir, holding the store path) belongs to nobody.
    let daemon = Daemon::configure(Settings::default());
    let state = daemon.dir.path();
    std::os::unix::fs::chown(state, Some(uid), Some(gid)).expect("chown");
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&daemon.config_path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod config");

    // As root, with no daemon: the CLI opens the store itself.
    let added = daemon
        .add_webhook(5, "http://127.0.0.1:9/hook", &["--name", "from-root"])
        .await;
    let store = state.join("store");
    let files = owners(&store);
    assert!(files.len() > 1, "no store written: {files:?}");
    for (path, owner, group) in &files {
        assert_eq!((*owner, *group), (uid, gid), "{path} is not nobody's");
    }

    // nobody runs the daemon on that store, and it serves the webhook root added.
    let log = std::fs::File::create(state.join("nobody.log")).expect("log file");
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            BIN,
            "--config",
        ])
        .arg(&daemon.config_path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("setpriv (util-linux) is needed");
    let daemon = &daemon;
    let ready = eventually(WAIT, "the daemon, run as nobody, to be ready", || {
        let exited = child.try_wait().expect("wait").is_some();
        async move {
            if exited {
                return Some(false);
            }
            (daemon.get("/readyz").await.0 == StatusCode::OK).then_some(true)
        }
    })
    .await;
    let served = daemon
        .request(
            http::Method::GET,
            "/v1/webhooks?account_id=5",
            Some(&daemon.token),
        )
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(state.join("nobody.log")).unwrap_or_default();
    assert!(ready, "the daemon run as nobody exited:\n{log}");
    assert_eq!(served.0, StatusCode::OK, "{served:?}");
    let id = added["id"].as_str().expect("webhook id");
    assert!(served.1.contains(id), "{served:?}");
}
