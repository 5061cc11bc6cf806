//! Loading with overrides: the file is read, its keys are checked against the structs,
//! `WEBHOOKD_<SECTION>__<KEY>` variables are laid over it, serde turns it into a [`Config`],
//! secret files are read, and `validate` applies the rules. Every error names the
//! key (and the variable, for an override), and none quotes a secret.

use std::collections::HashMap;
use std::path::Path;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use toml::{Table, Value};

use super::secret::{masked_url, MASK};
use super::{
    AdminConfig, BrokerConfig, Config, ConfigError, DeliveryConfig, LogConfig, ReadableSecretFile,
    RetryConfig, Secret, ServiceConfig, StoreConfig,
};

/// Environment variables with this prefix and a `__` between section and key are overrides.
const ENV_PREFIX: &str = "WEBHOOKD_";

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
        check_conflicts(&table)?;
        let mut config = deserialize(table, &overrides)?;
        config.resolve_secret_files(&overrides)?;
        // As a token file's content is: surrounding whitespace could never match anyway, since
        // HTTP drops it around a header value.
        if let Some(token) = &mut config.admin.token {
            let trimmed = token.expose().trim();
            if trimmed.len() != token.expose().len() {
                *token = Secret::from(trimmed.to_owned());
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
        // Likewise the nodes a `url_file` listed: the file stands for them.
        if shown.broker.url_file.is_some() {
            shown.broker.urls = None;
        }
        match toml::to_string(&shown) {
            // With a list of nodes, `url` is not the operator's (it holds its default) and
            // shown beside `urls` would conflict on loading back. serde cannot skip a field by
            // another's value, so its one line goes here: the first key of `[broker]`.
            Ok(text) if shown.broker.urls.is_some() => {
                let url = toml::Value::String(masked_url(shown.broker.url.expose()));
                text.replacen(&format!("\nurl = {url}\n"), "\n", 1)
            }
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
            let text = read_secret_file("broker.url_file", path, overrides)?;
            let mut lines: Vec<Secret> = text
                .expose()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| Secret::from(line.to_owned()))
                .collect();
            match lines.len() {
                1 => self.broker.url = lines.remove(0),
                _ => self.broker.urls = Some(lines),
            }
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

/// Refuses two keys that both name the broker's nodes: which one was meant cannot be guessed.
/// Checked on the table, as the file and the environment left it, because `broker.url` has a
/// default that would hide whether it was set.
fn check_conflicts(table: &Table) -> Result<(), ConfigError> {
    let Some(Value::Table(broker)) = table.get("broker") else {
        return Ok(());
    };
    if !broker.contains_key("urls") {
        return Ok(());
    }
    for other in ["url", "url_file"] {
        if broker.contains_key(other) {
            return Err(ConfigError::Conflict {
                file: None,
                first: if other == "url" {
                    "broker.url"
                } else {
                    "broker.url_file"
                },
                second: "broker.urls",
            });
        }
    }
    Ok(())
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
            Value::Array(items) if path == "broker.urls" => Value::Array(items),
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
const SECRET_KEYS: [&str; 3] = ["broker.url", "broker.urls", "admin.token"];

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
        let texts = match value {
            Some(Value::String(text)) => vec![text.clone()],
            // Each entry of a list of secrets, as serde may quote any of them alone.
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .chain([Value::Array(items.clone()).to_string()])
                .collect(),
            Some(other) => vec![other.to_string()],
            None => continue,
        };
        for text in texts.iter().filter(|text| !text.is_empty()) {
            message = message.replace(text.as_str(), MASK);
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
                let expected = if path == "broker.urls" {
                    "a list of strings"
                } else {
                    "a string"
                };
                format!(
                    "expected {expected}, found {} (the value is a secret and is not shown)",
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
    Ok(Secret::from(secret.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use ipnet::IpNet;

    use super::*;
    use crate::config::tests::{env, load_err, load_ok, no_env, SHIPPED};

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

    /// The nodes as strings, in order.
    fn nodes(config: &Config) -> Vec<&str> {
        config.broker.nodes().iter().map(Secret::expose).collect()
    }

    #[test]
    fn broker_urls_lists_the_nodes_in_order_and_url_alone_still_works() {
        assert_eq!(
            nodes(&load_ok("", no_env())),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        let one = load_ok("[broker]\nurl = \"amqp://u:p@a:5672/%2f\"\n", no_env());
        assert_eq!(nodes(&one), ["amqp://u:p@a:5672/%2f"]);
        let (a, b, c) = (
            "amqp://u:p@a:5672/%2f",
            "amqps://u:p@b/%2f",
            "amqp://u:p@c:5673/v",
        );
        let three = load_ok(
            &format!("[broker]\nurls = [{a:?}, {b:?}, {c:?}]\n"),
            no_env(),
        );
        assert_eq!(nodes(&three), [a, b, c]);
        let via_env = load_ok(
            "",
            env(&[("WEBHOOKD_BROKER__URLS", &format!("[{a:?}, {c:?}]"))]),
        );
        assert_eq!(nodes(&via_env), [a, c]);
    }

    #[test]
    fn broker_url_and_urls_together_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker-url");
        std::fs::write(&file, "amqp://u:p@a/%2f\n").unwrap();
        let urls = "urls = [\"amqp://u:p@a/%2f\", \"amqp://u:p@b/%2f\"]";
        for (text, vars, first) in [
            (
                format!("[broker]\nurl = \"amqp://u:p@a/%2f\"\n{urls}\n"),
                no_env(),
                "broker.url",
            ),
            (
                format!(
                    "[broker]\nurl_file = {:?}\n{urls}\n",
                    file.display().to_string()
                ),
                no_env(),
                "broker.url_file",
            ),
            // The shipped file sets `url`; adding the list by the environment is a conflict too.
            (
                SHIPPED.to_owned(),
                env(&[("WEBHOOKD_BROKER__URLS", "[\"amqp://u:p@b/%2f\"]")]),
                "broker.url",
            ),
        ] {
            let error = match Config::from_toml(&text, vars) {
                Ok(_) => panic!("{text:?} accepted"),
                Err(error) => error,
            };
            assert!(matches!(error, ConfigError::Conflict { .. }), "{error:?}");
            assert_eq!(
                error.to_string(),
                format!("config: `{first}` and `broker.urls` are both set; set only one")
            );
        }
    }

    #[test]
    fn every_node_url_is_checked_and_never_shown() {
        let secret = "S3cr3t-of-a-node";
        let ok = "amqp://u:p@a/%2f";
        let cases = [
            (
                "urls = []".to_owned(),
                "broker.urls",
                "must list at least one AMQP URI",
            ),
            (
                format!("urls = [{ok:?}, \"http://u:{secret}@b/\"]"),
                "broker.urls",
                "entry 2 must be an amqp:// or amqps:// URI",
            ),
            (
                format!("urls = [\"amqp://u:a/{secret}@b/%2f\", {ok:?}]"),
                "broker.urls",
                "entry 1 must be a valid AMQP URI",
            ),
            (
                format!("urls = [{ok:?}, \"amqp://u:{secret}@b/%2f\", {ok:?}]"),
                "broker.urls",
                "entry 3 repeats an earlier entry",
            ),
            (
                format!(
                    "urls = [\"amqps://u:{secret}@a/%2f\", \"amqp://u:{secret}@b/%2f\"]\n\
                     extra_ca_file = \"/nonexistent/ca.pem\""
                ),
                "broker.extra_ca_file",
                "`broker.urls` entry 2 is not an amqps:// URI",
            ),
            (
                format!(
                    "urls = [\"amqps://u:{secret}@a/%2f\", \"amqps://u:{secret}@b/%2f\"]\n\
                     extra_ca_file = \"/nonexistent/ca.pem\""
                ),
                "broker.extra_ca_file",
                "cannot read /nonexistent/ca.pem",
            ),
        ];
        for (lines, want_key, want_rule) in cases {
            let text = format!("[broker]\n{lines}\n");
            let error = load_err(&text);
            let ConfigError::Rule { key, rule, .. } = &error else {
                panic!("{text:?}: expected Rule, got {error:?}");
            };
            assert_eq!(key, want_key, "{text:?}");
            assert!(rule.contains(want_rule), "{text:?}: {rule}");
            assert!(!error.to_string().contains(secret), "{error}");
        }
        // A list with something else than strings in it: named, nothing of it quoted.
        let error = load_err(&format!(
            "[broker]\nurls = [\"amqp://u:{secret}@a/%2f\", 5]\n"
        ));
        let message = error.to_string();
        assert!(message.contains("`broker.urls`"), "{message}");
        assert!(!message.contains(secret), "{message}");
    }

    #[test]
    fn a_url_file_of_several_lines_lists_the_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker-nodes");
        let (a, b) = ("amqp://u:pw-a@a/%2f", "amqp://u:pw-b@b/%2f");
        std::fs::write(&path, format!("{a}\n\n  {b}  \n")).unwrap();
        let text = format!("[broker]\nurl_file = {:?}\n", path.display().to_string());
        let config = load_ok(&text, no_env());
        assert_eq!(nodes(&config), [a, b]);
        // Shown as the file that lists them, and loads back the same.
        let shown = config.to_masked_toml();
        assert!(
            !shown.contains("pw-a") && !shown.contains("urls"),
            "{shown}"
        );
        let mut reloaded = load_ok(&shown, no_env());
        reloaded.broker.url = config.broker.url.clone();
        assert_eq!(reloaded, config);
    }

    #[test]
    fn masked_toml_shows_each_node_with_its_password_masked() {
        let config = load_ok(
            "[broker]\nurls = [\"amqp://u:pw-a@a/%2f\", \"amqps://u:pw-b@b:5671/v\"]\n",
            no_env(),
        );
        let shown = config.to_masked_toml();
        assert!(
            !shown.contains("pw-a") && !shown.contains("pw-b"),
            "{shown}"
        );
        assert!(
            shown.contains("urls = [\"amqp://u:****@a/%2f\", \"amqps://u:****@b:5671/v\"]"),
            "{shown}"
        );
        // The default `url` is not shown next to the list, or the output would not load back.
        assert!(!shown.contains("\nurl = "), "{shown}");
        let reloaded = load_ok(&shown, no_env());
        assert_eq!(
            nodes(&reloaded),
            ["amqp://u:****@a/%2f", "amqps://u:****@b:5671/v"]
        );
    }
}
