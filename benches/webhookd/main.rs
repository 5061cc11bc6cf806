//! webhookd's speed benchmark: how close the real daemon comes to
//! what this machine can physically move, how much memory it holds, and whether one dead
//! receiver slows the others.
//!
//! webhookd's rate is only meaningful against the machine's own limits, measured in the same run
//! on the same messages: D, a bare lapin consumer draining the queue; P, a bare hyper client
//! POSTing to the same receiver; and L = 1 / (1/D + 1/P), the bound for doing both jobs on the
//! same cores. A minimal lapin→hyper bridge (`bridge`) runs in webhookd's place on the same
//! queues, so "webhookd should beat that bridge" is a ratio within the run too. Every figure
//! is the median of several runs, and the table reports ratios to targets rather than asserting
//! them, because the machine is shared: ratios within one run are what compare.
//!
//! ```text
//! scripts/bench.sh            # full run (release build, its own broker node), ~35 min here
//! scripts/bench.sh --smoke    # every scenario once, small sizes, in a minute or two
//! ```
//!
//! `cargo test --all-targets` runs this binary too (without `--bench`): it then does the smoke
//! run against the test broker with the debug build, so CI keeps every scenario working at the
//! cost of no extra build. Smoke runs check that each scenario produces its numbers, nothing else.
//!
//! Throughput runs pre-publish their events before webhookd starts, so the figures measure
//! consumption alone and webhookd's start-up is outside the first-to-last-receipt window; the
//! latency run publishes at a steady rate while webhookd runs.

mod amqp;
mod bridge;
mod console;
mod daemon;
mod events;
mod http;
mod procfs;
mod receiver;
mod registry;
mod replication;
mod report;
mod scenarios;
mod stages;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::json;

use crate::events::Bodies;
use crate::receiver::Receiver;
use crate::registry::Registry;
use crate::replication::Propagation;
use crate::report::{median, quantile, Figure, Goal, Raw, Report};
use crate::scenarios::{Bench, By, Delivered, Delivery, Latencies, DRAIN};

/// The bench node `scripts/bench.sh` starts; under `cargo test`, the test node.
const BENCH_URL: &str = "amqp://guest:guest@127.0.0.1:5680/%2f";
const TEST_URL: &str = "amqp://guest:guest@127.0.0.1:5679/%2f";

const MIB: f64 = 1024.0 * 1024.0;

/// webhookd's speed targets (the table's "target" column).
const SHARE_OF_LIMIT: f64 = 0.8;
const P99_CEILING_MS: f64 = 1.5;
const RSS_CEILING_MIB: f64 = 32.0;
const ISOLATION_FLOOR: f64 = 0.9;
const LOOKUP_P99_CEILING_US: f64 = 50.0;
const FAN_OUT: u64 = 10;

/// Events webhookd delivers in the registry scenario, one per account: enough to see it working
/// on the big store, few enough that the scenario measures the store, not delivery.
const REGISTRY_EVENTS: u64 = 1_000;

/// How big each scenario is.
#[derive(Debug, Clone, serde::Serialize)]
struct Sizes {
    runs: usize,
    /// N: events per throughput run (D, P, webhookd with one webhook per event).
    events: u64,
    /// Accounts with one webhook each; events cycle through them.
    accounts: u64,
    /// Accounts with ten webhooks each (fan-out, isolation).
    fan_out_accounts: u64,
    /// Events per fan-out or isolation run (each is ten deliveries).
    fan_out_events: u64,
    latency_per_second: u64,
    latency_seconds: u64,
    backlog: u64,
    /// Isolation is measured over this long from the first receipt (or until all arrived).
    isolation_window: Duration,
    /// `delivery.request_timeout` in the isolation runs; `None` is webhookd's default, 15 s.
    isolation_timeout: Option<&'static str>,
    registry_webhooks: u64,
    registry_accounts: u64,
    registry_lookups: u64,
    /// Registry changes timed from one instance to another.
    propagation_changes: u64,
}

const FULL: Sizes = Sizes {
    runs: 3,
    events: 200_000,
    accounts: 1_000,
    fan_out_accounts: 100,
    fan_out_events: 20_000,
    latency_per_second: 2_000,
    latency_seconds: 30,
    backlog: 1_000_000,
    isolation_window: Duration::from_secs(35),
    isolation_timeout: None,
    registry_webhooks: 1_000_000,
    registry_accounts: 250_000,
    registry_lookups: 100_000,
    propagation_changes: 500,
};

const SMOKE: Sizes = Sizes {
    runs: 1,
    events: 2_000,
    accounts: 100,
    fan_out_accounts: 20,
    fan_out_events: 200,
    latency_per_second: 2_000,
    latency_seconds: 2,
    backlog: 3_000,
    isolation_window: Duration::from_secs(3),
    isolation_timeout: Some("1s"),
    registry_webhooks: 10_000,
    registry_accounts: 2_500,
    registry_lookups: 2_000,
    propagation_changes: 20,
};

