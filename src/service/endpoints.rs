//! Per-endpoint admission: the in-flight cap and the circuit breaker (`docs/design.md`,
//! "Isolation").
//!
//! Without a per-endpoint cap one hanging receiver ends up holding every delivery slot and,
//! through its events' unacked messages, the whole prefetch window: every other receiver
//! starves. The cap alone is not enough, though. A delivery over the cap goes to the retry queue
//! without an attempt and comes back after the schedule's next delay — and while the receiver
//! still hangs it is turned away again, over and over: each round trip is a confirmed publish
//! and a consume that the healthy receivers pay for in broker and CPU time.
//!
//! So an endpoint that keeps failing has its circuit opened for a cool-down, and a delivery that
//! finds it open waits in the retry queue until the cool-down is over instead of until the
//! schedule's next rung. A circuit opens after `circuit_failures` failed attempts in a row
//! (timeouts, connection errors, 408/425/429/5xx), or when every slot under the cap is taken and
//! none has finished for `circuit_stall` (checked as deliveries arrive, and by a sweep for the
//! endpoint no delivery comes to) — a hanging receiver is caught in seconds, not after a whole
//! request timeout. A stall also cuts off the requests still hanging there: each is a failed
//! attempt handed to the retry queue at once, so its event is acked instead of holding its place
//! in the prefetch window (and a global in-flight permit) until the request timeout.
//!
//! When the cool-down is over one delivery goes through as a probe: its success closes the
//! circuit, its failure opens it again for twice as long (up to 16 times the configured
//! cool-down). Any success, probe or not, closes it: the receiver answered.
//!
//! The bookkeeping is a pure state machine ([`Endpoint`]) that takes the time as an argument, so
//! its tests run on synthetic instants; [`Endpoints`] is the shared map around it, keyed by URL,
//! not host, so webhooks that share a host but not a handler stay independent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::lifecycle;
use crate::metrics::Metrics;

/// How far a circuit's cool-down grows as probes keep failing, as a multiple of the configured one.
const MAX_COOLDOWN_FACTOR: u32 = 16;

/// How often endpoints are checked for a stall that no arriving delivery noticed (a stall is
/// caught at most this long after `circuit_stall`), and idle ones forgotten.
const STALL_SWEEP: Duration = Duration::from_millis(250);

/// The settings admission follows; changed live by SIGHUP without forgetting any circuit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub cap: usize,
    pub failures: u32,
    pub cooldown: Duration,
    pub stall: Duration,
}

impl From<&DeliveryConfig> for Policy {
    fn from(delivery: &DeliveryConfig) -> Policy {
        Policy {
            cap: delivery.max_in_flight_per_endpoint,
            failures: delivery.circuit_failures,
            cooldown: delivery.circuit_cooldown,
            stall: delivery.circuit_stall,
        }
    }
}

/// Why a delivery was not let through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Every slot is taken by requests that are still making progress: try again later, on the
    /// retry schedule.
    Busy,
    /// The circuit is open: nothing is sent before this much time has passed.
    Open(Duration),
}

/// What the circuit did on a call, so the caller can keep the open-circuit gauge and log it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    None,
    Opened,
    Closed,
}

/// One endpoint's state. An endpoint with nothing in flight, no failures and a closed circuit
/// has nothing to remember, and [`Endpoints`] drops it at its next sweep: not as soon as its
/// last request ends, or a URL delivered to one request at a time would lose its entry after
/// each delivery and make it again for the next (a copy of the URL and a cancellation token).
#[derive(Debug)]
struct Endpoint {
    in_flight: usize,
    /// Failed attempts in a row.
    failures: u32,
    /// When a request last finished, or when the endpoint became busy after being idle: with
    /// every slot taken, the time since then is how long the endpoint has been stuck.
    progress: Instant,
    circuit: Circuit,
    /// Cancelled when a stall opens the circuit, cutting off the requests in flight; replaced
    /// by a fresh one for the requests that come after.
    cut: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Circuit {
    Closed,
    /// Open until `until`; the next opening lasts `next`. `probing` once the cool-down is over
    /// and one delivery was let through to test the endpoint.
    Open {
        until: Instant,
        next: Duration,
        probing: bool,
    },
}

impl Endpoint {
    fn new(now: Instant) -> Endpoint {
        Endpoint {
            in_flight: 0,
            failures: 0,
            progress: now,
            circuit: Circuit::Closed,
            cut: CancellationToken::new(),
        }
    }

