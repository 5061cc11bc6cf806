//! Snapshots of the registry in its own log: who writes them, how, and how an instance rebuilds
//! from one.
//!
//! One instance writes them, so the stream does not fill with copies: the single active consumer
//! of a quorum queue with `x-single-active-consumer`, which it learns by receiving the token
//! message that queue holds. Every instance consumes it with a prefetch of one; the broker
//! delivers only to the active consumer, so the instance that received the token keeps the role
//! until its connection ends, and then the broker hands the token to the next one. The holder
//! exchanges the token for a fresh one every few minutes instead of holding one delivery
//! unacknowledged, which RabbitMQ would end after its `consumer_timeout`. An instance that finds
//! the queue without a ready token puts one in, so a token exists once anyone has started (two
//! racing instances may add two; the spare waits in the queue, harmlessly).
//!
//! A snapshot is a begin entry, chunks of [`CHUNK`] webhooks and then of account tokens, and an
//! end entry with the count of both and a SHA-256 digest of their JSON in order, so a rebuild
//! restores the tokens with the webhooks and notices a chunk of either gone missing. A snapshot
//! from before tokens were in the log has webhook chunks alone, and reads the same way. The
//! writer takes it when its follower applies its own begin entry, so it is the registry at
//! exactly that offset, whatever other instances append while the chunks are written; an
//! instance that rebuilds keeps the changes that arrive after the begin entry and applies them on
//! top once the end entry checks out.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Entry, Log};
use crate::broker::Version;
use crate::config::BrokerConfig;
use crate::store::{AccountToken, Contents, Webhook};

/// Webhooks, or tokens, per chunk entry: a few hundred kilobytes of JSON.
const CHUNK: usize = 1000;

/// This instance's place in the election for the snapshot writer.
pub(super) struct Election {
    channel: Channel,
    queue: String,
    tokens: Consumer,
    /// The token while this instance holds it, unacknowledged.
    held: Option<Delivery>,
}

impl Election {
    /// Declares the election queue (`<registry_stream>.snapshot-writer`), adds a token if none is
    /// waiting, and consumes it. A quorum queue, so that the election outlives any one node, with
    /// the broker's delivery limit turned off as on the other queues (the token comes back each
    /// time its holder leaves).
    pub(super) async fn join(
        connection: &Connection,
        broker: &BrokerConfig,
        version: Option<Version>,
    ) -> Result<Election, lapin::Error> {
        let queue = super::election_queue(broker);
        let channel = connection.create_channel().await?;
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let arguments = crate::broker::quorum_arguments(
            version,
            &[("x-single-active-consumer", AMQPValue::Boolean(true))],
        );
        let declared = channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await?;
        if declared.message_count() == 0 {
            put_token(&channel, &queue).await?;
        }
        let tokens = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(format!("webhookd-snapshots-{}", std::process::id())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Election {
            channel,
            queue,
            tokens,
            held: None,
        })
    }

    /// Completes when this instance receives the token (never, if another keeps it); an error
    /// when the election's channel ends.
    pub(super) async fn won(&mut self) -> Result<(), lapin::Error> {
        match self.tokens.next().await {
            Some(Ok(token)) => {
                self.held = Some(token);
                Ok(())
            }
            Some(Err(error)) => Err(error),
            None => std::future::pending().await,
        }
    }

