//! The publisher's contract: what a message body must hold, and the typed `message_created` model.
//!
//! Three parts, because the daemon reads a body in two deliberately different ways, and also
//! writes bodies of its own:
//!
//! - `event/envelope.rs`, the hot path: [`decode_envelope`] runs for every consumed message and
//!   reads only what routing needs (`event`, `account.id`, the inbox id), skipping the rest
//!   without building it; [`event_id`] names an event for deduplication.
//! - `event/model.rs`, the typed model: [`MessageCreated`] is Chatwoot's `message_created`
//!   payload in full, for strict validation, samples and tests — never delivery.
//! - `event/sample.rs`: [`sample()`] builds realistic bodies for `webhookd publish --sample` and
//!   the benchmark, from the model for messages and as plain JSON for the other events.
//!
//! The rest of the crate uses them through the re-exports below. They depend on each other only
//! one way: `sample` on `model`, and `model` on `envelope` for the one rule both readers share
//! (how an id written as text reads).

mod envelope;
mod model;
mod sample;

pub use envelope::{decode_envelope, event_id, Envelope, Malformed, KNOWN_EVENTS, MAX_EVENT_NAME};
pub use model::{
    Account, Browser, Card, CardAction, Choice, Contact, ContentAttributes, ContentType,
    Conversation, ConversationAttributes, FormField, FormValue, Id, Inbox, InitiatedAt,
    MessageCreated, MessageType, Sender,
};
pub use sample::{sample, sample_in, SampleContent};