struct Options {
    smoke: bool,
    /// Started by `cargo bench` (which passes `--bench`) rather than `cargo test`.
    bench: bool,
    runs: Option<usize>,
    out: Option<PathBuf>,
    log_level: String,
    /// Events per second in the latency scenario, instead of the size's own.
    latency_rate: Option<u64>,
    /// libtest-style name filters, as `cargo test <filter>` passes them to every target.
    filters: Vec<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        smoke: false,
        bench: false,
        runs: None,
        out: None,
        log_level: "info".to_owned(),
        latency_rate: None,
        filters: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => options.smoke = true,
            "--bench" => options.bench = true,
            "--runs" => options.runs = Some(args.next().context("--runs N")?.parse()?),
            "--out" => options.out = Some(args.next().context("--out PATH")?.into()),
            "--log-level" => options.log_level = args.next().context("--log-level LEVEL")?,
            "--latency-rate" => {
                options.latency_rate = Some(args.next().context("--latency-rate N")?.parse()?)
            }
            "--help" | "-h" => {
                println!(
                    "usage: scripts/bench.sh [--smoke] [--runs N] [--out PATH] [--log-level LEVEL] \
                     [--latency-rate N] [SCENARIO…]"
                );
                std::process::exit(0);
            }
            // Flags libtest would understand (`--nocapture`, `--quiet`, …) mean nothing here.
            flag if flag.starts_with('-') => {}
            filter => options.filters.push(filter.to_owned()),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some(http::APART) => return http::client_apart().await,
        Some(bridge::BRIDGE) => return bridge::run().await,
        _ => {}
    }
    let options = options()?;
    if !options.bench
        && !options.filters.is_empty()
        && !options
            .filters
            .iter()
            .any(|f| "bench_smoke".contains(f.as_str()))
    {
        println!("webhookd benchmark: filtered out");
        return Ok(());
    }
    let smoke = options.smoke || !options.bench;
    let mut sizes = if smoke { SMOKE } else { FULL };
    if let Some(runs) = options.runs {
        sizes.runs = runs.max(1);
    }
    if let Some(rate) = options.latency_rate {
        sizes.latency_per_second = rate.max(1);
    }
    let url = std::env::var("WEBHOOKD_BENCH_AMQP_URL")
        .or_else(|_| std::env::var("WEBHOOKD_TEST_AMQP_URL"))
        .unwrap_or_else(|_| if options.bench { BENCH_URL } else { TEST_URL }.to_owned());
    // Under `cargo bench`, names select scenarios; under `cargo test` they were libtest filters.
    let selected = if options.bench {
        options.filters
    } else {
        Vec::new()
    };
    let mode = match (smoke, selected.is_empty()) {
        (true, _) => "smoke",
        (false, true) => "full",
        (false, false) => "partial",
    };
    // A smoke or partial run never overwrites the last full report.
    let out = match options.out {
        Some(path) => path,
        None => target_dir()?.join("bench").join(match mode {
            "full" => "report.json".to_owned(),
            other => format!("{other}.json"),
        }),
    };

    let mut bench = Bench::connect(url, options.log_level.clone()).await?;
    let report = measure(&mut bench, &sizes, mode, &selected).await?;
    println!("{}", report.markdown());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&report.json())?)?;
    println!("written to {}", out.display());
    Ok(())
}

/// `target/`, found from this executable's path (`target/<profile>/deps/webhookd-…`).
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .context("cannot find the target directory")
}

/// Runs `one` `runs` times, saying what runs on stderr, and keeps every result.
async fn repeat<T>(
    runs: usize,
    what: &str,
    mut one: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::with_capacity(runs);
    for run in 1..=runs {
        eprintln!(
            "bench: {what}, run {run} of {runs} (load {})",
            procfs::load_average()
        );
        let started = Instant::now();
        all.push(one().await.with_context(|| format!("{what}, run {run}"))?);
        eprintln!("bench: {what}, run {run} took {:.1?}", started.elapsed());
    }
    Ok(all)
}

/// 1 / (1/a + 1/b): the rate of doing two jobs one after the other on the same cores.
fn combined(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

/// Where the rest of the machine's CPU went in the delivery `runs`: the broker's share per
/// 1,000 deliveries (when the benchmark can see its process), what was left idle, and what the
/// host took. Idle time means the rate was bound by something besides CPU.
fn machine_cpu<'a>(
    what: &str,
    runs: impl Iterator<Item = &'a Delivered> + Clone,
) -> anyhow::Result<Vec<Figure>> {
    let percent = |share: fn(&Delivered) -> f64| runs.clone().map(|d| 100.0 * share(d)).collect();
    let mut figures = Vec::with_capacity(3);
    if let Some(broker) = runs
        .clone()
        .map(|d| d.broker_cpu_seconds_per_1000)
        .collect::<Option<Vec<f64>>>()
    {
        figures.push(Figure::new(
            format!("CPU per 1,000 deliveries, the broker's, {what}"),
            "s",
            broker,
        )?);
    }
    figures.extend([
        Figure::new(
            format!("machine CPU idle, {what}"),
            "%",
            percent(|d| d.machine.idle),
        )?,
        Figure::new(
            format!("machine CPU stolen by the host, {what}"),
            "%",
            percent(|d| d.machine.steal),
        )?,
    ]);
    Ok(figures)
}

