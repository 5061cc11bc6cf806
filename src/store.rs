//! The webhook registry, in an embedded sled database, and each webhook's attempt log, in ring
//! files beside it.
//!
//! Every consumed event asks "which webhooks of account A want event E?", and the answer must
//! stay in microseconds with a million webhooks stored. sled is the durable
//! copy of the registry; the question is answered from memory, by the index and, in front of it,
//! the account cache. So is a retry job's "which webhook is W?": the job carries its event, and
//! the event names the account, which a webhook never changes.
//!
//! # Parts
//!
//! - `store.rs`, the face: the [`Store`] handle — opening it, the transactions that create,
//!   change and delete webhooks, and flushing.
//! - `store/webhook.rs`: the record — [`Webhook`], [`NewWebhook`], [`WebhookPatch`], their ids,
//!   masking, and the validation every write goes through.
//! - `store/index.rs`: the in-memory index every lookup is answered from, and the cache of
//!   decoded accounts in front of it (why, and what they cost, is written there).
//! - `store/token.rs`: account tokens — issuing one, applying their changes, and checking a
//!   presented one.
//! - `store/attempts.rs`: recording the attempt of every delivery — the buffer that takes them,
//!   and persisting it (why it is built so is written there); `store/attempt_log.rs` and
//!   `store/record.rs` below it: the attempt log's ring files and the encoding of one attempt.
//!
//! This file also holds what the parts share: [`StoreError`], [`Attempt`] and [`NewAttempt`].
//!
//! # Key scheme
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `by_account` | `account_id` (u64 big-endian) ++ webhook id bytes | the webhook, JSON |
//! | `by_id` | webhook id bytes | `account_id` (u64 big-endian, 8 bytes) |
//! | `tokens` | account token id bytes | the token's record (its hash, never the token), JSON |
//!
//! - `by_account` holds the webhook itself, so an account's webhooks are one prefix scan: the
//!   index is built from it by one scan at open, and kept current by one prefix scan per write.
//!   Big-endian makes the fixed 8-byte prefix sort numerically and never shared by two accounts
//!   (account 1 is not a prefix of 256).
//! - `by_id` is the secondary index for the admin API and the CLI (get, update, delete by id),
//!   not the delivery path; it stores only the account so a webhook has one copy and cannot
//!   disagree with itself.
//!
//! # Consistency and durability
//!
//! Writes that touch both `by_id` and `by_account` (create, update, delete, set_enabled) run in
//! one sled multi-tree transaction, so neither tree ever points at a missing record; update reads
//! the record inside its transaction, so it cannot bring back a webhook deleted meanwhile.
//! Attempts are written outside sled, and delete removes a webhook's attempt log after the
//! transaction that removes the webhook: they are diagnostics, and a crash between the two steps
//! at worst leaves an orphan log file under an id never reused. Persists run one at a time (two
//! appending to the same stored log would lose one's records); a read of the log waits for a
//! persist in progress, so it sees every attempt either buffered or stored; and delete removes
//! the log under the same lock, so a persist that found the webhook just before it was deleted
//! has appended by then, and cannot bring the log back after it.
//!
//! sled writes to disk every 500 ms by default. A change acknowledged to a user is flushed before
//! the call returns, so a crash right after "created" cannot forget the webhook. Attempt records
//! are diagnostics: a crash of the daemon loses at most the last second of them (the buffer), one
//! of the machine what the kernel had not written back, and `attempts` reads merge the buffer with
//! what is stored, so nothing recorded is ever hidden from a reader.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{
    abort, ConflictableTransactionResult, TransactionError, Transactional, TransactionalTree,
};

mod attempt_log;
mod attempts;
mod index;
mod record;
mod token;
mod webhook;

use self::attempt_log::{AttemptLog, Pending};
use self::attempts::{attempt_share, ATTEMPTS_DIR, LEGACY_ATTEMPT_TREES};
use self::index::{load_index, Cache, Index, JsonArray};
use self::webhook::{generate_id, validate};

pub use self::attempts::ATTEMPT_SHARES;
pub use self::index::IndexSize;
pub use self::token::{AccountToken, IssuedToken};
pub use self::webhook::{NewWebhook, Webhook, WebhookPatch};

const TREE_BY_ACCOUNT: &str = "by_account";
const TREE_BY_ID: &str = "by_id";
const TREE_TOKENS: &str = "tokens";
/// What the store knows about itself rather than about webhooks.
const TREE_META: &str = "meta";
/// In `meta`: the registry log offset of the next change to apply (u64 big-endian).
const LOG_POSITION: &[u8] = b"log_position";
/// In `meta`, present once the tokens stored before token changes went through the registry log
/// have been published to it (see [`Store::unlogged`]).
const TOKENS_LOGGED: &[u8] = b"tokens_logged";

/// How many attempts are kept per webhook: enough to see a pattern of failures in
/// `webhookd webhooks attempts ID`, small enough that a million webhooks stay a bounded store.
const ATTEMPTS_KEPT: usize = 100;

/// One attempt as the daemon records it: the fields of an [`Attempt`] before they are text. The
/// record is encoded straight from these (`store::record`), so recording one on the delivery path
/// neither formats the time as text nor allocates a string per field.
#[derive(Debug, Clone, Copy)]
pub struct NewAttempt<'a> {
    pub at: SystemTime,
    pub delivery_id: &'a str,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub latency_ms: u64,
    /// As [`Attempt::outcome`].
    pub outcome: &'a str,
}

/// One delivery attempt, kept for `webhookd webhooks attempts ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// RFC 3339 with milliseconds.
    pub at: String,
    pub delivery_id: String,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    /// `delivered`, `retry` or `dead:<reason>`.
    pub outcome: String,
}

