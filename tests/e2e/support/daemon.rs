//! The real `webhookd` binary, run with a config written for one test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{broker, eventually, unique};

pub const BIN: &str = env!("CARGO_BIN_EXE_webhookd");

/// The broker names one test owns.
#[derive(Debug, Clone)]
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub retry_prefix: String,
    pub dead_letters: String,
}

/// What a test may change in the config; the rest is the harness's short-schedule default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub queue_kind: &'static str,
    pub initial_interval: &'static str,
    pub multiplier: f64,
    pub max_interval: &'static str,
    pub max_elapsed: &'static str,
    pub request_timeout: &'static str,
    pub drain_timeout: &'static str,
    /// Extra TOML lines appended to the file (e.g. a whole `[log]` table).
    pub extra: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            queue_kind: "classic",
            initial_interval: "200ms",
            multiplier: 2.0,
            max_interval: "1s",
            max_elapsed: "60s",
            request_timeout: "2s",
            drain_timeout: "5s",
            extra: String::new(),
        }
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    pub token: String,
    pub names: Names,
    child: Option<Child>,
    runs: u32,
}

impl Daemon {
    /// Writes the config and starts the daemon, returning once `/readyz` answers 200.
    pub async fn start(settings: Settings) -> Daemon {
        let mut daemon = Daemon::configure(settings);
        daemon.spawn();
        daemon.wait_ready().await;
        daemon
    }

    /// Writes the config only (for tests of the CLI without a daemon).
    pub fn configure(settings: Settings) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = unique("t");
        let names = Names {
            exchange: format!("{id}.events-x"),
            queue: format!("{id}.work"),
            retry_prefix: format!("{id}.retry"),
            dead_letters: format!("{id}.dead"),
        };
        let admin = free_port();
        let token = format!("token-{}", unique("admin"));
        let config_path = dir.path().join("webhookd.toml");
        let Settings {
            queue_kind,
            initial_interval,
            multiplier,
            max_interval,
            max_elapsed,
            request_timeout,
            drain_timeout,
            extra,
        } = settings;
        let text = format!(
            r#"
[broker]
url = "{url}"
exchange = "{exchange}"
queue = "{queue}"
queue_kind = "{queue_kind}"
retry_queue_prefix = "{retry_prefix}"
dead_letter_queue = "{dead}"
prefetch = 64

[store]
path = "{store}"

[delivery]
allow_networks = ["127.0.0.0/8"]
connect_timeout = "1s"
request_timeout = "{request_timeout}"

[retry]
initial_interval = "{initial_interval}"
multiplier = {multiplier:?}
jitter = 0.1
max_interval = "{max_interval}"
max_elapsed = "{max_elapsed}"

[admin]
listen = "{admin}"
token = "{token}"

[service]
drain_timeout = "{drain_timeout}"
{extra}
"#,
            url = broker::url(),
            exchange = names.exchange,
            queue = names.queue,
            retry_prefix = names.retry_prefix,
            dead = names.dead_letters,
            store = dir.path().join("store").display(),
        );
        std::fs::write(&config_path, text).expect("write config");
        Daemon {
            dir,
            config_path,
            admin,
            token,
            names,
            child: None,
            runs: 0,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("webhookd.log")
    }

    /// Everything the daemon has written to stderr, across restarts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn webhookd");
        self.child = Some(child);
        self.runs += 1;
    }

    pub async fn wait_ready(&self) {
        let runs = self.runs;
        eventually(
            Duration::from_secs(30),
            "webhookd /readyz to answer 200",
            || async { (self.get("/readyz").await.0 == StatusCode::OK).then_some(()) },
        )
        .await;
        assert_eq!(runs, self.runs);
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to `timeout`) for the exit status.
    pub async fn sigterm(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        eventually(timeout, "webhookd to exit after SIGTERM", || {
            let exited = child.try_wait().expect("wait");
            async move { exited }
        })
        .await
    }

    /// Runs `webhookd --config <this config> ARGS…` to completion.
    pub async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .await
            .expect("run webhookd")
    }

    /// Like [`cli`](Self::cli), asserting success and returning stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args).await;
        assert!(
            output.status.success(),
            "webhookd {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Registers a webhook through the CLI, returning its JSON.
    pub async fn add_webhook(&self, account: u64, url: &str, extra: &[&str]) -> Value {
        let account = account.to_string();
        let mut args = vec![
            "webhooks",
            "add",
            "--account",
            &account,
            "--url",
            url,
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.cli_ok(&args).await).expect("webhook JSON")
    }

    /// `dlq list --json`, parsed.
    pub async fn dead_letters(&self) -> Vec<Value> {
        serde_json::from_str(&self.cli_ok(&["dlq", "list", "--json"]).await).expect("dlq list JSON")
    }

    /// GET on the admin API without a token.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        self.request(Method::GET, path, None).await
    }

    /// An admin API request, with `token` as bearer if given.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        match tokio::time::timeout(Duration::from_secs(5), client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unreachable".to_owned()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}
