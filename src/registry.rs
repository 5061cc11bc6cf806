//! The replicated registry: every instance's store follows one log of changes kept in the broker.
//!
//! Instances on different hosts each have their own sled store, and an event may be consumed by
//! any of them, so each must know every webhook. The broker is already the one thing they all
//! share and trust with durability, so the registry's source of truth is a RabbitMQ stream
//! (`broker.registry_stream`): an append-only, replicated log that any number of consumers read
//! from an offset of their choice. A write (the admin API, the CLI, a receiver's 410) is one
//! [`Change`], decided entirely by the instance that makes it (ids, secrets, timestamps), published
//! with a confirm; every instance applies the changes in the stream's order to its own store, so
//! all of them hold the same registry. Account tokens travel the same way (issued and revoked as
//! changes, as their records: a hash, never the token), so a token opens every instance. The
//! store stays the local copy, and the in-memory index in front of it stays the lookup path:
//! nothing on the delivery path talks to the broker for it.
//!
//! # Read your writes
//!
//! A write returns once its own change has been applied by this instance (`Registry::submit`),
//! so the webhook an API call created is the one the next call reads; if that takes longer than
//! [`APPLY_TIMEOUT`] the caller hears so rather than a guess. At start an instance publishes a
//! marker and applies the log up to it before it consumes the work queue: it never delivers with
//! a registry older than the moment it started.
//!
//! # Position, gaps and snapshots
//!
//! Each instance keeps in its store the offset of the next change to apply, and resumes there.
//! Streams have retention (`broker.registry_max_age`) but no compaction, so the log's start is
//! eventually deleted; an instance whose position was deleted (a new one, a lost store, one that
//! was down too long) sees the first offset the broker delivers beyond it — the broker moves such
//! a consumer silently — and rebuilds from a snapshot instead. Snapshots are written into the same
//! stream (begin, chunks, end with a count and a digest) by one instance at a time: the one that
//! holds the election token of a single-active-consumer queue (`snapshot` below). A snapshot
//! holds every webhook and every account token, exactly as the registry was at its begin entry's
//! offset, because the writer takes it when it applies that entry; a rebuilding instance loads it
//! and applies what came after the begin entry.
//!
//! # Parts
//!
//! - this file: [`Registry`], the write side, and the log's entries;
//! - `registry/follower.rs`: the connection that reads the stream and applies it;
//! - `registry/snapshot.rs`: the election, and writing and reading snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::BrokerConfig;
use crate::store::{
    now_rfc3339, AccountToken, Applied, Change, Contents, IssuedToken, NewWebhook, Store,
    StoreError, Webhook, WebhookPatch,
};

mod follower;
mod snapshot;

/// How long a write waits for its change to come back from the log and be applied here.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue whose token elects the instance that writes snapshots (see `registry/snapshot.rs`).
pub fn election_queue(broker: &BrokerConfig) -> String {
    format!("{}.snapshot-writer", broker.registry_stream)
}

/// The stream where instances share the attempts they record, so that each webhook's attempt
/// log shows every instance's attempts.
pub fn attempts_stream(broker: &BrokerConfig) -> String {
    format!("{}.attempts", broker.registry_stream)
}

/// The header naming the instance that shared a batch of attempts.
const INSTANCE_HEADER: &str = "x-webhookd-instance";

/// Entries published before waiting for their confirms, when there are many.
const BATCH: usize = 1000;

/// One entry of the registry log, as JSON.
#[allow(clippy::large_enum_variant)] // one per registry write, never held in bulk
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
enum Entry {
    /// A change to apply; `id` lets the instance that wrote it hear when it is applied.
    Change {
        id: String,
        change: Change,
    },
    /// Changes nothing: an instance that wrote it has applied everything before it once it
    /// reads it back.
    Marker {
        id: String,
    },
    /// Asks the elected instance for a snapshot now (an instance is waiting to rebuild).
    SnapshotRequest,
    SnapshotBegin {
        snapshot: String,
    },
    /// Webhooks, or account tokens: a snapshot written before tokens were in the log has
    /// chunks of webhooks alone.
    SnapshotChunk {
        snapshot: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        webhooks: Vec<Webhook>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tokens: Vec<AccountToken>,
    },
    SnapshotEnd {
        snapshot: String,
        count: u64,
        digest: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the registry log in the broker is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the change is in the registry log but was not applied here within {0:?}; it will be, \
         read it again shortly"
    )]
    NotApplied(Duration),
}