#[cfg(test)]
impl Attempt {
    /// What the daemon would have handed over to record `self`; `at` must be RFC 3339.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn as_new(&self) -> NewAttempt<'_> {
        NewAttempt {
            at: humantime::parse_rfc3339(&self.at).unwrap(),
            delivery_id: &self.delivery_id,
            attempt: self.attempt,
            status: self.status,
            error: self.error.as_deref(),
            latency_ms: self.latency_ms,
            outcome: &self.outcome,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled holds an exclusive file lock; the usual cause is a running daemon, whose admin API is
    /// the way in while it runs.
    #[error("store at {} is in use by another process (is webhookd running?)", path.display())]
    Locked { path: PathBuf },
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "the webhook was changed at the same time by another request; read it again and retry"
    )]
    Conflict,
    #[error("corrupt store record: {0}")]
    Corrupt(String),
    #[error("attempt log {}: {source}", path.display())]
    AttemptLog { path: PathBuf, source: io::Error },
}

/// One change to the registry, fully decided by the instance that makes it (ids, secrets,
/// token hashes and timestamps included), so that every instance applying the same changes in the
/// same order holds the same registry. The registry log carries these as JSON, tagged by `op`;
/// variants are only ever added, so a log written by an earlier version still reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Create {
        webhook: Webhook,
    },
    /// The whole new record, applied only if the stored one is still the record `base` is the
    /// [`Webhook::revision`] of: two instances changing one webhook at once cannot silently undo
    /// each other, and a change cannot bring back a webhook deleted meanwhile.
    Replace {
        webhook: Webhook,
        base: String,
    },
    Delete {
        id: String,
    },
    /// An account token, as its record: its hash, never the token (see `store/token.rs`).
    IssueToken {
        token: AccountToken,
    },
    RevokeToken {
        id: String,
    },
}

impl Change {
    /// A new webhook from `new`: a fresh `wh_…` id and timestamps, validated.
    pub fn create(new: NewWebhook) -> Result<Change, StoreError> {
        let now = now_rfc3339();
        let webhook = Webhook {
            id: generate_id(),
            account_id: new.account_id,
            url: new.url,
            events: new.events,
            inbox_id: new.inbox_id,
            secret: new.secret,
            previous_secret: None,
            previous_secret_expires_at: None,
            enabled: new.enabled,
            disabled_reason: (!new.enabled).then(|| "manual".to_owned()),
            disabled_at: (!new.enabled).then(|| now.clone()),
            rate_limit: new.rate_limit,
            name: new.name,
            created_at: now.clone(),
            updated_at: now,
        };
        validate(&webhook)?;
        Ok(Change::Create { webhook })
    }
}

/// What applying a [`Change`] did.
#[allow(clippy::large_enum_variant)] // one per registry write, never held in bulk
#[derive(Debug, PartialEq)]
pub enum Applied {
    /// Created or replaced: the webhook as stored now.
    Webhook(Webhook),
    /// An account token stored as issued.
    Issued,
    /// A webhook deleted, or a token revoked.
    Deleted,
    /// The webhook a replace or delete names, or the token a revoke names, does not exist (any
    /// more).
    Missing,
    /// A create or issue of an id that exists, or a replace of a record changed since its base.
    Conflict,
}

impl Applied {
    /// The account whose index entry a write that did this must refresh.
    fn account(&self) -> Option<u64> {
        match self {
            Applied::Webhook(webhook) => Some(webhook.account_id),
            _ => None,
        }
    }

    /// The webhook a create or replace left, `None` when it found none, and an error for a
    /// conflict.
    pub fn into_webhook(self) -> Result<Option<Webhook>, StoreError> {
        match self {
            Applied::Webhook(webhook) => Ok(Some(webhook)),
            Applied::Missing | Applied::Deleted | Applied::Issued => Ok(None),
            Applied::Conflict => Err(StoreError::Conflict),
        }
    }
}