    fn forgettable(&self) -> bool {
        self.in_flight == 0 && self.failures == 0 && self.circuit == Circuit::Closed
    }

    /// How long the circuit keeps new deliveries away, if it does: the rest of the cool-down,
    /// or, once the probe is out (or old requests still hold every slot), another cool-down, by
    /// when the probe's verdict is known.
    fn shut_for(&self, policy: &Policy, now: Instant) -> Option<Duration> {
        match self.circuit {
            Circuit::Open { until, .. } if now < until => Some(until - now),
            Circuit::Open { next, probing, .. } if probing || self.in_flight >= policy.cap => {
                Some(next)
            }
            _ => None,
        }
    }

    fn state(&self, policy: &Policy, now: Instant) -> lifecycle::Circuit {
        match self.circuit {
            Circuit::Closed => lifecycle::Circuit::Closed,
            Circuit::Open { probing: false, .. } if self.shut_for(policy, now).is_none() => {
                lifecycle::Circuit::HalfOpen
            }
            Circuit::Open { probing: true, .. } => lifecycle::Circuit::HalfOpen,
            Circuit::Open { .. } => lifecycle::Circuit::Open,
        }
    }

    /// Lets one request through (`Ok(true)` when it is the probe of an open circuit) or says why
    /// not.
    fn admit(&mut self, policy: &Policy, now: Instant) -> (Result<bool, Refusal>, Change) {
        if let Some(left) = self.shut_for(policy, now) {
            return (Err(Refusal::Open(left)), Change::None);
        }
        match self.circuit {
            Circuit::Open { next, .. } => {
                self.circuit = Circuit::Open {
                    until: now,
                    next,
                    probing: true,
                };
                self.start(now);
                (Ok(true), Change::None)
            }
            Circuit::Closed if self.in_flight < policy.cap => {
                self.start(now);
                (Ok(false), Change::None)
            }
            Circuit::Closed => {
                if self.trip_if_stalled(policy, now) {
                    (Err(Refusal::Open(policy.cooldown)), Change::Opened)
                } else {
                    (Err(Refusal::Busy), Change::None)
                }
            }
        }
    }

    /// Opens a closed circuit whose every slot is taken and has seen nothing finish for
    /// `policy.stall`, and cuts off the requests hanging there; whether it did.
    fn trip_if_stalled(&mut self, policy: &Policy, now: Instant) -> bool {
        let stalled = self.circuit == Circuit::Closed
            && self.in_flight >= policy.cap
            && now.duration_since(self.progress) >= policy.stall;
        if stalled {
            self.open(policy.cooldown, policy, now);
            self.cut.cancel();
            self.cut = CancellationToken::new();
        }
        stalled
    }

    fn start(&mut self, now: Instant) {
        if self.in_flight == 0 {
            self.progress = now;
        }
        self.in_flight += 1;
    }

    /// A request let through has ended: `Some(true)` if the endpoint answered in a way that is
    /// not worth retrying for (2xx, or a 4xx that dead-letters), `Some(false)` if the attempt
    /// failed and will be retried, `None` if it was abandoned unfinished (shutdown, broker loss),
    /// which says nothing about the endpoint.
    fn finish(
        &mut self,
        policy: &Policy,
        now: Instant,
        probe: bool,
        healthy: Option<bool>,
    ) -> Change {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.progress = now;
        match (healthy, self.circuit) {
            (Some(true), circuit) => {
                self.failures = 0;
                self.circuit = Circuit::Closed;
                if circuit == Circuit::Closed {
                    Change::None
                } else {
                    Change::Closed
                }
            }
            (Some(false), Circuit::Open { next, .. }) if probe => {
                self.failures = self.failures.saturating_add(1);
                self.open(next, policy, now);
                Change::None
            }
            (Some(false), Circuit::Closed) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= policy.failures {
                    self.open(policy.cooldown, policy, now);
                    Change::Opened
                } else {
                    Change::None
                }
            }
            (Some(false), Circuit::Open { .. }) => {
                // A request sent before the circuit opened: it changes nothing.
                self.failures = self.failures.saturating_add(1);
                Change::None
            }
            (None, Circuit::Open { until, next, .. }) if probe => {
                // The probe never got an answer: let the next delivery probe instead.
                self.circuit = Circuit::Open {
                    until,
                    next,
                    probing: false,
                };
                Change::None
            }
            (None, _) => Change::None,
        }
    }

