//! SIGHUP: applying a new configuration to the running daemon.
//!
//! The binary loads and validates the file (an invalid one is logged there and never reaches
//! this module) and sends it here. What can change without dropping a message changes at once:
//! `log.level` (applied by the binary, which owns the log subscriber), the delivery client's
//! timeouts, allow-list and CA file, the in-flight caps, the circuit breaker, the event size
//! limit, and the retry schedule. Everything else — the broker and its topology, the store, the
//! admin listener and token, the log format, the drain time — is wired into connections, files
//! and sockets that only a restart rebuilds, so a change there is reported, by key, and not
//! applied.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::endpoints::Policy;
use super::{Live, Shared};
use crate::config::Config;

/// The keys applied live: what [`Live`] is built from, and the log level. Named one by one so
/// that a key added to the config later counts as needing a restart until it is wired here.
const LIVE_KEYS: [&str; 16] = [
    "log.level",
    "delivery.connect_timeout",
    "delivery.request_timeout",
    "delivery.allow_networks",
    "delivery.extra_ca_file",
    "delivery.max_in_flight",
    "delivery.max_in_flight_per_endpoint",
    "delivery.circuit_failures",
    "delivery.circuit_cooldown",
    "delivery.circuit_stall",
    "delivery.max_event_bytes",
    "retry.initial_interval",
    "retry.multiplier",
    "retry.jitter",
    "retry.max_interval",
    "retry.max_elapsed",
];

/// Applies each config received on `reloads` until `stop`. Live keys are compared with the last
/// config applied; the others with the config the daemon started with, so that a change that
/// needs a restart is reported on every reload until the restart.
pub(super) async fn follow(
    shared: Arc<Shared>,
    started: Config,
    mut reloads: watch::Receiver<Config>,
    stop: CancellationToken,
) {
    let mut applied = started.clone();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = reloads.changed() => if changed.is_err() {
                return;
            },
        }
        let new = reloads.borrow_and_update().clone();
        let live: Vec<String> = changed_keys(&applied, &new)
            .into_iter()
            .filter(|key| is_live(key))
            .collect();
        let restart: Vec<String> = changed_keys(&started, &new)
            .into_iter()
            .filter(|key| !is_live(key))
            .collect();
        if !live.is_empty() {
            match Live::build(&new, Some((&applied, &shared.live()))) {
                Ok(built) => {
                    shared.replace_live(built);
                    shared.endpoints.set_policy(Policy::from(&new.delivery));
                }
                Err(error) => {
                    error!(%error, "reload: the new delivery settings cannot be applied; keeping the running ones");
                    continue;
                }
            }
        }
        if !restart.is_empty() {
            warn!(
                keys = %restart.join(", "),
                "reload: these changes take effect only after a restart"
            );
        }
        info!(applied = %live.join(", "), "configuration reloaded");
        applied = new;
    }
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS.contains(&key)
}

/// The `section.key` paths whose values differ. Compared on the serialized form, so a key added
/// to the config is covered without a change here; secrets serialize masked, so they are
/// compared directly.
fn changed_keys(old: &Config, new: &Config) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    if old.broker.url != new.broker.url {
        changed.insert("broker.url".to_owned());
    }
    if old.broker.urls != new.broker.urls {
        changed.insert("broker.urls".to_owned());
    }
    if old.admin.token != new.admin.token {
        changed.insert("admin.token".to_owned());
    }
    let (Ok(old_table), Ok(new_table)) = (toml::Table::try_from(old), toml::Table::try_from(new))
    else {
        // Every field serializes (config's own test shows the whole file round-trips); this
        // only keeps a future field from turning a reload into a panic.
        changed.insert("(configuration)".to_owned());
        return changed;
    };
    let empty = toml::Table::new();
    let sections: BTreeSet<&String> = old_table.keys().chain(new_table.keys()).collect();
    for section in sections {
        let old_keys = old_table
            .get(section)
            .and_then(toml::Value::as_table)
            .unwrap_or(&empty);
        let new_keys = new_table
            .get(section)
            .and_then(toml::Value::as_table)
            .unwrap_or(&empty);
        let keys: BTreeSet<&String> = old_keys.keys().chain(new_keys.keys()).collect();
        for key in keys {
            if old_keys.get(key) != new_keys.get(key) {
                changed.insert(format!("{section}.{key}"));
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text, Vec::new()).expect("valid config")
    }

    #[test]
    fn changed_keys_names_each_changed_key_and_secrets_too() {
        let old = config("");
        let new = config(
            r#"
            [broker]
            url = "amqp://u:other@127.0.0.1:5672/%2f"
            prefetch = 10
            [delivery]
            request_timeout = "3s"
            [admin]
            token = "sixteen-chars-ok"
            [log]
            level = "debug"
            "#,
        );
        let changed: Vec<String> = changed_keys(&old, &new).into_iter().collect();
        assert_eq!(
            changed,
            [
                "admin.token",
                "broker.prefetch",
                "broker.url",
                "delivery.request_timeout",
                "log.level"
            ]
        );
        assert!(changed_keys(&new, &new.clone()).is_empty());
    }

    #[test]
    fn delivery_retry_and_log_level_are_live_the_rest_needs_a_restart() {
        for key in LIVE_KEYS {
            let (section, name) = key.split_once('.').expect("section.key");
            let shipped = config("");
            let table = toml::Table::try_from(&shipped).expect("serializes");
            let known = table[section].as_table().expect("section");
            // A key the config does not serialize by default (unset options) is still a field.
            assert!(
                known.contains_key(name) || name == "extra_ca_file",
                "{key} is not a config key"
            );
        }
        for key in ["delivery.allow_networks", "retry.max_elapsed", "log.level"] {
            assert!(is_live(key), "{key}");
        }
        for key in [
            "broker.url",
            "broker.urls",
            "log.format",
            "admin.listen",
            "store.path",
            "service.drain_timeout",
        ] {
            assert!(!is_live(key), "{key}");
        }
    }
}
