//! [`Secret`]: a string that never prints, and how a secret is shown where a config is shown.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// What a secret looks like wherever it is shown.
pub(super) const MASK: &str = "****";

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

/// The URL with the password of its userinfo replaced by `****`; user, host and vhost stay
/// visible because they are what an operator checks. The userinfo ends at the last `@`, not at
/// the first `/`, `?` or `#`: a password holding one of those (not percent-encoded) must not show
/// either, and a URL with an `@` elsewhere is masked too much rather than too little. Text that is
/// not `scheme://…` is masked whole, as it cannot be taken apart safely.
pub(super) fn masked_url(url: &str) -> String {
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

pub(super) fn serialize_masked_url<S: Serializer>(
    url: &Secret,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&masked_url(url.expose()))
}

pub(super) fn serialize_masked_urls<S: Serializer>(
    urls: &Option<Vec<Secret>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let masked: Option<Vec<String>> = urls
        .as_ref()
        .map(|urls| urls.iter().map(|url| masked_url(url.expose())).collect());
    masked.serialize(serializer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::tests::{env, load_ok};

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
}
