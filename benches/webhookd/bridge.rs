//! The minimal lapin→hyper bridge webhookd is measured against ("webhookd should beat that
//! bridge"): consume, POST the body as it is, ack once the receiver answers 2xx. No lookup, no
//! signing, no retry path, no attempt log, no ack coalescing, the same URLs for every event.
//!
//! Given one URL it is that bridge. Given ten, it POSTs each event to all of them at once
//! and acks once all have answered: the bare libraries' side of the fan-out scenario, so the
//! fan-out target, which assumes each delivery costs what a bare POST costs, can be set beside
//! what lapin and hyper alone move on this machine.
//!
//! It runs as a process of its own (this executable, started with [`BRIDGE`]), as webhookd does,
//! so the benchmark starts, watches and stops it the same way, and the two share the same
//! machine in the same way: their rates, CPU and latency compare within one run. It has no signal
//! handler: SIGTERM ends it at once, which is all the benchmark asks of it.

use anyhow::bail;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Acker;

use crate::amqp;
use crate::http::{bare_client, BareClient};

/// The first argument that makes this executable the bridge: `BRIDGE AMQP_URL QUEUE URL…`.
pub const BRIDGE: &str = "--minimal-bridge";

/// webhookd's default prefetch, so both hold the same window of unacked messages.
const PREFETCH: u16 = 256;

/// The bridge's side of [`BRIDGE`]: runs until it is killed or the broker ends its consumer.
pub async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [amqp_url, queue, urls @ ..] = &args[..] else {
        bail!("usage: {BRIDGE} AMQP_URL QUEUE URL…, got {args:?}");
    };
    if urls.is_empty() {
        bail!("usage: {BRIDGE} AMQP_URL QUEUE URL…: no URL given");
    }
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
    let uris = urls
        .iter()
        .map(|url| url.parse::<Uri>())
        .collect::<Result<Vec<_>, _>>()?;
    let client = bare_client();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let body = Bytes::from(delivery.data);
        let acker = delivery.acker;
        // One URL is the plain bridge, kept to the one request it makes.
        if let [uri] = &uris[..] {
            let post = post(client.clone(), request(uri, body)?);
            tokio::spawn(async move { settle(acker, post.await).await });
        } else {
            let posts = uris
                .iter()
                .map(|uri| Ok(post(client.clone(), request(uri, body.clone())?)))
                .collect::<anyhow::Result<FuturesUnordered<_>>>()?;
            tokio::spawn(
                async move { settle(acker, posts.all(|ok| async move { ok }).await).await },
            );
        }
    }
    bail!("the broker ended the bridge's consumer of {queue}")
}

/// A POST of `body` to `uri`: no headers but the content type, as a bare client sends it.
fn request(uri: &Uri, body: Bytes) -> http::Result<Request<Full<Bytes>>> {
    Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
}

/// Sends `request`; true once the receiver answered 2xx and its answer was read.
async fn post(client: BareClient, request: Request<Full<Bytes>>) -> bool {
    match client.request(request).await {
        Ok(response) => {
            response.status().is_success() && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Acks a delivery every request of which was answered; requeues it otherwise.
async fn settle(acker: Acker, answered: bool) {
    let settled = if answered {
        acker.ack(BasicAckOptions::default()).await
    } else {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        acker.nack(requeue).await
    };
    if let Err(error) = settled {
        eprintln!("bridge: settling a delivery failed: {error}");
    }
}
