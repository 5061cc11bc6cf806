//! The admin listener against clients that never finish: half-sent headers and bodies are cut
//! off within their timeouts, connections over the cap are closed at once while deliveries go on,
//! and running out of file descriptors pauses accepting instead of spinning and flooding the log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhookd::admin::{BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::Receiver;
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Headers cut off before the blank line that ends them.
const HALF_HEADER: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: webhookd\r\nX-Slow: ";

/// Connects and sends `bytes`, then nothing more.
async fn stalled(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    stream
}

/// Reads until the server closes the connection (EOF or reset), returning what it sent and
/// when it closed; panics if it is still open after `limit`.
async fn closed_by_server(mut stream: TcpStream, limit: Duration) -> (String, Instant) {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {limit:?}"
    );
    (String::from_utf8_lossy(&seen).into_owned(), Instant::now())
}

/// A complete `GET /healthz` on a new connection: the server's whole answer, or "" when it
/// closed the connection without one.
async fn probe(addr: SocketAddr) -> String {
    let stream = stalled(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: webhookd\r\nConnection: close\r\n\r\n",
    )
    .await;
    closed_by_server(stream, Duration::from_secs(5)).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_and_bodies_are_closed_within_their_timeouts() {
    let daemon = Daemon::start(Settings::default()).await;
    let slack = Duration::from_secs(5);

    let started = Instant::now();
    // A body cut off half-way, on a request that reads its body.
    let post = format!(
        "POST /v1/webhooks HTTP/1.1\r\nHost: webhookd\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"account_id\": 1,",
        daemon.token
    );
    let body_stall = stalled(daemon.admin, post.as_bytes()).await;
    // An idle keep-alive connection: one request answered, then nothing.
    let idle = stalled(
        daemon.admin,
        b"GET /healthz HTTP/1.1\r\nHost: webhookd\r\n\r\n",
    )
    .await;
    // 100 slowloris connections: those within the cap are held until the header timeout, the
    // rest are closed at once.
    let mut stalls = Vec::new();
    for _ in 0..100 {
        stalls.push(stalled(daemon.admin, HALF_HEADER).await);
    }

    let limit = HEADER_READ_TIMEOUT + slack;
    let closings: Vec<_> = stalls
        .into_iter()
        .map(|stream| tokio::spawn(closed_by_server(stream, limit)))
        .collect();
    let mut held = 0;
    for closing in closings {
        let (answer, at) = closing.await.expect("reader");
        if answer.is_empty() {
            held += 1;
            assert!(
                at - started >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
                "closed after {:?}, before the header timeout",
                at - started
            );
        } else {
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        }
    }
    // The cap, less the two connections above (and, at worst, two the harness had just closed).
    assert!(
        (MAX_CONNECTIONS - 4..=MAX_CONNECTIONS - 2).contains(&held),
        "{held} connections held"
    );
    let (answer, at) = closed_by_server(idle, limit).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(at - started >= HEADER_READ_TIMEOUT - Duration::from_millis(500));

    let (answer, at) = closed_by_server(body_stall, BODY_READ_TIMEOUT + slack).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request body not received"), "{answer}");
    assert!(at - started >= BODY_READ_TIMEOUT - Duration::from_millis(500));

    assert!(probe(daemon.admin).await.starts_with("HTTP/1.1 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_are_closed_and_deliveries_go_on() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(41, &receiver.url("/capped"), &[]).await;

    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(stalled(daemon.admin, HALF_HEADER).await);
    }
    let refused = eventually(WAIT, "a connection over the cap to be refused", || async {
        let answer = probe(daemon.admin).await;
        (!answer.starts_with("HTTP/1.1 200 ")).then_some(answer)
    })
    .await;
    assert!(
        refused.is_empty() || refused.contains("too many admin connections"),
        "{refused}"
    );
    assert!(daemon.logs().contains("admin connections at their cap"));

    let amqp = broker::connect().await;
    broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 41, 1).await;
    eventually(
        WAIT,
        "the event delivered while the admin API is full",
        || async { (receiver.requests("/capped").len() == 1).then_some(()) },
    )
    .await;
    let answer = probe(daemon.admin).await;
    assert!(
        !answer.starts_with("HTTP/1.1 200 "),
        "still capped: {answer}"
    );

    // Freed slots are served again.
    drop(held);
    eventually(WAIT, "/healthz served again", || async {
        probe(daemon.admin)
            .await
            .starts_with("HTTP/1.1 200 ")
            .then_some(())
    })
    .await;
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_logs_once() {
    let daemon = Daemon::start(Settings::default()).await;
    let pid = daemon.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    // Room for two more descriptors: two admin connections, then accept fails with EMFILE.
    let limit = open + 2;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit (util-linux) is needed");
    assert!(status.success(), "prlimit failed");

    let mut stalls = Vec::new();
    for _ in 0..4 {
        stalls.push(stalled(daemon.admin, HALF_HEADER).await);
    }
    eventually(WAIT, "the failed accept to be logged", || async {
        daemon.logs().contains("admin accept failed").then_some(())
    })
    .await;
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();
    // The accepted ones are closed by the header timeout; the daemon stays out of descriptors
    // until then, with the rest waiting in the backlog.
    let first = stalls.remove(0);
    closed_by_server(first, HEADER_READ_TIMEOUT + Duration::from_secs(5)).await;
    let spent = cpu_ticks(pid) - ticks_before;
    let elapsed = window.elapsed();
    drop(stalls);
    eventually(WAIT, "/healthz served again", || async {
        (daemon.get("/healthz").await.0 == StatusCode::OK).then_some(())
    })
    .await;

    let logs = daemon.logs();
    let failures = logs.matches("admin accept failed").count();
    assert!(
        (1..=6).contains(&failures),
        "{failures} accept failures logged"
    );
    assert!(logs.contains("admin accepting connections again"), "{logs}");
    // 100 ticks a second on Linux: a loop spinning on accept would take a core for the window.
    let ticks_per_second = 100.0;
    let share = spent as f64 / ticks_per_second / elapsed.as_secs_f64();
    assert!(
        share < 0.2,
        "the daemon used {share:.2} of a core while out of descriptors"
    );
}
