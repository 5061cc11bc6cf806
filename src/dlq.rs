//! The dead-letter queue: what a dead letter carries, and the `webhookd dlq` operations on it.
//!
//! A dead letter is the original body plus `x-webhookd-*` headers saying why it died, so ops can
//! read it with nothing but the broker. The operations read the queue with a consumer that acks
//! nothing it does not mean to remove: unacked messages go back to their place when the channel
//! closes (RabbitMQ requeues at the original position), so listing twice shows the same messages
//! in the same order. `basic.get` in a loop would do the same work one round trip at a time.
//!
//! Going back is not instant: the broker requeues after the channel is gone (a quorum queue
//! through its Raft log), and until then those messages are neither ready nor counted, so a scan
//! right after another one (`dlq replay` after its own look at the selection, or after `dlq
//! list`) would take a queue of dead letters for an empty one. A reader therefore keeps a
//! consumer on the queue until its channel closes, and the broker drops a channel's consumers and
//! requeues its messages in one step; a scan starts only once the queue has no consumer, and
//! fails, saying why, if that does not happen in time. It never reports a partial pass as whole.
//!
//! Replay removes a dead letter only after its replacement in the work queue is confirmed by the
//! broker; a crash in between leaves a duplicate, never a loss.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Consumer, Queue};
use serde::Serialize;

use crate::broker::{BrokerError, Publisher, Topology};
use crate::delivery::DeadReason;
use crate::job::{self, header, Job};

/// How long the `dlq` commands and the console wait on the broker before failing: for another
/// reader of the dead-letter queue to hand its messages back, or for a message the broker counts
/// to arrive.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long a scan waits for a delivery before asking the broker whether any are still to come,
/// and how often it asks whether other readers are gone.
const RECHECK: Duration = Duration::from_millis(250);

/// Everything a dead letter records besides its body.
pub struct Parked<'a> {
    pub reason: DeadReason,
    /// The delivery id, or the event id for a message that never reached a webhook.
    pub message_id: &'a str,
    pub account_id: Option<u64>,
    pub event: Option<&'a str>,
    pub url: Option<&'a str>,
    /// The retry state (webhook, attempts, first attempt, last status and error), if a webhook
    /// was involved.
    pub job: Option<&'a Job>,
    /// Why, for a message that died before any attempt (a malformed event).
    pub error: Option<&'a str>,
}

impl Parked<'_> {
    pub fn properties(&self, now: SystemTime) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(job) = self.job {
            job.write(&mut headers);
        }
        job::put_str(&mut headers, header::REASON, self.reason.as_str());
        job::put_str(
            &mut headers,
            header::DEAD_AT,
            &humantime::format_rfc3339_millis(now).to_string(),
        );
        if let Some(account) = self.account_id {
            job::put_u64(&mut headers, header::ACCOUNT_ID, account);
        }
        if let Some(event) = self.event {
            job::put_str(&mut headers, header::EVENT, event);
        }
        if let Some(url) = self.url {
            job::put_str(&mut headers, header::URL, url);
        }
        if let Some(error) = self.error {
            job::put_str(
                &mut headers,
                header::LAST_ERROR,
                job::truncate(error, job::MAX_ERROR_TEXT),
            );
        }
        if self.job.is_none() {
            job::put_u64(&mut headers, header::ATTEMPTS, 0);
        }
        BasicProperties::default()
            .with_message_id(ShortString::from(self.message_id))
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers)
    }
}

/// One dead letter as ops see it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: String,
    pub dead_at: Option<String>,
    pub reason: String,
    pub account_id: Option<u64>,
    pub webhook_id: Option<String>,
    pub event: Option<String>,
    pub url: Option<String>,
    pub attempts: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Every header, for `dlq show`.
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy if it is not UTF-8: a malformed event may not be), when the scan
    /// was asked for bodies: a listing of ten thousand large dead letters keeps none of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The event's id (its `message_id` as published), for a dead letter of a delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

