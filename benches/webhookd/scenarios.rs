//! One run of each scenario. Every run gets its own receiver, config, store and broker names, so
//! no run sees another's messages, connections or hanging requests; its queues are deleted after
//! it, so the broker carries one run's messages at a time.

use std::time::Duration;

use anyhow::{bail, ensure};
use lapin::uri::AMQPUri;
use lapin::Connection;
use webhookd::broker::Version;
use webhookd::store::NewWebhook;

use crate::amqp::{self, AckStrategy};
use crate::console;
use crate::daemon::{Daemon, Run, Settings};
use crate::events::{now_ns, Bodies};
use crate::http;
use crate::procfs::{self, CpuShares, MachineCpu};
use crate::receiver::{Receiver, Tally, HANG_PATH};
use crate::replication;
use crate::report::Raw;
use crate::stages::{self, Breakdown};
use ::http as http_types;

/// How often a waiting run looks at the receiver's counters (the figures come from the
/// receiver's own timestamps, not from this polling).
const POLL: Duration = Duration::from_millis(5);

/// How often the backlog scenario samples webhookd's RSS.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How often deleting a run's queues is tried (see [`Bench::delete`]).
const DELETE_TRIES: u32 = 3;

/// The bare HTTP client's concurrency for P: 64 requests at a time.
const HTTP_IN_FLIGHT: usize = 64;

/// Webhooks have secrets, so every delivery is signed, as in production.
const SECRET: &str = "whsec_benchmark0123456789abcdef";

/// The bare consumer's ack strategy for D: one `multiple=true` ack per 100 deliveries within a
/// window of 1,000, so D measures what the queue can move rather than the cost of single acks.
pub const DRAIN: AckStrategy = AckStrategy {
    prefetch: 1000,
    ack_every: 100,
};

/// What consumes the queue and delivers: webhookd, or the minimal bridge (see `bridge`) that
/// it is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Webhookd,
    Bridge,
}

impl By {
    pub fn name(self) -> &'static str {
        match self {
            By::Webhookd => "webhookd",
            By::Bridge => "minimal bridge",
        }
    }

    /// What a figure's label says after "CPU per 1,000 deliveries, " and the like: nothing for
    /// webhookd, whose figures the targets are about, "minimal bridge, " for the bridge's.
    pub fn of(self) -> &'static str {
        match self {
            By::Webhookd => "",
            By::Bridge => "minimal bridge, ",
        }
    }

    /// What a target's note adds: nothing for webhookd; for the bridge, that the target is
    /// webhookd's, shown beside the bridge's figure for reference (how near the bare libraries
    /// come to it on this machine).
    pub fn whose_target(self) -> &'static str {
        match self {
            By::Webhookd => "",
            By::Bridge => "webhookd's target, for reference",
        }
    }

    /// The same, in a JSON key.
    pub fn key(self) -> &'static str {
        match self {
            By::Webhookd => "",
            By::Bridge => "bridge_",
        }
    }
}

/// The URL paths the minimal bridge posts every event to: this, followed by `/0`, `/1`, … for
/// each of the webhooks per account the run asks for.
const BRIDGE_PATH: &str = "/wh/bridge";

/// What one delivery run looks like.
pub struct Delivery<'a> {
    pub by: By,
    pub queue_kind: &'a str,
    pub bodies: &'a Bodies,
    pub events: u64,
    pub webhooks_per_account: u64,
    /// The last webhook of each account points at the receiver's hanging path.
    pub one_hangs: bool,
    /// Stop measuring this long after the first receipt, even if not everything arrived.
    pub window: Option<Duration>,
    pub request_timeout: Option<&'a str>,
    pub sample_rss: bool,
    /// Load the console's Webhooks page throughout the run (see `console`).
    pub console: bool,
}

/// What P with its client in a process of its own measured.
pub struct Apart {
    pub rate: f64,
    pub client_cpu_seconds_per_1000: f64,
    pub receiver_cpu_seconds_per_1000: f64,
}

