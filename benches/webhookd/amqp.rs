//! The publisher's side of the broker, and the bare consumer that measures D.
//!
//! Queues are declared with webhookd's own [`webhookd::broker::declare`] from the very config the
//! daemon will load, so the bare consumer drains the same kind of queue, with the same arguments,
//! that webhookd consumes, and webhookd finds its queue already there, full.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use webhookd::broker::Topology;

use crate::events::{now_ns, Bodies};

/// Publishes are pipelined: this many may await their confirm at once.
const CONFIRM_WINDOW: usize = 2048;

/// The routing key every benchmark event is published with.
const EVENT: &str = "message_created";

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!("no RabbitMQ at {url}: run scripts/bench.sh, which starts the bench node")
        })
}

/// Declares webhookd's topology (exchange, work queue, bindings, dead-letter queue).
pub async fn declare(connection: &Connection, topology: &Topology) -> anyhow::Result<()> {
    webhookd::broker::declare(connection, topology).await?;
    Ok(())
}

/// Deletes what [`declare`] made and `others`: every delay queue the daemon may have declared,
/// and its registry stream and election queue. Left behind, a delay queue's jobs would expire
/// into the deleted work queue in the middle of a later run, and the broker's work on them would
/// count against it.
pub async fn delete(
    connection: &Connection,
    topology: &Topology,
    others: &[String],
) -> anyhow::Result<()> {
    let queues = [&topology.queue, &topology.dead_letter_queue]
        .into_iter()
        .chain(others);
    for queue in queues {
        delete_queue(connection, queue).await?;
    }
    let channel = connection.create_channel().await?;
    channel
        .exchange_delete(
            ShortString::from(topology.exchange.as_str()),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    close(channel).await;
    Ok(())
}

/// Deletes `queue`; a missing queue is not an error.
async fn delete_queue(connection: &Connection, queue: &str) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting queue {queue}"))?;
    close(channel).await;
    Ok(())
}

/// How many consumers `queue` has: webhookd is consuming once this is non-zero.
pub async fn consumers(connection: &Connection, queue: &str) -> anyhow::Result<u32> {
    let channel = connection.create_channel().await?;
    let state = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    close(channel).await;
    Ok(state.consumer_count())
}

/// A confirm-mode channel that keeps up to [`CONFIRM_WINDOW`] publishes in flight, as a
/// publisher that cares about throughput would.
pub struct Publisher {
    channel: Channel,
    exchange: ShortString,
    routing_key: ShortString,
    pending: VecDeque<PublisherConfirm>,
    tag: String,
    sent: u64,
}

impl Publisher {
    pub async fn open(connection: &Connection, exchange: &str, tag: &str) -> anyhow::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            exchange: ShortString::from(exchange),
            routing_key: ShortString::from(EVENT),
            pending: VecDeque::with_capacity(CONFIRM_WINDOW),
            tag: tag.to_owned(),
            sent: 0,
        })
    }

    /// Publishes one event as the contract says: persistent, JSON, a unique `message_id`.
    pub async fn publish(&mut self, body: &[u8]) -> anyhow::Result<()> {
        if self.pending.len() >= CONFIRM_WINDOW {
            self.settle_one().await?;
        }
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(format!("{}-{}", self.tag, self.sent)));
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.clone(),
                self.routing_key.clone(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        self.pending.push_back(confirm);
        self.sent += 1;
        Ok(())
    }

    /// Waits for every outstanding confirm; any nack is an error.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.settle_one().await?;
        }
        close(self.channel).await;
        Ok(())
    }

    async fn settle_one(&mut self) -> anyhow::Result<()> {
        if let Some(confirm) = self.pending.pop_front() {
            ensure!(
                confirm.await?.is_ack(),
                "the broker nacked a benchmark publish"
            );
        }
        Ok(())
    }
}

/// Publishes events `0..count` as fast as confirms allow.
pub async fn publish_backlog(
    connection: &Connection,
    topology: &Topology,
    bodies: &Bodies,
    count: u64,
) -> anyhow::Result<()> {
    let mut publisher = Publisher::open(connection, &topology.exchange, &topology.queue).await?;
    for i in 0..count {
        publisher.publish(bodies.get(i)).await?;
    }
    publisher.finish().await
}

/// Publishes `count` stamped events at a steady `per_second`: event `i` is due at
/// `start + i / per_second`, so a late tick is caught up rather than the schedule drifting.
pub async fn publish_steadily(
    connection: &Connection,
    topology: &Topology,
    bodies: &Bodies,
    count: u64,
    per_second: u64,
) -> anyhow::Result<()> {
    let mut publisher = Publisher::open(connection, &topology.exchange, &topology.queue).await?;
    let start = tokio::time::Instant::now();
    for i in 0..count {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / per_second.max(1));
        tokio::time::sleep_until(due).await;
        publisher.publish(&bodies.stamped(i, now_ns())).await?;
    }
    publisher.finish().await
}

/// How the bare consumer acknowledges: the fastest a consumer may (one `basic.ack` with
/// `multiple=true` per `ack_every` deliveries, within a window of `prefetch`).
#[derive(Debug, Clone, Copy)]
pub struct AckStrategy {
    pub prefetch: u16,
    pub ack_every: u64,
}

/// D: a bare consumer drains `count` messages from `queue`; messages per second from the first
/// delivery to the last.
pub async fn drain(
    connection: &Connection,
    queue: &str,
    count: u64,
    strategy: AckStrategy,
) -> anyhow::Result<f64> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(strategy.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("bench-drain"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0u64;
    let mut first = None;
    while received < count {
        let Some(delivery) = consumer.next().await else {
            bail!("the broker ended the bare consumer after {received} of {count} messages");
        };
        let delivery = delivery?;
        first.get_or_insert_with(now_ns);
        received += 1;
        if received.is_multiple_of(strategy.ack_every) || received == count {
            channel
                .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let elapsed_ns = now_ns().saturating_sub(first.unwrap_or_default());
    close(channel).await;
    ensure!(elapsed_ns > 0, "the bare consumer took no time");
    Ok(count as f64 / (elapsed_ns as f64 / 1e9))
}

async fn close(channel: Channel) {
    let _ = channel.close(200, ShortString::from("done")).await;
}