impl Entry {
    fn from_message(properties: &BasicProperties, body: Option<&[u8]>) -> Entry {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let text = |key| job::get_str(headers, key);
        Entry {
            id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            dead_at: text(header::DEAD_AT),
            reason: text(header::REASON).unwrap_or_else(|| "unknown".to_owned()),
            account_id: job::get_u64(headers, header::ACCOUNT_ID),
            webhook_id: text(header::WEBHOOK_ID),
            event: text(header::EVENT),
            url: text(header::URL),
            attempts: job::get_u64(headers, header::ATTEMPTS).unwrap_or(0),
            last_status: job::get_u64(headers, header::LAST_STATUS)
                .and_then(|s| u16::try_from(s).ok()),
            last_error: text(header::LAST_ERROR),
            headers: headers
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), display_value(v)))
                .collect(),
            body: body.map(|body| String::from_utf8_lossy(body).into_owned()),
            event_id: text(header::EVENT_ID),
        }
    }

    /// The message that sends this dead letter back for delivery on a fresh schedule: to its
    /// webhook alone if it had one, else as a new event to fan out.
    fn replay_properties(&self, now: SystemTime) -> BasicProperties {
        let properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        match &self.webhook_id {
            Some(webhook_id) => {
                let mut headers = FieldTable::default();
                Job {
                    webhook_id: webhook_id.clone(),
                    event_id: self.event_id.clone().unwrap_or_default(),
                    attempts: 0,
                    first_attempt_at_ms: job::unix_ms(now),
                    last_status: None,
                    last_error: None,
                    not_before_ms: None,
                }
                .write(&mut headers);
                properties
                    .with_message_id(ShortString::from(self.id.as_str()))
                    .with_headers(headers)
            }
            None => properties.with_message_id(ShortString::from(self.id.as_str())),
        }
    }
}

fn display_value(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

/// Which dead letters an operation acts on. Every set criterion must hold; `ids` (if any) must
/// contain the entry's id.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub ids: Vec<String>,
    pub account_id: Option<u64>,
    pub webhook_id: Option<String>,
    pub reason: Option<DeadReason>,
    pub event: Option<String>,
    pub since: Option<SystemTime>,
    /// Dead letters of these webhooks are left out, whatever else matches.
    pub exclude_webhooks: HashSet<String>,
}

impl Filter {
    /// Whether the filter names anything at all (replay and purge refuse an empty one unless
    /// told `--all`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.account_id.is_none()
            && self.webhook_id.is_none()
            && self.reason.is_none()
            && self.event.is_none()
            && self.since.is_none()
    }

    pub fn matches(&self, entry: &Entry) -> bool {
        (self.ids.is_empty() || self.ids.contains(&entry.id))
            && entry
                .webhook_id
                .as_ref()
                .is_none_or(|w| !self.exclude_webhooks.contains(w))
            && self.account_id.is_none_or(|a| entry.account_id == Some(a))
            && self
                .webhook_id
                .as_ref()
                .is_none_or(|w| entry.webhook_id.as_ref() == Some(w))
            && self.reason.is_none_or(|r| entry.reason == r.as_str())
            && self
                .event
                .as_ref()
                .is_none_or(|e| entry.event.as_ref() == Some(e))
            && self.since.is_none_or(|since| {
                entry
                    .dead_at
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .is_some_and(|dead_at| dead_at >= since)
            })
    }
}

/// What to do with each matching dead letter during a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it where it is.
    Look,
    /// Publish it back to the work queue, then remove it.
    Replay,
    /// Remove it.
    Purge,
}

/// Reads the dead-letter queue once, front to back, returning the entries matching `filter` (at
/// most `limit`) after applying `action` to each; with `bodies`, each entry carries its body.
/// Entries not acted on stay in place. Waits up to `patience` for other readers of the queue to
/// finish, and as long for each message the broker still counts as ready, and fails after that.
pub async fn scan(
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    filter: &Filter,
    limit: Option<usize>,
    action: Action,
    bodies: bool,
    patience: Duration,
) -> Result<Vec<Entry>, BrokerError> {
    let channel = connection.create_channel().await?;
    let publisher = match action {
        Action::Replay => Some(Publisher::open(connection, topology.clone()).await?),
        Action::Look | Action::Purge => None,
    };
    let mut scan = Scan {
        publisher: publisher.as_ref(),
        filter,
        limit,
        action,
        bodies,
        patience,
        now: SystemTime::now(),
        found: Vec::new(),
    };
    let result = scan.run(&channel, topology).await;
    // Closing the channel hands every unacked message back to the queue, in place; the holding
    // consumer (dropped only after the close) keeps that visible until it is done.
    let _ = channel.close(200, ShortString::from("scan done")).await;
    result.map(|_holding| scan.found)
}

