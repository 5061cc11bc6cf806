//! The envelope decoder: what routing needs from a body, read on the hot path.
//!
//! [`decode_envelope`] runs for every message. Delivery forwards the original bytes, so routing
//! needs only three things from the body — `event`, `account.id` and the inbox id — and
//! everything else is skipped without being built. It is a hand-written serde visitor rather than
//! a derived struct because a derived struct would accept a JSON array in place of the object,
//! could not tell "missing" from "wrongly typed" (the dead letter's reason must say which), and
//! would skip ignored values with serde_json's iterative skipper, which has no depth limit at
//! all. The visitor bounds nesting itself ([`MAX_DEPTH`]), so the bound holds even if some other
//! crate turns on serde_json's `unbounded_depth`, and a body no receiver's recursive parser could
//! survive is dead-lettered instead of forwarded. Keys webhookd routes on must appear once: JSON
//! parsers disagree on which duplicate wins, and webhookd must not route on a different account
//! than the receiver reads.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Chatwoot's twelve event names. Unknown names are still delivered (to `*` and to webhooks
/// naming them); this list is what configuration and `publish --sample` can offer by name.
pub const KNOWN_EVENTS: [&str; 12] = [
    "message_created",
    "message_updated",
    "conversation_created",
    "conversation_status_changed",
    "conversation_updated",
    "conversation_typing_on",
    "conversation_typing_off",
    "webwidget_triggered",
    "contact_created",
    "contact_updated",
    "inbox_created",
    "inbox_updated",
];

/// Deepest nesting of arrays and objects (the body's own object counts as one) that a body may
/// have. Chatwoot's payloads nest five deep; 64 is far beyond any real event and well under
/// serde_json's default recursion limit of 128, so this check fires first and says why.
const MAX_DEPTH: usize = 64;

/// Longest event name, in bytes. The name travels on as a routing key (an AMQP short string),
/// an `x-webhookd-event` header and a metrics label; Chatwoot's longest is 27 bytes.
pub const MAX_EVENT_NAME: usize = 255;

/// What routing needs from a body; the body itself travels on untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub event: String,
    pub account_id: u64,
    /// From `inbox.id`, else `conversation.inbox_id`. Optional and lenient: an event without a
    /// usable inbox id simply matches no inbox-filtered webhook.
    pub inbox_id: Option<u64>,
}

