//! RabbitMQ: connections, the topology webhookd owns, and publishing with confirms.
//!
//! Everything webhookd publishes (a retry job, a dead letter, a replay) replaces a message it
//! will ack afterwards, so every publish here waits for the broker's confirm and treats a nack as
//! an error: the caller then leaves the original unacked and nothing is lost. Consuming and
//! publishing use separate connections because the broker's flow control throttles publishing
//! connections, and a throttled consumer would stall deliveries that need no publishing at all.
//!
//! Queues are declared with explicit arguments rather than broker defaults (RabbitMQ 4 gives
//! quorum queues a default delivery limit of 20, which would silently drop dead letters).
//! Delay queues are declared lazily, the first time a delay lands in their bucket, so a deployment
//! only carries the buckets its receivers actually need.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::config::{BrokerConfig, QueueKind};
use crate::retry::bucket_queue_name;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused (nacked) a publish to {0}")]
    Nacked(String),
    #[error("the broker cancelled webhookd's consumer")]
    ConsumerEnded,
    #[error("broker did not confirm a publish to {0} (publisher confirms are off)")]
    Unconfirmed(String),
    #[error("no queue took a publish to {0}: a queue webhookd declared is gone")]
    Unroutable(String),
    #[error("connecting and declaring took longer than {0:?}")]
    SetupTimeout(Duration),
    #[error("a broker connection or channel closed")]
    ConnectionLost,
    #[error("publishing failed: the publishing connection or channel is gone")]
    PublisherLost,
}

/// The names and kinds webhookd declares, taken from `[broker]` once.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub exchange_kind: String,
    pub declare_exchange: bool,
    pub queue: String,
    pub queue_kind: QueueKind,
    pub binding_keys: Vec<String>,
    pub retry_queue_prefix: String,
    pub dead_letter_queue: String,
}

impl Topology {
    pub fn from_config(broker: &BrokerConfig) -> Topology {
        Topology {
            exchange: broker.exchange.clone(),
            exchange_kind: broker.exchange_kind.as_str().to_owned(),
            declare_exchange: broker.declare_exchange,
            queue: broker.queue.clone(),
            queue_kind: broker.queue_kind,
            binding_keys: broker.binding_keys.clone(),
            retry_queue_prefix: broker.retry_queue_prefix.clone(),
            dead_letter_queue: broker.dead_letter_queue.clone(),
        }
    }

    /// The name of the delay queue that holds jobs for `bucket`.
    pub fn delay_queue(&self, bucket: Duration) -> String {
        bucket_queue_name(&self.retry_queue_prefix, bucket)
    }
}

/// Opens a connection named for its role (visible in the management UI and `list_connections`),
/// with heartbeats so a dead peer is noticed within two intervals.
pub async fn connect(
    url: &str,
    heartbeat: Duration,
    role: &str,
) -> Result<Connection, BrokerError> {
    let uri = with_defaults(url, heartbeat);
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("webhookd {role}")));
    Ok(Connection::connect(&uri, properties).await?)
}

/// Adds `heartbeat=N` to the URL's query unless the operator set it there.
///
/// The frame size is left to the broker (128 KiB by default). A message's properties and headers
/// travel in one frame that cannot be split, and the broker sends it whole even when it is larger
/// than the size the client asked for; a client that asked for less then fails the connection
/// with a frame error, reconnects, receives the same message first and loops. Taking the
/// broker's size means every message the broker accepted can be received. It costs memory:
/// lapin keeps 32 frames of buffer per direction and connection.
fn with_defaults(url: &str, heartbeat: Duration) -> String {
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat={}", heartbeat.as_secs())
}