/// sled's page cache. Lookups never read sled (the index answers them), so it serves only the
/// open, writes and the admin API's reads; its default (1 GiB) would hold the registry in memory
/// a second time, and its misses are served from the OS page cache.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The registry. Cloning is cheap (sled handles are reference counted), so the admin API, the
/// consumer and every delivery task share one.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    by_account: sled::Tree,
    by_id: sled::Tree,
    /// Account tokens by id (`store/token.rs`).
    tokens: sled::Tree,
    meta: sled::Tree,
    log: Arc<AttemptLog>,
    /// Attempts recorded since their share was last persisted, by webhook, oldest first: share
    /// [`attempt_share`] of a webhook's id holds its attempts.
    buffered: Arc<[Mutex<HashMap<String, Pending>>; ATTEMPT_SHARES]>,
    /// Held by a persist, and by a read of the attempt log (see the module docs).
    persisting: Arc<Mutex<()>>,
    /// Every account's webhooks, as stored (see `store/index.rs`). Its write lock is held by every
    /// write of a webhook from before its transaction until the index and cache reflect it, so
    /// writes apply to the index in the order they committed.
    index: Arc<RwLock<Index>>,
    cache: Arc<Mutex<Cache>>,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and loads the index, which reads every
    /// webhook (seconds for a million). Only one process may hold it; a second one — or a second
    /// open in the same process, since sled's `flock` is per open file — gets
    /// [`StoreError::Locked`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => Store::with_db(db, path),
            Err(error) if is_lock_error(&error) => Err(StoreError::Locked {
                path: path.to_path_buf(),
            }),
            Err(error) => Err(error.into()),
        }
    }

    /// A store that lives in a temporary directory removed on drop, for tests.
    pub fn open_temporary() -> Result<Store, StoreError> {
        let config = sled::Config::new().temporary(true);
        // sled removes this directory, attempt logs and all, when the database is dropped.
        let path = config.get_path();
        Store::with_db(config.open()?, &path)
    }

    /// The store over `db`, whose directory is `path` (the attempt logs live in it too).
    fn with_db(db: sled::Db, path: &Path) -> Result<Store, StoreError> {
        for tree in LEGACY_ATTEMPT_TREES {
            db.drop_tree(tree)?;
        }
        let by_account = db.open_tree(TREE_BY_ACCOUNT)?;
        Ok(Store {
            index: Arc::new(RwLock::new(load_index(&by_account)?)),
            by_account,
            by_id: db.open_tree(TREE_BY_ID)?,
            tokens: db.open_tree(TREE_TOKENS)?,
            meta: db.open_tree(TREE_META)?,
            log: Arc::new(AttemptLog::open(path.join(ATTEMPTS_DIR))?),
            buffered: Arc::default(),
            persisting: Arc::default(),
            cache: Arc::default(),
            db,
        })
    }

    /// Creates a webhook in this store alone and flushes: for a store that is being filled
    /// before a daemon runs on it (tests, the benchmark). A daemon publishes what it finds
    /// stored but never logged to the registry log when it starts (see `registry`), so such a
    /// webhook still reaches every instance; everything else writes through the log.
    pub async fn create(&self, new: NewWebhook) -> Result<Webhook, StoreError> {
        let change = Change::create(new)?;
        let applied = self.apply(&change)?;
        self.flush().await?;
        applied
            .into_webhook()?
            .ok_or_else(|| StoreError::Corrupt("a generated webhook id already exists".to_owned()))
    }

    pub fn get(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        let Some(account) = self.by_id.get(id)? else {
            return Ok(None);
        };
        let key = account_key(decode_account(&account)?, id);
        // Missing here means a delete committed between the two reads: writes keep the trees in
        // step, so it is not corruption.
        self.by_account
            .get(key)?
            .map(|value| decode::<Webhook>(&value))
            .transpose()
    }

    /// The account's webhooks in id order, or every webhook ordered by account then id.
    pub fn list(&self, account_id: Option<u64>) -> Result<Vec<Webhook>, StoreError> {
        let entries = match account_id {
            Some(account_id) => self.by_account.scan_prefix(account_id.to_be_bytes()),
            None => self.by_account.iter(),
        };
        entries.map(|entry| decode::<Webhook>(&entry?.1)).collect()
    }

    /// One page of [`Store::list`]: at most `limit` webhooks after the cursor `after` (the
    /// [`Cursor`] of the last webhook of the previous page), and the cursor of the next page if
    /// there may be one. A page is one range read however many webhooks are stored.
    pub fn page(
        &self,
        account_id: Option<u64>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<Webhook>, Option<Cursor>), StoreError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        if let (Some(account), Some(cursor)) = (account_id, after) {
            if cursor.account_id != account {
                return Err(StoreError::Invalid {
                    field: "cursor",
                    message: format!("is a cursor of another listing than account {account}'s"),
                });
            }
        }
        let start = match after {
            Some(cursor) => Excluded(account_key(cursor.account_id, &cursor.webhook_id)),
            None => match account_id {
                Some(account) => Included(account.to_be_bytes().to_vec()),
                None => Unbounded,
            },
        };
        let entries = self.by_account.range::<Vec<u8>, _>((start, Unbounded));
        let mut page = Vec::with_capacity(limit.min(1000));
        for entry in entries {
            let (key, value) = entry?;
            if account_id.is_some_and(|account| !key.starts_with(&account.to_be_bytes())) {
                break;
            }
            if page.len() == limit {
                let next = page.last().map(|last: &Webhook| Cursor {
                    account_id: last.account_id,
                    webhook_id: last.id.clone(),
                });
                return Ok((page, next));
            }
            page.push(decode::<Webhook>(&value)?);
        }
        Ok((page, None))
    }

    /// Hot path: every webhook of the account that matches the event, from the account cache or
    /// else the index; never from sled.
    pub fn matching(
        &self,
        account_id: u64,
        event: &str,
        inbox_id: Option<u64>,
    ) -> Result<Vec<Arc<Webhook>>, StoreError> {
        Ok(self
            .account_webhooks(account_id)?
            .iter()
            .filter(|webhook| webhook.matches(event, inbox_id))
            .cloned()
            .collect())
    }

    /// Hot path for a retry job: the webhook `id` of `account_id` (the account of the event the
    /// job carries), from the account cache or else the index; never from sled. `None` once it
    /// was deleted. A webhook never changes account, so the event's account finds it.
    pub fn account_webhook(
        &self,
        account_id: u64,
        id: &str,
    ) -> Result<Option<Arc<Webhook>>, StoreError> {
        Ok(self
            .account_webhooks(account_id)?
            .iter()
            .find(|webhook| webhook.id == id)
            .cloned())
    }

    /// All of the account's webhooks, cached, or decoded from the index and then cached (see
    /// `store/index.rs`).
    fn account_webhooks(&self, account_id: u64) -> Result<Arc<[Arc<Webhook>]>, StoreError> {
        let generation = {
            let cache = self.cache();
            if let Some(webhooks) = cache.get(account_id) {
                return Ok(webhooks);
            }
            cache.generation
        };
        let webhooks = match self.index().get(&account_id) {
            Some(array) => decode::<Vec<Webhook>>(array)?
                .into_iter()
                .map(Arc::new)
                .collect(),
            None => Arc::from([]),
        };
        let mut cache = self.cache();
        if cache.generation == generation {
            cache.insert(account_id, Arc::clone(&webhooks));
        }
        Ok(webhooks)
    }

    /// Every write of a webhook goes through here: `transaction` runs over both trees under the
    /// index's write lock, and once it has committed, the account `account_of` names in its
    /// result (`None` when nothing changed) is read back into the index and dropped from the
    /// cache, before the lock is released. An error reading it back leaves the index behind sled
    /// for that account, so it is returned to the writer; it can only come from sled failing to
    /// read what it has just written.
    fn write<A>(
        &self,
        transaction: impl Fn(
            &(TransactionalTree, TransactionalTree),
        ) -> ConflictableTransactionResult<A, StoreError>,
        account_of: impl FnOnce(&A) -> Option<u64>,
    ) -> Result<A, StoreError> {
        let mut index = self.index_mut();
        let written = (&self.by_id, &self.by_account)
            .transaction(transaction)
            .map_err(from_transaction)?;
        let Some(account_id) = account_of(&written) else {
            return Ok(written);
        };
        let mut array = JsonArray::default();
        for entry in self.by_account.scan_prefix(account_id.to_be_bytes()) {
            array.push(&entry?.1);
        }
        match array.take() {
            Some(array) => index.insert(account_id, array),
            None => index.remove(&account_id),
        };
        let mut cache = self.cache();
        cache.generation += 1;
        cache.remove(account_id);
        Ok(written)
    }

    /// How much of the registry the index holds.
    pub fn index_size(&self) -> IndexSize {
        let index = self.index();
        IndexSize {
            accounts: index.len(),
            bytes: index.values().map(|array| array.len()).sum(),
        }
    }

    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The change that applies `patch` to the webhook as stored now, validated as a whole;
    /// `None` when there is no such webhook.
    pub fn update_change(
        &self,
        id: &str,
        patch: &WebhookPatch,
    ) -> Result<Option<Change>, StoreError> {
        let now = now_rfc3339();
        self.replacement(id, &now, |webhook| patch.apply(webhook, &now))
    }

    /// The change that disables the webhook for `reason` (`gone`, `failing`) at `at`, as
    /// webhookd decided it; `None` when there is no such webhook.
    pub fn disable_change(
        &self,
        id: &str,
        reason: &str,
        at: SystemTime,
    ) -> Result<Option<Change>, StoreError> {
        let at = humantime::format_rfc3339_seconds(at).to_string();
        self.replacement(id, &at, |webhook| webhook.disable(reason, &at))
    }

    /// The change that makes `secret` the webhook's secret, keeping the previous one signing for
    /// `grace` (see [`Webhook::previous_secret`]); `None` when there is no such webhook. A rotation
    /// during another's grace ends that grace: only the secret being replaced keeps signing.
    pub fn rotation_change(
        &self,
        id: &str,
        secret: String,
        grace: Duration,
    ) -> Result<Option<Change>, StoreError> {
        let now = SystemTime::now();
        // Config bounds the grace to a year; an overflow would only mean "no grace".
        let until = now.checked_add(grace).unwrap_or(now);
        self.replacement(id, &now_rfc3339(), |webhook| {
            webhook.rotate_to(secret.clone(), until);
        })
    }

    /// The change that enables or disables the webhook by hand (a disable records `manual`);
    /// webhookd's own disables are [`Store::disable_change`].
    pub fn enabled_change(&self, id: &str, enabled: bool) -> Result<Option<Change>, StoreError> {
        let patch = WebhookPatch {
            enabled: Some(enabled),
            ..WebhookPatch::default()
        };
        self.update_change(id, &patch)
    }

    /// A [`Change::Replace`] of the webhook as stored now by the result of `change`, updated at
    /// `now` (RFC 3339), validated; `None` when there is no such webhook.
    fn replacement(
        &self,
        id: &str,
        now: &str,
        change: impl FnOnce(&mut Webhook),
    ) -> Result<Option<Change>, StoreError> {
        let Some(current) = self.get(id)? else {
            return Ok(None);
        };
        let mut webhook = current.clone();
        change(&mut webhook);
        now.clone_into(&mut webhook.updated_at);
        validate(&webhook)?;
        Ok(Some(Change::Replace {
            base: current.revision()?,
            webhook,
        }))
    }

    /// Applies one change as every instance applies it, in the registry log's order. The same
    /// change applied twice leaves the store as once (an instance that crashed before recording
    /// how far it had applied reads some changes again): a create of an id that exists and a
    /// replace whose base is no longer current change nothing, a delete of a missing id neither.
    /// Not flushed: the log, not this copy, is what a write's caller was promised.
    pub fn apply(&self, change: &Change) -> Result<Applied, StoreError> {
        match change {
            Change::Create { webhook } => self.insert(webhook),
            Change::Replace { webhook, base } => self.replace(webhook, base),
            Change::Delete { id } => self.remove(id),
            Change::IssueToken { token } => self.issue_token(token),
            Change::RevokeToken { id } => self.revoke_token(id),
        }
    }

    fn insert(&self, webhook: &Webhook) -> Result<Applied, StoreError> {
        validate(webhook)?;
        let value = encode(webhook)?;
        let account = webhook.account_id.to_be_bytes();
        let key = account_key(webhook.account_id, &webhook.id);
        self.write(
            |(by_id, by_account)| {
                if by_id.get(webhook.id.as_bytes())?.is_some() {
                    return Ok(Applied::Conflict);
                }
                by_id.insert(webhook.id.as_bytes(), &account[..])?;
                by_account.insert(key.as_slice(), value.as_slice())?;
                Ok(Applied::Webhook(webhook.clone()))
            },
            Applied::account,
        )
    }

    fn replace(&self, webhook: &Webhook, base: &str) -> Result<Applied, StoreError> {
        validate(webhook)?;
        let value = encode(webhook)?;
        let id = webhook.id.as_str();
        self.write(
            |(by_id, by_account)| {
                let Some(account) = by_id.get(id)? else {
                    return Ok(Applied::Missing);
                };
                let account = decode_account(&account).or_else(abort)?;
                if account != webhook.account_id {
                    return abort(StoreError::Corrupt(format!(
                        "a change moves webhook {id} to another account"
                    )));
                }
                let key = account_key(account, id);
                let Some(stored) = by_account.get(key.as_slice())? else {
                    return abort(StoreError::Corrupt(format!(
                        "webhook {id} is indexed by id but missing from its account"
                    )));
                };
                if revision_of(&stored) != base {
                    return Ok(Applied::Conflict);
                }
                by_account.insert(key.as_slice(), value.as_slice())?;
                Ok(Applied::Webhook(webhook.clone()))
            },
            Applied::account,
        )
    }

    /// Removes the webhook and its attempt log.
    fn remove(&self, id: &str) -> Result<Applied, StoreError> {
        let deleted = self.write(
            |(by_id, by_account)| {
                let Some(account) = by_id.remove(id)? else {
                    return Ok(None);
                };
                let account = decode_account(&account).or_else(abort)?;
                by_account.remove(account_key(account, id))?;
                Ok(Some(account))
            },
            |account| *account,
        )?;
        if deleted.is_none() {
            return Ok(Applied::Missing);
        }
        // A delivery racing the delete may still buffer an attempt, and a persist may have
        // found the webhook just before the transaction: the log goes under the persist lock,
        // after any such persist has appended, and later persists skip the webhook.
        let _persisting = self.persisting();
        self.buffer(attempt_share(id)).remove(id);
        self.log.remove(id)?;
        Ok(Applied::Deleted)
    }

    /// Everything the registry log replicates, as stored now: what a snapshot carries.
    pub fn contents(&self) -> Result<Contents, StoreError> {
        Ok(Contents {
            webhooks: self.list(None)?,
            tokens: self.tokens()?,
        })
    }

    /// Replaces every webhook and token with `contents` (an instance rebuilding its copy from a
    /// snapshot of the log). Attempt logs of webhooks that are gone stay as orphans under ids
    /// never reused.
    pub fn replace_all(&self, contents: &Contents) -> Result<(), StoreError> {
        let mut index = self.index_mut();
        self.by_id.clear()?;
        self.by_account.clear()?;
        self.tokens.clear()?;
        for webhook in &contents.webhooks {
            self.by_id
                .insert(webhook.id.as_bytes(), &webhook.account_id.to_be_bytes()[..])?;
            self.by_account.insert(
                account_key(webhook.account_id, &webhook.id),
                encode(webhook)?,
            )?;
        }
        for token in &contents.tokens {
            self.tokens.insert(token.id.as_bytes(), encode(token)?)?;
        }
        *index = load_index(&self.by_account)?;
        self.cache().clear();
        Ok(())
    }

    /// What this store holds that it did not take from the registry log, for the daemon to
    /// publish when it starts: every webhook of a store that has never followed a log, and the
    /// tokens of one that has not published them yet (they were stored here alone before token
    /// changes went through the log). Once they are published, [`Store::mark_logged`].
    pub fn unlogged(&self) -> Result<Contents, StoreError> {
        Ok(Contents {
            webhooks: match self.log_position()? {
                Some(_) => Vec::new(),
                None => self.list(None)?,
            },
            tokens: match self.meta.get(TOKENS_LOGGED)? {
                Some(_) => Vec::new(),
                None => self.tokens()?,
            },
        })
    }

    /// Records that what [`Store::unlogged`] returned is in the log: from now on every token
    /// here came from it.
    pub fn mark_logged(&self) -> Result<(), StoreError> {
        self.meta.insert(TOKENS_LOGGED, &[][..])?;
        Ok(())
    }

    /// Where this copy stands in the registry log: the offset of the next change to apply, or
    /// `None` for a store that has never followed a log.
    pub fn log_position(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get(LOG_POSITION)?
            .and_then(|bytes| decode_u64(&bytes)))
    }

    pub fn set_log_position(&self, next: u64) -> Result<(), StoreError> {
        self.meta.insert(LOG_POSITION, &next.to_be_bytes()[..])?;
        Ok(())
    }

    /// Waits until everything written so far, buffered attempts included, is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.persist_attempts()?;
        self.db.flush_async().await?;
        Ok(())
    }
}

