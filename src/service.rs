//! The daemon: wiring, the consumer loop, one message's way from delivery to settlement, and
//! shutdown.
//!
//! The consumer loop only receives and spawns; [`process`] decides what happens to one message
//! and returns whether it may be acked; [`settle`] acks or hands it back. A message is acked only
//! when each of its deliveries reached a 2xx, or its replacement (a retry job in a delay queue, a
//! dead letter) has been confirmed by the broker. Anything else — a broker nack, a lost channel, a
//! shutdown that ran out of drain time — leaves the message to the broker, which delivers it
//! again: a duplicate with the same delivery id, never a loss.
//!
//! A session is one pair of broker connections (consume, publish). When either dies, the
//! supervisor in [`run`] marks the daemon unready, waits on the retry schedule's own backoff and
//! starts a new session, declaring the topology again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::admin::{self, AdminState};
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::config::Config;
use crate::delivery::{self, sign, Client, ClientSettings, DeadReason, Outcome};
use crate::dlq::Parked;
use crate::event::{self, Envelope};
use crate::job::{self, Job};
use crate::metrics::Metrics;
use crate::retry::Schedule;
use crate::store::{Attempt, Store, Webhook};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("delivery client: {0}")]
    Client(#[from] delivery::ClientError),
    #[error("retry schedule: {0}")]
    Schedule(#[from] crate::retry::ScheduleError),
    #[error("admin listener on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Whether the daemon is consuming; `/readyz` reads it.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    fn set(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }
}

/// What every message's processing shares. Built once; sessions come and go around it.
struct Shared {
    store: Store,
    client: Client,
    schedule: Schedule,
    max_event_bytes: usize,
    in_flight: Semaphore,
    metrics: Arc<Metrics>,
}

/// Runs the daemon until `shutdown` is cancelled: admin server, then broker sessions until
/// stopped. Returns after in-flight work was finished or handed back.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let store = Store::open(&config.store.path)?;
    let listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: config.admin.listen,
            source,
        })?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let retry = &config.retry;
    let shared = Arc::new(Shared {
        store: store.clone(),
        client: Client::new(ClientSettings {
            connect_timeout: config.delivery.connect_timeout,
            request_timeout: config.delivery.request_timeout,
            allow_networks: config.delivery.allow_networks.clone(),
        })?,
        schedule: Schedule::new(
            retry.initial_interval,
            retry.multiplier,
            retry.jitter,
            retry.max_interval,
            retry.max_elapsed,
        )?,
        max_event_bytes: config.delivery.max_event_bytes,
        in_flight: Semaphore::new(config.delivery.max_in_flight),
        metrics: metrics.clone(),
    });

    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        token: config.admin.token().cloned(),
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    });
    info!(listen = %config.admin.listen, "admin API listening");
    let admin_task = tokio::spawn(admin::serve(listener, admin_state, shutdown.clone()));

    supervise(&config, &shared, &readiness, &shutdown).await;

    if let Err(error) = store.flush().await {
        error!(%error, "flushing the store at shutdown failed");
    }
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// Keeps a broker session running until shutdown, reconnecting with backoff.
async fn supervise(
    config: &Config,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) {
    let topology = Topology::from_config(&config.broker);
    let mut failures: u32 = 0;
    let mut first = true;
    while !shutdown.is_cancelled() {
        if !first {
            shared.metrics.reconnect();
        }
        first = false;
        let result = session(
            config,
            &topology,
            shared,
            readiness,
            shutdown,
            &mut failures,
        )
        .await;
        readiness.set(false);
        shared.metrics.broker_connected(false);
        match result {
            Ok(()) => break,
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = reconnect_delay(failures);
                warn!(%error, retry_in = ?wait, "broker session ended; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Reconnect backoff: 200 ms doubling to 10 s, with jitter so a fleet does not reconnect in
/// lockstep after a broker restart. The same validated schedule type as delivery retries.
fn reconnect_delay(failures: u32) -> Duration {
    Schedule::new(
        Duration::from_millis(200),
        2.0,
        0.2,
        Duration::from_secs(10),
        Duration::MAX,
    )
    .map(|schedule| schedule.delay(failures, rand::random::<f64>()))
    .unwrap_or(Duration::from_secs(1))
}

/// One broker session: connect, declare, consume until shutdown (Ok) or broker loss (Err).
async fn session(
    config: &Config,
    topology: &Topology,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    failures: &mut u32,
) -> Result<(), BrokerError> {
    let url = config.broker.url.expose();
    let heartbeat = config.broker.heartbeat;
    let consuming = broker::connect(url, heartbeat, "consumer").await?;
    let publishing = broker::connect(url, heartbeat, "publisher").await?;
    let channel = consuming.create_channel().await?;
    broker::declare(&channel, topology).await?;
    let publisher = Arc::new(Publisher::open(&publishing, topology.clone()).await?);
    channel
        .basic_qos(config.broker.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!("webhookd-{}", std::process::id());
    let mut consumer = channel
        .basic_consume(
            ShortString::from(topology.queue.as_str()),
            ShortString::from(tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    readiness.set(true);
    shared.metrics.broker_connected(true);
    *failures = 0;
    info!(queue = %topology.queue, prefetch = config.broker.prefetch, "consuming");

    let tasks = TaskTracker::new();
    let hand_back = CancellationToken::new();
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    tasks.spawn(handle(shared.clone(), publisher.clone(), delivery, hand_back.clone()));
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Err(BrokerError::ConsumerEnded),
            },
        }
    };
    readiness.set(false);
    if ended.is_ok() {
        drain(config, &channel, &tag, &tasks, &hand_back).await;
        close(&consuming, &publishing).await;
    } else {
        // The channel is gone: the broker requeues every unacked message by itself. In-flight
        // tasks finish on their own; their acks fail harmlessly.
        tasks.close();
    }
    ended
}

/// Graceful stop: no new messages, in-flight work finishes within the drain time, the rest is
/// handed back to the broker (nack + requeue), never dead-lettered.
async fn drain(
    config: &Config,
    channel: &lapin::Channel,
    tag: &str,
    tasks: &TaskTracker,
    hand_back: &CancellationToken,
) {
    info!(in_flight = tasks.len(), drain_timeout = ?config.service.drain_timeout, "stopping: draining");
    if let Err(error) = channel
        .basic_cancel(ShortString::from(tag), BasicCancelOptions::default())
        .await
    {
        warn!(%error, "cancelling the consumer failed");
    }
    tasks.close();
    if tokio::time::timeout(config.service.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            unfinished = tasks.len(),
            "drain time is up: handing unfinished messages back to the broker"
        );
        hand_back.cancel();
        tasks.wait().await;
    }
}

async fn close(consuming: &Connection, publishing: &Connection) {
    for connection in [consuming, publishing] {
        if let Err(error) = connection.close(200, ShortString::from("shutdown")).await {
            debug!(%error, "closing a broker connection");
        }
    }
}

/// One message, from delivery to settlement.
async fn handle(
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    mut delivery: Delivery,
    hand_back: CancellationToken,
) {
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let settled = tokio::select! {
        result = process(&shared, &publisher, &delivery.properties, body) => result,
        () = hand_back.cancelled() => Err(Unsettled::ShuttingDown),
    };
    settle(&delivery, settled).await;
}

/// Why a message is handed back instead of acked.
#[derive(Debug, thiserror::Error)]
enum Unsettled {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("shutting down before it was settled")]
    ShuttingDown,
}

async fn settle(delivery: &Delivery, settled: Result<(), Unsettled>) {
    let result = match settled {
        Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
        Err(reason) => {
            warn!(%reason, "handing a message back to the broker");
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(error) = result {
        // The channel is gone; the broker requeues the message itself.
        debug!(%error, "settling a message failed");
    }
}

/// Decides everything about one message; `Ok` means it may be acked.
async fn process(
    shared: &Shared,
    publisher: &Publisher,
    properties: &BasicProperties,
    body: Bytes,
) -> Result<(), Unsettled> {
    let job = Job::from_headers(properties.headers().as_ref());
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    if body.len() > shared.max_event_bytes {
        let error = format!(
            "body is {} bytes, over max_event_bytes = {}",
            body.len(),
            shared.max_event_bytes
        );
        return park_unrouted(
            shared,
            publisher,
            &body,
            message_id,
            DeadReason::TooLarge,
            &error,
        )
        .await;
    }
    let envelope = match event::decode_envelope(&body) {
        Ok(envelope) => envelope,
        Err(malformed) => {
            let error = malformed.to_string();
            return park_unrouted(
                shared,
                publisher,
                &body,
                message_id,
                DeadReason::Malformed,
                &error,
            )
            .await;
        }
    };
    let event_id = match &job {
        Some(job) if !job.event_id.is_empty() => job.event_id.clone(),
        _ => event::event_id(message_id, &body),
    };

    let targets = match &job {
        Some(job) => match shared.store.get(&job.webhook_id)? {
            Some(webhook) if webhook.enabled => vec![webhook],
            _ => {
                shared.metrics.job_dropped();
                info!(webhook_id = %job.webhook_id, %event_id, "webhook deleted or disabled while its retry waited: job dropped");
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
        return deliver(shared, publisher, &event, webhook, job.as_ref()).await;
    }
    let results = futures_util::future::join_all(
        targets
            .iter()
            .map(|webhook| deliver(shared, publisher, &event, webhook, job.as_ref())),
    )
    .await;
    results.into_iter().collect()
}

/// A message that never reached a webhook (malformed, too large) goes to the DLQ once.
async fn park_unrouted(
    shared: &Shared,
    publisher: &Publisher,
    body: &[u8],
    message_id: Option<&str>,
    reason: DeadReason,
    error: &str,
) -> Result<(), Unsettled> {
    let id = event::event_id(message_id, body);
    warn!(event_id = %id, reason = reason.as_str(), %error, "dead-lettering a message that cannot be delivered");
    let parked = Parked {
        reason,
        message_id: &id,
        account_id: None,
        event: None,
        url: None,
        job: None,
        error: Some(error),
    };
    publisher
        .to_dead_letters(body, parked.properties(SystemTime::now()))
        .await?;
    shared.metrics.dead_letter(reason.as_str());
    Ok(())
}

/// The parts of an event every delivery of it reads.
struct EventRef<'a> {
    body: &'a Bytes,
    envelope: &'a Envelope,
    event_id: &'a str,
}

/// One attempt of one event at one webhook, and what follows from its outcome. `Ok` once the
/// delivery succeeded or its replacement (retry job, dead letter) is confirmed.
async fn deliver(
    shared: &Shared,
    publisher: &Publisher,
    event: &EventRef<'_>,
    webhook: &Webhook,
    job: Option<&Job>,
) -> Result<(), Unsettled> {
    let now = SystemTime::now();
    let delivery_id = sign::delivery_id(event.event_id, &webhook.id);
    let attempt = job.map_or(0, |j| j.attempts).saturating_add(1);
    let first_attempt_at_ms = job.map_or_else(|| job::unix_ms(now), |j| j.first_attempt_at_ms);
    let span = tracing::info_span!(
        "delivery",
        delivery_id = %delivery_id,
        webhook_id = %webhook.id,
        account_id = webhook.account_id,
        event = %event.envelope.event,
        attempt,
    );
    async {
        let timestamp = i64::try_from(job::unix_ms(now) / 1000).unwrap_or(i64::MAX);
        let headers = sign::attempt_headers(&delivery_id, timestamp, event.body, webhook.secret.as_deref());
        let (result, latency) = {
            let _permit = shared.in_flight.acquire().await;
            shared.metrics.in_flight(1);
            let started = Instant::now();
            let result = shared.client.post(&webhook.url, headers, event.body.clone()).await;
            shared.metrics.in_flight(-1);
            (result, started.elapsed())
        };
        let outcome = delivery::classify(&result, SystemTime::now());
        let status = result.as_ref().ok().map(|r| r.status.as_u16());
        let error = result.as_ref().err().map(ToString::to_string);

        let state = Job {
            webhook_id: webhook.id.clone(),
            event_id: event.event_id.to_owned(),
            attempts: attempt,
            first_attempt_at_ms,
            last_status: status,
            last_error: error.clone(),
        };
        let next = match outcome {
            Outcome::Delivered => Next::Done,
            Outcome::Retry { after } => {
                let elapsed = state.elapsed(SystemTime::now());
                match shared.schedule.next_delay(attempt, elapsed, after, rand::random::<f64>()) {
                    Some(delay) => Next::Retry(shared.schedule.bucket(delay)),
                    None => Next::Dead(DeadReason::Exhausted),
                }
            }
            Outcome::Dead { reason } => Next::Dead(reason),
        };

        let label = next.label();
        shared.metrics.delivery(label, latency);
        info!(status, error = error.as_deref(), latency_ms = latency.as_millis() as u64, outcome = %next, "delivery attempt");
        let record = Attempt {
            at: humantime::format_rfc3339_millis(now).to_string(),
            delivery_id: delivery_id.clone(),
            attempt,
            status,
            error,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            outcome: next.to_string(),
        };
        if let Err(error) = shared.store.record_attempt(&webhook.id, &record) {
            warn!(%error, "recording the attempt failed");
        }

        match next {
            Next::Done => Ok(()),
            Next::Retry(bucket) => {
                let mut headers = FieldTable::default();
                state.write(&mut headers);
                let properties = BasicProperties::default()
                    .with_message_id(ShortString::from(delivery_id.as_str()))
                    .with_content_type(ShortString::from("application/json"))
                    .with_headers(headers);
                publisher.to_delay_queue(bucket, event.body, properties).await?;
                shared.metrics.retry_scheduled(&publisher.topology().delay_queue(bucket));
                Ok(())
            }
            Next::Dead(reason) => {
                if reason == DeadReason::Gone {
                    shared.store.set_enabled(&webhook.id, false).await?;
                    warn!("receiver answered 410 Gone: webhook disabled");
                }
                let parked = Parked {
                    reason,
                    message_id: &delivery_id,
                    account_id: Some(event.envelope.account_id),
                    event: Some(&event.envelope.event),
                    url: Some(&webhook.url),
                    job: Some(&state),
                    error: None,
                };
                publisher
                    .to_dead_letters(event.body, parked.properties(SystemTime::now()))
                    .await?;
                shared.metrics.dead_letter(reason.as_str());
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

/// What follows one attempt.
enum Next {
    Done,
    Retry(Duration),
    Dead(DeadReason),
}

impl Next {
    fn label(&self) -> &'static str {
        match self {
            Next::Done => "delivered",
            Next::Retry(_) => "retry",
            Next::Dead(_) => "dead",
        }
    }
}

impl std::fmt::Display for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Next::Done => f.write_str("delivered"),
            Next::Retry(bucket) => write!(f, "retry in {}", humantime::format_duration(*bucket)),
            Next::Dead(reason) => write!(f, "dead:{}", reason.as_str()),
        }
    }
}
