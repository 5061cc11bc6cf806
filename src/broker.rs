//! RabbitMQ: connections, the topology webhookd owns, and publishing with confirms.
//!
//! Everything webhookd publishes (a retry job, a dead letter, a replay) replaces a message it
//! will ack afterwards, so every publish here waits for the broker's confirm and treats a nack as
//! an error: the caller then leaves the original unacked and nothing is lost. Consuming and
//! publishing use separate connections because the broker's flow control throttles publishing
//! connections, and a throttled consumer would stall deliveries that need no publishing at all.
//!
//! No broker default decides what is lost. RabbitMQ 4 gives every quorum queue a delivery limit
//! of 20: a message returned that often (a consumer that crashed holding it, a channel closed with
//! it unacked, a nack with requeue) is dropped, and every `webhookd dlq list` hands each dead
//! letter back once. So webhookd reads the version the broker announces and, on 4.x, declares its
//! quorum queues with `x-delivery-limit = -1`, no limit. 3.x has no default limit and would read
//! -1 as a limit that drops a message at its first return, so there the argument is left out,
//! which also keeps the queues of existing deployments equivalent when declared again. A queue
//! declared without the argument before (by an earlier webhookd, or before the broker's upgrade
//! to 4.x) cannot be changed by declaring it: webhookd uses it as it is and warns that it keeps
//! the broker's limit. webhookd protects the work queue from a message that keeps coming back
//! itself, and parks it with its reason instead of dropping it (see `service`).
//!
//! Delay queues are declared lazily, the first time a delay lands in their bucket, so a deployment
//! only carries the buckets its receivers actually need. Every declaration runs on a channel of
//! its own, which a refusal from the broker closes without taking anything else with it.
//!
//! Every connection — the daemon's two, and those of `publish` and `dlq` — is opened by
//! [`connect`], which builds the transport itself instead of leaving it to lapin's defaults: an
//! `amqps://` URL always gets a TLS handshake verified against [`crate::tls`]'s roots (the
//! Mozilla set plus `broker.extra_ca_file`), and a failed handshake fails the connection. There
//! is no path from `amqps://` to a plain socket, so the password never crosses the network in
//! clear because of a missing TLS backend or an untrusted certificate.
//!
//! A broker may be a cluster, given as a list of nodes (`broker.urls`). [`connect`] tries them
//! in order from the one it is asked to start at and says which took the connection: the
//! session supervisor starts after the node it lost, so a dead node costs one refused connect,
//! and the CLI takes the first node that answers. A cluster's nodes serve the same queues, so
//! which one a connection lands on changes where its traffic goes, not what it sees. Logs and
//! errors name a node by its address and place in the list, never by its URL, which holds the
//! password.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol_tcp::{AsyncTcpStream, RustlsConnector};
use async_rs::traits::Reactor;
use futures_util::{AsyncReadExt, AsyncWriteExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::protocol::{connection, parse_class, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tracing::warn;

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
    #[error("reading the broker's greeting (its version): {0}")]
    Greeting(String),
    /// The URL is a secret (it holds the password), so the message names the key, not the text.
    #[error("a broker URL (broker.url or broker.urls) is not a valid AMQP URI")]
    InvalidUrl,
    #[error("connecting to the broker at {0} took longer than {1:?}")]
    ConnectTimeout(Node, Duration),
    /// Every node of `broker.urls` was tried; the last one's error stands for them.
    #[error(
        "none of the {tried} broker nodes accepted a connection; the last, {node}, said: {last}"
    )]
    NoNode {
        tried: usize,
        node: Node,
        last: Box<BrokerError>,
    },
    #[error("cannot set up TLS for the broker: {0}")]
    Tls(#[from] TlsSetupError),
    /// Messages another reader holds unacked are neither ready nor counted: acting then would
    /// skip them, and report the skip as done.
    #[error(
        "the dead-letter queue {queue} still had {consumers} consumer(s) after {waited:?}: another \
         `webhookd dlq` command or the console is reading it (or some other client consumes it), \
         and the dead letters it holds cannot be seen; nothing was done, try again when it is done"
    )]
    DeadLettersHeld {
        queue: String,
        consumers: u32,
        waited: Duration,
    },
    #[error(
        "the broker counts {ready} ready message(s) in the dead-letter queue {queue} but sent none \
         for {waited:?}; the scan stopped part way"
    )]
    DeadLettersStalled {
        queue: String,
        ready: u32,
        waited: Duration,
    },
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
    /// The `x-delivery-limit` quorum queues are declared with, if any: it depends on the broker
    /// (see [`Topology::on`]).
    delivery_limit: Option<i64>,
}