/// The writes of the store's own tests, each one change applied here and flushed, as a registry
/// log with this one instance would do.
#[cfg(test)]
impl Store {
    pub(crate) async fn update(
        &self,
        id: &str,
        patch: WebhookPatch,
    ) -> Result<Option<Webhook>, StoreError> {
        let change = self.update_change(id, &patch)?;
        self.apply_local(change).await
    }

    pub(crate) async fn rotate_secret(
        &self,
        id: &str,
        secret: String,
        grace: Duration,
    ) -> Result<Option<Webhook>, StoreError> {
        let change = self.rotation_change(id, secret, grace)?;
        self.apply_local(change).await
    }

    pub(crate) async fn set_enabled(
        &self,
        id: &str,
        enabled: bool,
    ) -> Result<Option<Webhook>, StoreError> {
        let change = self.enabled_change(id, enabled)?;
        self.apply_local(change).await
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let applied = self.apply(&Change::Delete { id: id.to_owned() })?;
        self.flush().await?;
        Ok(applied == Applied::Deleted)
    }

    async fn apply_local(&self, change: Option<Change>) -> Result<Option<Webhook>, StoreError> {
        let Some(change) = change else {
            return Ok(None);
        };
        let applied = self.apply(&change)?;
        self.flush().await?;
        applied.into_webhook()
    }
}

