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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::{Table, Value};

/// Where `webhookd run` and `webhookd check-config` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/webhookd/webhookd.toml";

/// Environment variables with this prefix and a `__` between section and key are overrides.
const ENV_PREFIX: &str = "WEBHOOKD_";

/// What a secret looks like wherever it is shown.
const MASK: &str = "****";

/// The shortest admin token accepted: 16 characters of a random token are beyond guessing
/// through the API, and a shorter one is more likely a placeholder than a secret.
const MIN_TOKEN_CHARS: usize = 16;

/// AMQP names (exchanges, queues) are short strings on the wire.
const MAX_AMQP_NAME: usize = 255;

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
    /// A file whose trimmed content replaces `url` at load time, for systemd `LoadCredential=`.
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
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: Secret::from("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
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

/// A string that must not leak: `Debug`, `Display` and `Serialize` all print `****`, so a
/// config can be logged or shown whole. Equality is constant-time (via `subtle`), so comparing
/// a presented token with `==` does not leak how much of it matched.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (connecting, checking a token).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), other.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
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

impl Config {
    /// Reads the file, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env = override_vars()?;
        Self::from_toml(&text, env).map_err(|error| error.in_file(path))
    }

    /// Same from text with an explicit environment (for tests and for `load`).
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: Table = text
            .parse()
            .map_err(|error: toml::de::Error| syntax_error(text, &error))?;
        check_keys(&table)?;
        let overrides = apply_overrides(&mut table, env)?;
        let mut config = deserialize(table, &overrides)?;
        config.resolve_secret_files(&overrides)?;
        // As a token file's content is: surrounding whitespace could never match anyway, since
        // HTTP drops it around a header value.
        if let Some(token) = &mut config.admin.token {
            let trimmed = token.expose().trim();
            if trimmed.len() != token.expose().len() {
                *token = Secret(trimmed.to_owned());
            }
        }
        config.validate().map_err(|broken| ConfigError::Rule {
            file: None,
            var: overrides.var(broken.key),
            key: broken.key.to_owned(),
            rule: broken.rule,
        })?;
        Ok(config)
    }

    /// The effective config as TOML with every secret masked (for `webhookd check-config`);
    /// broker URL shown with its password replaced by ****.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        // A token read from `token_file` is shown as that file, not as a masked token: showing
        // both would not load back (they conflict), and the file is what the operator wrote.
        if shown.admin.token_file.is_some() {
            shown.admin.token = None;
        }
        match toml::to_string(&shown) {
            Ok(text) => text,
            // Every field is a string, number, boolean or array of strings, all of which TOML
            // holds; this arm exists so that a future field cannot turn into a panic.
            Err(error) => format!("# cannot show the configuration as TOML: {error}\n"),
        }
    }

    /// The secret files (`admin.token_file`, `broker.url_file`) that their group or others may
    /// read. Not an error: the file may sit in a directory only its owner can enter. The binary
    /// logs each one once logging is up.
    pub fn readable_secret_files(&self) -> Vec<ReadableSecretFile> {
        use std::os::unix::fs::PermissionsExt as _;
        [
            ("admin.token_file", &self.admin.token_file),
            ("broker.url_file", &self.broker.url_file),
        ]
        .into_iter()
        .filter_map(|(key, path)| {
            let path = path.as_ref()?;
            let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
            (mode & 0o044 != 0).then(|| ReadableSecretFile {
                key,
                path: path.clone(),
                mode,
            })
        })
        .collect()
    }

    /// Replaces secrets with the content of their `*_file`, as systemd credentials are passed.
    fn resolve_secret_files(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        if let Some(path) = &self.broker.url_file {
            self.broker.url = read_secret_file("broker.url_file", path, overrides)?;
        }
        if let Some(path) = &self.admin.token_file {
            if self.admin.token.is_some() {
                return Err(ConfigError::Conflict {
                    file: None,
                    first: "admin.token",
                    second: "admin.token_file",
                });
            }
            self.admin.token = Some(read_secret_file("admin.token_file", path, overrides)?);
        }
        Ok(())
    }

    /// Every rule serde's types cannot express, checked once so the rest of the crate need not.
    fn validate(&self) -> Result<(), Broken> {
        let broker = &self.broker;
        let url_key = if broker.url_file.is_some() {
            "broker.url_file"
        } else {
            "broker.url"
        };
        let url = broker.url.expose();
        // The URL is a secret: the rule names the key, never the value.
        ensure(
            url.starts_with("amqp://") || url.starts_with("amqps://"),
            url_key,
            "must be an amqp:// or amqps:// URI",
        )?;
        // The parser's message is not shown: it can quote the text, which holds the password.
        // An AMQP URI has no fragment, so a `#` can only be an unencoded character of the
        // password, which the parser would silently cut the URL at.
        ensure(
            url.parse::<lapin::uri::AMQPUri>().is_ok() && !url.contains('#'),
            url_key,
            "must be a valid AMQP URI: percent-encode `/`, `?`, `#`, `@`, `:` and `%` in the user \
             name and password (`/` is %2F)",
        )?;
        if let Some(path) = &broker.extra_ca_file {
            // A CA for a connection that does not use TLS means the operator believes it does.
            ensure(
                url.starts_with("amqps://"),
                "broker.extra_ca_file",
                format!("is set, but `{url_key}` is not an amqps:// URI: the broker connection would not use TLS"),
            )?;
            crate::tls::read_ca_file(path).map_err(|error| Broken {
                key: "broker.extra_ca_file",
                rule: format!("must name a PEM file of CA certificates: {error}"),
            })?;
        }
        amqp_name("broker.exchange", &broker.exchange)?;
        amqp_name("broker.queue", &broker.queue)?;
        amqp_name("broker.retry_queue_prefix", &broker.retry_queue_prefix)?;
        amqp_name("broker.dead_letter_queue", &broker.dead_letter_queue)?;
        ensure(
            broker.dead_letter_queue != broker.queue,
            "broker.dead_letter_queue",
            "must differ from `broker.queue`, or dead letters would be consumed again",
        )?;
        ensure(
            !broker.binding_keys.is_empty(),
            "broker.binding_keys",
            "must list at least one routing key (\"#\" takes every event)",
        )?;
        ensure(
            broker.prefetch >= 1,
            "broker.prefetch",
            format!("must be at least 1, got {}", broker.prefetch),
        )?;
        ensure(
            broker.heartbeat.subsec_nanos() == 0 && broker.heartbeat.as_secs() <= 65_535,
            "broker.heartbeat",
            format!(
                "must be whole seconds up to 65535s (0s turns heartbeats off), got {}",
                humantime::format_duration(broker.heartbeat)
            ),
        )?;

        ensure(
            !self.store.path.as_os_str().is_empty(),
            "store.path",
            "must not be empty",
        )?;

        let delivery = &self.delivery;
        let retry = &self.retry;
        // Every duration has a ceiling as well as a floor: an absurd value ("9000y") would
        // otherwise pass here and overflow a clock on the delivery path. Each ceiling is far
        // above any sensible setting and says what bounds it.
        let (min, hour, day) = (Duration::from_secs(60), HOUR, 24 * HOUR);
        for (key, value, floor, ceiling, why) in [
            (
                "delivery.connect_timeout",
                delivery.connect_timeout,
                Duration::from_millis(1),
                10 * min,
                "a connection that takes longer is not coming",
            ),
            (
                "delivery.request_timeout",
                delivery.request_timeout,
                Duration::from_millis(1),
                crate::delivery::MAX_REQUEST_TIMEOUT,
                "RabbitMQ's consumer_timeout (30 min) must outlast a request",
            ),
            (
                "delivery.circuit_cooldown",
                delivery.circuit_cooldown,
                Duration::ZERO,
                hour,
                "a cool-down doubles up to 16 times its value",
            ),
            (
                "delivery.circuit_stall",
                delivery.circuit_stall,
                Duration::from_millis(1),
                hour,
                "a request stalled that long has long timed out",
            ),
            (
                "delivery.secret_rotation_grace",
                delivery.secret_rotation_grace,
                Duration::ZERO,
                YEAR,
                "a previous secret must stop signing within a year",
            ),
            (
                "retry.initial_interval",
                retry.initial_interval,
                Duration::ZERO,
                30 * day,
                "delay queues hold a job at most 49 days",
            ),
            (
                "retry.max_interval",
                retry.max_interval,
                Duration::ZERO,
                30 * day,
                "delay queues hold a job at most 49 days, and a delay is rounded up by a quarter",
            ),
            (
                "retry.max_elapsed",
                retry.max_elapsed,
                Duration::ZERO,
                YEAR,
                "a job must end within a year",
            ),
            (
                "service.drain_timeout",
                self.service.drain_timeout,
                Duration::ZERO,
                hour,
                "systemd's TimeoutStopSec= must outlast it",
            ),
        ] {
            ensure(
                (floor..=ceiling).contains(&value),
                key,
                format!(
                    "must be between {} and {} ({why}), got {}",
                    humantime::format_duration(floor),
                    humantime::format_duration(ceiling),
                    humantime::format_duration(value)
                ),
            )?;
        }
        ensure(
            delivery.max_in_flight >= 1,
            "delivery.max_in_flight",
            format!("must be at least 1, got {}", delivery.max_in_flight),
        )?;
        ensure(
            delivery.max_in_flight_per_endpoint >= 1,
            "delivery.max_in_flight_per_endpoint",
            format!(
                "must be at least 1, got {}",
                delivery.max_in_flight_per_endpoint
            ),
        )?;
        ensure(
            delivery.circuit_failures >= 1,
            "delivery.circuit_failures",
            format!("must be at least 1, got {}", delivery.circuit_failures),
        )?;
        ensure(
            delivery.max_event_bytes >= 1,
            "delivery.max_event_bytes",
            format!("must be at least 1, got {}", delivery.max_event_bytes),
        )?;
        if let Some(path) = &delivery.extra_ca_file {
            crate::tls::read_ca_file(path).map_err(|error| Broken {
                key: "delivery.extra_ca_file",
                rule: format!("must name a PEM file of CA certificates: {error}"),
            })?;
        }

        // The schedule's own rules, checked by the type that relies on them, so a value that
        // passes here also builds the schedule at run time.
        crate::retry::Schedule::new(
            retry.initial_interval,
            retry.multiplier,
            retry.jitter,
            retry.max_interval,
            retry.max_elapsed,
        )
        .map_err(|error| Broken {
            key: error.key(),
            rule: error.to_string(),
        })?;

        if let Some(token) = &self.admin.token {
            let key = if self.admin.token_file.is_some() {
                "admin.token_file"
            } else {
                "admin.token"
            };
            // Trimmed at load time. The rules never quote the token, nor its length.
            let token = token.expose();
            ensure(
                !token.is_empty(),
                key,
                "must not be empty or only whitespace",
            )?;
            ensure(
                token.chars().count() >= MIN_TOKEN_CHARS,
                key,
                format!(
                    "must be at least {MIN_TOKEN_CHARS} characters after trimming whitespace \
                     (e.g. `head -c 32 /dev/urandom | base64`)"
                ),
            )?;
            ensure(
                token.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                key,
                "must be printable ASCII: it travels in an HTTP header, where nothing else \
                 could match it",
            )?;
        }
        if self.admin.insecure_no_auth {
            ensure(
                self.admin.token.is_none(),
                "admin.insecure_no_auth",
                "must not be true while a token is set (`admin.token` or `admin.token_file`): \
                 keep one of them",
            )?;
            ensure(
                self.admin.listen.ip().is_loopback(),
                "admin.insecure_no_auth",
                format!(
                    "is allowed only with a loopback `admin.listen` (127.0.0.1 or [::1]), got {}: \
                     set `admin.token` to serve /v1 on other addresses",
                    self.admin.listen
                ),
            )?;
        }

        ensure(
            !self.log.level.trim().is_empty(),
            "log.level",
            "must not be empty",
        )?;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(Broken {
                key: "log.level",
                rule: format!(
                    "must be a tracing filter such as \"info,lapin=warn\", got {:?}: {error}",
                    self.log.level
                ),
            });
        }
        Ok(())
    }
}

