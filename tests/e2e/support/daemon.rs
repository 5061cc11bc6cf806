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
    pub registry: String,
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
    /// Another broker than the shared test node (a test's private node).
    pub broker_url: Option<String>,
    /// A list of broker nodes (`broker.urls`) instead of `broker_url`.
    pub broker_urls: Option<Vec<String>>,
    /// `delivery.allow_networks` as TOML; `[]` leaves the SSRF guard closed to loopback.
    pub allow_networks: &'static str,
    /// Extra lines in `[broker]`, `[delivery]` and `[admin]`, which `extra` cannot reopen.
    pub broker_extra: String,
    pub delivery_extra: String,
    pub admin_extra: String,
    /// Whether the config sets `admin.token` (to `Daemon::token`).
    pub admin_token: bool,
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
            broker_url: None,
            broker_urls: None,
            allow_networks: r#"["127.0.0.0/8"]"#,
            broker_extra: String::new(),
            delivery_extra: String::new(),
            admin_extra: String::new(),
            admin_token: true,
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
        let id = unique("t");
        Daemon::configure_on(
            settings,
            Names {
                exchange: format!("{id}.events-x"),
                queue: format!("{id}.work"),
                retry_prefix: format!("{id}.retry"),
                dead_letters: format!("{id}.dead"),
                registry: format!("{id}.registry"),
            },
        )
    }

    /// A second instance beside this one: the same queues and registry log, its own store and
    /// admin listener, as on another host. Configured, not started.
    pub fn sibling(&self, settings: Settings) -> Daemon {
        Daemon::configure_on(settings, self.names.clone())
    }

    fn configure_on(settings: Settings, names: Names) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
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
            broker_url,
            broker_urls,
            allow_networks,
            broker_extra,
            delivery_extra,
            admin_extra,
            admin_token,
        } = settings;
        let token_line = if admin_token {
            format!("token = \"{token}\"")
        } else {
            String::new()
        };
        let text = format!(
            r#"
[broker]
{nodes}
exchange = "{exchange}"
queue = "{queue}"
queue_kind = "{queue_kind}"
retry_queue_prefix = "{retry_prefix}"
dead_letter_queue = "{dead}"
registry_stream = "{registry}"
prefetch = 64
{broker_extra}

[store]
path = "{store}"

[delivery]
allow_networks = {allow_networks}
connect_timeout = "1s"
request_timeout = "{request_timeout}"
{delivery_extra}

[retry]
initial_interval = "{initial_interval}"
multiplier = {multiplier:?}
jitter = 0.1
max_interval = "{max_interval}"
max_elapsed = "{max_elapsed}"

[admin]
listen = "{admin}"
{token_line}
{admin_extra}

[service]
drain_timeout = "{drain_timeout}"
{extra}
"#,
            nodes = match broker_urls {
                Some(urls) => format!("urls = {urls:?}"),
                None => format!("url = {:?}", broker_url.unwrap_or_else(broker::url)),
            },
            exchange = names.exchange,
            queue = names.queue,
            retry_prefix = names.retry_prefix,
            dead = names.dead_letters,
            registry = names.registry,
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
        self.spawn_with_env(&[]);
    }

    /// Starts the daemon with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn spawn_with_env(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
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
            .envs(env.iter().copied())
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

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (a `kill -s` name such as `HUP`) to the running daemon.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("daemon running");
        let status = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {signal}");
    }

    /// SIGTERM, then waits (up to `timeout`) for the exit status.
    pub async fn sigterm(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(timeout).await
    }

    /// Waits (up to `timeout`) for the daemon to exit on its own, returning its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        eventually(timeout, "webhookd to exit", || {
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

    /// The value of one series on `/metrics`, e.g. `webhookd_events_total{event="x"}`; 0 when
    /// the series is absent (a counter nothing has touched yet).
    /// A series name without labels sums all of its labelled series.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, StatusCode::OK, "/metrics: {text}");
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(name, _)| {
                *name == series
                    || (!series.contains('{') && name.starts_with(&format!("{series}{{")))
            })
            .map(|(_, value)| value.parse::<f64>().expect("metric value"))
            .sum()
    }

    /// GET on the admin API with the daemon's token, and the body as JSON (`Null` if it is not).
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let (status, body) = self.request(Method::GET, path, Some(&self.token)).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
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
        self.request_with_body(method, path, token, Bytes::new())
            .await
    }

    /// An admin API request with a body.
    pub async fn request_with_body(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body)).expect("request");
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
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- webhookd log (last 60 lines) ---\n{}", tail.join("\n"));
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}
