//! The real webhookd: the binary cargo built for this benchmark (`target/release/webhookd` under
//! `cargo bench`), run with a config written for one run, its webhooks registered in its store
//! before it starts, and watched from outside through `/proc`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use tokio::process::{Child, Command};
use webhookd::broker::{Topology, Version};
use webhookd::config::Config;
use webhookd::retry::Schedule;
use webhookd::store::{NewWebhook, Store};

use crate::{bridge, procfs};

const BIN: &str = env!("CARGO_BIN_EXE_webhookd");

/// How long a stopping daemon may take: its drain time (set short in the config, since what is
/// in flight at the end of a run is not measured) plus a profiler's time to write its data.
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// Creating a webhook flushes the store, so creations run a few at a time to share flushes. Not
/// more: sled 0.34 hangs for good when about seven `flush_async` calls wait at once (they occupy
/// its I/O threads, and the log writes they wait for queue behind them).
const CREATE_CONCURRENCY: usize = 4;

/// The store's directory, inside the run's.
const STORE: &str = "store";

/// What a run may change in webhookd's config; everything else is webhookd's default.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub queue_kind: &'a str,
    /// `delivery.request_timeout`; `None` keeps the default (15 s).
    pub request_timeout: Option<&'a str>,
    pub log_level: &'a str,
}

/// One run's config, store and broker names, in a temporary directory.
pub struct Run {
    dir: tempfile::TempDir,
    config_path: PathBuf,
    pub topology: Topology,
    /// Every delay queue the daemon's retry schedule may declare.
    pub delay_queues: Vec<String>,
    /// The config's broker section, for the registry log's names and an in-process follower.
    pub broker: webhookd::config::BrokerConfig,
    /// The admin listener, for `/readyz`.
    pub admin: std::net::SocketAddr,
}

impl Run {
    /// Writes the config and loads it back the way webhookd will, so the topology the benchmark
    /// declares and publishes to is exactly the one the daemon expects.
    pub fn new(
        url: &str,
        version: Option<Version>,
        tag: &str,
        settings: &Settings<'_>,
    ) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("webhookd.toml");
        let admin = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let timeout = settings
            .request_timeout
            .map(|timeout| format!("request_timeout = \"{timeout}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"[broker]
url = "{url}"
exchange = "{tag}.events"
queue = "{tag}.work"
queue_kind = "{kind}"
retry_queue_prefix = "{tag}.retry"
dead_letter_queue = "{tag}.dead"
registry_stream = "{tag}.registry"

[store]
path = "{store}"

[delivery]
allow_networks = ["127.0.0.0/8"]
{timeout}
[admin]
listen = "{admin}"

[log]
level = "{level}"

[service]
drain_timeout = "1s"
"#,
            kind = settings.queue_kind,
            store = dir.path().join(STORE).display(),
            level = settings.log_level,
        );
        std::fs::write(&config_path, text)?;
        let config = Config::load(&config_path)?;
        let topology = Topology::from_config(&config.broker).on(version);
        let retry = &config.retry;
        let schedule = Schedule::new(
            retry.initial_interval,
            retry.multiplier,
            retry.jitter,
            retry.max_interval,
            retry.max_elapsed,
        )?;
        Ok(Run {
            delay_queues: schedule
                .buckets()
                .map(|bucket| topology.delay_queue(bucket))
                .collect(),
            topology,
            broker: config.broker,
            admin,
            dir,
            config_path,
        })
    }

    /// The daemon's store, which the config names.
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join(STORE)
    }

    /// Stores the webhooks before the daemon owns the store (sled allows one process at a time).
    pub async fn register(&self, webhooks: Vec<NewWebhook>) -> anyhow::Result<()> {
        let store = Store::open(&self.store_path())?;
        create_all(&store, webhooks).await?;
        store.flush().await?;
        Ok(())
    }

    /// Starts the daemon, under `WEBHOOKD_BENCH_WRAP` if set: a command prefix for profiling,
    /// e.g. `valgrind --tool=callgrind --callgrind-out-file=/tmp/callgrind.%p`. The wrapper must
    /// run the daemon in its own process, as valgrind does: the benchmark reads `/proc` and sends
    /// signals by that pid (heaptrack's launcher script, for one, would be stopped while the
    /// daemon it started runs on).
    pub fn start(&self) -> anyhow::Result<Daemon> {
        let wrap = std::env::var("WEBHOOKD_BENCH_WRAP").unwrap_or_default();
        let mut command = wrap.split_whitespace().chain([BIN]);
        let mut child = Command::new(command.next().unwrap_or(BIN));
        child
            .args(command)
            .arg("--config")
            .arg(&self.config_path)
            .arg("run")
            .env_remove("RUST_LOG");
        self.spawn("webhookd", child)
    }

    /// Starts the minimal bridge (see `bridge`) in webhookd's place: it consumes this run's
    /// queue from the broker at `amqp_url` and POSTs every event to each of `urls`.
    pub fn start_bridge(&self, amqp_url: &str, urls: &[String]) -> anyhow::Result<Daemon> {
        let mut child = Command::new(std::env::current_exe()?);
        child.args([bridge::BRIDGE, amqp_url, &self.topology.queue]);
        child.args(urls);
        self.spawn("the minimal bridge", child)
    }

    /// Spawns `command` with its output in the run's log, killed if the [`Daemon`] is dropped.
    fn spawn(&self, name: &'static str, mut command: Command) -> anyhow::Result<Daemon> {
        let log = self.dir.path().join("webhookd.log");
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child
            .id()
            .with_context(|| format!("{name} exited at once"))?;
        Ok(Daemon {
            name,
            child,
            pid,
            log,
        })
    }
}

/// Creates every webhook, [`CREATE_CONCURRENCY`] at a time.
async fn create_all(store: &Store, webhooks: Vec<NewWebhook>) -> anyhow::Result<()> {
    let mut created = futures_util::stream::iter(webhooks)
        .map(|webhook| store.create(webhook))
        .buffer_unordered(CREATE_CONCURRENCY);
    while let Some(result) = created.next().await {
        result?;
    }
    Ok(())
}

/// A running webhookd (or the minimal bridge in its place); killed when dropped, so a failed run
/// never leaves one behind.
pub struct Daemon {
    name: &'static str,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    /// An error with the end of its log if the daemon has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                tail(&self.log)
            );
        }
        Ok(())
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        procfs::cpu_seconds(self.pid)
    }

    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        procfs::status_kib(self.pid, "VmRSS")
    }

    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        procfs::status_kib(self.pid, "VmHWM")
    }

    /// What runs: "webhookd" or "the minimal bridge".
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The end of the daemon's log, for an error message.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// SIGTERM, as systemd stops it (a profiler wrapping the daemon writes its data on the way
    /// out); SIGKILL if it has not exited after [`STOP_PATIENCE`]. Nothing is measured after this.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        if signalled.success()
            && tokio::time::timeout(STOP_PATIENCE, self.child.wait())
                .await
                .is_ok()
        {
            return Ok(());
        }
        eprintln!(
            "bench: {} ignored SIGTERM for {STOP_PATIENCE:?}; killing it",
            self.name
        );
        self.child.kill().await?;
        Ok(())
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
