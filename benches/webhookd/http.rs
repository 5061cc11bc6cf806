//! P: what a bare HTTP client moves to the same receiver, with nothing of webhookd in the way.

use anyhow::ensure;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::events::{now_ns, Bodies};

/// POSTs events `0..count` to `url`, `in_flight` at a time, on a pooled hyper-util client (the
/// client webhookd itself is built on); requests per second from the first send to the last
/// answer.
pub async fn post_rate(
    url: &str,
    bodies: &Bodies,
    count: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let started = now_ns();
    let mut answers = futures_util::stream::iter(0..count)
        .map(|i| {
            let request = Request::builder()
                .method(Method::POST)
                .uri(url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(bodies.get(i).clone()));
            let client = &client;
            async move {
                let response = client.request(request?).await?;
                let status = response.status();
                response.into_body().collect().await?;
                anyhow::Ok(status)
            }
        })
        .buffer_unordered(in_flight);
    while let Some(status) = answers.next().await {
        ensure!(status? == StatusCode::OK, "the receiver did not answer 200");
    }
    let elapsed_ns = now_ns().saturating_sub(started);
    ensure!(elapsed_ns > 0, "the bare client took no time");
    Ok(count as f64 / (elapsed_ns as f64 / 1e9))
}
