//! The typed `message_created` model.
//!
//! [`MessageCreated`] models Chatwoot's `message_created` payload in full. It serves strict
//! validation, `webhookd publish --sample` and tests, never delivery. It accepts what Chatwoot and
//! the seed document actually send (ids as integers or digit strings, `null` sender, unknown
//! fields, content types and attribute shapes), because strict validation that rejects real
//! Chatwoot events would be worse than none.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::envelope::parse_positive_id;

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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../tests/fixtures/message_created.json");
    const OPTIONS: &str = include_str!("../../tests/fixtures/content_attributes_options.json");
    const FORM: &str = include_str!("../../tests/fixtures/content_attributes_form.json");
    const CARDS: &str = include_str!("../../tests/fixtures/content_attributes_cards.json");

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
            if items.len() == 2 && submitted_values == &[Choice {
                title: "Option 1".to_owned(),
                value: "option_1".to_owned(),
            }]),
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
    fn ids_decode_from_strings_and_integers_and_encode_as_integers() {
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
}