/// What applying an entry this instance wrote came to.
type Outcome = Result<Applied, StoreError>;

/// The instance's end of the log, shared by the writers and the follower.
struct Log {
    stream: String,
    /// Where instances share the attempts they record (see [`Registry::share_attempts`]).
    attempts_stream: String,
    /// This instance, as the attempts it shares name it, so that it skips its own.
    instance: String,
    /// The follower's confirm-mode channel while it is connected.
    publisher: watch::Sender<Option<Channel>>,
    /// Writers waiting for their entry to be applied, by entry id.
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    /// Whether this instance holds the snapshot token.
    leader: AtomicBool,
    /// What the store held that it had not taken from the log, for `catch_up` to publish.
    unlogged: Mutex<Contents>,
    /// Why the follower's last connection failed, while it is not connected.
    down: Mutex<Option<String>>,
}

impl Log {
    fn new(broker: &BrokerConfig, unlogged: Contents) -> Log {
        Log {
            stream: broker.registry_stream.clone(),
            attempts_stream: attempts_stream(broker),
            instance: uuid::Uuid::new_v4().to_string(),
            publisher: watch::Sender::new(None),
            waiting: Mutex::default(),
            leader: AtomicBool::new(false),
            unlogged: Mutex::new(unlogged),
            down: Mutex::new(None),
        }
    }

    /// Publishes one entry to the stream and waits for the broker's confirm, waiting up to
    /// [`APPLY_TIMEOUT`] for a connection first.
    async fn append(&self, entry: &Entry) -> Result<(), RegistryError> {
        self.append_all(std::slice::from_ref(entry)).await
    }

    /// Publishes `entries` in order, all before waiting for their confirms: a batch costs one
    /// round trip to the broker, not one per entry.
    async fn append_all(&self, entries: &[Entry]) -> Result<(), RegistryError> {
        let bodies = entries
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let channel = self.channel(APPLY_TIMEOUT).await?;
        let properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        publish(&channel, &self.stream, &bodies, properties).await
    }

    /// The follower's publishing channel, waiting up to `patience` for it.
    async fn channel(&self, patience: Duration) -> Result<Channel, RegistryError> {
        let mut connected = self.publisher.subscribe();
        let waited = tokio::time::timeout(patience, connected.wait_for(Option::is_some)).await;
        waited
            .ok()
            .and_then(|ready| ready.ok()?.clone())
            .ok_or_else(|| {
                let why = self
                    .down
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                RegistryError::Unavailable(match why {
                    Some(why) => format!("not connected to the broker: {why}"),
                    None => "not connected to the broker yet".to_owned(),
                })
            })
    }

    /// Registers a writer waiting for entry `id`.
    fn expect(&self, id: &str) -> oneshot::Receiver<Outcome> {
        let (sender, receiver) = oneshot::channel();
        self.waiting().insert(id.to_owned(), sender);
        receiver
    }

    /// Tells the writer of entry `id`, if it is this instance and still waiting, what applying
    /// it came to.
    fn applied(&self, id: &str, outcome: Outcome) {
        if let Some(sender) = self.waiting().remove(id) {
            let _ = sender.send(outcome);
        }
    }

    fn forget(&self, id: &str) {
        self.waiting().remove(id);
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// The registry as the admin API, the CLI and delivery change it: reads from the local store,
/// writes through the log. Cloning is cheap.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    writer: Writer,
}

#[derive(Clone)]
enum Writer {
    Log(Arc<Log>),
    /// Applies each change straight to the store: the stages' unit tests, which have no broker.
    #[cfg(test)]
    Local,
}

impl Registry {
    /// Starts following the log into `store`, until `stopped`; returns the registry and the
    /// follower's task. Call [`Registry::catch_up`] before relying on the store being current.
    pub fn follow(
        broker: &BrokerConfig,
        store: Store,
        stopped: &CancellationToken,
    ) -> Result<(Registry, JoinHandle<()>), RegistryError> {
        let log = Arc::new(Log::new(broker, store.unlogged()?));
        let follower = tokio::spawn(follower::follow(
            broker.clone(),
            log.clone(),
            store.clone(),
            stopped.clone(),
        ));
        let registry = Registry {
            store,
            writer: Writer::Log(log),
        };
        Ok((registry, follower))
    }

