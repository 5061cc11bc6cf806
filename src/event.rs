//! The publisher's contract: what a message body must hold, and the typed `message_created` model.
//!
//! Two readers of a body live here, and they are deliberately different:
//!
//! - [`decode_envelope`] runs for every message on the hot path. Delivery forwards the original
//!   bytes, so routing needs only three things from the body — `event`, `account.id` and the inbox
//!   id — and everything else is skipped without being built. It is a hand-written serde visitor
//!   rather than a derived struct because a derived struct would accept a JSON array in place of
//!   the object, could not tell "missing" from "wrongly typed" (the dead letter's reason must say
//!   which), and would skip ignored values with serde_json's iterative skipper, which has no depth
//!   limit at all. The visitor bounds nesting itself ([`MAX_DEPTH`]), so the bound holds even if
//!   some other crate turns on serde_json's `unbounded_depth`, and a body no receiver's recursive
//!   parser could survive is dead-lettered instead of forwarded. Keys webhookd routes on must
//!   appear once: JSON parsers disagree on which duplicate wins, and webhookd must not route on a
//!   different account than the receiver reads.
//! - [`MessageCreated`] models Chatwoot's `message_created` payload in full. It serves strict
//!   validation, `webhookd publish --sample` and tests, never delivery. It accepts what Chatwoot
//!   and the seed document actually send (ids as integers or digit strings, `null` sender,
//!   unknown fields, content types and attribute shapes), because strict validation that rejects
//!   real Chatwoot events would be worse than none.

use std::fmt;
use std::time::SystemTime;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::json;
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
/// seed writes them. `u64::from_str` alone would also accept a leading `+`.
fn parse_positive_id(text: &str) -> Option<u64> {
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

/// A Chatwoot record id. Chatwoot sends integers; the seed document writes them as strings of
/// digits; both are accepted, and webhookd writes integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u64);

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a positive integer or a string of digits")
            }
            fn visit_u64<E: de::Error>(self, number: u64) -> Result<Id, E> {
                if number == 0 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(0), &self));
                }
                Ok(Id(number))
            }
            fn visit_i64<E: de::Error>(self, number: i64) -> Result<Id, E> {
                match u64::try_from(number) {
                    Ok(number) => self.visit_u64(number),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(number), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Id, E> {
                parse_positive_id(text)
                    .map(Id)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// Chatwoot's `message_created` (and `message_updated`) payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageCreated {
    pub event: String,
    pub id: Id,
    /// `null` for messages that are only attachments.
    #[serde(default)]
    pub content: Option<String>,
    /// Chatwoot's own format ("2020-03-03 13:05:57 UTC" in the seed, ISO 8601 in practice), kept
    /// as text because webhookd only forwards it.
    pub created_at: String,
    pub message_type: MessageType,
    #[serde(default)]
    pub content_type: ContentType,
    #[serde(default)]
    pub content_attributes: ContentAttributes,
    /// The id on the external channel (Twitter, Facebook, email), when there is one.
    #[serde(default)]
    pub source_id: Option<String>,
    /// `null` for messages Chatwoot itself writes.
    #[serde(default)]
    pub sender: Option<Sender>,
    #[serde(default)]
    pub contact: Option<Contact>,
    #[serde(default)]
    pub inbox: Option<Inbox>,
    #[serde(default)]
    pub conversation: Option<Conversation>,
    pub account: Account,
}

/// Who wrote a message. `Activity` is not in the seed, but Chatwoot emits `message_created` for
/// activity messages ("Conversation was resolved by …"), so strict validation must accept it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Incoming,
    Outgoing,
    Activity,
    Template,
}

/// The message's kind of content. Chatwoot has more kinds than the seed names (`input_email`,
/// `article`, `input_csat`, …) and adds new ones, so anything else is kept as `Other`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContentType {
    #[default]
    Text,
    InputSelect,
    Cards,
    Form,
    Other(String),
}

impl ContentType {
    fn as_str(&self) -> &str {
        match self {
            ContentType::Text => "text",
            ContentType::InputSelect => "input_select",
            ContentType::Cards => "cards",
            ContentType::Form => "form",
            ContentType::Other(name) => name,
        }
    }
}

impl Serialize for ContentType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ContentType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "text" => ContentType::Text,
            "input_select" => ContentType::InputSelect,
            "cards" => ContentType::Cards,
            "form" => ContentType::Form,
            _ => ContentType::Other(name),
        })
    }
}

