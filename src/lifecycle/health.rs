//! Each webhook's health, kept in memory from the attempts this instance makes.
//!
//! Every attempt passes through here, so the tracker must cost the delivery path almost nothing:
//! it is a map split by webhook id into shards, each behind its own lock, so deliveries to
//! different webhooks rarely meet. It sends nothing to the broker and writes nothing to disk.
//!
//! Memory is fixed per webhook: the last success and failure with their statuses, the failure
//! streak, and a ring of [`SLOTS`] two-hour slots, each counting successes, failures and a
//! latency histogram of [`LATENCY_BOUNDS_MS`] buckets. The "24 h" figures read every slot younger
//! than 24 h, so they cover the last 22 to 24 hours; the percentiles are the upper bound of the
//! bucket they fall in, which is what a fixed-size histogram can say.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Shards;

/// The tracker is split into this many maps by webhook id.
/// The window's slots, and how long each one counts for.
const SLOTS: usize = 12;
const SLOT_SECS: u64 = 2 * 3600;
/// Upper bounds of the latency buckets, in milliseconds; one more bucket takes the rest.
const LATENCY_BOUNDS_MS: [u64; 15] = [
    2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 15_000, 30_000, 60_000,
];
/// The longest error text kept as the last failure.
const MAX_ERROR_CHARS: usize = 200;

/// One webhook's health as the admin API, the CLI and the console show it: a plain value, so it
/// serialises as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// RFC 3339 with milliseconds.
    pub last_success_at: Option<String>,
    /// The last successful attempt's status (which 2xx).
    #[serde(default)]
    pub last_success_status: Option<u16>,
    pub last_failure_at: Option<String>,
    /// The last failed attempt's status, or its error when there was no answer.
    pub last_failure_status: Option<u16>,
    pub last_failure_error: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The first failure after the last success, while failures go on: what
    /// `delivery.disable_after` counts from.
    pub failing_since: Option<String>,
    /// Attempts in the last 24 hours, and the share of them answered 2xx (none: `null`).
    pub attempts_24h: u64,
    pub success_rate_24h: Option<f64>,
    /// Upper bounds of the latency buckets the median and the 99th percentile fall in.
    pub latency_p50_ms_24h: Option<u64>,
    pub latency_p99_ms_24h: Option<u64>,
    pub circuit: Circuit,
}

/// The circuit of the webhook's URL (`service/endpoints.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    /// Deliveries wait in the delay queues for the cool-down.
    Open,
    /// The cool-down is over and one delivery is let through to test the URL.
    HalfOpen,
}

/// One attempt as the tracker takes it.
#[derive(Debug, Clone, Copy)]
pub struct Attempted<'a> {
    /// The webhook's `updated_at`: a change to the webhook (enabling it again, a new URL) ends
    /// the failure streak, on every instance alike, since each reads the change in the record.
    pub version: &'a str,
    pub at: SystemTime,
    /// Answered 2xx.
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub latency: Duration,
}

/// What a notice says of a failing webhook.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failing {
    pub since: Option<SystemTime>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
}

/// Every tracked webhook's health.
#[derive(Default)]
pub struct Tracker {
    shards: Shards<Entry>,
}

#[derive(Default)]
struct Entry {
    /// The webhook's `updated_at` when the streak below was counted.
    version: Box<str>,
    last_success: Option<SystemTime>,
    success_status: Option<u16>,
    last_failure: Option<SystemTime>,
    last_status: Option<u16>,
    last_error: Option<Box<str>>,
    consecutive: u32,
    failing_since: Option<SystemTime>,
    /// Set by the one delivery that goes on to disable the webhook, so concurrent ones do not
    /// all publish a notice: to the `updated_at` of the record it disables, so that once the
    /// webhook is changed (enabled again) a later disable is claimed afresh.
    disabling: Option<Box<str>>,
    slots: [Slot; SLOTS],
}

#[derive(Default, Clone, Copy)]
struct Slot {
    /// Which two-hour period since the epoch the counts are of.
    period: u64,
    ok: u32,
    failed: u32,
    latency: [u32; LATENCY_BOUNDS_MS.len() + 1],
}

impl Tracker {
    /// Takes one attempt; returns since when the webhook has been failing, if it is.
    pub fn record(&self, webhook_id: &str, attempt: &Attempted<'_>) -> Option<SystemTime> {
        let mut shard = self.shards.lock(webhook_id);
        let entry = match shard.get_mut(webhook_id) {
            Some(entry) => entry,
            None => shard.entry(webhook_id.to_owned()).or_default(),
        };
        entry.record(attempt);
        entry.failing_since
    }

    /// Since when the webhook, as it stands at `version`, has been failing, if it is.
    pub fn failing_since(&self, webhook_id: &str, version: &str) -> Option<SystemTime> {
        self.shards
            .lock(webhook_id)
            .get(webhook_id)
            .filter(|entry| &*entry.version == version)
            .and_then(|entry| entry.failing_since)
    }

