//! One attempt: one event at one webhook → admission → request → outcome → follow-up.
//!
//! The follow-up is the one decision of [`Schedule::decide`](crate::retry::Schedule::decide)
//! carried out: nothing, a confirmed retry job, or a confirmed dead letter. The clock, the
//! randomness and the broker come in as arguments, so the tests below need no broker.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::SemaphorePermit;
use tracing::{debug, warn, Instrument as _};

use super::endpoints::{Refusal, Slot};
use super::{Live, Outbox, Shared, Stage};
use crate::broker::BrokerError;
use crate::delivery::{self, sign, DeadReason, Outcome, SendError};
use crate::dlq::Parked;
use crate::event::Envelope;
use crate::job::{self, Job};
use crate::lifecycle::{past_disable_after, Attempted, Disabled, WEBHOOK_DISABLED};
use crate::retry::{Next, Turn};
use crate::store::{NewAttempt, Webhook};

/// Why a message is handed back instead of acked.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unsettled {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("shutting down before it was settled")]
    ShuttingDown,
}

/// One attempt of one event at one webhook, and what follows from its outcome. `Ok` once the
/// delivery succeeded or its replacement (retry job, dead letter) is confirmed.
///
/// Runs in a span with the delivery's ids, so every line it logs, and a log filter such as
/// `[attempt{delivery_id=…}]=debug`, follows one delivery.
pub(super) async fn deliver<O: Outbox>(
    stage: &Stage<'_, O>,
    event: &EventRef<'_>,
    webhook: &Webhook,
    job: Option<&Job>,
) -> Result<(), Unsettled> {
    let now = stage.clock.now();
    let leg = Leg {
        stage,
        event,
        webhook,
        delivery_id: sign::delivery_id(event.event_id, &webhook.id),
        now,
        attempt: job.map_or(0, |j| j.attempts).saturating_add(1),
        first_attempt_at_ms: job.map_or_else(|| job::unix_ms(now), |j| j.first_attempt_at_ms),
    };
    let span = tracing::info_span!(
        "attempt",
        delivery_id = %leg.delivery_id,
        webhook_id = %webhook.id,
        account_id = webhook.account_id,
        event = %event.envelope.event,
        attempt = leg.attempt,
    );
    let turn = async {
        let (state, next) = match leg.paced(job) {
            Some(paced) => paced,
            None => match admit(stage.shared, stage.live, &webhook.url).await {
                Err(refusal) => leg.deferral(refusal, job),
                Ok((permit, slot)) => match leg.send(permit, slot).await {
                    Some(failed) => failed,
                    // Only a retry job or a dead letter carries the job's state: a delivery
                    // builds none.
                    None => return Ok(()),
                },
            },
        };
        let next = leg.unless_failing_too_long(next);
        // Boxed: publishing a retry job or a dead letter, or disabling the webhook, takes
        // futures many times the size of a delivery's, and only a failed attempt needs them.
        // Inline, they would make every message task that large, to allocate and move.
        Box::pin(leg.follow_up(&state, next)).await
    };
    turn.instrument(span).await
}

/// One event at one webhook: what its attempt, or its deferral, and their follow-up read.
struct Leg<'a, O> {
    stage: &'a Stage<'a, O>,
    event: &'a EventRef<'a>,
    webhook: &'a Webhook,
    delivery_id: String,
    now: SystemTime,
    /// The number this attempt has, or would have: the job's attempts so far, plus one.
    attempt: u32,
    first_attempt_at_ms: u64,
}

