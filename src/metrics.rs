//! Counters for `/metrics`, rendered in the Prometheus text format by hand.
//!
//! A dozen series do not justify a metrics framework and its registry; atomics and a few small
//! maps keep the hot path to an increment. Label values are bounded by construction (event names
//! outside Chatwoot's twelve are counted as `other`, reasons and buckets come from closed sets),
//! so a hostile publisher cannot blow up the series count.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::event::KNOWN_EVENTS;

/// Upper bounds (seconds) of the delivery latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0,
];

#[derive(Default)]
pub struct Metrics {
    events: LabeledCounter,
    deliveries: LabeledCounter,
    dead_letters: LabeledCounter,
    retries: LabeledCounter,
    jobs_dropped: AtomicU64,
    in_flight: AtomicI64,
    circuits_open: AtomicI64,
    circuits_opened: AtomicU64,
    broker_connected: AtomicI64,
    reconnects: AtomicU64,
    latency: Histogram,
}

impl Metrics {
    /// One event consumed from the work queue (retry jobs are not events).
    pub fn event(&self, name: &str) {
        let label = if KNOWN_EVENTS.contains(&name) {
            name
        } else {
            "other"
        };
        self.events.inc(label);
    }

    /// One delivery attempt finished with `outcome` (`delivered`, `retry`, `dead`) after `latency`.
    pub fn delivery(&self, outcome: &'static str, latency: Duration) {
        self.deliveries.inc(outcome);
        self.latency.observe(latency);
    }

    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters.inc(reason);
    }

    /// A retry job confirmed in the delay queue of `bucket` (labelled like `5s`; the buckets
    /// are the schedule's ladder, a bounded set).
    pub fn retry_scheduled(&self, bucket: Duration) {
        self.retries
            .inc(&humantime::format_duration(bucket).to_string());
    }

    /// A retry job whose webhook was deleted or disabled while it waited.
    pub fn job_dropped(&self) {
        self.jobs_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request in flight until the guard drops, so a request abandoned half-way (its
    /// task cancelled at shutdown or on broker loss) is uncounted too.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// An endpoint's circuit opened (DESIGN.md §3): its deliveries wait out a cool-down.
    pub fn circuit_opened(&self) {
        self.circuits_open.fetch_add(1, Ordering::Relaxed);
        self.circuits_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// An open circuit closed because its endpoint answered again.
    pub fn circuit_closed(&self) {
        self.circuits_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn broker_connected(&self, connected: bool) {
        self.broker_connected
            .store(i64::from(connected), Ordering::Relaxed);
    }

    /// A broker session after the first one started consuming.
    pub fn reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.events.render(
            &mut out,
            "webhookd_events_total",
            "Events consumed, by event name.",
            "event",
        );
        self.deliveries.render(
            &mut out,
            "webhookd_deliveries_total",
            "Delivery attempts, by outcome.",
            "outcome",
        );
        self.dead_letters.render(
            &mut out,
            "webhookd_dead_letters_total",
            "Messages parked in the dead-letter queue, by reason.",
            "reason",
        );
        self.retries.render(
            &mut out,
            "webhookd_retries_scheduled_total",
            "Retry jobs confirmed in a delay queue, by delay bucket.",
            "bucket",
        );
        scalar(
            &mut out,
            "webhookd_jobs_dropped_total",
            "counter",
            "Retry jobs dropped because their webhook was deleted or disabled.",
            self.jobs_dropped.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "webhookd_deliveries_in_flight",
            "gauge",
            "HTTP requests to webhooks in flight.",
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "webhookd_circuits_open",
            "gauge",
            "Webhook URLs whose circuit is open: their deliveries wait in the retry queue.",
            self.circuits_open.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "webhookd_circuits_opened_total",
            "counter",
            "Times an endpoint's circuit opened after failures or a stall.",
            self.circuits_opened.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "webhookd_broker_connected",
            "gauge",
            "1 while consuming from the broker.",
            self.broker_connected.load(Ordering::Relaxed) as f64,
        );
        scalar(
            &mut out,
            "webhookd_broker_reconnects_total",
            "counter",
            "Times webhookd consumed again after losing the broker.",
            self.reconnects.load(Ordering::Relaxed) as f64,
        );
        self.latency
            .render(&mut out, "webhookd_delivery_duration_seconds");
        out
    }
}

/// One request counted in `webhookd_deliveries_in_flight`, uncounted on drop.
pub struct InFlight<'a>(&'a AtomicI64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

impl LabeledCounter {
    fn inc(&self, label: &str) {
        if let Ok(mut map) = self.0.lock() {
            match map.get_mut(label) {
                Some(count) => *count += 1,
                None => {
                    map.insert(label.to_owned(), 1);
                }
            }
        }
    }

    fn render(&self, out: &mut String, name: &str, help: &str, label: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        if let Ok(map) = self.0.lock() {
            for (value, count) in map.iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
            }
        }
    }
}

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str) {
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a webhook request to its outcome.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
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
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.delivery("delivered", Duration::from_micros(500));
        metrics.delivery("delivered", Duration::from_millis(20));
        metrics.delivery("retry", Duration::from_secs(60));
        let text = metrics.render();
        assert!(text.contains("webhookd_delivery_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("webhookd_delivery_duration_seconds_bucket{le=\"0.025\"} 2"));
        assert!(text.contains("webhookd_delivery_duration_seconds_bucket{le=\"15\"} 2"));
        assert!(text.contains("webhookd_delivery_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("webhookd_deliveries_total{outcome=\"delivered\"} 2"));
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
}
