//! The replicated registry: how soon a change made through one instance is in effect on another,
//! and what an instance with an empty store pays to rebuild the registry from the log.
//!
//! Propagation runs two registry followers in this process, each over a store of its own, as two
//! instances are: the path measured (publish, confirm, the stream, apply) is the daemon's own,
//! and polling a store in-process sees the change within microseconds of its apply, which a
//! poll through the admin API would blur.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use webhookd::config::BrokerConfig;
use webhookd::registry::Registry;
use webhookd::store::{NewWebhook, Store};

/// A change not seen by the other follower within this is an error, not a figure.
const PATIENCE: Duration = Duration::from_secs(30);

/// Per change, microseconds: until the write returned (applied by the instance written
/// through), and until the other instance held it.
pub struct Propagation {
    pub write_us: Vec<u64>,
    pub visible_us: Vec<u64>,
}

/// Creates `changes` webhooks, one at a time, through one follower of `broker`'s registry stream
/// and times each until the other follower holds it.
pub async fn propagation(
    broker: &BrokerConfig,
    url: &str,
    changes: u64,
) -> anyhow::Result<Propagation> {
    let stopped = CancellationToken::new();
    let (first, first_task) = follower(broker, &stopped).await?;
    let (second, second_task) = follower(broker, &stopped).await?;
    let mut times = Propagation {
        write_us: Vec::with_capacity(changes as usize),
        visible_us: Vec::with_capacity(changes as usize),
    };
    for n in 0..changes {
        let started = Instant::now();
        let webhook = first
            .create(NewWebhook {
                account_id: n + 1,
                url: url.to_owned(),
                ..NewWebhook::default()
            })
            .await?;
        times.write_us.push(micros(started.elapsed()));
        while second.store().get(&webhook.id)?.is_none() {
            anyhow::ensure!(
                started.elapsed() < PATIENCE,
                "a change was not applied by the second follower within {PATIENCE:?}"
            );
            tokio::task::yield_now().await;
        }
        times.visible_us.push(micros(started.elapsed()));
    }
    stopped.cancel();
    first_task.await?;
    second_task.await?;
    Ok(times)
}

/// A follower over a temporary store, caught up with the log.
async fn follower(
    broker: &BrokerConfig,
    stopped: &CancellationToken,
) -> anyhow::Result<(Registry, tokio::task::JoinHandle<()>)> {
    let (registry, task) = Registry::follow(broker, Store::open_temporary()?, stopped)?;
    registry
        .catch_up(stopped, |_| {})
        .await
        .context("catching up with the registry log")?;
    Ok((registry, task))
}

/// Publishes what the store at `path` holds (which never followed a log) to `broker`'s registry
/// stream, as a daemon upgraded to the log does at its first start; returns how long it took.
pub async fn publish_store(broker: &BrokerConfig, path: &std::path::Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let stopped = CancellationToken::new();
    let (registry, task) = Registry::follow(broker, Store::open(path)?, &stopped)?;
    registry.catch_up(&stopped, |_| {}).await?;
    stopped.cancel();
    task.await?;
    Ok(started.elapsed().as_secs_f64())
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
