//! A webhook's rate limit, in two parts: a gate on what is sent, and a schedule of when what waits
//! comes back.
//!
//! The gate is what holds the limit: a delivery is sent only if the sends so far are no more than
//! [`BURST`] ahead of the rate (a virtual-clock limiter, exact over any window longer than that).
//! The burst is what absorbs the daemon's own unevenness: deliveries come back from the delay
//! queues a little early or late, and a gate without slack would lose the sends of every gap.
//!
//! A delivery the gate turns away is not held in memory (it would hold its message's place in
//! the prefetch window, and so every other receiver's events behind it): it waits in a delay
//! queue, carrying the time it is due in `x-webhookd-not-before`. A new delivery takes the next
//! free slot of the schedule, `1/rate` after the one before, so a backlog of a thousand events
//! is spread over the slots ahead at once and each comes back about when the gate has room for
//! it; a delivery that comes back due and still finds the gate full (the daemon fell behind, and
//! earlier ones are catching up) waits only until the gate has room. Each hop to a delay queue
//! is one confirmed publish, and no wait is an attempt.
//!
//! A 429 with `Retry-After` halves the rate until that time has passed: the receiver said it is
//! overloaded.
//!
//! Kept per instance, in memory, in a map split by webhook id like the health tracker. [`Lane`]
//! is the pure bookkeeping, tested on synthetic instants.

use std::time::{Duration, Instant};

use super::Shards;

/// How far the sends may run ahead of the rate: half a second's worth, and at least two
/// requests.
const BURST: Duration = Duration::from_millis(500);

/// Every rate-limited webhook's gate and schedule.
#[derive(Default)]
pub struct Pace {
    shards: Shards<Lane>,
}

impl Pace {
    /// Whether a delivery to `webhook_id`, limited to `rate` per second, may be sent at `now`:
    /// `None` if so (the send is counted), else how long it waits. A delivery that `due` (it
    /// already waited for its slot) waits until the gate has room; a new one takes the next
    /// free slot.
    pub fn admit(&self, webhook_id: &str, rate: u32, due: bool, now: Instant) -> Option<Duration> {
        let mut shard = self.shards.lock(webhook_id);
        let lane = match shard.get_mut(webhook_id) {
            Some(lane) => lane,
            None => shard
                .entry(webhook_id.to_owned())
                .or_insert_with(|| Lane::new(now)),
        };
        lane.admit(rate, due, now)
    }

    /// The receiver answered 429 with `Retry-After` at `now`: half the rate until `until`.
    pub fn slow_down(&self, webhook_id: &str, now: Instant, until: Instant) {
        let mut shard = self.shards.lock(webhook_id);
        let lane = shard
            .entry(webhook_id.to_owned())
            .or_insert_with(|| Lane::new(now));
        lane.slow_until = Some(lane.slow_until.map_or(until, |t| t.max(until)));
    }
}

/// One webhook's pacing.
#[derive(Debug)]
struct Lane {
    /// When the gate is next free: each send moves it one interval on.
    sent: Instant,
    /// The next free slot of the schedule for deliveries that wait.
    next: Instant,
    /// Until when a 429 halved the rate.
    slow_until: Option<Instant>,
}

impl Lane {
    fn new(now: Instant) -> Lane {
        Lane {
            sent: now,
            next: now,
            slow_until: None,
        }
    }

    fn admit(&mut self, rate: u32, due: bool, now: Instant) -> Option<Duration> {
        let slowed = self.slow_until.is_some_and(|until| now < until);
        let rate = if slowed { rate / 2 } else { rate }.max(1);
        let interval = Duration::from_secs(1) / rate;
        let burst = BURST.max(interval * 2);
        let room_at = self.sent.checked_sub(burst).unwrap_or(now);
        if room_at <= now {
            self.sent = self.sent.max(now) + interval;
            return None;
        }
        if due {
            return Some(room_at - now);
        }
        let slot = self.next.max(room_at);
        self.next = slot + interval;
        Some(slot - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn new_deliveries_over_the_rate_take_slots_one_interval_apart() {
        let now = Instant::now();
        let mut lane = Lane::new(now);
        let waits: Vec<Option<Duration>> = (0..14).map(|_| lane.admit(20, false, now)).collect();
        // Half a second's worth (eleven) go at once, the rest are given the slots after it.
        assert!(waits[..11].iter().all(Option::is_none), "{waits:?}");
        assert_eq!(waits[11..], [ms(50), ms(100), ms(150)]);
        // Idle for a while: the gate is free again, and no larger burst was saved up.
        let later = now + Duration::from_secs(10);
        let sent = (0..20)
            .filter(|_| lane.admit(20, false, later).is_none())
            .count();
        assert_eq!(sent, 11);
    }

    #[test]
    fn due_deliveries_coming_back_together_go_at_the_rate_and_the_rest_wait_for_room() {
        let now = Instant::now();
        let mut lane = Lane::new(now);
        // At 1/s the burst is two intervals: three go.
        let sent = (0..10)
            .filter(|_| lane.admit(1, true, now).is_none())
            .count();
        assert_eq!(sent, 3, "the burst, and no more");
        assert_eq!(lane.admit(1, true, now), ms(1_000));
        let soon = now + Duration::from_secs(1);
        assert_eq!(lane.admit(1, true, soon), None);
        assert_eq!(lane.admit(1, true, soon), ms(1_000));
    }

    #[test]
    fn a_429_halves_the_rate_until_its_retry_after_has_passed() {
        let now = Instant::now();
        let pace = Pace::default();
        pace.slow_down("w", now, now + Duration::from_secs(10));
        // At 2/s (halved from 4) the burst is two intervals: three go, the next waits 500 ms.
        let waits: Vec<Option<Duration>> = (0..4).map(|_| pace.admit("w", 4, false, now)).collect();
        assert_eq!(waits, [None, None, None, ms(500)]);
        let after = now + Duration::from_secs(20);
        let waits: Vec<Option<Duration>> =
            (0..4).map(|_| pace.admit("w", 4, false, after)).collect();
        assert_eq!(waits, [None, None, None, ms(250)]);
        assert_eq!(pace.admit("other", 1, false, now), None);
    }
}
