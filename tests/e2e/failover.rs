//! Broker failover with `broker.urls`: a node that refuses is skipped, and losing the node
//! webhookd consumes from moves it to the next one in the list, where it declares its topology
//! again and resumes. Two standalone nodes share no queues, so what these tests show is the
//! reconnect and the resumed consuming on the other node, not that a message crossed from one
//! to the other (the cluster test, `cluster.rs`, shows that).

use std::time::Duration;

use http::StatusCode;

use crate::support::broker::{self, PrivateNode};
use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::Receiver;
use crate::support::{deliver_nth, eventually};

const WAIT: Duration = Duration::from_secs(90);

/// The log line of a session that started consuming from the node on `port`.
fn consuming_on(daemon: &Daemon, port: u16) -> usize {
    daemon
        .logs()
        .lines()
        .filter(|line| {
            line.contains("consuming") && line.contains(&format!("broker=127.0.0.1:{port} "))
        })
        .count()
}

async fn wait_consuming_on(daemon: &Daemon, port: u16, sessions: usize) {
    eventually(
        WAIT,
        &format!("session {sessions} consuming from the node on port {port}"),
        || async { (consuming_on(daemon, port) == sessions).then_some(()) },
    )
    .await;
    eventually(WAIT, "/readyz 200", || async {
        (daemon.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_skipped_and_losing_a_node_moves_webhookd_to_the_next() {
    let (a, b) = tokio::join!(PrivateNode::start("fail-a"), PrivateNode::start("fail-b"));
    // Nothing listens there: a node that is down.
    let dead = broker::free_amqp_port();
    let dead_url = format!("amqp://guest:guest@127.0.0.1:{dead}/%2f");
    let daemon = Daemon::start(Settings {
        broker_urls: Some(vec![dead_url, a.url(), b.url()]),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(1, &receiver.url("/hook"), &[]).await;
    let delivered = |node, n| deliver_nth(node, &daemon, &receiver, n);

    // The dead node is named as skipped, A takes the session.
    wait_consuming_on(&daemon, a.port, 1).await;
    let logs = daemon.logs();
    assert!(
        logs.lines().any(|line| line
            .contains("cannot connect to this broker node; trying the next")
            && line.contains(&format!("broker=127.0.0.1:{dead} "))),
        "{logs}"
    );
    delivered(&a, 1).await;
    // The CLI goes through the list too: the dead node first, then A, which has the queues.
    assert_eq!(daemon.dead_letters().await, Vec::<serde_json::Value>::new());
    daemon
        .cli_ok(&["publish", "--sample", "message_created", "--account", "1"])
        .await;
    eventually(WAIT, "the published sample delivered", || async {
        (receiver.requests("/hook").len() == 2).then_some(())
    })
    .await;

    // A goes away: the next node after it is B, where webhookd declares its topology and
    // consumes again.
    a.ctl(&["stop_app"]).await;
    wait_consuming_on(&daemon, b.port, 1).await;
    assert_eq!(daemon.metric("webhookd_broker_reconnects_total").await, 1.0);
    delivered(&b, 3).await;

    // B goes away and A is back: the list wraps around past the dead node to A.
    a.ctl(&["start_app"]).await;
    b.ctl(&["stop_app"]).await;
    wait_consuming_on(&daemon, a.port, 2).await;
    delivered(&a, 4).await;

    // Nodes are named by address; the password is in no log line.
    assert!(!daemon.logs().contains(":guest@"), "{}", daemon.logs());
}

/// A node cut off by the network accepts nothing and refuses nothing: a listener that never
/// answers stands for it. webhookd gives up on it after its per-node timeout and consumes from
/// the next node, well within the session's own setup timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_given_up_on_for_the_next() {
    // The kernel completes connections into the backlog; nothing ever reads or writes them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let started = std::time::Instant::now();
    let daemon = Daemon::start(Settings {
        broker_urls: Some(vec![
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            broker::url(),
        ]),
        ..Settings::default()
    })
    .await;
    let waited = started.elapsed();
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .any(|line| line.contains(&format!("broker=127.0.0.1:{port} "))
                && line.contains("took longer than 10s")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|line| line.contains("consuming") && line.contains("node=2 nodes=2")),
        "{logs}"
    );
    assert!(waited >= Duration::from_secs(10), "ready after {waited:?}");
    drop(silent);
}
