//! `webhookd webhooks …`, and the [`Registry`] client behind it: the running daemon's admin API
//! when it answers (the daemon holds sled's exclusive lock), otherwise the store opened directly.
//! `dlq replay` asks the same client which webhooks still take deliveries.

use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::{sign, Client};
use crate::lifecycle::{check_event, send_test, Health, Trial, WebhookView, DEFAULT_TEST_EVENT};
use crate::registry;
use crate::store::{Attempt, Cursor, NewWebhook, Store, StoreError, Webhook, WebhookPatch};

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register a webhook; prints it with its id and, once, its secret.
    Add {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        account: u64,
        #[arg(long)]
        url: String,
        /// Event names, comma-separated, or '*' for all.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        events: Vec<String>,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        inbox: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        secret: SecretArgs,
        /// Requests per second this receiver takes at most (per webhookd instance).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate_limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List webhooks, optionally of one account.
    List {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        account: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Show one webhook, with its health while the daemon runs.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a webhook; only the options given change.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        inbox: Option<u64>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        #[command(flatten)]
        secret: SecretArgs,
        /// Generate a new secret (printed once) and keep the current one signing too for
        /// delivery.secret_rotation_grace, so the receiver can switch without failed checks.
        #[arg(long, conflicts_with_all = ["secret", "generate_secret"])]
        rotate_secret: bool,
        /// Requests per second this receiver takes at most (per webhookd instance).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate_limit: Option<u32>,
        /// Remove the rate limit.
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send one signed sample event to this webhook now, outside the retry path; exits 0 when
    /// the receiver answers 2xx, 1 otherwise.
    Test {
        id: String,
        /// The sample's event name.
        #[arg(long, default_value = DEFAULT_TEST_EVENT)]
        event: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a webhook.
    Rm { id: String },
    /// The webhook's most recent delivery attempts, newest first.
    Attempts {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SecretArgs {
    /// The signing secret (whsec_… or any string of 16+ characters).
    #[arg(long, conflicts_with = "generate_secret")]
    pub secret: Option<String>,
    /// Generate a whsec_ signing secret (printed once).
    #[arg(long)]
    pub generate_secret: bool,
}

impl SecretArgs {
    fn resolve(&self) -> Option<String> {
        match (&self.secret, self.generate_secret) {
            (Some(secret), _) => Some(secret.clone()),
            (None, true) => Some(sign::generate_secret()),
            (None, false) => None,
        }
    }
}

/// `webhookd webhooks …`.
pub async fn webhooks(config: &Config, command: WebhooksCommand) -> anyhow::Result<()> {
    let registry = Registry::connect(config).await?;
    match command {
        WebhooksCommand::Add {
            account,
            url,
            events,
            inbox,
            name,
            secret,
            rate_limit,
            json,
        } => {
            let new = NewWebhook {
                account_id: account,
                url,
                events,
                inbox_id: inbox,
                secret: secret.resolve(),
                name,
                enabled: true,
                rate_limit,
            };
            warn_if_refused(config, &new.url).await;
            let webhook = registry.create(new).await?;
            print_webhook(&webhook, json);
            if !json && webhook.secret.is_some() {
                println!("the secret is shown only now: store it where the receiver can read it");
            }
        }
        WebhooksCommand::List { account, json } => {
            let list = registry.list(account).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for webhook in &list {
                    println!("{}", summary(webhook));
                }
                println!("{} webhook(s)", list.len());
            }
        }
        WebhooksCommand::Show { id, json } => {
            let view = registry.show(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_webhook(&view.webhook, false);
                match &view.health {
                    Some(health) => print_health(health),
                    None => println!("  health: not known (no daemon running)"),
                }
            }
        }
        WebhooksCommand::Test { id, event, json } => {
            check_event(&event).map_err(|message| anyhow!(message))?;
            let trial = registry.test(config, &id, &event).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&trial)?);
            } else {
                let result = match (trial.status, &trial.error) {
                    (Some(status), _) => format!("status {status}"),
                    (None, Some(error)) => format!("error: {error}"),
                    (None, None) => "no answer".to_owned(),
                };
                println!(
                    "{} {}  {result}  {} ms  delivery {}",
                    trial.webhook_id, trial.event, trial.latency_ms, trial.delivery_id
                );
            }
            if !trial.ok {
                bail!("the receiver did not answer 2xx");
            }
        }
        WebhooksCommand::Update {
            id,
            url,
            events,
            inbox,
            name,
            enable,
            disable,
            secret,
            rotate_secret,
            rate_limit,
            no_rate_limit,
            json,
        } => {
            if let Some(url) = &url {
                warn_if_refused(config, url).await;
            }
            let patch = WebhookPatch {
                url,
                events,
                inbox_id: inbox.map(Some),
                name: name.map(Some),
                enabled: match (enable, disable) {
                    (true, _) => Some(true),
                    (_, true) => Some(false),
                    _ => None,
                },
                secret: secret.resolve().map(Some),
                rate_limit: match (rate_limit, no_rate_limit) {
                    (Some(rate), _) => Some(Some(rate)),
                    (None, true) => Some(None),
                    (None, false) => None,
                },
            };
            let webhook = if rotate_secret {
                // The other changes first, so a refused one leaves the secret as it was.
                if patch_json(&patch)
                    .as_object()
                    .is_some_and(|f| !f.is_empty())
                {
                    registry.update(&id, patch).await?;
                }
                let grace = config.delivery.secret_rotation_grace;
                registry.rotate_secret(&id, grace).await?
            } else {
                registry.update(&id, patch).await?
            };
            print_webhook(&webhook, json);
            if rotate_secret && !json {
                println!(
                    "the new secret is shown only now: store it where the receiver can read it"
                );
            }
        }
        WebhooksCommand::Rm { id } => {
            registry.delete(&id).await?;
            println!("deleted {id}");
        }
        WebhooksCommand::Attempts { id, limit, json } => {
            let attempts = registry.attempts(&id, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&attempts)?);
            } else {
                for a in &attempts {
                    let result = match (a.status, &a.error) {
                        (Some(status), _) => status.to_string(),
                        (None, Some(error)) => error.clone(),
                        (None, None) => "-".to_owned(),
                    };
                    println!(
                        "{}  {}  attempt {}  {}  {} ms  {}",
                        a.at, a.delivery_id, a.attempt, result, a.latency_ms, a.outcome
                    );
                }
            }
        }
    }
    Ok(())
}

