//! The dead-letter queue as ops use it: list, show, replay, purge; and what a scan does when the
//! broker has not yet taken back what an earlier reader held.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;
use serde_json::Value;
use webhookd::broker::{announced_version, BrokerError, Node, Topology};
use webhookd::config::{Config, QueueKind, Secret};
use webhookd::dlq::{self, Action, Filter};

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually, unique};

const WAIT: Duration = Duration::from_secs(30);

async fn publish(daemon: &Daemon, account: u64, n: u32) {
    let amqp = broker::connect().await;
    let body = serde_json::to_vec(&serde_json::json!({
        "event": "message_created", "id": n, "account": { "id": account },
    }))
    .expect("json");
    let props = BasicProperties::default().with_message_id(ShortString::from(format!("dlq-{n}")));
    broker::publish(
        &amqp,
        &daemon.names.exchange,
        "message_created",
        &body,
        props,
    )
    .await;
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_in_place_replayed_once_fixed_and_purged_only_when_told() {
    for queue_kind in ["classic", "quorum"] {
        let daemon = Daemon::start(Settings {
            queue_kind,
            ..Settings::default()
        })
        .await;
        let receiver = Receiver::scripted(|_, _| Reply::status(404)).await;
        let broken = daemon.add_webhook(5, &receiver.url("/broken"), &[]).await;
        let broken_id = broken["id"].as_str().expect("id").to_owned();
        for n in 0..3 {
            publish(&daemon, 5, n).await;
        }
        let first = eventually(WAIT, "three dead letters", || async {
            let dead = daemon.dead_letters().await;
            (dead.len() == 3).then_some(dead)
        })
        .await;
        let second = daemon.dead_letters().await;
        assert_eq!(
            ids(&first),
            ids(&second),
            "{queue_kind}: listing twice, same order"
        );
        let filtered: Vec<Value> = serde_json::from_str(
            &daemon
                .cli_ok(&[
                    "dlq",
                    "list",
                    "--webhook",
                    &broken_id,
                    "--reason",
                    "rejected",
                    "--json",
                ])
                .await,
        )
        .expect("json");
        assert_eq!(filtered.len(), 3);

        let shown = daemon.cli_ok(&["dlq", "show", &ids(&first)[0]]).await;
        assert!(shown.contains("x-webhookd-reason: rejected"), "{shown}");
        assert!(shown.contains("\"account\""), "body shown: {shown}");

        let dry = daemon
            .cli_ok(&["dlq", "purge", "--webhook", &broken_id])
            .await;
        assert!(dry.contains("would purge 3"), "{dry}");
        assert_eq!(
            daemon.dead_letters().await.len(),
            3,
            "purge without --yes deletes nothing"
        );

        let refused = daemon.cli(&["dlq", "replay"]).await;
        assert_eq!(refused.status.code(), Some(1), "replay needs a selection");

        receiver.rescript(|_, _| Reply::status(200));
        let replayed = daemon
            .cli_ok(&["dlq", "replay", "--webhook", &broken_id])
            .await;
        assert!(replayed.contains("replayed 3"), "{replayed}");
        eventually(WAIT, "three replayed deliveries", || async {
            (receiver.requests("/broken").len() == 6).then_some(())
        })
        .await;
        let delivery_ids: std::collections::HashSet<String> = receiver
            .requests("/broken")
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        assert_eq!(delivery_ids.len(), 3, "replays keep their delivery ids");
        let dead_ids: std::collections::HashSet<String> = ids(&first).into_iter().collect();
        assert_eq!(
            delivery_ids, dead_ids,
            "dead letters are named by delivery id"
        );
        assert!(
            daemon.dead_letters().await.is_empty(),
            "replayed entries leave the DLQ"
        );

        receiver.rescript(|_, _| Reply::status(404));
        publish(&daemon, 5, 9).await;
        eventually(WAIT, "one more dead letter", || async {
            (daemon.dead_letters().await.len() == 1).then_some(())
        })
        .await;
        let purged = daemon.cli_ok(&["dlq", "purge", "--all", "--yes"]).await;
        assert!(purged.contains("purged 1"), "{purged}");
        assert!(daemon.dead_letters().await.is_empty());
    }
}

/// A topology of its own (exchange, work queue, dead-letter queue) declared on the test broker
/// as the daemon declares it (no delivery limit, which on 4.x would drop a dead letter listed
/// 20 times), with `n` dead letters parked straight into its dead-letter queue.
async fn parked(kind: QueueKind, n: u32) -> (Arc<lapin::Connection>, Topology) {
    let mut config = Config::default().broker;
    config.url = Secret::from(broker::url());
    let node = Node::of(&config, 0).expect("test broker URL");
    let version = announced_version(&config, &node)
        .await
        .expect("broker version");
    let mut topology = Topology::from_config(&config).on(version);
    let id = unique("dlq-scan");
    topology.exchange = format!("{id}.events");
    topology.declare_exchange = true;
    topology.queue = format!("{id}.work");
    topology.dead_letter_queue = format!("{id}.dead");
    topology.queue_kind = kind;
    let connection = Arc::new(broker::connect().await);
    webhookd::broker::declare(&connection, &topology)
        .await
        .expect("declare");
    park(&connection, &topology, n).await;
    (connection, topology)
}

async fn park(connection: &lapin::Connection, topology: &Topology, n: u32) {
    for i in 0..n {
        let props = BasicProperties::default().with_message_id(ShortString::from(format!("d-{i}")));
        broker::publish(connection, "", &topology.dead_letter_queue, b"{}", props).await;
    }
}

/// Another reader of the dead-letter queue: a consumer holding `n` of its messages unacked, as a
/// `dlq` command does until the broker has taken its channel down. Closing the channel lets them
/// go.
async fn hold(
    connection: &lapin::Connection,
    topology: &Topology,
    n: usize,
) -> (lapin::Channel, lapin::Consumer) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            ShortString::from(topology.dead_letter_queue.as_str()),
            ShortString::from("other-reader"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..n {
        tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("a held message in time")
            .expect("a delivery")
            .expect("not an error");
    }
    (channel, consumer)
}

async fn scan(
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    action: Action,
    patience: Duration,
) -> Result<Vec<dlq::Entry>, BrokerError> {
    dlq::scan(
        connection,
        topology,
        &Filter::default(),
        None,
        action,
        false,
        patience,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_never_takes_dead_letters_another_reader_holds_for_an_empty_queue() {
    for kind in [QueueKind::Classic, QueueKind::Quorum] {
        let (connection, topology) = parked(kind, 3).await;

        // Back to back, as `dlq replay` scans right after its own look at the selection: each
        // scan sees what the one before handed back (a quorum queue takes it back through its
        // log, after the channel is gone).
        for round in 0..20 {
            let seen = scan(&connection, &topology, Action::Look, dlq::PATIENCE)
                .await
                .expect("scan");
            assert_eq!(seen.len(), 3, "{kind:?}, round {round}");
        }

        // Held for good: a replay says so and does nothing, instead of replaying 0.
        let other = broker::connect().await;
        let (held, _reading) = hold(&other, &topology, 3).await;
        let refused = scan(
            &connection,
            &topology,
            Action::Replay,
            Duration::from_secs(1),
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(BrokerError::DeadLettersHeld { consumers: 1, .. })
            ),
            "{kind:?}: {refused:?}"
        );
        let _ = held.close(200, ShortString::from("done")).await;

        // Let go while the replay waits: it replays them all.
        let (held, _reading) = hold(&other, &topology, 3).await;
        let replay = tokio::spawn({
            let connection = connection.clone();
            let topology = topology.clone();
            async move { scan(&connection, &topology, Action::Replay, dlq::PATIENCE).await }
        });
        let _ = held.close(200, ShortString::from("done")).await;
        let replayed = replay.await.expect("replay task").expect("replay");
        assert_eq!(replayed.len(), 3, "{kind:?}");
        assert_eq!(broker::ready_count(&connection, &topology.queue).await, 3);
        assert_eq!(
            dlq::depth(&connection, &topology).await.expect("depth"),
            0,
            "{kind:?}: replayed dead letters leave the queue"
        );
    }
}