impl<O: Outbox> Leg<'_, O> {
    /// A delivery that admission turned away. Not an attempt: the job keeps its count and
    /// history, and comes back after the schedule's next delay or, if the circuit is open, once
    /// its cool-down is over (or is given up once max_elapsed has passed).
    fn deferral(&self, refusal: Refusal, job: Option<&Job>) -> (Job, Next) {
        let shut_for = match refusal {
            Refusal::Busy => None,
            Refusal::Open(left) => Some(left),
        };
        let next = self.decide(&Turn::NotAttempted, shut_for);
        debug!(outcome = %next, ?refusal, "endpoint busy or its circuit open: deferred without an attempt");
        (self.unattempted(job), next)
    }

    /// A delivery its webhook's rate limit holds back (`lifecycle/pace.rs`): it waits in a delay
    /// queue until it is due, which is not an attempt. `None` when it may go now: the webhook
    /// has no limit, or the limit has room.
    fn paced(&self, job: Option<&Job>) -> Option<(Job, Next)> {
        let rate = self.webhook.rate_limit?;
        let now_ms = job::unix_ms(self.now);
        let due_ms = job.and_then(|j| j.not_before_ms);
        let wait = match due_ms {
            // Not due yet: it waits on, and takes nothing from the limit meanwhile.
            Some(due_ms) if due_ms > now_ms => Duration::from_millis(due_ms - now_ms),
            _ => self.stage.shared.pace.admit(
                &self.webhook.id,
                rate,
                due_ms.is_some(),
                Instant::now(),
            )?,
        };
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let next = Next::Retry(self.stage.live.schedule.pace_bucket(wait));
        self.stage.shared.metrics.paced();
        debug!(outcome = %next, wait_ms, "rate limit: waiting without an attempt");
        let mut state = self.unattempted(job);
        state.not_before_ms = Some(now_ms.saturating_add(wait_ms));
        Some((state, next))
    }

    /// The job's state after a turn without an attempt: its count and history unchanged.
    fn unattempted(&self, job: Option<&Job>) -> Job {
        self.state(
            self.attempt - 1,
            job.and_then(|j| j.last_status),
            job.and_then(|j| j.last_error.clone()),
        )
    }

    /// `next`, unless the webhook has had no success for `delivery.disable_after`: then it is
    /// disabled now, and this job is parked as `webhook_disabled`, as every other job of it
    /// will be when it comes back (`service/message.rs`).
    fn unless_failing_too_long(&self, next: Next) -> Next {
        if matches!(next, Next::Done | Next::Dead(DeadReason::Gone)) {
            return next;
        }
        let (id, version) = (&self.webhook.id, &self.webhook.updated_at);
        let since = self.stage.shared.health.failing_since(id, version);
        if past_disable_after(since, self.stage.live.disable_after, self.stage.clock.now()) {
            Next::Dead(DeadReason::WebhookDisabled)
        } else {
            next
        }
    }

    /// Sends the event, logs and records the attempt; `None` once it was delivered, else the
    /// job's new state and where it goes next.
    async fn send(
        &self,
        permit: Option<SemaphorePermit<'_>>,
        slot: Slot<'_>,
    ) -> Option<(Job, Next)> {
        let (shared, live) = (self.stage.shared, self.stage.live);
        let (event, webhook) = (self.event, self.webhook);
        let (delivery_id, now, attempt) = (&self.delivery_id, self.now, self.attempt);
        let timestamp = i64::try_from(job::unix_ms(now) / 1000).unwrap_or(i64::MAX);
        let headers =
            sign::attempt_headers(delivery_id, timestamp, event.body, webhook.signing(now));
        let (result, latency) = {
            let _permit = permit;
            let _counted = shared.metrics.in_flight();
            let started = Instant::now();
            self.stage.timeline.sent();
            let result = tokio::select! {
                result = live.client.post(&webhook.url, headers, event.body.clone()) => result,
                () = slot.cut_off() => Err(SendError::Stalled),
            };
            self.stage.timeline.answered();
            (result, started.elapsed())
        };
        let outcome = delivery::classify(&result, self.stage.clock.now());
        slot.finish(!matches!(outcome, Outcome::Retry { .. }));
        let status = result.as_ref().ok().map(|r| r.status.as_u16());
        let error = result.as_ref().err().map(ToString::to_string);
        let attempted = Attempted {
            version: &webhook.updated_at,
            at: now,
            ok: outcome == Outcome::Delivered,
            status,
            error: error.as_deref(),
            latency,
        };
        shared.health.record(&webhook.id, &attempted);
        if let (Some(429), Outcome::Retry { after: Some(after) }) = (status, &outcome) {
            let now = Instant::now();
            if let Some(until) = now.checked_add(*after) {
                shared.pace.slow_down(&webhook.id, now, until);
            }
        }

        // A failed attempt may have opened the circuit, or found it opened meanwhile.
        let shut_for = match outcome {
            Outcome::Retry { .. } => shared.endpoints.shut_for(&webhook.url),
            Outcome::Delivered | Outcome::Dead { .. } => None,
        };
        let next = self.decide(&Turn::Answered(outcome), shut_for);

        let label = next.label();
        shared.metrics.delivery(label, latency);
        // One line per attempt with everything needed to follow a delivery. Successes are
        // debug: at thousands a second they would drown the journal, and /metrics and the
        // attempt log already count and keep them.
        macro_rules! log_attempt {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    status,
                    error = error.as_deref(),
                    latency_ms = latency.as_millis() as u64,
                    outcome = %next,
                    "delivery attempt"
                )
            };
        }
        match next {
            Next::Done => log_attempt!(tracing::Level::DEBUG),
            Next::Retry(_) => log_attempt!(tracing::Level::INFO),
            Next::Dead(_) => log_attempt!(tracing::Level::WARN),
        }
        let record = NewAttempt {
            at: now,
            delivery_id,
            attempt,
            status,
            error: error.as_deref(),
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            outcome: &next.text(),
        };
        shared.store.record_attempt(&webhook.id, &record);
        match next {
            Next::Done => None,
            _ => Some((self.state(attempt, status, error), next)),
        }
    }

    /// What follows this turn, by the schedule's one decision, as of now.
    fn decide(&self, turn: &Turn, shut_for: Option<Duration>) -> Next {
        let clock = self.stage.clock;
        let elapsed = job::elapsed_since(self.first_attempt_at_ms, clock.now());
        self.stage
            .live
            .schedule
            .decide(turn, self.attempt, elapsed, shut_for, clock.unit())
    }

    /// The job's state as its retry job or dead letter carries it.
    fn state(&self, attempts: u32, last_status: Option<u16>, last_error: Option<String>) -> Job {
        Job {
            webhook_id: self.webhook.id.clone(),
            event_id: self.event.event_id.to_owned(),
            attempts,
            first_attempt_at_ms: self.first_attempt_at_ms,
            last_status,
            last_error,
            not_before_ms: None,
        }
    }

    /// Carries out `next`: nothing, a confirmed retry job, or a confirmed dead letter. `Ok` once
    /// that is done, so the event may be acked.
    async fn follow_up(&self, state: &Job, next: Next) -> Result<(), Unsettled> {
        let (shared, outbox) = (self.stage.shared, self.stage.outbox);
        let (event, webhook) = (self.event, self.webhook);
        let delivery_id = self.delivery_id.as_str();
        match next {
            Next::Done => Ok(()),
            Next::Retry(bucket) => {
                outbox
                    .to_delay_queue(bucket, event.body, state.properties(delivery_id))
                    .await?;
                shared.metrics.retry_scheduled(bucket);
                Ok(())
            }
            Next::Dead(reason) => {
                let parked = Parked {
                    reason,
                    message_id: delivery_id,
                    account_id: Some(event.envelope.account_id),
                    event: Some(&event.envelope.event),
                    url: Some(&webhook.url),
                    job: Some(state),
                    error: None,
                };
                outbox
                    .to_dead_letters(event.body, parked.properties(self.stage.clock.now()))
                    .await?;
                shared.metrics.dead_letter(reason.as_str());
                // Only once the dead letter is confirmed: disabled first, a failed publish
                // would bring the event back to a webhook it now skips, and the dead letter
                // would never be written.
                match reason {
                    DeadReason::Gone => self.disable("gone").await,
                    DeadReason::WebhookDisabled => self.disable("failing").await,
                    _ => Ok(()),
                }
            }
        }
    }

    /// Disables the webhook for `reason`, once for all of its deliveries in flight: the notice
    /// first, confirmed, then the store, so a crash between the two sends the notice twice
    /// rather than never.
    async fn disable(&self, reason: &str) -> Result<(), Unsettled> {
        let (health, id) = (&self.stage.shared.health, &self.webhook.id);
        if !health.claim_disabling(id, &self.webhook.updated_at) {
            return Ok(());
        }
        let disabled = self.disable_claimed(reason).await;
        if disabled.is_err() {
            health.release_disabling(id);
        }
        disabled
    }

    async fn disable_claimed(&self, reason: &str) -> Result<(), Unsettled> {
        let (shared, webhook) = (self.stage.shared, self.webhook);
        let now = self.stage.clock.now();
        let failing = shared.health.failing(&webhook.id);
        let notice = Disabled::new(webhook, reason, failing, now);
        self.stage
            .outbox
            .notify(WEBHOOK_DISABLED, &notice.to_json())
            .await?;
        shared.registry.disable(&webhook.id, reason, now).await?;
        shared.metrics.webhook_disabled(reason);
        warn!(
            reason,
            failing_since = notice.failing_since.as_deref(),
            last_status = notice.last_status,
            last_error = notice.last_error.as_deref(),
            "webhook disabled: its waiting jobs go to the dead-letter queue as webhook_disabled, and a {WEBHOOK_DISABLED} notice was published"
        );
        Ok(())
    }
}

