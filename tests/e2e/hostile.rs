//! What a hostile or careless publisher can put into an AMQP message beyond its body: oversized
//! headers, webhookd's own headers forged, an event name no routing key could carry. Each ends
//! delivered or in the dead-letter queue with a reason, and consuming goes on.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use serde_json::Value;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::Receiver;
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn event(account: u64, n: u32, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": name, "id": n, "account": { "id": account },
    }))
    .expect("json")
}

fn headers(pairs: &[(&str, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(
            ShortString::from(*key),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    table
}

async fn publish(daemon: &Daemon, routing_key: &str, body: &[u8], properties: BasicProperties) {
    let amqp = broker::connect().await;
    broker::publish(&amqp, &daemon.names.exchange, routing_key, body, properties).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_40_kb_of_headers_is_delivered_and_so_is_the_next_one() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(1, &receiver.url("/hook"), &[]).await;
    // Larger than a 16 KiB frame: the properties travel in one frame that cannot be split.
    let bulky = headers(&[
        ("x-trace", "t".repeat(20_000)),
        ("x-baggage", "b".repeat(20_000)),
    ]);
    let properties = BasicProperties::default()
        .with_message_id(ShortString::from("bulky-1"))
        .with_headers(bulky);
    publish(
        &daemon,
        "message_created",
        &event(1, 1, "message_created"),
        properties,
    )
    .await;
    publish(
        &daemon,
        "message_created",
        &event(1, 2, "message_created"),
        BasicProperties::default().with_message_id(ShortString::from("plain-2")),
    )
    .await;
    let bodies = eventually(WAIT, "both events delivered", || async {
        let seen = receiver.requests("/hook");
        (seen.len() >= 2).then_some(seen)
    })
    .await;
    let ids: Vec<u64> = bodies
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).expect("json")["id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    assert!(ids.contains(&1) && ids.contains(&2), "{ids:?}");
    assert_eq!(daemon.metric("webhookd_broker_reconnects_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_oversized_webhookd_headers_and_an_overlong_event_name_are_parked_as_malformed() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(1, &receiver.url("/hook"), &[]).await;
    let forged = headers(&[("x-webhookd-webhook-id", "w".repeat(5_000))]);
    publish(
        &daemon,
        "message_created",
        &event(1, 1, "message_created"),
        BasicProperties::default()
            .with_message_id(ShortString::from("forged-1"))
            .with_headers(forged),
    )
    .await;
    let long_name = "e".repeat(300);
    publish(
        &daemon,
        "message_created",
        &event(1, 2, &long_name),
        BasicProperties::default().with_message_id(ShortString::from("long-name-2")),
    )
    .await;
    publish(
        &daemon,
        "message_created",
        &event(1, 3, "message_created"),
        BasicProperties::default().with_message_id(ShortString::from("fine-3")),
    )
    .await;
    let dead = eventually(WAIT, "two dead letters", || async {
        let dead = daemon.dead_letters().await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    let error_of = |id: &str| {
        let letter = dead
            .iter()
            .find(|d| d["id"] == id)
            .unwrap_or_else(|| panic!("no dead letter {id}: {dead:?}"));
        assert_eq!(letter["reason"], "malformed");
        letter["last_error"].as_str().expect("error").to_owned()
    };
    assert!(error_of("forged-1").contains("x-webhookd-webhook-id"));
    assert!(error_of("long-name-2").contains("`event` is 300 bytes"));
    eventually(WAIT, "the well-formed event delivered", || async {
        (receiver.requests("/hook").len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_longer_than_a_scan_window_is_listed_whole_without_bodies() {
    let daemon = Daemon::start(Settings::default()).await;
    let amqp = broker::connect().await;
    // Straight into the DLQ, as the daemon parks them: 150 is more than two scan windows.
    for n in 0..150u32 {
        let properties = BasicProperties::default()
            .with_message_id(ShortString::from(format!("dead-{n}")))
            .with_headers(headers(&[
                ("x-webhookd-reason", "exhausted".to_owned()),
                ("x-webhookd-webhook-id", format!("wh_{}", n % 3)),
            ]));
        broker::publish(
            &amqp,
            "",
            &daemon.names.dead_letters,
            &event(1, n, "message_created"),
            properties,
        )
        .await;
    }
    let first = daemon.dead_letters().await;
    let second = daemon.dead_letters().await;
    let ids = |entries: &[Value]| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let expected: Vec<String> = (0..150).map(|n| format!("dead-{n}")).collect();
    assert_eq!(ids(&first), expected, "every dead letter, in queue order");
    assert_eq!(ids(&second), expected, "and again, in place");
    assert!(
        first.iter().all(|e| e.get("body").is_none()),
        "a listing carries no bodies"
    );
    let shown = daemon.cli_ok(&["dlq", "show", "dead-140"]).await;
    assert!(shown.contains("\"id\":140"), "{shown}");
    let purged = daemon
        .cli_ok(&["dlq", "purge", "--webhook", "wh_1", "--yes"])
        .await;
    assert!(purged.contains("purged 50"), "{purged}");
    assert_eq!(daemon.dead_letters().await.len(), 100);
}