/// The seed's three shapes, told apart by their items' required fields (tried in this order),
/// then `{}`, then any other object: Chatwoot also keeps `in_reply_to`, email metadata and more
/// here, which must not fail validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ContentAttributes {
    Options {
        items: Vec<Choice>,
        #[serde(default)]
        submitted_values: Vec<Choice>,
    },
    Form {
        items: Vec<FormField>,
        #[serde(default)]
        submitted_values: Vec<FormValue>,
    },
    Cards {
        items: Vec<Card>,
    },
    #[default]
    #[serde(
        serialize_with = "serialize_empty_object",
        deserialize_with = "deserialize_empty_object"
    )]
    Empty,
    Other(serde_json::Map<String, serde_json::Value>),
}

fn serialize_empty_object<S: Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_map(Some(0))?.end()
}

/// Accepts `{}` only, so that a non-empty unknown shape falls through to `Other`.
fn deserialize_empty_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    struct EmptyVisitor;
    impl<'de> Visitor<'de> for EmptyVisitor {
        type Value = ();
        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("an empty object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(()),
                Some(_) => Err(de::Error::invalid_length(1, &self)),
            }
        }
    }
    deserializer.deserialize_map(EmptyVisitor)
}

/// One option of an `input_select` message, or the one the contact picked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub title: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormField {
    /// `text`, `text_area` or `email`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub placeholder: Option<String>,
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    #[serde(default)]
    pub media_url: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub actions: Vec<CardAction>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardAction {
    /// `link` (with `uri`) or `postback`.
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    #[serde(default)]
    pub uri: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// The number shown in Chatwoot's dashboard, not the database id.
    #[serde(default)]
    pub display_id: Option<Id>,
    #[serde(default)]
    pub inbox_id: Option<Id>,
    #[serde(default)]
    pub additional_attributes: Option<ConversationAttributes>,
}

/// What Chatwoot's web widget reports about the visitor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationAttributes {
    #[serde(default)]
    pub browser: Option<Browser>,
    #[serde(default)]
    pub referer: Option<String>,
    #[serde(default)]
    pub initiated_at: Option<InitiatedAt>,
}

/// The seed writes a string; Chatwoot's current widget sends `{"timestamp": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitiatedAt {
    Text(String),
    Stamped { timestamp: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Browser {
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub browser_name: Option<String>,
    #[serde(default)]
    pub platform_name: Option<String>,
    #[serde(default)]
    pub browser_version: Option<String>,
    #[serde(default)]
    pub platform_version: Option<String>,
}

/// The content shape of a `message_created` sample; named as Chatwoot names content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SampleContent {
    Text,
    InputSelect,
    Form,
    Cards,
}

/// A realistic body for `event` in `account_id`, for `webhookd publish --sample` and benchmarks.
/// Ids are random so that samples published without a `message_id` still get distinct event ids.
pub fn sample(event: &str, account_id: u64, content: SampleContent) -> Vec<u8> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let encoded = match event {
        "message_created" | "message_updated" => {
            serde_json::to_vec(&message_sample(event, account_id, content, now))
        }
        _ => serde_json::to_vec(&other_sample(event, account_id, now)),
    };
    // Serializing these types cannot fail: every map key is a string and no Serialize impl
    // here returns an error.
    encoded.unwrap_or_default()
}

const SAMPLE_ACCOUNT_NAME: &str = "Northwind Support";
const SAMPLE_INBOX_ID: u64 = 3;
const SAMPLE_INBOX_NAME: &str = "Website live chat";
const SAMPLE_CONTACT_ID: u64 = 1207;
const SAMPLE_CONTACT_NAME: &str = "Maria Jensen";
const SAMPLE_CONTACT_EMAIL: &str = "maria.jensen@example.org";

