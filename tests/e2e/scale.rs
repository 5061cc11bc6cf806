//! More than one instance: the registry is one log in the broker that every instance applies,
//! so a webhook added or changed, or an account token issued or revoked, through any instance is
//! in effect on all of them, and an instance with an empty store rebuilds it, from a snapshot
//! once retention has removed the log's start.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, StatusCode};
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::Value;

use crate::support::broker;
use crate::support::daemon::{Daemon, Settings};
use crate::support::eventually;
use crate::support::receiver::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(60);

/// How soon a change made through one instance must be in effect on another.
const PROPAGATION: Duration = Duration::from_secs(1);

/// The webhook as `daemon` serves it, or `None` while it does not know it.
async fn webhook_on(daemon: &Daemon, id: &str) -> Option<Value> {
    let (status, webhook) = daemon.get_json(&format!("/v1/webhooks/{id}")).await;
    (status == StatusCode::OK).then_some(webhook)
}

/// Every webhook `daemon` serves, as (id, url).
async fn registry_of(daemon: &Daemon) -> BTreeSet<(String, String)> {
    let (status, list) = daemon.get_json("/v1/webhooks").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .expect("a list of webhooks")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().expect("id").to_owned(),
                w["url"].as_str().expect("url").to_owned(),
            )
        })
        .collect()
}

