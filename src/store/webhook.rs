//! The webhook record: what is stored for an endpoint ([`Webhook`]), what creates one
//! ([`NewWebhook`]) and what changes one ([`WebhookPatch`]), with the record's ids, the masking
//! that keeps secrets out of logs and replies, and the validation every create and update goes
//! through.

use std::fmt;
use std::time::SystemTime;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

use super::StoreError;
use crate::delivery::sign::Signing;

pub(super) const ID_PREFIX: &str = "wh_";
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// 20 characters of 36 symbols: 103 bits, so ids are unguessable and never collide in practice.
const ID_RANDOM_CHARS: usize = 20;

const MAX_URL_CHARS: usize = 2048;
const MAX_NAME_CHARS: usize = 200;
const MIN_SECRET_CHARS: usize = 16;
/// Above this a limit is no limit: the in-flight caps bind first.
const MAX_RATE_LIMIT: u32 = 10_000;
const SECRET_MASK: &str = "****";

/// A registered endpoint. Stored as JSON so the record stays readable and can gain fields.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub account_id: u64,
    pub url: String,
    /// Event names, or `*` for every event including names webhookd does not know.
    pub events: Vec<String>,
    /// When set, only events of this inbox are delivered.
    pub inbox_id: Option<u64>,
    pub secret: Option<String>,
    /// The secret a rotation replaced. It keeps signing, as a second Standard Webhooks
    /// signature, until `previous_secret_expires_at`, so receivers can switch to the new secret
    /// without a window in which deliveries fail to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// RFC 3339 with milliseconds: when `previous_secret` stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<String>,
    pub enabled: bool,
    /// Why webhookd, or a person, disabled it: `gone` (a 410), `failing` (no success for
    /// `delivery.disable_after`) or `manual`. Cleared when it is enabled again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// RFC 3339, whole seconds: when it was disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<String>,
    /// Requests per second this receiver takes at most; deliveries above it wait in the delay
    /// queues without counting as attempts. Held per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    pub name: Option<String>,
    /// RFC 3339, whole seconds.
    pub created_at: String,
    pub updated_at: String,
}

impl Webhook {
    /// Whether an event with this name and inbox goes to this webhook: enabled, `events` contains
    /// the name or `*`, and `inbox_id` (if set) equals the event's inbox — an event without an
    /// inbox does not reach a webhook that asked for one.
    pub fn matches(&self, event: &str, inbox_id: Option<u64>) -> bool {
        self.enabled
            && self.events.iter().any(|e| e == "*" || e == event)
            && self.inbox_id.is_none_or(|wanted| inbox_id == Some(wanted))
    }

    /// A copy safe to log or return from the API. Only a conventional prefix such as `whsec_`
    /// stays visible (the part up to the first `_`, when that is at most 6 characters); nothing of
    /// the random part is shown, since secrets never appear in logs or responses. A previous
    /// secret whose grace has ended is left out: it no longer signs anything.
    pub fn masked(&self) -> Webhook {
        let previous = self.previous_secret_at(SystemTime::now()).map(mask_secret);
        Webhook {
            secret: self.secret.as_deref().map(mask_secret),
            previous_secret_expires_at: previous
                .as_ref()
                .and(self.previous_secret_expires_at.clone()),
            previous_secret: previous,
            ..self.clone()
        }
    }

    /// A copy for the one reply that sets a secret (create, update, rotation): the current secret
    /// in full, since this is the only time it is shown, and everything else as in [`masked`].
    ///
    /// [`masked`]: Webhook::masked
    pub fn revealed(&self) -> Webhook {
        Webhook {
            secret: self.secret.clone(),
            ..self.masked()
        }
    }

    /// The secrets an attempt made at `now` is signed with: the current one, and the previous
    /// one while its rotation grace lasts.
    pub fn signing(&self, now: SystemTime) -> Signing<'_> {
        Signing {
            current: self.secret.as_deref(),
            previous: self.previous_secret_at(now),
        }
    }

    /// The previous secret if it still signs at `now`. An expiry that does not parse ends the
    /// grace: a secret is never kept signing longer than intended.
    fn previous_secret_at(&self, now: SystemTime) -> Option<&str> {
        let until = humantime::parse_rfc3339(self.previous_secret_expires_at.as_deref()?).ok()?;
        self.previous_secret.as_deref().filter(|_| now < until)
    }

    /// Stops deliveries to it, recording why and when (RFC 3339).
    pub(super) fn disable(&mut self, reason: &str, at: &str) {
        self.enabled = false;
        self.disabled_reason = Some(reason.to_owned());
        self.disabled_at = Some(at.to_owned());
    }

    pub(super) fn enable(&mut self) {
        self.enabled = true;
        self.disabled_reason = None;
        self.disabled_at = None;
    }

    /// A short digest of the record as stored, which a [`Change::Replace`] names as its base.
    ///
    /// [`Change::Replace`]: super::Change::Replace
    pub fn revision(&self) -> Result<String, StoreError> {
        Ok(super::revision_of(&super::encode(self)?))
    }

    /// Makes `secret` the current secret and keeps the one it replaces signing until `until`.
    /// Without a current secret there is nothing to keep: the webhook simply gets one.
    pub(super) fn rotate_to(&mut self, secret: String, until: SystemTime) {
        let previous = self.secret.replace(secret);
        self.previous_secret_expires_at = previous
            .as_ref()
            .map(|_| humantime::format_rfc3339_millis(until).to_string());
        self.previous_secret = previous;
    }
}