impl Topology {
    /// The topology as configured, for a broker whose version is not known yet: declaring needs
    /// [`Topology::on`] first.
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
            delivery_limit: None,
        }
    }

    /// The same topology as declared on a broker of `version` (`None`: it did not say).
    pub fn on(&self, version: Option<Version>) -> Topology {
        Topology {
            delivery_limit: delivery_limit(version),
            ..self.clone()
        }
    }

    /// The name of the delay queue that holds jobs for `bucket`.
    pub fn delay_queue(&self, bucket: Duration) -> String {
        bucket_queue_name(&self.retry_queue_prefix, bucket)
    }
}

/// A RabbitMQ version, as the broker announces it when a connection opens ("4.0.5" is 4.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let mut numbers = text.split(|c: char| !c.is_ascii_digit());
        Some(Version {
            major: numbers.next()?.parse().ok()?,
            minor: numbers.next()?.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The `x-delivery-limit` for quorum queues on a broker of `version`: -1 (none) on 4.x and later,
/// where leaving it out means 20; left out on 3.x, which has no default and takes -1 for a limit
/// that drops a message at its first return; left out too on a broker that does not say.
fn delivery_limit(version: Option<Version>) -> Option<i64> {
    version.filter(|v| v.major >= 4).map(|_| -1)
}

/// The largest `connection.start` frame [`announced_version`] reads: RabbitMQ's is under 1 KiB.
const GREETING_MAX: usize = 64 * 1024;

/// The version the broker announces in `connection.start`, the first frame it sends. lapin reads
/// that frame but keeps none of it, so this opens a connection of its own over the same transport
/// [`connect`] uses (TLS for `amqps://`), sends the protocol header, reads the frame and hangs up
/// before logging in. `None` if the broker announces no version shaped like RabbitMQ's.
pub async fn announced_version(
    broker: &BrokerConfig,
    node: &Node,
) -> Result<Option<Version>, BrokerError> {
    let failed = |error: &dyn std::fmt::Display| BrokerError::Greeting(error.to_string());
    let (uri, tls) = parse(broker, node, Receives::OwnMessages)?;
    let runtime = lapin::runtime::default_runtime()?;
    let mut stream = transport(uri, runtime, tls.as_ref())
        .await
        .map_err(|e| failed(&e))?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(|e| failed(&e))?;
    // A frame: type (1 = method), channel (2 bytes), payload size (4), payload, end marker.
    let mut header = [0u8; 7];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|e| failed(&e))?;
    let [kind, _, _, size @ ..] = header;
    let size = u32::from_be_bytes(size) as usize;
    if kind != 1 || size > GREETING_MAX {
        return Err(failed(&format!(
            "not an AMQP 0-9-1 method frame (type {kind}, {size} bytes)"
        )));
    }
    let mut payload = vec![0; size];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| failed(&e))?;
    let start = match parse_class(payload.as_slice()) {
        Ok((_, AMQPClass::Connection(connection::AMQPMethod::Start(start)))) => start,
        _ => return Err(failed(&"the first frame is not connection.start")),
    };
    let version = match start.server_properties.inner().get("version") {
        Some(AMQPValue::LongString(text)) => {
            Version::parse(&String::from_utf8_lossy(text.as_bytes()))
        }
        _ => None,
    };
    Ok(version)
}

/// The node's URL with webhookd's defaults, and the TLS connector an `amqps://` URL needs.
fn parse(
    broker: &BrokerConfig,
    node: &Node,
    receives: Receives,
) -> Result<(AMQPUri, Option<RustlsConnector>), BrokerError> {
    let url = broker
        .nodes()
        .get(node.index)
        .ok_or(BrokerError::InvalidUrl)?;
    let uri: AMQPUri = with_defaults(url.expose(), broker.heartbeat, receives)
        .parse()
        .map_err(|_| BrokerError::InvalidUrl)?;
    let tls = match uri.scheme {
        AMQPScheme::AMQP => None,
        AMQPScheme::AMQPS => Some(RustlsConnector::from(tls::client_config(
            "broker.extra_ca_file",
            broker.extra_ca_file.as_deref(),
        )?)),
    };
    Ok((uri, tls))
}