/// `webhooks add` warns (but registers) when the URL's host resolves to an address deliveries
/// would refuse: the receiver may move, and the allow-list may change.
async fn warn_if_refused(config: &Config, url: &str) {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return;
    };
    let Some(host) = uri.host() else { return };
    let port = uri.port_u16().unwrap_or(443);
    if let Ok(addrs) = tokio::net::lookup_host(format!("{host}:{port}")).await {
        for addr in addrs {
            if crate::delivery::is_refused(addr.ip(), &config.delivery.allow_networks) {
                eprintln!(
                    "warning: {host} resolves to {}, which deliveries refuse unless delivery.allow_networks contains it",
                    addr.ip()
                );
                return;
            }
        }
    }
}

fn summary(w: &Webhook) -> String {
    format!(
        "{}  account {}  {}  events {}  {}{}",
        w.id,
        w.account_id,
        w.url,
        w.events.join(","),
        if w.enabled { "enabled" } else { "disabled" },
        w.name
            .as_deref()
            .map(|n| format!("  {n:?}"))
            .unwrap_or_default(),
    )
}

fn print_health(health: &Health) {
    let rate = health
        .success_rate_24h
        .map_or("-".to_owned(), |rate| format!("{:.1} %", rate * 100.0));
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
    println!(
        "  health: circuit {}  24 h: {} attempts, {rate} succeeded, p50 <= {}, p99 <= {}",
        serde_json::to_value(health.circuit)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        health.attempts_24h,
        ms(health.latency_p50_ms_24h),
        ms(health.latency_p99_ms_24h),
    );
    let or_never = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".to_owned());
    let failure = match (&health.last_failure_status, &health.last_failure_error) {
        (Some(status), _) => format!(" ({status})"),
        (None, Some(error)) => format!(" ({error})"),
        (None, None) => String::new(),
    };
    println!(
        "  last success {}  last failure {}{failure}",
        or_never(&health.last_success_at),
        or_never(&health.last_failure_at)
    );
    if let Some(since) = &health.failing_since {
        println!(
            "  failing since {since}: {} failed attempts in a row",
            health.consecutive_failures
        );
    }
}

