//! Scenario 9: the registry with a million webhooks stored. webhookd runs on that store first, to
//! show what holding its index costs (memory, and the time an open takes before the first
//! delivery); then the hot-path lookup (`Store::matching`, one call per consumed event) is timed
//! call by call through the library API, on the same store opened again.

use std::path::Path;
use std::time::{Duration, Instant};

use webhookd::store::{IndexSize, NewWebhook, Store};

use crate::receiver::Receiver;

/// `webhooks` signed webhooks spread evenly over accounts `1..=accounts`, each with a URL of its
/// own at `receiver`.
pub fn webhooks(receiver: &Receiver, webhooks: u64, accounts: u64) -> Vec<NewWebhook> {
    (0..webhooks)
        .map(|i| {
            let account_id = 1 + i % accounts;
            NewWebhook {
                account_id,
                url: receiver.url(&format!("/wh/{account_id}/{i}")),
                events: vec![
                    "message_created".to_owned(),
                    "conversation_created".to_owned(),
                ],
                secret: Some(format!("whsec_bench{i:016}")),
                ..NewWebhook::default()
            }
        })
        .collect()
}

/// The registry, opened in this process for the lookups.
pub struct Registry {
    store: Store,
    accounts: u64,
    /// How long the open took: most of it is loading the index.
    pub opening: Duration,
    pub index: IndexSize,
}

impl Registry {
    pub fn open(path: &Path, accounts: u64) -> anyhow::Result<Registry> {
        let opened = Instant::now();
        let store = Store::open(path)?;
        Ok(Registry {
            opening: opened.elapsed(),
            index: store.index_size(),
            store,
            accounts,
        })
    }

    /// Times `count` lookups of random accounts (after as many untimed ones, so the run starts
    /// warm, as a running daemon's store is); nanoseconds per lookup.
    pub fn lookups(&self, count: u64) -> anyhow::Result<Vec<u64>> {
        for _ in 0..count {
            self.lookup()?;
        }
        let mut times = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let started = Instant::now();
            let found = self.lookup()?;
            times.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            anyhow::ensure!(found > 0, "a lookup found no webhook");
        }
        Ok(times)
    }

    fn lookup(&self) -> anyhow::Result<usize> {
        let account = 1 + rand::random::<u64>() % self.accounts;
        Ok(self
            .store
            .matching(account, "message_created", Some(3))?
            .len())
    }
}
