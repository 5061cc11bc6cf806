//! Reads the registry stream and applies it to the store, one entry at a time, in order.
//!
//! The follower has a connection of its own, so that the work queue's sessions (which end and
//! restart on their own schedule) never interrupt it. lapin's own recovery would re-consume from
//! the offset first asked for and without the prefetch a stream consumer needs, so a lost
//! connection ends the session here and the next one resumes from the stored position.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, Consumer};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::snapshot::{self, Rebuild};
use super::{Entry, Log};
use crate::broker::{self, BrokerError, Receives};
use crate::config::BrokerConfig;
use crate::job;
use crate::store::{Applied, Store, StoreError};

/// Stream deliveries the broker hands out ahead of their acks; a stream consumer needs a
/// prefetch, and changes are small.
const PREFETCH: u16 = 256;

/// How long the attempts stream keeps a batch: instances read it as it comes, so this only
/// bounds its size.
const ATTEMPTS_MAX_AGE: Duration = Duration::from_secs(3600);

/// Reconnect delays start at this and double up to [`MAX_BACKOFF`], as the work queue's do.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Follows the log until `stopped`, reconnecting after any failure.
pub(super) async fn follow(
    broker: BrokerConfig,
    log: Arc<Log>,
    store: Store,
    stopped: CancellationToken,
) {
    let mut replica = Replica::default();
    let mut backoff = MIN_BACKOFF;
    // The node of `broker.urls` to try first: the one after the node last reached, so a session
    // that fails on a node moves on to the next.
    let mut first_node = 0;
    loop {
        let started = std::time::Instant::now();
        let result = session(
            &broker,
            &mut first_node,
            &log,
            &store,
            &mut replica,
            &stopped,
        )
        .await;
        if started.elapsed() > MAX_BACKOFF {
            // A session that lasted is not a failure in a row.
            backoff = MIN_BACKOFF;
        }
        log.publisher.send_replace(None);
        log.leader.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(error) => {
                warn!(%error, "following the registry log failed; reconnecting");
                *log.down.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
            }
        }
        tokio::select! {
            () = stopped.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker ended the registry stream's consumer")]
    Ended,
}

/// One connection's worth of following: declare, consume from the stored position, apply.
async fn session(
    broker: &BrokerConfig,
    first_node: &mut usize,
    log: &Arc<Log>,
    store: &Store,
    replica: &mut Replica,
    stopped: &CancellationToken,
) -> Result<(), FollowError> {
    // The registry's streams carry only what webhookd instances wrote, with small headers.
    let (connection, node) =
        broker::connect(broker, *first_node, "registry", Receives::OwnMessages).await?;
    *first_node = node.index + 1;
    declare_stream(
        &connection,
        &broker.registry_stream,
        broker.registry_max_age,
        broker.registry_segment_bytes,
    )
    .await?;
    declare_stream(
        &connection,
        &log.attempts_stream,
        ATTEMPTS_MAX_AGE,
        broker.registry_segment_bytes,
    )
    .await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    log.publisher.send_replace(Some(publisher));
    *log.down.lock().unwrap_or_else(PoisonError::into_inner) = None;

    let position = store.log_position()?;
    let start = match position {
        Some(next) => AMQPValue::LongLongInt(i64::try_from(next).unwrap_or(i64::MAX)),
        None => AMQPValue::LongString(LongString::from("first")),
    };
    let mut deliveries = consume(&connection, &broker.registry_stream, start).await?;
    replica.resume(position);
    let mut attempts = consume(
        &connection,
        &log.attempts_stream,
        AMQPValue::LongString(LongString::from("next")),
    )
    .await?;
    // Without the election (its queue unreachable), this instance follows the log all the same
    // and only never writes snapshots until its next session.
    let version = broker::announced_version(broker, &node)
        .await
        .unwrap_or(None);
    let mut election = match snapshot::Election::join(&connection, broker, version).await {
        Ok(election) => Some(election),
        Err(error) => {
            warn!(%error, "cannot join the election of the registry's snapshot writer");
            None
        }
    };
    let mut renewal = tokio::time::interval(snapshot::TOKEN_RENEWAL);
    renewal.reset();
    let mut tick = tokio::time::interval(broker.registry_snapshot_every);
    tick.reset();
    info!(stream = %broker.registry_stream, from = ?position, "following the registry log");
    loop {
        tokio::select! {
            () = stopped.cancelled() => return Ok(()),
            delivery = deliveries.next() => {
                let delivery = delivery.ok_or(FollowError::Ended)??;
                replica.receive(&delivery, store, log).await?;
                delivery.ack(BasicAckOptions::default()).await?;
            }
            shared = attempts.next() => {
                let shared = shared.ok_or(FollowError::Ended)??;
                add_attempts(store, log, &shared).await;
                shared.ack(BasicAckOptions::default()).await?;
            }
            won = snapshot::won(&mut election) => {
                won?;
                if !log.leader.swap(true, Ordering::Relaxed) {
                    info!("this instance writes the registry's snapshots");
                }
            }
            _ = renewal.tick() => snapshot::renew(&mut election).await?,
            _ = tick.tick() => {
                if log.is_leader() && replica.snapshot_due() {
                    replica.begin_snapshot(log).await;
                }
            }
        }
    }
}

/// Consumes the stream `name` from `start` (an `x-stream-offset`) on a channel of its own.
async fn consume(
    connection: &Connection,
    name: &str,
    start: AMQPValue,
) -> Result<Consumer, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-stream-offset"), start);
    channel
        .basic_consume(
            ShortString::from(name),
            ShortString::from(format!("webhookd-{name}-{}", std::process::id())),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
}

/// Adds a batch of attempts another instance shared to this store's attempt logs; this
/// instance's own batches, and any that do not decode, are skipped.
async fn add_attempts(store: &Store, log: &Log, delivery: &Delivery) {
    let own = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(super::INSTANCE_HEADER))
        .and_then(AMQPValue::as_long_string)
        .is_some_and(|instance| instance.as_bytes() == log.instance.as_bytes());
    if own {
        return;
    }
    let (store, batch) = (store.clone(), delivery.data.clone());
    match tokio::task::spawn_blocking(move || store.add_attempts(&batch)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => warn!(%error, "adding another instance's attempts failed"),
        Err(error) => warn!(%error, "adding another instance's attempts stopped"),
    }
}

