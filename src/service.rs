//! The daemon: wiring, and one event's way through it in stages.
//!
//! - [`session`] holds the broker session: connect, declare, consume, supervise, reconnect,
//!   drain.
//! - [`message`] takes one AMQP delivery: decode, look up, deliver to each webhook, settle.
//! - [`attempt`] takes one event to one webhook: admission, request, outcome, follow-up.
//! - [`timeline`] marks where a message's time goes, for `/metrics`.
//! - [`acks`] coalesces acknowledgements; [`endpoints`] keeps per-URL in-flight caps and
//!   circuit breakers; [`reload`] applies SIGHUP to what can change live.
//!
//! Readiness and systemd live in [`crate::health`], which the admin server reads too.
//!
//! What SIGHUP may change (delivery limits, the retry schedule) lives in [`Live`], swapped whole
//! by [`reload`]; each message reads it once, so one message never mixes two configurations.

mod acks;
mod attempt;
mod endpoints;
mod message;
mod reload;
mod session;
mod timeline;

use std::future::Future;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use lapin::BasicProperties;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::endpoints::{Endpoints, Policy};
use crate::admin::{self, Access, AdminState};
use crate::broker::{BrokerError, Publisher};
use crate::config::Config;
use crate::console::Console;
use crate::delivery::{self, Client};
use crate::health::{self, Readiness, State};
use crate::lifecycle::{Health, Monitor, Pace, Tracker, WEBHOOK_DISABLED};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::retry::Schedule;
use crate::store::{Store, Webhook, ATTEMPT_SHARES};

/// How often each buffered attempt record is written to the store (at the latest).
const ATTEMPT_LOG_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
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

/// What the message and attempt stages read from the world besides the message: the time and
/// chance (a uniform random number in `[0, 1)`, for jitter). The daemon's reads the system; a
/// test's is fixed.
pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
    fn unit(&self) -> f64;
}

/// The system clock and the thread-local random generator.
pub(super) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn unit(&self) -> f64 {
        rand::random::<f64>()
    }
}

