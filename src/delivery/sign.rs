//! The headers of one delivery attempt and the signatures in them.
//!
//! Receivers verify in two dialects, so every signed attempt carries both: Standard Webhooks
//! (`webhook-*`, keyed by the decoded `whsec_` secret) for new receivers, and Chatwoot's own
//! `X-Chatwoot-*` (keyed by the secret string as typed) so receivers written for Chatwoot verify
//! unchanged. During a secret rotation's grace the Standard Webhooks header carries a second
//! signature, by the previous secret, so receivers can switch secrets without a window in which
//! deliveries fail to verify. Everything here is pure and runs once per attempt on the hot path,
//! so each header value costs at most one allocation (two during a rotation).

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use http::HeaderMap;
use rand::RngCore as _;
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const CHATWOOT_DELIVERY: HeaderName = HeaderName::from_static("x-chatwoot-delivery");
const CHATWOOT_TIMESTAMP: HeaderName = HeaderName::from_static("x-chatwoot-timestamp");
const CHATWOOT_SIGNATURE: HeaderName = HeaderName::from_static("x-chatwoot-signature");

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("webhookd/", env!("CARGO_PKG_VERSION")));

/// Standard Webhooks marks secrets meant to be base64-decoded into the key with this prefix.
const SECRET_PREFIX: &str = "whsec_";

/// Namespace of delivery ids. Never change it: receivers deduplicate on the delivery id, and a
/// new namespace would give every retry after an upgrade a fresh id.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x7596c9f0_0750_42af_959e_4111bcc2d3e2);

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The secrets an attempt is signed with. Deliberately not `Debug`: nothing that holds secrets
/// should be one `{:?}` away from a log line.
#[derive(Clone, Copy, Default)]
pub struct Signing<'a> {
    /// The webhook's secret: signs both dialects.
    pub current: Option<&'a str>,
    /// The secret a rotation replaced, while its grace lasts: adds a second Standard Webhooks
    /// signature, so receivers that still verify with it keep accepting deliveries. Chatwoot's
    /// header has room for one signature and carries the current secret's.
    pub previous: Option<&'a str>,
}

/// The headers of one attempt. The delivery id and timestamp go out even without a secret, since
/// receivers deduplicate on the id; the signatures only with one.
///
/// `delivery_id` is expected to come from [`delivery_id`]; a value that is not a valid header
/// value (control characters) is left out rather than sent mangled.
pub fn attempt_headers(
    delivery_id: &str,
    timestamp: i64,
    body: &[u8],
    secrets: Signing<'_>,
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(CONTENT_TYPE, JSON);
    headers.insert(USER_AGENT, AGENT);
    if let Ok(id) = HeaderValue::from_str(delivery_id) {
        headers.insert(WEBHOOK_ID, id.clone());
        headers.insert(CHATWOOT_DELIVERY, id);
    }
    let ts = HeaderValue::from(timestamp);
    if let Some(secret) = secrets.current {
        let ts_bytes = ts.as_bytes();
        let mut standard = standard_from_ts(secret, delivery_id, ts_bytes, body);
        if let (Some(signatures), Some(previous)) = (&mut standard, secrets.previous) {
            // Standard Webhooks: several space-delimited signatures, any one of which verifies.
            if let Some(old) = standard_from_ts(previous, delivery_id, ts_bytes, body) {
                signatures.push(' ');
                signatures.push_str(&old);
            }
        }
        // Both values are ASCII by construction (base64, hex), so the conversions cannot fail.
        if let Some(Ok(value)) = standard.map(HeaderValue::try_from) {
            headers.insert(WEBHOOK_SIGNATURE, value);
        }
        if let Some(Ok(value)) = chatwoot_from_ts(secret, ts_bytes, body).map(HeaderValue::try_from)
        {
            headers.insert(CHATWOOT_SIGNATURE, value);
        }
    }
    headers.insert(WEBHOOK_TIMESTAMP, ts.clone());
    headers.insert(CHATWOOT_TIMESTAMP, ts);
    headers
}

/// The Standard Webhooks signature `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`. The key is
/// the base64-decoded part after `whsec_`; a secret without that prefix, or whose rest does not
/// decode, is used as raw bytes so that hand-set secrets still sign something verifiable.
pub fn standard_signature(
    key_secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    standard_from_ts(key_secret, msg_id, timestamp.to_string().as_bytes(), body)
}

