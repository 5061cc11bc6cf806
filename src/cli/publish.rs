//! `webhookd publish`: one event sent as an application would send it, through the broker
//! module's [`Publisher`], so a publish here is confirmed (and mandatory) exactly as the daemon's
//! own are. Only the words differ: a person reads these, so each failure says what became of the
//! event.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use lapin::types::ShortString;
use lapin::BasicProperties;

use crate::broker::{self, BrokerError, Publisher, Receives, Topology};
use crate::config::Config;
use crate::event::{self, SampleContent};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "sample"])))]
pub struct PublishArgs {
    /// A JSON file holding the event body, published byte for byte.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Publish a generated sample of this event (e.g. message_created).
    #[arg(long, value_name = "EVENT")]
    pub sample: Option<String>,
    /// The account id of a sample.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub account: u64,
    /// The content-attributes shape of a message sample.
    #[arg(long, value_enum, default_value = "text")]
    pub content_type: SampleContent,
    /// The routing key (default: the body's `event`).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// The AMQP message_id (default: a new UUID).
    #[arg(long)]
    pub message_id: Option<String>,
}

/// `webhookd publish`: one persistent, confirmed message, as a publisher would send it.
pub async fn publish(config: &Config, args: PublishArgs) -> anyhow::Result<()> {
    let body = match (&args.file, &args.sample) {
        (Some(path), _) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, Some(name)) => event::sample(name, args.account, args.content_type),
        (None, None) => bail!("give --file PATH or --sample EVENT"),
    };
    let routing_key = match args.routing_key {
        Some(key) => key,
        None => event::decode_envelope(&body)
            .map(|envelope| envelope.event)
            .map_err(|e| {
                anyhow!("cannot take the routing key from the body ({e}); pass --routing-key")
            })?,
    };
    let message_id = args
        .message_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (connection, node) =
        broker::connect(&config.broker, 0, "publish", Receives::OwnMessages).await?;
    let connection = Arc::new(connection);
    let topology =
        Topology::from_config(&config.broker)
            .on(broker::announced_version(&config.broker, &node).await?);
    // Declaring what the daemon declares means an event published before the daemon first
    // starts waits in its queue instead of vanishing.
    broker::declare(&connection, &topology).await?;
    let publisher = Publisher::open(&connection, topology.clone()).await?;
    // Persistent (delivery mode 2): `Publisher::publish` sets it on every message.
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id.as_str()));
    let published = publisher
        .publish(&topology.exchange, &routing_key, &body, properties)
        .await;
    let _ = connection.close(200, ShortString::from("published")).await;
    match published {
        Ok(()) => {
            println!(
                "published {} bytes to {} with routing key {routing_key}, message_id {message_id}",
                body.len(),
                topology.exchange
            );
            Ok(())
        }
        Err(BrokerError::Unroutable(_)) => bail!(
            "no queue is bound to {} for routing key {routing_key}: the event was dropped",
            topology.exchange
        ),
        Err(BrokerError::Nacked(_)) => bail!("the broker refused the event (nack)"),
        Err(BrokerError::Unconfirmed(_)) => bail!("the broker did not confirm the event"),
        Err(other) => Err(other.into()),
    }
}