    /// Returns once the store has applied the log up to now (see the module docs), waiting for
    /// the broker as long as it takes unless `stopped`; `waiting` hears why each time it waits.
    ///
    /// A store that had never followed a log (an upgrade from a single-instance webhookd, or one
    /// filled before its first start) first publishes each webhook it holds as a create, and a
    /// store whose account tokens predate their going through the log publishes each as issued:
    /// that is how they reach the other instances. One another instance already logged under the
    /// same id stays as it was.
    pub async fn catch_up(
        &self,
        stopped: &CancellationToken,
        waiting: impl Fn(&str),
    ) -> Result<(), RegistryError> {
        #[allow(clippy::infallible_destructuring_match)] // `Local` exists in unit tests only
        let log = match &self.writer {
            Writer::Log(log) => log,
            #[cfg(test)]
            Writer::Local => return Ok(()),
        };
        let unlogged =
            std::mem::take(&mut *log.unlogged.lock().unwrap_or_else(PoisonError::into_inner));
        if unlogged != Contents::default() {
            info!(
                webhooks = unlogged.webhooks.len(),
                tokens = unlogged.tokens.len(),
                "publishing what this store holds but never took from the registry log"
            );
        }
        let changes: Vec<Change> = unlogged
            .webhooks
            .into_iter()
            .map(|webhook| Change::Create { webhook })
            .chain(
                unlogged
                    .tokens
                    .into_iter()
                    .map(|token| Change::IssueToken { token }),
            )
            .collect();
        for batch in changes.chunks(BATCH) {
            let entries: Vec<Entry> = batch
                .iter()
                .map(|change| Entry::Change {
                    id: uuid::Uuid::new_v4().to_string(),
                    change: change.clone(),
                })
                .collect();
            retry_unavailable(stopped, &waiting, || log.append_all(&entries)).await?;
        }
        self.store.mark_logged()?;
        let id = uuid::Uuid::new_v4().to_string();
        let applied = log.expect(&id);
        let marker = Entry::Marker { id: id.clone() };
        retry_unavailable(stopped, &waiting, || log.append(&marker)).await?;
        tokio::select! {
            () = stopped.cancelled() => Err(RegistryError::Unavailable("stopped".to_owned())),
            outcome = applied => match outcome {
                Ok(_) => {
                    info!("registry log applied up to now");
                    Ok(())
                }
                Err(_) => Err(RegistryError::Unavailable("the follower stopped".to_owned())),
            },
        }
    }

    /// A registry over `store` whose writes apply to it directly, for unit tests.
    #[cfg(test)]
    pub(crate) fn local(store: Store) -> Registry {
        Registry {
            store,
            writer: Writer::Local,
        }
    }

    /// The local copy, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Shares a batch of attempts this instance recorded ([`Store::persist_attempt_share`]) with
    /// the other instances, which add them to their attempt logs. Without a connection at hand
    /// the batch is not shared: attempts are diagnostics, and a delivery never waits for them.
    pub async fn share_attempts(&self, batch: Vec<u8>) -> Result<(), RegistryError> {
        #[allow(clippy::infallible_destructuring_match)] // `Local` exists in unit tests only
        let log = match &self.writer {
            Writer::Log(log) => log,
            #[cfg(test)]
            Writer::Local => return Ok(()),
        };
        let channel = log.channel(Duration::ZERO).await?;
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(INSTANCE_HEADER),
            AMQPValue::LongString(LongString::from(log.instance.as_str())),
        );
        let properties = BasicProperties::default().with_headers(headers);
        publish(&channel, &log.attempts_stream, &[batch], properties).await
    }

    /// Creates a webhook with a fresh id (see [`Change::create`]).
    pub async fn create(&self, new: NewWebhook) -> Result<Webhook, RegistryError> {
        let applied = self.submit(Change::create(new)?).await?;
        Ok(applied.into_webhook()?.ok_or(StoreError::Conflict)?)
    }

    /// Applies `patch`; `None` when there is no such webhook.
    pub async fn update(
        &self,
        id: &str,
        patch: &WebhookPatch,
    ) -> Result<Option<Webhook>, RegistryError> {
        let change = self.store.update_change(id, patch)?;
        self.replace(change).await
    }

    /// A new secret, the previous one signing for `grace`; `None` when there is no such webhook.
    pub async fn rotate_secret(
        &self,
        id: &str,
        secret: String,
        grace: Duration,
    ) -> Result<Option<Webhook>, RegistryError> {
        let change = self.store.rotation_change(id, secret, grace)?;
        self.replace(change).await
    }