/// Why a body is not an event webhookd can route. Its Display goes into a dead letter's
/// `x-webhookd-last-error` header, so every reason is one short line.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("body is not valid UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("body is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("body is {0}, not a JSON object")]
    NotObject(&'static str),
    #[error("key `{0}` appears more than once")]
    DuplicateKey(&'static str),
    #[error("missing `event`")]
    MissingEvent,
    #[error("`event` is not a string")]
    EventNotString,
    #[error("`event` is empty")]
    EmptyEvent,
    #[error("`event` is {0} bytes, over {MAX_EVENT_NAME}")]
    EventTooLong(usize),
    #[error("missing `account`")]
    MissingAccount,
    #[error("`account` is not an object")]
    AccountNotObject,
    #[error("missing `account.id`")]
    MissingAccountId,
    #[error("`account.id` is not a positive integer")]
    BadAccountId,
}

/// Reads the routing fields of `body` without building it or re-encoding it.
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, Malformed> {
    // serde_json skips strings it does not read without checking their UTF-8, so check the whole
    // body once here (std's check is fast); the parse below then need not check again.
    let text = std::str::from_utf8(body).map_err(Malformed::NotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let top = (&mut de)
        .deserialize_any(TopVisitor)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|error| match error.classify() {
            // The visitors below raise exactly one error of their own, for depth; everything
            // serde_json raises itself is a syntax or end-of-input error.
            serde_json::error::Category::Data => Malformed::TooDeep,
            _ => Malformed::NotJson(error),
        })?;
    let fields = match top {
        Top::Object(fields) => fields,
        Top::Other(kind) => return Err(Malformed::NotObject(kind)),
    };

    let event = match fields.event {
        Slot::Absent => return Err(Malformed::MissingEvent),
        Slot::Repeated => return Err(Malformed::DuplicateKey("event")),
        Slot::Once(Found::Text(event)) if event.is_empty() => return Err(Malformed::EmptyEvent),
        Slot::Once(Found::Text(event)) if event.len() > MAX_EVENT_NAME => {
            return Err(Malformed::EventTooLong(event.len()))
        }
        Slot::Once(Found::Text(event)) => event,
        Slot::Once(_) => return Err(Malformed::EventNotString),
    };
    let account_id = match fields.account {
        Slot::Absent => return Err(Malformed::MissingAccount),
        Slot::Repeated => return Err(Malformed::DuplicateKey("account")),
        Slot::Once(Found::Holder(Slot::Absent)) => return Err(Malformed::MissingAccountId),
        Slot::Once(Found::Holder(Slot::Repeated)) => {
            return Err(Malformed::DuplicateKey("account.id"))
        }
        Slot::Once(Found::Holder(Slot::Once(Some(id)))) => id,
        Slot::Once(Found::Holder(Slot::Once(None))) => return Err(Malformed::BadAccountId),
        Slot::Once(_) => return Err(Malformed::AccountNotObject),
    };
    // Both holders are checked even when `inbox.id` decides: a repeated `conversation` is as
    // ambiguous to a receiver as a repeated `inbox`.
    let inbox = optional_id(fields.inbox, "inbox", "inbox.id")?;
    let conversation = optional_id(fields.conversation, "conversation", "conversation.inbox_id")?;
    Ok(Envelope {
        event,
        account_id,
        inbox_id: inbox.or(conversation),
    })
}

/// An optional holder of an id: anything but a well-typed id is `None`, but a repeated key is
/// still an error, for the same reason as for the required keys.
fn optional_id(
    holder: Slot<Found>,
    key: &'static str,
    id_key: &'static str,
) -> Result<Option<u64>, Malformed> {
    match holder {
        Slot::Repeated => Err(Malformed::DuplicateKey(key)),
        Slot::Once(Found::Holder(Slot::Repeated)) => Err(Malformed::DuplicateKey(id_key)),
        Slot::Once(Found::Holder(Slot::Once(id))) => Ok(id),
        _ => Ok(None),
    }
}

/// The delivery-stable identity of an event: the publisher's `message_id` when it gave one,
/// else a digest of the body, so a redelivered body maps to the same id either way.
pub fn event_id(message_id: Option<&str>, body: &[u8]) -> String {
    match message_id {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// A positive id written as a string of ASCII digits (no sign, no spaces, no exponent), as the
/// seed writes them. `u64::from_str` alone would also accept a leading `+`. The typed model's
/// `Id` reads text with this too, so the two readers agree on what an id is.
pub(super) fn parse_positive_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|&id| id > 0)
}

/// The body's top level: an object, or the kind of JSON value it was instead.
enum Top {
    Object(Fields),
    Other(&'static str),
}

/// How often a key appeared, and what it held the one time it did.
#[derive(Default)]
enum Slot<T> {
    #[default]
    Absent,
    Once(T),
    Repeated,
}

impl<T> Slot<T> {
    fn fill(&mut self, value: T) {
        *self = match self {
            Slot::Absent => Slot::Once(value),
            _ => Slot::Repeated,
        };
    }
}

#[derive(Default)]
struct Fields {
    event: Slot<Found>,
    account: Slot<Found>,
    inbox: Slot<Found>,
    conversation: Slot<Found>,
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key::<TopKey>()? {
            let (slot, want) = match key {
                TopKey::Event => (&mut fields.event, Want::Text),
                TopKey::Account => (&mut fields.account, Want::Holder("id")),
                TopKey::Inbox => (&mut fields.inbox, Want::Holder("id")),
                TopKey::Conversation => (&mut fields.conversation, Want::Holder("inbox_id")),
                TopKey::Other => {
                    map.next_value_seed(Probe::skip(1))?;
                    continue;
                }
            };
            slot.fill(map.next_value_seed(Probe { depth: 1, want })?);
        }
        Ok(Top::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top, A::Error> {
        drain_seq(seq, 1)?;
        Ok(Top::Other("an array"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
        Ok(Top::Other("a string"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
        Ok(Top::Other("a number"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
        Ok(Top::Other("a boolean"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
        Ok(Top::Other("null"))
    }
}

/// The top-level keys routing reads; every other key is skipped.
enum TopKey {
    Event,
    Account,
    Inbox,
    Conversation,
    Other,
}

impl<'de> Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
                Ok(match key {
                    "event" => TopKey::Event,
                    "account" => TopKey::Account,
                    "inbox" => TopKey::Inbox,
                    "conversation" => TopKey::Conversation,
                    _ => TopKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Whether an object key is the one key a holder is read for.
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for KeyIs {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// What a value is read for.
#[derive(Clone, Copy)]
enum Want {
    Nothing,
    Text,
    Id,
    /// An object read only for the id under this key.
    Holder(&'static str),
}

/// What a value held, as far as its [`Want`] cares; `Wrong` is "not what was wanted".
enum Found {
    Text(String),
    Id(u64),
    /// The holder's id: `Once(None)` when present but not a positive integer.
    Holder(Slot<Option<u64>>),
    Wrong,
}

/// Reads one value for what is wanted from it and skips the rest, counting depth as it goes.
/// `depth` is the number of arrays and objects enclosing the value.
struct Probe {
    depth: usize,
    want: Want,
}

impl Probe {
    fn skip(depth: usize) -> Self {
        Probe {
            depth,
            want: Want::Nothing,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Probe {
    type Value = Found;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Found, D::Error> {
        // deserialize_any, not deserialize_ignored_any: the latter skips without any depth limit.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe {
    type Value = Found;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Found, E> {
        Ok(match self.want {
            Want::Text => Found::Text(text.to_owned()),
            Want::Id => parse_positive_id(text).map_or(Found::Wrong, Found::Id),
            Want::Nothing | Want::Holder(_) => Found::Wrong,
        })
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Found, E> {
        Ok(match self.want {
            Want::Id if number > 0 => Found::Id(number),
            _ => Found::Wrong,
        })
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Found, E> {
        Ok(match (self.want, u64::try_from(number)) {
            (Want::Id, Ok(number)) if number > 0 => Found::Id(number),
            _ => Found::Wrong,
        })
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(Found::Wrong)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::Wrong)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::Wrong)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        drain_seq(seq, self.depth + 1)?;
        Ok(Found::Wrong)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let depth = self.depth + 1;
        check_depth::<A::Error>(depth)?;
        let Want::Holder(wanted) = self.want else {
            while map.next_key_seed(Probe::skip(depth))?.is_some() {
                map.next_value_seed(Probe::skip(depth))?;
            }
            return Ok(Found::Wrong);
        };
        let mut id = Slot::Absent;
        while let Some(is_wanted) = map.next_key_seed(KeyIs(wanted))? {
            if is_wanted {
                let found = map.next_value_seed(Probe {
                    depth,
                    want: Want::Id,
                })?;
                id.fill(match found {
                    Found::Id(number) => Some(number),
                    _ => None,
                });
            } else {
                map.next_value_seed(Probe::skip(depth))?;
            }
        }
        Ok(Found::Holder(id))
    }
}

/// Skips an array that is the `depth`-th container from the top.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A, depth: usize) -> Result<(), A::Error> {
    check_depth::<A::Error>(depth)?;
    while seq.next_element_seed(Probe::skip(depth))?.is_some() {}
    Ok(())
}

fn check_depth<E: de::Error>(depth: usize) -> Result<(), E> {
    if depth > MAX_DEPTH {
        return Err(E::custom(format_args!(
            "nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../tests/fixtures/message_created.json");

    /// Whether an error is the reason a hostile-body case expects.
    type IsReason = fn(&Malformed) -> bool;

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"event":"message_created","account":{{"id":1}},"extra":{}1{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    }

    #[test]
    fn seed_fixture_decodes_as_envelope() {
        let envelope = decode_envelope(SEED.as_bytes());
        assert_eq!(
            envelope.ok(),
            Some(Envelope {
                event: "message_created".to_owned(),
                account_id: 1,
                inbox_id: None,
            })
        );
    }

    #[test]
    fn hostile_bodies_are_malformed_with_their_reason() {
        let deep = nested(100_000);
        let deep_array = "[".repeat(100_000);
        let deep_in_account = format!(
            r#"{{"event":"x","account":{{"id":1,"tags":{}}}}}"#,
            "[".repeat(MAX_DEPTH)
        );
        let long_event = format!(
            r#"{{"event":"{}","account":{{"id":1}}}}"#,
            "e".repeat(MAX_EVENT_NAME + 1)
        );
        let cases: Vec<(&str, &[u8], IsReason)> = vec![
            ("event name too long", long_event.as_bytes(), |e| {
                matches!(e, Malformed::EventTooLong(256))
            }),
            ("not json", b"hello", |e| matches!(e, Malformed::NotJson(_))),
            ("empty body", b"", |e| matches!(e, Malformed::NotJson(_))),
            ("truncated", br#"{"event":"x","account":{"id":1}"#, |e| {
                matches!(e, Malformed::NotJson(_))
            }),
            (
                "trailing data",
                br#"{"event":"x","account":{"id":1}} {}"#,
                |e| matches!(e, Malformed::NotJson(_)),
            ),
            (
                "invalid utf-8 in an ignored string",
                b"{\"event\":\"x\",\"account\":{\"id\":1},\"note\":\"\xff\"}",
                |e| matches!(e, Malformed::NotUtf8(_)),
            ),
            ("array", br#"[{"event":"x","account":{"id":1}}]"#, |e| {
                matches!(e, Malformed::NotObject("an array"))
            }),
            ("string", br#""message_created""#, |e| {
                matches!(e, Malformed::NotObject("a string"))
            }),
            ("number", b"42", |e| {
                matches!(e, Malformed::NotObject("a number"))
            }),
            ("null", b"null", |e| {
                matches!(e, Malformed::NotObject("null"))
            }),
            ("missing event", br#"{"account":{"id":1}}"#, |e| {
                matches!(e, Malformed::MissingEvent)
            }),
            (
                "event not a string",
                br#"{"event":5,"account":{"id":1}}"#,
                |e| matches!(e, Malformed::EventNotString),
            ),
            (
                "event an object",
                br#"{"event":{"name":"x"},"account":{"id":1}}"#,
                |e| matches!(e, Malformed::EventNotString),
            ),
            ("empty event", br#"{"event":"","account":{"id":1}}"#, |e| {
                matches!(e, Malformed::EmptyEvent)
            }),
            (
                "duplicate event",
                br#"{"event":"a","event":"b","account":{"id":1}}"#,
                |e| matches!(e, Malformed::DuplicateKey("event")),
            ),
            ("missing account", br#"{"event":"x"}"#, |e| {
                matches!(e, Malformed::MissingAccount)
            }),
            (
                "account not an object",
                br#"{"event":"x","account":1}"#,
                |e| matches!(e, Malformed::AccountNotObject),
            ),
            (
                "missing account.id",
                br#"{"event":"x","account":{"name":"a"}}"#,
                |e| matches!(e, Malformed::MissingAccountId),
            ),
            (
                "duplicate account.id",
                br#"{"event":"x","account":{"id":1,"id":2}}"#,
                |e| matches!(e, Malformed::DuplicateKey("account.id")),
            ),
            (
                "account.id negative",
                br#"{"event":"x","account":{"id":-3}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id float",
                br#"{"event":"x","account":{"id":1.0}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id 12a",
                br#"{"event":"x","account":{"id":"12a"}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id +12",
                br#"{"event":"x","account":{"id":"+12"}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id empty string",
                br#"{"event":"x","account":{"id":""}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id overflowing u64",
                br#"{"event":"x","account":{"id":18446744073709551616}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id overflowing u64 as a string",
                br#"{"event":"x","account":{"id":"18446744073709551616"}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id zero",
                br#"{"event":"x","account":{"id":0}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "account.id null",
                br#"{"event":"x","account":{"id":null}}"#,
                |e| matches!(e, Malformed::BadAccountId),
            ),
            (
                "duplicate inbox",
                br#"{"event":"x","account":{"id":1},"inbox":{"id":1},"inbox":{"id":2}}"#,
                |e| matches!(e, Malformed::DuplicateKey("inbox")),
            ),
            (
                "duplicate conversation beside a usable inbox",
                br#"{"event":"x","account":{"id":1},"inbox":{"id":1},"conversation":{},"conversation":{"inbox_id":2}}"#,
                |e| matches!(e, Malformed::DuplicateKey("conversation")),
            ),
            ("nesting beyond serde_json's limit", deep.as_bytes(), |e| {
                matches!(e, Malformed::TooDeep)
            }),
            ("unterminated deep array", deep_array.as_bytes(), |e| {
                matches!(e, Malformed::TooDeep)
            }),
            ("nesting inside account", deep_in_account.as_bytes(), |e| {
                matches!(e, Malformed::TooDeep)
            }),
        ];
        for (name, body, is_expected) in cases {
            match decode_envelope(body) {
                Ok(envelope) => panic!("{name}: decoded as {envelope:?}"),
                Err(error) => {
                    assert!(is_expected(&error), "{name}: wrong reason {error:?}");
                    assert!(
                        !error.to_string().contains('\n'),
                        "{name}: multi-line reason"
                    );
                }
            }
        }
    }

    #[test]
    fn nesting_is_bounded_at_max_depth() {
        // The top-level object is one level, `extra`'s arrays the rest.
        assert!(decode_envelope(nested(MAX_DEPTH - 1).as_bytes()).is_ok());
        assert!(matches!(
            decode_envelope(nested(MAX_DEPTH).as_bytes()),
            Err(Malformed::TooDeep)
        ));
    }

    #[test]
    fn string_and_integer_ids_both_decode() {
        let cases: [(&str, u64, Option<u64>); 5] = [
            (r#"{"event":"e","account":{"id":42}}"#, 42, None),
            (r#"{"event":"e","account":{"id":"42"}}"#, 42, None),
            (
                r#"{"event":"e","account":{"id":"007"},"inbox":{"id":"9"}}"#,
                7,
                Some(9),
            ),
            (
                r#"{"event":"e","account":{"id":18446744073709551615},"inbox":{"id":9}}"#,
                u64::MAX,
                Some(9),
            ),
            (
                r#"{"event":"e","account":{"id":1},"conversation":{"inbox_id":"5"}}"#,
                1,
                Some(5),
            ),
        ];
        for (body, account_id, inbox_id) in cases {
            let envelope = decode_envelope(body.as_bytes()).expect(body);
            assert_eq!(
                (envelope.account_id, envelope.inbox_id),
                (account_id, inbox_id),
                "{body}"
            );
        }
    }

    #[test]
    fn inbox_id_prefers_inbox_and_ignores_wrong_types() {
        let cases: [(&str, Option<u64>); 5] = [
            (r#""inbox":{"id":3},"conversation":{"inbox_id":4}"#, Some(3)),
            (
                r#""inbox":{"id":"x"},"conversation":{"inbox_id":4}"#,
                Some(4),
            ),
            (r#""inbox":"web","conversation":{"inbox_id":-4}"#, None),
            (r#""inbox":{"name":"web"}"#, None),
            (r#""conversation":[1,2]"#, None),
        ];
        for (fields, inbox_id) in cases {
            let body = format!(r#"{{"event":"e","account":{{"id":1}},{fields}}}"#);
            let envelope = decode_envelope(body.as_bytes()).expect(&body);
            assert_eq!(envelope.inbox_id, inbox_id, "{body}");
        }
    }

    #[test]
    fn routing_keys_are_read_through_escapes_and_other_keys_skipped() {
        let body = br#"{"meta":{"account":{"id":9}},"\u0065vent":"message_created","account":{"x":[{"id":5}],"id":2}}"#;
        let envelope = decode_envelope(body).expect("decodes");
        assert_eq!(
            (envelope.event.as_str(), envelope.account_id),
            ("message_created", 2)
        );
    }

    #[test]
    fn malformed_reasons_are_short_lines() {
        let error = decode_envelope(br#"{"event":"x","account":{"id":"12a"}}"#)
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            error.as_deref(),
            Some("`account.id` is not a positive integer")
        );
    }

    #[test]
    fn event_id_prefers_message_id_and_falls_back_to_sha256() {
        let body = b"{\"event\":\"x\"}";
        assert_eq!(event_id(Some("evt-1"), body), "evt-1");
        let derived = event_id(None, body);
        assert_eq!(event_id(Some(""), body), derived);
        assert_eq!(event_id(None, body), derived, "not deterministic");
        assert_eq!(
            derived,
            format!("sha256:{}", hex::encode(Sha256::digest(body))),
        );
        assert_eq!(derived.len(), "sha256:".len() + 64);
        assert_ne!(event_id(None, b"{}"), derived);
        // SHA-256 of the empty string, a published test vector.
        assert_eq!(
            event_id(None, b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
