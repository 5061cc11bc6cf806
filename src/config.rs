//! webhookd's configuration: one TOML file, `WEBHOOKD_<SECTION>__<KEY>` environment overrides,
//! and secrets from files, turned once into typed values that the rest of the daemon trusts.
//!
//! Why it is shaped this way:
//!
//! - The operator's mistakes should surface at `webhookd check-config` (run by systemd's
//!   `ExecStartPre=`), not as a confusing failure an hour later. So every key is known (serde's
//!   `deny_unknown_fields`), durations carry units (`"15s"`, parsed by humantime), every rule is
//!   checked in [`Config::from_toml`], and every error names the file, the key path
//!   (`broker.prefetch`) and, for an override, the environment variable that set it.
//! - serde reports an unknown or malformed field by its bare name, without the section it sits in.
//!   So the table is checked structurally before serde sees it: the keys each section accepts are
//!   read from its `Deserialize` impl (`keys_of`), never from a second hand-written list that
//!   could drift; and when serde rejects a value, each key is retried alone to find which one.
//! - Defaults live in one place, the `Default` impls below; every struct is `#[serde(default)]`,
//!   so an empty file is a complete configuration and `config/webhookd.toml` (which a test loads)
//!   is documentation, not a second source of defaults.
//! - Secrets (the AMQP URL with its password, the admin token) are [`Secret`]s: they never print
//!   through `Debug`, `Display` or `Serialize`, and can come from a file so systemd's
//!   `LoadCredential=` works without putting them in the config or the environment.
//!
//! # Layout
//!
//! This file is the face: the structs, their defaults, and the errors loading reports. The
//! work is in the submodules, in the order a file goes through them:
//!
//! - `load`: reading the file, `WEBHOOKD_*` overrides, secret files, key checking, and TOML
//!   errors that never quote a secret ([`Config::load`], [`Config::from_toml`]).
//! - `validate`: every rule serde's types cannot express, each in one place.
//! - `secret`: [`Secret`], and how a secret is shown (masked).
//! - `text`: how values TOML has no type for are spelled: durations, addresses, networks.

mod load;
mod secret;
mod text;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::secret::Secret;
use self::secret::{serialize_masked_url, serialize_masked_urls};
use self::text::{deserialize_from_str, deserialize_networks, duration_text};

/// Where `webhookd run` and `webhookd check-config` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/webhookd/webhookd.toml";

/// The whole configuration, one field per `[section]` of the file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ connection and topology.
    pub broker: BrokerConfig,
    /// The embedded webhook registry.
    pub store: StoreConfig,
    /// The HTTP side: timeouts, limits, which networks may be called.
    pub delivery: DeliveryConfig,
    /// The backoff schedule between attempts.
    pub retry: RetryConfig,
    /// The admin HTTP listener (health, metrics, `/v1` API).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Process lifecycle.
    pub service: ServiceConfig,
}