/// Everything the registry log replicates: every webhook and every account token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contents {
    pub webhooks: Vec<Webhook>,
    pub tokens: Vec<AccountToken>,
}

/// sled 0.34 reports a failed `flock` as `Error::Io` with `ErrorKind::Other` and a formatted
/// message (`could not acquire lock on …`, sled's `Config::try_lock`), dropping the original
/// `WouldBlock`. The variant and kind narrow it down; the message's fixed prefix is the only thing
/// left to tell it from other `Other` errors. The test `second_open_of_a_path_is_locked` pins this,
/// so a sled upgrade that changes it fails loudly.
fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.kind() == io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

fn from_transaction(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => StoreError::Sled(error),
    }
}

/// Where a page of webhooks ends: the last webhook it holds. Written as `ACCOUNT.WEBHOOK_ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub account_id: u64,
    pub webhook_id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.account_id, self.webhook_id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Cursor, StoreError> {
        let invalid = || StoreError::Invalid {
            field: "cursor",
            message: format!("expected the next_cursor of a previous page, got {text:?}"),
        };
        let (account, id) = text.split_once('.').ok_or_else(invalid)?;
        Ok(Cursor {
            account_id: account.parse().map_err(|_| invalid())?,
            webhook_id: id.to_owned(),
        })
    }
}

