//! What the binary says about a bad configuration, on stderr (the journal, under systemd): never a
//! secret, always the key or the line to fix, and exit 64. And the admin token's rules: not
//! blank, at least 16 characters, and a warning when its file is readable by others.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::daemon::{Daemon, Settings, BIN};

/// A config file of `text` in a directory of its own.
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("webhookd.toml");
        std::fs::write(&path, text).expect("write config");
        ConfigFile { dir, path }
    }

    /// `webhookd --config FILE ARGS…` with `env` added, to completion.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.path)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .output()
            .expect("run webhookd")
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Exit 64, `named` in stderr, `secret` nowhere in the output.
#[track_caller]
fn refused_naming(output: &Output, named: &str, secret: &str) {
    let said = stderr(output);
    assert_eq!(output.status.code(), Some(64), "{said}");
    assert!(said.contains(named), "{named:?} not in: {said}");
    assert!(!said.contains(secret), "the secret is shown: {said}");
    assert!(
        !stdout(output).contains(secret),
        "the secret is shown on stdout"
    );
}

#[test]
fn config_errors_name_the_key_or_line_and_never_show_a_secret() {
    let password = "Pa55-word-in-the-config";

    // A syntax error on the URL's line, as check-config and the daemon report it.
    let broken = ConfigFile::new(&format!(
        "[broker]\nprefetch = 8\nurl = \"amqp://webhookd:{password}@rabbit:5672/%2f\n"
    ));
    for command in ["check-config", "run"] {
        let output = broken.run(&[command], &[]);
        refused_naming(&output, "TOML parse error at line 3, column", password);
    }

    // A password with `/`, `?` or `#` not percent-encoded.
    for raw in [
        format!("a/{password}"),
        format!("{password}?x"),
        format!("#{password}"),
    ] {
        let file = ConfigFile::new(&format!("[broker]\nurl = \"amqp://u:{raw}@rabbit/%2f\"\n"));
        refused_naming(&file.run(&["check-config"], &[]), "`broker.url`", password);
    }
    // Percent-encoded, it is accepted and shown masked.
    let encoded = format!("a%2F{password}%3Fx%23");
    let file = ConfigFile::new(&format!(
        "[broker]\nurl = \"amqp://u:{encoded}@rabbit/%2f\"\n"
    ));
    let output = file.run(&["check-config"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("url = \"amqp://u:****@rabbit/%2f\""),
        "{}",
        stdout(&output)
    );
    assert!(!stdout(&output).contains(password), "{}", stdout(&output));

    // Secrets that read as numbers: from the environment, and in the file.
    let number = "7391046528130957";
    let empty = ConfigFile::new("");
    let output = empty.run(&["check-config"], &[("WEBHOOKD_BROKER__URL", number)]);
    refused_naming(
        &output,
        "`broker.url` (set by WEBHOOKD_BROKER__URL)",
        number,
    );
    let output = empty.run(&["check-config"], &[("WEBHOOKD_ADMIN__TOKEN", number)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("token = \"****\""));
    assert!(!stdout(&output).contains(number) && !stderr(&output).contains(number));
    let file = ConfigFile::new(&format!("[admin]\ntoken = {number}\n"));
    refused_naming(&file.run(&["check-config"], &[]), "`admin.token`", number);
}

#[test]
fn a_blank_or_short_admin_token_is_refused_naming_its_key() {
    let blank = ConfigFile::new("[admin]\ntoken = \" \\t  \"\n");
    refused_naming(
        &blank.run(&["check-config"], &[]),
        "`admin.token` must not be empty or only whitespace",
        "\t",
    );
    let empty = ConfigFile::new("");
    refused_naming(
        &empty.run(&["check-config"], &[("WEBHOOKD_ADMIN__TOKEN", "    ")]),
        "`admin.token` (set by WEBHOOKD_ADMIN__TOKEN) must not be empty",
        "\t",
    );
    let short = "  fifteen-chars-x \n";
    refused_naming(
        &empty.run(&["check-config"], &[("WEBHOOKD_ADMIN__TOKEN", short)]),
        "`admin.token` (set by WEBHOOKD_ADMIN__TOKEN) must be at least 16 characters",
        short.trim(),
    );
    let file = write_token_file(&empty.dir.path().join("admin-token"), short, 0o600);
    let output =
        ConfigFile::new(&format!("[admin]\ntoken_file = {file:?}\n")).run(&["check-config"], &[]);
    refused_naming(
        &output,
        "`admin.token_file` must be at least 16 characters",
        short.trim(),
    );
    // Sixteen, once trimmed, is enough.
    let output = empty.run(
        &["check-config"],
        &[("WEBHOOKD_ADMIN__TOKEN", " sixteen-chars-ok \n")],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

fn write_token_file(path: &Path, token: &str, mode: u32) -> String {
    std::fs::write(path, token).expect("write token file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_others_can_read_is_logged_as_a_warning() {
    let warning = "can be read by its group or by others";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("admin-token");

    let file = write_token_file(&path, "a-private-token-of-32-characters", 0o600);
    let private = Daemon::start(Settings {
        admin_token: false,
        admin_extra: format!("token_file = {file:?}"),
        ..Settings::default()
    })
    .await;
    assert!(!private.logs().contains(warning), "{}", private.logs());
    drop(private);

    let file = write_token_file(&path, "a-readable-token-of-32-character", 0o644);
    let readable = Daemon::start(Settings {
        admin_token: false,
        admin_extra: format!("token_file = {file:?}"),
        ..Settings::default()
    })
    .await;
    let logs = readable.logs();
    let line = logs
        .lines()
        .find(|line| line.contains(warning))
        .unwrap_or_else(|| panic!("no warning in:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("`admin.token_file`") && line.contains(&file),
        "{line}"
    );
    assert!(line.contains("mode 0644"), "{line}");
    assert!(!logs.contains("a-readable-token-of-32-character"));
    // check-config says so too.
    let output = readable.cli(&["check-config"]).await;
    assert!(output.status.success());
    assert!(stderr(&output).contains(warning), "{}", stderr(&output));
}
