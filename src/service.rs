//! The daemon: wiring, the consumer loop, one message's way from delivery to settlement, and
//! shutdown.
//!
//! The consumer loop only receives and spawns; [`process`] decides what happens to one message
//! and returns whether it may be acked; [`settle`] acks or hands it back. A message is acked only
//! when each of its deliveries reached a 2xx, or its replacement (a retry job in a delay queue, a
//! dead letter) has been confirmed by the broker, and taken by a queue (publishes are mandatory:
//! without that, a publish to a queue deleted under webhookd would be confirmed and dropped).
//! Anything else — a broker nack, a lost channel, a returned publish, a shutdown that ran out of
//! drain time — leaves the message to the broker, which delivers it again: a duplicate with the
//! same delivery id, never a loss. A returned publish also ends the session, so the next one
//! declares the queues again. A message that keeps coming back unsettled (it crashes the daemon,
//! say) is parked in the dead-letter queue as `redelivered` after [`REDELIVERY_LIMIT`] returns,
//! before it is read again: webhookd's limit replaces RabbitMQ 4's, which would drop it.
//!
//! A session is one pair of broker connections (consume, publish) and the message tasks started
//! on them. When either connection or channel dies, the session abandons its tasks (the broker
//! requeues everything unacked on a dead channel, so settling could only fail or, worse, ack a
//! tag the broker no longer means), waits for them to end, closes what is left, and the
//! supervisor in [`run`] marks the daemon unready and starts a new session after a backoff,
//! declaring the topology and QoS again. Nothing of one session outlives it. lapin's own
//! auto-recovery stays off for the same reason: it reuses channel ids, so an old delivery tag
//! could ack a new message.
//!
//! What SIGHUP may change (delivery limits, the retry schedule) lives in [`Live`], swapped whole
//! by [`reload`]; each message reads it once, so one message never mixes two configurations.

mod acks;
mod endpoints;
mod reload;
mod systemd;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use self::acks::{Acks, Verdict};
use self::endpoints::{Endpoints, Policy, Refusal, Slot};
use crate::admin::{self, Access, AdminState};
use crate::broker::{self, BrokerError, Publisher, Topology};
use crate::config::Config;
use crate::delivery::{self, sign, Client, ClientSettings, DeadReason, Outcome, SendError};
use crate::dlq::Parked;
use crate::event::{self, Envelope};
use crate::job::{self, Job};
use crate::metrics::Metrics;
use crate::retry::{Next, Schedule, Turn};
use crate::store::{NewAttempt, Store, Webhook, ATTEMPT_SHARES};

/// How long connecting and declaring may take before the attempt counts as failed: a broker
/// that accepts TCP but never answers must not hold the supervisor forever.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a connection may wait for the broker's answer at shutdown, and after a
/// broker loss (when the answer is not expected, and waiting only delays the reconnect).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_AFTER_LOSS: Duration = Duration::from_millis(500);

/// How often each buffered attempt record is written to the store (at the latest).
const ATTEMPT_LOG_PERIOD: Duration = Duration::from_secs(1);

/// How many times a message may have come back to the work queue unsettled before it is parked
/// in the dead-letter queue as `redelivered` instead of being processed once more: a message that
/// crashes the daemon (or outlasts every drain) must not hold the queue forever. Quorum queues
/// count the returns in `x-delivery-count`; RabbitMQ 4's own limit, 20 by default, would drop the
/// message, so webhookd turns it off (see `broker`) and keeps the same number here, as its own.
/// Classic queues count nothing, and have no such limit.
const REDELIVERY_LIMIT: u64 = 20;

/// How often a consuming session checks that both connections and channels are still open.
/// Most losses show up at once (the consumer stream ends, a publish fails); this catches a
/// publishing connection that died while nothing was being published.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

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

/// Where the daemon stands with the broker; `/readyz` answers 200 only while consuming, and says
/// why not otherwise.
#[derive(Debug, Default)]
pub struct Readiness {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Default)]
enum State {
    #[default]
    Connecting,
    Consuming,
    Reconnecting(String),
    Stopping,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Connecting => f.write_str("connecting to the broker"),
            State::Consuming => f.write_str("consuming"),
            State::Reconnecting(error) => write!(f, "reconnecting to the broker after: {error}"),
            State::Stopping => f.write_str("stopping"),
        }
    }
}

