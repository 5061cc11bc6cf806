//! The process: graceful stop, and the README's run command on a machine with no broker.

use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_unfinished_messages_back_and_exits_0_within_the_drain_time() {
    let mut daemon = Daemon::start(Settings {
        request_timeout: "60s",
        drain_timeout: "1s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, _| Reply::hang()).await;
    daemon.add_webhook(1, &receiver.url("/held"), &[]).await;
    let amqp = broker::connect().await;
    const EVENTS: usize = 5;
    for n in 0..EVENTS {
        let body = serde_json::to_vec(&serde_json::json!({
            "event": "message_created", "id": n, "account": { "id": 1 },
        }))
        .expect("json");
        let props =
            BasicProperties::default().with_message_id(ShortString::from(format!("term-{n}")));
        broker::publish(
            &amqp,
            &daemon.names.exchange,
            "message_created",
            &body,
            props,
        )
        .await;
    }
    eventually(WAIT, "every event in flight", || async {
        (receiver.requests("/held").len() == EVENTS).then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    let status = daemon.sigterm(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
    assert!(daemon.logs().contains("handing unfinished messages back"));

    // Nothing was acked or dead-lettered: after a restart every event is delivered.
    receiver.rescript(|_, _| Reply::status(200));
    daemon.spawn();
    daemon.wait_ready().await;
    eventually(WAIT, "every event redelivered", || async {
        (receiver.requests("/held").len() >= 2 * EVENTS).then_some(())
    })
    .await;
    let first: std::collections::HashSet<String> = receiver.requests("/held")[..EVENTS]
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    let again: std::collections::HashSet<String> = receiver.requests("/held")[EVENTS..]
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(first, again, "the same deliveries, same ids");
    assert!(daemon.dead_letters().await.is_empty());
}

/// The README's run command, as a new user runs it on a machine where no broker is running: it
/// starts a private RabbitMQ node of its own, then webhookd, which becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_command_starts_a_broker_and_a_ready_daemon() {
    let state = tempfile::tempdir().expect("temp dir");
    let amqp_port = free_amqp_port();
    let admin = crate::support::daemon::free_port();
    let node = crate::support::unique("readme").replace('-', "_");
    let repo = env!("CARGO_MANIFEST_DIR");
    let broker_home = state.path().join("rabbitmq");
    let mut child = std::process::Command::new(format!("{repo}/scripts/run.sh"))
        .env("WEBHOOKD_BIN", crate::support::daemon::BIN)
        .env("WEBHOOKD_DEV_PORT", amqp_port.to_string())
        .env("WEBHOOKD_DEV_NODE", &node)
        .env("WEBHOOKD_DEV_STATE", state.path())
        .env("WEBHOOKD_BROKER_HOME", &broker_home)
        .env("WEBHOOKD_ADMIN__LISTEN", admin.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("scripts/run.sh");
    let ready = async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        eventually(
            Duration::from_secs(120),
            "/readyz from the README's run command",
            || async {
                let uri: http::Uri = format!("http://{admin}/readyz").parse().expect("uri");
                match client.get(uri).await {
                    Ok(response) if response.status() == http::StatusCode::OK => Some(()),
                    _ => None,
                }
            },
        )
        .await
    };
    ready.await;
    let _ = child.kill();
    let _ = child.wait();
    let stopped = std::process::Command::new(format!("{repo}/scripts/broker.sh"))
        .args(["stop", &node])
        .env("WEBHOOKD_BROKER_HOME", &broker_home)
        .status()
        .expect("broker.sh stop");
    assert!(stopped.success());
}

/// A free port low enough that the broker's distribution port (20000 away) is valid too.
fn free_amqp_port() -> u16 {
    loop {
        let port = crate::support::daemon::free_port().port();
        if port < 45000 {
            return port;
        }
        let candidate = port - 20000;
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}