fn message_sample(
    event: &str,
    account_id: u64,
    content: SampleContent,
    created_at: String,
) -> MessageCreated {
    let agent = Sender {
        id: Id(14),
        name: Some("Priya Raman".to_owned()),
        email: Some("priya.raman@northwind.example".to_owned()),
    };
    let (message_type, content_type, text, content_attributes, sender) = match content {
        SampleContent::Text => (
            MessageType::Incoming,
            ContentType::Text,
            "Hi! I ordered the walnut standing desk (order #48213) two weeks ago and the tracking \
             page still says \"label created\". Could you check whether it has shipped, and if \
             not, whether I can switch to express delivery? I'm moving on the 28th and would \
             rather it arrive before then. Thanks!",
            ContentAttributes::Empty,
            Sender {
                id: Id(SAMPLE_CONTACT_ID),
                name: Some(SAMPLE_CONTACT_NAME.to_owned()),
                email: Some(SAMPLE_CONTACT_EMAIL.to_owned()),
            },
        ),
        SampleContent::InputSelect => (
            MessageType::Template,
            ContentType::InputSelect,
            "How would you like us to follow up on your order?",
            ContentAttributes::Options {
                items: vec![
                    choice("Email me an update", "follow_up_email"),
                    choice("Call me back today", "follow_up_call"),
                    choice("Keep chatting here", "follow_up_chat"),
                ],
                submitted_values: vec![choice("Email me an update", "follow_up_email")],
            },
            agent,
        ),
        SampleContent::Form => (
            MessageType::Template,
            ContentType::Form,
            "Please leave your details and we will get back to you within one business day.",
            ContentAttributes::Form {
                items: vec![
                    form_field("text", "Your full name", "full_name", "Name"),
                    form_field("email", "you@example.com", "email", "Email"),
                    form_field("text_area", "What can we help with?", "message", "Message"),
                ],
                submitted_values: vec![
                    form_value("full_name", SAMPLE_CONTACT_NAME),
                    form_value("email", SAMPLE_CONTACT_EMAIL),
                    form_value("message", "Order #48213 has not shipped yet."),
                ],
            },
            agent,
        ),
        SampleContent::Cards => (
            MessageType::Template,
            ContentType::Cards,
            "Here are a few desks that ship within two days:",
            ContentAttributes::Cards {
                items: vec![
                    card(
                        "walnut-standing-desk",
                        "Walnut standing desk",
                        "Solid walnut top, dual motors, 65-130 cm height range.",
                    ),
                    card(
                        "oak-compact-desk",
                        "Oak compact desk",
                        "A 100 cm oak desk for small rooms, ready in ten minutes.",
                    ),
                ],
            },
            agent,
        ),
    };
    MessageCreated {
        event: event.to_owned(),
        id: Id(rand::random_range(100_000..10_000_000)),
        content: Some(text.to_owned()),
        created_at,
        message_type,
        content_type,
        content_attributes,
        source_id: None,
        sender: Some(sender),
        contact: Some(Contact {
            id: Id(SAMPLE_CONTACT_ID),
            name: Some(SAMPLE_CONTACT_NAME.to_owned()),
        }),
        inbox: Some(Inbox {
            id: Id(SAMPLE_INBOX_ID),
            name: Some(SAMPLE_INBOX_NAME.to_owned()),
        }),
        conversation: Some(Conversation {
            display_id: Some(Id(rand::random_range(1..100_000))),
            inbox_id: Some(Id(SAMPLE_INBOX_ID)),
            additional_attributes: Some(ConversationAttributes {
                browser: Some(Browser {
                    device_name: Some("Macbook".to_owned()),
                    browser_name: Some("Chrome".to_owned()),
                    platform_name: Some("Macintosh".to_owned()),
                    browser_version: Some("124.0.6367.119".to_owned()),
                    platform_version: Some("14.4.1".to_owned()),
                }),
                referer: Some(
                    "https://shop.northwind.example/orders/48213?utm_source=email".to_owned(),
                ),
                initiated_at: Some(InitiatedAt::Stamped {
                    timestamp: "Tue May 14 2024 09:12:44 GMT+0200 (Central European Summer \
                                Time)"
                        .to_owned(),
                }),
            }),
        }),
        account: Account {
            id: Id(account_id),
            name: Some(SAMPLE_ACCOUNT_NAME.to_owned()),
        },
    }
}

fn choice(title: &str, value: &str) -> Choice {
    Choice {
        title: title.to_owned(),
        value: value.to_owned(),
    }
}

fn form_field(kind: &str, placeholder: &str, name: &str, label: &str) -> FormField {
    FormField {
        kind: kind.to_owned(),
        placeholder: Some(placeholder.to_owned()),
        name: name.to_owned(),
        label: Some(label.to_owned()),
    }
}