fn print_webhook(webhook: &Webhook, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(webhook).unwrap_or_default()
        );
        return;
    }
    println!("{}", summary(webhook));
    if let Some(inbox) = webhook.inbox_id {
        println!("  inbox {inbox}");
    }
    if let Some(secret) = &webhook.secret {
        println!("  secret {secret}");
    }
    if let Some(rate) = webhook.rate_limit {
        println!("  rate limit {rate}/s");
    }
    if let (false, Some(reason), Some(at)) = (
        webhook.enabled,
        &webhook.disabled_reason,
        &webhook.disabled_at,
    ) {
        println!("  disabled ({reason}) at {at}");
    }
    if let (Some(previous), Some(until)) = (
        &webhook.previous_secret,
        &webhook.previous_secret_expires_at,
    ) {
        println!("  previous secret {previous} also signs until {until}");
    }
    println!(
        "  created {}  updated {}",
        webhook.created_at, webhook.updated_at
    );
}

/// Where webhook commands go: the daemon's API, or, when no daemon runs here, the store itself
/// brought up to date with the registry log, and changed through it as the daemon would.
pub(super) enum Registry {
    Api(Api),
    Direct(registry::Registry),
}

/// How long the CLI waits for the broker to bring a store no daemon holds up to date.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

impl Registry {
    pub(super) async fn connect(config: &Config) -> anyhow::Result<Registry> {
        let api = Api::new(config);
        match api.call::<Value>(Method::GET, "/healthz", None).await {
            Ok(_) => Ok(Registry::Api(api)),
            Err(ApiFailure::Unreachable(why)) => match Store::open(&config.store.path) {
                Ok(store) => Ok(Registry::Direct(follow_log(config, store).await?)),
                Err(StoreError::Locked { .. }) => bail!(
                    "the daemon's admin API at {} is not answering ({why}) and its store {} is locked by another process",
                    config.admin.listen,
                    config.store.path.display()
                ),
                Err(e) => Err(anyhow!(
                    "no daemon answers at {} ({why}), and opening the store {} directly failed: {e}",
                    config.admin.listen,
                    config.store.path.display()
                )),
            },
            Err(other) => Err(other.into()),
        }
    }

    async fn create(&self, new: NewWebhook) -> anyhow::Result<Webhook> {
        match self {
            Registry::Api(api) => Ok(api
                .call(
                    Method::POST,
                    "/v1/webhooks",
                    Some(serde_json::to_value(&new)?),
                )
                .await?),
            Registry::Direct(registry) => Ok(registry.create(new).await?),
        }
    }

    async fn list(&self, account: Option<u64>) -> anyhow::Result<Vec<Webhook>> {
        match self {
            Registry::Api(api) => {
                // The API answers in pages; each one after the last webhook of the one before.
                const PAGE: usize = 1000;
                let mut all = Vec::new();
                loop {
                    let mut path = format!("/v1/webhooks?limit={PAGE}");
                    if let Some(account) = account {
                        path.push_str(&format!("&account_id={account}"));
                    }
                    if let Some(last) = all.last().map(|w: &Webhook| Cursor {
                        account_id: w.account_id,
                        webhook_id: w.id.clone(),
                    }) {
                        path.push_str(&format!("&cursor={last}"));
                    }
                    let page: Vec<Webhook> = api.call(Method::GET, &path, None).await?;
                    let full = page.len() == PAGE;
                    all.extend(page);
                    if !full {
                        return Ok(all);
                    }
                }
            }
            Registry::Direct(registry) => Ok(registry
                .store()
                .list(account)?
                .iter()
                .map(Webhook::masked)
                .collect()),
        }
    }

