//! The command line: the argument grammar, and every command that is not the daemon itself.
//!
//! These are edges of the program (they print for people and exit), so they use `anyhow` for
//! errors and say what went wrong in words an operator can act on. `webhooks …` talks to the
//! running daemon's admin API, because the daemon holds sled's exclusive lock; with no daemon
//! listening it opens the store itself (run as root, as the store's owner: `main` switches user
//! through `privilege` before the runtime starts). `dlq …` and `publish` talk to the broker directly, so they
//! work whether or not the daemon runs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::broker::{self, Topology};
use crate::config::{Config, DEFAULT_PATH};
use crate::delivery::{sign, DeadReason};
use crate::dlq::{self, Action, Entry, Filter};
use crate::event::{self, SampleContent};
use crate::store::{Attempt, NewWebhook, Store, StoreError, Webhook, WebhookPatch};

#[derive(Debug, Parser)]
#[command(
    name = "webhookd",
    version,
    about = "Delivers account events from RabbitMQ to webhooks: signed, retried, dead-lettered with a reason."
)]
pub struct Cli {
    /// The config file (TOML).
    #[arg(long, global = true, env = "WEBHOOKD_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: consume events and deliver them until SIGTERM.
    Run,
    /// Validate the config and print it, secrets masked.
    CheckConfig,
    /// Publish an event to the exchange, as an application would.
    Publish(PublishArgs),
    /// Manage webhooks (through the running daemon's admin API).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Inspect, replay and purge the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

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
    /// Show one webhook.
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

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter; the queue is left as it was.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// A dead letter's headers and body.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back for delivery on a fresh schedule.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters (only with --yes).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        all: bool,
        /// Really delete; without it, purge only says what it would delete.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Dead letters with this id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub account: Option<u64>,
    #[arg(long)]
    pub webhook: Option<String>,
    /// exhausted, rejected, gone, blocked_destination, malformed, too_large, webhook_disabled
    /// or redelivered.
    #[arg(long)]
    pub reason: Option<DeadReason>,
    #[arg(long)]
    pub event: Option<String>,
    /// Dead since this time: RFC 3339 ("2026-11-25T10:00:00Z") or an age ("2h").
    #[arg(long, value_parser = parse_since)]
    pub since: Option<SystemTime>,
}

impl FilterArgs {
    fn into_filter(self) -> Filter {
        Filter {
            ids: self.ids,
            account_id: self.account,
            webhook_id: self.webhook,
            reason: self.reason,
            event: self.event,
            since: self.since,
            exclude_webhooks: HashSet::new(),
        }
    }
}

fn parse_since(value: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        return Ok(time);
    }
    humantime::parse_duration(value)
        .map(|age| SystemTime::now() - age)
        .map_err(|_| {
            format!(
                "expected an RFC 3339 time (2026-11-25T10:00:00Z) or an age (2h), got {value:?}"
            )
        })
}