    /// What a notice says of the webhook's failures.
    pub fn failing(&self, webhook_id: &str) -> Failing {
        self.shards
            .lock(webhook_id)
            .get(webhook_id)
            .map(|entry| Failing {
                since: entry.failing_since,
                last_status: entry.last_status,
                last_error: entry.last_error.as_deref().map(str::to_owned),
            })
            .unwrap_or_default()
    }

    /// `true` for the first caller to disable the webhook as it stands at `version` (its
    /// `updated_at`): that one disables it.
    pub fn claim_disabling(&self, webhook_id: &str, version: &str) -> bool {
        let mut shard = self.shards.lock(webhook_id);
        let entry = shard.entry(webhook_id.to_owned()).or_default();
        if entry.disabling.as_deref() == Some(version) {
            return false;
        }
        entry.disabling = Some(version.into());
        true
    }

    /// The claimed disable did not happen (a publish or the store failed): the next failure
    /// tries again.
    pub fn release_disabling(&self, webhook_id: &str) {
        if let Some(entry) = self.shards.lock(webhook_id).get_mut(webhook_id) {
            entry.disabling = None;
        }
    }

    /// The webhook was deleted.
    pub fn forget(&self, webhook_id: &str) {
        self.shards.lock(webhook_id).remove(webhook_id);
    }

    /// The webhook's health at `now`, with its URL's circuit.
    pub fn health(&self, webhook_id: &str, now: SystemTime, circuit: Circuit) -> Health {
        let shard = self.shards.lock(webhook_id);
        let entry = shard.get(webhook_id);
        let text =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        let mut window = Slot::default();
        if let Some(entry) = entry {
            let current = period(now);
            for slot in entry
                .slots
                .iter()
                .filter(|s| current.saturating_sub(s.period) < SLOTS as u64)
            {
                window.ok += slot.ok;
                window.failed += slot.failed;
                for (sum, count) in window.latency.iter_mut().zip(slot.latency) {
                    *sum += count;
                }
            }
        }
        let attempts = u64::from(window.ok) + u64::from(window.failed);
        Health {
            last_success_at: text(entry.and_then(|e| e.last_success)),
            last_success_status: entry.and_then(|e| e.success_status),
            last_failure_at: text(entry.and_then(|e| e.last_failure)),
            last_failure_status: entry.and_then(|e| e.last_status),
            last_failure_error: entry.and_then(|e| e.last_error.as_deref().map(str::to_owned)),
            consecutive_failures: entry.map_or(0, |e| e.consecutive),
            failing_since: text(entry.and_then(|e| e.failing_since)),
            attempts_24h: attempts,
            success_rate_24h: (attempts > 0).then(|| f64::from(window.ok) / attempts as f64),
            latency_p50_ms_24h: percentile(&window.latency, 0.50),
            latency_p99_ms_24h: percentile(&window.latency, 0.99),
            circuit,
        }
    }
}

impl Entry {
    fn record(&mut self, attempt: &Attempted<'_>) {
        if *self.version != *attempt.version {
            self.version = attempt.version.into();
            self.consecutive = 0;
            self.failing_since = None;
        }
        let at = attempt.at;
        if attempt.ok {
            self.last_success = Some(at);
            self.success_status = attempt.status;
            self.consecutive = 0;
            self.failing_since = None;
        } else {
            self.last_failure = Some(at);
            self.last_status = attempt.status;
            self.last_error = attempt.error.map(|error| {
                error
                    .chars()
                    .take(MAX_ERROR_CHARS)
                    .collect::<String>()
                    .into()
            });
            self.consecutive = self.consecutive.saturating_add(1);
            self.failing_since.get_or_insert(at);
        }
        let now = period(at);
        let slot = &mut self.slots[(now % SLOTS as u64) as usize];
        if slot.period != now {
            *slot = Slot {
                period: now,
                ..Slot::default()
            };
        }
        if attempt.ok {
            slot.ok = slot.ok.saturating_add(1);
        } else {
            slot.failed = slot.failed.saturating_add(1);
        }
        let millis = u64::try_from(attempt.latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&bound| millis <= bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        slot.latency[bucket] = slot.latency[bucket].saturating_add(1);
    }
}

/// The two-hour period since the epoch that `t` falls in.
fn period(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / SLOT_SECS
}

/// The upper bound of the bucket the `q` quantile falls in; the last bucket, which has none,
/// reads as the last bound.
fn percentile(buckets: &[u32], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile, 1-based: the median of 4 is the 2nd, the p99 of 4 the 4th.
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (index, &count) in buckets.iter().enumerate() {
        seen += u64::from(count);
        if seen >= rank {
            let last = LATENCY_BOUNDS_MS.len() - 1;
            return Some(LATENCY_BOUNDS_MS[index.min(last)]);
        }
    }
    None
}

/// Whether a webhook failing since `since` is past `disable_after` at `now` (`None`: never).
pub fn past_disable_after(
    since: Option<SystemTime>,
    disable_after: Option<Duration>,
    now: SystemTime,
) -> bool {
    match (since, disable_after) {
        (Some(since), Some(after)) => now.duration_since(since).is_ok_and(|d| d >= after),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at: SystemTime, ok: bool, latency_ms: u64) -> Attempted<'static> {
        Attempted {
            version: "v1",
            at,
            ok,
            status: Some(if ok { 200 } else { 503 }),
            error: None,
            latency: Duration::from_millis(latency_ms),
        }
    }

