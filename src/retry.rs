//! The retry schedule: exponential backoff with jitter, as a pure value.
//!
//! A failed delivery is not retried by sleeping: the job is published to a delay queue in the
//! broker and comes back when that queue's TTL expires, so a restart, a second instance or a new
//! host picks it up (`docs/design.md`, "Why retries wait in the broker"). What webhookd needs from
//! a backoff library is therefore only the arithmetic — "how long before retry number n?" — as a
//! pure function of the attempt number and a random number the caller draws. That is why this is
//! plain arithmetic and not a crate: the `backoff` crate is unmaintained (RUSTSEC-2025-0012), and
//! `backon`, which lapin already pulls in, is shaped as a sleeping iterator that owns its state
//! and its randomness, which is exactly what a durable, broker-held wait cannot use. Keeping the
//! randomness outside also makes every number here testable with zero jitter and over a grid.
//!
//! The broker keeps one queue per delay *bucket*, because per-message TTLs in one queue block at
//! the head. [`Schedule::bucket`] rounds a delay up to a rung of a ×1.25 ladder: fine enough that
//! ±20 % jitter still spreads retries over two or three queues (so a burst of failures does not
//! come back as one burst), coarse enough that the default schedule needs about forty queues.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::delivery::{DeadReason, Outcome};

/// Delay queues finer than the retry ladder's first rung, used only by rate-limited deliveries
/// waiting for their send slot (see [`Schedule::pace_bucket`]): a 5 s first rung would send a
/// second's worth of slots in one burst five seconds late.
pub const PACE_RUNGS: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
];

/// Ratio between neighbouring bucket rungs, as the exact fraction 5/4 so the ladder is computed
/// in integers and every instance, build and platform derives the same queue names.
const RUNG_NUM: u128 = 5;
const RUNG_DEN: u128 = 4;

const NANOS_PER_MILLI: u128 = 1_000_000;

/// A schedule whose parameters were checked once, so [`Schedule::delay`] and friends never have
/// to fail or panic on the message path.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    initial: Duration,
    multiplier: f64,
    jitter: f64,
    max_interval: Duration,
    max_elapsed: Duration,
}

/// Why a schedule's parameters were refused, phrased as a rule of the `[retry]` key that
/// [`ScheduleError::key`] names, so config errors and this type say the same thing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// Delay queues take their TTL in whole milliseconds, so a shorter first delay is meaningless.
    #[error("must be at least 1ms (a delay queue's TTL is whole milliseconds), got {}", humantime::format_duration(*.0))]
    InitialTooSmall(Duration),
    #[error("must be a finite number >= 1.0, got {0}")]
    Multiplier(f64),
    #[error("must be in [0, 1), got {0}")]
    Jitter(f64),
    #[error("must be at least `retry.initial_interval` ({}), got {}", humantime::format_duration(*.initial), humantime::format_duration(*.max_interval))]
    MaxInterval {
        initial: Duration,
        max_interval: Duration,
    },
    #[error("must be at least `retry.initial_interval` ({}), got {}", humantime::format_duration(*.initial), humantime::format_duration(*.max_elapsed))]
    MaxElapsed {
        initial: Duration,
        max_elapsed: Duration,
    },
}

impl ScheduleError {
    /// The `[retry]` key whose value is refused.
    pub fn key(&self) -> &'static str {
        match self {
            ScheduleError::InitialTooSmall(_) => "retry.initial_interval",
            ScheduleError::Multiplier(_) => "retry.multiplier",
            ScheduleError::Jitter(_) => "retry.jitter",
            ScheduleError::MaxInterval { .. } => "retry.max_interval",
            ScheduleError::MaxElapsed { .. } => "retry.max_elapsed",
        }
    }
}