/// Declares a stream (idempotent: the same arguments on every instance).
async fn declare_stream(
    connection: &Connection,
    name: &str,
    max_age: Duration,
    segment_bytes: u32,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("stream")),
    );
    arguments.insert(
        ShortString::from("x-max-age"),
        AMQPValue::LongString(LongString::from(format!("{}s", max_age.as_secs()))),
    );
    arguments.insert(
        ShortString::from("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(i64::from(segment_bytes)),
    );
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    let _ = channel.close(200, ShortString::from("declared")).await;
    Ok(())
}

/// What the follower knows about the log beyond the store's position.
#[derive(Default)]
struct Replica {
    /// The offset expected next; `None` before anything was applied.
    next: Option<u64>,
    /// Whether the next delivery is a session's first, where a gap shows.
    first: bool,
    /// Set while the store waits for a snapshot to rebuild from.
    rebuild: Option<Rebuild>,
    /// The snapshot this instance asked to write, until it reads the begin entry back.
    own_snapshot: Option<String>,
    /// The offset of the last entry that is not part of a snapshot.
    last_entry: Option<u64>,
    /// The begin offset of the last complete snapshot.
    last_snapshot: Option<u64>,
    /// A snapshot being read, by id, with its begin offset.
    open_snapshot: Option<(String, u64)>,
}

impl Replica {
    fn resume(&mut self, position: Option<u64>) {
        self.next = position;
        self.first = true;
    }