    /// The webhook with `id`, or `None` if there is none.
    pub(super) async fn find(&self, id: &str) -> anyhow::Result<Option<Webhook>> {
        match self {
            Registry::Api(api) => {
                match api
                    .call(Method::GET, &format!("/v1/webhooks/{id}"), None)
                    .await
                {
                    Ok(webhook) => Ok(Some(webhook)),
                    Err(ApiFailure::Status(StatusCode::NOT_FOUND, _)) => Ok(None),
                    Err(other) => Err(other.into()),
                }
            }
            Registry::Direct(registry) => Ok(registry.store().get(id)?.map(|w| w.masked())),
        }
    }

    /// The webhook, with its health when the daemon answers.
    async fn show(&self, id: &str) -> anyhow::Result<WebhookView> {
        match self {
            Registry::Api(api) => Ok(api
                .call(Method::GET, &format!("/v1/webhooks/{id}"), None)
                .await?),
            Registry::Direct(registry) => registry
                .store()
                .get(id)?
                .map(|w| WebhookView {
                    webhook: w.masked(),
                    health: None,
                })
                .ok_or_else(|| anyhow!("no webhook with id {id}")),
        }
    }

    /// Sends a test event: by the daemon when it runs, else from here, with the same settings.
    async fn test(&self, config: &Config, id: &str, event: &str) -> anyhow::Result<Trial> {
        match self {
            Registry::Api(api) => Ok(api
                .call(
                    Method::POST,
                    &format!("/v1/webhooks/{id}/test?event={event}"),
                    None,
                )
                .await?),
            Registry::Direct(registry) => {
                let store = registry.store();
                let webhook = store
                    .get(id)?
                    .ok_or_else(|| anyhow!("no webhook with id {id}"))?;
                let client = Client::new(config.delivery.client_settings())?;
                let trial = send_test(&client, store, &webhook, event).await;
                store.flush().await?;
                Ok(trial)
            }
        }
    }

    async fn update(&self, id: &str, patch: WebhookPatch) -> anyhow::Result<Webhook> {
        match self {
            Registry::Api(api) => Ok(api
                .call(
                    Method::PATCH,
                    &format!("/v1/webhooks/{id}"),
                    Some(patch_json(&patch)),
                )
                .await?),
            Registry::Direct(registry) => {
                let secret_changed = patch.secret.is_some();
                let webhook = registry
                    .update(id, &patch)
                    .await?
                    .ok_or_else(|| anyhow!("no webhook with id {id}"))?;
                Ok(if secret_changed {
                    webhook.revealed()
                } else {
                    webhook.masked()
                })
            }
        }
    }

    /// A new secret, shown in the result; the old one keeps signing for `grace` (a running
    /// daemon applies its own `delivery.secret_rotation_grace`, normally from the same file).
    async fn rotate_secret(&self, id: &str, grace: Duration) -> anyhow::Result<Webhook> {
        match self {
            Registry::Api(api) => Ok(api
                .call(
                    Method::POST,
                    &format!("/v1/webhooks/{id}/rotate-secret"),
                    None,
                )
                .await?),
            Registry::Direct(registry) => Ok(registry
                .rotate_secret(id, sign::generate_secret(), grace)
                .await?
                .ok_or_else(|| anyhow!("no webhook with id {id}"))?
                .revealed()),
        }
    }