/// The socket under a connection: TCP to the URL's host, then, with a connector, the TLS
/// handshake. A handshake that fails is the connection's error; nothing falls back to plain.
async fn transport<R: Reactor + Sync>(
    uri: AMQPUri,
    runtime: R,
    tls: Option<&RustlsConnector>,
) -> io::Result<AsyncTcpStream<R::TcpStream>> {
    // An IPv6 literal comes bracketed from the URL; resolving and SNI want it bare.
    let host = uri
        .authority
        .host
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.authority.port;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
    match tls {
        None => Ok(stream),
        Some(connector) => stream
            .into_rustls(connector, host)
            .await
            .map_err(|error| io::Error::other(tls_failure(host, port, &error))),
    }
}

/// Opens a connection named for its role (visible in the management UI and `list_connections`)
/// to the first node of `broker.urls` that accepts one, trying them in order from the one at
/// `first` (wrapping around), and says which node took it. Heartbeats let a dead peer be noticed
/// within two intervals. `amqps://` connects over TLS verified against the bundled roots and
/// `broker.extra_ca_file`, or not at all.
pub async fn connect(
    broker: &BrokerConfig,
    first: usize,
    role: &str,
    receives: Receives,
) -> Result<(Connection, Node), BrokerError> {
    let count = broker.nodes().len();
    let mut failed = None;
    for step in 0..count {
        let node = Node::of(broker, (first + step) % count)?;
        match connect_to(broker, &node, role, receives).await {
            Ok(connection) => return Ok((connection, node)),
            Err(error) => {
                if count > 1 {
                    warn!(broker = %node, %error, role, "cannot connect to this broker node; trying the next");
                }
                failed = Some((node, error));
            }
        }
    }
    match failed {
        Some((_, error)) if count == 1 => Err(error),
        Some((node, error)) => Err(BrokerError::NoNode {
            tried: count,
            node,
            last: Box::new(error),
        }),
        // Validation refuses an empty list; this keeps one from turning into a panic.
        None => Err(BrokerError::InvalidUrl),
    }
}

/// How long one node may take to accept a connection before the next is tried: a node that is
/// down refuses at once, but one cut off by the network would otherwise hold the connect until
/// TCP gives up, minutes later.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection named for its role to `node` alone (see [`connect`]).
pub async fn connect_to(
    broker: &BrokerConfig,
    node: &Node,
    role: &str,
    receives: Receives,
) -> Result<Connection, BrokerError> {
    let (uri, tls) = parse(broker, node, receives)?;
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("webhookd {role}")));
    let runtime = lapin::runtime::default_runtime()?;
    let transport = async move |uri: AMQPUri, runtime| {
        transport(uri, runtime, tls.as_ref())
            .await
            .map_err(Into::into)
    };
    let connecting = Connection::connector(uri, runtime, transport, properties);
    match tokio::time::timeout(NODE_CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(BrokerError::ConnectTimeout(
            node.clone(),
            NODE_CONNECT_TIMEOUT,
        )),
    }
}

/// One node of the broker: its place in `broker.urls` (0 for the one `broker.url`) and its
/// address, which is what logs and errors name: the URL holds the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub index: usize,
    pub address: String,
}

impl Node {
    /// The node at `index` of `broker.urls`.
    pub fn of(broker: &BrokerConfig, index: usize) -> Result<Node, BrokerError> {
        let url = broker.nodes().get(index).ok_or(BrokerError::InvalidUrl)?;
        let uri: AMQPUri = url.expose().parse().map_err(|_| BrokerError::InvalidUrl)?;
        Ok(Node {
            index,
            address: format!("{}:{}", uri.authority.host, uri.authority.port),
        })
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.address)
    }
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

/// What a connection receives from the broker, which decides the frame size it asks for.
///
/// A message's properties and headers travel in one frame that cannot be split, and the broker
/// sends it whole even when it is larger than the size the client asked for; a client that asked
/// for less then fails the connection with a frame error, reconnects, receives the same message
/// first and loops. So a connection that consumes takes the broker's frame size (128 KiB by
/// default): every message the broker accepted can be received. A connection that only publishes
/// receives confirms, and back only what webhookd itself published (whose headers are capped far
/// below 16 KiB), and the registry's connection consumes only what webhookd instances wrote; so
/// those ask for 16 KiB: lapin keeps 32 frames of buffer per direction and connection, and the
/// broker's size would cost the daemon 8 MiB more for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receives {
    Messages,
    OwnMessages,
}