/// The scenarios, by the names `scripts/bench.sh NAME…` selects them with.
const SCENARIOS: [&str; 10] = [
    "raw",
    "bridge",
    "webhookd",
    "fan-out",
    "isolation",
    "latency",
    "backlog",
    "registry",
    "propagation",
    "console",
];

/// Rows of the stage breakdown for one queue kind: a row's name and its (mean, p50, p99) in µs.
type StageColumn = Vec<(String, [f64; 3])>;

/// One queue kind's column of the stage breakdown: per stage, then the total, then publish →
/// receipt as the receiver measured it, the median over the runs of (mean, p50, p99) in µs.
fn stage_columns(runs: &[Latencies]) -> anyhow::Result<StageColumn> {
    let first = runs
        .first()
        .and_then(|run| run.stages.as_ref())
        .context("a latency run without webhookd's stage breakdown")?;
    let mut rows = Vec::new();
    for (k, stage) in first.iter().enumerate() {
        let mut values = [Vec::new(), Vec::new(), Vec::new()];
        for run in runs {
            let times = &run.stages.as_ref().context("a run without its breakdown")?[k];
            values[0].push(times.mean_us);
            values[1].push(times.p50_us);
            values[2].push(times.p99_us);
        }
        let name = match stage.name {
            "total" => "total: handed over → acked".to_owned(),
            name => name.to_owned(),
        };
        rows.push((name, values.map(|v| median(&v))));
    }
    let mut measured = [Vec::new(), Vec::new(), Vec::new()];
    for run in runs {
        let mean = run.all.iter().sum::<u64>() as f64 / run.all.len().max(1) as f64;
        measured[0].push(mean / 1e3);
        measured[1].push(quantile(&run.all, 0.5)? as f64 / 1e3);
        measured[2].push(quantile(&run.all, 0.99)? as f64 / 1e3);
    }
    rows.push((
        "publish → receipt (the receiver's clock)".to_owned(),
        measured.map(|v| median(&v)),
    ));
    Ok(rows)
}

/// The stage breakdown of the latency scenario as a markdown table, one column group per kind.
fn stage_table(rate: u64, columns: &[(&str, StageColumn)]) -> String {
    let mut out = format!(
        "Where webhookd's time goes in the latency scenario, {rate}/s: µs, medians of the runs; \
         means exact, p50 and p99 interpolated from webhookd's /metrics buckets\n\n| stage |"
    );
    for (kind, _) in columns {
        out.push_str(&format!(" {kind} mean | p50 | p99 |"));
    }
    out.push_str("\n| --- |");
    out.push_str(&" ---: |".repeat(3 * columns.len()));
    out.push('\n');
    let rows = columns.first().map_or(0, |(_, rows)| rows.len());
    for row in 0..rows {
        out.push_str(&format!("| {} |", columns[0].1[row].0));
        for (_, rows) in columns {
            for value in rows[row].1 {
                out.push_str(&format!(" {value:.0} |"));
            }
        }
        out.push('\n');
    }
    out
}

/// The raw limits' medians, which the other targets derive from.
#[derive(Clone, Copy)]
struct Limits {
    p: f64,
    d_classic: f64,
    d_quorum: f64,
}

/// The minimal bridge's medians, which webhookd's are compared with.
#[derive(Clone, Copy)]
struct Bridge {
    /// Events per second, classic and quorum.
    rates: [f64; 2],
    p99_classic_ms: f64,
}

/// The queue kinds every throughput and latency scenario runs on, in this order.
const QUEUE_KINDS: [&str; 2] = ["classic", "quorum"];

/// What every scenario publishes, and how much of it.
struct Inputs<'a> {
    sizes: &'a Sizes,
    single: Bodies,
    fan_out: Bodies,
}

/// Everything one benchmark run measures, scenario by scenario.
struct Measure<'a> {
    bench: &'a mut Bench,
    inputs: Inputs<'a>,
    figures: Vec<Figure>,
    details: serde_json::Map<String, serde_json::Value>,
    /// Tables printed after the figures (the latency scenario's stage breakdown).
    sections: Vec<String>,
}

