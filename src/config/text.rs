//! How the values TOML has no type for are spelled in the file: durations with their unit
//! (`"15s"`), socket addresses, and networks (`"10.0.0.0/8"` or a bare address). serde helpers,
//! named in the structs' `#[serde(with = …)]` attributes.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::de;
use serde::{Deserialize, Deserializer};

/// A string parsed with `FromStr`, the error naming the text (serde's own `SocketAddr` error
/// does not).
pub(super) fn deserialize_from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse()
        .map_err(|error| de::Error::custom(format_args!("invalid value {text:?}: {error}")))
}

pub(super) fn deserialize_networks<'de, D: Deserializer<'de>>(
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
pub(super) mod duration_text {
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
mod tests {
    use crate::config::tests::load_err;

    #[test]
    fn bad_duration_message_reads_as_documented() {
        let message = load_err("[delivery]\nrequest_timeout = \"15 parsecs\"\n").to_string();
        assert!(
            message
                .starts_with("config: `delivery.request_timeout`: invalid duration \"15 parsecs\""),
            "{message}"
        );
    }
}
