//! The notice webhookd publishes when it disables a webhook, so the application can tell the
//! account's admin.
//!
//! It goes to the events exchange, persistent and confirmed, with its own routing key. It is
//! shaped as an event (`event` and `account.id`), so an operator who binds the routing key to
//! webhookd's work queue on purpose has it delivered to the account's webhooks like any other
//! event; the wildcard binding alone does not (`service/message.rs` skips it).

use std::time::SystemTime;

use serde::Serialize;

use super::health::Failing;
use crate::store::Webhook;

/// The notice's routing key, and its `event`.
pub const WEBHOOK_DISABLED: &str = "webhookd.webhook_disabled";

/// The body of a `webhookd.webhook_disabled` notice.
#[derive(Debug, Serialize)]
pub struct Disabled<'a> {
    pub event: &'static str,
    pub account: Account,
    pub account_id: u64,
    pub webhook_id: &'a str,
    pub url: &'a str,
    /// `gone` (it answered 410) or `failing` (no success for `delivery.disable_after`).
    pub reason: &'a str,
    /// RFC 3339 with milliseconds.
    pub failing_since: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub disabled_at: String,
}

#[derive(Debug, Serialize)]
pub struct Account {
    pub id: u64,
}

impl<'a> Disabled<'a> {
    pub fn new(webhook: &'a Webhook, reason: &'a str, failing: Failing, at: SystemTime) -> Self {
        let text = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
        Disabled {
            event: WEBHOOK_DISABLED,
            account: Account {
                id: webhook.account_id,
            },
            account_id: webhook.account_id,
            webhook_id: &webhook.id,
            url: &webhook.url,
            reason,
            failing_since: failing.since.map(text),
            last_status: failing.last_status,
            last_error: failing.last_error,
            disabled_at: text(at),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Strings and integers only: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_envelope;

    #[test]
    fn a_notice_is_shaped_as_an_event_of_the_webhooks_account() {
        let webhook: Webhook = serde_json::from_value(serde_json::json!({
            "id": "wh_1", "account_id": 42, "url": "https://example.com/h", "events": ["*"],
            "inbox_id": null, "secret": "whsec_0123456789abcdef", "enabled": true, "name": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("webhook");
        let failing = Failing {
            since: Some(SystemTime::UNIX_EPOCH),
            last_status: Some(503),
            last_error: None,
        };
        let body = Disabled::new(&webhook, "failing", failing, SystemTime::UNIX_EPOCH).to_json();
        let envelope = decode_envelope(&body).expect("an event");
        assert_eq!(envelope.event, WEBHOOK_DISABLED);
        assert_eq!(envelope.account_id, 42);
        let text = String::from_utf8(body).expect("utf-8");
        assert!(
            text.contains(r#""failing_since":"1970-01-01T00:00:00.000Z""#),
            "{text}"
        );
        assert!(!text.contains("whsec_"), "no secret in a notice: {text}");
    }
}