/// A TOML syntax error by its position and the parser's own words. toml's `Display` quotes the
/// offending line, which may be `url = "amqp://user:password@…"` or the admin token, and this
/// message goes to stderr and the journal; the line and column are enough to find it.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let position = error
        .span()
        .and_then(|span| text.get(..span.start))
        .map(|before| {
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    ConfigError::Syntax {
        file: None,
        message: format!(
            "TOML parse error{position}: {}",
            error.message().trim_end().replace('\n', "; ")
        ),
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

/// A rule broken during validation; turned into [`ConfigError::Rule`] with the override's name.
struct Broken {
    key: &'static str,
    rule: String,
}

fn ensure(ok: bool, key: &'static str, rule: impl Into<String>) -> Result<(), Broken> {
    if ok {
        Ok(())
    } else {
        Err(Broken {
            key,
            rule: rule.into(),
        })
    }
}

const HOUR: Duration = Duration::from_secs(3600);
/// A year as humantime counts it (365.25 days), so the limit prints as "1year".
const YEAR: Duration = Duration::from_secs(31_557_600);

fn amqp_name(key: &'static str, name: &str) -> Result<(), Broken> {
    ensure(!name.is_empty(), key, "must not be empty")?;
    ensure(
        name.len() <= MAX_AMQP_NAME,
        key,
        format!(
            "must be at most {MAX_AMQP_NAME} bytes (an AMQP short string), got {}",
            name.len()
        ),
    )
}

/// Which `section.key`s environment variables set, so errors can name the variable.
#[derive(Default)]
struct Overrides(HashMap<String, String>);

impl Overrides {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// The keys a `[section]` accepts, or `None` for a section webhookd does not have. One arm per
/// field of [`Config`]; a test checks the two agree.
fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    match section {
        "broker" => Some(keys_of::<BrokerConfig>()),
        "store" => Some(keys_of::<StoreConfig>()),
        "delivery" => Some(keys_of::<DeliveryConfig>()),
        "retry" => Some(keys_of::<RetryConfig>()),
        "admin" => Some(keys_of::<AdminConfig>()),
        "log" => Some(keys_of::<LogConfig>()),
        "service" => Some(keys_of::<ServiceConfig>()),
        _ => None,
    }
}

/// The field names a derived `Deserialize` struct accepts, as serde itself knows them (renames
/// included): the derive passes them to `deserialize_struct`, which this probe records.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // The probe has no data, so deserializing always fails; only what it recorded matters.
    let _ = T::deserialize(KeyProbe(&mut keys));
    keys
}

struct KeyProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeyProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("only structs have keys"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("keys recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Refuses unknown sections and keys in the file, naming them with their section.
fn check_keys(table: &Table) -> Result<(), ConfigError> {
    for (section, value) in table {
        let keys = section_keys(section).ok_or_else(|| ConfigError::UnknownSection {
            file: None,
            section: section.clone(),
            var: None,
            expected: keys_of::<Config>(),
        })?;
        let Value::Table(entries) = value else {
            return Err(ConfigError::BadValue {
                file: None,
                key: section.clone(),
                var: None,
                message: format!("expected a table `[{section}]`, found {}", value.type_str()),
            });
        };
        if let Some(key) = entries.keys().find(|key| !keys.contains(&key.as_str())) {
            return Err(ConfigError::UnknownKey {
                file: None,
                key: format!("{section}.{key}"),
                var: None,
                expected: keys,
            });
        }
    }
    Ok(())
}

/// The `WEBHOOKD_*` variables of this process that could be overrides.
fn override_vars() -> Result<Vec<(String, String)>, ConfigError> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            override_target(&name).is_some().then_some((name, value))
        })
        .map(|(name, value)| match value.into_string() {
            Ok(value) => Ok((name, value)),
            Err(_) => Err(ConfigError::EnvNotUnicode { var: name }),
        })
        .collect()
}

/// `WEBHOOKD_<SECTION>__<KEY>` → (section, key), lowercased. Names without `__` are not
/// overrides: `WEBHOOKD_CONFIG` names the file, and helper scripts use their own
/// `WEBHOOKD_*` variables (e.g. `WEBHOOKD_BROKER_HOME`).
fn override_target(var: &str) -> Option<(String, String)> {
    let (section, key) = var.strip_prefix(ENV_PREFIX)?.split_once("__")?;
    Some((section.to_ascii_lowercase(), key.to_ascii_lowercase()))
}

/// Sets each override's `section.key` in the table, refusing keys the file could not have.
fn apply_overrides(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Overrides, ConfigError> {
    let mut overrides = Overrides::default();
    for (var, raw) in env {
        let Some((section, key)) = override_target(&var) else {
            continue;
        };
        let Some(keys) = section_keys(&section) else {
            return Err(ConfigError::UnknownSection {
                file: None,
                section,
                var: Some(var),
                expected: keys_of::<Config>(),
            });
        };
        let path = format!("{section}.{key}");
        if !keys.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey {
                file: None,
                key: path,
                var: Some(var),
                expected: keys,
            });
        }
        let entries = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        // `check_keys` has refused non-table sections already; this keeps that an error here too.
        let Value::Table(entries) = entries else {
            return Err(ConfigError::BadValue {
                file: None,
                key: section,
                var: None,
                message: "expected a table".to_owned(),
            });
        };
        let value = match override_value(&raw) {
            Value::String(text) => Value::String(text),
            _ if is_secret(&path) => Value::String(raw),
            other => other,
        };
        entries.insert(key, value);
        overrides.0.insert(path, var);
    }
    Ok(overrides)
}

