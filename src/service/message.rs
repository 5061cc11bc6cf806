//! One message: an AMQP delivery → decode → lookup → its deliveries → settle.
//!
//! [`process`] decides what happens to one message and returns whether it may be acked;
//! [`handle`] turns that into the acker's verdict. A message is acked only when each of its
//! deliveries reached a 2xx, or its replacement (a retry job in a delay queue, a dead letter) has
//! been confirmed by the broker and taken by a queue (publishes are mandatory: without that, a
//! publish to a queue deleted under webhookd would be confirmed and dropped). Anything else — a
//! broker nack, a lost channel, a returned publish, a shutdown that ran out of drain time — leaves
//! the message to the broker, which delivers it again: a duplicate with the same delivery id,
//! never a loss. A returned publish also ends the session, so the next one declares the queues
//! again. A message that keeps coming back unsettled (it crashes the daemon, say) is parked in
//! the dead-letter queue as `redelivered` after [`REDELIVERY_LIMIT`] returns, before it is read
//! again: webhookd's limit replaces RabbitMQ 4's, which would drop it.
//!
//! The clock, the randomness and the broker come in as arguments ([`Clock`], [`Outbox`]), so the
//! tests below run a message through without a broker.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument as _};

use super::acks::{Acks, Verdict};
use super::attempt::{self, EventRef, Unsettled};
use super::timeline::Timeline;
use super::Publisher;
use super::{Outbox, Shared, Stage, SystemClock};
use crate::broker::BrokerError;
use crate::delivery::{sign, DeadReason};
use crate::dlq::Parked;
use crate::event::{self, Envelope};
use crate::job::{self, Job};
use crate::lifecycle::WEBHOOK_DISABLED;
use crate::retry::Schedule;

/// How many times a message may have come back to the work queue unsettled before it is parked
/// in the dead-letter queue as `redelivered` instead of being processed once more: a message that
/// crashes the daemon (or outlasts every drain) must not hold the queue forever. Quorum queues
/// count the returns in `x-delivery-count`; RabbitMQ 4's own limit, 20 by default, would drop the
/// message, so webhookd turns it off (see `broker`) and keeps the same number here, as its own.
/// Classic queues count nothing, and have no such limit.
const REDELIVERY_LIMIT: u64 = 20;

/// How a session's message tasks are told to stop before they settle.
#[derive(Clone, Default)]
pub(super) struct Stops {
    /// Drain time is up: nack and requeue what is unfinished.
    pub(super) hand_back: CancellationToken,
    /// The session lost its broker link, or a queue it publishes to: settle nothing (the broker
    /// requeues it all).
    pub(super) lost: CancellationToken,
    /// The queue whose publish came back, when that is why `lost` was cancelled.
    pub(super) gone_queue: Arc<Mutex<Option<String>>>,
}

impl Stops {
    /// Why the session ended when `lost` was cancelled.
    pub(super) fn loss(&self) -> BrokerError {
        let gone = self
            .gone_queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match gone {
            Some(queue) => BrokerError::Unroutable(queue),
            None => BrokerError::PublisherLost,
        }
    }
}

