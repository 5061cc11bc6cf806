//! The minimal lapin→hyper bridge the issue measures webhookd against ("webhookd should beat that
//! bridge"): consume, POST the body as it is, ack once the receiver answers 2xx. No lookup, no
//! signing, no retry path, no attempt log, no ack coalescing, one URL for every event.
//!
//! It runs as a process of its own (this executable, started with [`BRIDGE`]), as webhookd does,
//! so the benchmark starts, watches and stops it the same way, and the two share the same
//! machine in the same way: their rates, CPU and latency compare within one run. It has no signal
//! handler: SIGTERM ends it at once, which is all the benchmark asks of it.

use anyhow::bail;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};

use crate::amqp;
use crate::http::bare_client;

/// The first argument that makes this executable the bridge: `BRIDGE AMQP_URL QUEUE URL`.
pub const BRIDGE: &str = "--minimal-bridge";

/// webhookd's default prefetch, so both hold the same window of unacked messages.
const PREFETCH: u16 = 256;

/// The bridge's side of [`BRIDGE`]: runs until it is killed or the broker ends its consumer.
pub async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [amqp_url, queue, url] = &args[..] else {
        bail!("usage: {BRIDGE} AMQP_URL QUEUE URL, got {args:?}");
    };
    let connection = amqp::connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("bench-bridge"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let client = bare_client();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(delivery.data)))?;
        let client = client.clone();
        tokio::spawn(async move {
            let answered = match client.request(request).await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    ok && response.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            };
            let settled = if answered {
                delivery.acker.ack(BasicAckOptions::default()).await
            } else {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                delivery.acker.nack(requeue).await
            };
            if let Err(error) = settled {
                eprintln!("bridge: settling a delivery failed: {error}");
            }
        });
    }
    bail!("the broker ended the bridge's consumer of {queue}")
}