/// The keys whose values are secrets: errors about them never show the value, and an override
/// of them is always a string (a token of digits is a token, not a number to complain about).
const SECRET_KEYS: [&str; 2] = ["broker.url", "admin.token"];

fn is_secret(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// An override's value: TOML when it reads as a single TOML value (`10`, `true`,
/// `["127.0.0.0/8"]`, `"quoted"`), otherwise the text itself, so `15s` and URLs need no quotes.
/// Dates stay text: no key takes one, and a name that looks like a date is still a name.
fn override_value(raw: &str) -> Value {
    format!("value = {raw}")
        .parse::<Table>()
        .ok()
        .filter(|table| table.len() == 1)
        .and_then(|mut table| table.remove("value"))
        .filter(|value| !matches!(value, Value::Datetime(_)))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// serde over the checked table. serde's error names only the innermost field, so on failure
/// each key is deserialized alone to find the one to blame.
fn deserialize(table: Table, overrides: &Overrides) -> Result<Config, ConfigError> {
    match Config::deserialize(Value::Table(table.clone())) {
        Ok(config) => Ok(config),
        Err(whole) => Err(
            blame_key(&table, overrides).unwrap_or_else(|| ConfigError::Syntax {
                file: None,
                message: without_secrets(whole.to_string().trim_end(), &table),
            }),
        ),
    }
}

/// `message` with the value of every secret key in `table` replaced by `****`.
fn without_secrets(message: &str, table: &Table) -> String {
    let mut message = message.to_owned();
    for key in SECRET_KEYS {
        let value = key
            .split_once('.')
            .and_then(|(section, key)| table.get(section)?.get(key));
        let text = match value {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        if !text.is_empty() {
            message = message.replace(&text, MASK);
        }
    }
    message
}

fn blame_key(table: &Table, overrides: &Overrides) -> Option<ConfigError> {
    table.iter().find_map(|(section, entries)| {
        let Value::Table(entries) = entries else {
            return None;
        };
        entries.iter().find_map(|(key, value)| {
            let alone = Table::from_iter([(key.clone(), value.clone())]);
            let outer = Table::from_iter([(section.clone(), Value::Table(alone))]);
            let error = Config::deserialize(Value::Table(outer)).err()?;
            let path = format!("{section}.{key}");
            // serde's message quotes the value (`invalid type: integer `123…``).
            let message = if is_secret(&path) {
                format!(
                    "expected a string, found {} (the value is a secret and is not shown)",
                    value.type_str()
                )
            } else {
                error.message().to_owned()
            };
            Some(ConfigError::BadValue {
                file: None,
                var: overrides.var(&path),
                key: path,
                message,
            })
        })
    })
}

fn read_secret_file(
    key: &'static str,
    path: &Path,
    overrides: &Overrides,
) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        file: None,
        key: key.to_owned(),
        var: overrides.var(key),
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::Rule {
            file: None,
            key: key.to_owned(),
            var: overrides.var(key),
            rule: format!("names an empty file: {}", path.display()),
        });
    }
    Ok(Secret(secret.to_owned()))
}