/// A permit under the global in-flight cap, then a slot at the endpoint, or why not.
///
/// The permit comes first: a slot is then only ever held by a request being sent, so an endpoint
/// whose deliveries merely queue for the global cap (other receivers hold it) never looks
/// stalled to its circuit. But when the cap is full, an open circuit is asked about before
/// queueing: a delivery it would turn away anyway must not wait for a permit first, behind the
/// requests of every other receiver. `None` for the permit only if the semaphore was closed,
/// which it never is.
async fn admit<'a>(
    shared: &'a Shared,
    live: &'a Live,
    url: &'a str,
) -> Result<(Option<SemaphorePermit<'a>>, Slot<'a>), Refusal> {
    let permit = match live.in_flight.try_acquire() {
        Ok(permit) => Some(permit),
        Err(_) => {
            if let Some(left) = shared.endpoints.shut_for(url) {
                return Err(Refusal::Open(left));
            }
            live.in_flight.acquire().await.ok()
        }
    };
    let slot = shared.endpoints.admit(url)?;
    Ok((permit, slot))
}

/// The parts of an event every delivery of it reads.
pub(super) struct EventRef<'a> {
    pub(super) body: &'a Bytes,
    pub(super) envelope: &'a Envelope,
    pub(super) event_id: &'a str,
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crate::service::timeline::Timeline;

    use super::*;
    use crate::event::decode_envelope;
    use crate::service::testing::{self, FixedClock, Receiver, Recorder};

    const BODY: &[u8] = br#"{"event":"message_created","id":1,"account":{"id":1}}"#;

    /// One turn of the event at `webhook`, as a message's first delivery.
    async fn turn(
        shared: &Shared,
        outbox: &Recorder,
        webhook: &Webhook,
        n: u32,
    ) -> Result<(), Unsettled> {
        with_event(shared, outbox, n, async |stage, event| {
            deliver(stage, event, webhook, None).await
        })
        .await
    }

    /// Runs `then` with a stage and the `n`th event, as a message's first delivery has them.
    async fn with_event<R>(
        shared: &Shared,
        outbox: &Recorder,
        n: u32,
        then: impl AsyncFnOnce(&Stage<'_, Recorder>, &EventRef<'_>) -> R,
    ) -> R {
        let live = shared.live();
        let stage = Stage {
            shared,
            live: &live,
            outbox,
            clock: &FixedClock(SystemTime::now()),
            timeline: &Timeline::new(Instant::now()),
        };
        let body = Bytes::from_static(BODY);
        let envelope = decode_envelope(&body).expect("an event");
        let event_id = format!("ev-{n}");
        let event = EventRef {
            body: &body,
            envelope: &envelope,
            event_id: &event_id,
        };
        then(&stage, &event).await
    }

    /// Every message task carries its deliveries' futures, so they are sized for a delivery:
    /// the follow-up of a failed one (publishing a retry job or a dead letter, disabling the
    /// webhook) is boxed. Inline, it made this future 4.4 KiB in a debug build, and 1.5 KiB boxed.
    #[tokio::test]
    async fn a_delivery_s_future_is_not_sized_for_the_follow_up_of_a_failure() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let webhook = testing::webhook(&shared, 1, "http://127.0.0.1:9/").await;
        let size = with_event(&shared, &outbox, 1, async |stage, event| {
            std::mem::size_of_val(&deliver(stage, event, &webhook, None))
        })
        .await;
        assert!(size < 3 * 1024, "a delivery's future is {size} bytes");
    }

    #[tokio::test]
    async fn a_2xx_is_delivered_and_publishes_nothing() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(204).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        assert!(turn(&shared, &outbox, &webhook, 1).await.is_ok());
        assert_eq!(receiver.count(), 1);
        assert!(outbox.delayed.lock().expect("recorder").is_empty());
        assert!(outbox.reasons().is_empty());
    }

    #[tokio::test]
    async fn a_503_becomes_a_retry_job_in_the_first_bucket_carrying_its_state() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(503).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        assert!(turn(&shared, &outbox, &webhook, 1).await.is_ok());
        let delayed = outbox.delayed.lock().expect("recorder");
        let [(bucket, properties)] = delayed.as_slice() else {
            panic!("one retry job, got {}", delayed.len());
        };
        // The default schedule's first delay, 5 s, is its own bucket (the fixed clock's unit is
        // 0.5: no jitter).
        assert_eq!(*bucket, Duration::from_secs(5));
        let state = Job::from_headers(properties.headers().as_ref())
            .expect("short headers")
            .expect("a job");
        assert_eq!(state.webhook_id, webhook.id);
        assert_eq!(state.attempts, 1);
        assert_eq!(state.last_status, Some(503));
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some(sign::delivery_id("ev-1", &webhook.id).as_str())
        );
    }

    #[tokio::test]
    async fn a_410_is_parked_before_its_webhook_is_disabled() {
        let shared = testing::shared();
        let receiver = Receiver::answering(410).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        let refusing = Recorder {
            refuse_dead_letters: true,
            ..Recorder::default()
        };
        let failed = turn(&shared, &refusing, &webhook, 1).await;
        assert!(matches!(
            failed,
            Err(Unsettled::Broker(BrokerError::Nacked(_)))
        ));
        let kept = shared.store.get(&webhook.id).expect("read").expect("there");
        assert!(
            kept.enabled,
            "not disabled while its dead letter is unwritten"
        );

        let outbox = Recorder::default();
        assert!(turn(&shared, &outbox, &webhook, 1).await.is_ok());
        assert_eq!(outbox.reasons(), ["gone"]);
        let gone = shared.store.get(&webhook.id).expect("read").expect("there");
        assert!(!gone.enabled);
        assert_eq!(gone.disabled_reason.as_deref(), Some("gone"));
        assert_eq!(notices(&outbox), ["gone"]);
    }

    /// The `reason` of each notice the stage published.
    fn notices(outbox: &Recorder) -> Vec<String> {
        outbox
            .notices
            .lock()
            .expect("recorder")
            .iter()
            .map(|(key, body)| {
                assert_eq!(key, WEBHOOK_DISABLED);
                let body: serde_json::Value = serde_json::from_slice(body).expect("JSON");
                body["reason"].as_str().expect("reason").to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_failure_past_disable_after_parks_the_job_notifies_once_and_disables() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(503).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        let six_days_ago = SystemTime::now() - Duration::from_secs(6 * 24 * 3600);
        let failed = Attempted {
            version: &webhook.updated_at,
            at: six_days_ago,
            ok: false,
            status: Some(503),
            error: None,
            latency: Duration::from_millis(3),
        };
        shared.health.record(&webhook.id, &failed);
        for n in 1..=2 {
            assert!(turn(&shared, &outbox, &webhook, n).await.is_ok());
        }
        assert_eq!(outbox.reasons(), ["webhook_disabled", "webhook_disabled"]);
        assert!(outbox.delayed.lock().expect("recorder").is_empty());
        assert_eq!(
            notices(&outbox),
            ["failing"],
            "one notice, however many jobs"
        );
        let disabled = shared.store.get(&webhook.id).expect("read").expect("there");
        assert!(!disabled.enabled);
        assert_eq!(disabled.disabled_reason.as_deref(), Some("failing"));
    }

    #[tokio::test]
    async fn a_delivery_over_the_rate_limit_waits_for_its_slot_without_an_attempt() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(204).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        let patch = crate::store::WebhookPatch {
            rate_limit: Some(Some(1)),
            ..crate::store::WebhookPatch::default()
        };
        let webhook = shared
            .store
            .update(&webhook.id, patch)
            .await
            .expect("update")
            .expect("there");
        // A limit of 1/s lets a burst of three through, then gives the fourth a slot.
        for n in 1..=4 {
            assert!(turn(&shared, &outbox, &webhook, n).await.is_ok());
        }
        assert_eq!(receiver.count(), 3, "the fourth waits for its slot");
        let delayed = outbox.delayed.lock().expect("recorder");
        let [(bucket, properties)] = delayed.as_slice() else {
            panic!("one paced job, got {}", delayed.len());
        };
        assert_eq!(
            *bucket,
            Duration::from_millis(500),
            "the pace rung below its wait"
        );
        let state = Job::from_headers(properties.headers().as_ref())
            .expect("short headers")
            .expect("a job");
        assert_eq!(state.attempts, 0, "waiting for a slot is not an attempt");
        let slot = state.not_before_ms.expect("its slot") - job::unix_ms(SystemTime::now());
        assert!((900..=1_000).contains(&slot), "{slot} ms ahead");
    }

    #[tokio::test]
    async fn once_its_circuit_opens_a_delivery_waits_out_the_cool_down_without_a_request() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(503).await;
        let webhook = testing::webhook(&shared, 1, &receiver.url()).await;
        // The default policy opens the circuit after 5 failures in a row, for 30 s.
        for n in 1..=6 {
            assert!(turn(&shared, &outbox, &webhook, n).await.is_ok());
        }
        assert_eq!(receiver.count(), 5, "the sixth was not sent");
        let delayed = outbox.delayed.lock().expect("recorder");
        assert_eq!(delayed.len(), 6);
        let (bucket, properties) = &delayed[5];
        assert!(*bucket >= Duration::from_secs(30), "{bucket:?}");
        let state = Job::from_headers(properties.headers().as_ref())
            .expect("short headers")
            .expect("a job");
        assert_eq!(state.attempts, 0, "a deferral is not an attempt");
    }
}