async fn measure(
    bench: &mut Bench,
    sizes: &Sizes,
    mode: &'static str,
    selected: &[String],
) -> anyhow::Result<Report> {
    let wanted =
        |name: &str| selected.is_empty() || selected.iter().any(|s| name.contains(s.as_str()));
    let unknown: Vec<&String> = selected
        .iter()
        .filter(|s| !SCENARIOS.iter().any(|name| name.contains(s.as_str())))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "no scenario matches {unknown:?}; scenarios: {}",
            SCENARIOS.join(", ")
        );
    }
    let load_before = procfs::load_average();
    let started = Instant::now();
    let mut m = Measure {
        inputs: Inputs {
            single: Bodies::new(sizes.accounts),
            fan_out: Bodies::new(sizes.fan_out_accounts),
            sizes,
        },
        bench,
        figures: Vec::new(),
        details: serde_json::Map::new(),
        sections: Vec::new(),
    };
    let limits = if wanted("raw") {
        Some(m.limits().await?)
    } else {
        None
    };
    let bridge = if wanted("bridge") {
        Some(Bridge {
            rates: m.one_webhook(By::Bridge, limits, None).await?,
            p99_classic_ms: m.latency(By::Bridge, None).await?,
        })
    } else {
        None
    };
    if wanted("webhookd") {
        m.one_webhook(By::Webhookd, limits, bridge.map(|b| b.rates))
            .await?;
    }
    let fan_out = if wanted("fan-out") {
        Some(m.fan_out(limits).await?)
    } else {
        None
    };
    if wanted("isolation") {
        m.isolation(fan_out).await?;
    }
    if wanted("latency") {
        m.latency(By::Webhookd, bridge.map(|b| b.p99_classic_ms))
            .await?;
    }
    if wanted("backlog") {
        m.backlog().await?;
    }
    if wanted("registry") {
        m.registry().await?;
    }
    if wanted("propagation") {
        m.propagation().await?;
    }
    if wanted("console") {
        m.console().await?;
    }
    m.details.insert(
        "duration_seconds".to_owned(),
        json!(started.elapsed().as_secs_f64()),
    );
    Ok(Report {
        mode,
        machine: procfs::machine(),
        load_before,
        load_after: procfs::load_average(),
        parameters: json!({
            "scenarios": if selected.is_empty() { json!("all") } else { json!(selected) },
            "sizes": sizes,
            "mean_body_bytes": m.inputs.single.mean_len(),
            "drain_strategy": format!(
                "prefetch {}, one multiple=true ack per {} deliveries",
                DRAIN.prefetch, DRAIN.ack_every
            ),
            "publishing": "throughput and backlog runs: pre-published (persistent, confirmed) before webhookd starts; latency runs: published steadily while webhookd runs",
            "webhookd": format!(
                "{}; webhookd's defaults otherwise (prefetch 256, max_in_flight 512), signing on, log level {}",
                env!("CARGO_BIN_EXE_webhookd"),
                m.bench.log_level
            ),
        }),
        figures: m.figures,
        details: serde_json::Value::Object(m.details),
        sections: m.sections,
    })
}

impl Inputs<'_> {
    fn delivery(&self, kind: &'static str, fan_out: bool) -> Delivery<'_> {
        Delivery {
            by: By::Webhookd,
            queue_kind: kind,
            bodies: if fan_out { &self.fan_out } else { &self.single },
            events: if fan_out {
                self.sizes.fan_out_events
            } else {
                self.sizes.events
            },
            webhooks_per_account: if fan_out { FAN_OUT } else { 1 },
            one_hangs: false,
            window: None,
            request_timeout: None,
            sample_rss: false,
            console: false,
        }
    }
}

