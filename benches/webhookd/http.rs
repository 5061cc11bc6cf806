//! P: what a bare HTTP client moves to the same receiver, with nothing of webhookd in the way.

use anyhow::ensure;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::events::{now_ns, Bodies};
use crate::procfs;
use crate::report::Raw;

/// The first argument that makes this executable the bare client of [`run_apart`].
pub const APART: &str = "--bare-client-apart";

pub type BareClient = Client<HttpConnector, Full<Bytes>>;

/// The pooled hyper-util client (the client webhookd itself is built on) that P and the minimal
/// bridge POST with. It sets `TCP_NODELAY`, as webhookd's connector does, so neither baseline
/// waits on Nagle's algorithm where webhookd would not.
pub fn bare_client() -> BareClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// POSTs events `0..count` to `url`, `in_flight` at a time, on the [`bare_client`]; requests per
/// second from the first send to the last answer.
pub async fn post_rate(
    url: &str,
    bodies: &Bodies,
    count: u64,
    in_flight: usize,
) -> anyhow::Result<f64> {
    let client = bare_client();
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

/// Runs [`post_rate`] in a child process (this executable, with [`APART`]) and returns its rate
/// and its own CPU per 1,000 requests. The child builds the same bodies from the same count.
pub async fn run_apart(
    url: &str,
    bodies: &Bodies,
    count: u64,
    in_flight: usize,
) -> anyhow::Result<Raw> {
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([APART, url])
        .args([*bodies.accounts().end(), count, in_flight as u64].map(|n| n.to_string()))
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "the bare client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let figures: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [rate, cpu_seconds_per_1000] = figures[..] else {
        anyhow::bail!("the bare client printed {text:?}, not a rate and a CPU figure");
    };
    Ok(Raw {
        rate,
        cpu_seconds_per_1000,
    })
}

/// The child's side of [`run_apart`]: `APART URL BODIES COUNT IN_FLIGHT` on the command line;
/// prints the rate and its own CPU seconds per 1,000 requests.
pub async fn client_apart() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [url, bodies, count, in_flight] = &args[..] else {
        anyhow::bail!("usage: {APART} URL BODIES COUNT IN_FLIGHT, got {args:?}");
    };
    let count: u64 = count.parse()?;
    let bodies = Bodies::new(bodies.parse()?);
    let pid = std::process::id();
    let before = procfs::cpu_seconds(pid)?;
    let rate = post_rate(url, &bodies, count, in_flight.parse()?).await?;
    let cpu = procfs::cpu_seconds(pid)? - before;
    println!("{rate} {}", cpu / (count as f64 / 1000.0));
    Ok(())
}

/// One request; its status, the `name=value` of each cookie it sets, and its body.
pub async fn send(
    client: &BareClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(StatusCode, Vec<String>, String)> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body.to_owned())))?)
        .await?;
    let status = response.status();
    let cookies = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, cookies, String::from_utf8_lossy(&body).into_owned()))
}