impl Schedule {
    /// Validates the parameters: `initial >= 1ms`, `multiplier >= 1` and finite,
    /// `0 <= jitter < 1`, `max_interval >= initial`, `max_elapsed >= initial`.
    pub fn new(
        initial: Duration,
        multiplier: f64,
        jitter: f64,
        max_interval: Duration,
        max_elapsed: Duration,
    ) -> Result<Schedule, ScheduleError> {
        if initial < Duration::from_millis(1) {
            return Err(ScheduleError::InitialTooSmall(initial));
        }
        // Written so that NaN fails these checks too.
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(ScheduleError::Multiplier(multiplier));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(ScheduleError::Jitter(jitter));
        }
        if max_interval < initial {
            return Err(ScheduleError::MaxInterval {
                initial,
                max_interval,
            });
        }
        if max_elapsed < initial {
            return Err(ScheduleError::MaxElapsed {
                initial,
                max_elapsed,
            });
        }
        Ok(Schedule {
            initial,
            multiplier,
            jitter,
            max_interval,
            max_elapsed,
        })
    }

    /// Delay before retry number `retry` (1 = the first retry; 0 is treated as 1):
    /// `initial * multiplier^(retry-1)`, capped at `max_interval`, then scaled by
    /// `1 + jitter * (2*unit - 1)`, and finally kept within `[1ms, max_interval]`.
    ///
    /// The final cap means that at the top of the schedule jitter only shortens waits: a
    /// configured maximum is a promise to the operator. `unit` is the caller's uniform random
    /// number in `[0, 1)`; anything outside (or NaN) is clamped rather than trusted, and huge retry
    /// numbers saturate at the cap instead of overflowing.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let cap = self.max_interval.as_secs_f64();
        let exponent = f64::from(retry.saturating_sub(1));
        let base = self.initial.as_secs_f64() * self.multiplier.powf(exponent);
        // `base` is +inf once the power overflows; `min` then yields the cap.
        let base = if base.is_nan() { cap } else { base.min(cap) };
        let unit = if unit.is_nan() {
            0.5
        } else {
            unit.clamp(0.0, 1.0)
        };
        let secs = base * (1.0 + self.jitter * (2.0 * unit - 1.0));
        let delay = Duration::try_from_secs_f64(secs).unwrap_or(self.max_interval);
        delay.max(Duration::from_millis(1)).min(self.max_interval)
    }

    /// What to do after failed attempt number `retry` (1 = the first attempt failed), `elapsed`
    /// after the first attempt: `None` when waiting `elapsed + delay` would pass `max_elapsed` —
    /// the caller dead-letters the job as `exhausted` — else the delay to wait.
    ///
    /// A receiver's `Retry-After` replaces the computed delay but is clamped to
    /// `[initial, max_interval]`: a receiver may slow us down, not park a job for a week nor make
    /// us hammer it.
    pub fn next_delay(
        &self,
        retry: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let delay = match retry_after {
            Some(asked) => asked.max(self.initial).min(self.max_interval),
            None => self.delay(retry, unit),
        };
        if elapsed.saturating_add(delay) > self.max_elapsed {
            None
        } else {
            Some(delay)
        }
    }

    /// The delay queue for `delay`: the smallest rung of the ladder that is `>= delay`.
    ///
    /// Rungs are `initial * 1.25^k` rounded up to whole milliseconds (the unit of a queue TTL),
    /// with `max_interval` (rounded up likewise) as the last rung; delays below `initial` get the
    /// first rung and delays above `max_interval` the last. Rounding up means a job never comes
    /// back earlier than its schedule says, and about 25 % later at most.
    pub fn bucket(&self, delay: Duration) -> Duration {
        let mut last = Duration::ZERO;
        for rung in self.buckets() {
            last = rung;
            if rung >= delay {
                break;
            }
        }
        last
    }

    /// The delay queue for a delivery waiting `wait` for its rate limit's send slot: the
    /// largest rung that is `<= wait`, among the ladder and the [`PACE_RUNGS`] below its first
    /// rung, or the smallest of them for a shorter wait. The delivery comes back no later than
    /// its slot and waits again for the rest, so it is sent at most one smallest rung after its
    /// slot; each hop costs one publish, and a long wait shrinks to a fifth at each.
    pub fn pace_bucket(&self, wait: Duration) -> Duration {
        let first = self.bucket(Duration::ZERO);
        let mut rungs = PACE_RUNGS
            .into_iter()
            .filter(|&rung| rung < first)
            .chain(self.buckets());
        let smallest = rungs.next().unwrap_or(first);
        rungs
            .take_while(|&rung| rung <= wait)
            .last()
            .unwrap_or(smallest)
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }

    /// The bucket ladder, ascending and without repeats: every delay queue this schedule can
    /// send a job to. Computed on the fly (about forty integer steps for the default schedule)
    /// rather than stored, so the value stays five numbers and two schedules compare equal
    /// exactly when their parameters do. Each step rounds up to the nanosecond, which keeps the
    /// walk in exact integers; the drift is below a nanosecond per rung, far under the
    /// millisecond rounding of the rungs themselves.
    pub fn buckets(&self) -> impl Iterator<Item = Duration> {
        let cap = ceil_to_millis(self.max_interval.as_nanos());
        let mut exact = self.initial.as_nanos();
        let mut previous = 0u128;
        let mut done = false;
        std::iter::from_fn(move || loop {
            if done {
                return None;
            }
            let rung = ceil_to_millis(exact);
            if rung >= cap {
                done = true;
                return Some(nanos_to_duration(cap));
            }
            exact = (exact * RUNG_NUM).div_ceil(RUNG_DEN);
            if rung > previous {
                previous = rung;
                return Some(nanos_to_duration(rung));
            }
        })
    }
}

