//! `webhookd webhooks test`: one signed sample event to one webhook, now.
//!
//! It is sent outside the retry path: nothing is published to the broker, a failure is not
//! retried, and no other webhook sees it. The attempt is recorded in the webhook's attempt log
//! with the outcome `test`, and it does not count towards the webhook's health, which is about
//! the events the application sent.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::delivery::{sign, Client};
use crate::event::{sample_in, SampleContent, KNOWN_EVENTS};
use crate::job;
use crate::store::{NewAttempt, Store, Webhook};

/// The event a test sends unless told otherwise.
pub const DEFAULT_TEST_EVENT: &str = "message_created";

/// The attempt-log outcome of a test delivery.
pub const TEST_OUTCOME: &str = "test";

/// What a test delivery got: the admin API's answer and what the CLI prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub webhook_id: String,
    pub event: String,
    pub delivery_id: String,
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// Answered 2xx.
    pub ok: bool,
}

/// Refuses an event name no sample exists for.
pub fn check_event(event: &str) -> Result<(), String> {
    if KNOWN_EVENTS.contains(&event) {
        Ok(())
    } else {
        Err(format!(
            "unknown event {event:?}: one of {}",
            KNOWN_EVENTS.join(", ")
        ))
    }
}

/// Sends a sample `event` (checked by [`check_event`]) in the webhook's account and inbox,
/// signed with its secrets, and records the attempt.
pub async fn send(client: &Client, store: &Store, webhook: &Webhook, event: &str) -> Trial {
    let now = SystemTime::now();
    let body = Bytes::from(sample_in(
        event,
        webhook.account_id,
        webhook.inbox_id,
        SampleContent::Text,
    ));
    let event_id = format!("test-{}", uuid::Uuid::new_v4());
    let delivery_id = sign::delivery_id(&event_id, &webhook.id);
    let timestamp = i64::try_from(job::unix_ms(now) / 1000).unwrap_or(i64::MAX);
    let headers = sign::attempt_headers(&delivery_id, timestamp, &body, webhook.signing(now));
    let started = Instant::now();
    let result = client.post(&webhook.url, headers, body).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = result.as_ref().ok().map(|r| r.status.as_u16());
    let error = result.as_ref().err().map(ToString::to_string);
    store.record_attempt(
        &webhook.id,
        &NewAttempt {
            at: now,
            delivery_id: &delivery_id,
            attempt: 1,
            status,
            error: error.as_deref(),
            latency_ms,
            outcome: TEST_OUTCOME,
        },
    );
    Trial {
        webhook_id: webhook.id.clone(),
        event: event.to_owned(),
        delivery_id,
        ok: status.is_some_and(|s| (200..300).contains(&s)),
        status,
        latency_ms,
        error,
    }
}