/// The revision of a stored record (see [`Webhook::revision`]).
fn revision_of(stored: &[u8]) -> String {
    hex::encode(&Sha256::digest(stored)[..16])
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn account_key(account_id: u64, webhook_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + webhook_id.len());
    key.extend_from_slice(&account_id.to_be_bytes());
    key.extend_from_slice(webhook_id.as_bytes());
    key
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn decode_account(bytes: &[u8]) -> Result<u64, StoreError> {
    decode_u64(bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("account id of {} bytes", bytes.len())))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|error| StoreError::Corrupt(error.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt(error.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) fn new_webhook(account_id: u64) -> NewWebhook {
        NewWebhook {
            account_id,
            url: "https://example.com/hook".to_owned(),
            ..NewWebhook::default()
        }
    }

    pub(super) fn invalid_field(result: Result<Webhook, StoreError>) -> &'static str {
        match result {
            Err(StoreError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// A webhook with every optional field set, so round trips and patches see them all.
    fn every_field_set(account_id: u64) -> NewWebhook {
        NewWebhook {
            events: vec!["message_created".to_owned()],
            inbox_id: Some(7),
            secret: Some("whsec_0123456789abcdef".to_owned()),
            name: Some("crm".to_owned()),
            ..new_webhook(account_id)
        }
    }

    #[tokio::test]
    async fn pages_cover_every_webhook_once_in_order_and_stay_in_their_account() {
        let store = Store::open_temporary().unwrap();
        for account in [1, 2, 256] {
            for _ in 0..5 {
                store.create(new_webhook(account)).await.unwrap();
            }
        }
        for (account, expected) in [(None, 15), (Some(2), 5), (Some(3), 0)] {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let (page, next) = store.page(account, cursor.as_ref(), 2).unwrap();
                assert!(page.len() <= 2);
                seen.extend(page.into_iter().map(|w| (w.account_id, w.id)));
                match next {
                    Some(next) => cursor = Some(next.to_string().parse::<Cursor>().unwrap()),
                    None => break,
                }
            }
            let listed: Vec<_> = store
                .list(account)
                .unwrap()
                .into_iter()
                .map(|w| (w.account_id, w.id))
                .collect();
            assert_eq!(seen, listed);
            assert_eq!(seen.len(), expected);
        }
        assert!("nonsense".parse::<Cursor>().is_err());
        let elsewhere = Cursor {
            account_id: 1,
            webhook_id: "wh_x".into(),
        };
        assert!(store.page(Some(2), Some(&elsewhere), 2).is_err());
    }

    #[tokio::test]
    async fn crud_round_trip() {
        let store = Store::open_temporary().unwrap();
        let created = store.create(every_field_set(42)).await.unwrap();
        assert!(created.id.starts_with("wh_"));
        assert_eq!(created.id.len(), 23);
        assert!(created.id[3..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(created.account_id, 42);
        assert_eq!(created.created_at, created.updated_at);
        assert!(humantime::parse_rfc3339(&created.created_at).is_ok());

        assert_eq!(store.get(&created.id).unwrap(), Some(created.clone()));

        let updated = store
            .update(
                &created.id,
                WebhookPatch {
                    url: Some("http://example.org/other".to_owned()),
                    ..WebhookPatch::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(updated.url, "http://example.org/other");
        assert_eq!(store.get(&created.id).unwrap(), Some(updated.clone()));

        let disabled = store
            .set_enabled(&created.id, false)
            .await
            .unwrap()
            .unwrap();
        assert!(!disabled.enabled);
        assert!(!store.get(&created.id).unwrap().unwrap().enabled);

        assert!(store.delete(&created.id).await.unwrap());
        assert_eq!(store.get(&created.id).unwrap(), None);
        assert!(store.list(Some(42)).unwrap().is_empty());
        assert!(!store.delete(&created.id).await.unwrap());
        assert_eq!(
            store
                .update("wh_missing", WebhookPatch::default())
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.set_enabled("wh_missing", true).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_reopened_store_keeps_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let created = {
            let store = Store::open(&path).unwrap();
            store.create(new_webhook(1)).await.unwrap()
        };
        let store = reopen(&path);
        assert_eq!(store.get(&created.id).unwrap(), Some(created));
    }

    #[tokio::test]
    async fn patch_changes_only_present_fields_and_null_clears() {
        let store = Store::open_temporary().unwrap();
        let created = store.create(every_field_set(1)).await.unwrap();

        let untouched: WebhookPatch = serde_json::from_str("{}").unwrap();
        let same = store.update(&created.id, untouched).await.unwrap().unwrap();
        assert_eq!(
            Webhook {
                updated_at: created.updated_at.clone(),
                ..same
            },
            created
        );

        let patch: WebhookPatch =
            serde_json::from_str(r#"{"inbox_id": null, "name": null, "events": ["*"]}"#).unwrap();
        assert_eq!(patch.inbox_id, Some(None));
        assert_eq!(patch.secret, None);
        let cleared = store.update(&created.id, patch).await.unwrap().unwrap();
        assert_eq!(cleared.inbox_id, None);
        assert_eq!(cleared.name, None);
        assert_eq!(cleared.events, ["*"]);
        assert_eq!(cleared.secret, created.secret, "absent secret is unchanged");
        assert_eq!(cleared.url, created.url);

        let patch: WebhookPatch = serde_json::from_str(
            r#"{"inbox_id": 9, "name": "x", "secret": null, "enabled": false}"#,
        )
        .unwrap();
        let set = store.update(&created.id, patch).await.unwrap().unwrap();
        assert_eq!(set.inbox_id, Some(9));
        assert_eq!(set.name.as_deref(), Some("x"));
        assert_eq!(set.secret, None);
        assert!(!set.enabled);
        assert_eq!(store.get(&created.id).unwrap(), Some(set));
    }

    #[tokio::test]
    async fn rotation_keeps_the_previous_secret_signing_for_the_grace_only() {
        let store = Store::open_temporary().unwrap();
        let old = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0";
        let new = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0";
        let created = store
            .create(NewWebhook {
                secret: Some(old.to_owned()),
                ..new_webhook(1)
            })
            .await
            .unwrap();
        let grace = Duration::from_secs(3600);
        let before = SystemTime::now();
        let rotated = store
            .rotate_secret(&created.id, new.to_owned(), grace)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(store.get(&created.id).unwrap().as_ref(), Some(&rotated));
        assert_eq!(rotated.secret.as_deref(), Some(new));
        assert_eq!(rotated.previous_secret.as_deref(), Some(old));
        let until = rotated
            .previous_secret_expires_at
            .as_deref()
            .and_then(|at| humantime::parse_rfc3339(at).ok())
            .unwrap();
        assert!(
            until >= before + grace - Duration::from_millis(1),
            "{until:?}"
        );

        let during = rotated.signing(until - Duration::from_millis(1));
        assert_eq!((during.current, during.previous), (Some(new), Some(old)));
        let after = rotated.signing(until);
        assert_eq!((after.current, after.previous), (Some(new), None));

        let masked = rotated.masked();
        assert_eq!(masked.secret.as_deref(), Some("whsec_****"));
        assert_eq!(masked.previous_secret.as_deref(), Some("whsec_****"));
        assert_eq!(
            masked.previous_secret_expires_at,
            rotated.previous_secret_expires_at
        );

        // Setting a secret outright ends the grace at once.
        let patch = WebhookPatch {
            secret: Some(Some("whsec_c2V0LWRpcmVjdGx5LXNlY3JldA==".to_owned())),
            ..WebhookPatch::default()
        };
        let set = store.update(&created.id, patch).await.unwrap().unwrap();
        assert_eq!(set.previous_secret, None);
        assert_eq!(set.previous_secret_expires_at, None);
    }

    #[tokio::test]
    async fn an_ended_grace_is_not_shown_and_a_first_rotation_keeps_nothing() {
        let store = Store::open_temporary().unwrap();
        let unsigned = store.create(new_webhook(1)).await.unwrap();
        let first = store
            .rotate_secret(
                &unsigned.id,
                "whsec_Zmlyc3Qtc2VjcmV0LWV2ZXI=".to_owned(),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(first.secret.is_some());
        assert_eq!(first.previous_secret, None, "nothing to keep signing");
        assert_eq!(first.previous_secret_expires_at, None);

        let ended = store
            .rotate_secret(
                &unsigned.id,
                "whsec_c2Vjb25kLXNlY3JldC1ldmVy".to_owned(),
                Duration::ZERO,
            )
            .await
            .unwrap()
            .unwrap();
        assert!(
            ended.previous_secret.is_some(),
            "stored until the next change"
        );
        let masked = ended.masked();
        assert_eq!(masked.previous_secret, None);
        assert_eq!(masked.previous_secret_expires_at, None);
        assert_eq!(ended.signing(SystemTime::now()).previous, None);
        assert_eq!(
            store
                .rotate_secret("wh_missing", "whsec_eA==".to_owned(), Duration::ZERO)
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn an_invalid_patch_changes_nothing() {
        let store = Store::open_temporary().unwrap();
        let created = store.create(new_webhook(1)).await.unwrap();
        let patch = WebhookPatch {
            url: Some("ftp://example.com/".to_owned()),
            name: Some(Some("renamed".to_owned())),
            ..WebhookPatch::default()
        };
        let result = store.update(&created.id, patch).await.map(Option::unwrap);
        assert_eq!(invalid_field(result), "url");
        assert_eq!(store.get(&created.id).unwrap(), Some(created));
    }

    #[tokio::test]
    async fn list_by_account_or_all() {
        let store = Store::open_temporary().unwrap();
        let a = store.create(new_webhook(1)).await.unwrap();
        let b = store.create(new_webhook(2)).await.unwrap();
        let c = store.create(new_webhook(1)).await.unwrap();

        let mut one: Vec<String> = store
            .list(Some(1))
            .unwrap()
            .into_iter()
            .map(|w| w.id)
            .collect();
        one.sort();
        let mut expected = vec![a.id.clone(), c.id.clone()];
        expected.sort();
        assert_eq!(one, expected);

        let all = store.list(None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().filter(|w| w.id == b.id).count(), 1);
        assert!(
            all.windows(2).all(|w| w[0].account_id <= w[1].account_id),
            "ordered by account"
        );
        assert!(store.list(Some(3)).unwrap().is_empty());
    }

    #[tokio::test]
    async fn accounts_never_leak_into_each_others_prefix_scan() {
        let store = Store::open_temporary().unwrap();
        // Little-endian or decimal keys would make some of these share a prefix.
        let accounts = [1u64, 256, 65_536, 1 << 56, 255, 10, 100, u64::MAX];
        for account in accounts {
            store.create(new_webhook(account)).await.unwrap();
        }
        for account in accounts {
            let listed = store.list(Some(account)).unwrap();
            assert_eq!(listed.len(), 1, "account {account}");
            assert_eq!(listed[0].account_id, account);
            let matched = store.matching(account, "message_created", None).unwrap();
            assert_eq!(matched.len(), 1, "account {account}");
            assert_eq!(matched[0].account_id, account);
        }
    }

    #[tokio::test]
    async fn matching_filters_the_accounts_webhooks() {
        let store = Store::open_temporary().unwrap();
        let star = store.create(new_webhook(5)).await.unwrap();
        let named = store
            .create(NewWebhook {
                events: vec!["message_created".to_owned()],
                ..new_webhook(5)
            })
            .await
            .unwrap();
        let other_inbox = store
            .create(NewWebhook {
                inbox_id: Some(99),
                ..new_webhook(5)
            })
            .await
            .unwrap();
        store
            .create(NewWebhook {
                enabled: false,
                ..new_webhook(5)
            })
            .await
            .unwrap();
        store.create(new_webhook(6)).await.unwrap();

        let mut ids: Vec<String> = store
            .matching(5, "message_created", Some(1))
            .unwrap()
            .iter()
            .map(|w| w.id.clone())
            .collect();
        ids.sort();
        let mut expected = vec![star.id.clone(), named.id];
        expected.sort();
        assert_eq!(ids, expected);

        let mut ids: Vec<String> = store
            .matching(5, "contact_created", Some(99))
            .unwrap()
            .iter()
            .map(|w| w.id.clone())
            .collect();
        ids.sort();
        let mut expected = vec![star.id, other_inbox.id];
        expected.sort();
        assert_eq!(ids, expected);
        assert!(store
            .matching(7, "message_created", None)
            .unwrap()
            .is_empty());
    }

    fn token(account_id: u64) -> AccountToken {
        IssuedToken::generate(account_id, None, now_rfc3339()).record
    }

    #[tokio::test]
    async fn unlogged_is_what_a_store_holds_that_it_did_not_take_from_the_log() {
        let store = Store::open_temporary().unwrap();
        let webhook = store.create(new_webhook(1)).await.unwrap();
        let token = token(1);
        store
            .apply(&Change::issue_token(token.clone()).unwrap())
            .unwrap();
        // A store from before the log: all of it.
        let everything = Contents {
            webhooks: vec![webhook],
            tokens: vec![token.clone()],
        };
        assert_eq!(store.unlogged().unwrap(), everything);
        // One that followed the log before tokens went through it: its tokens.
        store.set_log_position(7).unwrap();
        let tokens = Contents {
            webhooks: Vec::new(),
            tokens: vec![token],
        };
        assert_eq!(store.unlogged().unwrap(), tokens);
        store.mark_logged().unwrap();
        assert_eq!(store.unlogged().unwrap(), Contents::default());
    }

    #[tokio::test]
    async fn replace_all_leaves_exactly_the_webhooks_and_tokens_given() {
        let store = Store::open_temporary().unwrap();
        store.create(new_webhook(1)).await.unwrap();
        store
            .apply(&Change::issue_token(token(1)).unwrap())
            .unwrap();
        let source = Store::open_temporary().unwrap();
        let kept = source.create(new_webhook(2)).await.unwrap();
        let kept_token = IssuedToken::generate(2, None, now_rfc3339());
        source
            .apply(&Change::issue_token(kept_token.record.clone()).unwrap())
            .unwrap();

        store.replace_all(&source.contents().unwrap()).unwrap();
        assert_eq!(store.contents().unwrap(), source.contents().unwrap());
        assert!(store.list(Some(1)).unwrap().is_empty());
        assert_eq!(store.matching(2, "message_created", None).unwrap().len(), 1);
        assert_eq!(store.get(&kept.id).unwrap(), Some(kept));
        assert_eq!(store.token_account(&kept_token.token).unwrap(), Some(2));
    }

    /// Opens the store at `path` again once the dropped handle has let go of its lock: sled's
    /// background threads release it shortly after the last handle is dropped, not at once.
    pub(super) fn reopen(path: &Path) -> Store {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened => return opened.unwrap(),
            }
        }
    }

    #[test]
    fn second_open_of_a_path_is_locked() {
        // sled locks with flock on its own file handle, so even a second open in the same
        // process is refused — which lets this test stand in for a second process.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let _first = Store::open(&path).unwrap();
        match Store::open(&path) {
            Err(error @ StoreError::Locked { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains("in use by another process"), "{message}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn store_futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let store = Store::open_temporary().unwrap();
        assert_send(store.create(new_webhook(1)));
        assert_send(store.update("wh_x", WebhookPatch::default()));
        assert_send(store.delete("wh_x"));
        assert_send(store.set_enabled("wh_x", true));
        assert_send(store.rotate_secret("wh_x", String::new(), Duration::ZERO));
        assert_send(store.flush());
    }
}