/// How many dead letters the queue holds, as the broker counts them.
pub async fn depth(
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
) -> Result<u32, BrokerError> {
    let channel = connection.create_channel().await?;
    let queue = ShortString::from(topology.dead_letter_queue.as_str());
    let declared = passive_declare(&channel, &queue).await;
    let _ = channel.close(200, ShortString::from("counted")).await;
    Ok(declared?.message_count())
}

/// The queue's ready messages and consumers; fails (closing the channel) if it does not exist.
async fn passive_declare(channel: &Channel, queue: &ShortString) -> Result<Queue, BrokerError> {
    Ok(channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// How many dead letters one window of a scan holds in webhookd's memory at most.
const WINDOW: u16 = 64;

/// One pass over the dead-letter queue.
///
/// A message a scan leaves in place stays unacked until the scan ends, so that the broker does
/// not deliver it again within the same scan. With one consumer, the prefetch window would fill
/// with such messages and the scan would stall; with unlimited prefetch, the broker would push
/// the whole queue into this process's memory at once. So the scan reads in windows: a consumer
/// with a prefetch of [`WINDOW`] takes that many, is cancelled (its messages stay unacked on the
/// channel, held by the broker, not here), and the next consumer takes the next window.
///
/// A scan ends when it has seen as many messages as the queue had ready when it started, or when
/// the broker says none is ready any more (someone else took or purged the rest); never on a
/// mere pause in deliveries, which a loaded broker makes.
struct Scan<'a> {
    publisher: Option<&'a Publisher>,
    filter: &'a Filter,
    limit: Option<usize>,
    action: Action,
    bodies: bool,
    patience: Duration,
    now: SystemTime,
    found: Vec<Entry>,
}

impl Scan<'_> {
    /// The pass itself; what it returns is the consumer that holds the queue until the channel
    /// closes, if the scan took anything.
    async fn run(
        &mut self,
        channel: &Channel,
        topology: &Topology,
    ) -> Result<Option<Consumer>, BrokerError> {
        let queue = ShortString::from(topology.dead_letter_queue.as_str());
        let total = self.alone(channel, &queue).await?.message_count() as usize;
        // Per consumer (not global): each new consumer gets a window of its own.
        channel
            .basic_qos(WINDOW, BasicQosOptions::default())
            .await?;
        let mut seen = 0;
        let mut window = 0u64;
        // The broker has no more ready for this scan than what it already sent.
        let mut drained = false;
        while seen < total && !drained && !self.done() {
            window += 1;
            let tag = ShortString::from(format!("webhookd-dlq-{window}"));
            let mut consumer = channel
                .basic_consume(
                    queue.clone(),
                    tag.clone(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let mut taken = 0;
            let mut cancelled = false;
            let mut waiting_since = Instant::now();
            loop {
                if !cancelled
                    && (taken == usize::from(WINDOW) || seen >= total || drained || self.done())
                {
                    // Whatever the broker sent before the cancel still arrives, then the
                    // consumer ends; it is read too, so nothing of this window is skipped.
                    channel
                        .basic_cancel(tag.clone(), BasicCancelOptions::default())
                        .await?;
                    cancelled = true;
                }
                let delivery = match tokio::time::timeout(RECHECK, consumer.next()).await {
                    Ok(Some(delivery)) => delivery?,
                    Ok(None) => break,
                    Err(_) => {
                        let ready = passive_declare(channel, &queue).await?.message_count();
                        if !cancelled && ready == 0 {
                            // Fewer messages than counted: someone else took or purged the
                            // rest. Cancelling collects any still on their way.
                            drained = true;
                        } else if waiting_since.elapsed() >= self.patience {
                            return Err(BrokerError::DeadLettersStalled {
                                queue: queue.to_string(),
                                ready,
                                waited: self.patience,
                            });
                        }
                        continue;
                    }
                };
                waiting_since = Instant::now();
                taken += 1;
                seen += 1;
                if !self.done() {
                    self.visit(&delivery).await?;
                }
            }
        }
        if seen == 0 {
            return Ok(None);
        }
        // Not read: at most one message more, which goes back with the rest.
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let holding = channel
            .basic_consume(
                queue,
                ShortString::from("webhookd-dlq-holding"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Some(holding))
    }

    /// Waits until no one else consumes the queue (another `dlq` command, the console), so that
    /// what they hold is back and counted, and returns the queue's state then.
    async fn alone(&self, channel: &Channel, queue: &ShortString) -> Result<Queue, BrokerError> {
        let started = Instant::now();
        loop {
            let declared = passive_declare(channel, queue).await?;
            if declared.consumer_count() == 0 {
                return Ok(declared);
            }
            if started.elapsed() >= self.patience {
                return Err(BrokerError::DeadLettersHeld {
                    queue: queue.to_string(),
                    consumers: declared.consumer_count(),
                    waited: self.patience,
                });
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    fn done(&self) -> bool {
        self.limit.is_some_and(|limit| self.found.len() >= limit)
    }

    async fn visit(&mut self, delivery: &lapin::message::Delivery) -> Result<(), BrokerError> {
        let body = self.bodies.then_some(delivery.data.as_slice());
        let entry = Entry::from_message(&delivery.properties, body);
        if !self.filter.matches(&entry) {
            return Ok(());
        }
        match (self.action, self.publisher) {
            (Action::Replay, Some(publisher)) => {
                publisher
                    .to_work_queue(&delivery.data, entry.replay_properties(self.now))
                    .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            (Action::Purge, _) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            _ => {}
        }
        self.found.push(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(properties: &BasicProperties) -> Entry {
        Entry::from_message(properties, Some(b"{}"))
    }

    #[test]
    fn a_parked_delivery_reads_back_as_the_same_entry() {
        let job = Job {
            webhook_id: "wh_1".into(),
            event_id: "ev".into(),
            attempts: 4,
            first_attempt_at_ms: 1,
            last_status: Some(503),
            last_error: None,
            not_before_ms: None,
        };
        let parked = Parked {
            reason: DeadReason::Exhausted,
            message_id: "d-1",
            account_id: Some(7),
            event: Some("message_created"),
            url: Some("http://x/"),
            job: Some(&job),
            error: None,
        };
        let e = entry(&parked.properties(SystemTime::now()));
        assert_eq!(e.id, "d-1");
        assert_eq!(e.reason, "exhausted");
        assert_eq!(e.account_id, Some(7));
        assert_eq!(e.webhook_id.as_deref(), Some("wh_1"));
        assert_eq!(e.attempts, 4);
        assert_eq!(e.last_status, Some(503));
        assert!(e.dead_at.is_some());
    }

    #[test]
    fn replay_starts_a_fresh_schedule_for_the_same_webhook() {
        let job = Job {
            webhook_id: "wh_1".into(),
            event_id: "ev".into(),
            attempts: 9,
            first_attempt_at_ms: 1,
            last_status: Some(500),
            last_error: Some("boom".into()),
            not_before_ms: None,
        };
        let parked = Parked {
            reason: DeadReason::Exhausted,
            message_id: "d-1",
            account_id: Some(7),
            event: None,
            url: None,
            job: Some(&job),
            error: None,
        };
        let now = SystemTime::now();
        let replay = entry(&parked.properties(now)).replay_properties(now);
        let replayed = Job::from_headers(replay.headers().as_ref())
            .expect("short headers")
            .expect("a job");
        assert_eq!(replayed.webhook_id, "wh_1");
        assert_eq!(replayed.event_id, "ev");
        assert_eq!(replayed.attempts, 0);
        assert_eq!(replayed.first_attempt_at_ms, job::unix_ms(now));
        assert_eq!(replayed.last_error, None);
    }

    #[test]
    fn filters_combine_and_an_empty_filter_matches_everything() {
        let parked = Parked {
            reason: DeadReason::Rejected,
            message_id: "d-2",
            account_id: Some(3),
            event: Some("contact_created"),
            url: None,
            job: None,
            error: Some("malformed"),
        };
        let e = entry(&parked.properties(SystemTime::now()));
        let cases: Vec<(Filter, bool)> = vec![
            (Filter::default(), true),
            (
                Filter {
                    account_id: Some(3),
                    reason: Some(DeadReason::Rejected),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    account_id: Some(4),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    ids: vec!["x".into(), "d-2".into()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    webhook_id: Some("wh".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    event: Some("contact_created".into()),
                    since: Some(SystemTime::now() - Duration::from_secs(60)),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    since: Some(SystemTime::now() + Duration::from_secs(60)),
                    ..Filter::default()
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&e), expected, "{filter:?}");
        }
    }
}