/// One message, from delivery to its verdict for the acker, in a span that every line logged on
/// its way carries.
pub(super) async fn handle(
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    acks: Acks,
    mut delivery: Delivery,
    received: Instant,
    stops: Stops,
) {
    let timeline = Timeline::new(received);
    if !shared.deliver_notices && delivery.routing_key.as_str() == WEBHOOK_DISABLED {
        // webhookd's own notice, caught by a wildcard binding: it is for the application, not
        // for the account's webhooks, unless an operator bound it on purpose.
        debug!("skipping webhookd's own notice");
        acks.settle(delivery.delivery_tag, Verdict::Ack, None);
        return;
    }
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let live = shared.live();
    // A debug span: creating one formats its fields, and at thousands of messages a second two
    // spans a delivery cost several per cent of the daemon's CPU. The `attempt` span inside it,
    // whose ids every info and warn line of a delivery needs, stays at info.
    let span = tracing::debug_span!(
        "message",
        message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        redelivered = delivery.redelivered,
    );
    let stage = Stage {
        shared: &shared,
        live: &live,
        outbox: publisher.as_ref(),
        clock: &SystemClock,
        timeline: &timeline,
    };
    let processing = process(&stage, &delivery.properties, delivery.redelivered, body);
    let settled = tokio::select! {
        () = stops.lost.cancelled() => return,
        () = stops.hand_back.cancelled() => Err(Unsettled::ShuttingDown),
        result = processing.instrument(span.clone()) => result,
    };
    let verdict = match settled {
        Ok(()) => Verdict::Ack,
        Err(Unsettled::Broker(BrokerError::Amqp(_))) => {
            // A publish failed on a dead channel or connection: the whole session is gone, and
            // the broker requeues everything unacked.
            stops.lost.cancel();
            return;
        }
        Err(Unsettled::Broker(BrokerError::Unroutable(queue))) => {
            // A queue webhookd declared was deleted under it. Requeued alone, the message would
            // come straight back to the same missing queue; a new session declares the queues
            // again (delay queues on first use), and the broker requeues what this one held. The
            // supervisor logs the reconnect with the queue's name.
            stops
                .gone_queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(queue);
            stops.lost.cancel();
            return;
        }
        Err(Unsettled::ShuttingDown) => Verdict::Requeue,
        Err(reason) => {
            // Handed back at once, the message would be redelivered and POSTed again at once:
            // a hot loop against a receiver (or a broker) that is already failing. It waits
            // first, longer the more settlements in a row failed; its prefetch slot stays taken
            // meanwhile, which slows the consumer down as a whole, as it should.
            let failures = shared.settle_failures.fetch_add(1, Ordering::Relaxed) + 1;
            let wait = settle_retry_delay(failures, stage.clock.unit());
            let message_id = delivery.properties.message_id().as_ref();
            warn!(parent: &span, message_id = message_id.map(|id| id.as_str()), %reason, retry_in = ?wait, "settling a message failed: handing it back to the broker after a pause");
            tokio::select! {
                () = stops.lost.cancelled() => return,
                () = stops.hand_back.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
            Verdict::Requeue
        }
    };
    if verdict == Verdict::Ack && shared.settle_failures.load(Ordering::Relaxed) != 0 {
        shared.settle_failures.store(0, Ordering::Relaxed);
    }
    let marks = (verdict == Verdict::Ack)
        .then(|| timeline.marks())
        .flatten();
    acks.settle(delivery.delivery_tag, verdict, marks);
}

/// The pause before a message whose settlement failed is handed back: 1 s doubling to 30 s
/// over the failures in a row, with jitter so the messages of one outage do not all return
/// in the same instant.
fn settle_retry_delay(failures: u32, unit: f64) -> Duration {
    Schedule::new(
        Duration::from_secs(1),
        2.0,
        0.2,
        Duration::from_secs(30),
        Duration::MAX,
    )
    .map(|schedule| schedule.delay(failures, unit))
    .unwrap_or(Duration::from_secs(1))
}

/// Decides everything about one message; `Ok` means it may be acked.
async fn process<O: Outbox>(
    stage: &Stage<'_, O>,
    properties: &BasicProperties,
    redelivered: bool,
    body: Bytes,
) -> Result<(), Unsettled> {
    let (shared, live) = (stage.shared, stage.live);
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    let (job, envelope) = match read(properties, redelivered, &body, live.max_event_bytes) {
        Ok(read) => read,
        // Boxed, as a failed attempt's follow-up is (`attempt.rs`): rare, and a publish's future
        // is large.
        Err(unroutable) => {
            return Box::pin(park_unrouted(stage, &body, message_id, unroutable)).await
        }
    };
    stage.timeline.decoded();
    let event_id = match &job {
        Some(job) if !job.event_id.is_empty() => job.event_id.clone(),
        _ => event::event_id(message_id, &body),
    };

    let targets = match &job {
        Some(job) => match shared
            .store
            .account_webhook(envelope.account_id, &job.webhook_id)?
        {
            Some(webhook) if webhook.enabled => vec![webhook],
            Some(webhook) => {
                // Disabled, not deleted: whoever disabled it may enable it again, so the job is
                // kept where ops can replay it rather than dropped.
                let delivery_id = sign::delivery_id(&event_id, &job.webhook_id);
                info!(%delivery_id, webhook_id = %job.webhook_id, %event_id, "webhook disabled while its job waited: job dead-lettered");
                let parked = Parked {
                    reason: DeadReason::WebhookDisabled,
                    message_id: &delivery_id,
                    account_id: Some(envelope.account_id),
                    event: Some(&envelope.event),
                    url: Some(&webhook.url),
                    job: Some(job),
                    error: None,
                };
                let properties = parked.properties(stage.clock.now());
                Box::pin(stage.outbox.to_dead_letters(&body, properties)).await?;
                shared
                    .metrics
                    .dead_letter(DeadReason::WebhookDisabled.as_str());
                return Ok(());
            }
            None => {
                shared.metrics.job_dropped();
                let delivery_id = sign::delivery_id(&event_id, &job.webhook_id);
                info!(%delivery_id, webhook_id = %job.webhook_id, %event_id, "webhook deleted while its job waited: job dropped");
                return Ok(());
            }
        },
        None => {
            shared.metrics.event(&envelope.event);
            shared
                .store
                .matching(envelope.account_id, &envelope.event, envelope.inbox_id)?
        }
    };
    stage.timeline.looked_up();
    if targets.is_empty() {
        debug!(account_id = envelope.account_id, event = %envelope.event, "no matching webhook");
        return Ok(());
    }

    let event = EventRef {
        body: &body,
        envelope: &envelope,
        event_id: &event_id,
    };
    if let [webhook] = targets.as_slice() {
        return attempt::deliver(stage, &event, webhook, job.as_ref()).await;
    }
    // Unordered, so a finished request wakes only its own delivery: `join_all` polls every
    // delivery of the event each time any one of them is woken.
    let results: Vec<Result<(), Unsettled>> = targets
        .iter()
        .map(|webhook| attempt::deliver(stage, &event, webhook, job.as_ref()))
        .collect::<FuturesUnordered<_>>()
        .collect()
        .await;
    results.into_iter().collect()
}

/// Why a message is not delivered at all, and the retry job it carried, if any.
#[derive(Debug)]
struct Unroutable {
    reason: DeadReason,
    error: String,
    /// Boxed: a job is large, and most messages are not unroutable.
    job: Option<Box<Job>>,
}

/// What webhookd needs of a message before any lookup: its retry job (if it is one) and its
/// envelope; or why it cannot be delivered (webhookd's own headers forged, back too often, too
/// large, not an event).
fn read(
    properties: &BasicProperties,
    redelivered: bool,
    body: &[u8],
    max_event_bytes: usize,
) -> Result<(Option<Job>, Envelope), Unroutable> {
    let unroutable = |reason, error: String, job| Unroutable { reason, error, job };
    let job = Job::from_headers(properties.headers().as_ref())
        .map_err(|error| unroutable(DeadReason::Malformed, error.to_string(), None))?;
    // Checked before anything reads the body: it may be what keeps bringing the message back.
    // Only on a redelivery: a publisher may set the header itself, and RabbitMQ 4 keeps it on
    // the first delivery.
    let returns = properties
        .headers()
        .as_ref()
        .filter(|_| redelivered)
        .and_then(|headers| job::get_u64(headers, "x-delivery-count"))
        .unwrap_or(0);
    if returns >= REDELIVERY_LIMIT {
        let error = format!("came back {returns} times without being settled");
        return Err(unroutable(
            DeadReason::Redelivered,
            error,
            job.map(Box::new),
        ));
    }
    if body.len() > max_event_bytes {
        let error = format!(
            "body is {} bytes, over max_event_bytes = {max_event_bytes}",
            body.len()
        );
        return Err(unroutable(DeadReason::TooLarge, error, None));
    }
    let envelope = event::decode_envelope(body)
        .map_err(|malformed| unroutable(DeadReason::Malformed, malformed.to_string(), None))?;
    Ok((job, envelope))
}

/// A message that is not delivered at all goes to the DLQ once. A retry job keeps its webhook
/// and history there, so a replay goes to that webhook alone.
async fn park_unrouted<O: Outbox>(
    stage: &Stage<'_, O>,
    body: &[u8],
    message_id: Option<&str>,
    unroutable: Unroutable,
) -> Result<(), Unsettled> {
    let Unroutable { reason, error, job } = unroutable;
    let id = event::event_id(message_id, body);
    warn!(event_id = %id, reason = reason.as_str(), %error, "dead-lettering a message that cannot be delivered");
    let parked = Parked {
        reason,
        message_id: &id,
        account_id: None,
        event: None,
        url: None,
        job: job.as_deref(),
        error: Some(&error),
    };
    stage
        .outbox
        .to_dead_letters(body, parked.properties(stage.clock.now()))
        .await?;
    stage.shared.metrics.dead_letter(reason.as_str());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use lapin::types::{AMQPValue, FieldTable, ShortString};

    use super::*;
    use crate::service::testing::{self, FixedClock, Receiver, Recorder};

    fn event(account: u64) -> Bytes {
        Bytes::from(format!(
            r#"{{"event":"message_created","id":1,"account":{{"id":{account}}}}}"#
        ))
    }

    fn named(id: &str) -> BasicProperties {
        BasicProperties::default().with_message_id(ShortString::from(id))
    }

    async fn process_one(
        shared: &Shared,
        outbox: &Recorder,
        properties: &BasicProperties,
        redelivered: bool,
        body: Bytes,
    ) -> Result<(), Unsettled> {
        let live = shared.live();
        let stage = Stage {
            shared,
            live: &live,
            outbox,
            clock: &FixedClock(SystemTime::now()),
            timeline: &Timeline::new(Instant::now()),
        };
        process(&stage, properties, redelivered, body).await
    }

    #[test]
    fn reading_a_message_names_why_it_cannot_be_delivered() {
        let counted = |count: i64| {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from("x-delivery-count"),
                AMQPValue::LongLongInt(count),
            );
            named("m").with_headers(headers)
        };
        let mut forged = FieldTable::default();
        job::put_str(&mut forged, job::header::WEBHOOK_ID, &"w".repeat(5_000));
        let over = i64::try_from(REDELIVERY_LIMIT).expect("small");
        let good = event(1);
        // (case, properties, redelivered, body, why it is parked)
        type Case<'a> = (&'a str, BasicProperties, bool, &'a [u8], Option<DeadReason>);
        let cases: [Case; 7] = [
            ("an event", named("m"), false, &good, None),
            (
                "not JSON",
                named("m"),
                false,
                b"{nope",
                Some(DeadReason::Malformed),
            ),
            (
                "too large",
                named("m"),
                false,
                &[b' '; 65],
                Some(DeadReason::TooLarge),
            ),
            (
                "forged header",
                named("m").with_headers(forged),
                false,
                &good,
                Some(DeadReason::Malformed),
            ),
            (
                "back too often",
                counted(over),
                true,
                &good,
                Some(DeadReason::Redelivered),
            ),
            (
                "count on a first delivery",
                counted(over),
                false,
                &good,
                None,
            ),
            ("back less often", counted(over - 1), true, &good, None),
        ];
        for (name, properties, redelivered, body, expected) in cases {
            let got = read(&properties, redelivered, body, 64)
                .err()
                .map(|u| u.reason);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_parked_as_malformed_and_may_be_acked() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let body = Bytes::from_static(b"{nope");
        let settled = process_one(&shared, &outbox, &named("m-1"), false, body).await;
        assert!(settled.is_ok());
        assert_eq!(outbox.reasons(), ["malformed"]);
    }

    #[tokio::test]
    async fn a_message_back_too_often_is_parked_as_redelivered_but_only_on_a_redelivery() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let receiver = Receiver::answering(200).await;
        testing::webhook(&shared, 1, &receiver.url()).await;
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("x-delivery-count"),
            AMQPValue::LongLongInt(i64::try_from(REDELIVERY_LIMIT).expect("small")),
        );
        let counted = named("m-2").with_headers(headers);
        // A publisher may set the header itself: on a first delivery it means nothing.
        let first = process_one(&shared, &outbox, &counted, false, event(1)).await;
        assert!(first.is_ok());
        assert!(outbox.reasons().is_empty());
        assert_eq!(receiver.count(), 1);
        let again = process_one(&shared, &outbox, &counted, true, event(1)).await;
        assert!(again.is_ok());
        assert_eq!(outbox.reasons(), ["redelivered"]);
        assert_eq!(receiver.count(), 1, "parked before it is delivered again");
    }

    #[tokio::test]
    async fn a_job_of_a_disabled_webhook_is_parked_and_one_of_a_deleted_webhook_dropped() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let webhook = testing::webhook(&shared, 3, "http://127.0.0.1:9/unused").await;
        let job = Job {
            webhook_id: webhook.id.clone(),
            event_id: "ev-3".into(),
            attempts: 2,
            first_attempt_at_ms: 1,
            last_status: Some(503),
            last_error: None,
            not_before_ms: None,
        };
        let properties = job.properties("d-3");
        shared
            .store
            .set_enabled(&webhook.id, false)
            .await
            .expect("disable");
        let parked = process_one(&shared, &outbox, &properties, false, event(3)).await;
        assert!(parked.is_ok());
        assert_eq!(outbox.reasons(), ["webhook_disabled"]);
        let letter = outbox.parked.lock().expect("recorder")[0].clone();
        assert_eq!(testing::header_of(&letter, job::header::ATTEMPTS), "2");

        shared.store.delete(&webhook.id).await.expect("delete");
        let dropped = process_one(&shared, &outbox, &properties, false, event(3)).await;
        assert!(dropped.is_ok());
        assert_eq!(
            outbox.reasons().len(),
            1,
            "a deleted webhook's job is dropped"
        );
        assert!(shared
            .metrics
            .render()
            .contains("webhookd_jobs_dropped_total 1"));
    }

    #[tokio::test]
    async fn an_event_no_webhook_wants_is_acked_untouched() {
        let (shared, outbox) = (testing::shared(), Recorder::default());
        let settled = process_one(&shared, &outbox, &named("m-4"), false, event(4)).await;
        assert!(settled.is_ok());
        assert!(outbox.reasons().is_empty());
        assert!(outbox.delayed.lock().expect("recorder").is_empty());
    }
}
