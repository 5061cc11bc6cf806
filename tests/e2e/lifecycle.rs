//! An endpoint's lifecycle: disabled after failing for `delivery.disable_after` with a notice to
//! the application, its health, a test delivery, and a rate limit.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use serde_json::Value;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually, unique};

const WAIT: Duration = Duration::from_secs(30);

fn id_of(webhook: &Value) -> String {
    webhook["id"].as_str().expect("webhook id").to_owned()
}

async fn show(daemon: &Daemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["webhooks", "show", id, "--json"]).await)
        .expect("webhook JSON")
}

/// A queue of the test's own bound to the events exchange with `key`, as an application would
/// bind one to hear webhookd's notices.
async fn listen(daemon: &Daemon, key: &str) -> (Channel, String) {
    let amqp = broker::connect().await;
    let channel = amqp.create_channel().await.expect("channel");
    let queue = unique("notices");
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the notice queue");
    channel
        .queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(daemon.names.exchange.as_str()),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the notice queue");
    (channel, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_failing_past_disable_after_is_disabled_its_jobs_parked_and_replayed_once_enabled(
) {
    let daemon = Daemon::start(Settings {
        // A short cool-down: the replayed jobs go through the circuit the 503s opened.
        delivery_extra: "disable_after = \"3s\"\ncircuit_cooldown = \"1s\"".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/failing" => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    let failing = daemon.add_webhook(7, &receiver.url("/failing"), &[]).await;
    let failing_id = id_of(&failing);
    daemon.add_webhook(7, &receiver.url("/healthy"), &[]).await;
    let (notices, notice_queue) = listen(&daemon, "webhookd.#").await;

    let amqp = broker::connect().await;
    let published = Instant::now();
    for n in 0..5 {
        broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 7, n).await;
    }
    let disabled = eventually(WAIT, "the failing webhook disabled", || async {
        let webhook = show(&daemon, &failing_id).await;
        (webhook["enabled"] == false).then_some(webhook)
    })
    .await;
    let took = published.elapsed();
    assert!(took < Duration::from_secs(15), "disabled after {took:?}");
    assert_eq!(disabled["disabled_reason"], "failing");
    assert!(
        disabled["health"]["failing_since"].is_string(),
        "{disabled}"
    );

    let dead = eventually(WAIT, "its five waiting jobs parked", || async {
        let dead = daemon.dead_letters().await;
        (dead.len() == 5).then_some(dead)
    })
    .await;
    for letter in &dead {
        assert_eq!(letter["webhook_id"], failing_id.as_str(), "{letter}");
        assert_eq!(letter["reason"], "webhook_disabled", "{letter}");
    }

    let notice = eventually(WAIT, "the webhook_disabled notice", || async {
        notices
            .basic_get(
                ShortString::from(notice_queue.as_str()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
    })
    .await;
    assert_eq!(
        notice.delivery.routing_key.as_str(),
        "webhookd.webhook_disabled"
    );
    assert_eq!(*notice.delivery.properties.delivery_mode(), Some(2));
    let body: Value = serde_json::from_slice(&notice.delivery.data).expect("notice JSON");
    assert_eq!(body["webhook_id"], failing_id.as_str(), "{body}");
    assert_eq!(body["account_id"], 7);
    assert_eq!(body["url"], receiver.url("/failing"));
    assert_eq!(body["reason"], "failing");
    assert_eq!(body["last_status"], 503);
    assert!(body["failing_since"].is_string(), "{body}");
    assert!(
        daemon.logs().contains("webhook disabled"),
        "a warn line says so"
    );
    assert_eq!(
        daemon
            .metric(r#"webhookd_webhooks_disabled_total{reason="failing"}"#)
            .await,
        1.0
    );

    // The sibling got every event, and not the notice: the wildcard binding does not make it an
    // account event.
    eventually(WAIT, "the healthy sibling's five", || async {
        (receiver.requests("/healthy").len() == 5).then_some(())
    })
    .await;
    assert!(receiver
        .all()
        .iter()
        .all(|r| !String::from_utf8_lossy(&r.body).contains("webhookd.webhook_disabled")));

    receiver.rescript(|_, _| Reply::status(200));
    daemon
        .cli_ok(&["webhooks", "update", &failing_id, "--enable"])
        .await;
    let replayed = daemon
        .cli_ok(&["dlq", "replay", "--webhook", &failing_id])
        .await;
    assert!(replayed.contains("replayed 5"), "{replayed}");
    eventually(WAIT, "the five replayed jobs delivered", || async {
        let delivered = receiver
            .requests("/failing")
            .iter()
            .filter(|r| r.status == Some(200))
            .count();
        (delivered == 5).then_some(())
    })
    .await;
    assert!(daemon.dead_letters().await.is_empty());
    assert_eq!(show(&daemon, &failing_id).await["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_test_sends_one_signed_sample_to_that_webhook_and_exits_by_its_answer() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/broken" => Reply::status(500),
        _ => Reply::status(200),
    })
    .await;
    let working = daemon
        .add_webhook(
            3,
            &receiver.url("/working"),
            &["--inbox", "71", "--generate-secret"],
        )
        .await;
    let broken = daemon.add_webhook(3, &receiver.url("/broken"), &[]).await;
    daemon.add_webhook(3, &receiver.url("/other"), &[]).await;

    let passed = daemon.cli(&["webhooks", "test", &id_of(&working)]).await;
    let stdout = String::from_utf8_lossy(&passed.stdout);
    assert_eq!(passed.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("status 200"), "{stdout}");
    let [request] = receiver
        .requests("/working")
        .try_into()
        .expect("one request");
    request.assert_signed_with(working["secret"].as_str().expect("secret"));
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["event"], "message_created");
    assert_eq!(body["account"]["id"], 3);
    assert_eq!(body["inbox"]["id"], 71);

    let failed = daemon
        .cli(&[
            "webhooks",
            "test",
            &id_of(&broken),
            "--event",
            "contact_created",
        ])
        .await;
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("status 500"), "{stdout}");
    let [request] = receiver
        .requests("/broken")
        .try_into()
        .expect("one request");
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["event"], "contact_created");

    // Through the API as well; and no other webhook was called, nothing went through the broker.
    let path = format!(
        "/v1/webhooks/{}/test?event=conversation_created",
        id_of(&working)
    );
    let (status, reply) = daemon
        .request(Method::POST, &path, Some(&daemon.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let trial: Value = serde_json::from_str(&reply).expect("JSON");
    assert_eq!(
        (trial["ok"].clone(), trial["status"].clone()),
        (true.into(), 200.into())
    );
    assert_eq!(receiver.all().len(), 3);
    assert!(receiver.requests("/other").is_empty());
    assert!(daemon.dead_letters().await.is_empty());

    let attempts: Vec<Value> = serde_json::from_str(
        &daemon
            .cli_ok(&["webhooks", "attempts", &id_of(&broken), "--json"])
            .await,
    )
    .expect("attempts JSON");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "test");
    assert_eq!(attempts[0]["status"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_of_20_per_second_holds_within_ten_percent_and_loses_nothing() {
    let daemon = Daemon::start(Settings {
        max_interval: "30s",
        max_elapsed: "10m",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    let webhook = daemon
        .add_webhook(4, &receiver.url("/paced"), &["--rate-limit", "20"])
        .await;
    assert_eq!(webhook["rate_limit"], 20);
    let amqp = broker::connect().await;
    let events = (0..1_000).map(|n| (4, n));
    broker::publish_events(&amqp, &daemon.names.exchange, "message_created", events).await;
    eventually(
        Duration::from_secs(120),
        "all 1,000 events received",
        || async { (receiver.count(|_| true) >= 1_000).then_some(()) },
    )
    .await;

    let received = receiver.all();
    let mut ids: Vec<u64> = received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
            body["id"].as_u64().expect("id")
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1_000, "every event, none lost");

    // Ten seconds of receipts, from two seconds after the first one (the backlog is spread over
    // the slots by then), counted from the receiver's own timestamps.
    let first = received.iter().map(|r| r.at).min().expect("receipts");
    let from = first + Duration::from_secs(2);
    let to = from + Duration::from_secs(10);
    let in_window = received
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .count();
    eprintln!("rate limit 20/s: {in_window} requests in the 10 s window");
    assert!(
        (180..=220).contains(&in_window),
        "{in_window} requests in 10 s, not 200 ± 10 %"
    );
    assert!(daemon.metric("webhookd_deliveries_paced_total").await > 0.0);
    // Waiting for a slot is not an attempt: every delivery was its event's first.
    let attempts: Vec<Value> = serde_json::from_str(
        &daemon
            .cli_ok(&["webhooks", "attempts", &id_of(&webhook), "--json"])
            .await,
    )
    .expect("attempts JSON");
    assert!(attempts.iter().all(|a| a["attempt"] == 1), "{attempts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_a_scripted_receivers_success_rate_and_its_last_failure() {
    let daemon = Daemon::start(Settings::default()).await;
    // Every fourth request is refused with a 404, which is not retried: 15 of 20 succeed.
    let receiver =
        Receiver::scripted(|_, seen| Reply::status(if seen % 4 == 3 { 404 } else { 200 })).await;
    let webhook = daemon.add_webhook(8, &receiver.url("/scripted"), &[]).await;
    let amqp = broker::connect().await;
    for n in 0..20 {
        broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 8, n).await;
        let want = usize::try_from(n + 1).expect("small");
        eventually(WAIT, "the event answered", || async {
            (receiver.count(|r| r.status.is_some()) == want).then_some(())
        })
        .await;
    }
    let health = eventually(WAIT, "twenty attempts in the health", || async {
        let health = show(&daemon, &id_of(&webhook)).await["health"].clone();
        (health["attempts_24h"] == 20).then_some(health)
    })
    .await;
    assert_eq!(health["success_rate_24h"], 0.75, "{health}");
    assert_eq!(health["consecutive_failures"], 1);
    assert_eq!(health["last_failure_status"], 404);
    assert!(health["failing_since"].is_string());
    assert!(health["last_success_at"].is_string());
    assert_eq!(health["circuit"], "closed");
    let p50 = health["latency_p50_ms_24h"].as_u64().expect("p50");
    let p99 = health["latency_p99_ms_24h"].as_u64().expect("p99");
    assert!(p50 <= p99 && p99 <= 1_000, "{health}");

    let shown = daemon.cli_ok(&["webhooks", "show", &id_of(&webhook)]).await;
    assert!(shown.contains("20 attempts, 75.0 % succeeded"), "{shown}");
    assert!(shown.contains("failing since"), "{shown}");
}