    pub async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Option<Webhook>, RegistryError> {
        let change = self.store.enabled_change(id, enabled)?;
        self.replace(change).await
    }

    /// Disables the webhook for `reason` at `at`, as webhookd decided it (a 410, or
    /// `delivery.disable_after`); `None` when there is no such webhook.
    pub async fn disable(
        &self,
        id: &str,
        reason: &str,
        at: SystemTime,
    ) -> Result<Option<Webhook>, RegistryError> {
        let change = self.store.disable_change(id, reason, at)?;
        self.replace(change).await
    }

    /// `false` when there was no such webhook.
    pub async fn delete(&self, id: &str) -> Result<bool, RegistryError> {
        let applied = self.submit(Change::Delete { id: id.to_owned() }).await?;
        Ok(applied == Applied::Deleted)
    }

    /// Issues a fresh account token for `account_id` (see [`IssuedToken`]); the token is in the
    /// result alone, the log and the stores hold its hash.
    pub async fn issue_token(
        &self,
        account_id: u64,
        name: Option<String>,
    ) -> Result<IssuedToken, RegistryError> {
        let issued = IssuedToken::generate(account_id, name, now_rfc3339());
        match self
            .submit(Change::issue_token(issued.record.clone())?)
            .await?
        {
            Applied::Issued => Ok(issued),
            _ => Err(StoreError::Corrupt("a generated token id already exists".to_owned()).into()),
        }
    }

    /// Revokes the account token `id` on every instance; `false` when there was no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, RegistryError> {
        let applied = self
            .submit(Change::RevokeToken { id: id.to_owned() })
            .await?;
        Ok(applied == Applied::Deleted)
    }

    async fn replace(&self, change: Option<Change>) -> Result<Option<Webhook>, RegistryError> {
        match change {
            Some(change) => Ok(self.submit(change).await?.into_webhook()?),
            None => Ok(None),
        }
    }

    /// Writes `change` to the log and returns what applying it here did.
    async fn submit(&self, change: Change) -> Result<Applied, RegistryError> {
        #[allow(clippy::infallible_destructuring_match)] // `Local` exists in unit tests only
        let log = match &self.writer {
            Writer::Log(log) => log,
            #[cfg(test)]
            Writer::Local => return Ok(self.store.apply(&change)?),
        };
        let id = uuid::Uuid::new_v4().to_string();
        let applied = log.expect(&id);
        if let Err(error) = log
            .append(&Entry::Change {
                id: id.clone(),
                change,
            })
            .await
        {
            log.forget(&id);
            return Err(error);
        }
        match tokio::time::timeout(APPLY_TIMEOUT, applied).await {
            Ok(Ok(outcome)) => Ok(outcome?),
            Ok(Err(_)) => Err(RegistryError::Unavailable(
                "the registry follower stopped".to_owned(),
            )),
            Err(_) => {
                log.forget(&id);
                Err(RegistryError::NotApplied(APPLY_TIMEOUT))
            }
        }
    }
}

/// Publishes `bodies` to the stream `stream`, persistent, all before waiting for their confirms.
async fn publish(
    channel: &Channel,
    stream: &str,
    bodies: &[Vec<u8>],
    properties: BasicProperties,
) -> Result<(), RegistryError> {
    let unavailable = |error: lapin::Error| RegistryError::Unavailable(error.to_string());
    let mut confirms = Vec::with_capacity(bodies.len());
    for body in bodies {
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(stream),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.clone().with_delivery_mode(2),
            )
            .await
            .map_err(unavailable)?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await.map_err(unavailable)? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => {
                return Err(RegistryError::Unavailable(format!(
                    "the stream {stream} does not exist"
                )))
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                return Err(RegistryError::Unavailable(
                    "the broker did not confirm the change".to_owned(),
                ))
            }
        }
    }
    Ok(())
}

/// Runs `append` until the broker takes the entry, waiting a second after each failure to reach
/// it (told to `waiting`), unless `stopped`.
async fn retry_unavailable<F: std::future::Future<Output = Result<(), RegistryError>>>(
    stopped: &CancellationToken,
    waiting: &impl Fn(&str),
    mut append: impl FnMut() -> F,
) -> Result<(), RegistryError> {
    loop {
        match append().await {
            Err(RegistryError::Unavailable(why)) => {
                waiting(&why);
                tokio::select! {
                    () = stopped.cancelled() => return Err(RegistryError::Unavailable(why)),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            done => return done,
        }
    }
}