/// What a delivery run measured.
pub struct Delivered {
    /// Answered deliveries per second, from the first receipt to the last (or to the end of the
    /// window).
    pub rate: f64,
    pub cpu_seconds_per_1000: f64,
    /// The benchmark process's CPU over the run, per 1,000 deliveries: the receiver's, and the
    /// little the waiting loop takes. What P's figure includes besides the bare client.
    pub receiver_cpu_seconds_per_1000: f64,
    pub peak_rss_mib: f64,
    /// (seconds since webhookd started, RSS MiB), every [`RSS_SAMPLE_EVERY`] when sampled.
    pub rss_mib: Vec<(f64, f64)>,
    /// Requests the hanging path received.
    pub hung: u64,
    /// The machine's CPU from webhookd's (or the bridge's) start to the end of the run: idle
    /// time left means the rate was not bound by CPU alone.
    pub machine: CpuShares,
    /// The broker node's CPU over the same stretch, per 1,000 deliveries; `None` when the
    /// benchmark cannot see the broker's process.
    pub broker_cpu_seconds_per_1000: Option<f64>,
    /// Each load of the console's Webhooks page during the run, in nanoseconds, if it was
    /// loaded.
    pub console_page_ns: Vec<u64>,
}

/// What scenario 9's daemon run measured.
pub struct Loaded {
    /// Storing the webhooks, before webhookd starts.
    pub build_seconds: f64,
    /// Publishing them to the registry log, as a store that never followed one is.
    pub publish_seconds: f64,
    /// From starting webhookd to the first receipt: opening the store (loading its index),
    /// connecting to the broker, the first delivery.
    pub first_delivery_seconds: f64,
    /// Once it delivered them all, and the most it held on the way there.
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// A second start on an empty store: until ready, having rebuilt the registry from the log,
    /// and the most it held on the way.
    pub rebuild_seconds: f64,
    pub rebuild_peak_rss_mib: f64,
}

/// Publish-to-receipt latencies of one steady run, in nanoseconds.
pub struct Latencies {
    pub all: Vec<u64>,
    /// The worst latency of the events published in each second of the run: shows whether the
    /// tail is a start-up effect, periodic (a timer in webhookd) or scattered (CPU contention).
    pub worst_per_second: Vec<u64>,
    /// webhookd's own account of where the time went (none for the bridge).
    pub stages: Option<Breakdown>,
    /// Connections the receiver accepted during the run.
    pub connections: u64,
}

impl Latencies {
    fn new(stamped: &[(u64, u64)], stages: Option<Breakdown>, connections: u64) -> Latencies {
        let start = stamped
            .iter()
            .map(|(sent, _)| *sent)
            .min()
            .unwrap_or_default();
        let mut worst_per_second = Vec::new();
        for (sent, latency) in stamped {
            let second = ((sent - start) / 1_000_000_000) as usize;
            if worst_per_second.len() <= second {
                worst_per_second.resize(second + 1, 0);
            }
            worst_per_second[second] = worst_per_second[second].max(*latency);
        }
        Latencies {
            all: stamped.iter().map(|(_, latency)| *latency).collect(),
            worst_per_second,
            stages,
            connections,
        }
    }
}

/// The shared context of every run.
pub struct Bench {
    pub url: String,
    pub amqp: Connection,
    /// The broker's version, on which the arguments of the queues webhookd declares depend.
    version: Option<Version>,
    pub log_level: String,
    /// The broker node's process, when it runs on this machine where the benchmark may see it.
    broker_pid: Option<u32>,
    runs_started: u32,
}

impl Bench {
    pub async fn connect(url: String, log_level: String) -> anyhow::Result<Bench> {
        let port = url
            .parse::<AMQPUri>()
            .map_err(anyhow::Error::msg)?
            .authority
            .port;
        let broker_pid = procfs::listener_pid(port)
            .inspect_err(|error| eprintln!("bench: the broker's CPU is not counted: {error:#}"))
            .ok();
        Ok(Bench {
            amqp: amqp::connect(&url).await?,
            version: {
                let broker = webhookd::config::BrokerConfig {
                    url: url.clone().into(),
                    ..webhookd::config::BrokerConfig::default()
                };
                let node = webhookd::broker::Node::of(&broker, 0)?;
                webhookd::broker::announced_version(&broker, &node).await?
            },
            url,
            log_level,
            broker_pid,
            runs_started: 0,
        })
    }