/// RabbitMQ: where to connect and the names of the topology webhookd declares.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// AMQP URI; a secret because it usually carries the password. Shown by
    /// [`Config::to_masked_toml`] with only the password masked, so the host stays checkable.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: Secret,
    /// The nodes of a RabbitMQ cluster, one AMQP URI each, in the order webhookd tries them;
    /// instead of `url`, never with it. Secrets like `url`, shown the same way.
    #[serde(
        serialize_with = "serialize_masked_urls",
        skip_serializing_if = "Option::is_none"
    )]
    pub urls: Option<Vec<Secret>>,
    /// A file whose content replaces `url` at load time, for systemd `LoadCredential=`: one URI,
    /// or one per line (trimmed, blank lines skipped), which then stand for `urls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// A PEM file of private CA certificates trusted for an `amqps://` broker, on top of the
    /// bundled web PKI roots; checked at load time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// The exchange publishers send events to.
    pub exchange: String,
    /// The exchange's type, needed to declare it (and to match an existing declaration).
    pub exchange_kind: ExchangeKind,
    /// Off when the publisher's side owns the exchange and webhookd must not declare it.
    pub declare_exchange: bool,
    /// The work queue webhookd consumes.
    pub queue: String,
    /// The work queue's type; quorum queues survive a node loss and dead-letter at least once.
    pub queue_kind: QueueKind,
    /// Routing keys the work queue is bound with; `#` takes every event.
    pub binding_keys: Vec<String>,
    /// Unacknowledged deliveries the broker hands out at once: the bound on work in progress.
    pub prefetch: u16,
    /// AMQP heartbeat, whole seconds; zero turns heartbeats off.
    #[serde(with = "duration_text")]
    pub heartbeat: Duration,
    /// Delay queues are named `<prefix>.<delay>`, one per delay bucket.
    pub retry_queue_prefix: String,
    /// Where undeliverable events are parked for `webhookd dlq`.
    pub dead_letter_queue: String,
    /// The stream that holds the registry's log: every change to a webhook, which every instance
    /// applies to its own store in the same order (see `registry`).
    pub registry_stream: String,
    /// How long the registry stream keeps a change (`x-max-age`); snapshots keep everything
    /// older reachable.
    #[serde(with = "duration_text")]
    pub registry_max_age: Duration,
    /// The size of the stream's segment files, the unit retention deletes in.
    pub registry_segment_bytes: u32,
    /// How often the elected instance writes a snapshot of the registry into the stream, when it
    /// changed since the last one; at most half of `registry_max_age`, so a whole snapshot is
    /// always within retention.
    #[serde(with = "duration_text")]
    pub registry_snapshot_every: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: Secret::from("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            urls: None,
            url_file: None,
            extra_ca_file: None,
            exchange: "chatwoot.events".to_owned(),
            exchange_kind: ExchangeKind::Topic,
            declare_exchange: true,
            queue: "webhookd.events".to_owned(),
            queue_kind: QueueKind::Quorum,
            binding_keys: vec!["#".to_owned()],
            prefetch: 256,
            heartbeat: Duration::from_secs(10),
            retry_queue_prefix: "webhookd.retry".to_owned(),
            dead_letter_queue: "webhookd.dead".to_owned(),
            registry_stream: "webhookd.registry".to_owned(),
            registry_max_age: Duration::from_secs(7 * 24 * 3600),
            registry_segment_bytes: 8 * 1024 * 1024,
            registry_snapshot_every: Duration::from_secs(3600),
        }
    }
}

impl BrokerConfig {
    /// The broker's nodes in the order to try them: `urls`, or the one `url`.
    pub fn nodes(&self) -> &[Secret] {
        match &self.urls {
            Some(urls) => urls,
            None => std::slice::from_ref(&self.url),
        }
    }

    /// The key that set the nodes, for errors: where the operator edits them.
    pub fn nodes_key(&self) -> &'static str {
        match (&self.url_file, &self.urls) {
            (Some(_), _) => "broker.url_file",
            (None, Some(_)) => "broker.urls",
            (None, None) => "broker.url",
        }
    }
}

/// The AMQP exchange types, spelled as the broker spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Routes on routing-key patterns; the publisher contract's default.
    Topic,
    /// Routes on exact routing keys.
    Direct,
    /// Routes everything to every bound queue.
    Fanout,
    /// Routes on message headers.
    Headers,
}

impl ExchangeKind {
    /// The name AMQP's `exchange.declare` expects.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Headers => "headers",
        }
    }
}

/// The queue types webhookd can declare its work queue as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Replicated, at-least-once dead-lettering; the default.
    Quorum,
    /// Single-node queues, for brokers or tests where quorum queues are unwanted.
    Classic,
}

impl QueueKind {
    /// The value of the `x-queue-type` argument.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// The sled webhook registry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The sled directory; systemd's `StateDirectory=webhookd` creates its parent.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/webhookd/store"),
        }
    }
}

