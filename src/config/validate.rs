//! The rules: everything serde's types cannot express, checked once at load time so the rest of
//! the crate need not. Each rule lives here once, next to its bound; where a domain type owns a
//! rule (the retry [`Schedule`](crate::retry::Schedule)), it is asked, not copied.

use std::time::Duration;

use super::Config;

/// The shortest admin token accepted: 16 characters of a random token are beyond guessing
/// through the API, and a shorter one is more likely a placeholder than a secret.
const MIN_TOKEN_CHARS: usize = 16;

/// AMQP names (exchanges, queues) are short strings on the wire.
const MAX_AMQP_NAME: usize = 255;

impl Config {
    /// Every rule serde's types cannot express, checked once so the rest of the crate need not.
    pub(super) fn validate(&self) -> Result<(), Broken> {
        let broker = &self.broker;
        let key = broker.nodes_key();
        let nodes = broker.nodes();
        ensure(
            !nodes.is_empty(),
            key,
            "must list at least one AMQP URI, one for each node of the cluster",
        )?;
        for (n, url) in nodes.iter().enumerate() {
            // In a list, the entry is named by its place: the URL is a secret, never shown.
            let entry = if nodes.len() > 1 || broker.urls.is_some() {
                format!("entry {} ", n + 1)
            } else {
                String::new()
            };
            let url = url.expose();
            ensure(
                url.starts_with("amqp://") || url.starts_with("amqps://"),
                key,
                format!("{entry}must be an amqp:// or amqps:// URI"),
            )?;
            // The parser's message is not shown: it can quote the text, which holds the
            // password. An AMQP URI has no fragment, so a `#` can only be an unencoded character
            // of the password, which the parser would silently cut the URL at.
            ensure(
                url.parse::<lapin::uri::AMQPUri>().is_ok() && !url.contains('#'),
                key,
                format!(
                    "{entry}must be a valid AMQP URI: percent-encode `/`, `?`, `#`, `@`, `:` and \
                     `%` in the user name and password (`/` is %2F)"
                ),
            )?;
            ensure(
                !nodes[..n].iter().any(|earlier| earlier.expose() == url),
                key,
                format!("{entry}repeats an earlier entry: list each node once"),
            )?;
            if broker.extra_ca_file.is_some() {
                // A CA for a connection that does not use TLS means the operator believes it
                // does.
                ensure(
                    url.starts_with("amqps://"),
                    "broker.extra_ca_file",
                    format!(
                        "is set, but `{key}` {entry}is not an amqps:// URI: the broker \
                         connection would not use TLS"
                    ),
                )?;
            }
        }
        if let Some(path) = &broker.extra_ca_file {
            crate::tls::read_ca_file(path).map_err(|error| Broken {
                key: "broker.extra_ca_file",
                rule: format!("must name a PEM file of CA certificates: {error}"),
            })?;
        }
        amqp_name("broker.exchange", &broker.exchange)?;
        amqp_name("broker.queue", &broker.queue)?;
        amqp_name("broker.retry_queue_prefix", &broker.retry_queue_prefix)?;
        amqp_name("broker.dead_letter_queue", &broker.dead_letter_queue)?;
        amqp_name("broker.registry_stream", &broker.registry_stream)?;
        ensure(
            broker.registry_stream != broker.queue
                && broker.registry_stream != broker.dead_letter_queue,
            "broker.registry_stream",
            "must differ from `broker.queue` and `broker.dead_letter_queue`",
        )?;
        ensure(
            (4096..=1 << 30).contains(&broker.registry_segment_bytes),
            "broker.registry_segment_bytes",
            format!(
                "must be from 4096 to 1073741824, got {}",
                broker.registry_segment_bytes
            ),
        )?;
        ensure(
            broker.registry_snapshot_every <= broker.registry_max_age / 2,
            "broker.registry_snapshot_every",
            "must be at most half of `broker.registry_max_age`, so that a whole snapshot is always within retention",
        )?;
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
                "broker.registry_max_age",
                self.broker.registry_max_age,
                Duration::from_secs(2),
                10 * YEAR,
                "retention is whole seconds, and ten years is forever for a registry log",
            ),
            (
                "broker.registry_snapshot_every",
                self.broker.registry_snapshot_every,
                Duration::from_secs(1),
                5 * YEAR,
                "it is at most half of broker.registry_max_age",
            ),
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
                "admin.session_idle_timeout",
                self.admin.session_idle_timeout,
                Duration::from_secs(1),
                day,
                "a session left idle for a day is abandoned",
            ),
            (
                "admin.session_max_age",
                self.admin.session_max_age,
                Duration::from_secs(1),
                30 * day,
                "a stolen session cookie must stop working within a month",
            ),
            (
                "delivery.disable_after",
                delivery.disable_after,
                Duration::ZERO,
                YEAR,
                "a year of failures is long past any receiver's repair",
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

/// A rule broken during validation; loading turns it into
/// [`ConfigError::Rule`](super::ConfigError::Rule) with the override's name.
pub(super) struct Broken {
    pub(super) key: &'static str,
    pub(super) rule: String,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{load_err, load_ok, no_env};
    use crate::config::{Config, ConfigError};

    #[test]
    fn defaults_pass_validation() {
        assert!(Config::default().validate().is_ok());
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
}
