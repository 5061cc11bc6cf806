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
//!
//! Every connection — the daemon's two, and those of `publish` and `dlq` — is opened by
//! [`connect`], which builds the transport itself instead of leaving it to lapin's defaults: an
//! `amqps://` URL always gets a TLS handshake verified against [`crate::tls`]'s roots (the
//! Mozilla set plus `broker.extra_ca_file`), and a failed handshake fails the connection. There
//! is no path from `amqps://` to a plain socket, so the password never crosses the network in
//! clear because of a missing TLS backend or an untrusted certificate.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use amq_protocol_tcp::{AsyncTcpStream, RustlsConnector};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::config::{BrokerConfig, QueueKind};
use crate::retry::bucket_queue_name;
use crate::tls::{self, TlsSetupError};

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
    /// The URL is a secret (it holds the password), so the message names the key, not the text.
    #[error("broker.url is not a valid AMQP URI")]
    InvalidUrl,
    #[error("cannot set up TLS for the broker: {0}")]
    Tls(#[from] TlsSetupError),
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
/// with heartbeats so a dead peer is noticed within two intervals. `amqps://` connects over TLS
/// verified against the bundled roots and `broker.extra_ca_file`, or not at all.
pub async fn connect(broker: &BrokerConfig, role: &str) -> Result<Connection, BrokerError> {
    let uri: AMQPUri = with_defaults(broker.url.expose(), broker.heartbeat)
        .parse()
        .map_err(|_| BrokerError::InvalidUrl)?;
    let tls = match uri.scheme {
        AMQPScheme::AMQP => None,
        AMQPScheme::AMQPS => Some(RustlsConnector::from(tls::client_config(
            "broker.extra_ca_file",
            broker.extra_ca_file.as_deref(),
        )?)),
    };
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("webhookd {role}")));
    let runtime = lapin::runtime::default_runtime()?;
    // The socket under the connection: TCP to the URL's host, then, for `amqps://`, the TLS
    // handshake. A handshake that fails is the connection's error; nothing falls back to plain.
    let transport = async move |uri: AMQPUri, runtime| {
        // An IPv6 literal comes bracketed from the URL; resolving and SNI want it bare.
        let host = uri
            .authority
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.authority.port;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
        match &tls {
            None => Ok(stream),
            Some(connector) => stream
                .into_rustls(connector, host)
                .await
                .map_err(|error| io::Error::other(tls_failure(host, port, &error)).into()),
        }
    };
    Ok(Connection::connector(uri, runtime, transport, properties).await?)
}

/// A failed handshake in words an operator can act on: an untrusted certificate says so and
/// names the key that adds a private CA.
fn tls_failure(host: &str, port: u16, error: &io::Error) -> String {
    let cause = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let mut text = match cause {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            format!(
                "TLS handshake with the broker at {host}:{port} failed: its certificate is not \
                 trusted (invalid peer certificate: UnknownIssuer); if a private CA signed it, \
                 name that CA in broker.extra_ca_file"
            )
        }
        Some(rustls::Error::InvalidCertificate(problem)) => format!(
            "TLS handshake with the broker at {host}:{port} failed: its certificate is not \
             trusted (invalid peer certificate: {problem:?})"
        ),
        Some(other) => format!("TLS handshake with the broker at {host}:{port} failed: {other}"),
        None => format!("TLS handshake with the broker at {host}:{port} failed: {error}"),
    };
    text.retain(|c| c != '\n' && c != '\r');
    text
}

/// The largest frame webhookd asks for. lapin keeps a send and a receive buffer of 32 frames
/// per connection, so RabbitMQ's default of 128 KiB costs 16 MiB of the daemon's memory for its
/// two connections; events are a few KiB, and a bigger one only travels in several frames.
const FRAME_MAX: u32 = 16 * 1024;

/// Adds `heartbeat=N` and `frame_max` to the URL's query, each unless the operator set it there.
fn with_defaults(url: &str, heartbeat: Duration) -> String {
    let mut url = url.to_owned();
    for (key, value) in [
        ("heartbeat", heartbeat.as_secs()),
        ("frame_max", u64::from(FRAME_MAX)),
    ] {
        if !url.contains(&format!("{key}=")) {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}{key}={value}");
        }
    }
    url
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
    fn heartbeat_and_frame_max_are_added_once_and_never_override_the_operator() {
        let cases = [
            (
                "amqp://h:5672/%2f",
                "amqp://h:5672/%2f?heartbeat=10&frame_max=16384",
            ),
            (
                "amqp://h/%2f?frame_max=8192",
                "amqp://h/%2f?frame_max=8192&heartbeat=10",
            ),
            (
                "amqp://h/%2f?heartbeat=30",
                "amqp://h/%2f?heartbeat=30&frame_max=16384",
            ),
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
