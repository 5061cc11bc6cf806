//! Recording attempts: the in-memory buffer that takes them on the delivery path, its shares, and
//! persisting them into the ring files of `store/attempt_log.rs`.
//!
//! # The attempt log
//!
//! - Attempts are recorded on every delivery, so they are not written one by one: a delivery only
//!   appends the encoded record (`store::record`, about 45 bytes) to an in-memory buffer, and a
//!   persist writes what was buffered.
//! - The buffer is split by webhook id into [`ATTEMPT_SHARES`] shares. The daemon persists one
//!   share every tenth of a second ([`Store::persist_attempt_share`]), so each webhook's attempts
//!   still reach disk within a second, and a flush persists them all. Persisting everything at
//!   once cost 16–24 ms each second with a thousand active webhooks (about 7 µs each on an idle
//!   machine: the file's open, read, two writes and close), and in the benchmark 28–45 % of the
//!   events published in the 30 ms after it began took over 3 ms to arrive, against 4–8 %
//!   later in the second. A share takes about 1.5 ms, and the slow share no longer rises after
//!   a persist begins.
//! - Each webhook's last 100 attempts live in `attempts/<id>` inside the store's directory, a
//!   ring of fixed-size slots written in place (`store::attempt_log`), not in sled. Persisting
//!   them through sled was most of the daemon's memory: with a thousand active webhooks in the
//!   benchmark, a peak RSS near 95 MiB of which heaptrack put about 45 MiB in rewritten log values
//!   and sled's write buffers (about 31 MiB with persisting switched off). Chunked values of
//!   compact records brought it to about 52 MiB; the ring files to about 30 MiB, the rest being
//!   what any run holds. Earlier layouts (the sled trees `attempts` and `attempt_chunks`) are
//!   dropped when the store opens: webhookd had not been released when it changed.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{MutexGuard, PoisonError};

use super::attempt_log::Pending;
use super::{Attempt, NewAttempt, Store, StoreError, ATTEMPTS_KEPT};

/// Trees the attempt log used before it moved to ring files; dropped on open (see the module
/// docs).
pub(super) const LEGACY_ATTEMPT_TREES: [&str; 2] = ["attempts", "attempt_chunks"];
/// The directory of attempt-log ring files, inside the store's directory.
pub(super) const ATTEMPTS_DIR: &str = "attempts";

/// The attempt buffer is split by webhook id into this many shares, each persisted on its own
/// (see the module docs).
pub const ATTEMPT_SHARES: usize = 10;

impl Store {
    /// Records an attempt. It is buffered in memory until its share is next persisted; the
    /// buffer keeps at most the newest 100 per webhook, so it stays bounded however far
    /// persisting falls behind.
    pub fn record_attempt(&self, webhook_id: &str, attempt: &NewAttempt<'_>) {
        let mut buffer = self.buffer(attempt_share(webhook_id));
        match buffer.get_mut(webhook_id) {
            Some(pending) => pending.push(attempt),
            None => buffer
                .entry(webhook_id.to_owned())
                .or_default()
                .push(attempt),
        }
    }

    /// Appends all buffered attempts to their webhooks' stored logs (see
    /// [`Store::persist_attempt_share`]).
    pub fn persist_attempts(&self) -> Result<(), StoreError> {
        (0..ATTEMPT_SHARES).try_for_each(|share| self.persist_attempt_share(share).map(drop))
    }

    /// Appends the attempts buffered in `share` (less than [`ATTEMPT_SHARES`]) to their
    /// webhooks' stored logs, keeping the newest 100, and returns them encoded for the other
    /// instances ([`Store::add_attempts`]). Attempts of a webhook deleted meanwhile are dropped.
    pub fn persist_attempt_share(&self, share: usize) -> Result<Vec<u8>, StoreError> {
        let _persisting = self.persisting();
        let buffered = std::mem::take(&mut *self.buffer(share));
        let mut batch = Vec::new();
        for (webhook_id, pending) in buffered {
            if self.by_id.contains_key(&webhook_id)? {
                self.log.append(&webhook_id, &pending)?;
                encode_batch_part(&webhook_id, pending.as_bytes(), &mut batch);
            }
        }
        Ok(batch)
    }

