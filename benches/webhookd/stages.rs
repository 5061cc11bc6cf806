//! Where webhookd's time goes in a latency run: its per-stage histograms
//! (`webhookd_message_stage_seconds`, `webhookd_message_seconds`), read from `/metrics` before the
//! daemon stops. Each run's daemon is new, so what it counted is that run's messages.
//!
//! A mean is exact (the histogram's sum over its count); p50 and p99 are estimated from the
//! buckets the way Prometheus's `histogram_quantile` does, by linear interpolation within the
//! bucket the rank falls in, so they are only as fine as the buckets (25 µs at the bottom).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{ensure, Context};
use http::{Method, StatusCode};
use webhookd::metrics::STAGES;

use crate::http::{bare_client, send};

/// The histogram of a timed message's whole way, beside its stages'.
const TOTAL: &str = "total";

/// One stage's (or the total's) times in one run, in microseconds.
#[derive(Debug, Clone)]
pub struct StageTimes {
    pub name: &'static str,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Every stage of [`STAGES`], in order, then the total.
pub type Breakdown = Vec<StageTimes>;

/// The breakdown of the messages the daemon whose admin listener is `admin` has timed so far.
pub async fn scrape(admin: SocketAddr) -> anyhow::Result<Breakdown> {
    let client = bare_client();
    let (status, _, text) = send(
        &client,
        Method::GET,
        &format!("http://{admin}/metrics"),
        &[],
        "",
    )
    .await?;
    ensure!(status == StatusCode::OK, "/metrics answered {status}");
    parse(&text)
}

/// The breakdown in a `/metrics` text.
fn parse(text: &str) -> anyhow::Result<Breakdown> {
    let mut histograms: BTreeMap<&str, Histogram> = BTreeMap::new();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').context("a series without a value")?;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let labels = labels.trim_end_matches('}');
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"'))
            })
        };
        let (part, which) = if let Some(part) = name.strip_prefix("webhookd_message_stage_seconds_")
        {
            (
                part,
                label("stage").context("a stage series without its stage")?,
            )
        } else if let Some(part) = name.strip_prefix("webhookd_message_seconds_") {
            (part, TOTAL)
        } else {
            continue;
        };
        let value: f64 = value.parse().with_context(|| format!("in {line:?}"))?;
        let histogram = histograms.entry(which).or_default();
        match part {
            "sum" => histogram.sum = value,
            "count" => histogram.count = value as u64,
            "bucket" => {
                let le = label("le").context("a bucket without its bound")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()?
                };
                histogram.buckets.push((bound, value as u64));
            }
            _ => {}
        }
    }
    STAGES
        .iter()
        .chain([&TOTAL])
        .map(|name| {
            let histogram = histograms
                .get(name)
                .with_context(|| format!("no {name} histogram in /metrics"))?;
            histogram.times(name)
        })
        .collect()
}

#[derive(Debug, Default)]
struct Histogram {
    sum: f64,
    count: u64,
    /// (upper bound in seconds, cumulative count), in the order exposed (ascending).
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    fn times(&self, name: &'static str) -> anyhow::Result<StageTimes> {
        ensure!(self.count > 0, "webhookd timed no message in stage {name}");
        Ok(StageTimes {
            name,
            mean_us: self.sum / self.count as f64 * 1e6,
            p50_us: self.quantile(0.5) * 1e6,
            p99_us: self.quantile(0.99) * 1e6,
        })
    }

    /// The `q` quantile in seconds, interpolated within its bucket; a rank in the open top
    /// bucket reads as the last finite bound.
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0);
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                if bound.is_infinite() {
                    return lower.0;
                }
                let within = (cumulative - lower.1) as f64;
                let share = if within == 0.0 {
                    1.0
                } else {
                    (rank - lower.1 as f64) / within
                };
                return lower.0 + (bound - lower.0) * share;
            }
            lower = (bound, cumulative);
        }
        lower.0
    }
}
