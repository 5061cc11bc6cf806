//! Sample bodies for `webhookd publish --sample` and the benchmark: a `message_created` (or
//! `message_updated`) built from the typed model in one of four content shapes, and a small
//! Chatwoot-shaped object for every other event.

use std::time::SystemTime;

use serde_json::json;

use super::model::{
    Account, Browser, Card, CardAction, Choice, Contact, ContentAttributes, ContentType,
    Conversation, ConversationAttributes, FormField, FormValue, Id, Inbox, InitiatedAt,
    MessageCreated, MessageType, Sender,
};

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
    sample_in(event, account_id, None, content)
}

/// A sample as [`sample`] builds it, in `inbox_id` when given: `webhookd webhooks test` sends
/// one in the webhook's own account and inbox, so a receiver that checks them accepts it.
pub fn sample_in(
    event: &str,
    account_id: u64,
    inbox_id: Option<u64>,
    content: SampleContent,
) -> Vec<u8> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let inbox_id = inbox_id.unwrap_or(SAMPLE_INBOX_ID);
    let encoded = match event {
        "message_created" | "message_updated" => {
            serde_json::to_vec(&message_sample(event, account_id, inbox_id, content, now))
        }
        _ => serde_json::to_vec(&other_sample(event, account_id, inbox_id, now)),
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
    inbox_id: u64,
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
            id: Id(inbox_id),
            name: Some(SAMPLE_INBOX_NAME.to_owned()),
        }),
        conversation: Some(Conversation {
            display_id: Some(Id(rand::random_range(1..100_000))),
            inbox_id: Some(Id(inbox_id)),
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
fn other_sample(
    event: &str,
    account_id: u64,
    inbox_id: u64,
    created_at: String,
) -> serde_json::Value {
    let conversation_id: u64 = rand::random_range(1..100_000);
    let account = json!({ "id": account_id, "name": SAMPLE_ACCOUNT_NAME });
    let inbox = json!({
        "id": inbox_id,
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
            "inbox_id": inbox_id,
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
            "id": inbox_id,
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
mod tests {
    use super::*;
    use crate::event::envelope::{decode_envelope, KNOWN_EVENTS};

    const ALL_CONTENT: [SampleContent; 4] = [
        SampleContent::Text,
        SampleContent::InputSelect,
        SampleContent::Form,
        SampleContent::Cards,
    ];

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
    fn a_sample_in_an_inbox_names_that_inbox_wherever_a_sample_names_one() {
        let inbox_of = |body: &[u8]| decode_envelope(body).expect("an event").inbox_id;
        for event in KNOWN_EVENTS {
            let plain = sample(event, 9, SampleContent::Text);
            let placed = sample_in(event, 9, Some(71), SampleContent::Text);
            assert_eq!(inbox_of(&placed), inbox_of(&plain).map(|_| 71), "{event}");
        }
        let message = sample_in("message_created", 9, Some(71), SampleContent::Text);
        assert_eq!(inbox_of(&message), Some(71));
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