    /// Adds attempts another instance made (a batch [`Store::persist_attempt_share`] returned
    /// there) to the stored logs of the webhooks this store knows; returns how many webhooks' logs
    /// took some. A batch that does not decode is refused whole.
    pub fn add_attempts(&self, batch: &[u8]) -> Result<usize, StoreError> {
        let parts = decode_batch(batch).ok_or_else(|| {
            StoreError::Corrupt("an attempt batch from another instance does not decode".to_owned())
        })?;
        let _persisting = self.persisting();
        let mut added = 0;
        for (webhook_id, pending) in parts {
            if self.by_id.contains_key(webhook_id)? {
                self.log.append(webhook_id, &pending)?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Up to `limit` (at most 100) attempts, newest first, buffered ones included.
    pub fn attempts(&self, webhook_id: &str, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        let limit = limit.min(ATTEMPTS_KEPT);
        let _persisting = self.persisting();
        let mut newest: Vec<Attempt> = self
            .buffer(attempt_share(webhook_id))
            .get(webhook_id)
            .map(|pending| pending.newest(limit))
            .unwrap_or_default();
        let stored = self.log.newest(webhook_id, limit - newest.len())?;
        newest.extend(stored);
        // Another instance's attempts are stored when they arrive, up to a second after they
        // were made: the time, not the slot, says which is newest. RFC 3339 text in UTC sorts
        // as the time does.
        newest.sort_by(|a, b| b.at.cmp(&a.at));
        Ok(newest)
    }

    pub(super) fn persisting(&self) -> MutexGuard<'_, ()> {
        self.persisting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn buffer(&self, share: usize) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.buffered[share]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Appends one webhook's part of an attempt batch: its id's length (a byte) and the id, then the
/// entries' length (u32 big-endian) and the entries.
fn encode_batch_part(webhook_id: &str, entries: &[u8], batch: &mut Vec<u8>) {
    let (Ok(id_len), Ok(len)) = (u8::try_from(webhook_id.len()), u32::try_from(entries.len()))
    else {
        return;
    };
    batch.push(id_len);
    batch.extend_from_slice(webhook_id.as_bytes());
    batch.extend_from_slice(&len.to_be_bytes());
    batch.extend_from_slice(entries);
}

/// The parts of a batch [`encode_batch_part`] wrote; `None` if any part does not decode.
fn decode_batch(mut batch: &[u8]) -> Option<Vec<(&str, Pending)>> {
    let mut parts = Vec::new();
    while let Some((&id_len, rest)) = batch.split_first() {
        let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
        let (len, rest) = rest.split_at_checked(4)?;
        let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let (entries, rest) = rest.split_at_checked(len)?;
        parts.push((
            std::str::from_utf8(id).ok()?,
            Pending::from_bytes(entries.to_vec())?,
        ));
        batch = rest;
    }
    Some(parts)
}

/// The share of the attempt buffer that holds `webhook_id`'s attempts: any spread will do, as long
/// as it is the same for an id throughout a process.
pub(super) fn attempt_share(webhook_id: &str) -> usize {
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(webhook_id);
    (hash % ATTEMPT_SHARES as u64) as usize
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::tests::{new_webhook, reopen};

    fn attempt(n: u32) -> Attempt {
        Attempt {
            // In the order of `n`: the log shows attempts newest first by time.
            at: format!(
                "2025-01-01T{:02}:{:02}:{:02}.000Z",
                n / 3600,
                n / 60 % 60,
                n % 60
            ),
            delivery_id: format!("d-{n}"),
            attempt: n,
            status: Some(500),
            error: None,
            latency_ms: u64::from(n),
            outcome: "retry".to_owned(),
        }
    }

    #[tokio::test]
    async fn attempts_are_capped_at_100_and_newest_first_buffered_or_stored() {
        let store = Store::open_temporary().unwrap();
        let webhook = store.create(new_webhook(1)).await.unwrap();
        let neighbour = store.create(new_webhook(1)).await.unwrap();
        store.record_attempt(&neighbour.id, &attempt(9999).as_new());
        for n in 1..=130 {
            store.record_attempt(&webhook.id, &attempt(n).as_new());
        }
        store.persist_attempts().unwrap();
        for n in 131..=250 {
            store.record_attempt(&webhook.id, &attempt(n).as_new());
            if n == 200 {
                store.persist_attempts().unwrap();
            }
        }

        // Reads merge what is stored with what is still buffered.
        let all = store.attempts(&webhook.id, usize::MAX).unwrap();
        let numbers: Vec<u32> = all.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (151..=250).rev().collect::<Vec<u32>>());
        assert_eq!(all[0], attempt(250));

        store.persist_attempts().unwrap();
        assert_eq!(
            stored_numbers(&store, &webhook.id),
            (151..=250).collect::<Vec<u32>>(),
            "older entries are dropped, not just hidden"
        );
        assert_eq!(store.attempts(&webhook.id, usize::MAX).unwrap(), all);

        let three: Vec<u32> = store
            .attempts(&webhook.id, 3)
            .unwrap()
            .iter()
            .map(|a| a.attempt)
            .collect();
        assert_eq!(three, [250, 249, 248]);
        assert_eq!(store.attempts(&neighbour.id, 10).unwrap(), [attempt(9999)]);
    }

    /// The attempt numbers of the records stored for the webhook, oldest first.
    fn stored_numbers(store: &Store, webhook_id: &str) -> Vec<u32> {
        let mut stored = numbers(&store.log.newest(webhook_id, usize::MAX).unwrap());
        stored.reverse();
        stored
    }

    fn numbers(attempts: &[Attempt]) -> Vec<u32> {
        attempts.iter().map(|a| a.attempt).collect()
    }

    #[tokio::test]
    async fn a_shared_batch_adds_its_attempts_on_another_store_and_a_damaged_one_is_refused() {
        let (here, there) = (
            Store::open_temporary().unwrap(),
            Store::open_temporary().unwrap(),
        );
        let webhook = here.create(new_webhook(1)).await.unwrap();
        // The other instance knows the same webhook: the registry log gave it the same record.
        there
            .apply(&crate::store::Change::Create {
                webhook: webhook.clone(),
            })
            .unwrap();
        for n in 1..=3 {
            here.record_attempt(&webhook.id, &attempt(n).as_new());
        }
        let share = attempt_share(&webhook.id);
        let batch = here.persist_attempt_share(share).unwrap();
        assert!(
            here.persist_attempt_share(share).unwrap().is_empty(),
            "shared once"
        );

        assert_eq!(there.add_attempts(&batch).unwrap(), 1);
        assert_eq!(
            numbers(&there.attempts(&webhook.id, 10).unwrap()),
            [3, 2, 1]
        );
        let damaged = &batch[..batch.len() - 1];
        assert!(there.add_attempts(damaged).is_err());
        assert_eq!(
            stored_numbers(&there, &webhook.id),
            [1, 2, 3],
            "nothing of it added"
        );
    }

    #[tokio::test]
    async fn a_share_persist_writes_only_its_shares_webhooks_and_a_full_persist_writes_all() {
        let store = Store::open_temporary().unwrap();
        // Enough webhooks that every share holds some (20 per share on average).
        // Created first: a write flushes, and a flush persists every share.
        let mut ids = Vec::new();
        for account in 1..=200 {
            ids.push(store.create(new_webhook(account)).await.unwrap().id);
        }
        for id in &ids {
            store.record_attempt(id, &attempt(1).as_new());
        }
        let (first, rest): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| attempt_share(id) == 0);
        assert!(!first.is_empty() && !rest.is_empty());

        store.persist_attempt_share(0).unwrap();
        for id in &first {
            assert_eq!(stored_numbers(&store, id), [1], "{id} is in share 0");
        }
        for id in &rest {
            assert!(stored_numbers(&store, id).is_empty(), "{id} is not");
            // Still buffered, so still shown.
            assert_eq!(numbers(&store.attempts(id, 10).unwrap()), [1]);
        }

        store.persist_attempts().unwrap();
        for id in &ids {
            assert_eq!(stored_numbers(&store, id), [1]);
        }
        assert!((0..ATTEMPT_SHARES).all(|share| store.buffer(share).is_empty()));
    }

    #[tokio::test]
    async fn the_stored_log_keeps_the_newest_100_in_order_across_persists_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let id = {
            let store = Store::open(&path).unwrap();
            let webhook = store.create(new_webhook(1)).await.unwrap();
            // 37 does not divide 100, so the log overflows in the middle of a persist.
            for batch in (1..=250).collect::<Vec<u32>>().chunks(37) {
                for &n in batch {
                    store.record_attempt(&webhook.id, &attempt(n).as_new());
                }
                store.persist_attempts().unwrap();
            }
            assert!((0..ATTEMPT_SHARES).all(|share| store.buffer(share).is_empty()));
            let all = store.attempts(&webhook.id, usize::MAX).unwrap();
            assert_eq!(numbers(&all), (151..=250).rev().collect::<Vec<u32>>());
            assert_eq!(all[0], attempt(250));
            assert_eq!(
                stored_numbers(&store, &webhook.id),
                (151..=250).collect::<Vec<u32>>()
            );
            store.flush().await.unwrap();
            webhook.id
        };

        // After a reopen, new attempts push out the oldest.
        let store = reopen(&path);
        for n in 251..=260 {
            store.record_attempt(&id, &attempt(n).as_new());
        }
        store.persist_attempts().unwrap();
        let all = store.attempts(&id, usize::MAX).unwrap();
        assert_eq!(numbers(&all), (161..=260).rev().collect::<Vec<u32>>());
        assert_eq!(
            stored_numbers(&store, &id),
            (161..=260).collect::<Vec<u32>>()
        );
    }

    #[tokio::test]
    async fn attempt_trees_of_earlier_layouts_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let id = {
            let store = Store::open(&path).unwrap();
            let webhook = store.create(new_webhook(1)).await.unwrap();
            for tree in LEGACY_ATTEMPT_TREES {
                let legacy = store.db.open_tree(tree).unwrap();
                legacy.insert(webhook.id.as_bytes(), "[]").unwrap();
            }
            store.flush().await.unwrap();
            webhook.id
        };
        let store = reopen(&path);
        let names = store.db.tree_names();
        for tree in LEGACY_ATTEMPT_TREES {
            assert!(!names.contains(&tree.into()), "{tree}");
        }
        assert!(store.attempts(&id, 10).unwrap().is_empty());
        store.record_attempt(&id, &attempt(3).as_new());
        store.persist_attempts().unwrap();
        assert_eq!(numbers(&store.attempts(&id, 10).unwrap()), [3]);
    }