/// Written by hand so that a `{:?}` in a log line or a failed assertion shows secrets masked.
impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let Webhook {
            id,
            account_id,
            url,
            events,
            inbox_id,
            secret,
            previous_secret,
            previous_secret_expires_at,
            enabled,
            disabled_reason,
            disabled_at,
            rate_limit,
            name,
            created_at,
            updated_at,
        } = self;
        f.debug_struct("Webhook")
            .field("id", id)
            .field("account_id", account_id)
            .field("url", url)
            .field("events", events)
            .field("inbox_id", inbox_id)
            .field("secret", &secret.as_deref().map(mask_secret))
            .field(
                "previous_secret",
                &previous_secret.as_deref().map(mask_secret),
            )
            .field("previous_secret_expires_at", previous_secret_expires_at)
            .field("enabled", enabled)
            .field("disabled_reason", disabled_reason)
            .field("disabled_at", disabled_at)
            .field("rate_limit", rate_limit)
            .field("name", name)
            .field("created_at", created_at)
            .field("updated_at", updated_at)
            .finish()
    }
}

fn mask_secret(secret: &str) -> String {
    let visible = secret
        .char_indices()
        .take(6)
        .find(|(_, c)| *c == '_')
        .map_or("", |(at, _)| &secret[..=at]);
    format!("{visible}{SECRET_MASK}")
}

/// A webhook to create. Unknown fields are refused so a typo (`"event"` for `"events"`) cannot
/// silently subscribe an endpoint to everything.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    pub account_id: u64,
    pub url: String,
    /// Defaults to `["*"]`.
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    #[serde(default)]
    pub inbox_id: Option<u64>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to `true`.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

/// Written by hand so `NewWebhook::default()` agrees with a JSON body that omits the fields.
impl Default for NewWebhook {
    fn default() -> Self {
        NewWebhook {
            account_id: 0,
            url: String::new(),
            events: all_events(),
            inbox_id: None,
            secret: None,
            name: None,
            enabled: enabled_by_default(),
            rate_limit: None,
        }
    }
}

fn all_events() -> Vec<String> {
    vec!["*".to_owned()]
}

fn enabled_by_default() -> bool {
    true
}

/// A partial update. An absent field leaves the value unchanged; for `inbox_id`, `name` and
/// `secret`, an explicit `null` clears it (`Some(None)`), which is why those are double options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub inbox_id: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<u32>>,
}

/// Called by serde only when the field is present, so `null` becomes `Some(None)` while an absent
/// field keeps the `#[serde(default)]` of `None`.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl WebhookPatch {
    /// Applies the patch at `now` (RFC 3339), the time a disable by hand is recorded with.
    pub(super) fn apply(&self, webhook: &mut Webhook, now: &str) {
        if let Some(url) = &self.url {
            webhook.url.clone_from(url);
        }
        if let Some(events) = &self.events {
            webhook.events.clone_from(events);
        }
        if let Some(inbox_id) = self.inbox_id {
            webhook.inbox_id = inbox_id;
        }
        if let Some(name) = &self.name {
            webhook.name.clone_from(name);
        }
        match self.enabled {
            Some(true) => webhook.enable(),
            Some(false) if webhook.enabled => webhook.disable("manual", now),
            _ => {}
        }
        if let Some(rate_limit) = self.rate_limit {
            webhook.rate_limit = rate_limit;
        }
        if let Some(secret) = &self.secret {
            // Setting a secret outright replaces it at once, ending any rotation's grace.
            webhook.secret.clone_from(secret);
            webhook.previous_secret = None;
            webhook.previous_secret_expires_at = None;
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        field,
        message: message.into(),
    }
}

pub(super) fn generate_id() -> String {
    format!("{ID_PREFIX}{}", random_id())
}