/// The URL with the password of its userinfo replaced by `****`; user, host and vhost stay
/// visible because they are what an operator checks. The userinfo ends at the last `@`, not at
/// the first `/`, `?` or `#`: a password holding one of those (not percent-encoded) must not show
/// either, and a URL with an `@` elsewhere is masked too much rather than too little. Text that is
/// not `scheme://…` is masked whole, as it cannot be taken apart safely.
fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return MASK.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => url.to_owned(),
    }
}

fn serialize_masked_url<S: Serializer>(url: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&masked_url(url.expose()))
}

/// A string parsed with `FromStr`, the error naming the text (serde's own `SocketAddr` error
/// does not).
fn deserialize_from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|error| de::Error::custom(format_args!("invalid value {text:?}: {error}")))
}

fn deserialize_networks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_network(text).map_err(de::Error::custom))
        .collect()
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid network {text:?}: expected CIDR such as \"10.0.0.0/8\" or an address")
        })
}

/// Durations as humantime strings (`"15s"`, `"200ms"`, `"6h"`), both ways.
mod duration_text {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with its unit, such as \"15s\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            humantime::parse_duration(text)
                .map_err(|error| E::custom(format_args!("invalid duration {text:?}: {error}")))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/webhookd.toml");

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn load_err(text: &str) -> ConfigError {
        match Config::from_toml(text, no_env()) {
            Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
            Err(error) => error,
        }
    }