    #[tokio::test]
    async fn attempts_survive_a_reopen_once_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let id = {
            let store = Store::open(&path).unwrap();
            let webhook = store.create(new_webhook(1)).await.unwrap();
            store.record_attempt(&webhook.id, &attempt(1).as_new());
            store.flush().await.unwrap();
            webhook.id
        };
        let store = reopen(&path);
        assert_eq!(store.attempts(&id, 10).unwrap(), [attempt(1)]);
    }

    #[tokio::test]
    async fn attempts_of_unknown_or_deleted_webhooks_are_not_kept() {
        let store = Store::open_temporary().unwrap();
        store.record_attempt("wh_unknown", &attempt(1).as_new());
        store.persist_attempts().unwrap();
        assert!(store.attempts("wh_unknown", 10).unwrap().is_empty());

        let webhook = store.create(new_webhook(1)).await.unwrap();
        for n in 1..=45 {
            store.record_attempt(&webhook.id, &attempt(n).as_new());
        }
        store.persist_attempts().unwrap();
        assert_eq!(stored_numbers(&store, &webhook.id).len(), 45);
        assert!(store.delete(&webhook.id).await.unwrap());
        assert!(store.attempts(&webhook.id, 10).unwrap().is_empty());
        // A delivery racing the delete buffers one more: persisting must not revive the log.
        store.record_attempt(&webhook.id, &attempt(2).as_new());
        store.persist_attempts().unwrap();
        assert!(stored_numbers(&store, &webhook.id).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_persist_that_found_the_webhook_before_its_delete_cannot_bring_the_log_back() {
        let store = Store::open_temporary().unwrap();
        let webhook = store.create(new_webhook(1)).await.unwrap();
        store.record_attempt(&webhook.id, &attempt(1).as_new());
        store.persist_attempts().unwrap();
        // This thread plays a persist that has found the webhook and not yet appended: it holds
        // the persist lock while the delete's transaction commits.
        let persisting = store.persisting();
        let deleting = tokio::spawn({
            let (store, id) = (store.clone(), webhook.id.clone());
            async move { store.delete(&id).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.by_id.contains_key(&webhook.id).unwrap() {
            assert!(
                std::time::Instant::now() < deadline,
                "the delete never committed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Give the delete time to remove the log early (the bug): then the append below would
        // come after the removal and bring the log back. Fixed, the log stays until the lock is
        // released, and this wait runs out.
        let deadline = std::time::Instant::now() + Duration::from_millis(200);
        while !stored_numbers(&store, &webhook.id).is_empty()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut pending = Pending::default();
        pending.push(&attempt(2).as_new());
        store.log.append(&webhook.id, &pending).unwrap();
        drop(persisting);

        assert!(deleting.await.unwrap().unwrap());
        assert!(
            stored_numbers(&store, &webhook.id).is_empty(),
            "the persist brought the deleted webhook's log back"
        );
    }
}