/// The frame size a connection that only publishes asks for.
const PUBLISHING_FRAME_MAX: u32 = 16 * 1024;

/// Adds `heartbeat=N`, and for a publishing connection `frame_max`, to the URL's query, each
/// unless the operator set it there.
fn with_defaults(url: &str, heartbeat: Duration, receives: Receives) -> String {
    let mut url = url.to_owned();
    let frame_max = match receives {
        Receives::Messages => None,
        Receives::OwnMessages => Some(u64::from(PUBLISHING_FRAME_MAX)),
    };
    for (key, value) in [
        ("heartbeat", Some(heartbeat.as_secs())),
        ("frame_max", frame_max),
    ] {
        if let Some(value) = value.filter(|_| !url.contains(&format!("{key}="))) {
            let separator = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{separator}{key}={value}");
        }
    }
    url
}

/// Declares the exchange (if configured), the work queue with its bindings, and the dead-letter
/// queue. Idempotent: the same arguments every time, so a restart or a second instance agrees.
pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    declare_queue(
        connection,
        &topology.queue,
        queue_arguments(topology.queue_kind, topology.delivery_limit),
    )
    .await?;
    // No TTL, no length limit and no delivery limit: a dead letter stays until ops act on it.
    declare_queue(
        connection,
        &topology.dead_letter_queue,
        queue_arguments(topology.queue_kind, topology.delivery_limit),
    )
    .await?;
    let channel = connection.create_channel().await?;
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
    let _ = channel.close(200, ShortString::from("declared")).await;
    Ok(())
}

/// Declares a durable queue on a channel of its own. If the queue exists without the delivery
/// limit asked for, it is used as it is, with a warning: a queue's arguments cannot be changed by
/// declaring it, and refusing to run would lose more than the broker's limit does.
async fn declare_queue(
    connection: &Connection,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, ShortString::from("declared")).await;
            Ok(())
        }
        Err(error) if is_other_delivery_limit(&error) => {
            warn!(
                queue = name,
                broker = %error,
                "this queue was declared without webhookd's delivery limit (by an earlier \
                 webhookd, or before the broker was upgraded to 4.x) and keeps the broker's: \
                 RabbitMQ 4 drops a message returned 20 times; set a policy with \
                 \"delivery-limit\": -1 on it (see docs/operations.md)"
            );
            // The broker closed that channel; the queue is there, as the passive declare checks.
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    ShortString::from(name),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, ShortString::from("declared")).await;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Whether the broker refused a declaration because the queue exists with another
/// `x-delivery-limit` (or none).
fn is_other_delivery_limit(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ProtocolError(amqp)
            if amqp.get_id() == 406 && amqp.get_message().as_str().contains("x-delivery-limit")
    )
}

/// The arguments of a quorum queue webhookd declares on a broker of `version` (its delivery
/// limit, see [`Topology::on`]), plus `extra`.
pub fn quorum_arguments(version: Option<Version>, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut arguments = queue_arguments(QueueKind::Quorum, delivery_limit(version));
    for (key, value) in extra {
        arguments.insert(ShortString::from(*key), value.clone());
    }
    arguments
}

fn queue_arguments(kind: QueueKind, delivery_limit: Option<i64>) -> FieldTable {
    let mut arguments = FieldTable::default();
    put(&mut arguments, "x-queue-type", kind.as_str());
    if let (QueueKind::Quorum, Some(limit)) = (kind, delivery_limit) {
        arguments.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(limit),
        );
    }
    arguments
}

/// A delay queue: every message waits exactly `bucket`, then the broker dead-letters it back to
/// the work queue. One TTL per queue because per-message TTLs expire only at the head of a
/// queue, where a 6 h job would hold back a 5 s one. On quorum queues the dead-lettering is
/// at-least-once (it needs `reject-publish` overflow); classic queues dead-letter without
/// confirms, which is why quorum is the default.
fn delay_queue_arguments(
    kind: QueueKind,
    delivery_limit: Option<i64>,
    bucket: Duration,
    work_queue: &str,
) -> FieldTable {
    let mut arguments = queue_arguments(kind, delivery_limit);
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
    /// The connection the channel is on, where delay queues are declared.
    connection: Arc<Connection>,
    topology: Topology,
    /// Delay buckets declared on this connection; a reconnect starts empty and declares again.
    declared: Mutex<HashSet<Duration>>,
}