fn ceil_to_millis(nanos: u128) -> u128 {
    nanos.div_ceil(NANOS_PER_MILLI) * NANOS_PER_MILLI
}

/// Saturates at `Duration::MAX`: the last rung of a schedule whose cap is near `Duration::MAX`
/// rounds up past it.
fn nanos_to_duration(nanos: u128) -> Duration {
    match u64::try_from(nanos / 1_000_000_000) {
        // The remainder is below 10^9, so it always fits.
        Ok(secs) => Duration::new(secs, u32::try_from(nanos % 1_000_000_000).unwrap_or(0)),
        Err(_) => Duration::MAX,
    }
}

/// The queue name of a bucket, e.g. `webhookd.retry.5s` or `webhookd.retry.6250ms`: whole
/// seconds when the bucket is whole seconds, else milliseconds, so names are stable across
/// restarts and readable in `rabbitmqctl list_queues`. A duration that is not whole milliseconds
/// (not produced by [`Schedule::bucket`]) is named in nanoseconds so distinct buckets never share
/// a queue.
pub fn bucket_queue_name(prefix: &str, bucket: Duration) -> String {
    let nanos = bucket.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{prefix}.{}s", bucket.as_secs())
    } else if nanos.is_multiple_of(NANOS_PER_MILLI) {
        format!("{prefix}.{}ms", bucket.as_millis())
    } else {
        format!("{prefix}.{nanos}ns")
    }
}

/// What a delivery came to this turn: the receiver's answer, classified, or no request at all
/// because its endpoint was at its cap or its circuit was open.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    Answered(Outcome),
    NotAttempted,
}

/// What follows a turn: nothing more, a retry job in the delay queue of a bucket, or a dead
/// letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    Retry(Duration),
    Dead(DeadReason),
}

impl Next {
    /// The outcome label of `webhookd_deliveries_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Next::Done => "delivered",
            Next::Retry(_) => "retry",
            Next::Dead(_) => "dead",
        }
    }

    /// As shown, without an allocation for the common case.
    pub fn text(&self) -> Cow<'static, str> {
        match self {
            Next::Done => Cow::Borrowed(self.label()),
            Next::Retry(_) | Next::Dead(_) => Cow::Owned(self.to_string()),
        }
    }
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Next::Done => f.write_str(self.label()),
            Next::Retry(bucket) => write!(f, "retry in {}", humantime::format_duration(*bucket)),
            Next::Dead(reason) => write!(f, "dead:{}", reason.as_str()),
        }
    }
}

