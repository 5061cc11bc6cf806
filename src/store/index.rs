//! The in-memory index of the registry, and the cache of decoded accounts in front of it.
//!
//! The store holds every account's webhooks in memory, as the JSON values sled stores, joined
//! into one array per account: a lookup is one hash lookup and one decode, and never reads sled.
//! Reading sled was what set the lookup's tail. Lookups spread evenly over the benchmark's
//! 250,000 accounts mostly missed sled's page cache (the store takes about 750 MiB on disk,
//! against a `CACHE_BYTES` of 16 MiB), and a miss paid for reading the leaf and for freeing the
//! ones sled paged out, in batches of 64 deferred frees (its epoch-based reclamation): a p99
//! about twenty times the index's. Neither a compact binary value nor a much larger sled cache
//! brought it within the target (`benches/RESULTS.md`, "The registry in memory", has the runs).
//!
//! - What it costs is memory that grows with the registry: the stored JSON, about 300 bytes for
//!   a webhook like the benchmark's (300 MiB for a million), plus a hash entry per account; and
//!   an open reads the whole of `by_account` (3.5–5 s for a million webhooks). The daemon on the
//!   benchmark's million webhooks peaked at 465 MiB resident, against 114 MiB without the index.
//!   The values are kept encoded, not decoded, because a decoded webhook takes about 750 bytes;
//!   each account's array is copied out at its exact size, because growing it in place while
//!   loading took the peak to 603 MiB.
//! - It is never behind sled. Every write of a webhook takes the index's write lock before its
//!   transaction and keeps it until the account has been read back into the index, so writes
//!   reach the index in the order they committed, and a lookup after a write has returned sees
//!   it.
//!
//! # The account cache
//!
//! Decoding an account's four webhooks takes about 3.5 µs and a dozen allocations per webhook,
//! and [`Store::matching`](super::Store::matching) runs for every consumed event. So the store
//! also keeps the webhooks of the accounts it looked up, decoded once and shared (`Arc`): a hit
//! is one hash lookup under a mutex, about 0.4 µs, and deliveries borrow the cached webhook
//! rather than a copy. Accounts without webhooks are cached too.
//!
//! - It is bounded by `CACHE_ENTRIES`, an account counting as its number of webhooks (at
//!   least one), so neither many small accounts nor a few large ones grow it without limit; when
//!   full, one miss in 16 replaces random accounts (`Cache::insert` says why).
//! - It is never stale. Every write of a webhook (create, update, secret rotation, enabling or
//!   disabling, delete) drops its account and bumps a generation counter once the index has it.
//!   A lookup that misses notes the generation before it reads the index, and caches what it read
//!   only if the generation is still the same, checked under the same mutex: a read that may
//!   predate a write is returned but never cached, so every lookup that starts after a write has
//!   returned sees it.
//! - Only this process writes: sled locks the database for the one process that opened it (see
//!   [`Store::open`](super::Store::open)), so no other process can change a webhook behind the
//!   index's or the cache's back; the CLI opens the store itself only when no daemon holds it.
//!
//! This file holds the structures; the store's `write` (every write of a webhook) and
//! `account_webhooks` (every lookup), in `store.rs`, keep the promises above.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rand::Rng;

use super::webhook::Webhook;
use super::{decode_account, StoreError};

/// The most the account cache holds, an account counting as its number of webhooks (at least
/// one). An account with one webhook like the benchmark's takes about 750 bytes cached
/// (measured), so a full cache is about 12 MiB: room for the active accounts of a large
/// installation, while the daemon's memory stays bounded however many accounts it serves.
const CACHE_ENTRIES: usize = 16_384;

/// Once the account cache is full, one miss in this many replaces a cached account
/// (`Cache::insert` says why).
const CACHE_ADMISSION: u32 = 16;

/// Account → its webhooks' stored JSON values, joined into one JSON array.
pub(super) type Index = HashMap<u64, Box<[u8]>>;

/// Builds one account's entry of the [`Index`] from its stored values, in key order.
#[derive(Default)]
pub(super) struct JsonArray(Vec<u8>);

impl JsonArray {
    pub(super) fn push(&mut self, value: &[u8]) {
        self.0.push(if self.0.is_empty() { b'[' } else { b',' });
        self.0.extend_from_slice(value);
    }

    /// The array, allocated at its exact size, or `None` when nothing was pushed (an account
    /// without webhooks has no entry); leaves the builder empty for the next account.
    pub(super) fn take(&mut self) -> Option<Box<[u8]>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.push(b']');
        let array = Box::from(self.0.as_slice());
        self.0.clear();
        Some(array)
    }
}