impl Publisher {
    pub async fn open(
        connection: &Arc<Connection>,
        topology: Topology,
    ) -> Result<Publisher, BrokerError> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            connection: connection.clone(),
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
        self.confirmed(exchange, routing_key, body, properties, true)
            .await
    }

    /// Publishes a notice to the events exchange and waits for the broker's confirm. Not
    /// mandatory: the notice is for whoever binds a queue to it, and a broker with no such queue
    /// has still taken it.
    pub async fn notify(&self, routing_key: &str, body: &[u8]) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string()));
        self.confirmed(
            &self.topology.exchange,
            routing_key,
            body,
            properties,
            false,
        )
        .await
    }

    async fn confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory,
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
            let arguments = delay_queue_arguments(
                self.topology.queue_kind,
                self.topology.delivery_limit,
                bucket,
                &self.topology.queue,
            );
            declare_queue(&self.connection, &queue, arguments).await?;
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
    fn a_consuming_connection_takes_the_brokers_frame_size_and_a_publishing_one_asks_for_less() {
        let cases = [
            (
                "amqp://h:5672/%2f",
                Receives::Messages,
                "amqp://h:5672/%2f?heartbeat=10",
            ),
            (
                "amqp://h:5672/%2f",
                Receives::OwnMessages,
                "amqp://h:5672/%2f?heartbeat=10&frame_max=16384",
            ),
            (
                "amqp://h/%2f?frame_max=8192",
                Receives::OwnMessages,
                "amqp://h/%2f?frame_max=8192&heartbeat=10",
            ),
            (
                "amqp://h/%2f?heartbeat=30",
                Receives::Messages,
                "amqp://h/%2f?heartbeat=30",
            ),
        ];
        for (input, receives, expected) in cases {
            assert_eq!(
                with_defaults(input, Duration::from_secs(10), receives),
                expected
            );
        }
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once_back_to_work() {
        let arguments =
            delay_queue_arguments(QueueKind::Quorum, None, Duration::from_millis(250), "work");
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
        let classic =
            delay_queue_arguments(QueueKind::Classic, None, Duration::from_secs(5), "work");
        assert!(classic.inner().get("x-dead-letter-strategy").is_none());
    }

    #[test]
    fn versions_read_as_rabbitmq_announces_them() {
        let v = |major, minor| Some(Version { major, minor });
        assert_eq!(Version::parse("4.0.5"), v(4, 0));
        assert_eq!(Version::parse("3.10.8"), v(3, 10));
        assert_eq!(Version::parse("4.1.0-rc.1"), v(4, 1));
        assert_eq!(Version::parse("4"), None);
        assert_eq!(Version::parse("nightly"), None);
    }

    #[test]
    fn only_4_x_quorum_queues_get_an_explicit_unlimited_delivery_limit() {
        let limit = |kind, version| {
            queue_arguments(kind, delivery_limit(version))
                .inner()
                .get("x-delivery-limit")
                .cloned()
        };
        let v = |major, minor| Some(Version { major, minor });
        // 4.x would limit quorum queues to 20 without it; -1 is none there.
        assert_eq!(
            limit(QueueKind::Quorum, v(4, 0)),
            Some(AMQPValue::LongLongInt(-1))
        );
        assert_eq!(
            limit(QueueKind::Quorum, v(5, 2)),
            Some(AMQPValue::LongLongInt(-1))
        );
        // 3.x has no default, and would drop a message at its first return with -1; a broker
        // that does not say is left with its own defaults too.
        assert_eq!(limit(QueueKind::Quorum, v(3, 13)), None);
        assert_eq!(limit(QueueKind::Quorum, None), None);
        // Classic queues have no delivery limit.
        assert_eq!(limit(QueueKind::Classic, v(4, 0)), None);
        let delay = delay_queue_arguments(QueueKind::Quorum, Some(-1), Duration::from_secs(5), "w");
        assert_eq!(
            delay.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(-1))
        );
    }
}
