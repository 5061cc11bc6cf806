//! The broker session: connect, declare, consume, supervise, reconnect, drain.
//!
//! A session is one pair of broker connections (consume, publish) and the message tasks started
//! on them. When either connection or channel dies, the session abandons its tasks (the broker
//! requeues everything unacked on a dead channel, so settling could only fail or, worse, ack a
//! tag the broker no longer means), waits for them to end, closes what is left, and the
//! supervisor marks the daemon unready and starts a new session after a backoff, declaring the
//! topology and QoS again, on the next node of `broker.urls` when there are several: a node that
//! died (or was cut off) is not asked first again, and any node of a cluster serves the same
//! quorum queues. Nothing of one session outlives it. lapin's own auto-recovery stays
//! off for the same reason: it reuses channel ids, so an old delivery tag could ack a new
//! message.
//!
//! On SIGTERM the session stops consuming, lets the message tasks finish within the drain time
//! and hands the rest back to the broker ([`drain`]); the acker sends what was settled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::acks::Acks;
use super::message::{self, Stops};
use super::Shared;
use crate::broker::{self, BrokerError, Node, Publisher, Receives, Topology};
use crate::config::Config;
use crate::health::{Readiness, State};
use crate::retry::Schedule;

/// How long connecting and declaring may take before the attempt counts as failed: a broker
/// that accepts TCP but never answers must not hold the supervisor forever.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long closing a connection may wait for the broker's answer at shutdown, and after a
/// broker loss (when the answer is not expected, and waiting only delays the reconnect).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_AFTER_LOSS: Duration = Duration::from_millis(500);

/// How often a consuming session checks that both connections and channels are still open.
/// Most losses show up at once (the consumer stream ends, a publish fails); this catches a
/// publishing connection that died while nothing was being published.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Keeps a broker session running until shutdown, reconnecting with backoff.
pub(super) async fn supervise(
    config: &Config,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
) {
    let topology = Topology::from_config(&config.broker);
    // Failed attempts since the last session that consumed: the backoff's retry number.
    let mut failures: u32 = 0;
    let mut sessions: u64 = 0;
    // Where the next session starts looking for a node: after the last one it reached.
    let mut next_node: usize = 0;
    while !shutdown.is_cancelled() {
        let mut consumed = false;
        let result = session(
            config,
            &topology,
            shared,
            readiness,
            shutdown,
            &mut next_node,
            || {
                consumed = true;
                sessions += 1;
                if sessions > 1 {
                    shared.metrics.reconnect();
                }
            },
        )
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
    /// The broker node both connections went to.
    node: Node,
    consuming: Connection,
    publishing: Arc<Connection>,
    channel: Channel,
    publisher: Arc<Publisher>,
    tag: String,
}

impl Link {
    /// Connects to the first node that answers from `*first_node` on, declares the topology,
    /// applies QoS and registers the consumer. Both connections go to the same node. Once a
    /// node is reached `*first_node` moves past it, so whatever fails after that, the next
    /// attempt starts on another node.
    async fn open(
        config: &Config,
        topology: &Topology,
        first_node: &mut usize,
    ) -> Result<(Link, Consumer), BrokerError> {
        let (consuming, node) =
            broker::connect(&config.broker, *first_node, "consumer", Receives::Messages).await?;
        *first_node = node.index + 1;
        // Asked at every session: the broker may have been upgraded since the last one.
        let version = broker::announced_version(&config.broker, &node).await?;
        let topology = topology.on(version);
        let publishing = Arc::new(
            broker::connect_to(&config.broker, &node, "publisher", Receives::OwnMessages).await?,
        );
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
            node,
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

/// One broker session: connect, declare, consume until shutdown (Ok) or broker loss (Err).
/// `first_node` is the node of `broker.urls` to try first, moved past the one reached.
/// `on_consuming` runs once the consumer is registered.
async fn session(
    config: &Config,
    topology: &Topology,
    shared: &Arc<Shared>,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    first_node: &mut usize,
    on_consuming: impl FnOnce(),
) -> Result<(), BrokerError> {
    let (link, mut consumer) = tokio::select! {
        () = shutdown.cancelled() => return Ok(()),
        opened = tokio::time::timeout(SETUP_TIMEOUT, Link::open(config, topology, first_node)) => {
            opened.map_err(|_| BrokerError::SetupTimeout(SETUP_TIMEOUT))??
        }
    };
    readiness.set(State::Consuming);
    shared.metrics.broker_connected(true);
    on_consuming();
    info!(
        broker = %link.node,
        node = link.node.index + 1,
        nodes = config.broker.nodes().len(),
        queue = %topology.queue,
        prefetch = config.broker.prefetch,
        "consuming"
    );

    let tasks = TaskTracker::new();
    let stops = Stops::default();
    let (acks, acker) = Acks::start(link.channel.clone(), shared.metrics.clone());
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
                    let received = Instant::now();
                    let message = message::handle(shared.clone(), link.publisher.clone(), acks.clone(), delivery, received, stops.clone());
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
