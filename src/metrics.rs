//! The series behind `/metrics`, in the Prometheus text format.
//!
//! `prometheus-client` owns the registry, the typed label sets and the exposition format. The
//! delivery path never takes a lock to count: the series it touches for every message (events by
//! name, attempts by outcome, the latency histogram) are created once, up front, for their closed
//! label sets, and each increment is one atomic add on a handle held here. Only the rarer series
//! (dead letters by reason, retries by delay bucket) are looked up in their family when counted.
//!
//! The histograms are webhookd's own, because the crate's takes a mutex per observation. Their
//! buckets are atomics, and a count is not kept apart but summed from the buckets when scraped,
//! so a scrape never shows a count that disagrees with the buckets (the sum may trail by the
//! observations in flight during the scrape, as with any lock-free histogram).
//!
//! Besides the request latency, every timed message's way is split into its stages
//! (`webhookd_message_stage_seconds`, see `service/timeline.rs`) beside its total
//! (`webhookd_message_seconds`). Each stage is measured in whole microseconds from the message's
//! first mark, so the stages' sums add up to the total's sum exactly.
//!
//! Label values are bounded by construction: event names outside Chatwoot's twelve are counted as
//! `other`, and reasons and buckets come from closed sets, so a hostile publisher cannot blow up
//! the series count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::event::KNOWN_EVENTS;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the delivery latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0,
];

/// Upper bounds (seconds) of the message stage histograms: most stages take microseconds.
const STAGE_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0, 5.0, 15.0,
];

/// The stages of a message's way, in order, as `webhookd_message_stage_seconds` labels them
/// (defined in `service/timeline.rs`).
pub const STAGES: [&str; 6] = [
    "dispatch", "decode", "lookup", "prepare", "response", "settle",
];

