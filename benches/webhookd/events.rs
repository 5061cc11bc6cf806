//! The events the benchmark publishes, and the clock that times them.
//!
//! Every body is webhookd's own `message_created` sample (the typed model, ≈ 1.3 KiB), with one
//! field put in front: `"bench_sent_ns":"<20 digits>"`. The field has a fixed width at a fixed
//! offset, so stamping a body just before it is published overwrites 20 bytes in place, and the
//! receiver reads the stamp back without parsing JSON. webhookd forwards bodies byte for byte, so
//! the stamp arrives where it was written. Publisher and receiver live in this one process and
//! read the same monotonic clock, so their difference is publish-to-receipt latency.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use webhookd::event::{sample, SampleContent};

const STAMP_KEY: &[u8] = br#"{"bench_sent_ns":""#;
const STAMP_DIGITS: usize = 20;

/// Nanoseconds since the first call in this process: the one clock publisher and receiver share.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let nanos = EPOCH.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// One body per account, accounts `1..=count`; event `i` goes to account `1 + i % count`.
#[derive(Clone)]
pub struct Bodies {
    bodies: Vec<Bytes>,
}

impl Bodies {
    pub fn new(count: u64) -> Bodies {
        let bodies = (1..=count.max(1))
            .map(|account| Bytes::from(unstamped(account)))
            .collect();
        Bodies { bodies }
    }

    pub fn accounts(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.bodies.len() as u64
    }

    /// The body of event `i`, stamped zero (throughput runs do not read the stamp).
    pub fn get(&self, i: u64) -> &Bytes {
        // `bodies` is never empty: `new` is only called with a positive count.
        &self.bodies[(i % self.bodies.len() as u64) as usize]
    }

    /// The body of event `i`, stamped with `sent_ns`.
    pub fn stamped(&self, i: u64, sent_ns: u64) -> Vec<u8> {
        let mut body = self.get(i).to_vec();
        let digits = format!("{sent_ns:0STAMP_DIGITS$}");
        body[STAMP_KEY.len()..STAMP_KEY.len() + STAMP_DIGITS].copy_from_slice(digits.as_bytes());
        body
    }

    /// Mean body size, for the report.
    pub fn mean_len(&self) -> usize {
        self.bodies.iter().map(Bytes::len).sum::<usize>() / self.bodies.len().max(1)
    }
}

fn unstamped(account: u64) -> Vec<u8> {
    let sample = sample("message_created", account, SampleContent::Text);
    let mut body = Vec::with_capacity(STAMP_KEY.len() + STAMP_DIGITS + 2 + sample.len());
    body.extend_from_slice(STAMP_KEY);
    body.extend_from_slice(&[b'0'; STAMP_DIGITS]);
    body.extend_from_slice(b"\",");
    // The sample is a JSON object: drop its `{`, which the stamp's own opening replaces.
    body.extend_from_slice(sample.get(1..).unwrap_or_default());
    body
}

/// The stamp of a received body; `None` for zero (unstamped) or a body the benchmark did not
/// write.
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let digits = body.get(STAMP_KEY.len()..STAMP_KEY.len() + STAMP_DIGITS)?;
    if !body.starts_with(STAMP_KEY) {
        return None;
    }
    let sent = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    (sent > 0).then_some(sent)
}