    #[test]
    fn a_failure_streak_starts_at_its_first_failure_and_ends_at_a_success() {
        let tracker = Tracker::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(tracker.record("w", &attempt(t0, true, 10)), None);
        assert_eq!(
            tracker.record("w", &attempt(later(1), false, 10)),
            Some(later(1))
        );
        assert_eq!(
            tracker.record("w", &attempt(later(5), false, 10)),
            Some(later(1))
        );
        let health = tracker.health("w", later(6), Circuit::Closed);
        assert_eq!(health.consecutive_failures, 2);
        assert_eq!(health.last_failure_status, Some(503));
        assert_eq!(health.last_success_status, Some(200));
        assert_eq!(tracker.record("w", &attempt(later(7), true, 10)), None);
        let health = tracker.health("w", later(8), Circuit::Closed);
        assert_eq!(health.consecutive_failures, 0);
        assert_eq!(
            health.last_success_at.as_deref(),
            Some("1970-01-12T13:46:47.000Z")
        );
    }

    #[test]
    fn the_window_counts_the_last_day_and_reads_percentiles_from_buckets() {
        let tracker = Tracker::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(100 * SLOT_SECS);
        // A day and a half ago: outside the window.
        let old = t0 - Duration::from_secs(36 * 3600);
        for _ in 0..10 {
            tracker.record("w", &attempt(old, false, 40_000));
        }
        // 75 successes at 3 ms, 24 failures at 40 ms, one at 20 s.
        for n in 0..100 {
            let (ok, latency) = match n {
                0..75 => (true, 3),
                75..99 => (false, 40),
                _ => (false, 20_000),
            };
            tracker.record("w", &attempt(t0 + Duration::from_secs(n), ok, latency));
        }
        let health = tracker.health("w", t0 + Duration::from_secs(3600), Circuit::Open);
        assert_eq!(health.attempts_24h, 100);
        assert_eq!(health.success_rate_24h, Some(0.75));
        assert_eq!(health.latency_p50_ms_24h, Some(5));
        assert_eq!(health.latency_p99_ms_24h, Some(50));
        assert_eq!(health.circuit, Circuit::Open);
        let empty = tracker.health("other", t0, Circuit::Closed);
        assert_eq!((empty.attempts_24h, empty.success_rate_24h), (0, None));
    }

    #[test]
    fn one_caller_claims_a_disable_until_it_is_released_or_the_webhook_changes() {
        let tracker = Tracker::default();
        assert!(tracker.claim_disabling("w", "t1"));
        assert!(!tracker.claim_disabling("w", "t1"));
        tracker.release_disabling("w");
        assert!(tracker.claim_disabling("w", "t1"));
        assert!(tracker.claim_disabling("w", "t2"), "enabled again since");
    }

    #[test]
    fn disable_after_counts_from_the_first_failure_and_zero_never_fires() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let after = Some(Duration::from_secs(3));
        let at = |s| t0 + Duration::from_secs(s);
        assert!(!past_disable_after(None, after, at(10)));
        assert!(!past_disable_after(Some(t0), after, at(2)));
        assert!(past_disable_after(Some(t0), after, at(3)));
        assert!(!past_disable_after(Some(t0), None, at(1_000_000)));
    }

    #[test]
    fn a_change_to_the_webhook_ends_its_failure_streak() {
        let tracker = Tracker::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        tracker.record("w", &attempt(t0, false, 10));
        assert_eq!(tracker.failing_since("w", "v1"), Some(t0));
        assert_eq!(
            tracker.failing_since("w", "v2"),
            None,
            "enabled again since"
        );
        let later = t0 + Duration::from_secs(60);
        let after_change = Attempted {
            version: "v2",
            ..attempt(later, false, 10)
        };
        assert_eq!(tracker.record("w", &after_change), Some(later));
        let health = tracker.health("w", later, Circuit::Closed);
        assert_eq!(health.consecutive_failures, 1);
        assert_eq!(health.attempts_24h, 2, "the window keeps both");
    }
}