/// What an attempt led to, as `webhookd_deliveries_total` labels it.
const OUTCOMES: [&str; 3] = ["delivered", "retry", "dead"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabel {
    bucket: String,
}

pub struct Metrics {
    registry: Registry,
    /// One counter per known event name, in [`KNOWN_EVENTS`] order, then `other`.
    events: Vec<Counter>,
    /// One counter per outcome, in [`OUTCOMES`] order.
    deliveries: Vec<Counter>,
    dead_letters: Family<ReasonLabel, Counter>,
    retries: Family<BucketLabel, Counter>,
    jobs_dropped: Counter,
    webhooks_disabled: Family<ReasonLabel, Counter>,
    paced: Counter,
    in_flight: Gauge,
    circuits_open: Gauge,
    circuits_opened: Counter,
    broker_connected: Gauge,
    reconnects: Counter,
    latency: Histogram,
    /// One histogram per stage, in [`STAGES`] order.
    stages: Vec<Histogram>,
    message: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        // Help texts have no closing period: the crate adds one.
        let mut registry = Registry::default();
        registry.register(
            "webhookd_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let events_family = Family::<EventLabel, Counter>::default();
        let events = KNOWN_EVENTS
            .iter()
            .chain(&["other"])
            .map(|event| events_family.get_or_create(&EventLabel { event }).clone())
            .collect();
        registry.register(
            "webhookd_events",
            "Events consumed, by event name",
            events_family,
        );
        let deliveries_family = Family::<OutcomeLabel, Counter>::default();
        let deliveries = OUTCOMES
            .iter()
            .map(|outcome| {
                deliveries_family
                    .get_or_create(&OutcomeLabel { outcome })
                    .clone()
            })
            .collect();
        registry.register(
            "webhookd_deliveries",
            "Delivery attempts, by outcome",
            deliveries_family,
        );
        let stages_family =
            Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(&STAGE_BUCKETS)
            });
        let stages = STAGES
            .iter()
            .map(|stage| stages_family.get_or_create(&StageLabel { stage }).clone())
            .collect();
        registry.register(
            "webhookd_message_stage_seconds",
            "Time a message spent in each stage of its way, for messages acked after exactly one request",
            stages_family,
        );
        let metrics = Metrics {
            events,
            deliveries,
            dead_letters: Family::default(),
            retries: Family::default(),
            jobs_dropped: Counter::default(),
            webhooks_disabled: Family::default(),
            paced: Counter::default(),
            in_flight: Gauge::default(),
            circuits_open: Gauge::default(),
            circuits_opened: Counter::default(),
            broker_connected: Gauge::default(),
            reconnects: Counter::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            stages,
            message: Histogram::new(&STAGE_BUCKETS),
            registry: Registry::default(),
        };
        registry.register(
            "webhookd_dead_letters",
            "Messages parked in the dead-letter queue, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "webhookd_retries_scheduled",
            "Retry jobs confirmed in a delay queue, by delay bucket",
            metrics.retries.clone(),
        );
        registry.register(
            "webhookd_jobs_dropped",
            "Retry jobs dropped because their webhook was deleted",
            metrics.jobs_dropped.clone(),
        );
        registry.register(
            "webhookd_webhooks_disabled",
            "Webhooks webhookd disabled, by reason (gone: a 410; failing: delivery.disable_after)",
            metrics.webhooks_disabled.clone(),
        );
        registry.register(
            "webhookd_deliveries_paced",
            "Deliveries sent to wait in a delay queue by their webhook's rate limit",
            metrics.paced.clone(),
        );
        registry.register(
            "webhookd_deliveries_in_flight",
            "HTTP requests to webhooks in flight",
            metrics.in_flight.clone(),
        );
        registry.register(
            "webhookd_circuits_open",
            "Webhook URLs whose circuit is open: their deliveries wait in the retry queue",
            metrics.circuits_open.clone(),
        );
        registry.register(
            "webhookd_circuits_opened",
            "Times an endpoint's circuit opened after failures or a stall",
            metrics.circuits_opened.clone(),
        );
        registry.register(
            "webhookd_broker_connected",
            "1 while consuming from the broker",
            metrics.broker_connected.clone(),
        );
        registry.register(
            "webhookd_broker_reconnects",
            "Times webhookd consumed again after losing the broker",
            metrics.reconnects.clone(),
        );
        registry.register(
            "webhookd_delivery_duration_seconds",
            "Time from sending a webhook request to its outcome",
            metrics.latency.clone(),
        );
        registry.register(
            "webhookd_message_seconds",
            "Time from the consumer handing a message over to its ack, for the messages timed by stage",
            metrics.message.clone(),
        );
        registry.register_collector(Box::new(Process));
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// One event consumed from the work queue (retry jobs are not events).
    pub fn event(&self, name: &str) {
        let index = KNOWN_EVENTS
            .iter()
            .position(|known| *known == name)
            .unwrap_or(KNOWN_EVENTS.len());
        self.events[index].inc();
    }

    /// One delivery attempt finished with `outcome` (`delivered`, `retry`, `dead`) after `latency`.
    pub fn delivery(&self, outcome: &'static str, latency: Duration) {
        if let Some(index) = OUTCOMES.iter().position(|known| *known == outcome) {
            self.deliveries[index].inc();
        }
        self.latency
            .observe_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// One message's way, timed: `marks` begin its stages (in [`STAGES`] order), `settled` ends
    /// the last. Each stage is counted in whole microseconds from the first mark, so the stages
    /// add up to the total exactly.
    pub fn message_timed(&self, marks: &[Instant; STAGES.len()], settled: Instant) {
        let micros = |at: Instant| {
            u64::try_from(at.saturating_duration_since(marks[0]).as_micros()).unwrap_or(u64::MAX)
        };
        let mut from = 0;
        for (histogram, end) in self.stages.iter().zip(marks[1..].iter().chain([&settled])) {
            let to = micros(*end).max(from);
            histogram.observe_micros(to - from);
            from = to;
        }
        self.message.observe_micros(from);
    }

    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A retry job confirmed in the delay queue of `bucket` (labelled like `5s`; the buckets
    /// are the schedule's ladder, a bounded set).
    pub fn retry_scheduled(&self, bucket: Duration) {
        self.retries
            .get_or_create(&BucketLabel {
                bucket: humantime::format_duration(bucket).to_string(),
            })
            .inc();
    }

    /// A retry job whose webhook was deleted while it waited.
    pub fn job_dropped(&self) {
        self.jobs_dropped.inc();
    }

    /// webhookd disabled a webhook for `reason` (`gone`, `failing`).
    pub fn webhook_disabled(&self, reason: &str) {
        self.webhooks_disabled
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A delivery waits for its webhook's rate limit.
    pub fn paced(&self) {
        self.paced.inc();
    }

    /// Counts one request in flight until the guard drops, so a request abandoned half-way (its
    /// task cancelled at shutdown or on broker loss) is uncounted too.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// An endpoint's circuit opened: its deliveries wait out a cool-down.
    pub fn circuit_opened(&self) {
        self.circuits_open.inc();
        self.circuits_opened.inc();
    }

    /// An open circuit closed because its endpoint answered again.
    pub fn circuit_closed(&self) {
        self.circuits_open.dec();
    }

    pub fn broker_connected(&self, connected: bool) {
        self.broker_connected.set(i64::from(connected));
    }

    /// A broker session after the first one started consuming.
    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    /// The gauges the console's overview shows.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            in_flight: self.in_flight.get(),
            circuits_open: self.circuits_open.get(),
            broker_connected: self.broker_connected.get() == 1,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoder error would be a bug in a series.
        if let Err(error) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "rendering /metrics failed");
        }
        out
    }
}

/// What the gauges read now.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub in_flight: i64,
    pub circuits_open: i64,
    pub broker_connected: bool,
}

/// One request counted in `webhookd_deliveries_in_flight`, uncounted on drop.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A histogram that counts with atomics only; see the module doc for why it is not the crate's.
#[derive(Debug, Clone)]
struct Histogram(std::sync::Arc<HistogramCounts>);

#[derive(Debug)]
struct HistogramCounts {
    /// Upper bounds, in seconds.
    bounds: &'static [f64],
    /// One per bound, then one for everything above the last.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram(std::sync::Arc::new(HistogramCounts {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }))
    }

    fn observe_micros(&self, micros: u64) {
        let seconds = micros as f64 / 1e6;
        let index = self
            .0
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.0.bounds.len());
        self.0.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.0.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Each bucket is read once; the count is their total, so the two always agree.
        let counts: Vec<u64> = self
            .0
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        let sum = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The usual `process_*` series, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct Process;