impl Measure<'_> {
    /// D and P, and L from them.
    async fn limits(&mut self) -> anyhow::Result<Limits> {
        let (runs, n, single) = (
            self.inputs.sizes.runs,
            self.inputs.sizes.events,
            &self.inputs.single,
        );
        let bench = &mut *self.bench;
        let p = repeat(runs, "P: bare HTTP client", async || {
            bench.raw_http(single, n).await
        })
        .await?;
        let apart = repeat(runs, "P, the client in a process of its own", async || {
            bench.raw_http_apart(single, n).await
        })
        .await?;
        let mut drain = async |kind: &str| {
            repeat(runs, &format!("D: bare consumer, {kind}"), async || {
                bench.raw_drain(kind, single, n).await
            })
            .await
        };
        let d_classic = drain("classic").await?;
        let d_quorum = drain("quorum").await?;
        let rates = |runs: &[Raw]| runs.iter().map(|r| r.rate).collect::<Vec<_>>();
        let cpu = |runs: &[Raw]| {
            runs.iter()
                .map(|r| r.cpu_seconds_per_1000)
                .collect::<Vec<_>>()
        };
        let limits = Limits {
            p: median(&rates(&p)),
            d_classic: median(&rates(&d_classic)),
            d_quorum: median(&rates(&d_quorum)),
        };
        self.figures.extend([
            Figure::new(
                "D — bare consumer drain, classic",
                "msg/s",
                rates(&d_classic),
            )?,
            Figure::new("D — bare consumer drain, quorum", "msg/s", rates(&d_quorum))?,
            Figure::new("P — bare HTTP POST, 64 in flight", "req/s", rates(&p))?,
            Figure::new("CPU per 1,000, D's consumer, classic", "s", cpu(&d_classic))?,
            Figure::new("CPU per 1,000, D's consumer, quorum", "s", cpu(&d_quorum))?,
            Figure::new("CPU per 1,000, P's client and receiver", "s", cpu(&p))?,
            Figure::new(
                "P, the client in a process of its own (not a limit)",
                "req/s",
                apart.iter().map(|a| a.rate).collect(),
            )?,
            Figure::new(
                "CPU per 1,000, that client",
                "s",
                apart
                    .iter()
                    .map(|a| a.client_cpu_seconds_per_1000)
                    .collect(),
            )?,
            Figure::new(
                "CPU per 1,000, its receiver",
                "s",
                apart
                    .iter()
                    .map(|a| a.receiver_cpu_seconds_per_1000)
                    .collect(),
            )?,
            Figure::new(
                "L = 1/(1/D + 1/P), classic",
                "events/s",
                vec![combined(limits.d_classic, limits.p)],
            )?,
            Figure::new(
                "L = 1/(1/D + 1/P), quorum",
                "events/s",
                vec![combined(limits.d_quorum, limits.p)],
            )?,
        ]);
        Ok(limits)
    }

    /// webhookd (or the bridge) with one webhook per event, on both queue kinds; returns the
    /// median rates. The rate is held to 0.8 × L (the bridge's for reference) and webhookd's,
    /// when the bridge ran, compared with the bridge's (`bridge`, classic and quorum).
    async fn one_webhook(
        &mut self,
        by: By,
        limits: Option<Limits>,
        bridge: Option<[f64; 2]>,
    ) -> anyhow::Result<[f64; 2]> {
        let mut medians = [0.0; 2];
        for (k, kind) in QUEUE_KINDS.into_iter().enumerate() {
            let spec = Delivery {
                by,
                ..self.inputs.delivery(kind, false)
            };
            let bench = &mut *self.bench;
            let (name, of) = (by.name(), by.of());
            let what = format!("{name} 1 webhook/event, {kind}");
            let delivered = repeat(self.inputs.sizes.runs, &what, async || {
                bench.deliver(&spec).await
            })
            .await?;
            let field = |f: fn(&Delivered) -> f64| delivered.iter().map(f).collect::<Vec<_>>();
            let mut rate = Figure::new(
                format!("{name}, 1 webhook/event, {kind}"),
                "events/s",
                field(|d| d.rate),
            )?;
            medians[k] = rate.value;
            if let Some(limits) = limits {
                let d = if kind == "classic" {
                    limits.d_classic
                } else {
                    limits.d_quorum
                };
                let note = match by {
                    By::Webhookd => format!("0.8 × L {kind}"),
                    By::Bridge => format!("0.8 × L {kind}, {}", by.whose_target()),
                };
                rate = rate.target(Goal::AtLeast(SHARE_OF_LIMIT * combined(d, limits.p)), note);
            }
            let mut rss = Figure::new(
                format!("peak RSS, {of}{kind}"),
                "MiB",
                field(|d| d.peak_rss_mib),
            )?;
            if by == By::Webhookd {
                rss = rss.target(Goal::AtMost(RSS_CEILING_MIB), "");
            }
            self.figures.push(rate);
            if let (By::Webhookd, Some(bridge)) = (by, bridge) {
                self.figures.push(
                    Figure::new(
                        format!("webhookd ÷ minimal bridge, events/s, {kind}"),
                        "",
                        vec![medians[k] / bridge[k]],
                    )?
                    .target(Goal::AtLeast(1.0), "beat the bridge"),
                );
            }
            self.figures.extend([
                Figure::new(
                    format!("CPU per 1,000 deliveries, {of}{kind}"),
                    "s",
                    field(|d| d.cpu_seconds_per_1000),
                )?,
                Figure::new(
                    format!("CPU per 1,000 deliveries, the receiver's, {of}{kind}"),
                    "s",
                    field(|d| d.receiver_cpu_seconds_per_1000),
                )?,
                rss,
            ]);
            self.figures
                .extend(machine_cpu(&format!("{of}{kind}"), delivered.iter())?);
        }
        Ok(medians)
    }

    /// Ten webhooks per event; returns webhookd's median deliveries/s, which isolation compares
    /// with. The minimal bridge posting each event to ten URLs runs before each of webhookd's
    /// runs, so each pair shares the machine's hour, and both are held to the same target.
    async fn fan_out(&mut self, limits: Option<Limits>) -> anyhow::Result<f64> {
        let spec = self.inputs.delivery("classic", true);
        let bridge_spec = Delivery {
            by: By::Bridge,
            ..self.inputs.delivery("classic", true)
        };
        let bench = &mut *self.bench;
        let what = "fan-out, 10 webhooks/event, classic";
        let pairs = repeat(
            self.inputs.sizes.runs,
            &format!("{what}, the minimal bridge then webhookd"),
            async || {
                let bridge = bench.deliver(&bridge_spec).await?;
                Ok((bridge, bench.deliver(&spec).await?))
            },
        )
        .await?;
        let of = |by: By| {
            pairs.iter().map(move |(bridge, webhookd)| match by {
                By::Bridge => bridge,
                By::Webhookd => webhookd,
            })
        };
        let field = |by: By, f: fn(&Delivered) -> f64| of(by).map(f).collect::<Vec<_>>();
        let target = limits.map(|limits| {
            Goal::AtLeast(SHARE_OF_LIMIT * combined(FAN_OUT as f64 * limits.d_classic, limits.p))
        });
        let mut medians = [0.0; 2];
        for (k, by) in [By::Bridge, By::Webhookd].into_iter().enumerate() {
            let label = match by {
                By::Webhookd => what.to_owned(),
                By::Bridge => "minimal bridge, fan-out, 10 URLs/event, classic".to_owned(),
            };
            let mut figure = Figure::new(label, "deliveries/s", field(by, |d| d.rate))?;
            medians[k] = figure.value;
            if let Some(goal) = target {
                let note = match by {
                    By::Webhookd => "0.8 × 1/(1/(10·D) + 1/P)".to_owned(),
                    By::Bridge => format!("0.8 × 1/(1/(10·D) + 1/P), {}", by.whose_target()),
                };
                figure = figure.target(goal, note);
            }
            self.figures.extend([
                figure,
                Figure::new(
                    format!("CPU per 1,000 deliveries, {}fan-out", by.of()),
                    "s",
                    field(by, |d| d.cpu_seconds_per_1000),
                )?,
            ]);
            self.figures
                .extend(machine_cpu(&format!("{}fan-out", by.of()), of(by))?);
        }
        let [bridge, webhookd] = medians;
        self.figures.push(Figure::new(
            "webhookd ÷ minimal bridge, fan-out deliveries/s",
            "",
            vec![webhookd / bridge],
        )?);
        Ok(webhookd)
    }

    /// Ten webhooks per event, one of which never answers.
    async fn isolation(&mut self, fan_out: Option<f64>) -> anyhow::Result<()> {
        let spec = Delivery {
            one_hangs: true,
            window: Some(self.inputs.sizes.isolation_window),
            request_timeout: self.inputs.sizes.isolation_timeout,
            ..self.inputs.delivery("classic", true)
        };
        let bench = &mut *self.bench;
        let what = "isolation, 1 of 10 webhooks hangs, classic";
        let runs = repeat(self.inputs.sizes.runs, what, async || {
            bench.deliver(&spec).await
        })
        .await?;
        self.details.insert(
            "isolation_hanging_requests".to_owned(),
            json!(runs.iter().map(|d| d.hung).collect::<Vec<_>>()),
        );
        let nine: Vec<f64> = runs.iter().map(|d| d.rate).collect();
        if let Some(fan_out) = fan_out {
            let share = nine.iter().map(|rate| rate / (fan_out * 0.9)).collect();
            self.figures.push(
                Figure::new("isolation: share of fan-out rate × 9/10", "", share)?
                    .target(Goal::AtLeast(ISOLATION_FLOOR), ""),
            );
        }
        self.figures.extend([
            Figure::new(
                "isolation: deliveries to the 9 answering",
                "deliveries/s",
                nine,
            )?,
            Figure::new(
                "CPU per 1,000 deliveries to the 9, isolation",
                "s",
                runs.iter().map(|d| d.cpu_seconds_per_1000).collect(),
            )?,
        ]);
        self.figures.extend(machine_cpu("isolation", runs.iter())?);
        Ok(())
    }

    /// Publish-to-receipt latency at a steady rate, on both queue kinds; returns the median p99
    /// on the classic queue. The classic p99 is held to the ceiling (the bridge's for reference)
    /// and webhookd's, when the bridge ran, compared with the bridge's (`bridge_p99`).
    async fn latency(&mut self, by: By, bridge_p99: Option<f64>) -> anyhow::Result<f64> {
        let mut p99_classic = 0.0;
        let mut breakdown = Vec::new();
        let (rate, seconds) = (
            self.inputs.sizes.latency_per_second,
            self.inputs.sizes.latency_seconds,
        );
        for kind in QUEUE_KINDS {
            let (bench, single) = (&mut *self.bench, &self.inputs.single);
            let of = by.of();
            let what = format!("latency, {of}{rate}/s for {seconds} s, {kind}");
            let runs = repeat(self.inputs.sizes.runs, &what, async || {
                bench.latency(by, kind, single, rate, seconds).await
            })
            .await?;
            let millis = |q: f64| -> anyhow::Result<Vec<f64>> {
                runs.iter()
                    .map(|run| Ok(quantile(&run.all, q)? as f64 / 1e6))
                    .collect()
            };
            self.details.insert(
                format!("latency_{}{kind}_worst_ms_per_second", by.key()),
                json!(runs
                    .iter()
                    .map(|run| run
                        .worst_per_second
                        .iter()
                        .map(|ns| (*ns as f64 / 1e4).round() / 1e2)
                        .collect::<Vec<_>>())
                    .collect::<Vec<_>>()),
            );
            let label = |what: &str| format!("publish→receipt {what}, {of}{kind}, {rate}/s");
            self.figures
                .push(Figure::new(label("p50"), "ms", millis(0.5)?)?);
            let mut p99 = Figure::new(label("p99"), "ms", millis(0.99)?)?;
            let classic = kind == "classic";
            if classic {
                p99_classic = p99.value;
            }
            let mut beside_the_bridge = None;
            if classic {
                p99 = p99.target(Goal::AtMost(P99_CEILING_MS), by.whose_target());
            }
            if let (true, By::Webhookd) = (classic, by) {
                if let Some(bridge) = bridge_p99 {
                    beside_the_bridge = Some(
                        Figure::new(
                            format!("webhookd ÷ minimal bridge, p99, {kind}"),
                            "",
                            vec![p99.value / bridge],
                        )?
                        .target(Goal::AtMost(1.0), "beat the bridge"),
                    );
                }
            }
            self.figures.push(p99);
            self.figures.extend(beside_the_bridge);
            self.figures
                .push(Figure::new(label("max"), "ms", millis(1.0)?)?);
            self.figures.push(Figure::new(
                format!("receiver connections opened, {of}{kind}, {rate}/s"),
                "",
                runs.iter().map(|run| run.connections as f64).collect(),
            )?);
            if let By::Webhookd = by {
                breakdown.push((kind, stage_columns(&runs)?));
            }
        }
        if !breakdown.is_empty() {
            self.sections.push(stage_table(rate, &breakdown));
        }
        Ok(p99_classic)
    }

    /// The console's Webhooks page, as the operator (one account per webhook, so every page is
    /// full), loaded again and again while webhookd delivers a throughput run.
    async fn console(&mut self) -> anyhow::Result<()> {
        let spec = Delivery {
            console: true,
            ..self.inputs.delivery("classic", false)
        };
        let bench = &mut *self.bench;
        let webhooks = self.inputs.sizes.accounts;
        let what = format!("console Webhooks page, {webhooks} webhooks, during a throughput run");
        let runs = repeat(self.inputs.sizes.runs, &what, async || {
            bench.deliver(&spec).await
        })
        .await?;
        let page_ms = |q: f64| -> anyhow::Result<Vec<f64>> {
            runs.iter()
                .map(|d| Ok(quantile(&d.console_page_ns, q)? as f64 / 1e6))
                .collect()
        };
        let label = |what: &str| {
            format!("console Webhooks page {what}, {webhooks} webhooks, classic, during delivery")
        };
        self.figures.extend([
            Figure::new(label("p50"), "ms", page_ms(0.5)?)?,
            Figure::new(label("p99"), "ms", page_ms(0.99)?)?,
            Figure::new(
                label("loads"),
                "",
                runs.iter()
                    .map(|d| d.console_page_ns.len() as f64)
                    .collect(),
            )?,
            Figure::new(
                "webhookd, 1 webhook/event, classic, while the console is loaded",
                "events/s",
                runs.iter().map(|d| d.rate).collect(),
            )?,
        ]);
        Ok(())
    }

    /// A backlog queued before webhookd starts, RSS sampled over the drain.
    async fn backlog(&mut self) -> anyhow::Result<()> {
        let spec = Delivery {
            events: self.inputs.sizes.backlog,
            sample_rss: true,
            ..self.inputs.delivery("classic", false)
        };
        let bench = &mut *self.bench;
        let what = format!("backlog of {} events, classic", self.inputs.sizes.backlog);
        let runs = repeat(self.inputs.sizes.runs, &what, async || {
            bench.deliver(&spec).await
        })
        .await?;
        if runs.iter().any(|d| d.rss_mib.is_empty()) {
            bail!("a backlog run sampled no RSS");
        }
        self.details.insert(
            "backlog_rss_mib".to_owned(),
            json!(runs.iter().map(|d| &d.rss_mib).collect::<Vec<_>>()),
        );
        let label = format!("backlog {}", self.inputs.sizes.backlog);
        self.figures.extend([
            Figure::new(
                format!("{label}: drain rate"),
                "events/s",
                runs.iter().map(|d| d.rate).collect(),
            )?,
            Figure::new(
                format!("{label}: peak RSS"),
                "MiB",
                runs.iter().map(|d| d.peak_rss_mib).collect(),
            )?
            .target(Goal::AtMost(RSS_CEILING_MIB), ""),
        ]);
        Ok(())
    }

    /// webhookd with a million webhooks stored, then lookups by account in that store.
    async fn registry(&mut self) -> anyhow::Result<()> {
        let sizes = self.inputs.sizes;
        let (webhooks, accounts) = (sizes.registry_webhooks, sizes.registry_accounts);
        ensure!(
            webhooks % accounts == 0,
            "registry webhooks ({webhooks}) must be a multiple of its accounts ({accounts})"
        );
        eprintln!("bench: registry: storing {webhooks} webhooks over {accounts} accounts");
        let receiver = Receiver::start().await?;
        let bodies = Bodies::new(REGISTRY_EVENTS.min(accounts));
        let (loaded, run) = self
            .bench
            .registry(
                &receiver,
                registry::webhooks(&receiver, webhooks, accounts),
                &bodies,
                webhooks / accounts,
            )
            .await?;
        let registry = Registry::open(&run.store_path(), accounts)?;
        eprintln!(
            "bench: registry: the index holds {} accounts' webhooks in {:.0} MiB; opening the \
             store took {:.1?}",
            registry.index.accounts,
            registry.index.bytes as f64 / MIB,
            registry.opening
        );
        self.details.extend([
            (
                "registry_build_seconds".to_owned(),
                json!(loaded.build_seconds),
            ),
            (
                "registry_open_seconds".to_owned(),
                json!(registry.opening.as_secs_f64()),
            ),
            (
                "registry_index_mib".to_owned(),
                json!(registry.index.bytes as f64 / MIB),
            ),
        ]);
        let runs = repeat(sizes.runs, "registry lookups", async || {
            registry.lookups(sizes.registry_lookups)
        })
        .await?;
        let micros = |q: f64| -> anyhow::Result<Vec<f64>> {
            runs.iter()
                .map(|run| Ok(quantile(run, q)? as f64 / 1e3))
                .collect()
        };
        let label = format!("registry lookup, {webhooks} webhooks");
        self.figures.extend([
            Figure::new(format!("{label}, p50"), "µs", micros(0.5)?)?,
            Figure::new(format!("{label}, p99"), "µs", micros(0.99)?)?
                .target(Goal::AtMost(LOOKUP_P99_CEILING_US), ""),
            Figure::new(
                format!("webhookd RSS once it delivered, {webhooks} webhooks"),
                "MiB",
                vec![loaded.rss_mib],
            )?,
            Figure::new(
                format!("webhookd peak RSS, {webhooks} webhooks"),
                "MiB",
                vec![loaded.peak_rss_mib],
            )?,
            Figure::new(
                format!("webhookd start to first delivery, {webhooks} webhooks"),
                "s",
                vec![loaded.first_delivery_seconds],
            )?,
            Figure::new(
                format!("publishing a store of {webhooks} webhooks to the registry log"),
                "s",
                vec![loaded.publish_seconds],
            )?,
            Figure::new(
                format!("rebuilding {webhooks} webhooks from the registry log, start to ready"),
                "s",
                vec![loaded.rebuild_seconds],
            )?,
            Figure::new(
                format!("webhookd peak RSS rebuilding {webhooks} webhooks"),
                "MiB",
                vec![loaded.rebuild_peak_rss_mib],
            )?,
        ]);
        Ok(())
    }

    /// A registry change made through one instance, until the other has it.
    async fn propagation(&mut self) -> anyhow::Result<()> {
        let changes = self.inputs.sizes.propagation_changes;
        let receiver = Receiver::start().await?;
        let runs = repeat(self.inputs.sizes.runs, "propagation", async || {
            self.bench.propagation(&receiver, changes).await
        })
        .await?;
        let at = |q: f64, of: fn(&Propagation) -> &Vec<u64>| -> anyhow::Result<Vec<f64>> {
            runs.iter()
                .map(|run| Ok(quantile(of(run), q)? as f64 / 1e3))
                .collect()
        };
        let label = format!("registry change ({changes} in a row)");
        self.figures.extend([
            Figure::new(
                format!("{label}, written through one instance, p50"),
                "ms",
                at(0.5, |r| &r.write_us)?,
            )?,
            Figure::new(
                format!("{label}, written through one instance, p99"),
                "ms",
                at(0.99, |r| &r.write_us)?,
            )?,
            Figure::new(
                format!("{label}, in effect on the other instance, p50"),
                "ms",
                at(0.5, |r| &r.visible_us)?,
            )?,
            Figure::new(
                format!("{label}, in effect on the other instance, p99"),
                "ms",
                at(0.99, |r| &r.visible_us)?,
            )?,
        ]);
        Ok(())
    }
}
