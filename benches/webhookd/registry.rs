//! Scenario 9: the registry's hot-path lookup (`Store::matching`, one call per consumed event)
//! with a million webhooks stored, timed call by call through the library API.

use std::time::Instant;

use webhookd::store::{NewWebhook, Store};

use crate::daemon::create_all;

/// A store holding `webhooks` webhooks spread evenly over `accounts` accounts.
pub struct Registry {
    _dir: tempfile::TempDir,
    store: Store,
    accounts: u64,
}

impl Registry {
    pub async fn build(webhooks: u64, accounts: u64) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("registry"))?;
        let all = (0..webhooks)
            .map(|i| NewWebhook {
                account_id: 1 + i % accounts,
                url: format!("https://hooks.example.com/account-{}/{i}", 1 + i % accounts),
                events: vec![
                    "message_created".to_owned(),
                    "conversation_created".to_owned(),
                ],
                secret: Some(format!("whsec_bench{i:016}")),
                ..NewWebhook::default()
            })
            .collect();
        create_all(&store, all).await?;
        Ok(Registry {
            _dir: dir,
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