impl Schedule {
    /// The one decision after a delivery's turn: deliver no more, retry after a delay (as its
    /// delay queue's bucket), or dead-letter.
    ///
    /// `attempt` is the number this turn's attempt has, or would have had (attempts so far plus
    /// one): a turn without a request is not an attempt, but waits as long as one would. `elapsed`
    /// is the time since the schedule's first attempt; `shut_for` how much longer the endpoint's
    /// circuit stays open, if it is. The wait is what the receiver asked for (`Retry-After`) or
    /// the schedule's delay, stretched to outlast an open circuit so the job does not come back
    /// only to be turned away again, and clamped by [`Schedule::next_delay`]; once it would end
    /// past `max_elapsed` the job is dead-lettered as `exhausted`. `unit` is the caller's uniform
    /// random number in `[0, 1)`, for the jitter.
    pub fn decide(
        &self,
        turn: &Turn,
        attempt: u32,
        elapsed: Duration,
        shut_for: Option<Duration>,
        unit: f64,
    ) -> Next {
        let asked = match turn {
            Turn::Answered(Outcome::Delivered) => return Next::Done,
            Turn::Answered(Outcome::Dead { reason }) => return Next::Dead(*reason),
            Turn::Answered(Outcome::Retry { after }) => *after,
            Turn::NotAttempted => None,
        };
        let after = match shut_for {
            Some(left) => Some(left.max(asked.unwrap_or_else(|| self.delay(attempt, unit)))),
            None => asked,
        };
        match self.next_delay(attempt, elapsed, after, unit) {
            Some(delay) => Next::Retry(self.bucket(delay)),
            None => Next::Dead(DeadReason::Exhausted),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const SEC: Duration = Duration::from_secs(1);

    /// The default schedule: 5 s, ×4, ±20 %, cap 6 h, give up after 24 h.
    fn design(jitter: f64) -> Schedule {
        Schedule::new(5 * SEC, 4.0, jitter, 6 * 3600 * SEC, 24 * 3600 * SEC).unwrap()
    }

    fn units() -> Vec<f64> {
        let mut units: Vec<f64> = (0..100).map(|i| f64::from(i) / 100.0).collect();
        units.push(1.0 - f64::EPSILON);
        units
    }

    fn retries() -> Vec<u32> {
        let mut retries: Vec<u32> = (0..=80).collect();
        retries.extend([100, 1_000, 65_536, u32::MAX / 2, u32::MAX - 1, u32::MAX]);
        retries
    }

    /// initial, multiplier, jitter, max_interval, max_elapsed.
    type Params = (Duration, f64, f64, Duration, Duration);

    #[test]
    fn new_rejects_each_bad_parameter() {
        let ms = Duration::from_millis(1);
        let ok = (5 * SEC, 4.0, 0.2, 60 * SEC, 600 * SEC);
        let cases: Vec<(&str, Params, bool)> = vec![
            ("valid", ok, true),
            (
                "zero initial",
                (Duration::ZERO, 4.0, 0.2, 60 * SEC, 600 * SEC),
                false,
            ),
            (
                "sub-ms initial",
                (ms / 2, 4.0, 0.2, 60 * SEC, 600 * SEC),
                false,
            ),
            ("1ms initial", (ms, 4.0, 0.2, 60 * SEC, 600 * SEC), true),
            (
                "multiplier < 1",
                (5 * SEC, 0.5, 0.2, 60 * SEC, 600 * SEC),
                false,
            ),
            (
                "multiplier = 1",
                (5 * SEC, 1.0, 0.2, 60 * SEC, 600 * SEC),
                true,
            ),
            (
                "multiplier NaN",
                (5 * SEC, f64::NAN, 0.2, 60 * SEC, 600 * SEC),
                false,
            ),
            (
                "multiplier inf",
                (5 * SEC, f64::INFINITY, 0.2, 60 * SEC, 600 * SEC),
                false,
            ),
            (
                "jitter negative",
                (5 * SEC, 4.0, -0.1, 60 * SEC, 600 * SEC),
                false,
            ),
            ("jitter 1", (5 * SEC, 4.0, 1.0, 60 * SEC, 600 * SEC), false),
            (
                "jitter NaN",
                (5 * SEC, 4.0, f64::NAN, 60 * SEC, 600 * SEC),
                false,
            ),
            ("jitter 0", (5 * SEC, 4.0, 0.0, 60 * SEC, 600 * SEC), true),
            (
                "max_interval < initial",
                (5 * SEC, 4.0, 0.2, 4 * SEC, 600 * SEC),
                false,
            ),
            (
                "max_interval = initial",
                (5 * SEC, 4.0, 0.2, 5 * SEC, 600 * SEC),
                true,
            ),
            (
                "max_elapsed < initial",
                (5 * SEC, 4.0, 0.2, 60 * SEC, 4 * SEC),
                false,
            ),
        ];
        for (name, (i, m, j, mi, me), valid) in cases {
            assert_eq!(Schedule::new(i, m, j, mi, me).is_ok(), valid, "{name}");
        }
    }

    #[test]
    fn new_errors_name_the_setting() {
        let err = Schedule::new(5 * SEC, 4.0, 1.5, 60 * SEC, 600 * SEC).unwrap_err();
        assert_eq!(err, ScheduleError::Jitter(1.5));
        assert_eq!(err.key(), "retry.jitter");
        assert_eq!(err.to_string(), "must be in [0, 1), got 1.5");
    }

    #[test]
    fn zero_jitter_gives_the_exact_exponential_sequence_capped_at_max_interval() {
        let schedule = design(0.0);
        let got: Vec<u64> = (1..=10)
            .map(|retry| schedule.delay(retry, 0.37).as_secs())
            .collect();
        assert_eq!(
            got,
            [5, 20, 80, 320, 1280, 5120, 20480, 21600, 21600, 21600]
        );
        assert_eq!(schedule.delay(1, 0.0), 5 * SEC);
        assert_eq!(schedule.delay(0, 0.5), 5 * SEC, "retry 0 is treated as 1");
    }

    #[test]
    fn jitter_scales_between_minus_and_plus_twenty_percent() {
        let schedule = design(0.2);
        // Retry 2 is 20 s, well inside the cap.
        assert_eq!(schedule.delay(2, 0.0), 16 * SEC);
        assert_eq!(schedule.delay(2, 0.5), 20 * SEC);
        let near_top = schedule.delay(2, 1.0 - f64::EPSILON);
        assert!(near_top <= 24 * SEC && near_top > Duration::from_millis(23_999));
        // Out-of-range units are clamped, not trusted.
        assert_eq!(schedule.delay(2, -3.0), 16 * SEC);
        assert_eq!(schedule.delay(2, 7.0), 24 * SEC);
        assert_eq!(schedule.delay(2, f64::NAN), 20 * SEC);
    }

    #[test]
    fn jitter_at_the_cap_only_shortens() {
        let schedule = design(0.2);
        assert_eq!(schedule.delay(20, 0.99), schedule.max_interval());
        assert_eq!(schedule.delay(20, 0.0), 6 * 3600 * SEC * 4 / 5);
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        for jitter in [0.0, 0.2] {
            let schedule = design(jitter);
            assert_eq!(schedule.delay(u32::MAX, 0.5), 6 * 3600 * SEC);
        }
        let flat = Schedule::new(SEC, 1.0, 0.0, 10 * SEC, 100 * SEC).unwrap();
        assert_eq!(flat.delay(u32::MAX, 0.5), SEC);
    }

    #[test]
    fn delay_is_never_below_one_millisecond() {
        let schedule = Schedule::new(Duration::from_millis(1), 2.0, 0.9, SEC, 10 * SEC).unwrap();
        assert_eq!(schedule.delay(1, 0.0), Duration::from_millis(1));
    }

    #[test]
    fn next_delay_gives_up_when_the_wait_would_pass_max_elapsed() {
        let schedule = design(0.0);
        let day = 24 * 3600 * SEC;
        assert_eq!(
            schedule.next_delay(1, Duration::ZERO, None, 0.5),
            Some(5 * SEC)
        );
        assert_eq!(
            schedule.next_delay(8, day - 6 * 3600 * SEC, None, 0.5),
            Some(6 * 3600 * SEC),
            "landing exactly on max_elapsed is still allowed"
        );
        assert_eq!(
            schedule.next_delay(8, day - 6 * 3600 * SEC + SEC, None, 0.5),
            None
        );
        assert_eq!(schedule.next_delay(1, day, None, 0.5), None);
        assert_eq!(schedule.next_delay(1, Duration::MAX, None, 0.5), None);

        // Following the schedule from the first failure: the job is given up on before the
        // cumulative wait passes a day, and after more than a handful of attempts.
        let mut elapsed = Duration::ZERO;
        let mut retry = 1;
        while let Some(delay) = schedule.next_delay(retry, elapsed, None, 0.5) {
            elapsed += delay;
            retry += 1;
        }
        assert!(elapsed <= day);
        // 5 + 20 + 80 + 320 + 1280 + 5120 + 20480 + 2 × 21600 s ≈ 19.6 h; one more 6 h wait would
        // pass 24 h.
        assert_eq!(retry, 10, "9 retries fit in 24 h with the design schedule");
    }

    #[test]
    fn retry_after_replaces_the_delay_clamped_to_the_schedule_bounds() {
        let schedule = design(0.2);
        let cases = [
            (Duration::ZERO, 5 * SEC),
            (SEC, 5 * SEC),
            (90 * SEC, 90 * SEC),
            (6 * 3600 * SEC, 6 * 3600 * SEC),
            (7 * 24 * 3600 * SEC, 6 * 3600 * SEC),
        ];
        for (asked, expected) in cases {
            assert_eq!(
                schedule.next_delay(1, Duration::ZERO, Some(asked), 0.0),
                Some(expected),
                "Retry-After {asked:?}"
            );
        }
        // The clamped Retry-After still counts against max_elapsed.
        assert_eq!(
            schedule.next_delay(1, 23 * 3600 * SEC, Some(2 * 3600 * SEC), 0.5),
            None
        );
    }

    #[test]
    fn the_ladder_is_initial_times_five_quarters_rounded_up_to_millis() {
        let schedule = design(0.2);
        let rungs: Vec<Duration> = schedule.buckets().collect();
        assert_eq!(rungs[0], 5 * SEC);
        assert_eq!(rungs[1], Duration::from_millis(6250));
        assert_eq!(rungs[2], Duration::from_millis(7813), "7812.5 rounds up");
        assert_eq!(rungs.last(), Some(&(6 * 3600 * SEC)));
        assert!(rungs.windows(2).all(|w| w[0] < w[1]), "strictly ascending");
        assert!(rungs.iter().all(|r| r.as_nanos() % NANOS_PER_MILLI == 0));
        // 5 s * 1.25^37 ≈ 19 207 s is the last rung below 6 h.
        assert_eq!(rungs.len(), 39);
    }

    #[test]
    fn the_ladder_skips_repeats_when_initial_is_tiny() {
        let schedule = Schedule::new(
            Duration::from_millis(1),
            2.0,
            0.0,
            Duration::from_millis(10),
            SEC,
        )
        .unwrap();
        let rungs: Vec<u64> = schedule
            .buckets()
            .map(|r| u64::try_from(r.as_millis()).unwrap())
            .collect();
        // 1, 1.25, 1.56, 1.95, 2.44, 3.05, 3.81, 4.77, 5.96, 7.45, 9.31 ms, each rounded up,
        // repeats dropped.
        assert_eq!(rungs, [1, 2, 3, 4, 5, 6, 8, 10]);
    }

    #[test]
    fn a_pace_bucket_rounds_down_to_a_rung_with_finer_rungs_below_the_ladder() {
        let schedule = Schedule::new(
            Duration::from_millis(200),
            2.0,
            0.0,
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
        .expect("schedule");
        let ms = Duration::from_millis;
        assert_eq!(schedule.pace_bucket(ms(10)), ms(100));
        assert_eq!(schedule.pace_bucket(ms(150)), ms(100));
        assert_eq!(schedule.pace_bucket(ms(200)), ms(200));
        assert_eq!(schedule.pace_bucket(ms(260)), ms(250));
        assert_eq!(schedule.pace_bucket(50 * SEC), 30 * SEC);
        // The default schedule starts at 5 s: the pace rungs serve the shorter waits.
        let default =
            Schedule::new(5 * SEC, 4.0, 0.2, 6 * 3600 * SEC, 24 * 3600 * SEC).expect("schedule");
        assert_eq!(default.pace_bucket(ms(999)), ms(500));
        assert_eq!(default.pace_bucket(ms(4_000)), ms(2_500));
        assert_eq!(default.pace_bucket(ms(6_000)), 5 * SEC);
    }

    #[test]
    fn bucket_rounds_up_to_the_next_rung_and_clamps_at_both_ends() {
        let schedule = design(0.2);
        let cases = [
            (Duration::ZERO, 5 * SEC),
            (4 * SEC, 5 * SEC),
            (5 * SEC, 5 * SEC),
            (Duration::from_millis(5001), Duration::from_millis(6250)),
            (Duration::from_millis(6250), Duration::from_millis(6250)),
            (20 * SEC, Duration::from_millis(23842)),
            (6 * 3600 * SEC, 6 * 3600 * SEC),
            (7 * 3600 * SEC, 6 * 3600 * SEC),
            (Duration::MAX, 6 * 3600 * SEC),
        ];
        for (delay, expected) in cases {
            assert_eq!(schedule.bucket(delay), expected, "delay {delay:?}");
        }
    }

    #[test]
    fn default_schedule_uses_few_buckets_over_all_jitter_values() {
        let schedule = design(0.2);
        let buckets: BTreeSet<Duration> = retries()
            .into_iter()
            .flat_map(|retry| {
                let schedule = &schedule;
                units()
                    .into_iter()
                    .map(move |unit| schedule.bucket(schedule.delay(retry, unit)))
            })
            .collect();
        assert!(buckets.len() < 45, "{} buckets", buckets.len());
        // Jitter is not quantised away: the first retry alone spreads over two queues.
        let first: BTreeSet<Duration> = units()
            .into_iter()
            .map(|unit| schedule.bucket(schedule.delay(1, unit)))
            .collect();
        assert!(first.len() >= 2, "{first:?}");
    }

    #[test]
    fn invariants_hold_over_a_grid_of_retries_and_units() {
        let schedules = [
            design(0.0),
            design(0.2),
            Schedule::new(
                Duration::from_millis(1),
                1.0,
                0.0,
                Duration::from_millis(1),
                SEC,
            )
            .unwrap(),
            Schedule::new(Duration::from_millis(250), 1.5, 0.5, 90 * SEC, 3600 * SEC).unwrap(),
            Schedule::new(
                Duration::from_micros(1500),
                10.0,
                0.99,
                Duration::MAX,
                Duration::MAX,
            )
            .unwrap(),
        ];
        for schedule in &schedules {
            let rungs: BTreeSet<Duration> = schedule.buckets().collect();
            let max_bucket =
                schedule.max_interval().as_nanos().div_ceil(NANOS_PER_MILLI) * NANOS_PER_MILLI;
            for unit in units() {
                let mut previous_delay = Duration::ZERO;
                let mut previous_bucket = Duration::ZERO;
                for retry in retries() {
                    let delay = schedule.delay(retry, unit);
                    let bucket = schedule.bucket(delay);
                    let context = format!("{schedule:?} retry {retry} unit {unit}");
                    assert!(delay >= Duration::from_millis(1), "{context}");
                    assert!(delay <= schedule.max_interval(), "{context}");
                    assert!(
                        delay >= previous_delay,
                        "delay monotone in retry: {context}"
                    );
                    assert!(bucket >= delay, "{context}");
                    assert!(rungs.contains(&bucket), "{context}");
                    assert!(bucket.as_nanos() <= max_bucket, "{context}");
                    assert!(bucket >= previous_bucket, "bucket monotone: {context}");
                    assert_eq!(
                        schedule.next_delay(retry, Duration::ZERO, None, unit),
                        Some(delay).filter(|d| *d <= schedule.max_elapsed),
                        "{context}"
                    );
                    previous_delay = delay;
                    previous_bucket = bucket;
                }
            }
        }
    }

    #[test]
    fn bucket_queue_names_use_seconds_when_whole_else_milliseconds() {
        let cases = [
            (5 * SEC, "webhookd.retry.5s"),
            (Duration::from_millis(6250), "webhookd.retry.6250ms"),
            (Duration::from_millis(200), "webhookd.retry.200ms"),
            (6 * 3600 * SEC, "webhookd.retry.21600s"),
            (Duration::from_nanos(1_500_000), "webhookd.retry.1500000ns"),
        ];
        for (bucket, expected) in cases {
            assert_eq!(bucket_queue_name("webhookd.retry", bucket), expected);
        }
    }

    #[test]
    fn decide_covers_every_turn() {
        let schedule = design(0.0);
        let open = Some(600 * SEC);
        let retry = |after| Turn::Answered(Outcome::Retry { after });
        // (case, turn, attempt, elapsed, circuit open for, expected)
        type Case = (&'static str, Turn, u32, Duration, Option<Duration>, Next);
        let cases: [Case; 9] = [
            (
                "a 2xx",
                Turn::Answered(Outcome::Delivered),
                1,
                SEC,
                None,
                Next::Done,
            ),
            (
                "a 4xx",
                Turn::Answered(Outcome::Dead {
                    reason: DeadReason::Rejected,
                }),
                1,
                SEC,
                None,
                Next::Dead(DeadReason::Rejected),
            ),
            // The first retry waits the first delay, 5 s (its own bucket).
            ("a 503", retry(None), 1, SEC, None, Next::Retry(5 * SEC)),
            // A 429's Retry-After replaces the delay; 30 s lies between rungs and is rounded up.
            (
                "a 429 asking 30s",
                retry(Some(30 * SEC)),
                1,
                SEC,
                None,
                Next::Retry(schedule.bucket(30 * SEC)),
            ),
            // A receiver may slow webhookd down, not park a job beyond max_interval.
            (
                "Retry-After a week",
                retry(Some(7 * 24 * 3600 * SEC)),
                1,
                SEC,
                None,
                Next::Retry(schedule.bucket(6 * 3600 * SEC)),
            ),
            // An open circuit stretches the wait to outlast it.
            (
                "a 503 with the circuit open",
                retry(None),
                1,
                SEC,
                open,
                Next::Retry(schedule.bucket(600 * SEC)),
            ),
            // Turned away at the door: waits like attempt 2 would, no attempt counted.
            (
                "busy",
                Turn::NotAttempted,
                2,
                SEC,
                None,
                Next::Retry(schedule.bucket(20 * SEC)),
            ),
            (
                "circuit open",
                Turn::NotAttempted,
                2,
                SEC,
                open,
                Next::Retry(schedule.bucket(600 * SEC)),
            ),
            // A wait that would end past max_elapsed (24 h) gives up.
            (
                "a 503 near the end",
                retry(None),
                9,
                23 * 3600 * SEC,
                None,
                Next::Dead(DeadReason::Exhausted),
            ),
        ];
        for (name, turn, attempt, elapsed, shut_for, expected) in cases {
            assert_eq!(
                schedule.decide(&turn, attempt, elapsed, shut_for, 0.5),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn next_reads_as_logged() {
        assert_eq!(Next::Done.text(), "delivered");
        assert_eq!(Next::Retry(20 * SEC).to_string(), "retry in 20s");
        assert_eq!(Next::Dead(DeadReason::Gone).text(), "dead:gone");
        assert_eq!(Next::Dead(DeadReason::Gone).label(), "dead");
    }
}