/// Outgoing HTTP: timeouts, concurrency, size limit, SSRF allow-list.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Limit on TCP connect plus TLS handshake, so a black-holed host fails fast.
    #[serde(with = "duration_text")]
    pub connect_timeout: Duration,
    /// Limit on a whole attempt (connect, send, response head and body); a hanging receiver
    /// costs at most this.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Global cap on requests in flight across all endpoints.
    pub max_in_flight: usize,
    /// Cap on requests in flight to one webhook URL. A delivery over it is not attempted but
    /// handed to the retry queue at once, so one hanging receiver holds at most this many events
    /// (and prefetch slots) instead of all of them.
    pub max_in_flight_per_endpoint: usize,
    /// Failed attempts in a row (timeouts, connection errors, 408/425/429/5xx) that open a
    /// webhook URL's circuit: its deliveries then wait in the retry queue for the cool-down.
    pub circuit_failures: u32,
    /// How long a circuit first stays open; each failed probe after it doubles it, up to 16×.
    #[serde(with = "duration_text")]
    pub circuit_cooldown: Duration,
    /// A URL with every `max_in_flight_per_endpoint` slot taken and no request finished for this
    /// long is taken to hang, and its circuit opens without waiting for the request timeout.
    #[serde(with = "duration_text")]
    pub circuit_stall: Duration,
    /// Events with a larger body are dead-lettered as `too_large` instead of delivered.
    pub max_event_bytes: usize,
    /// Networks exempt from the SSRF guard (which otherwise refuses loopback, private,
    /// link-local and similar destinations). A bare address means that single host.
    #[serde(deserialize_with = "deserialize_networks")]
    pub allow_networks: Vec<IpNet>,
    /// A PEM file of private CA certificates trusted for https receivers, on top of the bundled
    /// web PKI roots; read (and checked) at load time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
    /// After `webhooks update ID --rotate-secret`, how long the previous secret keeps signing
    /// alongside the new one, so receivers can switch without rejecting deliveries.
    #[serde(with = "duration_text")]
    pub secret_rotation_grace: Duration,
    /// A webhook with no successful attempt for this long, counted from its first failure after
    /// its last success, is disabled and its application told; `0s` never disables one.
    #[serde(with = "duration_text")]
    pub disable_after: Duration,
}

impl DeliveryConfig {
    /// The delivery client's settings as the config gives them.
    pub fn client_settings(&self) -> crate::delivery::ClientSettings {
        crate::delivery::ClientSettings {
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            allow_networks: self.allow_networks.clone(),
            extra_ca_file: self.extra_ca_file.clone(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            max_in_flight: 512,
            max_in_flight_per_endpoint: 64,
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(30),
            circuit_stall: Duration::from_secs(2),
            max_event_bytes: 1024 * 1024,
            allow_networks: Vec::new(),
            extra_ca_file: None,
            secret_rotation_grace: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// The exponential backoff schedule; the `retry` module turns it into delays.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the first retry.
    #[serde(with = "duration_text")]
    pub initial_interval: Duration,
    /// Each delay is the previous one times this.
    pub multiplier: f64,
    /// Relative spread applied to each delay (0.2 = ±20 %), so retries of one outage do not
    /// arrive together.
    pub jitter: f64,
    /// Cap on a single delay.
    #[serde(with = "duration_text")]
    pub max_interval: Duration,
    /// Time since the first attempt after which an event is dead-lettered as `exhausted`.
    #[serde(with = "duration_text")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(5),
            multiplier: 4.0,
            jitter: 0.2,
            max_interval: Duration::from_secs(6 * 3600),
            max_elapsed: Duration::from_secs(24 * 3600),
        }
    }
}

/// The admin HTTP listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port of `/healthz`, `/readyz`, `/metrics` and `/v1`.
    #[serde(deserialize_with = "deserialize_from_str")]
    pub listen: SocketAddr,
    /// Bearer token for `/v1`; after loading it also holds what `token_file` contained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token (trimmed), for systemd `LoadCredential=`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Serve `/v1` without any token. Without a token `/v1` is refused unless this is set, and
    /// it is only accepted on a loopback `listen`, so an open registry is always a deliberate,
    /// local choice.
    pub insecure_no_auth: bool,
    /// A console session ends after this long without a request.
    #[serde(with = "duration_text")]
    pub session_idle_timeout: Duration,
    /// A console session ends this long after sign-in, however busy.
    #[serde(with = "duration_text")]
    pub session_max_age: Duration,
    /// Host names (with `:port` if not 80) the console answers to besides IP literals and
    /// `localhost`: any other `Host` header is refused, so a DNS name rebound to this listener
    /// cannot reach it from a browser.
    pub console_hosts: Vec<String>,
}

