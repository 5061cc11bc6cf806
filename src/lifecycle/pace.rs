//! A webhook's rate limit: each delivery takes a send slot, `1/rate` after the one before.
//!
//! A delivery whose slot lies ahead is not held in memory (it would hold its message's place in
//! the prefetch window, and so every other receiver's events behind it): it waits in a delay
//! queue, carrying its slot in `x-webhookd-not-before`, and is sent once that time has come
//! without taking another. So a backlog of a thousand events is spread over the slots ahead at
//! once, each hop to a delay queue costs one confirmed publish, and the waits add no attempt.
//!
//! A 429 with `Retry-After` halves the rate until that time has passed: the receiver said it is
//! overloaded, and the slots it is given thin out by themselves.
//!
//! The slots are kept per instance, in memory, split into shards by webhook id like the health
//! tracker. [`Lane`] is the pure bookkeeping, tested on synthetic instants.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Every rate-limited webhook's next free send slot.
#[derive(Default)]
pub struct Pace {
    shards: [Mutex<HashMap<String, Lane>>; SHARDS],
}

impl Pace {
    /// Takes the next send slot of `webhook_id` at `rate` per second: how long until it.
    pub fn reserve(&self, webhook_id: &str, rate: u32, now: Instant) -> Duration {
        let mut shard = self.shard(webhook_id);
        let lane = match shard.get_mut(webhook_id) {
            Some(lane) => lane,
            None => shard
                .entry(webhook_id.to_owned())
                .or_insert_with(|| Lane::new(now)),
        };
        lane.reserve(rate, now)
    }

    /// The receiver answered 429 with `Retry-After` at `now`: half the rate until `until`.
    pub fn slow_down(&self, webhook_id: &str, now: Instant, until: Instant) {
        let mut shard = self.shard(webhook_id);
        let lane = shard
            .entry(webhook_id.to_owned())
            .or_insert_with(|| Lane::new(now));
        lane.slow_until = Some(lane.slow_until.map_or(until, |t| t.max(until)));
    }

    fn shard(&self, webhook_id: &str) -> MutexGuard<'_, HashMap<String, Lane>> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(webhook_id);
        self.shards[(hash % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One webhook's pacing.
#[derive(Debug)]
struct Lane {
    /// The next free send slot.
    next: Instant,
    /// Until when a 429 halved the rate.
    slow_until: Option<Instant>,
}

impl Lane {
    fn new(now: Instant) -> Lane {
        Lane {
            next: now,
            slow_until: None,
        }
    }

    fn reserve(&mut self, rate: u32, now: Instant) -> Duration {
        let slowed = self.slow_until.is_some_and(|until| now < until);
        let rate = if slowed {
            (rate / 2).max(1)
        } else {
            rate.max(1)
        };
        let slot = self.next.max(now);
        self.next = slot + Duration::from_secs(1) / rate;
        slot - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_one_another_at_the_rate_and_an_idle_lane_starts_now() {
        let now = Instant::now();
        let mut lane = Lane::new(now);
        let waits: Vec<Duration> = (0..4).map(|_| lane.reserve(20, now)).collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, [ms(0), ms(50), ms(100), ms(150)]);
        // Idle for a while: no burst is saved up, the next delivery goes at once.
        let later = now + Duration::from_secs(10);
        assert_eq!(lane.reserve(20, later), Duration::ZERO);
        assert_eq!(lane.reserve(20, later), ms(50));
    }

    #[test]
    fn a_429_halves_the_rate_until_its_retry_after_has_passed() {
        let now = Instant::now();
        let pace = Pace::default();
        pace.slow_down("w", now, now + Duration::from_secs(1));
        assert_eq!(pace.reserve("w", 10, now), Duration::ZERO);
        assert_eq!(pace.reserve("w", 10, now), Duration::from_millis(200));
        let after = now + Duration::from_secs(2);
        assert_eq!(pace.reserve("w", 10, after), Duration::ZERO);
        assert_eq!(pace.reserve("w", 10, after), Duration::from_millis(100));
        assert_eq!(pace.reserve("other", 1, now), Duration::ZERO);
    }
}
