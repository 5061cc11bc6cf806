//! The web console in a real browser (headless Chromium over WebDriver), against the real daemon
//! and broker: an account's whole webhook flow, a test event from a webhook's page, isolation
//! between accounts, the operator's replay from the dead letters, the CSRF and origin checks, and
//! session expiry.
//!
//! With `WEBHOOKD_SCREENSHOTS=DIR` set, the tests save screenshots of the main pages there.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::support::browser::{Browser, PATIENCE};
use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually};

/// Issues an account token through the CLI, as an operator would.
async fn account_token(daemon: &Daemon, account: u64) -> String {
    let out = daemon
        .cli_ok(&[
            "tokens",
            "create",
            "--account",
            &account.to_string(),
            "--name",
            "portal",
            "--json",
        ])
        .await;
    let issued: Value = serde_json::from_str(&out).expect("token JSON");
    issued["token"].as_str().expect("a token").to_owned()
}

async fn sign_in(browser: &Browser, daemon: &Daemon, token: &str) {
    browser.goto(&format!("http://{}/ui/", daemon.admin)).await;
    browser.type_into("#token", token).await;
    browser.click_text("Sign in").await;
    browser.wait_for_text("Sign out").await;
}

fn ui(daemon: &Daemon, path: &str) -> String {
    format!("http://{}/ui/{path}", daemon.admin)
}

#[tokio::test]
async fn an_account_adds_a_webhook_sees_its_delivery_then_edits_disables_and_deletes_it() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    let token = account_token(&daemon, 7).await;
    let browser = Browser::start().await;

    browser.goto(&ui(&daemon, "")).await;
    browser.find("#token").await;
    browser.screenshot("sign-in.png").await;
    sign_in(&browser, &daemon, &token).await;
    let page = browser.wait_for_text("Webhooks").await;
    assert!(page.contains("Account 7"), "{page}");

    browser.click_text("Add new webhook").await;
    browser.type_into("#url", &receiver.url("/chatwoot")).await;
    browser.type_into("#name", "CRM sync").await;
    browser
        .click(&browser.find("#event-message_created").await)
        .await;
    browser.screenshot("add-webhook.png").await;
    browser.click_text("Create webhook").await;
    let page = browser.wait_for_text("Signing secret").await;
    assert!(page.contains("shown only once"), "{page}");
    browser.screenshot("secret-once.png").await;
    let secret = browser.value("#secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    browser.find_text("Copy").await;
    let url = browser.url().await;
    let id = url.rsplit('/').next().expect("a webhook id").to_owned();
    assert!(id.starts_with("wh_"), "{url}");

    // The secret is shown once: the same page again no longer has it.
    browser.goto(&url).await;
    let page = browser.wait_for_text("Attempts").await;
    assert!(!page.contains("Signing secret") && !page.contains(&secret));

    let connection = broker::connect().await;
    broker::publish_event(&connection, &daemon.names.exchange, "message_created", 7, 1).await;
    eventually(PATIENCE, "the receiver to get the event", || async {
        (receiver.requests("/chatwoot").len() == 1).then_some(())
    })
    .await;
    let delivered = receiver.requests("/chatwoot");
    assert!(!delivered[0].header("webhook-signature").is_empty());
    eventually(
        PATIENCE,
        "the attempt and the health on the webhook's page",
        || async {
            browser.goto(&url).await;
            let text = browser.text().await;
            let health = text.contains("Delivered: 200") && text.contains("100% of 1 succeeded");
            (text.contains("delivered") && health).then_some(())
        },
    )
    .await;
    browser.screenshot("webhook.png").await;

    // The health, from the daemon's memory: the last status, the day's success rate, the circuit.
    let page = eventually(PATIENCE, "the delivery in the webhook's health", || async {
        browser.goto(&ui(&daemon, "webhooks")).await;
        let page = browser.wait_for_text("CRM sync").await;
        page.contains("Delivered: 200").then_some(page)
    })
    .await;
    for shown in ["100% of 1 succeeded", "Circuit closed", "Enabled"] {
        assert!(page.contains(shown), "{shown} in {page}");
    }
    browser.screenshot("webhooks.png").await;

    browser.goto(&url).await;
    browser.click_text("Edit").await;
    browser.type_into("#name", "CRM sync (v2)").await;
    browser.click_text("Update webhook").await;
    browser.wait_for_text("Webhook updated.").await;
    let webhook = api_webhook(&daemon, &id).await;
    assert_eq!(webhook["name"], "CRM sync (v2)");
    assert_eq!(webhook["events"], serde_json::json!(["message_created"]));

    browser.click_text("Rotate secret").await;
    browser.wait_for_text("Rotate the signing secret?").await;
    browser.click(&browser.find("#confirm-yes").await).await;
    browser.wait_for_text("Signing secret").await;
    let rotated = browser.value("#secret").await;
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    assert!(api_webhook(&daemon, &id).await["previous_secret"].is_string());

    browser.click_text("Disable").await;
    browser.wait_for_text("Webhook disabled").await;
    assert_eq!(api_webhook(&daemon, &id).await["enabled"], false);

    browser.click_text("Delete").await;
    browser
        .wait_for_text("Are you sure to delete the webhook?")
        .await;
    browser.click(&browser.find("#confirm-yes").await).await;
    browser.wait_for_text("Deleted the webhook").await;
    assert_deleted(&daemon, &id).await;
    browser.quit().await;
}

