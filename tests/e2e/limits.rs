//! Delivery limits: RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default and
//! drops a message returned more often than that. webhookd decides instead: dead letters outlast
//! any number of listings, and an event handed back over and over ends in the dead-letter queue
//! as `redelivered`, never dropped. Both hold on every broker version the suite runs on.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::Value;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// More than RabbitMQ 4's default delivery limit of 20.
const RETURNS: i64 = 25;

fn quorum() -> Settings {
    Settings {
        queue_kind: "quorum",
        ..Settings::default()
    }
}

fn ids(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_outlast_being_listed_25_times() {
    let daemon = Daemon::start(quorum()).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(404)).await;
    daemon.add_webhook(6, &receiver.url("/refuses"), &[]).await;
    let amqp = broker::connect().await;
    for n in 0..3 {
        broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 6, n).await;
    }
    let first = eventually(WAIT, "three dead letters", || async {
        let dead = daemon.dead_letters().await;
        (dead.len() == 3).then_some(dead)
    })
    .await;
    // Each listing hands every dead letter back to the broker, which counts it as returned.
    for listing in 1..=RETURNS {
        let entries = eventually(
            WAIT,
            &format!("listing {listing} to show all three dead letters"),
            || async {
                let dead = daemon.dead_letters().await;
                (dead.len() == 3).then_some(dead)
            },
        )
        .await;
        assert_eq!(ids(&entries), ids(&first), "listing {listing}");
    }
}

/// The `x-delivery-count` header of a delivery, if it has one.
fn delivery_count(properties: &lapin::BasicProperties) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        other => panic!("x-delivery-count of an unexpected type: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_handed_back_25_times_is_dead_lettered_as_redelivered() {
    let mut daemon = Daemon::configure(quorum());
    let receiver = Receiver::ok().await;
    daemon.add_webhook(7, &receiver.url("/hook"), &[]).await;
    // `publish` declares the daemon's queues first, so the event waits in the work queue.
    daemon
        .cli_ok(&[
            "publish",
            "--sample",
            "message_created",
            "--account",
            "7",
            "--message-id",
            "handed-back-7",
        ])
        .await;

    // A consumer that hands the event back every time, as a daemon crashing on it would.
    let amqp = broker::connect().await;
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            ShortString::from(daemon.names.queue.as_str()),
            ShortString::from("hands-it-back"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for returned in 0..RETURNS {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("the event did not come back after {returned} returns"))
            .expect("consumer open")
            .expect("delivery");
        // Quorum queues count returns in this header: 3.10 sends it from the first delivery on
        // (as 0), 4.0 only once there was a return.
        let count = delivery_count(&delivery.properties);
        if returned == 0 {
            assert!(matches!(count, None | Some(0)), "first delivery: {count:?}");
        } else {
            assert_eq!(count, Some(returned), "after {returned} returns");
        }
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
    }
    let _ = channel.close(200, ShortString::from("done")).await;

    daemon.spawn();
    daemon.wait_ready().await;
    let dead = eventually(WAIT, "the event in the dead-letter queue", || async {
        let dead = daemon.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], "handed-back-7");
    assert_eq!(dead[0]["reason"], "redelivered");
    let shown = daemon.cli_ok(&["dlq", "show", "handed-back-7"]).await;
    assert!(
        shown.contains("message_created"),
        "the original body is kept: {shown}"
    );
    assert_eq!(
        daemon
            .metric("webhookd_dead_letters_total{reason=\"redelivered\"}")
            .await,
        1.0
    );
    assert_eq!(broker::ready_count(&amqp, &daemon.names.queue).await, 0);
    assert!(
        receiver.all().is_empty(),
        "an event past the limit is not tried again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_an_earlier_webhookd_declared_without_a_delivery_limit_still_work() {
    let mut daemon = Daemon::configure(quorum());
    // As webhookd declared them before it set delivery limits, and as they stand after a broker
    // is upgraded from 3.x to 4.x.
    let amqp = broker::connect().await;
    let channel = amqp.create_channel().await.expect("channel");
    for queue in [&daemon.names.queue, &daemon.names.dead_letters] {
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .expect("declare as before");
    }
    let receiver = Receiver::ok().await;
    daemon.add_webhook(8, &receiver.url("/hook"), &[]).await;
    daemon.spawn();
    daemon.wait_ready().await;
    broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 8, 1).await;
    eventually(WAIT, "the event delivered", || async {
        (receiver.requests("/hook").len() == 1).then_some(())
    })
    .await;
    // On 4.x such a queue keeps the broker's default limit, which webhookd cannot change: it
    // says so, naming the queue. On 3.x there is no default limit, and nothing to say.
    let logs = daemon.logs();
    let version = std::env::var("WEBHOOKD_BROKER_VERSION").unwrap_or_else(|_| "3.10".into());
    for queue in [&daemon.names.queue, &daemon.names.dead_letters] {
        let warned = logs
            .lines()
            .any(|line| line.contains("delivery limit") && line.contains(queue.as_str()));
        assert_eq!(
            warned,
            !version.starts_with("3."),
            "RabbitMQ {version}, queue {queue}:\n{logs}"
        );
    }
}