/// Chatwoot's signature `sha256=<hex HMAC-SHA256(secret, "{ts}.{body}")>`, keyed by the secret
/// string's bytes exactly as stored (Chatwoot does not decode it).
pub fn chatwoot_signature(secret: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    chatwoot_from_ts(secret, timestamp.to_string().as_bytes(), body)
}

/// The delivery id: a UUIDv5 of event id and webhook id, so every retry and every redelivery of
/// the same event to the same webhook carries the same id for receivers to deduplicate on.
pub fn delivery_id(event_id: &str, webhook_id: &str) -> String {
    let mut name = Vec::with_capacity(event_id.len() + 1 + webhook_id.len());
    name.extend_from_slice(event_id.as_bytes());
    // The separator keeps ("ab", "c") and ("a", "bc") apart; ids do not contain newlines.
    name.push(b'\n');
    name.extend_from_slice(webhook_id.as_bytes());
    let mut buf = Uuid::encode_buffer();
    Uuid::new_v5(&DELIVERY_NAMESPACE, &name)
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// A new webhook secret: `whsec_` and 32 random bytes in standard base64, the form Standard
/// Webhooks libraries expect. `rand::rng()` is a CSPRNG seeded from the OS.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut secret = String::with_capacity(SECRET_PREFIX.len() + 44);
    secret.push_str(SECRET_PREFIX);
    STANDARD.encode_string(key, &mut secret);
    secret
}

fn standard_from_ts(secret: &str, msg_id: &str, ts: &[u8], body: &[u8]) -> Option<String> {
    let key: Cow<'_, [u8]> = match secret
        .strip_prefix(SECRET_PREFIX)
        .map(|k| STANDARD.decode(k))
    {
        Some(Ok(decoded)) => Cow::Owned(decoded),
        _ => Cow::Borrowed(secret.as_bytes()),
    };
    let digest = hmac_sha256(&key, &[msg_id.as_bytes(), b".", ts, b".", body])?;
    let mut signature = String::with_capacity(3 + 44);
    signature.push_str("v1,");
    STANDARD.encode_string(digest, &mut signature);
    Some(signature)
}