/// Declares the exchange (if configured), the work queue with its bindings, and the dead-letter
/// queue. Idempotent: the same arguments every time, so a restart or a second instance agrees.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
    if topology.declare_exchange {
        channel
            .exchange_declare(
                ShortString::from(topology.exchange.as_str()),
                lapin::ExchangeKind::Custom(topology.exchange_kind.clone()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
    }
    declare_queue(
        channel,
        &topology.queue,
        queue_arguments(topology.queue_kind),
    )
    .await?;
    for key in &topology.binding_keys {
        channel
            .queue_bind(
                ShortString::from(topology.queue.as_str()),
                ShortString::from(topology.exchange.as_str()),
                ShortString::from(key.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    // No TTL, no length limit and no delivery limit: a dead letter stays until ops act on it.
    declare_queue(
        channel,
        &topology.dead_letter_queue,
        queue_arguments(topology.queue_kind),
    )
    .await?;
    Ok(())
}

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    Ok(())
}

fn queue_arguments(kind: QueueKind) -> FieldTable {
    let mut arguments = FieldTable::default();
    put(&mut arguments, "x-queue-type", kind.as_str());
    arguments
}

/// A delay queue: every message waits exactly `bucket`, then the broker dead-letters it back to
/// the work queue. One TTL per queue because per-message TTLs expire only at the head of a
/// queue, where a 6 h job would hold back a 5 s one. On quorum queues the dead-lettering is
/// at-least-once (it needs `reject-publish` overflow); classic queues dead-letter without
/// confirms, which is why quorum is the default.
fn delay_queue_arguments(kind: QueueKind, bucket: Duration, work_queue: &str) -> FieldTable {
    let mut arguments = queue_arguments(kind);
    arguments.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX)),
    );
    put(&mut arguments, "x-dead-letter-exchange", "");
    put(&mut arguments, "x-dead-letter-routing-key", work_queue);
    if kind == QueueKind::Quorum {
        put(&mut arguments, "x-dead-letter-strategy", "at-least-once");
        put(&mut arguments, "x-overflow", "reject-publish");
    }
    arguments
}

fn put(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// Publishes on a confirm-mode channel and waits for each confirm.
pub struct Publisher {
    channel: Channel,
    topology: Topology,
    /// Delay buckets declared on this connection; a reconnect starts empty and declares again.
    declared: Mutex<HashSet<Duration>>,
}

impl Publisher {
    pub async fn open(
        connection: &Connection,
        topology: Topology,
    ) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            topology,
            declared: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the confirm channel (and so its connection) is still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes and waits for the broker's confirm. Mandatory: a message no queue takes (its
    /// queue was deleted while webhookd ran) comes back as [`BrokerError::Unroutable`] instead of
    /// being confirmed and dropped.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(routing_key.to_owned())),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(routing_key.to_owned())),
            Confirmation::NotRequested => Err(BrokerError::Unconfirmed(routing_key.to_owned())),
        }
    }

    /// Sends a job to wait `bucket` in its delay queue, declaring the queue on first use.
    pub async fn to_delay_queue(
        &self,
        bucket: Duration,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let queue = self.topology.delay_queue(bucket);
        let known = self
            .declared
            .lock()
            .map(|set| set.contains(&bucket))
            .unwrap_or(false);
        if !known {
            let arguments =
                delay_queue_arguments(self.topology.queue_kind, bucket, &self.topology.queue);
            declare_queue(&self.channel, &queue, arguments).await?;
            if let Ok(mut set) = self.declared.lock() {
                set.insert(bucket);
            }
        }
        self.publish("", &queue, body, properties).await
    }

    /// Sends a message straight to the work queue (a replayed dead letter).
    pub async fn to_work_queue(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.publish("", &self.topology.queue, body, properties)
            .await
    }

    /// Parks a message in the dead-letter queue.
    pub async fn to_dead_letters(
        &self,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        self.publish("", &self.topology.dead_letter_queue, body, properties)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_is_added_once_and_never_overrides_the_operator() {
        let cases = [
            ("amqp://h:5672/%2f", "amqp://h:5672/%2f?heartbeat=10"),
            (
                "amqp://h/%2f?frame_max=8192",
                "amqp://h/%2f?frame_max=8192&heartbeat=10",
            ),
            ("amqp://h/%2f?heartbeat=30", "amqp://h/%2f?heartbeat=30"),
        ];
        for (input, expected) in cases {
            assert_eq!(with_defaults(input, Duration::from_secs(10)), expected);
        }
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once_back_to_work() {
        let arguments =
            delay_queue_arguments(QueueKind::Quorum, Duration::from_millis(250), "work");
        let get = |k: &str| arguments.inner().get(k).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(250)));
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString("work".into()))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        let classic = delay_queue_arguments(QueueKind::Classic, Duration::from_secs(5), "work");
        assert!(classic.inner().get("x-dead-letter-strategy").is_none());
    }
}
