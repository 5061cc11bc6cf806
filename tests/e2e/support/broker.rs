//! Talking to the test broker directly, as a publisher or an operator would.
//!
//! The broker is real: `scripts/test.sh` starts a private node and exports its URL. A missing
//! broker fails every test loudly; nothing here skips.

use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub fn url() -> String {
    std::env::var("WEBHOOKD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5679/%2f".to_owned())
}

pub async fn connect() -> Connection {
    let url = url();
    Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no RabbitMQ at {url} ({e}): run the tests with scripts/test.sh, which starts one"
            )
        })
}

/// Publishes `body` to `exchange` with `routing_key`, persistent, waiting for the confirm.
pub async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "broker nacked a test publish");
    let _ = channel.close(200, ShortString::from("done")).await;
}

/// How many messages are ready in `queue` (0 if it does not exist yet).
pub async fn ready_count(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let count = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0);
    let _ = channel.close(200, ShortString::from("done")).await;
    count
}

/// Connects to a broker other than the shared test node (a test's [`PrivateNode`]).
pub async fn connect_to(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("no RabbitMQ at {url}: {e}"))
}

/// A RabbitMQ node of one test's own, for tests that restart the broker or close its
/// connections: the shared test node serves every other test at the same time. Stopped on drop,
/// so a failing test does not leave it running.
pub struct PrivateNode {
    pub name: String,
    pub port: u16,
    /// Shared by the nodes of one cluster (one Erlang cookie), removed with the last of them.
    home: Arc<tempfile::TempDir>,
}

impl PrivateNode {
    /// Starts the node (about 8 s, more on a loaded machine) and waits until it accepts AMQP.
    pub async fn start(prefix: &str) -> PrivateNode {
        let node = PrivateNode::reserve(prefix);
        node.start_with_conf("").await;
        node
    }