    async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let deleted = match self {
            Registry::Api(api) => {
                match api
                    .call::<Value>(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
                    .await
                {
                    Ok(_) => true,
                    Err(ApiFailure::Status(StatusCode::NOT_FOUND, _)) => false,
                    Err(other) => return Err(other.into()),
                }
            }
            Registry::Direct(registry) => registry.delete(id).await?,
        };
        if deleted {
            Ok(())
        } else {
            bail!("no webhook with id {id}")
        }
    }

    async fn attempts(&self, id: &str, limit: usize) -> anyhow::Result<Vec<Attempt>> {
        match self {
            Registry::Api(api) => Ok(api
                .call(
                    Method::GET,
                    &format!("/v1/webhooks/{id}/attempts?limit={limit}"),
                    None,
                )
                .await?),
            Registry::Direct(registry) => {
                let store = registry.store();
                if store.get(id)?.is_none() {
                    bail!("no webhook with id {id}");
                }
                Ok(store.attempts(id, limit)?)
            }
        }
    }
}

/// The registry over `store` once it has applied the log up to now. The follower it starts runs
/// until the command's process ends.
async fn follow_log(config: &Config, store: Store) -> anyhow::Result<registry::Registry> {
    let stopped = CancellationToken::new();
    let (registry, _follower) = registry::Registry::follow(&config.broker, store, &stopped)?;
    let why = std::sync::Mutex::new(None);
    let waiting = |reason: &str| {
        if let Ok(mut why) = why.lock() {
            *why = Some(reason.to_owned());
        }
    };
    match tokio::time::timeout(CATCH_UP_TIMEOUT, registry.catch_up(&stopped, waiting)).await {
        Ok(caught_up) => caught_up?,
        Err(_) => bail!(
            "no daemon answers at {}, and the registry log in the broker could not be read \
             within {}s ({})",
            config.admin.listen,
            CATCH_UP_TIMEOUT.as_secs(),
            why.lock()
                .ok()
                .and_then(|why| why.clone())
                .unwrap_or_else(|| "the broker did not answer".to_owned())
        ),
    }
    Ok(registry)
}

/// The PATCH body for a patch: only the fields that change.
fn patch_json(patch: &WebhookPatch) -> Value {
    let mut fields = serde_json::Map::new();
    if let Some(url) = &patch.url {
        fields.insert("url".into(), json!(url));
    }
    if let Some(events) = &patch.events {
        fields.insert("events".into(), json!(events));
    }
    if let Some(inbox) = &patch.inbox_id {
        fields.insert("inbox_id".into(), json!(inbox));
    }
    if let Some(name) = &patch.name {
        fields.insert("name".into(), json!(name));
    }
    if let Some(enabled) = patch.enabled {
        fields.insert("enabled".into(), json!(enabled));
    }
    if let Some(secret) = &patch.secret {
        fields.insert("secret".into(), json!(secret));
    }
    if let Some(rate_limit) = &patch.rate_limit {
        fields.insert("rate_limit".into(), json!(rate_limit));
    }
    Value::Object(fields)
}

/// A small client for the daemon's admin API.
pub(super) struct Api {
    base: String,
    token: Option<String>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ApiFailure {
    #[error("{0}")]
    Unreachable(String),
    #[error("the daemon answered {0}: {1}")]
    Status(StatusCode, String),
    #[error("unexpected answer from the daemon: {0}")]
    Invalid(String),
}

impl Api {
    fn new(config: &Config) -> Api {
        Api {
            base: format!("http://{}", config.admin.listen),
            token: config.admin.token().map(|t| t.expose().to_owned()),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiFailure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ApiFailure::Invalid(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.http.request(request))
            .await
            .map_err(|_| ApiFailure::Unreachable("timed out".into()))?
            .map_err(|e| ApiFailure::Unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiFailure::Invalid(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ApiFailure::Status(status, message));
        }
        let bytes = if bytes.is_empty() || !bytes.starts_with(b"{") && !bytes.starts_with(b"[") {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| ApiFailure::Invalid(e.to_string()))
    }
}
