//! Safe to point at the internet: the SSRF guard, private CAs, secret rotation, the admin API's
//! locks, hostile events, and secrets kept out of the logs.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, StatusCode};
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::Value;
use sha2::Sha256;

use crate::support::daemon::{Daemon, Settings, BIN};
use crate::support::pki::TestPki;
use crate::support::receiver::{Received, Receiver};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// A small event for `account`, tagged `n` so a test can tell deliveries apart.
fn event(account: u64, n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": "message_created", "id": n, "account": { "id": account },
    }))
    .expect("json")
}

async fn publish(daemon: &Daemon, body: &[u8], message_id: &str) {
    let amqp = broker::connect().await;
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id));
    broker::publish(
        &amqp,
        &daemon.names.exchange,
        "message_created",
        body,
        props,
    )
    .await;
}

/// Runs a webhooks command and returns its JSON output and its stderr.
async fn cli_json(daemon: &Daemon, args: &[&str]) -> (Value, String) {
    let output = daemon.cli(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "webhookd {args:?} failed:\n{stdout}{stderr}"
    );
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (value, stderr)
}

fn id_of(webhook: &Value) -> String {
    webhook["id"].as_str().expect("webhook id").to_owned()
}

async fn attempts(daemon: &Daemon, webhook_id: &str) -> Vec<Value> {
    let out = daemon
        .cli_ok(&["webhooks", "attempts", webhook_id, "--json"])
        .await;
    serde_json::from_str(&out).expect("attempts JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_webhooks_are_refused_without_an_allow_list_and_delivered_with_one() {
    let receiver = Receiver::ok().await;
    let guarded = Daemon::start(Settings {
        allow_networks: "[]",
        ..Settings::default()
    })
    .await;
    let port = receiver.addr.port();
    let literal_url = format!("http://127.0.0.1:{port}/literal");
    let (literal, warning) = cli_json(
        &guarded,
        &[
            "webhooks",
            "add",
            "--account",
            "9",
            "--url",
            &literal_url,
            "--json",
        ],
    )
    .await;
    assert!(
        warning.contains("127.0.0.1") && warning.contains("delivery.allow_networks"),
        "`webhooks add` did not warn: {warning:?}"
    );
    let named = guarded
        .add_webhook(9, &format!("http://localhost:{port}/named"), &[])
        .await;
    publish(&guarded, &event(9, 1), "ssrf-1").await;

    let dead = eventually(WAIT, "both deliveries dead-lettered", || async {
        let dead = guarded.dead_letters().await;
        (dead.len() == 2).then_some(dead)
    })
    .await;
    for webhook in [&literal, &named] {
        let entry = dead
            .iter()
            .find(|e| e["webhook_id"] == webhook["id"])
            .unwrap_or_else(|| panic!("no dead letter for {webhook}: {dead:?}"));
        assert_eq!(entry["reason"], "blocked_destination", "{entry}");
        let error = entry["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("SSRF guard"), "{entry}");
        assert_eq!(
            entry["attempts"], 1,
            "refused at once, never retried: {entry}"
        );
    }
    let logs = guarded.logs();
    let refusal = logs
        .lines()
        .find(|line| line.contains(&id_of(&literal)) && line.contains("refused"))
        .unwrap_or_else(|| panic!("no log line about the refusal:\n{logs}"));
    assert!(refusal.contains("127.0.0.1"), "{refusal}");
    assert!(receiver.all().is_empty(), "the guard let a request through");

    // The same receiver, the same URLs, with 127.0.0.0/8 allowed.
    let open = Daemon::start(Settings::default()).await;
    open.add_webhook(9, &literal_url, &[]).await;
    open.add_webhook(9, &format!("http://localhost:{port}/named"), &[])
        .await;
    publish(&open, &event(9, 2), "ssrf-2").await;
    eventually(WAIT, "both deliveries at the receiver", || async {
        (receiver.requests("/literal").len() == 1 && receiver.requests("/named").len() == 1)
            .then_some(())
    })
    .await;
    assert!(open.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_on_a_private_ca_is_trusted_only_through_extra_ca_file() {
    let pki = TestPki::new();
    let receiver = Receiver::https(pki.server.clone()).await;
    let url = receiver.url("/tls");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // Without the CA: a certificate error in the attempt log, retried on the schedule.
    let untrusting = Daemon::start(Settings::default()).await;
    let webhook = untrusting.add_webhook(12, &url, &[]).await;
    publish(&untrusting, &event(12, 1), "tls-1").await;
    let tried = eventually(WAIT, "two failed TLS attempts", || async {
        let tried = attempts(&untrusting, &id_of(&webhook)).await;
        (tried.len() >= 2).then_some(tried)
    })
    .await;
    for attempt in &tried {
        let error = attempt["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("TLS failed: invalid peer certificate: UnknownIssuer")
                && error.contains("delivery.extra_ca_file"),
            "unclear error: {attempt}"
        );
        assert!(
            attempt["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("retry")),
            "not retried: {attempt}"
        );
    }
    assert!(receiver.all().is_empty(), "a request got through");

    // With the CA named in the config: delivered.
    let ca_file = untrusting.dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write CA file");
    let trusting = Daemon::start(Settings {
        delivery_extra: format!("extra_ca_file = {:?}", ca_file.display().to_string()),
        ..Settings::default()
    })
    .await;
    let webhook = trusting.add_webhook(12, &url, &[]).await;
    publish(&trusting, &event(12, 2), "tls-2").await;
    eventually(
        WAIT,
        "the delivery over TLS, recorded with status 200",
        || async {
            let tried = attempts(&trusting, &id_of(&webhook)).await;
            (tried.first().map(|a| a["status"].clone()) == Some(200.into())).then_some(())
        },
    )
    .await;
    assert_eq!(receiver.requests("/tls").len(), 1);
}

/// Standard Webhooks verification as a receiver does it: any `v1,` signature in the header that
/// is the HMAC of `{id}.{ts}.{body}` under the decoded secret.
fn standard_verifies(secret: &str, request: &Received) -> bool {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("whsec_ secret");
    let mut signed = format!(
        "{}.{}.",
        request.header("webhook-id"),
        request.header("webhook-timestamp")
    )
    .into_bytes();
    signed.extend_from_slice(&request.body);
    request
        .header("webhook-signature")
        .split(' ')
        .filter_map(|sig| sig.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|sig| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
            mac.update(&signed);
            mac.verify_slice(&sig).is_ok()
        })
}

/// Chatwoot verification: `sha256=<hex HMAC(secret, "{ts}.{body}")>`.
fn chatwoot_verifies(secret: &str, request: &Received) -> bool {
    let Some(sig) = request
        .header("x-chatwoot-signature")
        .strip_prefix("sha256=")
        .and_then(|hex_sig| hex::decode(hex_sig).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(request.header("x-chatwoot-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    mac.verify_slice(&sig).is_ok()
}

/// A webhook at `url` created with secret `old` and then rotated through the CLI (so through the
/// daemon's API): its id and the rotation's JSON output.
async fn rotated_webhook(daemon: &Daemon, account: u64, url: &str, old: &str) -> (String, Value) {
    let webhook = daemon.add_webhook(account, url, &["--secret", old]).await;
    let id = id_of(&webhook);
    let (rotated, _) = cli_json(
        daemon,
        &["webhooks", "update", &id, "--rotate-secret", "--json"],
    )
    .await;
    (id, rotated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_rotation_either_secret_verifies_and_afterwards_only_the_new_one() {
    let daemon = Daemon::start(Settings {
        delivery_extra: "secret_rotation_grace = \"3s\"".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    let old = "whsec_b2xkLW9sZC1vbGQtb2xkLW9sZC1vbGQtb2xkLW9sZC0=";
    let (id, rotated) = rotated_webhook(&daemon, 21, &receiver.url("/rotating"), old).await;
    let new = rotated["secret"]
        .as_str()
        .expect("new secret shown once")
        .to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    assert_eq!(rotated["previous_secret"], "whsec_****", "{rotated}");
    let until = rotated["previous_secret_expires_at"]
        .as_str()
        .and_then(|at| humantime::parse_rfc3339(at).ok())
        .expect("grace end");

    publish(&daemon, &event(21, 1), "rot-1").await;
    let during = eventually(WAIT, "the delivery during the grace", || async {
        receiver.requests("/rotating").first().cloned()
    })
    .await;
    let signed_at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(during.header("webhook-timestamp").parse().expect("ts"));
    assert!(
        signed_at < until,
        "signed after the grace; the test machine stalled"
    );
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(
        standard_verifies(&new, &during),
        "new secret fails during grace"
    );
    assert!(
        standard_verifies(old, &during),
        "old secret fails during grace"
    );
    assert!(
        chatwoot_verifies(&new, &during),
        "Chatwoot header not by the new secret"
    );
    assert!(!chatwoot_verifies(old, &during));

    // Masked everywhere else.
    let shown: Value =
        serde_json::from_str(&daemon.cli_ok(&["webhooks", "show", &id, "--json"]).await)
            .expect("show JSON");
    assert_eq!(shown["secret"], "whsec_****");
    assert_eq!(shown["previous_secret"], "whsec_****");

    eventually(WAIT, "the rotation grace to end", || async {
        (SystemTime::now() > until).then_some(())
    })
    .await;
    publish(&daemon, &event(21, 2), "rot-2").await;
    let after = eventually(WAIT, "the delivery after the grace", || async {
        receiver.requests("/rotating").get(1).cloned()
    })
    .await;
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(standard_verifies(&new, &after));
    assert!(
        !standard_verifies(old, &after),
        "old secret still signs after the grace"
    );
    assert!(chatwoot_verifies(&new, &after));
    let shown: Value =
        serde_json::from_str(&daemon.cli_ok(&["webhooks", "show", &id, "--json"]).await)
            .expect("show JSON");
    assert!(shown.get("previous_secret").is_none(), "{shown}");
}

#[tokio::test]
async fn without_a_daemon_rotation_shows_the_new_secret_once_and_masks_the_old() {
    let daemon = Daemon::configure(Settings::default());
    let old = "0123456789abcdef-old";
    let webhook = daemon
        .add_webhook(22, "http://127.0.0.1:9/x", &["--secret", old])
        .await;
    let id = id_of(&webhook);
    let text = daemon
        .cli_ok(&["webhooks", "update", &id, "--rotate-secret"])
        .await;
    let new = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("secret "))
        .expect("secret line");
    assert!(new.starts_with("whsec_") && new.len() > 40, "{text}");
    assert!(
        text.contains("previous secret **** also signs until"),
        "{text}"
    );
    assert!(!text.contains(old), "{text}");
    let listed = daemon.cli_ok(&["webhooks", "list", "--json"]).await;
    assert!(!listed.contains(new) && !listed.contains(old), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_are_each_dead_lettered_once_and_consuming_goes_on() {
    let daemon = Daemon::start(Settings {
        delivery_extra: "max_event_bytes = 65536".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(7, &receiver.url("/hook"), &[]).await;

    let nested = |depth: usize| {
        format!(
            r#"{{"event":"message_created","account":{{"id":7}},"x":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    };
    let many_keys = {
        let keys: Vec<String> = (0..4000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        format!(r#"{{"event":"message_created",{}}}"#, keys.join(",")).into_bytes()
    };
    let too_large = {
        let mut body = br#"{"event":"message_created","account":{"id":7},"pad":""#.to_vec();
        body.resize(65_536, b'a');
        body.extend_from_slice(b"\"}");
        body
    };
    let hostile: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"{not json".to_vec(), "malformed"),
        ("empty", Vec::new(), "malformed"),
        (
            "invalid-utf8",
            b"{\"event\":\"message_created\",\"account\":{\"id\":7},\"note\":\"\xff\xfe\"}"
                .to_vec(),
            "malformed",
        ),
        (
            "array",
            br#"[{"event":"message_created","account":{"id":7}}]"#.to_vec(),
            "malformed",
        ),
        ("string", br#""message_created""#.to_vec(), "malformed"),
        ("number", b"7".to_vec(), "malformed"),
        ("null", b"null".to_vec(), "malformed"),
        (
            "missing-event",
            br#"{"account":{"id":7}}"#.to_vec(),
            "malformed",
        ),
        (
            "event-not-a-string",
            br#"{"event":["message_created"],"account":{"id":7}}"#.to_vec(),
            "malformed",
        ),
        (
            "missing-account-id",
            br#"{"event":"message_created","account":{"name":"x"}}"#.to_vec(),
            "malformed",
        ),
        (
            "account-id-wrong-type",
            br#"{"event":"message_created","account":{"id":true}}"#.to_vec(),
            "malformed",
        ),
        (
            "negative-account-id",
            br#"{"event":"message_created","account":{"id":-7}}"#.to_vec(),
            "malformed",
        ),
        (
            "overflowing-account-id",
            br#"{"event":"message_created","account":{"id":18446744073709551616}}"#.to_vec(),
            "malformed",
        ),
        (
            "duplicate-account",
            br#"{"event":"message_created","account":{"id":7},"account":{"id":8}}"#.to_vec(),
            "malformed",
        ),
        ("nested-past-the-limit", nested(64), "malformed"),
        ("nested-past-serde", nested(5000), "malformed"),
        ("thousands-of-keys", many_keys, "malformed"),
        ("over-max-event-bytes", too_large, "too_large"),
    ];

    publish(&daemon, &event(7, 1), "good-1").await;
    for (name, body, _) in &hostile {
        publish(&daemon, body, &format!("hostile-{name}")).await;
    }
    publish(&daemon, &event(7, 2), "good-2").await;

    let dead = eventually(
        WAIT,
        "both good events and every hostile one settled",
        || async {
            let dead = daemon.dead_letters().await;
            (receiver.requests("/hook").len() == 2 && dead.len() >= hostile.len()).then_some(dead)
        },
    )
    .await;
    let mut bodies: Vec<Vec<u8>> = receiver
        .requests("/hook")
        .iter()
        .map(|r| r.body.to_vec())
        .collect();
    bodies.sort();
    assert_eq!(bodies, vec![event(7, 1), event(7, 2)]);
    for (name, _, reason) in &hostile {
        let id = format!("hostile-{name}");
        let entries: Vec<&Value> = dead.iter().filter(|e| e["id"] == id.as_str()).collect();
        assert_eq!(entries.len(), 1, "{id}: {entries:?}");
        assert_eq!(entries[0]["reason"], *reason, "{id}");
        assert!(
            entries[0]["last_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "{id}: no reason given"
        );
    }
    assert_eq!(
        dead.len(),
        hostile.len(),
        "unexpected dead letters: {dead:?}"
    );
    assert_eq!(daemon.get("/readyz").await.0, StatusCode::OK);

    // Nothing comes back for a second round: a later event passes, the DLQ stays as it was.
    publish(&daemon, &event(7, 3), "good-3").await;
    eventually(WAIT, "a third good event", || async {
        (receiver.requests("/hook").len() == 3).then_some(())
    })
    .await;
    assert_eq!(daemon.dead_letters().await.len(), hostile.len());
    let amqp = broker::connect().await;
    assert_eq!(broker::ready_count(&amqp, &daemon.names.queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_a_webhook_secret_nor_the_admin_token_reaches_the_debug_log() {
    let daemon = Daemon::start(Settings {
        extra: "[log]\nlevel = \"debug\"\n".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    let secret = "whsec_bm90LWluLXRoZS1sb2dzLW5vdC1pbi10aGUtbG9ncw==";
    let (id, rotated) = rotated_webhook(&daemon, 31, &receiver.url("/quiet"), secret).await;
    let new = rotated["secret"].as_str().expect("new secret").to_owned();
    publish(&daemon, &event(31, 1), "quiet-1").await;
    let request = eventually(WAIT, "the signed delivery", || async {
        receiver.requests("/quiet").first().cloned()
    })
    .await;
    assert!(standard_verifies(secret, &request) && standard_verifies(&new, &request));
    daemon.cli_ok(&["webhooks", "show", &id]).await;
    daemon.cli_ok(&["webhooks", "list"]).await;

    let logs = daemon.logs();
    assert!(
        logs.contains("DEBUG") && logs.contains(&id),
        "the log is not at debug level or missed the delivery:\n{logs}"
    );
    for (what, leaked) in [
        ("secret", secret),
        ("secret's key part", secret.trim_start_matches("whsec_")),
        ("rotated secret", new.as_str()),
        (
            "rotated secret's key part",
            new.trim_start_matches("whsec_"),
        ),
        ("admin token", daemon.token.as_str()),
    ] {
        assert!(!logs.contains(leaked), "the {what} is in the log:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_is_closed_without_a_token_and_open_only_when_insecure_no_auth_is_set() {
    let closed = Daemon::start(Settings {
        admin_token: false,
        ..Settings::default()
    })
    .await;
    let (status, body) = closed.get("/v1/webhooks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let error: Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(error["field"], "admin.token", "{body}");
    assert_eq!(closed.get("/healthz").await.0, StatusCode::OK);
    let refused = closed.cli(&["webhooks", "list"]).await;
    assert_eq!(refused.status.code(), Some(1));

    let open = Daemon::start(Settings {
        admin_token: false,
        admin_extra: "insecure_no_auth = true".to_owned(),
        ..Settings::default()
    })
    .await;
    assert_eq!(
        open.get("/v1/webhooks").await,
        (StatusCode::OK, "[]".to_owned())
    );
    assert!(
        open.logs().contains("admin.insecure_no_auth"),
        "no warning that /v1 is open:\n{}",
        open.logs()
    );

    // Never on an address other hosts can reach: check-config (systemd's ExecStartPre) refuses.
    let exposed = Daemon::configure(Settings {
        admin_token: false,
        ..Settings::default()
    });
    let text = std::fs::read_to_string(&exposed.config_path).expect("config");
    let text = text.replacen(
        &format!("listen = \"{}\"", exposed.admin),
        &format!(
            "listen = \"0.0.0.0:{}\"\ninsecure_no_auth = true",
            exposed.admin.port()
        ),
        1,
    );
    std::fs::write(&exposed.config_path, text).expect("config");
    let output = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&exposed.config_path)
        .arg("check-config")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`admin.insecure_no_auth`") && stderr.contains("loopback"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refusals_are_json_that_names_the_field() {
    let daemon = Daemon::start(Settings::default()).await;
    let token = Some(daemon.token.as_str());
    let post = |body: String| {
        daemon.request_with_body(Method::POST, "/v1/webhooks", token, Bytes::from(body))
    };
    let cases = [
        (
            r#"{"account_id": -1, "url": "https://e.com/"}"#.to_owned(),
            "account_id",
        ),
        (
            r#"{"account_id": 0, "url": "https://e.com/"}"#.to_owned(),
            "account_id",
        ),
        (
            r#"{"account_id": "1", "url": "https://e.com/"}"#.to_owned(),
            "account_id",
        ),
        (
            r#"{"account_id": 1, "url": "https://e.com/a\r\nX: y"}"#.to_owned(),
            "url",
        ),
        (
            r#"{"account_id": 1, "url": "https://e.com/a b"}"#.to_owned(),
            "url",
        ),
        (
            r#"{"account_id": 1, "url": "gopher://e.com/"}"#.to_owned(),
            "url",
        ),
        (
            r#"{"account_id": 1, "url": "https:///path"}"#.to_owned(),
            "url",
        ),
        (
            format!(
                r#"{{"account_id": 1, "url": "https://e.com/{}"}}"#,
                "a".repeat(2048)
            ),
            "url",
        ),
        (r#"{"account_id": 1}"#.to_owned(), "url"),
        (
            r#"{"account_id": 1, "url": "https://e.com/", "inbox_id": 0}"#.to_owned(),
            "inbox_id",
        ),
        (
            r#"{"account_id": 1, "url": "https://e.com/", "inbox_id": -2}"#.to_owned(),
            "inbox_id",
        ),
        (
            r#"{"account_id": 1, "url": "https://e.com/", "events": [5]}"#.to_owned(),
            "events",
        ),
        (
            r#"{"account_id": 1, "url": "https://e.com/", "evnets": ["*"]}"#.to_owned(),
            "evnets",
        ),
    ];
    for (body, field) in cases {
        let (status, reply) = post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        let error: Value = serde_json::from_str(&reply).expect("JSON error");
        assert_eq!(error["field"], field, "{body}: {reply}");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
    }
    let (status, reply) = post(format!(r#"{{"name": "{}"}}"#, "x".repeat(70_000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    assert!(serde_json::from_str::<Value>(&reply).is_ok(), "{reply}");
    assert!(
        daemon.cli_ok(&["webhooks", "list", "--json"]).await.trim() == "[]",
        "a refused request registered something"
    );
}
