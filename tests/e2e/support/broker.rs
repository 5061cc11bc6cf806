//! Talking to the test broker directly, as a publisher or an operator would.
//!
//! The broker is real: `scripts/test.sh` starts a private node and exports its URL. A missing
//! broker fails every test loudly; nothing here skips.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub fn url() -> String {
    std::env::var("WEBHOOKD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5679/%2f".to_owned())
}

pub async fn connect() -> Connection {
    let url = url();
    Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no RabbitMQ at {url} ({e}): run the tests with scripts/test.sh, which starts one"
            )
        })
}

/// Publishes `body` to `exchange` with `routing_key`, persistent, waiting for the confirm.
pub async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            body,
            properties.with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "broker nacked a test publish");
    let _ = channel.close(200, ShortString::from("done")).await;
}

/// How many messages are ready in `queue` (0 if it does not exist yet).
pub async fn ready_count(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let count = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0);
    let _ = channel.close(200, ShortString::from("done")).await;
    count
}
