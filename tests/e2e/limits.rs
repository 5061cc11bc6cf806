//! Delivery limits: RabbitMQ 4 gives every quorum queue a delivery limit of 20 by default and
//! drops a message returned more often than that. webhookd decides instead: dead letters outlast
//! any number of listings, on every broker version the suite runs on.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
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