/// `webhookd check-config`.
pub fn check_config(config: &Config) {
    print!("{}", config.to_masked_toml());
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
    let topology =
        Topology::from_config(&config.broker).on(broker::announced_version(&config.broker).await?);
    let connection = broker::connect(&config.broker, "publish").await?;
    // Declaring what the daemon declares means an event published before the daemon first
    // starts waits in its queue instead of vanishing.
    broker::declare(&connection, &topology).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id.as_str()));
    let confirmation = channel
        .basic_publish(
            ShortString::from(topology.exchange.as_str()),
            ShortString::from(routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &body,
            properties,
        )
        .await?
        .await?;
    let _ = connection.close(200, ShortString::from("published")).await;
    match confirmation {
        Confirmation::Ack(None) => {
            println!(
                "published {} bytes to {} with routing key {routing_key}, message_id {message_id}",
                body.len(),
                topology.exchange
            );
            Ok(())
        }
        Confirmation::Ack(Some(_)) => bail!(
            "no queue is bound to {} for routing key {routing_key}: the event was dropped",
            topology.exchange
        ),
        Confirmation::Nack(_) => bail!("the broker refused the event (nack)"),
        Confirmation::NotRequested => bail!("the broker did not confirm the event"),
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
        WebhooksCommand::Show { id, json } => print_webhook(&registry.get(&id).await?, json),
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

/// Where webhook commands go: the daemon's API, or the store itself when no daemon runs.
enum Registry {
    Api(Api),
    Direct(Store),
}

impl Registry {
    async fn connect(config: &Config) -> anyhow::Result<Registry> {
        let api = Api::new(config);
        match api.call::<Value>(Method::GET, "/healthz", None).await {
            Ok(_) => Ok(Registry::Api(api)),
            Err(ApiFailure::Unreachable(why)) => match Store::open(&config.store.path) {
                Ok(store) => Ok(Registry::Direct(store)),
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
            Registry::Direct(store) => Ok(store.create(new).await?),
        }
    }

    async fn list(&self, account: Option<u64>) -> anyhow::Result<Vec<Webhook>> {
        match self {
            Registry::Api(api) => {
                let path = match account {
                    Some(a) => format!("/v1/webhooks?account_id={a}"),
                    None => "/v1/webhooks".to_owned(),
                };
                Ok(api.call(Method::GET, &path, None).await?)
            }
            Registry::Direct(store) => {
                Ok(store.list(account)?.iter().map(Webhook::masked).collect())
            }
        }
    }

    /// The webhook with `id`, or `None` if there is none.
    async fn find(&self, id: &str) -> anyhow::Result<Option<Webhook>> {
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
            Registry::Direct(store) => Ok(store.get(id)?.map(|w| w.masked())),
        }
    }

    async fn get(&self, id: &str) -> anyhow::Result<Webhook> {
        match self {
            Registry::Api(api) => Ok(api
                .call(Method::GET, &format!("/v1/webhooks/{id}"), None)
                .await?),
            Registry::Direct(store) => store
                .get(id)?
                .map(|w| w.masked())
                .ok_or_else(|| anyhow!("no webhook with id {id}")),
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
            Registry::Direct(store) => {
                let secret_changed = patch.secret.is_some();
                let webhook = store
                    .update(id, patch)
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
            Registry::Direct(store) => Ok(store
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
            Registry::Direct(store) => store.delete(id).await?,
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
            Registry::Direct(store) => {
                if store.get(id)?.is_none() {
                    bail!("no webhook with id {id}");
                }
                Ok(store.attempts(id, limit)?)
            }
        }
    }
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
    Value::Object(fields)
}

/// A small client for the daemon's admin API.
struct Api {
    base: String,
    token: Option<String>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

#[derive(Debug, thiserror::Error)]
enum ApiFailure {
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

    async fn call<T: DeserializeOwned>(
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

/// `webhookd dlq …`.
pub async fn dlq(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let topology = Topology::from_config(&config.broker);
    let connection = Arc::new(broker::connect(&config.broker, "dlq").await?);
    let outcome = dlq_on(config, &connection, &topology, command).await;
    let _ = connection.close(200, ShortString::from("done")).await;
    outcome
}

async fn dlq_on(
    config: &Config,
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    command: DlqCommand,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let entries = dlq::scan(
                connection,
                topology,
                &filter.into_filter(),
                limit,
                Action::Look,
                false,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for entry in &entries {
                    println!("{}", entry_line(entry));
                }
                println!("{} dead letter(s)", entries.len());
            }
        }
        DlqCommand::Show { id, json } => {
            let filter = Filter {
                ids: vec![id.clone()],
                ..Filter::default()
            };
            // The first with that id is enough: a duplicate carries the same delivery.
            let entries =
                dlq::scan(connection, topology, &filter, Some(1), Action::Look, true).await?;
            let Some(entry) = entries.first() else {
                bail!("no dead letter with id {id}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(entry)?);
            } else {
                println!("id: {}", entry.id);
                for (key, value) in &entry.headers {
                    println!("{key}: {value}");
                }
                println!("\n{}", entry.body.as_deref().unwrap_or_default());
            }
        }
        DlqCommand::Replay {
            filter,
            all,
            dry_run,
        } => {
            let mut filter = selection(filter, all, "replay")?;
            let held = held_back(config, connection, topology, &filter).await?;
            filter.exclude_webhooks = held.keys().cloned().collect();
            let action = if dry_run {
                Action::Look
            } else {
                Action::Replay
            };
            let entries = dlq::scan(connection, topology, &filter, None, action, false).await?;
            for entry in &entries {
                println!("{}", entry_line(entry));
            }
            for (webhook, why) in &held {
                println!("left in place: dead letters of webhook {webhook}, which {why}");
            }
            if dry_run {
                println!("would replay {} dead letter(s) (dry run)", entries.len());
            } else {
                println!("replayed {} dead letter(s)", entries.len());
            }
        }
        DlqCommand::Purge { filter, all, yes } => {
            let filter = selection(filter, all, "purge")?;
            let action = if yes { Action::Purge } else { Action::Look };
            let entries = dlq::scan(connection, topology, &filter, None, action, false).await?;
            for entry in &entries {
                println!("{}", entry_line(entry));
            }
            if yes {
                println!("purged {} dead letter(s)", entries.len());
            } else {
                println!(
                    "would purge {} dead letter(s); nothing deleted: add --yes to delete them",
                    entries.len()
                );
            }
        }
    }
    Ok(())
}

/// The webhooks among the selected dead letters that a replay would not reach, each with why:
/// the daemon parks a job for a disabled webhook again, and drops one for a deleted webhook, so
/// replaying those would report as replayed what no receiver gets. Found by a first pass that
/// reads only headers; a webhook disabled between the passes gets its jobs parked again.
async fn held_back(
    config: &Config,
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    filter: &Filter,
) -> anyhow::Result<BTreeMap<String, &'static str>> {
    let selected = dlq::scan(connection, topology, filter, None, Action::Look, false).await?;
    let webhooks: BTreeSet<&str> = selected
        .iter()
        .filter_map(|entry| entry.webhook_id.as_deref())
        .collect();
    let mut held = BTreeMap::new();
    if webhooks.is_empty() {
        return Ok(held);
    }
    let registry = Registry::connect(config).await?;
    for webhook in webhooks {
        match registry.find(webhook).await? {
            Some(found) if found.enabled => {}
            Some(_) => {
                held.insert(
                    webhook.to_owned(),
                    "is disabled: enable it, then replay them",
                );
            }
            None => {
                held.insert(
                    webhook.to_owned(),
                    "was deleted: there is nowhere to deliver them (purge them)",
                );
            }
        }
    }
    Ok(held)
}

/// Replay and purge act on everything only when told `--all`, never by omission.
fn selection(filter: FilterArgs, all: bool, verb: &str) -> anyhow::Result<Filter> {
    let filter = filter.into_filter();
    if filter.is_empty() && !all {
        bail!("say which dead letters to {verb}: --id, a filter (--account, --webhook, --reason, --event, --since) or --all");
    }
    Ok(filter)
}

fn entry_line(e: &Entry) -> String {
    let last = match (e.last_status, &e.last_error) {
        (Some(status), _) => format!("last status {status}"),
        (None, Some(error)) => format!("last error {error}"),
        (None, None) => "-".to_owned(),
    };
    format!(
        "{}  {}  {}  account {}  webhook {}  {}  attempts {}  {}",
        e.id,
        e.dead_at.as_deref().unwrap_or("-"),
        e.reason,
        e.account_id.map_or("-".to_owned(), |a| a.to_string()),
        e.webhook_id.as_deref().unwrap_or("-"),
        e.event.as_deref().unwrap_or("-"),
        e.attempts,
        last,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age_and_says_what_it_expected() {
        assert!(parse_since("2026-11-25T10:00:00Z").is_ok());
        let age = parse_since("2h").expect("an age");
        let expected = SystemTime::now() - Duration::from_secs(7200);
        let diff = expected
            .duration_since(age)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(5));
        let error = parse_since("yesterday").expect_err("not a time");
        assert!(error.contains("RFC 3339"), "{error}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_without_a_selection_is_refused() {
        let empty = FilterArgs {
            ids: vec![],
            account: None,
            webhook: None,
            reason: None,
            event: None,
            since: None,
        };
        assert!(selection(empty, false, "replay").is_err());
    }
}