    /// A config, store and broker names no other run uses.
    fn run(&mut self, what: &str, queue_kind: &str, timeout: Option<&str>) -> anyhow::Result<Run> {
        self.runs_started += 1;
        let tag = format!("bench-{}-{}-{what}", std::process::id(), self.runs_started);
        let settings = Settings {
            queue_kind,
            request_timeout: timeout,
            log_level: &self.log_level,
        };
        Run::new(&self.url, self.version, &tag, &settings)
    }

    /// D: the bare consumer drains `events` pre-published events from a fresh queue.
    pub async fn raw_drain(
        &mut self,
        queue_kind: &str,
        bodies: &Bodies,
        events: u64,
    ) -> anyhow::Result<Raw> {
        let run = self.run("drain", queue_kind, None)?;
        amqp::declare(&self.amqp, &run.topology).await?;
        amqp::publish_backlog(&self.amqp, &run.topology, bodies, events).await?;
        let cpu = OwnCpu::start()?;
        let rate = amqp::drain(&self.amqp, &run.topology.queue, events, DRAIN).await;
        let cpu_seconds_per_1000 = cpu.per_1000(events)?;
        self.delete(&run).await?;
        Ok(Raw {
            rate: rate?,
            cpu_seconds_per_1000,
        })
    }

    /// P: the bare client POSTs `events` bodies to a fresh receiver.
    pub async fn raw_http(&mut self, bodies: &Bodies, events: u64) -> anyhow::Result<Raw> {
        let receiver = Receiver::start().await?;
        let cpu = OwnCpu::start()?;
        let rate = http::post_rate(&receiver.url("/wh/0"), bodies, events, HTTP_IN_FLIGHT).await?;
        Ok(Raw {
            rate,
            cpu_seconds_per_1000: cpu.per_1000(events)?,
        })
    }

    /// P again, with the bare client in a process of its own (this executable, started with
    /// [`http::APART`]), as webhookd is: not a limit the targets use, but what the same client
    /// moves when its requests cross a process boundary, and what each side spends on them.
    pub async fn raw_http_apart(&mut self, bodies: &Bodies, events: u64) -> anyhow::Result<Apart> {
        let receiver = Receiver::start().await?;
        let cpu = OwnCpu::start()?;
        let client =
            http::run_apart(&receiver.url("/wh/0"), bodies, events, HTTP_IN_FLIGHT).await?;
        Ok(Apart {
            rate: client.rate,
            client_cpu_seconds_per_1000: client.cpu_seconds_per_1000,
            receiver_cpu_seconds_per_1000: cpu.per_1000(events)?,
        })
    }