fn chatwoot_from_ts(secret: &str, ts: &[u8], body: &[u8]) -> Option<String> {
    let digest = hmac_sha256(secret.as_bytes(), &[ts, b".", body])?;
    let mut signature = String::with_capacity(7 + 64);
    signature.push_str("sha256=");
    for byte in digest {
        signature.push(char::from(HEX[usize::from(byte >> 4)]));
        signature.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    Some(signature)
}

/// HMAC-SHA256 of `parts` concatenated. HMAC takes keys of any length, so `None` does not happen;
/// `new_from_slice` only returns a `Result` because its trait also serves MACs with fixed key
/// sizes, and an impossible error is still handled rather than unwrapped on the hot path.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const TS: i64 = 1614265330;

    #[test]
    fn standard_signature_matches_published_test_vector() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                TS,
                BODY
            )
            .as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn standard_signature_uses_raw_bytes_when_secret_is_not_whsec_base64() {
        // Expected values computed with Python's hmac module:
        // base64.b64encode(hmac.new(KEY, b'msg_1.1614265330.' + BODY, hashlib.sha256).digest())
        let cases = [
            // no prefix: the whole string is the key
            (
                "plain-secret",
                "v1,KtqvuXtSlAQZIOEaWbKlE2v9/hMAkYGUOlH+9Eaq3Ds=",
            ),
            // prefix, but the rest is not base64: the whole string (prefix included) is the key
            (
                "whsec_not*base64",
                "v1,upfOt2dg2UXUUKBm8uVfakAO/cNQjxAb08x8eQYsTsI=",
            ),
            // longer than the HMAC block: hashed first (KEY = b'x' * 100)
            (
                &"x".repeat(100),
                "v1,pjS/HPdBNScbpMH/g0IzJspYyQW0HEemgq/7SMXI37Q=",
            ),
        ];
        for (secret, expected) in cases {
            assert_eq!(
                standard_signature(secret, "msg_1", TS, BODY).as_deref(),
                Some(expected),
                "{secret}"
            );
        }
    }

    #[test]
    fn chatwoot_signature_is_hex_hmac_of_timestamp_and_body_keyed_by_secret_as_is() {
        // Expected values computed with Python's hmac module:
        // hmac.new(SECRET, b'1614265330.' + BODY, hashlib.sha256).hexdigest()
        let cases = [
            (
                "chatwoot-secret",
                "sha256=3d298796af3ef0c3690f5a8eaf72dc67e729990b91bb25bf84441ff1f0e4cc79",
            ),
            // a whsec_ secret is not decoded for Chatwoot's dialect
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "sha256=2e37df5d4a028c51a7f3133d64ae1e300d2c2c900f1b1d49d4369ad2530f8964",
            ),
        ];
        for (secret, expected) in cases {
            assert_eq!(
                chatwoot_signature(secret, TS, BODY).as_deref(),
                Some(expected),
                "{secret}"
            );
        }
    }

    fn signed_by(current: &'static str) -> Signing<'static> {
        Signing {
            current: Some(current),
            previous: None,
        }
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
        headers.get(name).map(HeaderValue::as_bytes)
    }

    #[test]
    fn attempt_headers_with_secret_carry_both_dialects() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = delivery_id("evt-1", "wh-1");
        let headers = attempt_headers(&id, TS, BODY, signed_by(secret));
        let standard = standard_signature(secret, &id, TS, BODY).unwrap_or_default();
        let chatwoot = chatwoot_signature(secret, TS, BODY).unwrap_or_default();
        let agent = format!("webhookd/{}", env!("CARGO_PKG_VERSION"));
        let expected = [
            ("content-type", "application/json"),
            ("user-agent", agent.as_str()),
            ("webhook-id", id.as_str()),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", standard.as_str()),
            ("x-chatwoot-delivery", id.as_str()),
            ("x-chatwoot-timestamp", "1614265330"),
            ("x-chatwoot-signature", chatwoot.as_str()),
        ];
        assert_eq!(headers.len(), expected.len());
        for (name, value) in expected {
            assert_eq!(header(&headers, name), Some(value.as_bytes()), "{name}");
        }
    }

    #[test]
    fn during_a_rotation_standard_carries_both_signatures_and_chatwoot_the_new_one() {
        let new = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let old = "whsec_c2VjcmV0LW9mLXRoZS1wYXN0LXJvdGF0aW9u";
        let rotating = Signing {
            current: Some(new),
            previous: Some(old),
        };
        let headers = attempt_headers("d-1", TS, BODY, rotating);
        let both = format!(
            "{} {}",
            standard_signature(new, "d-1", TS, BODY).unwrap_or_default(),
            standard_signature(old, "d-1", TS, BODY).unwrap_or_default()
        );
        assert_eq!(header(&headers, "webhook-signature"), Some(both.as_bytes()));
        assert_eq!(
            header(&headers, "x-chatwoot-signature"),
            chatwoot_signature(new, TS, BODY)
                .as_deref()
                .map(str::as_bytes)
        );

        // A previous secret alone (the current one cleared) signs nothing.
        let orphan = Signing {
            current: None,
            previous: Some(old),
        };
        let headers = attempt_headers("d-1", TS, BODY, orphan);
        assert_eq!(header(&headers, "webhook-signature"), None);
        assert_eq!(header(&headers, "x-chatwoot-signature"), None);
    }

    #[test]
    fn attempt_headers_without_secret_are_unsigned_but_identified() {
        let headers = attempt_headers("d-1", TS, BODY, Signing::default());
        for name in ["webhook-signature", "x-chatwoot-signature"] {
            assert!(headers.get(name).is_none(), "{name}");
        }
        for name in ["webhook-id", "x-chatwoot-delivery"] {
            assert_eq!(header(&headers, name), Some(&b"d-1"[..]), "{name}");
        }
        assert_eq!(
            header(&headers, "webhook-timestamp"),
            Some(&b"1614265330"[..])
        );
    }

    #[test]
    fn delivery_id_is_a_stable_uuid_v5_of_event_and_webhook() {
        // Expected values computed with Python:
        // uuid.uuid5(uuid.UUID('7596c9f0-0750-42af-959e-4111bcc2d3e2'), 'evt-1\nwh-1')
        assert_eq!(
            delivery_id("evt-1", "wh-1"),
            "a37c6d31-c3a8-523a-b839-368c1a75aa22"
        );
        assert_eq!(
            delivery_id("evt-1", "wh-2"),
            "d354e848-2a2d-50bf-abc6-f87896f127b3"
        );
    }

    #[test]
    fn generated_secrets_are_whsec_32_random_bytes() {
        let first = generate_secret();
        let second = generate_secret();
        assert_ne!(first, second);
        for secret in [first, second] {
            let encoded = secret.strip_prefix("whsec_");
            let decoded = encoded.map(|e| STANDARD.decode(e));
            assert!(
                matches!(decoded, Some(Ok(ref key)) if key.len() == 32),
                "{secret}"
            );
        }
    }
}
