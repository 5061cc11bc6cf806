//! The core pipeline: a published event becomes a signed POST at every matching webhook.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::Value;
use sha2::Sha256;

use crate::support::daemon::{Daemon, Settings, BIN};
use crate::support::receiver::Receiver;
use crate::support::{broker, eventually};

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/message_created.json"
);
const WAIT: Duration = Duration::from_secs(20);

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn event(account: Value, inbox: Option<u64>, event: &str) -> Vec<u8> {
    let mut body = serde_json::json!({
        "event": event,
        "id": 42,
        "content": "hello",
        "account": { "id": account, "name": "Acme" },
    });
    if let Some(inbox) = inbox {
        body["inbox"] = serde_json::json!({ "id": inbox, "name": "Website" });
    }
    serde_json::to_vec(&body).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sample_arrives_byte_identical_with_both_signatures() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    let webhook = daemon
        .add_webhook(1, &receiver.url("/hook"), &["--generate-secret"])
        .await;
    let secret = webhook["secret"]
        .as_str()
        .expect("secret shown once")
        .to_owned();
    assert!(secret.starts_with("whsec_"));

    let seed = std::fs::read(SEED).expect("seed fixture");
    daemon
        .cli_ok(&["publish", "--file", SEED, "--message-id", "evt-seed-1"])
        .await;
    let requests = eventually(WAIT, "the seed event at the receiver", || async {
        let r = receiver.requests("/hook");
        (!r.is_empty()).then_some(r)
    })
    .await;
    let request = &requests[0];
    assert_eq!(
        request.body.as_ref(),
        seed.as_slice(),
        "body must be byte-identical"
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(
        request.header("user-agent"),
        format!("webhookd/{}", env!("CARGO_PKG_VERSION"))
    );

    let id = request.header("webhook-id");
    let ts = request.header("webhook-timestamp");
    assert_eq!(request.header("x-chatwoot-delivery"), id);
    assert_eq!(request.header("x-chatwoot-timestamp"), ts);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - ts.parse::<i64>().expect("numeric timestamp")).abs() < 60);

    // Standard Webhooks: base64 HMAC-SHA256 keyed by the secret's decoded bytes.
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("whsec_ secret is base64");
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&seed);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac(&key, &signed))
    );
    assert_eq!(request.header("webhook-signature"), expected);

    // Chatwoot: hex HMAC-SHA256 keyed by the secret string, over "{ts}.{body}".
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&seed);
    let expected = format!("sha256={}", hex::encode(hmac(secret.as_bytes(), &signed)));
    assert_eq!(request.header("x-chatwoot-signature"), expected);

    // The delivery id is the UUIDv5 of event and webhook: stable, and not the event id.
    assert_eq!(id.len(), 36);
    assert_ne!(id, "evt-seed-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_exactly_the_matching_webhooks() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    for (account, path, extra) in [
        (1, "/a", vec![]),
        (1, "/b", vec!["--events", "message_created,message_updated"]),
        (2, "/other-account", vec![]),
        (1, "/other-event", vec!["--events", "conversation_created"]),
        (1, "/other-inbox", vec!["--inbox", "99"]),
        (1, "/same-inbox", vec!["--inbox", "5"]),
    ] {
        daemon
            .add_webhook(account, &receiver.url(path), &extra)
            .await;
    }
    let disabled = daemon.add_webhook(1, &receiver.url("/disabled"), &[]).await;
    let disabled_id = disabled["id"].as_str().expect("id");
    daemon
        .cli_ok(&["webhooks", "update", disabled_id, "--disable"])
        .await;

    let amqp = broker::connect().await;
    let props =
        || BasicProperties::default().with_content_type(ShortString::from("application/json"));
    // A string account id (as the seed writes them) and an integer one both route.
    let string_id = event(Value::from("1"), Some(5), "message_created");
    let int_id = event(Value::from(1), None, "message_created");
    let sentinel = event(Value::from(2), None, "conversation_created");
    for body in [&string_id, &int_id, &sentinel] {
        broker::publish(
            &amqp,
            &daemon.names.exchange,
            "message_created",
            body,
            props(),
        )
        .await;
    }

    eventually(
        WAIT,
        "both events at /a and /b, the sentinel at account 2",
        || async {
            (receiver.requests("/a").len() == 2
                && receiver.requests("/b").len() == 2
                && receiver.requests("/other-account").len() == 1)
                .then_some(())
        },
    )
    .await;
    let bodies = |path: &str| {
        let mut bodies: Vec<Vec<u8>> = receiver
            .requests(path)
            .iter()
            .map(|r| r.body.to_vec())
            .collect();
        bodies.sort();
        bodies
    };
    let mut expected = vec![string_id.clone(), int_id.clone()];
    expected.sort();
    assert_eq!(bodies("/a"), expected);
    assert_eq!(bodies("/b"), expected);
    assert_eq!(bodies("/other-account"), vec![sentinel]);
    assert_eq!(
        bodies("/same-inbox"),
        vec![string_id],
        "inbox filter passes inbox 5 only"
    );
    assert!(
        receiver.requests("/other-event").is_empty(),
        "events filter"
    );
    assert!(receiver.requests("/other-inbox").is_empty(), "inbox filter");
    assert!(
        receiver.requests("/disabled").is_empty(),
        "disabled webhook"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_between_two_good_ones_is_dead_lettered_and_consuming_goes_on() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(7, &receiver.url("/hook"), &[]).await;
    let amqp = broker::connect().await;
    let first = event(Value::from(7), None, "message_created");
    let second = event(Value::from(7), None, "contact_created");
    for (body, id) in [
        (first.as_slice(), "good-1"),
        (b"{not json".as_slice(), "bad-1"),
        (second.as_slice(), "good-2"),
    ] {
        let props = BasicProperties::default().with_message_id(ShortString::from(id));
        broker::publish(
            &amqp,
            &daemon.names.exchange,
            "message_created",
            body,
            props,
        )
        .await;
    }
    eventually(WAIT, "both good events delivered", || async {
        (receiver.requests("/hook").len() == 2).then_some(())
    })
    .await;
    let dead = eventually(WAIT, "the malformed event in the DLQ", || async {
        let dead = daemon.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "bad-1");
    assert_eq!(dead[0]["reason"], "malformed");
    let shown = daemon.cli_ok(&["dlq", "show", "bad-1"]).await;
    assert!(
        shown.ends_with("{not json\n"),
        "the body as published: {shown}"
    );
    assert_eq!(
        daemon.get("/readyz").await.0,
        StatusCode::OK,
        "still consuming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_commands_round_trip_through_the_admin_api() {
    let daemon = Daemon::start(Settings::default()).await;
    let created = daemon
        .add_webhook(
            3,
            "http://127.0.0.1:9/in",
            &["--name", "crm", "--secret", "s3cret-s3cret-s3cret"],
        )
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(
        created["secret"], "s3cret-s3cret-s3cret",
        "shown once at creation"
    );

    let listed: Vec<Value> = serde_json::from_str(
        &daemon
            .cli_ok(&["webhooks", "list", "--account", "3", "--json"])
            .await,
    )
    .expect("list JSON");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id);
    assert_ne!(
        listed[0]["secret"], "s3cret-s3cret-s3cret",
        "masked in list"
    );

    daemon
        .cli_ok(&[
            "webhooks",
            "update",
            &id,
            "--url",
            "http://127.0.0.1:9/new",
            "--events",
            "contact_created",
        ])
        .await;
    let shown: Value =
        serde_json::from_str(&daemon.cli_ok(&["webhooks", "show", &id, "--json"]).await)
            .expect("show JSON");
    assert_eq!(shown["url"], "http://127.0.0.1:9/new");
    assert_eq!(shown["events"], serde_json::json!(["contact_created"]));
    assert_eq!(shown["name"], "crm");

    // The API is what the CLI used: the daemon's token opens it, nothing else does.
    let path = format!("/v1/webhooks/{id}");
    assert_eq!(
        daemon.request(Method::GET, &path, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        daemon.request(Method::GET, &path, Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        daemon
            .request(Method::GET, &path, Some(&daemon.token))
            .await
            .0,
        StatusCode::OK
    );

    daemon.cli_ok(&["webhooks", "rm", &id]).await;
    let missing = daemon.cli(&["webhooks", "show", &id]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        daemon
            .request(Method::GET, &path, Some(&daemon.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_webhook_commands_open_the_store_themselves() {
    let daemon = Daemon::configure(Settings::default());
    let created = daemon.add_webhook(4, "http://127.0.0.1:9/x", &[]).await;
    let shown = daemon
        .cli_ok(&["webhooks", "show", created["id"].as_str().expect("id")])
        .await;
    assert!(shown.contains("account 4"), "{shown}");
}

#[tokio::test]
async fn check_config_names_an_unknown_key_and_exits_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[broker]\nexhange = \"typo\"\n").expect("write");
    let output = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broker.exhange"), "{stderr}");
}

#[tokio::test]
async fn check_config_prints_the_effective_config_with_secrets_masked() {
    let daemon = Daemon::configure(Settings::default());
    let out = daemon.cli_ok(&["check-config"]).await;
    assert!(out.contains(&daemon.names.queue), "{out}");
    assert!(!out.contains(&daemon.token), "admin token leaked: {out}");
    assert!(
        !out.contains("guest:guest"),
        "broker password leaked: {out}"
    );
}

#[tokio::test]
async fn a_bad_cli_argument_says_what_was_expected_and_exits_2() {
    let output = tokio::process::Command::new(BIN)
        .args([
            "webhooks",
            "add",
            "--account",
            "minus-one",
            "--url",
            "http://x/",
        ])
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--account"), "{stderr}");
}

#[tokio::test]
async fn check_config_refuses_an_absurd_duration_naming_the_key_and_exits_64() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absurd.toml");
    std::fs::write(&path, "[delivery]\nsecret_rotation_grace = \"9000y\"\n").expect("write");
    let output = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("delivery.secret_rotation_grace") && stderr.contains("1year"),
        "{stderr}"
    );
}