/// The random part of a record id (a webhook's, an account token's): lowercase letters and
/// digits only, so an id never contains the `_` that separates a token's parts.
pub(super) fn random_id() -> String {
    let mut rng = rand::rng();
    (0..ID_RANDOM_CHARS)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect()
}

/// Checks a whole webhook, so create and update (patch applied first) share one set of rules.
pub(super) fn validate(webhook: &Webhook) -> Result<(), StoreError> {
    if webhook.account_id == 0 {
        return Err(invalid("account_id", "must be a positive integer"));
    }
    validate_url(&webhook.url)?;
    validate_events(&webhook.events)?;
    if webhook.inbox_id == Some(0) {
        return Err(invalid("inbox_id", "must be a positive integer"));
    }
    if let Some(secret) = &webhook.secret {
        if secret.chars().count() < MIN_SECRET_CHARS {
            return Err(invalid(
                "secret",
                format!("must be at least {MIN_SECRET_CHARS} characters"),
            ));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("secret", "must not contain whitespace"));
        }
    }
    if let Some(rate) = webhook.rate_limit {
        if !(1..=MAX_RATE_LIMIT).contains(&rate) {
            return Err(invalid(
                "rate_limit",
                format!("must be from 1 to {MAX_RATE_LIMIT} requests per second, got {rate}"),
            ));
        }
    }
    if let Some(name) = &webhook.name {
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(invalid(
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

fn validate_url(url: &str) -> Result<(), StoreError> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(invalid(
            "url",
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
    }
    // Checked before parsing so a header-splitting CR/LF gets a clear message.
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "url",
            "must not contain whitespace or control characters",
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|error| invalid("url", format!("is not a valid URL: {error}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid("url", "must be an http:// or https:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("url", "must name a host"));
    }
    Ok(())
}

/// `*` inside a name is refused: matching is by exact name, so `message_*` would silently never
/// fire.
fn validate_events(events: &[String]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(invalid(
            "events",
            "must list at least one event name or \"*\"",
        ));
    }
    for event in events {
        let valid = event == "*"
            || (!event.is_empty()
                && event.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
                }));
        if !valid {
            return Err(invalid(
                "events",
                format!("{event:?} is not \"*\" or a name of a-z, 0-9, '_', '.', '-'"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::tests::{invalid_field, new_webhook};
    use crate::store::{decode, encode, Store};

    #[test]
    fn records_written_before_rotation_existed_still_load() {
        let stored = r#"{"id":"wh_x","account_id":1,"url":"https://e.com/","events":["*"],
            "inbox_id":null,"secret":"whsec_0123456789abcdef","enabled":true,"name":null,
            "created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}"#;
        let webhook = decode::<Webhook>(stored.as_bytes()).unwrap();
        assert_eq!(webhook.previous_secret, None);
        let encoded = String::from_utf8(encode(&webhook).unwrap()).unwrap();
        assert!(!encoded.contains("previous_secret"), "{encoded}");
    }

    #[test]
    fn new_webhook_json_defaults_and_unknown_fields() {
        let new: NewWebhook =
            serde_json::from_str(r#"{"account_id": 1, "url": "https://e.com/"}"#).unwrap();
        assert_eq!(new.events, ["*"]);
        assert!(new.enabled);
        assert_eq!(NewWebhook::default().events, new.events);
        assert!(NewWebhook::default().enabled);
        let typo = serde_json::from_str::<NewWebhook>(
            r#"{"account_id": 1, "url": "https://e.com/", "event": ["x"]}"#,
        );
        assert!(typo.is_err());
    }

    #[test]
    fn matches_table() {
        let base = Webhook {
            id: "wh_x".to_owned(),
            account_id: 1,
            url: "https://e.com/".to_owned(),
            events: vec!["message_created".to_owned(), "contact_created".to_owned()],
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
        let star = Webhook {
            events: vec!["*".to_owned()],
            ..base.clone()
        };
        let inbox = Webhook {
            inbox_id: Some(7),
            ..base.clone()
        };
        let disabled = Webhook {
            enabled: false,
            ..star.clone()
        };
        let cases = [
            ("listed event", &base, "message_created", None, true),
            (
                "second listed event",
                &base,
                "contact_created",
                Some(3),
                true,
            ),
            ("unlisted event", &base, "message_updated", None, false),
            ("prefix of a listed event", &base, "message", None, false),
            (
                "star takes any event",
                &star,
                "message_updated",
                Some(1),
                true,
            ),
            (
                "star takes unknown events",
                &star,
                "custom_thing",
                None,
                true,
            ),
            ("inbox matches", &inbox, "message_created", Some(7), true),
            ("inbox differs", &inbox, "message_created", Some(8), false),
            (
                "event without inbox",
                &inbox,
                "message_created",
                None,
                false,
            ),
            ("disabled", &disabled, "message_created", None, false),
        ];
        for (name, webhook, event, inbox_id, expected) in cases {
            assert_eq!(webhook.matches(event, inbox_id), expected, "{name}");
        }
    }

    #[test]
    fn masked_hides_all_but_a_short_prefix() {
        let cases = [
            (
                Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                Some("whsec_****"),
            ),
            (Some("sk_0123456789abcdef"), Some("sk_****")),
            (Some("0123456789abcdef"), Some("****")),
            (Some("longprefix_0123456789abcdef"), Some("****")),
            (None, None),
        ];
        for (secret, expected) in cases {
            let webhook = Webhook {
                id: "wh_x".to_owned(),
                account_id: 1,
                url: "https://e.com/".to_owned(),
                events: vec!["*".to_owned()],
                inbox_id: None,
                secret: secret.map(str::to_owned),
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
            let masked = webhook.masked();
            assert_eq!(masked.secret.as_deref(), expected, "{secret:?}");
            if let Some(secret) = secret {
                assert!(
                    !format!("{webhook:?}").contains(secret),
                    "Debug shows the secret"
                );
            }
            assert_eq!(
                Webhook {
                    secret: None,
                    ..masked
                },
                Webhook {
                    secret: None,
                    ..webhook
                }
            );
        }
    }

    #[tokio::test]
    async fn validation_names_the_field() {
        let store = Store::open_temporary().unwrap();
        let long_url = format!("https://e.com/{}", "a".repeat(2048));
        let cases: Vec<(&str, NewWebhook, Option<&str>)> = vec![
            ("valid", new_webhook(1), None),
            (
                "http ok",
                NewWebhook {
                    url: "http://e.com:8080/x?y=1".into(),
                    ..new_webhook(1)
                },
                None,
            ),
            ("zero account", new_webhook(0), Some("account_id")),
            (
                "ftp",
                NewWebhook {
                    url: "ftp://e.com/".into(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "no scheme",
                NewWebhook {
                    url: "e.com/hook".into(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "relative",
                NewWebhook {
                    url: "/hook".into(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "empty url",
                NewWebhook {
                    url: String::new(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "space",
                NewWebhook {
                    url: "https://e.com/a b".into(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "crlf",
                NewWebhook {
                    url: "https://e.com/\r\nX: y".into(),
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "too long",
                NewWebhook {
                    url: long_url,
                    ..new_webhook(1)
                },
                Some("url"),
            ),
            (
                "zero inbox",
                NewWebhook {
                    inbox_id: Some(0),
                    ..new_webhook(1)
                },
                Some("inbox_id"),
            ),
            (
                "no events",
                NewWebhook {
                    events: vec![],
                    ..new_webhook(1)
                },
                Some("events"),
            ),
            (
                "empty event",
                NewWebhook {
                    events: vec![String::new()],
                    ..new_webhook(1)
                },
                Some("events"),
            ),
            (
                "upper case event",
                NewWebhook {
                    events: vec!["Message".into()],
                    ..new_webhook(1)
                },
                Some("events"),
            ),
            (
                "glob in name",
                NewWebhook {
                    events: vec!["message_*".into()],
                    ..new_webhook(1)
                },
                Some("events"),
            ),
            (
                "dotted event",
                NewWebhook {
                    events: vec!["a.b-c_1".into()],
                    ..new_webhook(1)
                },
                None,
            ),
            (
                "short secret",
                NewWebhook {
                    secret: Some("whsec_short".into()),
                    ..new_webhook(1)
                },
                Some("secret"),
            ),
            (
                "secret with space",
                NewWebhook {
                    secret: Some("whsec_0123 456789abc".into()),
                    ..new_webhook(1)
                },
                Some("secret"),
            ),
            (
                "16-char secret",
                NewWebhook {
                    secret: Some("0123456789abcdef".into()),
                    ..new_webhook(1)
                },
                None,
            ),
            (
                "long name",
                NewWebhook {
                    name: Some("n".repeat(201)),
                    ..new_webhook(1)
                },
                Some("name"),
            ),
            (
                "200-char name",
                NewWebhook {
                    name: Some("é".repeat(200)),
                    ..new_webhook(1)
                },
                None,
            ),
        ];
        for (name, new, expected) in cases {
            let result = store.create(new).await;
            match expected {
                None => assert!(result.is_ok(), "{name}: {result:?}"),
                Some(field) => assert_eq!(invalid_field(result), field, "{name}"),
            }
        }
    }
}