    fn open(&mut self, cooldown: Duration, policy: &Policy, now: Instant) {
        let ceiling = policy.cooldown.saturating_mul(MAX_COOLDOWN_FACTOR);
        self.circuit = Circuit::Open {
            // Config bounds the cool-down (and so the ceiling) to hours; checked all the same.
            until: now.checked_add(cooldown).unwrap_or(now),
            next: cooldown.saturating_mul(2).min(ceiling),
            probing: false,
        };
    }
}

/// Every endpoint's admission state, shared by all message tasks.
pub struct Endpoints {
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

struct Inner {
    policy: Policy,
    endpoints: HashMap<String, Endpoint>,
}

/// One request's place at its endpoint. [`Slot::finish`] reports how it went; dropping it
/// unfinished gives the place back without a verdict.
pub struct Slot<'a> {
    endpoints: &'a Endpoints,
    url: &'a str,
    probe: bool,
    finished: bool,
    cut: CancellationToken,
}

impl Endpoints {
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Endpoints {
        Endpoints {
            metrics,
            inner: Mutex::new(Inner {
                policy,
                endpoints: HashMap::new(),
            }),
        }
    }

    /// Applies a reloaded policy from the next admission on; open circuits stay open.
    pub fn set_policy(&self, policy: Policy) {
        self.lock().policy = policy;
    }

    /// A place for one request to `url`, or why it must wait.
    pub fn admit<'a>(&'a self, url: &'a str) -> Result<Slot<'a>, Refusal> {
        let now = Instant::now();
        let mut inner = self.lock();
        let policy = inner.policy;
        let admit = |endpoint: &mut Endpoint| {
            let (admitted, change) = endpoint.admit(&policy, now);
            (admitted, change, endpoint.cut.clone())
        };
        // Looked up before it is made, so a known URL is not copied for every request.
        let (admitted, change, cut) = match inner.endpoints.get_mut(url) {
            Some(endpoint) => admit(endpoint),
            None => {
                let mut endpoint = Endpoint::new(now);
                let admitted = admit(&mut endpoint);
                inner.endpoints.insert(url.to_owned(), endpoint);
                admitted
            }
        };
        drop(inner);
        self.note(url, change);
        admitted.map(|probe| Slot {
            endpoints: self,
            url,
            probe,
            finished: false,
            cut,
        })
    }

    /// How long `url`'s circuit keeps new deliveries away, if it is open: asked before waiting
    /// for the global in-flight cap, so a delivery that would be turned away anyway does not
    /// queue for a permit first, and after a failed attempt, so its retry does not come back
    /// while the circuit is still open.
    pub fn shut_for(&self, url: &str) -> Option<Duration> {
        let inner = self.lock();
        let endpoint = inner.endpoints.get(url)?;
        endpoint.shut_for(&inner.policy, Instant::now())
    }

    /// The state of `url`'s circuit, for the webhook's health: open while it keeps deliveries
    /// away, half open once its cool-down is over and a probe may go (or is out).
    pub fn circuit(&self, url: &str) -> lifecycle::Circuit {
        let inner = self.lock();
        match inner.endpoints.get(url) {
            Some(endpoint) => endpoint.state(&inner.policy, Instant::now()),
            None => lifecycle::Circuit::Closed,
        }
    }