/// Two instances on one registry, both ready.
async fn two_instances() -> (Daemon, Daemon) {
    let first = Daemon::start(Settings::default()).await;
    let mut second = first.sibling(Settings::default());
    second.spawn();
    second.wait_ready().await;
    (first, second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_registry_and_together_deliver_every_event() {
    let (first, second) = two_instances().await;
    // Every third request to an endpoint fails once: retries cross instances too.
    let receiver = Receiver::scripted(|_, seen| {
        if seen % 3 == 1 {
            Reply::status(503)
        } else {
            Reply::status(200)
        }
    })
    .await;

    // One webhook added through each instance; each is in effect on the other within a second.
    let through_first = first.add_webhook(41, &receiver.url("/a"), &[]).await;
    let id_a = through_first["id"].as_str().expect("id").to_owned();
    eventually(
        PROPAGATION,
        "the second instance to know the first's webhook",
        || webhook_on(&second, &id_a),
    )
    .await;
    let through_second = second.add_webhook(42, &receiver.url("/b"), &[]).await;
    let id_b = through_second["id"].as_str().expect("id").to_owned();
    eventually(
        PROPAGATION,
        "the first instance to know the second's webhook",
        || webhook_on(&first, &id_b),
    )
    .await;

    let amqp = broker::connect().await;
    let exchange = first.names.exchange.clone();
    broker::publish_events(
        &amqp,
        &exchange,
        "message_created",
        (0..2000).map(|n| (41 + n % 2, n)),
    )
    .await;
    eventually(WAIT, "all 2,000 events delivered", || async {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for request in receiver.all().iter().filter(|r| r.status == Some(200)) {
            let body: Value = serde_json::from_slice(&request.body).expect("event JSON");
            *seen
                .entry((request.path.clone(), body["id"].to_string()))
                .or_default() += 1;
        }
        (seen.len() == 2000).then_some(())
    })
    .await;
    // Both instances took part: each consumed from the shared queue.
    for daemon in [&first, &second] {
        assert!(
            daemon.metric("webhookd_deliveries_total").await > 0.0,
            "an instance delivered nothing"
        );
    }

    // Disabled through the second instance: the first stops delivering to it within a second.
    second
        .cli_ok(&["webhooks", "update", &id_a, "--disable"])
        .await;
    eventually(
        PROPAGATION,
        "the first instance to see the webhook disabled",
        || async {
            let webhook = webhook_on(&first, &id_a).await?;
            (webhook["enabled"] == false).then_some(())
        },
    )
    .await;
    let before = receiver.requests("/a").len();
    for n in 2000..2010 {
        broker::publish_event(&amqp, &exchange, "message_created", 41, n).await;
        broker::publish_event(&amqp, &exchange, "message_created", 42, n).await;
    }
    eventually(WAIT, "the enabled sibling to get its 10 events", || async {
        let ids: BTreeSet<String> = receiver
            .requests("/b")
            .iter()
            .filter(|r| r.status == Some(200))
            .map(|r| serde_json::from_slice::<Value>(&r.body).expect("JSON")["id"].to_string())
            .filter(|id| id.parse::<u64>().is_ok_and(|n| n >= 2000))
            .collect();
        (ids.len() == 10).then_some(())
    })
    .await;
    assert_eq!(
        receiver.requests("/a").len(),
        before,
        "a disabled webhook was called"
    );
}

/// Issues an account token for `account` through `daemon`'s `/v1/tokens`: (token, token id).
async fn issue_token(daemon: &Daemon, account: u64) -> (String, String) {
    let body = format!(r#"{{"account_id": {account}, "name": "portal"}}"#);
    let (status, reply) = daemon
        .request_with_body(
            Method::POST,
            "/v1/tokens",
            Some(&daemon.token),
            Bytes::from(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reply}");
    let issued: Value = serde_json::from_str(&reply).expect("token JSON");
    let text = |value: &Value| value.as_str().expect("a string").to_owned();
    (text(&issued["token"]), text(&issued["record"]["id"]))
}

/// The status `daemon` answers `GET path` with, `token` presented.
async fn status_with(daemon: &Daemon, path: &str, token: &str) -> StatusCode {
    daemon.request(Method::GET, path, Some(token)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_token_issued_on_one_instance_opens_the_other_and_its_revocation_closes_it() {
    let (first, second) = two_instances().await;
    let own = first.add_webhook(61, "https://own.example/hook", &[]).await;
    let other = first
        .add_webhook(62, "https://other.example/hook", &[])
        .await;
    let own = format!("/v1/webhooks/{}", own["id"].as_str().expect("id"));
    let other = format!("/v1/webhooks/{}", other["id"].as_str().expect("id"));

    let (token, token_id) = issue_token(&first, 61).await;
    eventually(
        PROPAGATION,
        "the second instance to take the first's token",
        || async { (status_with(&second, &own, &token).await == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(
        status_with(&second, &other, &token).await,
        StatusCode::NOT_FOUND,
        "another account's webhook"
    );
    let (status, listed) = second.get_json("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(
        !listed.to_string().contains(&token),
        "only the hash is kept"
    );

    // Revoked through the second instance: at once there, within a second on the first.
    let (status, reply) = second
        .request(
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            Some(&second.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{reply}");
    assert_eq!(
        status_with(&second, &own, &token).await,
        StatusCode::UNAUTHORIZED
    );
    eventually(
        PROPAGATION,
        "the first instance to refuse the revoked token",
        || async {
            (status_with(&first, &own, &token).await == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;
    let (status, listed) = first.get_json("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed, serde_json::json!([]));
}

/// The offset of the oldest entry the stream still holds (`"first"`), or of the first entry of
/// its last chunk (`"last"`).
async fn offset_at(stream: &str, which: &str) -> u64 {
    let amqp = broker::connect().await;
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString(LongString::from(which)),
    );
    let mut consumer = channel
        .basic_consume(
            ShortString::from(stream),
            ShortString::from("test-first-offset"),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .expect("consume the stream");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("an entry within 10 s")
        .expect("a delivery")
        .expect("no error");
    let headers = delivery.properties.headers().clone().expect("headers");
    match headers.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(offset)) => u64::try_from(*offset).expect("offset"),
        other => panic!("x-stream-offset is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_rebuilds_the_registry_from_a_snapshot_once_retention_removed_the_logs_start(
) {
    // Tiny segments, two seconds of retention and a snapshot every second: the log's start is
    // gone within seconds of changes.
    let short_log = || Settings {
        broker_extra: "registry_max_age = \"2s\"\nregistry_segment_bytes = 4096\n\
                       registry_snapshot_every = \"1s\""
            .to_owned(),
        ..Settings::default()
    };
    let first = Daemon::start(short_log()).await;
    let receiver = Receiver::ok().await;
    for account in 1..=30 {
        first
            .add_webhook(account, &receiver.url("/kept"), &[])
            .await;
    }
    // Tokens are in the snapshot too: one kept, one revoked, their entries gone with the start.
    let (kept, _) = issue_token(&first, 7).await;
    let (revoked, revoked_id) = issue_token(&first, 8).await;
    first.cli_ok(&["tokens", "revoke", &revoked_id]).await;
    let tokens_logged = offset_at(&first.names.registry, "last").await;
    // Churn until retention has deleted the first segment.
    eventually(
        WAIT,
        "retention to remove the start of the registry log",
        || async {
            let churn = first.add_webhook(99, &receiver.url("/churn"), &[]).await;
            first
                .cli_ok(&["webhooks", "rm", churn["id"].as_str().expect("id")])
                .await;
            (offset_at(&first.names.registry, "first").await > tokens_logged).then_some(())
        },
    )
    .await;
    let expected = registry_of(&first).await;
    assert_eq!(expected.len(), 30);

    let mut second = first.sibling(short_log());
    second.spawn();
    second.wait_ready().await;
    assert_eq!(registry_of(&second).await, expected);
    assert!(
        second.logs().contains("rebuilding from the next snapshot"),
        "the second instance did not rebuild from a snapshot"
    );
    assert_eq!(
        second.get_json("/v1/tokens").await,
        first.get_json("/v1/tokens").await
    );
    let (status, own) = second
        .request(Method::GET, "/v1/webhooks", Some(&kept))
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    let own: Value = serde_json::from_str(&own).expect("a list");
    assert_eq!(own.as_array().map(Vec::len), Some(1), "{own}");
    assert_eq!(own[0]["account_id"], 7);
    assert_eq!(
        status_with(&second, "/v1/webhooks", &revoked).await,
        StatusCode::UNAUTHORIZED
    );

    // Rebuilt, it follows the log on: its own change reaches the first instance.
    let added = second.add_webhook(31, &receiver.url("/after"), &[]).await;
    eventually(
        PROPAGATION,
        "the first instance to know the rebuilt one's webhook",
        || webhook_on(&first, added["id"].as_str().expect("id")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_shows_the_attempts_both_made() {
    let (first, second) = two_instances().await;
    let receiver = Receiver::ok().await;
    let webhook = first.add_webhook(51, &receiver.url("/both"), &[]).await;
    let id = webhook["id"].as_str().expect("id").to_owned();
    eventually(
        PROPAGATION,
        "the second instance to know the webhook",
        || webhook_on(&second, &id),
    )
    .await;

    let amqp = broker::connect().await;
    for n in 0..40 {
        broker::publish_event(&amqp, &first.names.exchange, "message_created", 51, n).await;
    }
    let delivered: BTreeSet<String> = eventually(WAIT, "40 deliveries", || async {
        let ids: BTreeSet<String> = receiver
            .requests("/both")
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        (ids.len() == 40).then_some(ids)
    })
    .await;
    for daemon in [&first, &second] {
        assert!(
            daemon.metric("webhookd_deliveries_total").await > 0.0,
            "one instance made every attempt: the test shows nothing"
        );
    }
    for daemon in [&first, &second] {
        eventually(
            WAIT,
            "every attempt in this instance's attempt log",
            || async {
                let (status, attempts) = daemon
                    .get_json(&format!("/v1/webhooks/{id}/attempts?limit=100"))
                    .await;
                assert_eq!(status, StatusCode::OK, "{attempts}");
                let logged: BTreeSet<String> = attempts
                    .as_array()
                    .expect("a list of attempts")
                    .iter()
                    .map(|a| a["delivery_id"].as_str().expect("delivery id").to_owned())
                    .collect();
                (logged == delivered).then_some(())
            },
        )
        .await;
    }
}