    /// Starts a reserved node with `conf` as its `rabbitmq.conf` (e.g. a TLS listener), which
    /// `scripts/broker.sh` reads from the node's home. Files the conf names belong in the home
    /// too: a RabbitMQ 4.0 node runs in a root of its own, which sees the home and nothing else
    /// of the host.
    pub async fn start_with_conf(&self, conf: &str) {
        std::fs::write(self.home().join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        let port = self.port.to_string();
        self.script(&["start", &self.name, &port]).await;
    }

    /// A name, a port and a home for a node something else starts (`scripts/run.sh`, given
    /// them), stopped on drop all the same.
    pub fn reserve(prefix: &str) -> PrivateNode {
        PrivateNode {
            name: super::unique(prefix).replace('-', "_"),
            port: free_amqp_port(),
            home: Arc::new(tempfile::tempdir().expect("temp dir")),
        }
    }

    /// A RabbitMQ cluster of `size` nodes on this machine, started with `conf` as their
    /// `rabbitmq.conf`: the nodes share one home (one Erlang cookie, one config), and each
    /// after the first joins the first's cluster. Stopped on drop, node by node.
    pub async fn cluster(prefix: &str, size: usize, conf: &str) -> Vec<PrivateNode> {
        let first = PrivateNode::reserve(prefix);
        let mut nodes: Vec<PrivateNode> = (1..size)
            .map(|_| PrivateNode {
                name: super::unique(prefix).replace('-', "_"),
                port: free_amqp_port(),
                home: first.home.clone(),
            })
            .collect();
        // The first start writes the cookie the others read, so it goes alone.
        first.start_with_conf(conf).await;
        futures_util::future::join_all(nodes.iter().map(PrivateNode::restart)).await;
        // Joins one at a time, as RabbitMQ asks.
        for node in &nodes {
            node.script(&["join", &node.name, &first.name]).await;
        }
        nodes.insert(0, first);
        nodes
    }

    /// Starts the node again (after [`kill9`](Self::kill9) or a stop) with the data it had.
    pub async fn restart(&self) {
        let port = self.port.to_string();
        self.script(&["start", &self.name, &port]).await;
    }

    /// SIGKILL to the node's VM, as a crash would; returns once it is gone.
    pub async fn kill9(&self) {
        self.script(&["kill", &self.name]).await;
    }

    /// The node's state folder (`WEBHOOKD_BROKER_HOME`).
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl` against this node, asserting success; returns its output.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["ctl", self.name.as_str()];
        all.extend_from_slice(args);
        self.script(&all).await
    }

    /// Force-closes the connections whose name (set by webhookd, `webhookd consumer` or
    /// `webhookd publisher`) contains `name`, as `rabbitmqctl close_connection` does for an
    /// operator. Returns how many it closed.
    pub async fn close_connections(&self, name: &str) -> usize {
        let listing = self
            .ctl(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .await;
        let pids: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(name))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for pid in &pids {
            self.ctl(&["close_connection", pid, "closed by a webhookd test"])
                .await;
        }
        pids.len()
    }

    async fn script(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(script_path())
            .args(args)
            .env("WEBHOOKD_BROKER_HOME", self.home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("scripts/broker.sh");
        assert!(
            output.status.success(),
            "broker.sh {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.home().join(format!("log/{}@localhost.log", self.name));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "--- {} (last 40 lines) ---\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        let _ = std::process::Command::new(script_path())
            .args(["stop", &self.name])
            .env("WEBHOOKD_BROKER_HOME", self.home.path())
            .stdin(std::process::Stdio::null())
            .status();
    }
}

fn script_path() -> String {
    format!("{}/scripts/broker.sh", env!("CARGO_MANIFEST_DIR"))
}

/// A free port low enough that the broker's distribution port (20000 away) is valid too.
pub fn free_amqp_port() -> u16 {
    loop {
        let port = super::daemon::free_port().port();
        if port < 45000 {
            return port;
        }
        let candidate = port - 20000;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

/// Publishes a small `event` for `account`, numbered `n` (body field `id`, message id
/// `ev-<account>-<n>`), routed by its event name.
pub async fn publish_event(
    connection: &Connection,
    exchange: &str,
    event: &str,
    account: u64,
    n: u64,
) {
    let (body, props) = small_event(event, account, n);
    publish(connection, exchange, event, &body, props).await;
}

/// The body and properties [`publish_event`] sends.
fn small_event(event: &str, account: u64, n: u64) -> (Vec<u8>, BasicProperties) {
    let body = serde_json::to_vec(&serde_json::json!({
        "event": event, "id": n, "account": { "id": account },
    }))
    .expect("json");
    let props =
        BasicProperties::default().with_message_id(ShortString::from(format!("ev-{account}-{n}")));
    (body, props)
}

/// Publishes many small events (`(account, n)` each, as [`publish_event`] does) on one channel,
/// persistent, and waits for every confirm: thousands of events in the time of a few hundred
/// one-by-one publishes. What the broker nacks is published again, as a publisher must: a
/// quorum queue whose leader was lost nacks until it has a new one. Returns how many publishes
/// were nacked.
pub async fn publish_events(
    connection: &Connection,
    exchange: &str,
    event: &str,
    events: impl IntoIterator<Item = (u64, u64)>,
) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut pending: Vec<(u64, u64)> = events.into_iter().collect();
    let mut nacked = 0;
    loop {
        // A channel per round: one that saw the leader go may keep sending to it.
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let mut confirms = Vec::new();
        for &(account, n) in &pending {
            let (body, props) = small_event(event, account, n);
            let confirm = channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(event),
                    BasicPublishOptions::default(),
                    &body,
                    props.with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(((account, n), confirm));
        }
        let mut refused = Vec::new();
        for (pair, confirm) in confirms {
            if !confirm.await.expect("confirm").is_ack() {
                refused.push(pair);
            }
        }
        let _ = channel.close(200, ShortString::from("done")).await;
        nacked += refused.len();
        pending = refused;
        if pending.is_empty() {
            return nacked;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker still nacks {} events after 60 s",
            pending.len()
        );
        // A publisher's pause before it tries again, not a wait for a condition.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