/// Reads every account's webhooks from `by_account` into an [`Index`]: one pass in key order, in
/// which each account's values are adjacent, copied into one exactly sized array per account and
/// not decoded.
pub(super) fn load_index(by_account: &sled::Tree) -> Result<Index, StoreError> {
    let mut index = Index::new();
    let mut array = JsonArray::default();
    let mut current = None;
    for entry in by_account.iter() {
        let (key, value) = entry?;
        let account = key.get(..8).map_or_else(
            || {
                Err(StoreError::Corrupt(format!(
                    "account key of {} bytes",
                    key.len()
                )))
            },
            decode_account,
        )?;
        if current != Some(account) {
            if let (Some(previous), Some(done)) = (current, array.take()) {
                index.insert(previous, done);
            }
            current = Some(account);
        }
        array.push(&value);
    }
    if let (Some(last), Some(done)) = (current, array.take()) {
        index.insert(last, done);
    }
    Ok(index)
}

/// How much the registry holds in memory, for the daemon's start-up log and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSize {
    /// Accounts with at least one webhook.
    pub accounts: usize,
    /// The stored JSON of their webhooks.
    pub bytes: usize,
}

/// Recently looked-up accounts' webhooks (see the module docs).
#[derive(Default)]
pub(super) struct Cache {
    /// Bumped by every write of a webhook; a lookup caches what it read only if no write came
    /// between its miss and its insert. One counter for all accounts: writes are rare, and an
    /// insert skipped needlessly only costs the next lookup of that account a sled read.
    pub(super) generation: u64,
    accounts: HashMap<u64, Cached>,
    /// The cached accounts, in no particular order, so that a random one is found in O(1).
    keys: Vec<u64>,
    /// The entries held, as `CACHE_ENTRIES` counts them.
    entries: usize,
}

struct Cached {
    webhooks: Arc<[Arc<Webhook>]>,
    /// Where the account is in `Cache::keys`.
    slot: usize,
}

/// Counts, not contents: a `{:?}` of the store should not dump thousands of webhooks.
impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("generation", &self.generation)
            .field("accounts", &self.accounts.len())
            .field("entries", &self.entries)
            .finish()
    }
}

impl Cache {
    pub(super) fn get(&self, account_id: u64) -> Option<Arc<[Arc<Webhook>]>> {
        self.accounts
            .get(&account_id)
            .map(|cached| Arc::clone(&cached.webhooks))
    }

    /// Caches an account's webhooks; once the cache is full, only one miss in
    /// `CACHE_ADMISSION`, evicting random accounts until they fit.
    ///
    /// Random eviction rather than least recently used, because LRU would cost a list update on
    /// every hit, under the mutex every event takes; and rather than clearing a full cache,
    /// because clearing drops up to `CACHE_ENTRIES` webhooks at once on one event's path and
    /// forgets the hot accounts with the cold. Sampled admission because replacing an account is
    /// not free: freeing the evicted webhooks, long out of the CPU's caches, cost about 10 µs per
    /// miss when lookups were spread over far more accounts than fit (measured with a million
    /// webhooks, where a miss costs about 40 µs). Admitting one miss in 16 cuts that to well
    /// under a microsecond, and costs nothing in hits: the cache stays full of accounts that were
    /// looked up either way, and an account looked up often is admitted after a few misses.
    pub(super) fn insert(&mut self, account_id: u64, webhooks: Arc<[Arc<Webhook>]>) {
        let entries = cost(&webhooks);
        // Two lookups that missed together read the same thing: the first one's insert stands.
        if entries > CACHE_ENTRIES || self.accounts.contains_key(&account_id) {
            return;
        }
        let mut rng = rand::rng();
        if self.entries + entries > CACHE_ENTRIES && !rng.random_ratio(1, CACHE_ADMISSION) {
            return;
        }
        while self.entries + entries > CACHE_ENTRIES {
            let victim = self.keys[rng.random_range(0..self.keys.len())];
            self.remove(victim);
        }
        self.accounts.insert(
            account_id,
            Cached {
                webhooks,
                slot: self.keys.len(),
            },
        );
        self.keys.push(account_id);
        self.entries += entries;
    }

    /// Forgets every account, and counts as a write (see `generation`).
    pub(super) fn clear(&mut self) {
        *self = Cache {
            generation: self.generation + 1,
            ..Cache::default()
        };
    }