/// Where the message and attempt stages send what replaces a message: the broker's confirming
/// publisher in the daemon, a recorder in their tests. Each call returns once the broker took
/// the message.
pub(crate) trait Outbox: Send + Sync {
    fn to_delay_queue(
        &self,
        bucket: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    fn to_dead_letters(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes a notice for the application to the events exchange.
    fn notify(
        &self,
        routing_key: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// What the message and attempt stages work with: the state every message shares, the settings
/// read once for this message, where its replacements go, and the clock.
pub(super) struct Stage<'a, O> {
    shared: &'a Shared,
    live: &'a Live,
    outbox: &'a O,
    clock: &'a dyn Clock,
    timeline: &'a timeline::Timeline,
}

impl Outbox for Publisher {
    fn to_delay_queue(
        &self,
        bucket: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        Publisher::to_delay_queue(self, bucket, body, properties)
    }

    fn to_dead_letters(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        Publisher::to_dead_letters(self, body, properties)
    }

    fn notify(
        &self,
        routing_key: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        Publisher::notify(self, routing_key, body)
    }
}

/// What every message's processing shares. Built once; sessions come and go around it.
struct Shared {
    /// The registry's local copy, which every lookup reads.
    store: Store,
    /// Where a change the daemon makes itself (a 410 disables its webhook) is written.
    registry: Registry,
    metrics: Arc<Metrics>,
    live: RwLock<Arc<Live>>,
    /// Per-URL in-flight caps and circuits. Outside [`Live`] so a reload changes the policy
    /// without forgetting which circuits are open.
    endpoints: Arc<Endpoints>,
    /// Settlements that failed in a row (a nacked or unconfirmed publish, a store error): how
    /// long the next such message waits before it is handed back.
    settle_failures: AtomicU32,
    /// Each webhook's health, from the attempts this instance made.
    health: Tracker,
    /// Each rate-limited webhook's send slots.
    pace: Pace,
    /// Whether an operator bound webhookd's own notices to its work queue on purpose, so they
    /// are delivered like events; through the wildcard binding alone they are skipped.
    deliver_notices: bool,
}

impl Shared {
    fn new(
        config: &Config,
        store: Store,
        registry: Registry,
        metrics: Arc<Metrics>,
    ) -> Result<Shared, ServiceError> {
        Ok(Shared {
            store,
            registry,
            live: RwLock::new(Arc::new(Live::build(config, None)?)),
            endpoints: Arc::new(Endpoints::new(
                Policy::from(&config.delivery),
                metrics.clone(),
            )),
            metrics,
            settle_failures: AtomicU32::new(0),
            health: Tracker::default(),
            pace: Pace::default(),
            deliver_notices: config
                .broker
                .binding_keys
                .iter()
                .any(|key| key == WEBHOOK_DISABLED),
        })
    }
}

impl Monitor for Shared {
    fn health(&self, webhook: &Webhook) -> Health {
        let circuit = self.endpoints.circuit(&webhook.url);
        self.health.health(&webhook.id, SystemTime::now(), circuit)
    }

    fn deleted(&self, webhook_id: &str) {
        self.health.forget(webhook_id);
    }

    fn client(&self) -> Client {
        self.live().client.clone()
    }
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
    /// `delivery.disable_after`; `None` for `0s`, which never disables.
    disable_after: Option<Duration>,
}

impl Live {
    /// Builds the live settings for `config`, reusing the parts of `previous` whose settings did
    /// not change (a reload that only touches the schedule keeps the client's warm connections).
    fn build(config: &Config, previous: Option<(&Config, &Live)>) -> Result<Live, ServiceError> {
        let delivery = &config.delivery;
        let client = match previous {
            Some((old, live)) if old.delivery.client_settings() == delivery.client_settings() => {
                live.client.clone()
            }
            _ => Client::new(delivery.client_settings())?,
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
            disable_after: Some(delivery.disable_after).filter(|after| !after.is_zero()),
        })
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
    // Stopped after the sessions have drained: a delivery finishing then may still disable its
    // webhook through the log.
    let stopped = CancellationToken::new();
    let (registry, follower) = Registry::follow(&config.broker, store.clone(), &stopped)?;
    let shared = Arc::new(Shared::new(
        &config,
        store.clone(),
        registry.clone(),
        metrics.clone(),
    )?);

    let admin_state = Arc::new(AdminState {
        registry: registry.clone(),
        access: Access::from_config(&config.admin),
        secret_rotation_grace: config.delivery.secret_rotation_grace,
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        circuits: shared.endpoints.clone(),
        console: Console::new(&config),
        monitor: shared.clone(),
    });
    info!(listen = %config.admin.listen, "admin API listening");
    let admin_task = tokio::spawn(admin::serve(listener, admin_state, shutdown.clone()));
    let watchdog = tokio::spawn(health::watchdog(stopped.clone()));
    let reloader = tokio::spawn(reload::follow(
        shared.clone(),
        config.clone(),
        reloads,
        stopped.clone(),
    ));
    let attempt_log = tokio::spawn(persist_attempts(
        store.clone(),
        registry.clone(),
        stopped.clone(),
    ));
    let stall_sweep = tokio::spawn(endpoints::sweep_stalls(
        shared.endpoints.clone(),
        stopped.clone(),
    ));

    // Consuming waits until the registry is current: an event must not meet an old registry.
    let waiting = |why: &str| readiness.set(State::Reconnecting(why.to_owned()));
    match registry.catch_up(&shutdown, waiting).await {
        Ok(()) => consume(&config, &shared, &readiness, &shutdown).await,
        Err(error) => info!(%error, "stopped before the registry log was applied"),
    }

    if let Err(error) = store.flush().await {
        error!(%error, "flushing the store at shutdown failed");
    }
    stopped.cancel();
    let _ = tokio::join!(
        admin_task,
        watchdog,
        reloader,
        attempt_log,
        stall_sweep,
        follower
    );
    info!("stopped");
    Ok(())
}

/// Runs the broker sessions until shutdown on a runtime worker, not on this thread (the one
/// `main` blocks on): the message tasks a session spawns then start on the worker that took the
/// delivery, without a parked worker to wake for each one. A panic in a session is a panic of
/// the daemon, as before.
async fn consume(
    config: &Config,
    shared: &Arc<Shared>,
    readiness: &Arc<Readiness>,
    shutdown: &CancellationToken,
) {
    let (config, shared) = (config.clone(), shared.clone());
    let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
    let sessions = tokio::spawn(async move {
        session::supervise(&config, &shared, &readiness, &shutdown).await;
    });
    if let Err(error) = sessions.await {
        if error.is_panic() {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

/// Writes the buffered attempt log to the store off the delivery path, each share of it once
/// every `ATTEMPT_LOG_PERIOD`, one share at a time, and shares what it wrote with the other
/// instances through the registry; the final flush at shutdown writes the rest (unshared).
async fn persist_attempts(store: Store, registry: Registry, stopped: CancellationToken) {
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
            Ok(Ok(batch)) if batch.is_empty() => {}
            Ok(Ok(batch)) => {
                if let Err(error) = registry.share_attempts(batch).await {
                    debug!(%error, "attempts not shared with the other instances");
                }
            }
            Ok(Err(error)) => warn!(%error, "writing the attempt log failed"),
            Err(error) => warn!(%error, "the attempt-log writer stopped"),
        }
    }
}

/// What the stages' unit tests share: a daemon's state over a temporary store, a fixed clock, a
/// recording outbox and a receiver on loopback that answers one status.
#[cfg(test)]
mod testing {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use lapin::types::AMQPValue;

    use super::*;
    use crate::job::{self, header};
    use crate::store::{NewWebhook, Webhook};

    pub(super) struct FixedClock(pub(super) SystemTime);

    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            self.0
        }

        fn unit(&self) -> f64 {
            0.5
        }
    }

    /// What the stage under test published, in order; `refuse_dead_letters` makes every dead
    /// letter fail as a broker nack would.
    #[derive(Default)]
    pub(super) struct Recorder {
        pub(super) delayed: Mutex<Vec<(Duration, BasicProperties)>>,
        pub(super) parked: Mutex<Vec<BasicProperties>>,
        /// Notices, as routing key and body.
        pub(super) notices: Mutex<Vec<(String, Vec<u8>)>>,
        pub(super) refuse_dead_letters: bool,
    }

    impl Recorder {
        /// The `x-webhookd-reason` of each dead letter.
        pub(super) fn reasons(&self) -> Vec<String> {
            self.parked
                .lock()
                .expect("recorder")
                .iter()
                .map(|properties| header_of(properties, header::REASON))
                .collect()
        }
    }

    pub(super) fn header_of(properties: &BasicProperties, key: &str) -> String {
        let headers = properties.headers().clone().unwrap_or_default();
        match headers.inner().get(key) {
            Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into(),
            Some(_) => job::get_u64(&headers, key).unwrap_or_default().to_string(),
            None => String::new(),
        }
    }

    impl Outbox for Recorder {
        async fn to_delay_queue(
            &self,
            bucket: Duration,
            _body: &[u8],
            properties: BasicProperties,
        ) -> Result<(), BrokerError> {
            self.delayed
                .lock()
                .expect("recorder")
                .push((bucket, properties));
            Ok(())
        }

        async fn to_dead_letters(
            &self,
            _body: &[u8],
            properties: BasicProperties,
        ) -> Result<(), BrokerError> {
            if self.refuse_dead_letters {
                return Err(BrokerError::Nacked("dead letters".into()));
            }
            self.parked.lock().expect("recorder").push(properties);
            Ok(())
        }

        async fn notify(&self, routing_key: &str, body: &[u8]) -> Result<(), BrokerError> {
            self.notices
                .lock()
                .expect("recorder")
                .push((routing_key.to_owned(), body.to_vec()));
            Ok(())
        }
    }

    /// A daemon's shared state over a temporary store, delivering to loopback (the tests'
    /// receivers), with the default retry schedule.
    pub(super) fn shared() -> Shared {
        let mut config = Config::default();
        config.delivery.allow_networks = vec!["127.0.0.0/8".parse().expect("network")];
        let store = Store::open_temporary().expect("store");
        let registry = crate::registry::Registry::local(store.clone());
        Shared::new(&config, store, registry, Arc::new(Metrics::default())).expect("shared")
    }

    pub(super) async fn webhook(shared: &Shared, account_id: u64, url: &str) -> Webhook {
        shared
            .store
            .create(NewWebhook {
                account_id,
                url: url.to_owned(),
                ..NewWebhook::default()
            })
            .await
            .expect("webhook")
    }

    /// A receiver on 127.0.0.1 that answers every request with `status`, counting them.
    pub(super) struct Receiver {
        pub(super) addr: SocketAddr,
        pub(super) requests: Arc<AtomicUsize>,
    }

    impl Receiver {
        pub(super) async fn answering(status: u16) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let requests = Arc::new(AtomicUsize::new(0));
            let counted = requests.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let counted = counted.clone();
                    tokio::spawn(async move {
                        let answer = service_fn(move |_request| {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).expect("status");
                            async move { Ok::<_, std::convert::Infallible>(response) }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), answer)
                            .await;
                    });
                }
            });
            Receiver { addr, requests }
        }

        pub(super) fn url(&self) -> String {
            format!("http://{}/hook", self.addr)
        }

        pub(super) fn count(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }
}