    /// webhookd (or the bridge) drains a pre-published backlog to a fresh receiver.
    pub async fn deliver(&mut self, spec: &Delivery<'_>) -> anyhow::Result<Delivered> {
        ensure!(
            spec.by == By::Webhookd || !spec.one_hangs,
            "the minimal bridge has no retry path: it cannot run with a receiver that hangs"
        );
        let receiver = Receiver::start().await?;
        let run = self.run("deliver", spec.queue_kind, spec.request_timeout)?;
        let webhooks = webhooks(
            &receiver,
            spec.bodies,
            spec.webhooks_per_account,
            spec.one_hangs,
        );
        amqp::declare(&self.amqp, &run.topology).await?;
        amqp::publish_backlog(&self.amqp, &run.topology, spec.bodies, spec.events).await?;

        let answering = spec.webhooks_per_account - u64::from(spec.one_hangs);
        let expected = spec.events * answering;
        let mut daemon = self
            .start(
                &run,
                spec.by,
                &receiver,
                webhooks,
                spec.webhooks_per_account,
            )
            .await?;
        let stop_console = tokio_util::sync::CancellationToken::new();
        let console = spec
            .console
            .then(|| tokio::spawn(console::probe(run.admin, stop_console.clone())));
        let own_cpu = OwnCpu::start()?;
        let machine = MachineCpu::now()?;
        let broker_cpu = self.broker_cpu()?;
        let started = now_ns();
        // Generous: a debug build under load still moves far more than 200 deliveries a second.
        let deadline = started + secs_ns(60) + expected * 5_000_000;
        let mut rss_mib = Vec::new();
        let mut next_sample = started;
        let (tally, end_ns) = loop {
            let tally = receiver.tally();
            let now = now_ns();
            if tally.count >= expected {
                break (tally, tally.last_ns);
            }
            if let Some(window) = spec.window {
                if tally.count > 0 && now.saturating_sub(tally.first_ns) >= duration_ns(window) {
                    break (tally, now);
                }
            }
            daemon.ensure_running()?;
            if now > deadline {
                bail!(
                    "{} delivered {} of {expected} within {} s; its log ends:\n{}",
                    daemon.name(),
                    tally.count,
                    (now - started) / 1_000_000_000,
                    daemon.log_tail()
                );
            }
            if spec.sample_rss && now >= next_sample {
                let mib = kib_to_mib(daemon.rss_kib()?);
                rss_mib.push(((now - started) as f64 / 1e9, mib));
                next_sample = now + duration_ns(RSS_SAMPLE_EVERY);
            }
            tokio::time::sleep(POLL).await;
        };
        stop_console.cancel();
        let console_page_ns = match console {
            Some(probe) => probe.await??,
            None => Vec::new(),
        };
        let cpu = daemon.cpu_seconds()?;
        let machine = machine.shares_since()?;
        let broker_cpu_seconds_per_1000 = match (broker_cpu, self.broker_cpu()?) {
            (Some(before), Some(after)) => Some((after - before) / (tally.count as f64 / 1000.0)),
            _ => None,
        };
        let receiver_cpu_seconds_per_1000 = own_cpu.per_1000(tally.count)?;
        let peak_rss_mib = kib_to_mib(daemon.peak_rss_kib()?);
        daemon.stop().await?;
        self.delete(&run).await?;
        Ok(Delivered {
            rate: rate_until(&tally, end_ns)?,
            cpu_seconds_per_1000: cpu / (tally.count as f64 / 1000.0),
            receiver_cpu_seconds_per_1000,
            peak_rss_mib,
            rss_mib,
            hung: receiver.hung(),
            machine,
            broker_cpu_seconds_per_1000,
            console_page_ns,
        })
    }

    /// The broker node's CPU seconds so far, if it is known.
    fn broker_cpu(&self) -> anyhow::Result<Option<f64>> {
        self.broker_pid.map(procfs::cpu_seconds).transpose()
    }

    /// Scenario 6: webhookd (or the bridge) running on an empty queue, `per_second` stamped
    /// events published steadily for `seconds`, one webhook each.
    pub async fn latency(
        &mut self,
        by: By,
        queue_kind: &str,
        bodies: &Bodies,
        per_second: u64,
        seconds: u64,
    ) -> anyhow::Result<Latencies> {
        let receiver = Receiver::start().await?;
        let run = self.run("latency", queue_kind, None)?;
        amqp::declare(&self.amqp, &run.topology).await?;
        let webhooks = webhooks(&receiver, bodies, 1, false);
        let mut daemon = self.start(&run, by, &receiver, webhooks, 1).await?;
        let deadline = now_ns() + secs_ns(60);
        while amqp::consumers(&self.amqp, &run.topology.queue).await? == 0 {
            daemon.ensure_running()?;
            ensure!(
                now_ns() < deadline,
                "{} did not start consuming within 60 s",
                daemon.name()
            );
            tokio::time::sleep(POLL).await;
        }
        let count = per_second * seconds;
        amqp::publish_steadily(&self.amqp, &run.topology, bodies, count, per_second).await?;
        receipts(&receiver, &mut daemon, count, "of the last publish").await?;
        let stages = match by {
            By::Webhookd => Some(stages::scrape(run.admin).await?),
            By::Bridge => None,
        };
        daemon.stop().await?;
        self.delete(&run).await?;
        let stamped = receiver.stamped();
        ensure!(
            stamped.len() as u64 >= count,
            "only {} of {count} deliveries carried their stamp",
            stamped.len()
        );
        Ok(Latencies::new(
            &stamped,
            stages,
            receiver.tally().connections,
        ))
    }