/// Asserts that the admin API no longer knows webhook `id`.
async fn assert_deleted(daemon: &Daemon, id: &str) {
    let path = format!("/v1/webhooks/{id}");
    let (status, _) = daemon
        .request(Method::GET, &path, Some(&daemon.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{id} is still there");
}

async fn api_webhook(daemon: &Daemon, id: &str) -> Value {
    let (status, webhook) = daemon.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{webhook}");
    webhook
}

#[tokio::test]
async fn an_account_token_sees_and_changes_nothing_of_another_account() {
    let daemon = Daemon::start(Settings::default()).await;
    let token = account_token(&daemon, 7).await;
    let own = daemon.add_webhook(7, "https://own.example/hook", &[]).await;
    let other = daemon
        .add_webhook(8, "https://other.example/hook", &[])
        .await;
    let other_id = other["id"].as_str().expect("id");
    // A dead letter of account 8: its receiver refuses the event for good.
    let refusing = Receiver::scripted(|_, _| Reply::status(400)).await;
    let refused = daemon.add_webhook(8, &refusing.url("/no"), &[]).await;
    let connection = broker::connect().await;
    broker::publish_event(&connection, &daemon.names.exchange, "contact_created", 8, 1).await;
    eventually(PATIENCE, "account 8's dead letter", || async {
        (daemon.dead_letters().await.len() == 1).then_some(())
    })
    .await;

    // The API: another account's webhook does not exist; admin-only routes are forbidden.
    for (method, path) in [
        (Method::GET, format!("/v1/webhooks/{other_id}")),
        (Method::GET, format!("/v1/webhooks/{other_id}/attempts")),
        (Method::DELETE, format!("/v1/webhooks/{other_id}")),
        (
            Method::POST,
            format!("/v1/webhooks/{other_id}/rotate-secret"),
        ),
        (Method::POST, format!("/v1/webhooks/{other_id}/test")),
        (Method::GET, "/v1/webhooks?account_id=8".to_owned()),
    ] {
        let (status, body) = daemon.request(method.clone(), &path, Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (status, _) = daemon
        .request_with_body(
            Method::POST,
            "/v1/webhooks",
            Some(&token),
            Bytes::from(r#"{"account_id": 8, "url": "https://x.example/"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = daemon
        .request(Method::GET, "/v1/tokens", Some(&token))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = daemon
        .request(Method::GET, "/v1/webhooks", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<Value> = serde_json::from_str(&body).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], own["id"]);
    assert!(daemon
        .cli_ok(&["webhooks", "show", other_id])
        .await
        .contains("other.example"));

    // The console: nothing of account 8 on any page.
    let browser = Browser::start().await;
    sign_in(&browser, &daemon, &token).await;
    let page = browser.wait_for_text("own.example").await;
    assert!(!page.contains("other.example"), "{page}");
    browser
        .goto(&ui(&daemon, &format!("webhooks/{other_id}")))
        .await;
    let page = browser.wait_for_text("Not found.").await;
    assert!(!page.contains("other.example"), "{page}");
    browser.goto(&ui(&daemon, "webhooks?account=8")).await;
    browser.wait_for_text("Not found.").await;
    browser.goto(&ui(&daemon, "overview")).await;
    browser.wait_for_text("Not found.").await;
    browser.goto(&ui(&daemon, "dead-letters?account=8")).await;
    let page = browser.wait_for_text("No dead letters match.").await;
    assert!(
        !page.contains(refused["id"].as_str().expect("id")),
        "{page}"
    );
    browser.quit().await;
    assert_eq!(
        daemon.dead_letters().await.len(),
        1,
        "still there for the operator"
    );

    // A revoked token opens nothing.
    let tokens: Vec<Value> =
        serde_json::from_str(&daemon.cli_ok(&["tokens", "list", "--json"]).await).expect("list");
    assert_eq!(tokens.len(), 1);
    assert!(!tokens[0].to_string().contains(&token));
    let token_id = tokens[0]["id"].as_str().expect("token id");
    daemon.cli_ok(&["tokens", "revoke", token_id]).await;
    let (status, _) = daemon
        .request(Method::GET, "/v1/webhooks", Some(&token))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_operator_replays_a_dead_letter_from_the_console() {
    let daemon = Daemon::start(Settings::default()).await;
    // Refused until the receiver is "fixed": 400 dead-letters at once, as `rejected`.
    let receiver = Receiver::scripted(|_, _| Reply::status(400)).await;
    let webhook = daemon
        .add_webhook(5, &receiver.url("/fixed-later"), &[])
        .await;
    let connection = broker::connect().await;
    broker::publish_event(&connection, &daemon.names.exchange, "contact_created", 5, 1).await;
    eventually(PATIENCE, "the event in the dead letters", || async {
        (daemon.dead_letters().await.len() == 1).then_some(())
    })
    .await;
    receiver.rescript(|_, _| Reply::status(200));

    let browser = Browser::start().await;
    sign_in(&browser, &daemon, &daemon.token).await;
    browser.click_text("Dead letters").await;
    let page = browser.wait_for_text("rejected").await;
    assert!(
        page.contains("contact_created") && page.contains("400"),
        "{page}"
    );
    assert!(page.contains(webhook["id"].as_str().expect("id")), "{page}");
    browser.screenshot("dead-letters.png").await;
    browser.click(&browser.find("input[name=id]").await).await;
    browser.click_text("Replay").await;
    browser.wait_for_text("Replay these dead letters?").await;
    browser.click(&browser.find("#confirm-yes").await).await;
    browser.wait_for_text("Replayed 1 dead letter(s).").await;
    eventually(PATIENCE, "the replayed event delivered", || async {
        (receiver.count(|r| r.status == Some(200)) == 1).then_some(())
    })
    .await;
    assert!(daemon.dead_letters().await.is_empty());

    browser.click_text("Overview").await;
    let page = browser.wait_for_text("Broker connection").await;
    assert!(
        page.contains("Connected") && page.contains("Ready"),
        "{page}"
    );
    browser.screenshot("overview.png").await;
    browser.set_window(390, 844).await;
    browser.goto(&ui(&daemon, "webhooks")).await;
    browser.wait_for_text("Add new webhook").await;
    browser.screenshot("webhooks-phone.png").await;
    browser.quit().await;
}

/// What a plain HTTP client gets from the console.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

async fn send(
    daemon: &Daemon,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: String,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", daemon.admin));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("in time")
        .expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// The `name=value` of the first `Set-Cookie` for `name`.
fn cookie(answer: &Answer, name: &str) -> String {
    answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", answer.headers))
        .to_owned()
}

/// The value of the first hidden `csrf` field of a page.
fn csrf_field(page: &str) -> String {
    let start = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    page[start..]
        .split('"')
        .next()
        .expect("its value")
        .to_owned()
}

/// The sign-in page as a plain client gets it, with its CSRF token's cookie and field.
async fn sign_in_form(daemon: &Daemon) -> (Answer, String, String) {
    let form = send(daemon, Method::GET, "/ui/", &[], String::new()).await;
    assert_eq!(form.status, StatusCode::OK);
    let sign_in_cookie = cookie(&form, "webhookd_sign_in");
    let csrf = csrf_field(&form.body);
    (form, sign_in_cookie, csrf)
}

/// Posts the sign-in form's `body` from the console's own origin, with the form's cookie.
async fn post_sign_in(daemon: &Daemon, sign_in_cookie: &str, body: String) -> Answer {
    let headers = [
        ("cookie", sign_in_cookie.to_owned()),
        ("origin", format!("http://{}", daemon.admin)),
    ];
    send(daemon, Method::POST, "/ui/sign-in", &headers, body).await
}

/// Signs in with `token` as a plain client would; the session's cookie.
async fn session_cookie(daemon: &Daemon, token: &str) -> String {
    let (_, sign_in_cookie, csrf) = sign_in_form(daemon).await;
    let signed_in = post_sign_in(
        daemon,
        &sign_in_cookie,
        format!("csrf={csrf}&token={token}"),
    )
    .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    cookie(&signed_in, "webhookd_session")
}

/// The CSRF token of the session whose cookie is `session`, from webhook `id`'s page.
async fn webhook_page_csrf(daemon: &Daemon, session: &str, id: &str) -> String {
    let path = format!("/ui/webhooks/{id}");
    let page = send(
        daemon,
        Method::GET,
        &path,
        &[("cookie", session.to_owned())],
        String::new(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    csrf_field(&page.body)
}

#[tokio::test]
async fn send_test_event_delivers_one_signed_sample_and_says_what_the_receiver_answered() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    let token = account_token(&daemon, 7).await;
    let webhook = daemon
        .add_webhook(7, &receiver.url("/tested"), &["--generate-secret"])
        .await;
    let id = webhook["id"].as_str().expect("id");
    let secret = webhook["secret"].as_str().expect("secret");
    let url = ui(&daemon, &format!("webhooks/{id}"));

    let browser = Browser::start().await;
    sign_in(&browser, &daemon, &token).await;
    browser.goto(&url).await;
    assert_eq!(browser.value("#test-event").await, "message_created");
    browser.click_text("Send test event").await;
    let page = browser.wait_for_text("Test event delivered: 200").await;
    let [request] = receiver
        .requests("/tested")
        .try_into()
        .expect("one request");
    request.assert_signed_with(secret);
    let body: Value = serde_json::from_slice(&request.body).expect("JSON body");
    assert_eq!(body["event"], "message_created");
    assert_eq!(body["account"]["id"], 7);
    // In the attempt log, as a test: the row with its delivery id, its status and outcome.
    let delivery = request.header("webhook-id");
    assert!(
        page.lines()
            .any(|row| row.contains(delivery) && row.contains("200") && row.ends_with("test")),
        "{page}"
    );

    // A receiver that fails: the failure, in words, for the event chosen.
    receiver.rescript(|_, _| Reply::status(500));
    browser
        .click(
            &browser
                .find("#test-event option[value=contact_created]")
                .await,
        )
        .await;
    browser.click_text("Send test event").await;
    browser.wait_for_text("Test event failed: 500").await;
    let requests = receiver.requests("/tested");
    assert_eq!(requests.len(), 2);
    let body: Value = serde_json::from_slice(&requests[1].body).expect("JSON body");
    assert_eq!(body["event"], "contact_created");
    browser.quit().await;

    // Another account's webhook is not there to test, even with a valid session and CSRF token.
    let other = daemon.add_webhook(8, &receiver.url("/other"), &[]).await;
    let other_id = other["id"].as_str().expect("id");
    let session = session_cookie(&daemon, &token).await;
    let csrf = webhook_page_csrf(&daemon, &session, id).await;
    let headers = [
        ("cookie", session),
        ("origin", format!("http://{}", daemon.admin)),
    ];
    let refused = send(
        &daemon,
        Method::POST,
        &format!("/ui/webhooks/{other_id}/test"),
        &headers,
        format!("csrf={csrf}&event=message_created"),
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.body);
    assert!(receiver.requests("/other").is_empty());
}

#[tokio::test]
async fn a_post_without_the_csrf_token_or_from_another_origin_is_refused() {
    let daemon = Daemon::start(Settings::default()).await;
    let webhook = daemon.add_webhook(3, "https://kept.example/", &[]).await;
    let id = webhook["id"].as_str().expect("id");
    let host = daemon.admin.to_string();
    let origin = format!("http://{host}");

    let (form, sign_in_cookie, sign_in_csrf) = sign_in_form(&daemon).await;
    for (name, expected) in [
        ("content-security-policy", "frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        let value = form
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(value.contains(expected), "{name}: {value}");
    }
    assert!(!form.body.contains("<script>") && !form.body.contains("style="));
    let body = format!("csrf={sign_in_csrf}&token={}", daemon.token);
    let without = format!("token={}", daemon.token);
    let refused = post_sign_in(&daemon, &sign_in_cookie, without).await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "sign-in without its CSRF token"
    );
    let signed_in = post_sign_in(&daemon, &sign_in_cookie, body).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let session = cookie(&signed_in, "webhookd_session");
    let set = signed_in
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(&daemon.token));

    let csrf = webhook_page_csrf(&daemon, &session, id).await;
    let delete = |headers: Vec<(&'static str, String)>, body: String| {
        let daemon = &daemon;
        let path = format!("/ui/webhooks/{id}/delete");
        async move {
            send(daemon, Method::POST, &path, &headers, body)
                .await
                .status
        }
    };
    let with_session = |extra: Option<(&'static str, String)>| {
        let mut headers = vec![("cookie", session.clone())];
        headers.extend(extra);
        headers
    };
    let refused = [
        (
            ("origin", origin.clone()),
            "confirmed=yes".to_owned(),
            "no CSRF token",
        ),
        (
            ("origin", origin.clone()),
            format!("confirmed=yes&csrf={}x", &csrf[..63]),
            "a wrong CSRF token",
        ),
        (
            ("origin", "http://evil.example".to_owned()),
            format!("confirmed=yes&csrf={csrf}"),
            "another origin",
        ),
        (
            ("sec-fetch-site", "cross-site".to_owned()),
            format!("confirmed=yes&csrf={csrf}"),
            "a cross-site fetch",
        ),
    ];
    for (header, body, why) in refused {
        let status = delete(with_session(Some(header)), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{why}");
    }
    let rebound = send(
        &daemon,
        Method::GET,
        "/ui/",
        &[("host", "attacker.example".into())],
        String::new(),
    )
    .await;
    assert_eq!(
        rebound.status,
        StatusCode::MISDIRECTED_REQUEST,
        "a rebound DNS name"
    );
    assert_eq!(
        api_webhook(&daemon, id).await["url"],
        "https://kept.example/"
    );

    // Without JavaScript's dialog, an unconfirmed delete answers with a confirmation page.
    let unconfirmed = send(
        &daemon,
        Method::POST,
        &format!("/ui/webhooks/{id}/delete"),
        &with_session(Some(("origin", origin.clone()))),
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(unconfirmed.status, StatusCode::OK);
    assert!(unconfirmed
        .body
        .contains("Are you sure to delete the webhook?"));
    assert!(unconfirmed.body.contains(r#"name="confirmed" value="yes""#));
    assert_eq!(
        api_webhook(&daemon, id).await["url"],
        "https://kept.example/"
    );

    // The same request with the token and from this origin is what deletes it.
    assert_eq!(
        delete(
            with_session(Some(("origin", origin))),
            format!("confirmed=yes&csrf={csrf}")
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_deleted(&daemon, id).await;
}

#[tokio::test]
async fn an_expired_session_returns_to_sign_in() {
    let daemon = Daemon::start(Settings {
        // The absolute limit, since polling the page keeps an idle timeout from ever running out
        // (the unit tests cover that one with a clock).
        admin_extra: "session_max_age = \"3s\"".into(),
        ..Settings::default()
    })
    .await;
    let browser = Browser::start().await;
    sign_in(&browser, &daemon, &daemon.token).await;
    assert!(browser.url().await.ends_with("/ui/webhooks"));
    eventually(Duration::from_secs(30), "the session to end", || async {
        browser.goto(&ui(&daemon, "dead-letters")).await;
        let on_sign_in = browser.url().await.ends_with("/ui/");
        (on_sign_in && browser.try_find("#token").await.is_some()).then_some(())
    })
    .await;
    // Signing in again works.
    sign_in(&browser, &daemon, &daemon.token).await;
    browser.quit().await;
}

#[tokio::test]
async fn webhooks_are_listed_in_pages_that_follow_a_cursor() {
    let daemon = Daemon::start(Settings::default()).await;
    for n in 0..5 {
        daemon
            .add_webhook(4, &format!("https://h{n}.example/"), &[])
            .await;
    }
    let mut path = "/v1/webhooks?account_id=4&limit=2".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let answer = send(
            &daemon,
            Method::GET,
            &path,
            &[("authorization", format!("Bearer {}", daemon.token))],
            String::new(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        let page: Vec<Value> = serde_json::from_str(&answer.body).expect("list");
        assert!(page.len() <= 2);
        seen.extend(
            page.into_iter()
                .map(|w| w["url"].as_str().unwrap_or("").to_owned()),
        );
        pages += 1;
        let Some(link) = answer
            .headers
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
        else {
            break;
        };
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .expect("a link")
            .to_owned();
    }
    seen.sort();
    let expected: Vec<String> = (0..5).map(|n| format!("https://h{n}.example/")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);
    assert!(daemon
        .cli_ok(&["webhooks", "list", "--account", "4"])
        .await
        .contains("5 webhook(s)"));
}