    /// Exchanges the held token for a fresh one: RabbitMQ closes a channel that holds a
    /// delivery unacknowledged for longer than its `consumer_timeout` (30 minutes by default).
    /// The fresh token comes back to this instance, the queue's single active consumer, with
    /// nobody else in between.
    pub(super) async fn renew(&mut self) -> Result<(), lapin::Error> {
        if let Some(token) = self.held.take() {
            put_token(&self.channel, &self.queue).await?;
            token.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }
}

/// How often the holder renews the token: well within RabbitMQ's default `consumer_timeout`.
pub(super) const TOKEN_RENEWAL: Duration = Duration::from_secs(300);

async fn put_token(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            b"token",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?;
    Ok(())
}

/// `election`'s [`Election::renew`], if this instance is in the election.
pub(super) async fn renew(election: &mut Option<Election>) -> Result<(), lapin::Error> {
    match election {
        Some(election) => election.renew().await,
        None => Ok(()),
    }
}

/// `election`'s [`Election::won`], or never when this instance is not in the election.
pub(super) async fn won(election: &mut Option<Election>) -> Result<(), lapin::Error> {
    match election {
        Some(election) => election.won().await,
        None => std::future::pending().await,
    }
}

/// Writes the snapshot `id` of `contents` (the registry at its begin entry) into the log, in the
/// background: the follower goes on applying meanwhile.
pub(super) fn write(log: &Arc<Log>, snapshot: String, contents: Contents) {
    let log = log.clone();
    let (webhooks, tokens) = (contents.webhooks.len(), contents.tokens.len());
    let entries = entries(snapshot, contents);
    tokio::spawn(async move {
        for entry in entries {
            if let Err(error) = log.append(&entry).await {
                warn!(%error, "writing a registry snapshot failed; the next one will be tried");
                return;
            }
        }
        info!(webhooks, tokens, "registry snapshot written to the log");
    });
}

/// The entries of snapshot `snapshot` of `contents` after its begin entry: the chunks, made as
/// they are published (a copy of the registry is not held twice), and the end entry.
fn entries(snapshot: String, contents: Contents) -> impl Iterator<Item = Entry> + Send {
    let mut digest = Sha256::new();
    add_to_digest(&mut digest, &contents.webhooks, &contents.tokens);
    let end = Entry::SnapshotEnd {
        snapshot: snapshot.clone(),
        count: (contents.webhooks.len() + contents.tokens.len()) as u64,
        digest: hex::encode(digest.finalize()),
    };
    let webhooks = chunked(contents.webhooks).map(|webhooks| (webhooks, Vec::new()));
    let tokens = chunked(contents.tokens).map(|tokens| (Vec::new(), tokens));
    webhooks
        .chain(tokens)
        .map(move |(webhooks, tokens)| Entry::SnapshotChunk {
            snapshot: snapshot.clone(),
            webhooks,
            tokens,
        })
        .chain(std::iter::once(end))
}

/// `items` in chunks of [`CHUNK`].
fn chunked<T>(items: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    let mut items = items.into_iter();
    std::iter::from_fn(move || {
        let chunk: Vec<T> = items.by_ref().take(CHUNK).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// Adds a chunk's records to the digest as it covers them: each one's JSON, in order.
fn add_to_digest(digest: &mut Sha256, webhooks: &[Webhook], tokens: &[AccountToken]) {
    let records = webhooks
        .iter()
        .map(serde_json::to_vec)
        .chain(tokens.iter().map(serde_json::to_vec));
    for record in records {
        digest.update(record.unwrap_or_default());
    }
}

/// A store waiting for a snapshot: what it has read of the latest one, and what came after.
#[derive(Default)]
pub(super) struct Rebuild {
    reading: Option<Reading>,
    /// Markers written before any snapshot began: answered once the store is rebuilt.
    markers: Vec<String>,
}

struct Reading {
    snapshot: String,
    begin: u64,
    contents: Contents,
    digest: Sha256,
    after: Vec<(u64, Entry)>,
}

/// A snapshot read whole and checked.
pub(super) struct Rebuilt {
    pub(super) begin: u64,
    pub(super) contents: Contents,
    /// Entries after the begin entry, to apply on top, with their offsets.
    pub(super) after: Vec<(u64, Entry)>,
    pub(super) markers: Vec<String>,
}

impl Rebuild {
    /// Takes the entry at `offset`; returns the snapshot once its end entry checks out.
    pub(super) fn receive(&mut self, entry: Entry, offset: u64) -> Option<Rebuilt> {
        match entry {
            Entry::SnapshotBegin { snapshot } => {
                // A later snapshot replaces one being read: the earlier may never end.
                self.reading = Some(Reading {
                    snapshot,
                    begin: offset,
                    contents: Contents::default(),
                    digest: Sha256::new(),
                    after: Vec::new(),
                });
            }
            Entry::SnapshotChunk {
                snapshot,
                webhooks,
                tokens,
            } => {
                if let Some(reading) = self.reading.as_mut().filter(|r| r.snapshot == snapshot) {
                    add_to_digest(&mut reading.digest, &webhooks, &tokens);
                    reading.contents.webhooks.extend(webhooks);
                    reading.contents.tokens.extend(tokens);
                }
            }
            Entry::SnapshotEnd {
                snapshot,
                count,
                digest,
            } => {
                let reading = self.reading.take_if(|r| r.snapshot == snapshot)?;
                let actual = hex::encode(reading.digest.finalize());
                let records = reading.contents.webhooks.len() + reading.contents.tokens.len();
                if records as u64 != count || actual != digest {
                    warn!(
                        snapshot,
                        "a registry snapshot in the log does not match its count or digest; \
                         waiting for the next one"
                    );
                    return None;
                }
                return Some(Rebuilt {
                    begin: reading.begin,
                    contents: reading.contents,
                    after: reading.after,
                    markers: std::mem::take(&mut self.markers),
                });
            }
            Entry::Marker { id } if self.reading.is_none() => self.markers.push(id),
            other => {
                if let Some(reading) = &mut self.reading {
                    reading.after.push((offset, other));
                }
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Change, IssuedToken, NewWebhook};

    fn contents() -> Contents {
        let webhooks = (1..=3)
            .map(|account_id| {
                let new = NewWebhook {
                    account_id,
                    url: "https://example.com/hook".to_owned(),
                    ..NewWebhook::default()
                };
                match Change::create(new).unwrap() {
                    Change::Create { webhook } => webhook,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let tokens = (1..=2)
            .map(|account_id| {
                IssuedToken::generate(account_id, None, "2026-01-01T00:00:00Z".into()).record
            })
            .collect();
        Contents { webhooks, tokens }
    }

    /// Reads `entries`, as the log carries them (JSON), after a begin entry at offset 10.
    fn read(entries: impl IntoIterator<Item = Entry>) -> Option<Rebuilt> {
        let mut rebuild = Rebuild::default();
        let begin = Entry::SnapshotBegin {
            snapshot: "s".into(),
        };
        let mut rebuilt = None;
        for (offset, entry) in (10..).zip(std::iter::once(begin).chain(entries)) {
            let carried = serde_json::from_slice(&serde_json::to_vec(&entry).unwrap()).unwrap();
            rebuilt = rebuild.receive(carried, offset);
        }
        rebuilt
    }

    #[test]
    fn a_snapshot_restores_the_webhooks_and_the_tokens() {
        let contents = contents();
        let rebuilt = read(entries("s".into(), contents.clone())).unwrap();
        assert_eq!(rebuilt.begin, 10);
        assert_eq!(rebuilt.contents, contents);
    }

    #[test]
    fn a_snapshot_missing_its_token_chunk_is_refused() {
        let mut entries: Vec<Entry> = entries("s".into(), contents()).collect();
        entries.retain(
            |entry| !matches!(entry, Entry::SnapshotChunk { tokens, .. } if !tokens.is_empty()),
        );
        assert!(read(entries).is_none());
    }

    #[test]
    fn a_snapshot_written_before_tokens_were_logged_still_reads() {
        let webhooks = contents().webhooks;
        let mut digest = Sha256::new();
        add_to_digest(&mut digest, &webhooks, &[]);
        let chunk = serde_json::json!({
            "entry": "snapshot_chunk", "snapshot": "s", "webhooks": webhooks,
        });
        let end = Entry::SnapshotEnd {
            snapshot: "s".into(),
            count: webhooks.len() as u64,
            digest: hex::encode(digest.finalize()),
        };
        let rebuilt = read([serde_json::from_value(chunk).unwrap(), end]).unwrap();
        assert_eq!(rebuilt.contents.webhooks, webhooks);
        assert!(rebuilt.contents.tokens.is_empty());
    }
}