impl AdminConfig {
    /// The bearer token, wherever it came from (resolved at load time).
    pub fn token(&self) -> Option<&Secret> {
        self.token.as_ref()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8089)),
            token: None,
            token_file: None,
            insecure_no_auth: false,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_max_age: Duration::from_secs(12 * 3600),
            console_hosts: Vec::new(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` `EnvFilter` directive such as `info` or `info,lapin=warn`; checked at load
    /// time so a typo fails `check-config` rather than silencing logs.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (journald adds its own timestamps).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Process lifecycle.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// On SIGTERM, how long in-flight deliveries may take to finish before they are handed
    /// back to the broker; the unit's `TimeoutStopSec=` must exceed it.
    #[serde(with = "duration_text")]
    pub drain_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Why a configuration was refused. Every variant that concerns the file's content carries
/// `file` (filled in by [`Config::load`]) and the dotted key, so the message alone tells the
/// operator what to edit; `var` names the environment variable when an override set the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config {}: cannot read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{}: {message}", Origin(.file))]
    Syntax {
        file: Option<PathBuf>,
        message: String,
    },
    /// A `[section]` webhookd does not have.
    #[error("{}: unknown section `{section}`{} (expected one of {})", Origin(.file), Via(.var), OneOf(.expected))]
    UnknownSection {
        file: Option<PathBuf>,
        section: String,
        var: Option<String>,
        expected: &'static [&'static str],
    },
    /// A key its section does not have.
    #[error("{}: unknown key `{key}`{} (expected one of {})", Origin(.file), Via(.var), OneOf(.expected))]
    UnknownKey {
        file: Option<PathBuf>,
        key: String,
        var: Option<String>,
        expected: &'static [&'static str],
    },
    /// A value that is not of its key's type (a bad duration, a string for a number, …).
    #[error("{}: `{key}`{}: {message}", Origin(.file), Via(.var))]
    BadValue {
        file: Option<PathBuf>,
        key: String,
        var: Option<String>,
        message: String,
    },
    /// A well-typed value that breaks a rule (`must be in [0, 1), got 1.5`).
    #[error("{}: `{key}`{} {rule}", Origin(.file), Via(.var))]
    Rule {
        file: Option<PathBuf>,
        key: String,
        var: Option<String>,
        rule: String,
    },
    /// A `*_file` key names a file that cannot be read.
    #[error("{}: `{key}`{}: cannot read {}: {source}", Origin(.file), Via(.var), .path.display())]
    SecretFile {
        file: Option<PathBuf>,
        key: String,
        var: Option<String>,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Two keys that say the same thing differently, so neither can be picked silently.
    #[error("{}: `{first}` and `{second}` are both set; set only one", Origin(.file))]
    Conflict {
        file: Option<PathBuf>,
        first: &'static str,
        second: &'static str,
    },
    /// An override variable whose value is not UTF-8.
    #[error("config: environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: String },
}

impl ConfigError {
    /// Names the file in an error found in its text.
    fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            Self::Syntax { file, .. }
            | Self::UnknownSection { file, .. }
            | Self::UnknownKey { file, .. }
            | Self::BadValue { file, .. }
            | Self::Rule { file, .. }
            | Self::SecretFile { file, .. }
            | Self::Conflict { file, .. } => *file = Some(path.to_owned()),
            Self::Read { .. } | Self::EnvNotUnicode { .. } => {}
        }
        self
    }
}

/// The `config` / `config PATH` that opens every message.
struct Origin<'a>(&'a Option<PathBuf>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "config {}", path.display()),
            None => f.write_str("config"),
        }
    }
}

/// ` (set by WEBHOOKD_…)` when an override is to blame.
struct Via<'a>(&'a Option<String>);

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(var) => write!(f, " (set by {var})"),
            None => Ok(()),
        }
    }
}

/// A list of keys as `` `a`, `b`, `c` ``.
struct OneOf<'a>(&'a [&'a str]);

impl fmt::Display for OneOf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{key}`")?;
        }
        Ok(())
    }
}