impl Readiness {
    /// Why the daemon is not ready (`None` when it is), for `/readyz`'s 503 body.
    pub fn reason(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (!matches!(*state, State::Consuming)).then(|| state.to_string())
    }

    /// Records the new state and tells systemd (`READY=1` once consuming, `STOPPING=1`, and a
    /// `STATUS=` line for `systemctl status`).
    fn set(&self, state: State) {
        systemd::announce(&state);
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// What every message's processing shares. Built once; sessions come and go around it.
struct Shared {
    store: Store,
    metrics: Arc<Metrics>,
    live: RwLock<Arc<Live>>,
    /// Per-URL in-flight caps and circuits. Outside [`Live`] so a reload changes the policy
    /// without forgetting which circuits are open.
    endpoints: Arc<Endpoints>,
    /// Settlements that failed in a row (a nacked or unconfirmed publish, a store error): how
    /// long the next such message waits before it is handed back.
    settle_failures: AtomicU32,
}

impl Shared {
    /// The settings a message works with, read once per message.
    fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
    }
}

/// The settings SIGHUP can change: the HTTP client (timeouts, allow-list), the in-flight cap,
/// the event size limit and the retry schedule.
struct Live {
    client: Client,
    schedule: Schedule,
    /// Replaced, not resized, when the cap changes: requests already in flight keep their
    /// permit of the old semaphore and finish under the old cap (for at most a request
    /// timeout), and every new request counts against the new one.
    in_flight: Arc<Semaphore>,
    max_event_bytes: usize,
}

impl Live {
    /// Builds the live settings for `config`, reusing the parts of `previous` whose settings did
    /// not change (a reload that only touches the schedule keeps the client's warm connections).
    fn build(config: &Config, previous: Option<(&Config, &Live)>) -> Result<Live, ServiceError> {
        let delivery = &config.delivery;
        let client = match previous {
            Some((old, live)) if client_settings(old) == client_settings(config) => {
                live.client.clone()
            }
            _ => Client::new(client_settings(config))?,
        };
        let in_flight = match previous {
            Some((old, live)) if old.delivery.max_in_flight == delivery.max_in_flight => {
                live.in_flight.clone()
            }
            _ => Arc::new(Semaphore::new(delivery.max_in_flight)),
        };
        let retry = &config.retry;
        Ok(Live {
            client,
            schedule: Schedule::new(
                retry.initial_interval,
                retry.multiplier,
                retry.jitter,
                retry.max_interval,
                retry.max_elapsed,
            )?,
            in_flight,
            max_event_bytes: delivery.max_event_bytes,
        })
    }
}

/// The delivery client's settings as the config gives them.
fn client_settings(config: &Config) -> ClientSettings {
    ClientSettings {
        connect_timeout: config.delivery.connect_timeout,
        request_timeout: config.delivery.request_timeout,
        allow_networks: config.delivery.allow_networks.clone(),
        extra_ca_file: config.delivery.extra_ca_file.clone(),
    }
}

/// Runs the daemon until `shutdown` is cancelled: admin server, systemd watchdog, then broker
/// sessions until stopped. Each config received on `reloads` (already validated, as SIGHUP
/// loaded it) is applied where it can be live. Returns after in-flight work was finished or
/// handed back, and the store flushed.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: watch::Receiver<Config>,
) -> Result<(), ServiceError> {
    let opening = Instant::now();
    let store = Store::open(&config.store.path)?;
    let index = store.index_size();
    info!(
        accounts = index.accounts,
        index_bytes = index.bytes,
        took = ?opening.elapsed(),
        "registry loaded"
    );
    let listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            addr: config.admin.listen,
            source,
        })?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    let shared = Arc::new(Shared {
        store: store.clone(),
        metrics: metrics.clone(),
        live: RwLock::new(Arc::new(Live::build(&config, None)?)),
        endpoints: Arc::new(Endpoints::new(
            Policy::from(&config.delivery),
            metrics.clone(),
        )),
        settle_failures: AtomicU32::new(0),
    });

    let admin_state = Arc::new(AdminState {
        store: store.clone(),
        access: Access::from_config(&config.admin),
        secret_rotation_grace: config.delivery.secret_rotation_grace,
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    });
    info!(listen = %config.admin.listen, "admin API listening");
    let stopped = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(listener, admin_state, shutdown.clone()));
    let watchdog = tokio::spawn(systemd::watchdog(stopped.clone()));
    let reloader = tokio::spawn(reload::follow(
        shared.clone(),
        config.clone(),
        reloads,
        stopped.clone(),
    ));
    let attempt_log = tokio::spawn(persist_attempts(store.clone(), stopped.clone()));
    let stall_sweep = tokio::spawn(endpoints::sweep_stalls(
        shared.endpoints.clone(),
        stopped.clone(),
    ));

    supervise(&config, &shared, &readiness, &shutdown).await;

    if let Err(error) = store.flush().await {
        error!(%error, "flushing the store at shutdown failed");
    }
    stopped.cancel();
    let _ = tokio::join!(admin_task, watchdog, reloader, attempt_log, stall_sweep);
    info!("stopped");
    Ok(())
}