    /// Deletes `run`'s exchange and queues (see [`amqp::delete`]). RabbitMQ has answered a queue
    /// delete with `INTERNAL_ERROR` while a quorum queue was still settling after its consumer
    /// left, a hard error that closes the connection, and a later try went through; so a failed
    /// try reconnects before the next. Deleting again what is already gone is not an error.
    async fn delete(&mut self, run: &Run) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            let registry = [
                run.broker.registry_stream.clone(),
                webhookd::registry::election_queue(&run.broker),
            ];
            let queues: Vec<String> = run.delay_queues.iter().cloned().chain(registry).collect();
            match amqp::delete(&self.amqp, &run.topology, &queues).await {
                Ok(()) => return Ok(()),
                Err(error) if tries < DELETE_TRIES => {
                    eprintln!("bench: deleting a run's queues failed ({error:#}); trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.amqp = amqp::connect(&self.url).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts what delivers `run`'s queue to `receiver`: webhookd, on a store holding `webhooks`,
    /// or the bridge, which needs none and posts each event to `per_event` URLs of its own.
    async fn start(
        &self,
        run: &Run,
        by: By,
        receiver: &Receiver,
        webhooks: Vec<NewWebhook>,
        per_event: u64,
    ) -> anyhow::Result<Daemon> {
        match by {
            By::Webhookd => {
                run.register(webhooks).await?;
                run.start()
            }
            By::Bridge => {
                let urls: Vec<String> = (0..per_event)
                    .map(|k| receiver.url(&format!("{BRIDGE_PATH}/{k}")))
                    .collect();
                run.start_bridge(&self.url, &urls)
            }
        }
    }

    /// Scenario 9's daemon run: webhookd started on a store of `webhooks` (which must include
    /// `per_account` for each account of `bodies`, pointing at `receiver`), until it has
    /// delivered one event to each account of `bodies`. Returns the run, whose store the lookups
    /// then open.
    pub async fn registry(
        &mut self,
        receiver: &Receiver,
        webhooks: Vec<NewWebhook>,
        bodies: &Bodies,
        per_account: u64,
    ) -> anyhow::Result<(Loaded, Run)> {
        let run = self.run("registry", "classic", None)?;
        let building = std::time::Instant::now();
        run.register(webhooks).await?;
        let build_seconds = building.elapsed().as_secs_f64();
        // What a daemon upgraded to the registry log does at its first start, done beforehand
        // so that the start measured below is an ordinary one.
        let publish_seconds = replication::publish_store(&run.broker, &run.store_path()).await?;
        amqp::declare(&self.amqp, &run.topology).await?;
        let events = bodies.accounts().count() as u64;
        amqp::publish_backlog(&self.amqp, &run.topology, bodies, events).await?;
        let mut daemon = run.start()?;
        let started = now_ns();
        receipts(receiver, &mut daemon, events * per_account, "of its start").await?;
        let rss_mib = kib_to_mib(daemon.rss_kib()?);
        let peak_rss_mib = kib_to_mib(daemon.peak_rss_kib()?);
        daemon.stop().await?;

        // The same registry again, from the log alone: an instance with an empty store.
        std::fs::remove_dir_all(run.store_path())?;
        let mut daemon = run.start()?;
        let rebuilding = std::time::Instant::now();
        ready(&run, &mut daemon).await?;
        let rebuild_seconds = rebuilding.elapsed().as_secs_f64();
        let rebuild_peak_rss_mib = kib_to_mib(daemon.peak_rss_kib()?);
        daemon.stop().await?;
        self.delete(&run).await?;
        let loaded = Loaded {
            build_seconds,
            publish_seconds,
            first_delivery_seconds: receiver.tally().first_ns.saturating_sub(started) as f64 / 1e9,
            rss_mib,
            peak_rss_mib,
            rebuild_seconds,
            rebuild_peak_rss_mib,
        };
        Ok((loaded, run))
    }

    /// Registry changes through one instance, timed until in effect on another (see
    /// `replication`), on a registry log of their own.
    pub async fn propagation(
        &mut self,
        receiver: &Receiver,
        changes: u64,
    ) -> anyhow::Result<replication::Propagation> {
        let run = self.run("propagation", "classic", None)?;
        let times = replication::propagation(&run.broker, &receiver.url("/p"), changes).await;
        self.delete(&run).await?;
        times
    }
}

/// How long an instance may take to become ready after its start: a rebuild of a million
/// webhooks from the log reads and applies every one.
const READY_PATIENCE: Duration = Duration::from_secs(1800);

/// Waits until the daemon's `/readyz` answers 200.
async fn ready(run: &Run, daemon: &mut Daemon) -> anyhow::Result<()> {
    let client = http::bare_client();
    let url: http_types::Uri = format!("http://{}/readyz", run.admin).parse()?;
    let deadline = std::time::Instant::now() + READY_PATIENCE;
    loop {
        daemon.ensure_running()?;
        if let Ok(response) = client.get(url.clone()).await {
            if response.status() == http_types::StatusCode::OK {
                return Ok(());
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{} was not ready within {READY_PATIENCE:?}; its log ends:\n{}",
            daemon.name(),
            daemon.log_tail()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `receiver` has answered `count` deliveries, for at most 60 s from now.
async fn receipts(
    receiver: &Receiver,
    daemon: &mut Daemon,
    count: u64,
    since: &str,
) -> anyhow::Result<()> {
    let deadline = now_ns() + secs_ns(60);
    while receiver.tally().count < count {
        daemon.ensure_running()?;
        ensure!(
            now_ns() < deadline,
            "{} delivered {} of {count} within 60 s {since}; its log ends:\n{}",
            daemon.name(),
            receiver.tally().count,
            daemon.log_tail()
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// `per_account` signed webhooks for every account of `bodies`. Each answering webhook has a URL
/// of its own, as webhooks of different accounts and purposes do in production (webhookd caps
/// requests in flight per URL, so one URL shared by a thousand webhooks would measure that cap).
/// The hanging webhooks all share [`HANG_PATH`]: one receiver that never answers.
fn webhooks(
    receiver: &Receiver,
    bodies: &Bodies,
    per_account: u64,
    one_hangs: bool,
) -> Vec<NewWebhook> {
    bodies
        .accounts()
        .flat_map(|account| {
            (0..per_account).map(move |k| {
                let path = if one_hangs && k + 1 == per_account {
                    HANG_PATH.to_owned()
                } else {
                    format!("/wh/{account}/{k}")
                };
                (account, path)
            })
        })
        .map(|(account_id, path)| NewWebhook {
            account_id,
            url: receiver.url(&path),
            events: vec!["message_created".to_owned()],
            secret: Some(SECRET.to_owned()),
            ..NewWebhook::default()
        })
        .collect()
}

fn rate_until(tally: &Tally, end_ns: u64) -> anyhow::Result<f64> {
    let span = end_ns.saturating_sub(tally.first_ns);
    ensure!(
        tally.count > 1 && span > 0,
        "too few deliveries to time ({})",
        tally.count
    );
    Ok(tally.count as f64 / (span as f64 / 1e9))
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs_ns(seconds: u64) -> u64 {
    seconds * 1_000_000_000
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The benchmark process's own CPU time from `start` on.
struct OwnCpu(f64);

impl OwnCpu {
    fn start() -> anyhow::Result<OwnCpu> {
        Ok(OwnCpu(procfs::cpu_seconds(std::process::id())?))
    }

    /// CPU seconds since `start`, per 1,000 of `count`.
    fn per_1000(&self, count: u64) -> anyhow::Result<f64> {
        let spent = procfs::cpu_seconds(std::process::id())? - self.0;
        Ok(spent / (count as f64 / 1000.0))
    }
}
