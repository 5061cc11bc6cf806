//! Test harness: a real broker (names unique per test), scriptable HTTP receivers on loopback,
//! and the real `webhookd` binary with a config written per test.

pub mod broker;
pub mod daemon;
pub mod pki;
pub mod receiver;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Publishes event `n` for account 1 on `node`, and waits until `receiver`'s `/hook` had `n`
/// requests: the `n`th event's way through, when each is delivered once.
pub async fn deliver_nth(
    node: &broker::PrivateNode,
    daemon: &daemon::Daemon,
    receiver: &receiver::Receiver,
    n: u64,
) {
    let amqp = broker::connect_to(&node.url()).await;
    broker::publish_event(&amqp, &daemon.names.exchange, "message_created", 1, n).await;
    eventually(
        Duration::from_secs(60),
        &format!("event {n} delivered"),
        || async { (receiver.requests("/hook").len() as u64 == n).then_some(()) },
    )
    .await;
}
