//! The process: graceful stop, a second signal, SIGHUP reload, systemd (unit file, notify
//! protocol), metrics and logs, and the README's run command on a machine with no broker.

use std::collections::HashSet;
use std::time::Duration;

use lapin::BasicProperties;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// A daemon with `events` deliveries in flight to a receiver that never answers them.
async fn daemon_holding(events: usize, drain_timeout: &'static str) -> (Daemon, Receiver) {
    let daemon = Daemon::start(Settings {
        request_timeout: "60s",
        drain_timeout,
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, _| Reply::hang()).await;
    daemon.add_webhook(1, &receiver.url("/held"), &[]).await;
    let amqp = broker::connect().await;
    for n in 0..events as u64 {
        broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 1, n).await;
    }
    eventually(WAIT, "every event in flight", || async {
        (receiver.requests("/held").len() == events).then_some(())
    })
    .await;
    (daemon, receiver)
}

/// After a restart with the receiver fixed, the `events` held deliveries arrive again, with the
/// same delivery ids, and none was dead-lettered: nothing unfinished had been acked.
async fn assert_redelivered(daemon: &mut Daemon, receiver: &Receiver, events: usize) {
    receiver.rescript(|_, _| Reply::status(200));
    daemon.spawn();
    daemon.wait_ready().await;
    eventually(WAIT, "every event redelivered", || async {
        (receiver.requests("/held").len() >= 2 * events).then_some(())
    })
    .await;
    let ids = |requests: &[crate::support::receiver::Received]| -> HashSet<String> {
        requests
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    let requests = receiver.requests("/held");
    assert_eq!(
        ids(&requests[..events]),
        ids(&requests[events..]),
        "the same deliveries, same ids"
    );
    assert!(daemon.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_unfinished_messages_back_and_exits_0_within_the_drain_time() {
    const EVENTS: usize = 5;
    let (mut daemon, receiver) = daemon_holding(EVENTS, "1s").await;

    let started = std::time::Instant::now();
    let status = daemon.sigterm(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}",
        started.elapsed()
    );
    assert!(daemon.logs().contains("handing unfinished messages back"));
    assert_redelivered(&mut daemon, &receiver, EVENTS).await;
}

/// The README's run command, as a new user runs it on a machine where no broker is running: it
/// starts a private RabbitMQ node of its own, then webhookd, which becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_command_starts_a_broker_and_a_ready_daemon() {
    /// The script's process, killed even when the test fails.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let state = tempfile::tempdir().expect("temp dir");
    // run.sh starts this node itself; the guard stops it, even when the test fails.
    let node = broker::PrivateNode::reserve("readme");
    let admin = crate::support::daemon::free_port();
    let repo = env!("CARGO_MANIFEST_DIR");
    let _running = Running(
        std::process::Command::new(format!("{repo}/scripts/run.sh"))
            .env("WEBHOOKD_BIN", crate::support::daemon::BIN)
            .env("WEBHOOKD_DEV_PORT", node.port.to_string())
            .env("WEBHOOKD_DEV_NODE", &node.name)
            .env("WEBHOOKD_DEV_STATE", state.path())
            .env("WEBHOOKD_BROKER_HOME", node.home())
            .env("WEBHOOKD_ADMIN__LISTEN", admin.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("scripts/run.sh"),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
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
    .await;
}

/// Rewrites one line of the daemon's config file.
fn edit_config(daemon: &Daemon, from: &str, to: &str) {
    let text = std::fs::read_to_string(&daemon.config_path).expect("read config");
    assert!(text.contains(from), "config has no `{from}`:\n{text}");
    std::fs::write(&daemon.config_path, text.replacen(from, to, 1)).expect("write config");
}

/// Sends SIGHUP and waits until the daemon has logged the outcome (`marker`) one more time.
async fn sighup(daemon: &Daemon, marker: &str) {
    let before = daemon.logs().matches(marker).count();
    daemon.signal("HUP");
    eventually(WAIT, marker, || async {
        (daemon.logs().matches(marker).count() > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_allow_list_and_log_level_live_and_keeps_the_old_config_when_the_new_one_is_invalid(
) {
    let daemon = Daemon::start(Settings {
        extra: "[log]\nlevel = \"info\"\n".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(1, &receiver.url("/hook"), &[]).await;
    let amqp = broker::connect().await;
    let exchange = &daemon.names.exchange;
    // Counted in the broker: while the file is invalid, the CLI cannot read it either.
    let blocked = || broker::ready_count(&amqp, &daemon.names.dead_letters);

    broker::publish_event(&amqp, exchange, "message_created", 1, 1).await;
    eventually(WAIT, "the first event delivered", || async {
        (receiver.requests("/hook").len() == 1).then_some(())
    })
    .await;

    // Close the allow-list, raise the log level, and change a key that needs a restart.
    edit_config(
        &daemon,
        r#"allow_networks = ["127.0.0.0/8"]"#,
        "allow_networks = []",
    );
    edit_config(&daemon, r#"level = "info""#, r#"level = "debug""#);
    edit_config(&daemon, "prefetch = 64", "prefetch = 32");
    sighup(&daemon, "configuration reloaded").await;
    let logs = daemon.logs();
    assert!(
        logs.contains("take effect only after a restart") && logs.contains("broker.prefetch"),
        "the restart-only change is named:\n{logs}"
    );
    broker::publish_event(&amqp, exchange, "message_created", 1, 2).await;
    eventually(
        WAIT,
        "the second event refused by the new allow-list",
        || async { (blocked().await == 1).then_some(()) },
    )
    .await;
    // An account without webhooks logs at debug only: the new level is in force.
    broker::publish_event(&amqp, exchange, "message_created", 999, 3).await;
    eventually(WAIT, "a debug line", || async {
        daemon.logs().contains("no matching webhook").then_some(())
    })
    .await;

    // An invalid file changes nothing: the closed allow-list stays.
    edit_config(
        &daemon,
        r#"request_timeout = "2s""#,
        r#"request_timeout = "soon""#,
    );
    sighup(&daemon, "keeping the running one").await;
    broker::publish_event(&amqp, exchange, "message_created", 1, 4).await;
    eventually(WAIT, "the fourth event refused as well", || async {
        (blocked().await == 2).then_some(())
    })
    .await;

    // Opening it again lets the next event through.
    edit_config(
        &daemon,
        r#"request_timeout = "soon""#,
        r#"request_timeout = "2s""#,
    );
    edit_config(
        &daemon,
        "allow_networks = []",
        r#"allow_networks = ["127.0.0.0/8"]"#,
    );
    sighup(&daemon, "configuration reloaded").await;
    broker::publish_event(&amqp, exchange, "message_created", 1, 5).await;
    eventually(WAIT, "the fifth event delivered", || async {
        (receiver.requests("/hook").len() == 2).then_some(())
    })
    .await;
    let dead = daemon.dead_letters().await;
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter().all(|d| d["reason"] == "blocked_destination"),
        "{dead:?}"
    );
    assert_eq!(daemon.get("/readyz").await.0, http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once_and_acks_nothing_unfinished() {
    const EVENTS: usize = 3;
    let (mut daemon, receiver) = daemon_holding(EVENTS, "60s").await;

    daemon.signal("TERM");
    eventually(WAIT, "the drain to start", || async {
        daemon.logs().contains("stopping: draining").then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited {:?} after the second signal, well inside the 60 s drain",
        started.elapsed()
    );
    assert!(daemon.logs().contains("second stop signal"));
    assert_redelivered(&mut daemon, &receiver, EVENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_notifies_ready_then_pings_the_watchdog_then_stopping() {
    let mut daemon = Daemon::configure(Settings::default());
    let socket_path = daemon.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let collected = messages.clone();
    let listener = tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buffer).await {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            collected
                .lock()
                .expect("lock")
                .extend(text.lines().map(str::to_owned));
        }
    });
    let seen = |line: &str| {
        let all = messages.lock().expect("lock");
        all.iter().position(|m| m == line)
    };

    // 300 ms: a ping every 150 ms.
    daemon.spawn_with_env(&[
        ("NOTIFY_SOCKET", socket_path.as_os_str()),
        ("WATCHDOG_USEC", std::ffi::OsStr::new("300000")),
    ]);
    let ready = eventually(WAIT, "READY=1", || async { seen("READY=1") }).await;
    assert_eq!(daemon.get("/readyz").await.0, http::StatusCode::OK);
    eventually(WAIT, "three watchdog pings after READY=1", || async {
        let all = messages.lock().expect("lock");
        (all[ready..].iter().filter(|m| *m == "WATCHDOG=1").count() >= 3).then_some(())
    })
    .await;
    assert_eq!(seen("STOPPING=1"), None, "not stopping before SIGTERM");

    let status = daemon.sigterm(WAIT).await;
    assert!(status.success(), "exit status {status}");
    let stopping = eventually(WAIT, "STOPPING=1", || async { seen("STOPPING=1") }).await;
    assert!(stopping > ready);
    let all = messages.lock().expect("lock").clone();
    assert!(
        all.iter().any(|m| m == "STATUS=consuming"),
        "a STATUS line for systemctl status: {all:?}"
    );
    listener.abort();
}

/// The exposure score `systemd-analyze security` prints on its last line.
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{output}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line}"))
}

/// `systemd-analyze verify` insists that the binaries the unit names exist; the unit names
/// /usr/bin/webhookd, where the package installs it. So verify runs on a copy whose
/// commands point at the binary this build made, and is otherwise the shipped file.
#[test]
fn the_unit_file_verifies_clean_and_rates_1_5_or_lower() {
    let analyze = "/usr/bin/systemd-analyze";
    assert!(
        std::path::Path::new(analyze).exists(),
        "systemd-analyze is missing (Debian's systemd package provides it)"
    );
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/webhookd.service");
    let text = std::fs::read_to_string(unit).expect("read the unit");

    let security = std::process::Command::new(analyze)
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let score = exposure(&report);
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{report}");

    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("webhookd.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/webhookd", crate::support::daemon::BIN),
    )
    .expect("write the unit copy");
    let verify = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "verify:\n{said}"
    );

    // What the daemon relies on the unit for.
    for line in [
        "Type=notify",
        "ExecStartPre=/usr/bin/webhookd --config /etc/webhookd/webhookd.toml check-config",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=webhookd",
        "LoadCredential=broker-url:",
        "LoadCredential=admin-token:",
        "Environment=WEBHOOKD_BROKER__URL_FILE=%d/broker-url",
        "Environment=WEBHOOKD_ADMIN__TOKEN_FILE=%d/admin-token",
        "LimitNOFILE=",
        "MemoryMax=",
        "TasksMax=",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }
    // Under ProtectSystem=strict it would make /etc/webhookd writable to the service.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("ConfigurationDirectory=")),
        "the unit opens /etc/webhookd for writing"
    );
    let stop: Duration = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| humantime::parse_duration(v).ok())
        .expect("TimeoutStopSec=");
    let drain = webhookd::config::Config::default().service.drain_timeout;
    assert!(
        stop >= drain + Duration::from_secs(10),
        "TimeoutStopSec={stop:?} leaves too little over the {drain:?} drain"
    );

    // Enough descriptors for every delivery in flight and the admin connections on top.
    let value = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number in {key}"))
    };
    let defaults = webhookd::config::Config::default();
    let needed = defaults.delivery.max_in_flight + webhookd::admin::MAX_CONNECTIONS;
    assert!(
        value("LimitNOFILE=") >= 4 * needed as u64,
        "LimitNOFILE= too low"
    );
    // The blocking pool (512 threads at most) and the workers fit under the task limit.
    assert!(value("TasksMax=") > 512 + 64, "TasksMax= too low");
    // The kernel-level backstop behind the SSRF guard: cloud metadata on link-local addresses.
    let denied: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("IPAddressDeny="))
        .flat_map(str::split_whitespace)
        .collect();
    for network in ["169.254.0.0/16", "fe80::/10"] {
        assert!(denied.contains(&network), "IPAddressDeny= lacks {network}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened() {
    let daemon = Daemon::start(Settings::default()).await;
    // /flaky fails its first request only, so exactly one retry is scheduled (in the 200 ms or
    // the 250 ms bucket, as the jitter falls).
    let receiver = Receiver::scripted(|path, seen| match (path, seen) {
        ("/rejects", _) => Reply::status(404),
        ("/flaky", 0) => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    for path in ["/ok", "/rejects", "/flaky"] {
        daemon.add_webhook(1, &receiver.url(path), &[]).await;
    }
    let amqp = broker::connect().await;
    let exchange = &daemon.names.exchange;
    for n in 0..3 {
        broker::publish_event(&amqp, exchange, "message_created", 1, n).await;
    }
    broker::publish_event(&amqp, exchange, "conversation_created", 1, 3).await;
    broker::publish(
        &amqp,
        exchange,
        "message_created",
        b"not json",
        BasicProperties::default(),
    )
    .await;

    let expected = [
        (r#"webhookd_events_total{event="message_created"}"#, 3.0),
        (
            r#"webhookd_events_total{event="conversation_created"}"#,
            1.0,
        ),
        ("webhookd_events_total", 4.0),
        (r#"webhookd_deliveries_total{outcome="delivered"}"#, 8.0),
        (r#"webhookd_deliveries_total{outcome="dead"}"#, 4.0),
        (r#"webhookd_deliveries_total{outcome="retry"}"#, 1.0),
        (r#"webhookd_dead_letters_total{reason="rejected"}"#, 4.0),
        (r#"webhookd_dead_letters_total{reason="malformed"}"#, 1.0),
        ("webhookd_dead_letters_total", 5.0),
        ("webhookd_retries_scheduled_total", 1.0),
        ("webhookd_delivery_duration_seconds_count", 13.0),
        ("webhookd_deliveries_in_flight", 0.0),
        ("webhookd_broker_connected", 1.0),
        ("webhookd_broker_reconnects_total", 0.0),
    ];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut actual = Vec::new();
        for (series, _) in &expected {
            actual.push((*series, daemon.metric(series).await));
        }
        if actual == expected || std::time::Instant::now() > deadline {
            assert_eq!(
                actual,
                expected,
                "/metrics:\n{}",
                daemon.get("/metrics").await.1
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The test's own view agrees: what the receivers and the DLQ saw.
    assert_eq!(receiver.requests("/ok").len(), 4);
    assert_eq!(receiver.requests("/rejects").len(), 4);
    assert_eq!(receiver.requests("/flaky").len(), 5);
    assert_eq!(daemon.dead_letters().await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_stages_add_up_to_the_total_and_hold_the_receiver_s_time_in_response() {
    let daemon = Daemon::start(Settings::default()).await;
    // The receiver works 20 ms per request: time webhookd cannot spend anywhere but `response`.
    let work = Duration::from_millis(20);
    let receiver = Receiver::scripted(move |_, _| Reply::status(200).after(work)).await;
    daemon.add_webhook(1, &receiver.url("/one"), &[]).await;
    // Account 2's events go to two webhooks: their requests overlap, so they are not timed.
    for path in ["/two-a", "/two-b"] {
        daemon.add_webhook(2, &receiver.url(path), &[]).await;
    }
    let amqp = broker::connect().await;
    let (timed, untimed): (u32, u32) = (10, 3);
    for (account, events) in [(1, timed), (2, untimed)] {
        for n in 0..events {
            let exchange = &daemon.names.exchange;
            broker::publish_event(&amqp, exchange, "message_created", account, n.into()).await;
        }
    }
    let delivered = f64::from(timed + 2 * untimed);
    eventually(
        WAIT,
        "every delivery made and every timed message acked",
        || async {
            let done = daemon
                .metric(r#"webhookd_deliveries_total{outcome="delivered"}"#)
                .await
                == delivered
                && daemon.metric("webhookd_message_seconds_count").await >= f64::from(timed);
            done.then_some(())
        },
    )
    .await;

    let (_, text) = daemon.get("/metrics").await;
    assert_eq!(
        daemon.metric("webhookd_message_seconds_count").await,
        f64::from(timed),
        "only the one-request messages are timed:\n{text}"
    );
    let mut stages = 0.0;
    for stage in webhookd::metrics::STAGES {
        let series =
            |part: &str| format!("webhookd_message_stage_seconds_{part}{{stage=\"{stage}\"}}");
        assert_eq!(
            daemon.metric(&series("count")).await,
            f64::from(timed),
            "{stage}:\n{text}"
        );
        stages += daemon.metric(&series("sum")).await;
    }
    let total = daemon.metric("webhookd_message_seconds_sum").await;
    assert!(
        (stages - total).abs() < 1e-6,
        "stages {stages} s, total {total} s:\n{text}"
    );
    let response = daemon
        .metric(r#"webhookd_message_stage_seconds_sum{stage="response"}"#)
        .await;
    assert!(
        response >= f64::from(timed) * work.as_secs_f64(),
        "the receiver's 20 ms each are in response ({response} s):\n{text}"
    );
    assert!(
        response > total / 2.0,
        "response ({response} s) is most of the total ({total} s):\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_and_each_outcome_names_its_ids() {
    let daemon = Daemon::start(Settings {
        extra: "[log]\nformat = \"json\"\nlevel = \"debug\"\n".to_owned(),
        ..Settings::default()
    })
    .await;
    // One webhook answers 200, the other 503 once: a delivered attempt is a debug line, a retry
    // an info line, and both carry the ids to follow the delivery by.
    let receiver = Receiver::scripted(|path, seen| match (path, seen) {
        ("/flaky", 0) => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    let ok = daemon.add_webhook(7, &receiver.url("/hook"), &[]).await;
    let flaky = daemon.add_webhook(7, &receiver.url("/flaky"), &[]).await;
    let amqp = broker::connect().await;
    broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 7, 1).await;
    let delivery_id = |path: &'static str| {
        let receiver = &receiver;
        async move {
            eventually(WAIT, "the event delivered", || async {
                let requests = receiver.requests(path);
                requests.last().map(|r| r.header("webhook-id").to_owned())
            })
            .await
        }
    };
    let (ok_id, flaky_id) = (delivery_id("/hook").await, delivery_id("/flaky").await);

    let attempt_line = |webhook: &serde_json::Value, outcome: &'static str| {
        let id = webhook["id"].as_str().expect("webhook id").to_owned();
        let daemon = &daemon;
        async move {
            eventually(WAIT, "the attempt's log line", || async {
                let logs = daemon.logs();
                let mut lines = Vec::new();
                for line in logs.lines().filter(|l| !l.trim().is_empty()) {
                    let value: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                    lines.push(value);
                }
                lines.into_iter().find(|l| {
                    // The ids are the attempt span's, which every line of the attempt carries.
                    l["fields"]["message"] == "delivery attempt"
                        && l["span"]["name"] == "attempt"
                        && l["span"]["webhook_id"] == id.as_str()
                        && l["fields"]["outcome"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with(outcome)
                })
            })
            .await
        }
    };
    let delivered = attempt_line(&ok, "delivered").await;
    assert_eq!(delivered["level"], "DEBUG");
    assert_eq!(delivered["span"]["delivery_id"], ok_id.as_str());
    assert_eq!(delivered["span"]["account_id"], 7);
    assert_eq!(delivered["span"]["event"], "message_created");
    assert_eq!(
        delivered["spans"][0]["name"], "message",
        "inside the message's span"
    );
    assert_eq!(delivered["fields"]["status"], 200);
    let retried = attempt_line(&flaky, "retry").await;
    assert_eq!(retried["level"], "INFO");
    assert_eq!(retried["span"]["delivery_id"], flaky_id.as_str());
    assert_eq!(retried["fields"]["status"], 503);
    assert_eq!(retried["span"]["attempt"], 1);
}