/// Clock ticks per second in `/proc/[pid]/stat`: the kernel's USER_HZ, 100 on every Linux
/// architecture webhookd runs on.
const USER_HZ: f64 = 100.0;

impl prometheus_client::collector::Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcessStat::read() else {
            return Ok(());
        };
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: f64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)
        };
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: f64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)
        };
        counter(
            &mut encoder,
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            stat.cpu_seconds,
        )?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            stat.resident_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "Start time of the process, in seconds since the Unix epoch",
            stat.start_time_seconds,
        )?;
        gauge(
            &mut encoder,
            "process_open_fds",
            "Open file descriptors",
            stat.open_fds,
        )?;
        gauge(
            &mut encoder,
            "process_max_fds",
            "The limit on open file descriptors",
            stat.max_fds,
        )
    }
}

struct ProcessStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
}

impl ProcessStat {
    fn read() -> Option<ProcessStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses; fields after its closing
        // parenthesis are plain numbers, the first of them field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let resident_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|line| line.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<f64>()
            .ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Some(ProcessStat {
            cpu_seconds: (field(14)? + field(15)?) / USER_HZ,
            resident_bytes: resident_kib * 1024.0,
            start_time_seconds: boot_time + field(22)? / USER_HZ,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_event_names_share_one_series() {
        let metrics = Metrics::default();
        metrics.event("message_created");
        metrics.event("x-evil-1");
        metrics.event("x-evil-2");
        let text = metrics.render();
        assert!(text.contains("webhookd_events_total{event=\"message_created\"} 1"));
        assert!(text.contains("webhookd_events_total{event=\"other\"} 2"));
        assert!(!text.contains("x-evil"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_the_count_is_their_total() {
        let metrics = Metrics::default();
        metrics.delivery("delivered", Duration::from_micros(500));
        metrics.delivery("delivered", Duration::from_millis(20));
        metrics.delivery("retry", Duration::from_secs(60));
        let text = metrics.render();
        for line in [
            "webhookd_delivery_duration_seconds_bucket{le=\"0.001\"} 1",
            "webhookd_delivery_duration_seconds_bucket{le=\"0.025\"} 2",
            "webhookd_delivery_duration_seconds_bucket{le=\"15\"} 2",
            "webhookd_delivery_duration_seconds_bucket{le=\"+Inf\"} 3",
            "webhookd_delivery_duration_seconds_count 3",
            "webhookd_deliveries_total{outcome=\"delivered\"} 2",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn a_timed_message_s_stages_add_up_to_its_total() {
        let metrics = Metrics::default();
        let start = Instant::now();
        // Uneven gaps, some below a microsecond, so rounding each stage apart would not add up.
        let marks: [Instant; 6] =
            std::array::from_fn(|k| start + Duration::from_nanos(1_700 * (k * k) as u64 + 300));
        metrics.message_timed(&marks, start + Duration::from_nanos(3_000_450));
        let text = metrics.render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} in:\n{text}"))
        };
        let stages: f64 = STAGES
            .iter()
            .map(|stage| {
                value(&format!(
                    "webhookd_message_stage_seconds_sum{{stage=\"{stage}\"}}"
                ))
            })
            .sum();
        let total = value("webhookd_message_seconds_sum");
        assert!((stages - total).abs() < 1e-9, "{stages} vs {total}");
        assert!((total - 0.003).abs() < 1e-6, "{total}");
        for stage in STAGES {
            let count = format!("webhookd_message_stage_seconds_count{{stage=\"{stage}\"}} 1");
            assert!(text.contains(&count), "{count} in:\n{text}");
        }
    }

    #[test]
    fn an_abandoned_request_leaves_the_in_flight_gauge() {
        let metrics = Metrics::default();
        let first = metrics.in_flight();
        let second = metrics.in_flight();
        assert!(metrics.render().contains("webhookd_deliveries_in_flight 2"));
        drop(first);
        drop(second);
        assert!(metrics.render().contains("webhookd_deliveries_in_flight 0"));
    }

    #[test]
    fn retries_are_labelled_by_bucket() {
        let metrics = Metrics::default();
        metrics.retry_scheduled(Duration::from_secs(5));
        metrics.retry_scheduled(Duration::from_millis(250));
        metrics.retry_scheduled(Duration::from_secs(5));
        let text = metrics.render();
        assert!(text.contains("webhookd_retries_scheduled_total{bucket=\"5s\"} 2"));
        assert!(text.contains("webhookd_retries_scheduled_total{bucket=\"250ms\"} 1"));
    }

    #[test]
    fn build_info_and_process_series_are_exposed() {
        let text = Metrics::default().render();
        let version = format!(
            "webhookd_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        let resident = text
            .lines()
            .find_map(|line| line.strip_prefix("process_resident_memory_bytes "))
            .and_then(|value| value.parse::<f64>().ok())
            .expect("process_resident_memory_bytes");
        assert!(resident > 1e6, "{resident}");
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