    pub(super) fn remove(&mut self, account_id: u64) {
        let Some(removed) = self.accounts.remove(&account_id) else {
            return;
        };
        self.keys.swap_remove(removed.slot);
        if let Some(moved) = self.keys.get(removed.slot) {
            if let Some(cached) = self.accounts.get_mut(moved) {
                cached.slot = removed.slot;
            }
        }
        self.entries -= cost(&removed.webhooks);
    }
}

/// What an account's webhooks count for against `CACHE_ENTRIES`.
fn cost(webhooks: &[Arc<Webhook>]) -> usize {
    webhooks.len().max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{new_webhook, reopen};
    use crate::store::{account_key, encode, Store, WebhookPatch};

    #[tokio::test]
    async fn a_reopened_store_answers_lookups_from_the_index_it_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let (mut first, other) = {
            let store = Store::open(&path).unwrap();
            let a = store.create(new_webhook(1)).await.unwrap();
            let b = store.create(new_webhook(1)).await.unwrap();
            let c = store.create(new_webhook(256)).await.unwrap();
            let gone = store.create(new_webhook(3)).await.unwrap();
            assert!(store.delete(&gone.id).await.unwrap());
            (vec![a.id, b.id], c.id)
        };
        let store = reopen(&path);
        let size = store.index_size();
        assert_eq!(size.accounts, 2, "account 3 has no webhook left");
        let stored: usize = store
            .list(None)
            .unwrap()
            .iter()
            .map(|webhook| encode(webhook).unwrap().len())
            .sum();
        // Each account's values in one array: brackets and commas add a byte per webhook and
        // one per account.
        assert_eq!(size.bytes, stored + 3 + 2);
        first.sort();
        assert_eq!(matching_ids(&store), first);
        let matched = store.matching(256, "message_created", None).unwrap();
        assert_eq!(matched.len(), 1);
        assert_eq!(matched[0].id, other);
        assert!(store
            .matching(3, "message_created", None)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_retry_jobs_webhook_is_found_in_its_events_account_without_reading_sled() {
        let store = Store::open_temporary().unwrap();
        let kept = store.create(new_webhook(1)).await.unwrap();
        let neighbour = store.create(new_webhook(1)).await.unwrap();
        let elsewhere = store.create(new_webhook(2)).await.unwrap();
        assert!(store.delete(&neighbour.id).await.unwrap());
        let patch: WebhookPatch = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        store.update(&kept.id, patch).await.unwrap();
        // Behind the store's back: a lookup that read sled would now find nothing.
        store.by_id.clear().unwrap();
        store.by_account.clear().unwrap();

        let found = store.account_webhook(1, &kept.id).unwrap().unwrap();
        assert_eq!(found.id, kept.id);
        assert!(!found.enabled, "the update reached the index");
        assert!(store.account_webhook(1, &neighbour.id).unwrap().is_none());
        assert!(store.account_webhook(1, &elsewhere.id).unwrap().is_none());
        assert_eq!(
            store.account_webhook(2, &elsewhere.id).unwrap().unwrap().id,
            elsewhere.id
        );
        assert!(store.get(&kept.id).unwrap().is_none(), "sled was emptied");
    }

    /// Account 1's webhooks that match `message_created`, by id.
    fn matching_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .matching(1, "message_created", None)
            .unwrap()
            .iter()
            .map(|webhook| webhook.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The cache's own invariants: within its bound, and its three views of the accounts agree.
    fn check_cache(store: &Store) {
        let cache = store.cache();
        assert!(cache.entries <= CACHE_ENTRIES, "{cache:?}");
        assert_eq!(cache.keys.len(), cache.accounts.len());
        let counted: usize = cache.accounts.values().map(|c| cost(&c.webhooks)).sum();
        assert_eq!(cache.entries, counted);
        for (slot, account) in cache.keys.iter().enumerate() {
            assert_eq!(cache.accounts[account].slot, slot);
        }
    }

    #[tokio::test]
    async fn a_cached_account_sees_every_write_at_once() {
        let store = Store::open_temporary().unwrap();
        store.create(new_webhook(2)).await.unwrap();
        assert!(
            matching_ids(&store).is_empty(),
            "an empty account is cached too"
        );

        let a = store.create(new_webhook(1)).await.unwrap();
        assert_eq!(matching_ids(&store), [a.id.as_str()], "create");
        let first = store.matching(1, "message_created", None).unwrap();
        let again = store.matching(1, "message_created", None).unwrap();
        assert!(Arc::ptr_eq(&first[0], &again[0]), "served from the cache");

        let b = store.create(new_webhook(1)).await.unwrap();
        let mut both = vec![a.id.clone(), b.id.clone()];
        both.sort();
        assert_eq!(matching_ids(&store), both, "second create");

        let patch = WebhookPatch {
            events: Some(vec!["contact_created".to_owned()]),
            ..WebhookPatch::default()
        };
        store.update(&a.id, patch).await.unwrap().unwrap();
        assert_eq!(matching_ids(&store), [b.id.as_str()], "update");

        store.set_enabled(&b.id, false).await.unwrap().unwrap();
        assert!(matching_ids(&store).is_empty(), "disable");
        store.set_enabled(&b.id, true).await.unwrap().unwrap();
        assert_eq!(matching_ids(&store), [b.id.as_str()], "enable");

        let rotated = store
            .rotate_secret(
                &b.id,
                "whsec_cm90YXRlZC1zZWNyZXQtb25l".to_owned(),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let matched = store.matching(1, "message_created", None).unwrap();
        assert_eq!(*matched[0], rotated, "rotation");

        assert!(store.delete(&b.id).await.unwrap());
        assert!(matching_ids(&store).is_empty(), "delete");
        assert_eq!(store.matching(2, "message_created", None).unwrap().len(), 1);
        check_cache(&store);
    }

    #[tokio::test]
    async fn a_lookup_racing_writes_never_caches_what_they_replaced() {
        let store = Store::open_temporary().unwrap();
        let webhook = store.create(new_webhook(1)).await.unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = std::thread::spawn({
            let (store, stop) = (store.clone(), Arc::clone(&stop));
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.matching(1, "message_created", None).unwrap();
                }
            }
        });
        for round in 0..500 {
            let events = if round % 2 == 0 {
                "contact_created"
            } else {
                "message_created"
            };
            let patch = WebhookPatch {
                events: Some(vec![events.to_owned()]),
                ..WebhookPatch::default()
            };
            store.update(&webhook.id, patch).await.unwrap().unwrap();
            // Twice: the reader may have cached a read in between.
            for _ in 0..2 {
                assert_eq!(
                    matching_ids(&store).len(),
                    round % 2,
                    "round {round}: a stale read was cached"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let store = Store::open_temporary().unwrap();
        let accounts = u64::try_from(CACHE_ENTRIES).unwrap() + 1_000;
        // Accounts without webhooks count one entry each.
        for account in 1..=accounts {
            assert!(store.matching(account, "x", None).unwrap().is_empty());
        }
        check_cache(&store);
        assert_eq!(store.cache().entries, CACHE_ENTRIES);

        // Accounts of three webhooks count three, and one larger than the cache is not cached,
        // though it is answered. Stored directly, and the index loaded again as an open would:
        // creating them one by one would flush each.
        let webhook = |account_id: u64, n: u64| Webhook {
            id: format!("wh_{account_id}_{n}"),
            account_id,
            url: "https://example.com/hook".to_owned(),
            events: vec!["*".to_owned()],
            inbox_id: None,
            secret: None,
            previous_secret: None,
            previous_secret_expires_at: None,
            enabled: true,
            disabled_reason: None,
            disabled_at: None,
            rate_limit: None,
            name: None,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let large = accounts + 7_000;
        let mut batch = sled::Batch::default();
        let webhooks = (accounts + 1..large)
            .flat_map(|account| (0..3).map(move |n| (account, n)))
            .chain((0..=u64::try_from(CACHE_ENTRIES).unwrap()).map(|n| (large, n)));
        for (account, n) in webhooks {
            let webhook = webhook(account, n);
            let key = account_key(account, &webhook.id);
            batch.insert(key, encode(&webhook).unwrap());
        }
        store.by_account.apply_batch(batch).unwrap();
        *store.index_mut() = load_index(&store.by_account).unwrap();
        for account in accounts + 1..large {
            assert_eq!(store.matching(account, "x", None).unwrap().len(), 3);
        }
        check_cache(&store);
        assert!(store.cache().entries > CACHE_ENTRIES - 3);
        assert!(
            store
                .cache()
                .accounts
                .values()
                .any(|c| c.webhooks.len() == 3),
            "a full cache still admits"
        );
        assert_eq!(
            store.matching(large, "x", None).unwrap().len(),
            CACHE_ENTRIES + 1
        );
        assert!(store.cache().get(large).is_none());
        check_cache(&store);
    }
}
