//! The console under load: while webhookd delivers a throughput run, one browser-like client
//! signs in as the operator and loads the Webhooks page over and over, one request at a time,
//! timing each. The page reads the registry and each listed webhook's last attempt, the same
//! store the delivery path is writing to, so its tail is what a person sees while the daemon is
//! busy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use http::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::events::now_ns;
use crate::http::{bare_client, send, BareClient};

/// The admin token every run's config sets, so the console can be signed in to.
pub const TOKEN: &str = "bench-console-token-0123456789";

/// How long the probe waits for the daemon's admin listener to answer its sign-in.
const SIGN_IN_PATIENCE: Duration = Duration::from_secs(30);

/// Signs in to the console at `admin`, then loads `/ui/webhooks` until `stop`; returns each
/// load's time in nanoseconds.
pub async fn probe(admin: SocketAddr, stop: CancellationToken) -> anyhow::Result<Vec<u64>> {
    let client = bare_client();
    let base = format!("http://{admin}");
    let deadline = Instant::now() + SIGN_IN_PATIENCE;
    let session = loop {
        match sign_in(&client, &base).await {
            Ok(session) => break session,
            // The daemon is still starting.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error.context("signing in to the console")),
        }
    };
    let mut times = Vec::new();
    while !stop.is_cancelled() {
        let started = now_ns();
        let (status, _, body) = send(
            &client,
            Method::GET,
            &format!("{base}/ui/webhooks"),
            &[("cookie", &session)],
            "",
        )
        .await?;
        ensure!(
            status == StatusCode::OK && body.contains("<h1>Webhooks</h1>"),
            "the Webhooks page answered {status}"
        );
        times.push(now_ns().saturating_sub(started));
    }
    Ok(times)
}

/// A session cookie from the sign-in form, as a browser gets one.
async fn sign_in(client: &BareClient, base: &str) -> anyhow::Result<String> {
    let (_, cookies, page) = send(client, Method::GET, &format!("{base}/ui/"), &[], "").await?;
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no CSRF field on the sign-in page")?;
    let cookie = cookies.first().context("no sign-in cookie")?;
    let body = format!("csrf={csrf}&token={TOKEN}");
    let (status, cookies, _) = send(
        client,
        Method::POST,
        &format!("{base}/ui/sign-in"),
        &[
            ("cookie", cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &body,
    )
    .await?;
    ensure!(status == StatusCode::SEE_OTHER, "sign-in answered {status}");
    cookies
        .into_iter()
        .find(|c| c.starts_with("webhookd_session="))
        .context("no session cookie")
}