    fn load_ok(text: &str, vars: Vec<(String, String)>) -> Config {
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
    fn defaults_pass_validation() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn shipped_file_is_the_defaults() {
        let shipped = load_ok(SHIPPED, no_env());
        assert_eq!(shipped, Config::default());
        assert_eq!(shipped.to_masked_toml(), Config::default().to_masked_toml());
    }

    #[test]
    fn shipped_file_documents_every_key() {
        for section in keys_of::<Config>() {
            assert!(
                SHIPPED.contains(&format!("\n[{section}]\n")),
                "[{section}] missing"
            );
            let keys = section_keys(section).unwrap_or_default();
            for key in keys {
                let set = format!("\n{key} = ");
                let commented = format!("\n# {key} = ");
                assert!(
                    SHIPPED.contains(&set) || SHIPPED.contains(&commented),
                    "{section}.{key} is not documented in config/webhookd.toml"
                );
            }
        }
    }

    #[test]
    fn section_table_matches_config_fields() {
        let sections = keys_of::<Config>();
        assert_eq!(
            sections,
            ["broker", "store", "delivery", "retry", "admin", "log", "service"]
        );
        for section in sections {
            let keys = section_keys(section);
            assert!(
                keys.is_some_and(|keys| !keys.is_empty()),
                "no keys for {section}"
            );
        }
        assert_eq!(section_keys("brokr"), None);
        assert!(section_keys("broker").is_some_and(|keys| keys.contains(&"retry_queue_prefix")));
    }

    #[test]
    fn unknown_key_in_each_section_is_named() {
        for section in keys_of::<Config>() {
            let error = load_err(&format!("[{section}]\nbogus_key = 1\n"));
            let ConfigError::UnknownKey { key, var, .. } = &error else {
                panic!("[{section}]: expected UnknownKey, got {error:?}");
            };
            assert_eq!(key, &format!("{section}.bogus_key"));
            assert_eq!(var, &None);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("config: unknown key `{section}.bogus_key`")),
                "{message}"
            );
        }
    }

    #[test]
    fn unknown_key_message_lists_the_section_keys() {
        let message = load_err("[broker]\nexhange = \"x\"\n").to_string();
        assert!(
            message.starts_with("config: unknown key `broker.exhange` (expected one of `url`, "),
            "{message}"
        );
        assert!(message.contains("`exchange`"), "{message}");
    }

    #[test]
    fn unknown_section_is_named() {
        let error = load_err("[brokr]\nurl = \"amqp://x\"\n");
        assert!(
            matches!(&error, ConfigError::UnknownSection { section, var: None, .. } if section == "brokr"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("config: unknown section `brokr` (expected one of `broker`"),
            "{message}"
        );
        // A top-level key outside any section is an unknown section too.
        let error = load_err("prefetch = 1\n");
        assert!(
            matches!(&error, ConfigError::UnknownSection { section, .. } if section == "prefetch"),
            "{error:?}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[delivery]\nrequest_timeout = \"15 parsecs\"",
                "delivery.request_timeout",
                "invalid duration \"15 parsecs\"",
            ),
            (
                "[broker]\nheartbeat = \"\"",
                "broker.heartbeat",
                "invalid duration \"\"",
            ),
            (
                "[retry]\nmax_elapsed = 86400",
                "retry.max_elapsed",
                "a duration with its unit",
            ),
            (
                "[service]\ndrain_timeout = \"-1s\"",
                "service.drain_timeout",
                "invalid duration",
            ),
            (
                "[broker]\nprefetch = \"many\"",
                "broker.prefetch",
                "invalid type",
            ),
            ("[broker]\nprefetch = 70000", "broker.prefetch", "70000"),
            (
                "[broker]\nexchange_kind = \"fanot\"",
                "broker.exchange_kind",
                "fanot",
            ),
            (
                "[broker]\nqueue_kind = \"stream\"",
                "broker.queue_kind",
                "stream",
            ),
            ("[log]\nformat = \"yaml\"", "log.format", "yaml"),
            (
                "[admin]\nlisten = \"localhost\"",
                "admin.listen",
                "\"localhost\"",
            ),
            (
                "[delivery]\nallow_networks = [\"127.0.0.0/8\", \"10.0.0.0/33\"]",
                "delivery.allow_networks",
                "invalid network \"10.0.0.0/33\"",
            ),
            (
                "[delivery]\nallow_networks = \"10.0.0.0/8\"",
                "delivery.allow_networks",
                "invalid type",
            ),
            (
                "[broker]\nurl = 5",
                "broker.url",
                "expected a string, found integer",
            ),
            (
                "[admin]\ntoken = 1234567890123456",
                "admin.token",
                "found integer",
            ),
            ("broker = 5", "broker", "expected a table `[broker]`"),
        ];
        for (text, want_key, want_message) in cases {
            let error = load_err(text);
            let ConfigError::BadValue { key, message, .. } = &error else {
                panic!("{text:?}: expected BadValue, got {error:?}");
            };
            assert_eq!(key, want_key, "{text:?}");
            assert!(message.contains(want_message), "{text:?}: {message}");
            let shown = error.to_string();
            assert!(
                shown.starts_with(&format!("config: `{want_key}`: ")),
                "{shown}"
            );
        }
    }

    #[test]
    fn bad_duration_message_reads_as_documented() {
        let message = load_err("[delivery]\nrequest_timeout = \"15 parsecs\"\n").to_string();
        assert!(
            message
                .starts_with("config: `delivery.request_timeout`: invalid duration \"15 parsecs\""),
            "{message}"
        );
    }

    #[test]
    fn broken_rules_name_the_key() {
        let cases = [
            (
                "[retry]\njitter = 1.5",
                "retry.jitter",
                "must be in [0, 1), got 1.5",
            ),
            (
                "[retry]\njitter = 1.0",
                "retry.jitter",
                "must be in [0, 1), got 1",
            ),
            (
                "[retry]\njitter = -0.1",
                "retry.jitter",
                "must be in [0, 1), got -0.1",
            ),
            (
                "[retry]\njitter = nan",
                "retry.jitter",
                "must be in [0, 1), got NaN",
            ),
            (
                "[retry]\nmultiplier = 0.5",
                "retry.multiplier",
                ">= 1.0, got 0.5",
            ),
            ("[retry]\nmultiplier = inf", "retry.multiplier", "finite"),
            (
                "[retry]\ninitial_interval = \"0s\"",
                "retry.initial_interval",
                "must be at least 1ms",
            ),
            (
                "[retry]\ninitial_interval = \"500us\"",
                "retry.initial_interval",
                "got 500us",
            ),
            (
                "[delivery]\nsecret_rotation_grace = \"9000y\"",
                "delivery.secret_rotation_grace",
                "must be between 0s and 1year",
            ),
            (
                "[delivery]\ncircuit_cooldown = \"100years\"",
                "delivery.circuit_cooldown",
                "got 100years",
            ),
            (
                "[service]\ndrain_timeout = \"2h\"",
                "service.drain_timeout",
                "TimeoutStopSec",
            ),
            (
                "[retry]\ninitial_interval = \"10s\"\nmax_interval = \"5s\"",
                "retry.max_interval",
                "must be at least `retry.initial_interval` (10s), got 5s",
            ),
            (
                "[retry]\ninitial_interval = \"2h\"\nmax_interval = \"6h\"\nmax_elapsed = \"1h\"",
                "retry.max_elapsed",
                "must be at least `retry.initial_interval` (2h), got 1h",
            ),
            (
                "[broker]\nprefetch = 0",
                "broker.prefetch",
                "at least 1, got 0",
            ),
            (
                "[broker]\nbinding_keys = []",
                "broker.binding_keys",
                "at least one",
            ),
            (
                "[broker]\nexchange = \"\"",
                "broker.exchange",
                "must not be empty",
            ),
            (
                "[broker]\nqueue = \"\"",
                "broker.queue",
                "must not be empty",
            ),
            (
                "[broker]\nretry_queue_prefix = \"\"",
                "broker.retry_queue_prefix",
                "must not be empty",
            ),
            (
                "[broker]\ndead_letter_queue = \"\"",
                "broker.dead_letter_queue",
                "must not be empty",
            ),
            (
                "[broker]\ndead_letter_queue = \"webhookd.events\"",
                "broker.dead_letter_queue",
                "must differ from `broker.queue`",
            ),
            (
                "[broker]\nheartbeat = \"500ms\"",
                "broker.heartbeat",
                "whole seconds",
            ),
            (
                "[broker]\nheartbeat = \"1day\"",
                "broker.heartbeat",
                "up to 65535s",
            ),
            (
                "[broker]\nurl = \"http://guest:guest@host\"",
                "broker.url",
                "amqp://",
            ),
            ("[store]\npath = \"\"", "store.path", "must not be empty"),
            (
                "[delivery]\nconnect_timeout = \"0s\"",
                "delivery.connect_timeout",
                "must be between 1ms and 10m (a connection",
            ),
            (
                "[delivery]\nrequest_timeout = \"0ms\"",
                "delivery.request_timeout",
                "must be between 1ms and 15m",
            ),
            (
                "[delivery]\nmax_in_flight = 0",
                "delivery.max_in_flight",
                "at least 1",
            ),
            (
                "[delivery]\nmax_event_bytes = 0",
                "delivery.max_event_bytes",
                "at least 1",
            ),
            ("[admin]\ntoken = \"\"", "admin.token", "must not be empty"),
            (
                "[admin]\ntoken = \"   \\t  \"",
                "admin.token",
                "must not be empty or only whitespace",
            ),
            (
                "[admin]\ntoken = \"  fifteen-chars-x  \"",
                "admin.token",
                "must be at least 16 characters",
            ),
            (
                "[admin]\ntoken = \"sixteen-chars-é-x\"",
                "admin.token",
                "printable ASCII",
            ),
            (
                "[admin]\ninsecure_no_auth = true\nlisten = \"0.0.0.0:8089\"",
                "admin.insecure_no_auth",
                "only with a loopback `admin.listen`",
            ),
            (
                "[admin]\ninsecure_no_auth = true\nlisten = \"192.168.1.5:8089\"",
                "admin.insecure_no_auth",
                "got 192.168.1.5:8089",
            ),
            (
                "[admin]\ninsecure_no_auth = true\ntoken = \"abcdefghijklmnop\"",
                "admin.insecure_no_auth",
                "must not be true while a token is set",
            ),
            (
                "[delivery]\nextra_ca_file = \"/nonexistent/ca.pem\"",
                "delivery.extra_ca_file",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                "[broker]\nurl = \"amqps://u:p@rabbit/%2f\"\nextra_ca_file = \"/nonexistent/ca.pem\"",
                "broker.extra_ca_file",
                "cannot read /nonexistent/ca.pem",
            ),
            (
                "[broker]\nextra_ca_file = \"/nonexistent/ca.pem\"",
                "broker.extra_ca_file",
                "`broker.url` is not an amqps:// URI",
            ),
            ("[log]\nlevel = \"\"", "log.level", "must not be empty"),
            (
                "[log]\nlevel = \"info,lapin=loud\"",
                "log.level",
                "tracing filter",
            ),
        ];
        for (text, want_key, want_rule) in cases {
            let error = load_err(text);
            let ConfigError::Rule { key, rule, var, .. } = &error else {
                panic!("{text:?}: expected Rule, got {error:?}");
            };
            assert_eq!(key, want_key, "{text:?}");
            assert!(rule.contains(want_rule), "{text:?}: {rule}");
            assert_eq!(var, &None);
        }
    }

    #[test]
    fn insecure_no_auth_is_accepted_on_loopback_only() {
        for listen in ["127.0.0.1:8089", "127.0.0.2:9", "[::1]:8089"] {
            let text = format!("[admin]\ninsecure_no_auth = true\nlisten = \"{listen}\"\n");
            assert!(load_ok(&text, no_env()).admin.insecure_no_auth, "{listen}");
        }
    }

    #[test]
    fn rule_message_reads_as_documented() {
        let message = load_err("[retry]\njitter = 1.5\n").to_string();
        assert_eq!(message, "config: `retry.jitter` must be in [0, 1), got 1.5");
    }

    #[test]
    fn heartbeat_zero_turns_heartbeats_off_and_is_allowed() {
        let config = load_ok("[broker]\nheartbeat = \"0s\"\n", no_env());
        assert_eq!(config.broker.heartbeat, Duration::ZERO);
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
    fn syntax_error_is_reported() {
        let error = load_err("[broker\nurl = 1\n");
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("config: TOML parse error at line 1"),
            "{error}"
        );
    }

    #[test]
    fn errors_never_show_a_secret_but_name_its_key_or_line() {
        let secret = "S3cr3t-in-the-config";
        let cases = [
            // A syntax error on the URL's line: toml would quote the whole line.
            (
                format!("[broker]\nprefetch = 1\nurl = \"amqp://u:{secret}@h/%2f\n"),
                "line 3, column",
            ),
            (
                format!("[broker]\nurl = amqp://u:{secret}@h/%2f\n"),
                "line 2, column",
            ),
            (format!("[admin]\ntoken = '{secret}\n"), "line 2, column"),
            // Unencoded `/`, `?` or `#` in the password: not a URI lapin can use.
            (
                format!("[broker]\nurl = \"amqp://u:a/{secret}@h/%2f\"\n"),
                "`broker.url` must be a valid AMQP URI",
            ),
            (
                format!("[broker]\nurl = \"amqp://u:{secret}?x@h/%2f\"\n"),
                "`broker.url` must be a valid AMQP URI",
            ),
            (
                format!("[broker]\nurl = \"amqps://u:{secret}#x@h\"\n"),
                "`broker.url` must be a valid AMQP URI",
            ),
        ];
        for (text, named) in cases {
            let message = load_err(&text).to_string();
            assert!(!message.contains(secret), "{message}");
            assert!(message.contains(named), "{named:?} not in {message}");
        }

        let number = "1234567890123456";
        let message = load_err(&format!("[admin]\ntoken = {number}\n")).to_string();
        assert!(
            !message.contains(number) && message.contains("`admin.token`"),
            "{message}"
        );
        let error = match Config::from_toml("", env(&[("WEBHOOKD_BROKER__URL", number)])) {
            Ok(_) => panic!("a number accepted as the broker URL"),
            Err(error) => error.to_string(),
        };
        assert!(!error.contains(number), "{error}");
        assert!(
            error.contains("`broker.url` (set by WEBHOOKD_BROKER__URL)"),
            "{error}"
        );
    }

    #[test]
    fn a_secret_override_that_reads_as_a_number_is_a_string() {
        let config = load_ok("", env(&[("WEBHOOKD_ADMIN__TOKEN", "1234567890123456")]));
        assert_eq!(
            config.admin.token().map(Secret::expose),
            Some("1234567890123456")
        );
        let quoted = load_ok(
            "",
            env(&[("WEBHOOKD_ADMIN__TOKEN", "\"quoted-token-of-16\"")]),
        );
        assert_eq!(
            quoted.admin.token().map(Secret::expose),
            Some("quoted-token-of-16")
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let error = load_err("[broker]\n\nurl = \"amqp://x\" junk\n");
        assert_eq!(
            error.to_string(),
            "config: TOML parse error at line 3, column 18: expected newline, `#`"
        );
    }

    #[test]
    fn env_overrides_set_strings_numbers_and_arrays() {
        let vars = env(&[
            ("WEBHOOKD_BROKER__URL", "amqp://u:p@rabbit:5672/%2f"),
            ("WEBHOOKD_BROKER__PREFETCH", "10"),
            ("WEBHOOKD_DELIVERY__ALLOW_NETWORKS", "[\"127.0.0.0/8\"]"),
            ("WEBHOOKD_BROKER__DECLARE_EXCHANGE", "false"),
            ("WEBHOOKD_RETRY__INITIAL_INTERVAL", "1s"),
            ("WEBHOOKD_RETRY__JITTER", "0.5"),
            ("WEBHOOKD_BROKER__QUEUE", "\"12345\""),
            ("WEBHOOKD_LOG__LEVEL", "debug,lapin=warn"),
            ("WEBHOOKD_ADMIN__TOKEN", "s3cret-of-16-chars"),
            ("WEBHOOKD_ADMIN__LISTEN", "127.0.0.1:0"),
        ]);
        let config = load_ok("", vars);
        assert_eq!(config.broker.url.expose(), "amqp://u:p@rabbit:5672/%2f");
        assert_eq!(config.broker.prefetch, 10);
        assert_eq!(
            config.delivery.allow_networks,
            vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert!(!config.broker.declare_exchange);
        assert_eq!(config.retry.initial_interval, Duration::from_secs(1));
        assert_eq!(config.retry.jitter, 0.5);
        assert_eq!(config.broker.queue, "12345");
        assert_eq!(config.log.level, "debug,lapin=warn");
        assert_eq!(
            config.admin.token().map(Secret::expose),
            Some("s3cret-of-16-chars")
        );
        assert_eq!(config.admin.listen.port(), 0);
    }

    #[test]
    fn env_override_beats_the_file_and_keeps_its_siblings() {
        let text = "[broker]\nprefetch = 7\nqueue = \"from.file\"\n";
        let config = load_ok(text, env(&[("WEBHOOKD_BROKER__PREFETCH", "9")]));
        assert_eq!(config.broker.prefetch, 9);
        assert_eq!(config.broker.queue, "from.file");
    }

    #[test]
    fn env_names_are_case_insensitive_after_the_prefix() {
        let config = load_ok("", env(&[("WEBHOOKD_Broker__Prefetch", "3")]));
        assert_eq!(config.broker.prefetch, 3);
    }

    #[test]
    fn env_vars_that_are_not_overrides_are_ignored() {
        let vars = env(&[
            ("WEBHOOKD_CONFIG", "/etc/elsewhere.toml"),
            ("WEBHOOKD_BROKER_HOME", "/tmp/rabbit"),
            ("PATH", "/usr/bin"),
            ("BROKER__URL", "nonsense"),
            ("webhookd_broker__url", "nonsense"),
        ]);
        assert_eq!(load_ok("", vars), Config::default());
    }

    #[test]
    fn env_override_with_unknown_key_names_the_variable() {
        let error = match Config::from_toml("", env(&[("WEBHOOKD_BROKER__EXHANGE", "x")])) {
            Ok(_) => panic!("unknown key accepted"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, ConfigError::UnknownKey { key, var: Some(var), .. }
                if key == "broker.exhange" && var == "WEBHOOKD_BROKER__EXHANGE"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(
                "config: unknown key `broker.exhange` (set by WEBHOOKD_BROKER__EXHANGE) (expected one of"
            ),
            "{message}"
        );
    }

    #[test]
    fn env_override_with_unknown_section_names_the_variable() {
        for name in ["WEBHOOKD_BROKR__URL", "WEBHOOKD___URL"] {
            let error = match Config::from_toml("", env(&[(name, "x")])) {
                Ok(_) => panic!("{name} accepted"),
                Err(error) => error,
            };
            assert!(
                matches!(&error, ConfigError::UnknownSection { var: Some(var), .. } if var == name),
                "{error:?}"
            );
            assert!(error.to_string().contains(name), "{error}");
        }
    }

    #[test]
    fn env_override_with_bad_value_names_the_variable() {
        let cases = [
            ("WEBHOOKD_BROKER__PREFETCH", "lots", "broker.prefetch"),
            (
                "WEBHOOKD_DELIVERY__CONNECT_TIMEOUT",
                "5 parsecs",
                "delivery.connect_timeout",
            ),
            ("WEBHOOKD_RETRY__JITTER", "2", "retry.jitter"),
        ];
        for (name, value, want_key) in cases {
            let error = match Config::from_toml("", env(&[(name, value)])) {
                Ok(_) => panic!("{name}={value} accepted"),
                Err(error) => error,
            };
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("config: `{want_key}` (set by {name})")),
                "{message}"
            );
        }
    }

    #[test]
    fn override_values_parse_as_toml_when_they_can() {
        let cases = [
            ("10", Value::Integer(10)),
            ("true", Value::Boolean(true)),
            ("0.5", Value::Float(0.5)),
            ("\"quoted\"", Value::String("quoted".into())),
            (
                "[\"a\", \"b\"]",
                Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
            ),
            ("15s", Value::String("15s".into())),
            (
                "amqp://u:p@h:5672/%2f",
                Value::String("amqp://u:p@h:5672/%2f".into()),
            ),
            ("127.0.0.1:8089", Value::String("127.0.0.1:8089".into())),
            ("1979-05-27", Value::String("1979-05-27".into())),
            ("1\nother = 2", Value::String("1\nother = 2".into())),
            ("", Value::String(String::new())),
        ];
        for (raw, want) in cases {
            assert_eq!(override_value(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "  t0ken-from-the-file\n\n").unwrap();
        let text = format!("[admin]\ntoken_file = {:?}\n", path.display().to_string());
        let config = load_ok(&text, no_env());
        assert_eq!(
            config.admin.token().map(Secret::expose),
            Some("t0ken-from-the-file")
        );
        assert_eq!(config.admin.token_file.as_deref(), Some(path.as_path()));

        let via_env = load_ok(
            "",
            env(&[("WEBHOOKD_ADMIN__TOKEN_FILE", &path.display().to_string())]),
        );
        assert_eq!(
            via_env.admin.token().map(Secret::expose),
            Some("t0ken-from-the-file")
        );
    }

    #[test]
    fn an_inline_token_is_trimmed_and_a_short_token_file_is_named() {
        let config = load_ok("[admin]\ntoken = \"  sixteen-chars-ok\t \"\n", no_env());
        assert_eq!(
            config.admin.token().map(Secret::expose),
            Some("sixteen-chars-ok")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "  short-token \n").unwrap();
        let error = load_err(&format!(
            "[admin]\ntoken_file = {:?}\n",
            path.display().to_string()
        ));
        assert!(
            matches!(&error, ConfigError::Rule { key, .. } if key == "admin.token_file"),
            "{error:?}"
        );
        assert!(!error.to_string().contains("short-token"), "{error}");
    }

    #[test]
    fn secret_files_readable_by_group_or_others_are_reported() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        let url = dir.path().join("broker-url");
        std::fs::write(&token, "a-token-of-sixteen-chars").unwrap();
        std::fs::write(&url, "amqp://u:p@h/%2f").unwrap();
        let text = format!(
            "[broker]\nurl_file = {:?}\n[admin]\ntoken_file = {:?}\n",
            url.display().to_string(),
            token.display().to_string()
        );
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for (token_mode, url_mode, reported) in [
            (0o600, 0o400, vec![]),
            (0o640, 0o600, vec!["admin.token_file"]),
            (0o604, 0o644, vec!["admin.token_file", "broker.url_file"]),
            (0o620, 0o602, vec![]),
        ] {
            mode(&token, token_mode);
            mode(&url, url_mode);
            let found = load_ok(&text, no_env()).readable_secret_files();
            let keys: Vec<&str> = found.iter().map(|f| f.key).collect();
            assert_eq!(keys, reported, "{token_mode:o} {url_mode:o}");
        }
        mode(&token, 0o644);
        let found = load_ok(&text, no_env()).readable_secret_files();
        assert_eq!(
            found.first().map(ToString::to_string).unwrap_or_default(),
            format!(
                "`admin.token_file` {} can be read by its group or by others (mode 0644): make \
                 it readable by its owner only (chmod 600)",
                token.display()
            )
        );
    }

    #[test]
    fn token_and_token_file_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "from-file").unwrap();
        let text = format!(
            "[admin]\ntoken = \"inline\"\ntoken_file = {:?}\n",
            path.display().to_string()
        );
        let error = load_err(&text);
        assert!(matches!(error, ConfigError::Conflict { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "config: `admin.token` and `admin.token_file` are both set; set only one"
        );
    }

    #[test]
    fn unreadable_or_empty_secret_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();

        let error = load_err(&format!(
            "[admin]\ntoken_file = {:?}\n",
            missing.display().to_string()
        ));
        assert!(matches!(&error, ConfigError::SecretFile { key, .. } if key == "admin.token_file"));
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );

        let error = load_err(&format!(
            "[broker]\nurl_file = {:?}\n",
            empty.display().to_string()
        ));
        assert!(matches!(&error, ConfigError::Rule { key, .. } if key == "broker.url_file"));
        assert!(error.to_string().contains("empty"), "{error}");
    }

    #[test]
    fn url_file_replaces_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker-url");
        std::fs::write(&path, "amqp://webhookd:fr0m-file@rabbit:5672/%2f\n").unwrap();
        let text = format!(
            "[broker]\nurl = \"amqp://ignored:x@h/%2f\"\nurl_file = {:?}\n",
            path.display().to_string()
        );
        let config = load_ok(&text, no_env());
        assert_eq!(
            config.broker.url.expose(),
            "amqp://webhookd:fr0m-file@rabbit:5672/%2f"
        );

        std::fs::write(&path, "not a url").unwrap();
        let error = load_err(&text);
        assert!(matches!(&error, ConfigError::Rule { key, .. } if key == "broker.url_file"));
        assert!(!error.to_string().contains("not a url"), "{error}");
    }

    #[test]
    fn masked_toml_hides_secrets_and_loads_back() {
        let vars = env(&[
            (
                "WEBHOOKD_BROKER__URL",
                "amqp://webhookd:br0ker-pw@rabbit:5672/prod",
            ),
            ("WEBHOOKD_ADMIN__TOKEN", "adm1n-t0ken-of-16"),
            (
                "WEBHOOKD_DELIVERY__ALLOW_NETWORKS",
                "[\"10.0.0.0/8\", \"::1\"]",
            ),
            ("WEBHOOKD_RETRY__MAX_ELAPSED", "36h"),
            ("WEBHOOKD_LOG__FORMAT", "json"),
        ]);
        let config = load_ok("", vars);
        let shown = config.to_masked_toml();
        assert!(!shown.contains("br0ker-pw"), "{shown}");
        assert!(!shown.contains("adm1n-t0ken-of-16"), "{shown}");
        assert!(
            shown.contains("amqp://webhookd:****@rabbit:5672/prod"),
            "{shown}"
        );
        assert!(shown.contains("token = \"****\""), "{shown}");

        // A masked token is never taken for a real one: too short to pass.
        let error = load_err(&shown);
        assert!(
            matches!(&error, ConfigError::Rule { key, .. } if key == "admin.token"),
            "{error:?}"
        );
        let without_token = shown.replace("token = \"****\"\n", "");
        let mut reloaded = load_ok(&without_token, no_env());
        assert_eq!(
            reloaded.broker.url.expose(),
            "amqp://webhookd:****@rabbit:5672/prod"
        );
        reloaded.broker.url = config.broker.url.clone();
        reloaded.admin.token = config.admin.token.clone();
        assert_eq!(reloaded, config);
    }

    #[test]
    fn masked_toml_shows_a_token_file_not_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "fr0m-file-with-16").unwrap();
        let text = format!("[admin]\ntoken_file = {:?}\n", path.display().to_string());
        let config = load_ok(&text, no_env());
        let shown = config.to_masked_toml();
        assert!(!shown.contains("fr0m-file-with-16"), "{shown}");
        assert!(!shown.contains("token = "), "{shown}");
        let mut reloaded = load_ok(&shown, no_env());
        assert_eq!(
            reloaded.admin.token().map(Secret::expose),
            Some("fr0m-file-with-16")
        );
        // The broker URL comes back with its password masked; everything else is equal.
        reloaded.broker.url = config.broker.url.clone();
        assert_eq!(reloaded, config);
    }

    #[test]
    fn masked_url_replaces_only_the_password() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:****@127.0.0.1:5672/%2f",
            ),
            (
                "amqps://u:p@w@host/vhost?heartbeat=10",
                "amqps://u:****@host/vhost?heartbeat=10",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host:5672/%2f", "amqp://host:5672/%2f"),
            ("amqp://u:p@host", "amqp://u:****@host"),
            ("amqp://u:pa/ss@host/v", "amqp://u:****@host/v"),
            ("amqp://u:pa?ss@host", "amqp://u:****@host"),
            (
                "amqp://u:pa#ss@host:5672/%2f",
                "amqp://u:****@host:5672/%2f",
            ),
            ("amqp://u:a/b?c#d@e@host/v", "amqp://u:****@host/v"),
            ("not a url with p@ssword", MASK),
        ];
        for (url, want) in cases {
            assert_eq!(masked_url(url), want, "{url}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{secret}"), MASK);
        assert_eq!(format!("{secret:?}"), MASK);
        assert_eq!(secret.expose(), "hunter2");
        let config = load_ok(
            "",
            env(&[
                ("WEBHOOKD_ADMIN__TOKEN", "hunter2-hunter2-hunter2"),
                ("WEBHOOKD_BROKER__URL", "amqp://u:hunter3@h/%2f"),
            ]),
        );
        let debug = format!("{config:?} {config:#?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("hunter3"),
            "{debug}"
        );
    }

    #[test]
    fn secrets_compare_by_content() {
        let a = Secret::from("same".to_owned());
        assert_eq!(a, Secret::from("same".to_owned()));
        assert_ne!(a, Secret::from("samf".to_owned()));
        assert_ne!(a, Secret::from("same-but-longer".to_owned()));
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

    #[test]
    fn load_names_the_file_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let error = match Config::load(&missing) {
            Ok(_) => panic!("missing file loaded"),
            Err(error) => error,
        };
        assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("config {}: cannot read", missing.display())),
            "{error}"
        );

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[broker]\nexhange = \"x\"\n").unwrap();
        let error = match Config::load(&bad) {
            Ok(_) => panic!("bad file loaded"),
            Err(error) => error,
        };
        assert!(
            error.to_string().starts_with(&format!(
                "config {}: unknown key `broker.exhange`",
                bad.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhookd.toml");
        std::fs::write(&path, "[broker]\nprefetch = 12\n").unwrap();
        match Config::load(&path) {
            // The test process's environment could hold WEBHOOKD_ overrides; prefetch is only
            // checked when it does not.
            Ok(config) if std::env::var_os("WEBHOOKD_BROKER__PREFETCH").is_none() => {
                assert_eq!(config.broker.prefetch, 12)
            }
            Ok(_) => {}
            Err(error) => panic!("{error}"),
        }
    }
}
