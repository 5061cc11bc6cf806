//! An endpoint's life after it is registered: how healthy it is, when webhookd gives up on it,
//! how the application hears of that, how an operator tries it, and how fast it may be called.
//!
//! - `lifecycle/health.rs`: each webhook's [`Health`], tracked in memory from this instance's
//!   attempts, and the `delivery.disable_after` rule read from it.
//! - `lifecycle/notice.rs`: the `webhookd.webhook_disabled` notice published when webhookd
//!   disables a webhook.
//! - `lifecycle/pace.rs`: the per-webhook rate limit's send slots.
//! - `lifecycle/trial.rs`: `webhookd webhooks test`, one signed sample outside the retry path.
//!
//! The daemon's stages (`service/attempt.rs`) use these on the delivery path; the admin API
//! reads health and sends tests through [`Monitor`], which the daemon implements, so the admin
//! server needs nothing of the daemon's insides.

mod health;
mod notice;
mod pace;
mod trial;

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

pub use health::{past_disable_after, Attempted, Circuit, Failing, Health, Tracker};
pub use notice::{Disabled, WEBHOOK_DISABLED};
pub use pace::Pace;
pub use trial::{check_event, send as send_test, Trial, DEFAULT_TEST_EVENT, TEST_OUTCOME};

use crate::delivery::Client;
use crate::store::Webhook;

/// What the admin API asks of the running daemon about webhooks.
pub trait Monitor: Send + Sync {
    /// The webhook's health, with its URL's circuit.
    fn health(&self, webhook: &Webhook) -> Health;
    /// The webhook was deleted: its health is forgotten.
    fn deleted(&self, webhook_id: &str);
    /// The delivery client in force (SIGHUP may replace it).
    fn client(&self) -> Client;
}

/// A webhook as `GET /v1/webhooks/{id}` and `webhooks show` present it: the record, secrets
/// masked, and its health while a daemon runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookView {
    #[serde(flatten)]
    pub webhook: Webhook,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// A map by webhook id, split into shards each behind its own lock, for state every delivery
/// touches: deliveries to different webhooks rarely wait for one another (the attempt buffer in
/// `store/attempts.rs` is split the same way).
struct Shards<V>([Mutex<HashMap<String, V>>; 16]);

impl<V> Default for Shards<V> {
    fn default() -> Self {
        Shards(std::array::from_fn(|_| Mutex::default()))
    }
}

impl<V> Shards<V> {
    /// The shard that holds `webhook_id`, locked.
    fn lock(&self, webhook_id: &str) -> MutexGuard<'_, HashMap<String, V>> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(webhook_id);
        self.0[(hash % self.0.len() as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