/// A secret file that its group or others may read (see [`Config::readable_secret_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableSecretFile {
    pub key: &'static str,
    pub path: PathBuf,
    /// The permission bits, e.g. `0o644`.
    pub mode: u32,
}

impl fmt::Display for ReadableSecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` {} can be read by its group or by others (mode {:04o}): make it readable by \
             its owner only (chmod 600)",
            self.key,
            self.path.display(),
            self.mode
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) const SHIPPED: &str = include_str!("../config/webhookd.toml");

    pub(super) fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    pub(super) fn load_err(text: &str) -> ConfigError {
        match Config::from_toml(text, no_env()) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(error) => error,
        }
    }

    pub(super) fn load_ok(text: &str, vars: Vec<(String, String)>) -> Config {
        match Config::from_toml(text, vars) {
            Ok(config) => config,
            Err(error) => panic!("expected {text:?} to load: {error}"),
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        for text in ["", "\n", "# only a comment\n", "[broker]\n[retry]\n"] {
            assert_eq!(load_ok(text, no_env()), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn shipped_file_is_the_defaults() {
        let shipped = load_ok(SHIPPED, no_env());
        assert_eq!(shipped, Config::default());
        assert_eq!(shipped.to_masked_toml(), Config::default().to_masked_toml());
    }

    #[test]
    fn values_from_the_file_are_typed() {
        let config = load_ok(
            r#"
            [broker]
            exchange_kind = "fanout"
            queue_kind = "classic"
            binding_keys = ["message_created", "contact_created"]
            heartbeat = "30s"
            [delivery]
            request_timeout = "200ms"
            allow_networks = ["127.0.0.0/8", "::1", "fd00::/8"]
            [retry]
            max_elapsed = "1h 30m"
            [admin]
            listen = "[::1]:9000"
            [log]
            format = "json"
            level = "info,lapin=warn"
            "#,
            no_env(),
        );
        assert_eq!(config.broker.exchange_kind, ExchangeKind::Fanout);
        assert_eq!(config.broker.queue_kind, QueueKind::Classic);
        assert_eq!(
            config.broker.binding_keys,
            ["message_created", "contact_created"]
        );
        assert_eq!(config.broker.heartbeat, Duration::from_secs(30));
        assert_eq!(config.delivery.request_timeout, Duration::from_millis(200));
        let networks: Vec<String> = config
            .delivery
            .allow_networks
            .iter()
            .map(IpNet::to_string)
            .collect();
        assert_eq!(networks, ["127.0.0.0/8", "::1/128", "fd00::/8"]);
        assert_eq!(config.retry.max_elapsed, Duration::from_secs(5400));
        assert_eq!(
            config.admin.listen,
            "[::1]:9000".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn kind_names_match_their_toml_spelling() {
        for kind in [
            ExchangeKind::Topic,
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Headers,
        ] {
            let config = load_ok(
                &format!("[broker]\nexchange_kind = {:?}\n", kind.as_str()),
                no_env(),
            );
            assert_eq!(config.broker.exchange_kind, kind);
        }
        for kind in [QueueKind::Quorum, QueueKind::Classic] {
            let config = load_ok(
                &format!("[broker]\nqueue_kind = {:?}\n", kind.as_str()),
                no_env(),
            );
            assert_eq!(config.broker.queue_kind, kind);
        }
    }
}