    async fn receive(
        &mut self,
        delivery: &Delivery,
        store: &Store,
        log: &Arc<Log>,
    ) -> Result<(), FollowError> {
        let offset = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| job::get_u64(headers, "x-stream-offset"))
            .unwrap_or(0);
        // A consumer attaches at the start of the chunk that holds its offset.
        if self.next.is_some_and(|next| offset < next) {
            return Ok(());
        }
        if std::mem::take(&mut self.first) && offset > self.next.unwrap_or(0) {
            warn!(
                expected = self.next.unwrap_or(0),
                first_available = offset,
                "the registry log no longer holds this store's position (retention deleted it): \
                 rebuilding from the next snapshot"
            );
            self.rebuild = Some(Rebuild::default());
            if let Err(error) = log.append(&Entry::SnapshotRequest).await {
                warn!(%error, "asking for a snapshot failed; waiting for the scheduled one");
            }
        }
        let entry = match serde_json::from_slice::<Entry>(&delivery.data) {
            Ok(entry) => entry,
            Err(error) => {
                warn!(offset, %error, "skipping an unreadable entry in the registry log");
                return self.advance(offset, store);
            }
        };
        if let Some(rebuild) = &mut self.rebuild {
            let Some(done) = rebuild.receive(entry, offset) else {
                return Ok(());
            };
            store.replace_all(&done.contents)?;
            info!(
                webhooks = done.contents.webhooks.len(),
                tokens = done.contents.tokens.len(),
                "registry rebuilt from a snapshot in the log"
            );
            self.rebuild = None;
            self.last_snapshot = Some(done.begin);
            for (offset, entry) in done.after {
                self.apply(entry, offset, store, log).await?;
            }
            for id in done.markers {
                log.applied(&id, Ok(Applied::Missing));
            }
            return self.advance(offset, store);
        }
        self.apply(entry, offset, store, log).await?;
        self.advance(offset, store)
    }

    /// Applies one entry in order, with the store current up to it.
    async fn apply(
        &mut self,
        entry: Entry,
        offset: u64,
        store: &Store,
        log: &Arc<Log>,
    ) -> Result<(), FollowError> {
        match entry {
            Entry::Change { id, change } => {
                self.last_entry = Some(offset);
                match store.apply(&change) {
                    // The store failed, not the change: stop here, and retry from this entry.
                    Err(error @ (StoreError::Sled(_) | StoreError::AttemptLog { .. })) => {
                        return Err(error.into())
                    }
                    outcome => log.applied(&id, outcome),
                }
            }
            Entry::Marker { id } => {
                self.last_entry = Some(offset);
                log.applied(&id, Ok(Applied::Missing));
            }
            Entry::SnapshotRequest => {
                if log.is_leader() && self.own_snapshot.is_none() {
                    self.begin_snapshot(log).await;
                }
            }
            Entry::SnapshotBegin { snapshot } => {
                if self.own_snapshot.as_deref() == Some(snapshot.as_str()) {
                    self.own_snapshot = None;
                    snapshot::write(log, snapshot.clone(), store.contents()?);
                }
                self.open_snapshot = Some((snapshot, offset));
            }
            Entry::SnapshotChunk { .. } => {}
            Entry::SnapshotEnd { snapshot, .. } => {
                if let Some((open, begin)) = self.open_snapshot.take() {
                    if open == snapshot {
                        self.last_snapshot = Some(begin);
                    }
                }
            }
        }
        Ok(())
    }

    fn advance(&mut self, offset: u64, store: &Store) -> Result<(), FollowError> {
        self.next = Some(offset + 1);
        if self.rebuild.is_none() {
            store.set_log_position(offset + 1)?;
        }
        Ok(())
    }

    /// Whether the registry changed since the last complete snapshot began.
    fn snapshot_due(&self) -> bool {
        self.own_snapshot.is_none()
            && self.rebuild.is_none()
            && self.last_entry > self.last_snapshot
    }

    async fn begin_snapshot(&mut self, log: &Log) {
        let snapshot = uuid::Uuid::new_v4().to_string();
        match log
            .append(&Entry::SnapshotBegin {
                snapshot: snapshot.clone(),
            })
            .await
        {
            Ok(()) => self.own_snapshot = Some(snapshot),
            Err(error) => warn!(%error, "starting a registry snapshot failed"),
        }
    }
}