fn form_value(name: &str, value: &str) -> FormValue {
    FormValue {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

fn card(slug: &str, title: &str, description: &str) -> Card {
    Card {
        media_url: format!("https://cdn.northwind.example/products/{slug}.jpg"),
        title: title.to_owned(),
        description: description.to_owned(),
        actions: vec![CardAction {
            kind: "link".to_owned(),
            text: "View product".to_owned(),
            uri: Some(format!("https://shop.northwind.example/products/{slug}")),
        }],
    }
}

/// The events webhookd does not model: a small object shaped like Chatwoot's, with the record
/// the event is about.
fn other_sample(event: &str, account_id: u64, created_at: String) -> serde_json::Value {
    let conversation_id: u64 = rand::random_range(1..100_000);
    let account = json!({ "id": account_id, "name": SAMPLE_ACCOUNT_NAME });
    let inbox = json!({
        "id": SAMPLE_INBOX_ID,
        "name": SAMPLE_INBOX_NAME,
        "channel_type": "Channel::WebWidget",
    });
    let contact = json!({
        "id": SAMPLE_CONTACT_ID,
        "name": SAMPLE_CONTACT_NAME,
        "email": SAMPLE_CONTACT_EMAIL,
        "phone_number": "+4520123456",
    });
    let conversation = |status: &str| {
        json!({
            "display_id": conversation_id,
            "inbox_id": SAMPLE_INBOX_ID,
            "status": status,
            "contact_inbox": { "contact_id": SAMPLE_CONTACT_ID },
        })
    };
    let mut body = match event {
        "conversation_created" | "conversation_updated" => json!({
            "id": conversation_id,
            "conversation": conversation("open"),
            "inbox": inbox,
        }),
        "conversation_status_changed" => json!({
            "id": conversation_id,
            "conversation": conversation("resolved"),
            "inbox": inbox,
        }),
        "conversation_typing_on" | "conversation_typing_off" => json!({
            "id": conversation_id,
            "conversation": conversation("open"),
            "user": { "id": 14, "name": "Priya Raman", "type": "user" },
            "is_private": false,
        }),
        "webwidget_triggered" => json!({
            "id": SAMPLE_CONTACT_ID,
            "contact": contact,
            "inbox": inbox,
            "event_info": {
                "initiated_at": { "timestamp": created_at },
                "referer": "https://shop.northwind.example/pricing",
                "widget_language": "en",
            },
        }),
        "contact_created" | "contact_updated" => json!({
            "id": SAMPLE_CONTACT_ID,
            "contact": contact,
        }),
        "inbox_created" | "inbox_updated" => json!({
            "id": SAMPLE_INBOX_ID,
            "inbox": inbox,
        }),
        _ => json!({ "id": rand::random_range(1..1_000_000u64) }),
    };
    if let Some(object) = body.as_object_mut() {
        object.insert("event".to_owned(), event.into());
        object.insert("account".to_owned(), account);
        object.insert("created_at".to_owned(), created_at.into());
    }
    body
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../tests/fixtures/message_created.json");
    const OPTIONS: &str = include_str!("../tests/fixtures/content_attributes_options.json");
    const FORM: &str = include_str!("../tests/fixtures/content_attributes_form.json");
    const CARDS: &str = include_str!("../tests/fixtures/content_attributes_cards.json");

    const ALL_CONTENT: [SampleContent; 4] = [
        SampleContent::Text,
        SampleContent::InputSelect,
        SampleContent::Form,
        SampleContent::Cards,
    ];

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
    fn seed_fixture_parses_as_message_created() {
        let message: MessageCreated = serde_json::from_str(SEED).expect("seed parses");
        assert_eq!(message.event, "message_created");
        assert_eq!(message.id, Id(1));
        assert_eq!(message.message_type, MessageType::Incoming);
        assert_eq!(message.content_type, ContentType::Other("enum".to_owned()));
        assert_eq!(message.content_attributes, ContentAttributes::Empty);
        assert_eq!(message.sender.map(|sender| sender.id), Some(Id(1)));
        assert_eq!(message.account.id, Id(1));
        let conversation = message.conversation.expect("conversation present");
        assert_eq!(conversation.display_id, Some(Id(1)));
        let browser = conversation
            .additional_attributes
            .and_then(|attributes| attributes.browser)
            .expect("browser present");
        assert_eq!(browser.browser_version.as_deref(), Some("80.0.3987.122"));
    }

    #[test]
    fn content_attribute_fixtures_parse_into_their_variants() {
        let options: ContentAttributes = serde_json::from_str(OPTIONS).expect("options parse");
        assert!(
            matches!(&options, ContentAttributes::Options { items, submitted_values }
                if items.len() == 2 && submitted_values == &[choice("Option 1", "option_1")]),
            "{options:?}"
        );
        let form: ContentAttributes = serde_json::from_str(FORM).expect("form parses");
        assert!(
            matches!(&form, ContentAttributes::Form { items, submitted_values }
                if items[0].name == "unique_name_of_the_field"
                    && submitted_values[0].value == "sample_value"),
            "{form:?}"
        );
        let cards: ContentAttributes = serde_json::from_str(CARDS).expect("cards parse");
        assert!(
            matches!(&cards, ContentAttributes::Cards { items }
                if items[0].actions[0].text == "View More"),
            "{cards:?}"
        );
    }

    #[test]
    fn empty_and_unknown_content_attributes_are_told_apart() {
        let empty: ContentAttributes = serde_json::from_str("{}").expect("{} parses");
        assert_eq!(empty, ContentAttributes::Empty);
        assert_eq!(serde_json::to_string(&empty).ok().as_deref(), Some("{}"));
        let other: ContentAttributes =
            serde_json::from_str(r#"{"in_reply_to":7}"#).expect("other parses");
        assert!(
            matches!(&other, ContentAttributes::Other(map) if map.contains_key("in_reply_to")),
            "{other:?}"
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
        let from_string: Id = serde_json::from_str(r#""31""#).expect("string id");
        let from_integer: Id = serde_json::from_str("31").expect("integer id");
        assert_eq!(from_string, from_integer);
        assert_eq!(
            serde_json::to_string(&from_string).ok().as_deref(),
            Some("31")
        );
        for bad in ["0", "-1", "1.5", r#""""#, r#""1e3""#, "null"] {
            assert!(
                serde_json::from_str::<Id>(bad).is_err(),
                "{bad} accepted as an Id"
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

    #[test]
    fn every_sample_round_trips_through_the_envelope() {
        let events = KNOWN_EVENTS.iter().copied().chain(["order_shipped"]);
        for event in events {
            for content in ALL_CONTENT {
                let body = sample(event, 77, content);
                let envelope = decode_envelope(&body)
                    .unwrap_or_else(|error| panic!("{event} {content:?}: {error}"));
                assert_eq!(envelope.event, event);
                assert_eq!(envelope.account_id, 77, "{event}");
                let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
                assert!(value["created_at"].is_string(), "{event}: no created_at");
                assert!(value["id"].is_u64(), "{event}: no id");
            }
        }
    }

    #[test]
    fn message_samples_parse_with_the_chosen_content_shape() {
        for event in ["message_created", "message_updated"] {
            for content in ALL_CONTENT {
                let body = sample(event, 5, content);
                let message: MessageCreated = serde_json::from_slice(&body)
                    .unwrap_or_else(|error| panic!("{event} {content:?}: {error}"));
                assert_eq!(message.event, event);
                assert_eq!(message.account.id, Id(5));
                let shape_matches = match content {
                    SampleContent::Text => {
                        message.content_type == ContentType::Text
                            && message.message_type == MessageType::Incoming
                            && message.content_attributes == ContentAttributes::Empty
                    }
                    SampleContent::InputSelect => {
                        message.content_type == ContentType::InputSelect
                            && message.message_type == MessageType::Template
                            && matches!(
                                message.content_attributes,
                                ContentAttributes::Options { .. }
                            )
                    }
                    SampleContent::Form => {
                        message.content_type == ContentType::Form
                            && message.message_type == MessageType::Template
                            && matches!(message.content_attributes, ContentAttributes::Form { .. })
                    }
                    SampleContent::Cards => {
                        message.content_type == ContentType::Cards
                            && message.message_type == MessageType::Template
                            && matches!(message.content_attributes, ContentAttributes::Cards { .. })
                    }
                };
                assert!(shape_matches, "{event} {content:?}: {message:?}");
                assert_eq!(
                    decode_envelope(&body)
                        .ok()
                        .and_then(|envelope| envelope.inbox_id),
                    Some(SAMPLE_INBOX_ID)
                );
            }
        }
    }

    #[test]
    fn sample_content_names_are_chatwoot_content_types() {
        use clap::ValueEnum;
        let names: Vec<String> = SampleContent::value_variants()
            .iter()
            .filter_map(|content| content.to_possible_value())
            .map(|value| value.get_name().to_owned())
            .collect();
        assert_eq!(names, ["text", "input_select", "form", "cards"]);
    }

    #[test]
    fn message_samples_are_one_to_one_and_a_half_kib() {
        for content in ALL_CONTENT {
            let size = sample("message_created", 1, content).len();
            assert!((1024..=1536).contains(&size), "{content:?}: {size} bytes");
        }
    }
}