/// Writes the buffered attempt log to the store off the delivery path, each share of it once
/// every `ATTEMPT_LOG_PERIOD`, one share at a time; the final flush at shutdown writes the rest.
async fn persist_attempts(store: Store, stopped: CancellationToken) {
    let shares = u32::try_from(ATTEMPT_SHARES).expect("a handful of shares");
    let mut tick = tokio::time::interval(ATTEMPT_LOG_PERIOD / shares);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for share in (0..ATTEMPT_SHARES).cycle() {
        tokio::select! {
            () = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.persist_attempt_share(share)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "writing the attempt log failed"),
            Err(error) => warn!(%error, "the attempt-log writer stopped"),
        }
    }
}

/// Keeps a broker session running until shutdown, reconnecting with backoff.
async fn supervise(
    config: &Config,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) {
    let topology = Topology::from_config(&config.broker);
    // Failed attempts since the last session that consumed: the backoff's retry number.
    let mut failures: u32 = 0;
    let mut sessions: u64 = 0;
    while !shutdown.is_cancelled() {
        let mut consumed = false;
        let result = session(config, &topology, shared, readiness, shutdown, || {
            consumed = true;
            sessions += 1;
            if sessions > 1 {
                shared.metrics.reconnect();
            }
        })
        .await;
        shared.metrics.broker_connected(false);
        let Err(error) = result else {
            break;
        };
        failures = if consumed {
            1
        } else {
            failures.saturating_add(1)
        };
        let wait = reconnect_delay(failures);
        if consumed {
            warn!(%error, retry_in = ?wait, "lost the broker; reconnecting");
        } else {
            warn!(%error, retry_in = ?wait, "cannot consume from the broker; retrying");
        }
        readiness.set(State::Reconnecting(error.to_string()));
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    readiness.set(State::Stopping);
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

/// What a session holds open while it consumes.
struct Link {
    consuming: Connection,
    publishing: Arc<Connection>,
    channel: Channel,
    publisher: Arc<Publisher>,
    tag: String,
}

impl Link {
    /// Connects, declares the topology, applies QoS and registers the consumer.
    async fn open(config: &Config, topology: &Topology) -> Result<(Link, Consumer), BrokerError> {
        // Asked at every session: the broker may have been upgraded since the last one.
        let version = broker::announced_version(&config.broker).await?;
        let topology = topology.on(version);
        let consuming = broker::connect(&config.broker, "consumer").await?;
        let publishing = Arc::new(broker::connect(&config.broker, "publisher").await?);
        broker::declare(&consuming, &topology).await?;
        let channel = consuming.create_channel().await?;
        let publisher = Arc::new(Publisher::open(&publishing, topology.clone()).await?);
        channel
            .basic_qos(config.broker.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("webhookd-{}", std::process::id());
        let consumer = channel
            .basic_consume(
                ShortString::from(topology.queue.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let link = Link {
            consuming,
            publishing,
            channel,
            publisher,
            tag,
        };
        Ok((link, consumer))
    }

    /// Whether both connections and both channels are still open.
    fn is_open(&self) -> bool {
        self.consuming.status().connected()
            && self.publishing.status().connected()
            && self.channel.status().connected()
            && self.publisher.is_open()
    }

    /// Closes both connections (and with them the channels; the broker requeues whatever is
    /// still unacked), waiting at most `patience` for the broker's answer: after a loss one of
    /// them is usually dead and will never answer.
    async fn close(&self, patience: Duration) {
        tokio::join!(
            close_connection(&self.consuming, patience),
            close_connection(&self.publishing, patience)
        );
    }
}

async fn close_connection(connection: &Connection, patience: Duration) {
    let closing = connection.close(200, ShortString::from("webhookd stopping"));
    match tokio::time::timeout(patience, closing).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(%error, "closing a broker connection"),
        Err(_) => debug!("closing a broker connection timed out"),
    }
}

/// How a session's message tasks are told to stop before they settle.
#[derive(Clone, Default)]
struct Stops {
    /// Drain time is up: nack and requeue what is unfinished.
    hand_back: CancellationToken,
    /// The session lost its broker link, or a queue it publishes to: settle nothing (the broker
    /// requeues it all).
    lost: CancellationToken,
    /// The queue whose publish came back, when that is why `lost` was cancelled.
    gone_queue: Arc<Mutex<Option<String>>>,
}

impl Stops {
    /// Why the session ended when `lost` was cancelled.
    fn loss(&self) -> BrokerError {
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

/// One broker session: connect, declare, consume until shutdown (Ok) or broker loss (Err).
/// `on_consuming` runs once the consumer is registered.
async fn session(
    config: &Config,
    topology: &Topology,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    on_consuming: impl FnOnce(),
) -> Result<(), BrokerError> {
    let (link, mut consumer) = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        opened = tokio::time::timeout(SETUP_TIMEOUT, Link::open(config, topology)) => {
            opened.map_err(|_| BrokerError::SetupTimeout(SETUP_TIMEOUT))??
        }
    };
    readiness.set(State::Consuming);
    shared.metrics.broker_connected(true);
    on_consuming();
    info!(queue = %topology.queue, prefetch = config.broker.prefetch, "consuming");

    let tasks = TaskTracker::new();
    let stops = Stops::default();
    let (acks, acker) = Acks::start(link.channel.clone());
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = stops.lost.cancelled() => break Err(stops.loss()),
            _ = check.tick() => if !link.is_open() {
                break Err(BrokerError::ConnectionLost);
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let message = handle(shared.clone(), link.publisher.clone(), acks.clone(), delivery, stops.clone());
                    tasks.spawn(message);
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Err(BrokerError::ConsumerEnded),
            },
        }
    };
    match ended {
        Ok(()) => {
            readiness.set(State::Stopping);
            drain(config, &link, &tasks, &stops).await;
            // The acker sends what the finished tasks settled, then ends with the last sender.
            drop(acks);
            if tokio::time::timeout(CLOSE_TIMEOUT, acker).await.is_err() {
                warn!("the last acks did not go out: the broker requeues those messages");
            }
            link.close(CLOSE_TIMEOUT).await;
        }
        Err(ref error) => {
            readiness.set(State::Reconnecting(error.to_string()));
            shared.metrics.broker_connected(false);
            stops.lost.cancel();
            acker.abort();
            tasks.close();
            tasks.wait().await;
            link.close(CLOSE_AFTER_LOSS).await;
        }
    }
    ended
}

/// Graceful stop: no new messages, in-flight work finishes within the drain time, the rest is
/// handed back to the broker (nack + requeue), never dead-lettered. Messages the broker had
/// already sent but the loop had not taken yet go back when the channel closes.
async fn drain(config: &Config, link: &Link, tasks: &TaskTracker, stops: &Stops) {
    info!(in_flight = tasks.len(), drain_timeout = ?config.service.drain_timeout, "stopping: draining");
    if let Err(error) = link
        .channel
        .basic_cancel(
            ShortString::from(link.tag.as_str()),
            BasicCancelOptions::default(),
        )
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
        // Each task stops at once and leaves its requeue to the acker.
        stops.hand_back.cancel();
        tasks.wait().await;
    }
}

/// One message, from delivery to its verdict for the acker.
async fn handle(
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    acks: Acks,
    mut delivery: Delivery,
    stops: Stops,
) {
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let live = shared.live();
    let settled = tokio::select! {
        () = stops.lost.cancelled() => return,
        () = stops.hand_back.cancelled() => Err(Unsettled::ShuttingDown),
        result = process(&shared, &live, &publisher, &delivery.properties, delivery.redelivered, body) => result,
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
            let wait = settle_retry_delay(failures, rand::random::<f64>());
            warn!(%reason, retry_in = ?wait, "settling a message failed: handing it back to the broker after a pause");
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
    acks.settle(delivery.delivery_tag, verdict);
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

/// Decides everything about one message; `Ok` means it may be acked.
async fn process(
    shared: &Shared,
    live: &Live,
    publisher: &Publisher,
    properties: &BasicProperties,
    redelivered: bool,
    body: Bytes,
) -> Result<(), Unsettled> {
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());
    let job = match Job::from_headers(properties.headers().as_ref()) {
        Ok(job) => job,
        Err(error) => {
            let error = error.to_string();
            return park_unrouted(
                shared,
                publisher,
                &body,
                message_id,
                None,
                DeadReason::Malformed,
                &error,
            )
            .await;
        }
    };
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
        return park_unrouted(
            shared,
            publisher,
            &body,
            message_id,
            job.as_ref(),
            DeadReason::Redelivered,
            &error,
        )
        .await;
    }
    if body.len() > live.max_event_bytes {
        let error = format!(
            "body is {} bytes, over max_event_bytes = {}",
            body.len(),
            live.max_event_bytes
        );
        return park_unrouted(
            shared,
            publisher,
            &body,
            message_id,
            None,
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
                None,
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
                publisher
                    .to_dead_letters(&body, parked.properties(SystemTime::now()))
                    .await?;
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
        return deliver(shared, live, publisher, &event, webhook, job.as_ref()).await;
    }
    // Unordered, so a finished request wakes only its own delivery: `join_all` polls every
    // delivery of the event each time any one of them is woken.
    let results: Vec<Result<(), Unsettled>> = targets
        .iter()
        .map(|webhook| deliver(shared, live, publisher, &event, webhook, job.as_ref()))
        .collect::<FuturesUnordered<_>>()
        .collect()
        .await;
    results.into_iter().collect()
}

/// A message that is not delivered at all (malformed, too large, redelivered too often) goes to
/// the DLQ once. A retry job keeps its webhook and history there, so a replay goes to that webhook
/// alone.
async fn park_unrouted(
    shared: &Shared,
    publisher: &Publisher,
    body: &[u8],
    message_id: Option<&str>,
    job: Option<&Job>,
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
        job,
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
    live: &Live,
    publisher: &Publisher,
    event: &EventRef<'_>,
    webhook: &Webhook,
    job: Option<&Job>,
) -> Result<(), Unsettled> {
    let now = SystemTime::now();
    let leg = Leg {
        shared,
        live,
        event,
        webhook,
        delivery_id: sign::delivery_id(event.event_id, &webhook.id),
        now,
        attempt: job.map_or(0, |j| j.attempts).saturating_add(1),
        first_attempt_at_ms: job.map_or_else(|| job::unix_ms(now), |j| j.first_attempt_at_ms),
    };
    let (state, next) = match admit(shared, live, &webhook.url).await {
        Err(refusal) => leg.deferral(refusal, job),
        Ok((permit, slot)) => match leg.send(permit, slot).await {
            Some(failed) => failed,
            // Only a retry job or a dead letter carries the job's state: a delivery builds none.
            None => return Ok(()),
        },
    };
    leg.follow_up(publisher, &state, next).await
}

/// One event at one webhook: what its attempt, or its deferral, and their follow-up read.
struct Leg<'a> {
    shared: &'a Shared,
    live: &'a Live,
    event: &'a EventRef<'a>,
    webhook: &'a Webhook,
    delivery_id: String,
    now: SystemTime,
    /// The number this attempt has, or would have: the job's attempts so far, plus one.
    attempt: u32,
    first_attempt_at_ms: u64,
}

impl Leg<'_> {
    /// A delivery that admission turned away. Not an attempt: the job keeps its count and
    /// history, and comes back after the schedule's next delay or, if the circuit is open, once
    /// its cool-down is over (or is given up once max_elapsed has passed).
    fn deferral(&self, refusal: Refusal, job: Option<&Job>) -> (Job, Next) {
        let attempt = self.attempt;
        let shut_for = match refusal {
            Refusal::Busy => None,
            Refusal::Open(left) => Some(left),
        };
        let next = self.decide(&Turn::NotAttempted, shut_for);
        debug!(delivery_id = %self.delivery_id, webhook_id = %self.webhook.id, outcome = %next, ?refusal, "endpoint busy or its circuit open: deferred without an attempt");
        let state = self.state(
            attempt - 1,
            job.and_then(|j| j.last_status),
            job.and_then(|j| j.last_error.clone()),
        );
        (state, next)
    }

    /// Sends the event, logs and records the attempt; `None` once it was delivered, else the
    /// job's new state and where it goes next.
    async fn send(
        &self,
        permit: Option<SemaphorePermit<'_>>,
        slot: Slot<'_>,
    ) -> Option<(Job, Next)> {
        let (shared, live, event, webhook) = (self.shared, self.live, self.event, self.webhook);
        let (delivery_id, now, attempt) = (&self.delivery_id, self.now, self.attempt);
        let timestamp = i64::try_from(job::unix_ms(now) / 1000).unwrap_or(i64::MAX);
        let headers =
            sign::attempt_headers(delivery_id, timestamp, event.body, webhook.signing(now));
        let (result, latency) = {
            let _permit = permit;
            let _counted = shared.metrics.in_flight();
            let started = Instant::now();
            let result = tokio::select! {
                result = live.client.post(&webhook.url, headers, event.body.clone()) => result,
                () = slot.cut_off() => Err(SendError::Stalled),
            };
            (result, started.elapsed())
        };
        let outcome = delivery::classify(&result, SystemTime::now());
        slot.finish(!matches!(outcome, Outcome::Retry { .. }));
        let status = result.as_ref().ok().map(|r| r.status.as_u16());
        let error = result.as_ref().err().map(ToString::to_string);

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
                    %delivery_id,
                    webhook_id = %webhook.id,
                    account_id = webhook.account_id,
                    event = %event.envelope.event,
                    attempt,
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
        let elapsed = job::elapsed_since(self.first_attempt_at_ms, SystemTime::now());
        self.live
            .schedule
            .decide(turn, self.attempt, elapsed, shut_for, rand::random::<f64>())
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
        }
    }

    /// Carries out `next`: nothing, a confirmed retry job, or a confirmed dead letter. `Ok` once
    /// that is done, so the event may be acked.
    async fn follow_up(
        &self,
        publisher: &Publisher,
        state: &Job,
        next: Next,
    ) -> Result<(), Unsettled> {
        let (shared, event, webhook) = (self.shared, self.event, self.webhook);
        let delivery_id = self.delivery_id.as_str();
        match next {
            Next::Done => Ok(()),
            Next::Retry(bucket) => {
                publisher
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
                publisher
                    .to_dead_letters(event.body, parked.properties(SystemTime::now()))
                    .await?;
                shared.metrics.dead_letter(reason.as_str());
                // Only once the dead letter is confirmed: disabled first, a failed publish
                // would bring the event back to a webhook it now skips, and the dead letter
                // would never be written.
                if reason == DeadReason::Gone {
                    shared.store.set_enabled(&webhook.id, false).await?;
                    warn!(webhook_id = %webhook.id, "receiver answered 410 Gone: webhook disabled");
                }
                Ok(())
            }
        }
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