    /// Trips every stalled endpoint (see `Endpoint::trip_if_stalled`) and forgets those with
    /// nothing to remember. Admission notices a stall when a delivery arrives for the stuck
    /// endpoint; this catches the endpoint that no delivery comes to, because its hanging
    /// requests' events hold the whole prefetch window.
    fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        let policy = inner.policy;
        inner
            .endpoints
            .retain(|_, endpoint| !endpoint.forgettable());
        let tripped: Vec<String> = inner
            .endpoints
            .iter_mut()
            .filter_map(|(url, endpoint)| {
                endpoint.trip_if_stalled(&policy, now).then(|| url.clone())
            })
            .collect();
        drop(inner);
        for url in tripped {
            self.note(&url, Change::Opened);
        }
    }

    fn release(&self, url: &str, probe: bool, healthy: Option<bool>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let policy = inner.policy;
        let Some(endpoint) = inner.endpoints.get_mut(url) else {
            return;
        };
        let change = endpoint.finish(&policy, now, probe, healthy);
        drop(inner);
        self.note(url, change);
    }

    fn note(&self, url: &str, change: Change) {
        match change {
            Change::None => {}
            Change::Opened => {
                self.metrics.circuit_opened();
                tracing::warn!(%url, "endpoint keeps failing or hangs: circuit opened, its deliveries wait in the retry queue");
            }
            Change::Closed => {
                self.metrics.circuit_closed();
                tracing::info!(%url, "endpoint answered again: circuit closed");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl crate::health::Circuits for Endpoints {
    fn open_for(&self, url: &str) -> Option<Duration> {
        self.shut_for(url)
    }
}

/// Sweeps the endpoints (see `Endpoints::sweep`) every `STALL_SWEEP` until `stopped`.
pub async fn sweep_stalls(endpoints: Arc<Endpoints>, stopped: CancellationToken) {
    let mut tick = tokio::time::interval(STALL_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped.cancelled() => return,
            _ = tick.tick() => endpoints.sweep(),
        }
    }
}

impl Slot<'_> {
    /// Resolves when a stall opened the endpoint's circuit: the request is to be given up as a
    /// failed attempt.
    pub async fn cut_off(&self) {
        self.cut.cancelled().await;
    }

    /// The request ended: `healthy` is false for an attempt that will be retried.
    pub fn finish(mut self, healthy: bool) {
        self.finished = true;
        self.endpoints.release(self.url, self.probe, Some(healthy));
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.endpoints.release(self.url, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        cap: 2,
        failures: 3,
        cooldown: Duration::from_secs(10),
        stall: Duration::from_secs(1),
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_cap_turns_a_request_away_as_busy_while_the_endpoint_makes_progress() {
        let t0 = Instant::now();
        let mut endpoint = Endpoint::new(t0);
        assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
        assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
        assert_eq!(
            endpoint.admit(&POLICY, t0).0,
            Err(Refusal::Busy),
            "over the cap"
        );
        endpoint.finish(&POLICY, t0 + secs(2), false, Some(true));
        assert_eq!(
            endpoint.admit(&POLICY, t0 + secs(2)).0,
            Ok(false),
            "a slot came free"
        );
        assert_eq!(
            endpoint.admit(&POLICY, t0 + secs(2)).0,
            Err(Refusal::Busy),
            "full again, but a request finished just now"
        );
    }

    #[test]
    fn a_full_endpoint_that_finishes_nothing_for_the_stall_time_opens_its_circuit() {
        let t0 = Instant::now();
        let mut endpoint = Endpoint::new(t0);
        assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
        assert_eq!(
            endpoint.admit(&POLICY, t0 + Duration::from_millis(500)).0,
            Ok(false)
        );
        assert_eq!(
            endpoint.admit(&POLICY, t0 + Duration::from_millis(999)).0,
            Err(Refusal::Busy)
        );
        assert_eq!(
            endpoint.admit(&POLICY, t0 + secs(1)),
            (Err(Refusal::Open(POLICY.cooldown)), Change::Opened),
            "stuck since the first request started"
        );
        assert_eq!(
            endpoint.admit(&POLICY, t0 + secs(4)).0,
            Err(Refusal::Open(secs(7))),
            "the rest of the cool-down"
        );
    }

    #[test]
    fn a_stall_cuts_off_the_requests_hanging_at_the_endpoint_and_only_those() {
        let t0 = Instant::now();
        let mut endpoint = Endpoint::new(t0);
        assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
        let hanging = endpoint.cut.clone();
        assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
        assert!(
            !endpoint.trip_if_stalled(&POLICY, t0 + Duration::from_millis(999)),
            "not yet stalled"
        );
        assert!(!hanging.is_cancelled());
        assert!(endpoint.trip_if_stalled(&POLICY, t0 + secs(1)));
        assert!(hanging.is_cancelled(), "the hanging requests are cut off");
        assert!(
            !endpoint.cut.is_cancelled(),
            "requests after the cool-down are not"
        );
        assert_eq!(endpoint.shut_for(&POLICY, t0 + secs(3)), Some(secs(8)));
        assert!(
            !endpoint.trip_if_stalled(&POLICY, t0 + secs(5)),
            "an open circuit does not trip again"
        );
    }

    #[test]
    fn consecutive_failures_open_the_circuit_and_a_success_in_between_resets_the_count() {
        let t0 = Instant::now();
        let mut endpoint = Endpoint::new(t0);
        let attempt = |endpoint: &mut Endpoint, healthy: bool| {
            assert_eq!(endpoint.admit(&POLICY, t0).0, Ok(false));
            endpoint.finish(&POLICY, t0, false, Some(healthy))
        };
        assert_eq!(attempt(&mut endpoint, false), Change::None);
        assert_eq!(attempt(&mut endpoint, false), Change::None);
        assert_eq!(attempt(&mut endpoint, true), Change::None);
        assert_eq!(attempt(&mut endpoint, false), Change::None);
        assert_eq!(attempt(&mut endpoint, false), Change::None);
        assert_eq!(
            attempt(&mut endpoint, false),
            Change::Opened,
            "third in a row"
        );
        assert_eq!(
            endpoint.admit(&POLICY, t0).0,
            Err(Refusal::Open(POLICY.cooldown))
        );
    }

    /// Opens `endpoint`'s circuit at `t0` by failing it `POLICY.failures` times.
    fn opened(t0: Instant) -> Endpoint {
        let mut endpoint = Endpoint::new(t0);
        for _ in 0..POLICY.failures {
            endpoint.admit(&POLICY, t0).0.expect("closed");
            endpoint.finish(&POLICY, t0, false, Some(false));
        }
        endpoint
    }

    #[test]
    fn after_the_cool_down_one_probe_goes_and_its_failure_doubles_the_next_cool_down() {
        let t0 = Instant::now();
        let mut endpoint = opened(t0);
        let t1 = t0 + POLICY.cooldown;
        assert_eq!(endpoint.admit(&POLICY, t1).0, Ok(true), "the probe");
        assert_eq!(
            endpoint.admit(&POLICY, t1).0,
            Err(Refusal::Open(secs(20))),
            "one probe at a time; the others wait for the next cool-down"
        );
        assert_eq!(
            endpoint.finish(&POLICY, t1 + secs(1), true, Some(false)),
            Change::None,
            "still open"
        );
        assert_eq!(
            endpoint.admit(&POLICY, t1 + secs(1)).0,
            Err(Refusal::Open(secs(20)))
        );
        let t2 = t1 + secs(21);
        assert_eq!(endpoint.admit(&POLICY, t2).0, Ok(true));
        assert_eq!(
            endpoint.finish(&POLICY, t2, true, Some(true)),
            Change::Closed
        );
        assert_eq!(endpoint.admit(&POLICY, t2).0, Ok(false), "closed again");
    }

    #[test]
    fn the_cool_down_stops_growing_at_sixteen_times_the_configured_one() {
        let t0 = Instant::now();
        let mut endpoint = opened(t0);
        let mut now = t0;
        let mut cooldowns = Vec::new();
        for _ in 0..7 {
            now += secs(10_000);
            assert_eq!(endpoint.admit(&POLICY, now).0, Ok(true));
            endpoint.finish(&POLICY, now, true, Some(false));
            let Err(Refusal::Open(left)) = endpoint.admit(&POLICY, now).0 else {
                panic!("open after a failed probe");
            };
            cooldowns.push(left.as_secs());
        }
        assert_eq!(cooldowns, [20, 40, 80, 160, 160, 160, 160]);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_delivery_probe_and_late_answers_count_as_they_should() {
        let policy = Policy { cap: 3, ..POLICY };
        let t0 = Instant::now();
        let mut endpoint = Endpoint::new(t0);
        // Two requests that are still out when the circuit opens.
        assert_eq!(endpoint.admit(&policy, t0).0, Ok(false));
        assert_eq!(endpoint.admit(&policy, t0).0, Ok(false));
        let outstanding = endpoint.cut.clone();
        for failed in 1..=policy.failures {
            assert_eq!(endpoint.admit(&policy, t0).0, Ok(false));
            let change = endpoint.finish(&policy, t0, false, Some(false));
            assert_eq!(change == Change::Opened, failed == policy.failures);
        }
        assert!(
            !outstanding.is_cancelled(),
            "failures do not cut off requests that may still answer; only a stall does"
        );
        let t1 = t0 + policy.cooldown;
        assert_eq!(endpoint.admit(&policy, t1).0, Ok(true), "a probe");
        assert_eq!(endpoint.finish(&policy, t1, true, None), Change::None);
        assert_eq!(
            endpoint.admit(&policy, t1).0,
            Ok(true),
            "the probe was abandoned, so another goes at once"
        );
        assert_eq!(
            endpoint.finish(&policy, t1, false, Some(false)),
            Change::None,
            "an old request failing changes nothing"
        );
        assert_eq!(
            endpoint.admit(&policy, t1).0,
            Err(Refusal::Open(secs(20))),
            "the probe is still out"
        );
        assert_eq!(
            endpoint.finish(&policy, t1, false, Some(true)),
            Change::Closed,
            "an old request answering closes the circuit: the receiver is back"
        );
    }

    #[test]
    fn the_sweep_trips_an_endpoint_that_no_delivery_comes_to() {
        let metrics = Arc::new(Metrics::default());
        let endpoints = Arc::new(Endpoints::new(
            Policy {
                cap: 1,
                stall: Duration::ZERO,
                ..POLICY
            },
            metrics,
        ));
        let hanging = endpoints.admit("http://hangs/").expect("admitted");
        let healthy = endpoints.admit("http://healthy/").expect("admitted");
        healthy.finish(true);
        assert_eq!(endpoints.shut_for("http://hangs/"), None);
        endpoints.sweep();
        assert!(hanging.cut.is_cancelled(), "cut off by the sweep");
        assert!(endpoints.shut_for("http://hangs/").is_some());
        assert_eq!(
            endpoints.shut_for("http://healthy/"),
            None,
            "an endpoint with nothing in flight is not stalled"
        );
    }

    #[test]
    fn endpoints_forget_what_has_nothing_to_remember_and_keep_the_open_circuit_gauge() {
        let metrics = Arc::new(Metrics::default());
        let endpoints = Arc::new(Endpoints::new(
            Policy {
                failures: 1,
                ..POLICY
            },
            metrics.clone(),
        ));
        let gauge = || {
            metrics
                .render()
                .lines()
                .find_map(|line| line.strip_prefix("webhookd_circuits_open "))
                .expect("gauge rendered")
                .to_owned()
        };
        let healthy = endpoints.admit("http://a/").expect("admitted");
        healthy.finish(true);
        drop(endpoints.admit("http://a/").expect("admitted"));
        assert_eq!(endpoints.lock().endpoints.len(), 1, "kept until the sweep");
        endpoints.sweep();
        assert!(endpoints.lock().endpoints.is_empty(), "nothing to remember");

        endpoints
            .admit("http://b/")
            .expect("admitted")
            .finish(false);
        assert!(matches!(
            endpoints.admit("http://b/"),
            Err(Refusal::Open(_))
        ));
        assert_eq!(gauge(), "1");
        assert_eq!(endpoints.lock().endpoints.len(), 1);

        endpoints.set_policy(Policy {
            cooldown: Duration::ZERO,
            ..POLICY
        });
        assert!(
            matches!(endpoints.admit("http://b/"), Err(Refusal::Open(_))),
            "a reload keeps the circuit open until its own cool-down ends"
        );

        endpoints
            .admit("http://c/")
            .expect("admitted")
            .finish(false);
        endpoints
            .admit("http://c/")
            .expect("admitted")
            .finish(false);
        endpoints
            .admit("http://c/")
            .expect("admitted")
            .finish(false);
        assert_eq!(gauge(), "2", "opened with no cool-down");
        let probe = endpoints.admit("http://c/").expect("the probe");
        probe.finish(true);
        assert_eq!(gauge(), "1");
        endpoints.sweep();
        assert_eq!(endpoints.lock().endpoints.len(), 1, "c is forgotten");
    }
}
