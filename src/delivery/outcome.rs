//! Where "retry or not" is decided: one exhaustive function from what an attempt returned to
//! what happens to the job next.
//!
//! It is a pure function of the response (or send error) and the clock so that the whole policy
//! reads, and is tested, as one table. Clamping a receiver's `Retry-After` to the schedule is the
//! schedule's business, not this one's: here it is only converted to a delay.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::client::{Response, RetryAfter, SendError};

/// What happens to a delivery job after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` is the receiver's `Retry-After`, if it sent one.
    Retry {
        after: Option<Duration>,
    },
    Dead {
        reason: DeadReason,
    },
}

/// Why a job lies in the dead-letter queue; its string form is the `x-webhookd-reason` header
/// and the CLI's `--reason` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The retry schedule ran out.
    Exhausted,
    /// The receiver answered 3xx or a 4xx that retrying cannot fix, or the URL is unusable.
    Rejected,
    /// The receiver answered 410: the webhook is disabled too.
    Gone,
    /// The destination resolved only to addresses the SSRF guard refuses.
    BlockedDestination,
    /// The event was not a usable JSON envelope.
    Malformed,
    /// The event was over the size limit.
    TooLarge,
    /// The job's webhook was disabled (by hand, by a 410) while the job waited; replayable once
    /// the webhook is enabled again.
    WebhookDisabled,
    /// The message came back from the broker too often without being settled (a daemon that
    /// crashed or was stopped while holding it, again and again).
    Redelivered,
}

/// Every reason, for listings and filters.
pub const ALL_REASONS: [DeadReason; 8] = [
    DeadReason::Exhausted,
    DeadReason::Rejected,
    DeadReason::Gone,
    DeadReason::BlockedDestination,
    DeadReason::Malformed,
    DeadReason::TooLarge,
    DeadReason::WebhookDisabled,
    DeadReason::Redelivered,
];

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Rejected => "rejected",
            DeadReason::Gone => "gone",
            DeadReason::BlockedDestination => "blocked_destination",
            DeadReason::Malformed => "malformed",
            DeadReason::TooLarge => "too_large",
            DeadReason::WebhookDisabled => "webhook_disabled",
            DeadReason::Redelivered => "redelivered",
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason string that names none of the [`DeadReason`]s.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown dead-letter reason {0:?} (expected exhausted, rejected, gone, blocked_destination, \
     malformed, too_large, webhook_disabled or redelivered)"
)]
pub struct UnknownReason(pub String);

impl FromStr for DeadReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_REASONS
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

/// Decides what an attempt's result means. Transport failures and the statuses that say "not
/// now" (408, 425, 429, 5xx) retry; 2xx is done; everything else the receiver says is final.
pub fn classify(result: &Result<Response, SendError>, now: SystemTime) -> Outcome {
    match result {
        Ok(response) => classify_status(response.status, response.retry_after.as_ref(), now),
        Err(
            SendError::Timeout
            | SendError::Stalled
            | SendError::Connect(_)
            | SendError::Tls(_)
            | SendError::Other(_),
        ) => Outcome::Retry { after: None },
        Err(SendError::Blocked { .. }) => Outcome::Dead {
            reason: DeadReason::BlockedDestination,
        },
        Err(SendError::InvalidUrl(_)) => Outcome::Dead {
            reason: DeadReason::Rejected,
        },
    }
}

fn classify_status(
    status: StatusCode,
    retry_after: Option<&RetryAfter>,
    now: SystemTime,
) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        408 | 425 | 429 | 500..=599 => Outcome::Retry {
            after: retry_after.map(|retry_after| delay(retry_after, now)),
        },
        410 => Outcome::Dead {
            reason: DeadReason::Gone,
        },
        _ => Outcome::Dead {
            reason: DeadReason::Rejected,
        },
    }
}

/// A date already past means "now": the receiver is ready, so no extra wait.
fn delay(retry_after: &RetryAfter, now: SystemTime) -> Duration {
    match retry_after {
        RetryAfter::Delay(delay) => *delay,
        RetryAfter::At(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;
    use std::net::{IpAddr, Ipv4Addr};

    fn response(status: u16, retry_after: Option<RetryAfter>) -> Result<Response, SendError> {
        Ok(Response {
            status: StatusCode::from_u16(status).expect("valid status code"),
            retry_after,
            body: Bytes::new(),
        })
    }

    #[test]
    fn classify_covers_every_kind_of_result() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let retry = |after| Outcome::Retry { after };
        let dead = |reason| Outcome::Dead { reason };
        let secs = Duration::from_secs;
        let cases: Vec<(&str, Result<Response, SendError>, Outcome)> = vec![
            ("200", response(200, None), Outcome::Delivered),
            ("201", response(201, None), Outcome::Delivered),
            ("204", response(204, None), Outcome::Delivered),
            ("299", response(299, None), Outcome::Delivered),
            (
                "2xx ignores Retry-After",
                response(200, Some(RetryAfter::Delay(secs(9)))),
                Outcome::Delivered,
            ),
            ("101", response(101, None), dead(DeadReason::Rejected)),
            ("301", response(301, None), dead(DeadReason::Rejected)),
            ("302", response(302, None), dead(DeadReason::Rejected)),
            ("304", response(304, None), dead(DeadReason::Rejected)),
            ("308", response(308, None), dead(DeadReason::Rejected)),
            ("400", response(400, None), dead(DeadReason::Rejected)),
            ("401", response(401, None), dead(DeadReason::Rejected)),
            ("403", response(403, None), dead(DeadReason::Rejected)),
            ("404", response(404, None), dead(DeadReason::Rejected)),
            ("413", response(413, None), dead(DeadReason::Rejected)),
            ("422", response(422, None), dead(DeadReason::Rejected)),
            ("499", response(499, None), dead(DeadReason::Rejected)),
            ("410", response(410, None), dead(DeadReason::Gone)),
            (
                "410 ignores Retry-After",
                response(410, Some(RetryAfter::Delay(secs(9)))),
                dead(DeadReason::Gone),
            ),
            ("408", response(408, None), retry(None)),
            ("425", response(425, None), retry(None)),
            ("429", response(429, None), retry(None)),
            ("500", response(500, None), retry(None)),
            ("502", response(502, None), retry(None)),
            ("503", response(503, None), retry(None)),
            ("504", response(504, None), retry(None)),
            ("599", response(599, None), retry(None)),
            (
                "429 Retry-After seconds",
                response(429, Some(RetryAfter::Delay(secs(30)))),
                retry(Some(secs(30))),
            ),
            (
                "503 Retry-After date ahead",
                response(503, Some(RetryAfter::At(now + secs(120)))),
                retry(Some(secs(120))),
            ),
            (
                "503 Retry-After date past",
                response(503, Some(RetryAfter::At(now - secs(120)))),
                retry(Some(Duration::ZERO)),
            ),
            ("timeout", Err(SendError::Timeout), retry(None)),
            ("cut off by a stall", Err(SendError::Stalled), retry(None)),
            (
                "connect",
                Err(SendError::Connect("refused".into())),
                retry(None),
            ),
            (
                "tls",
                Err(SendError::Tls("bad certificate".into())),
                retry(None),
            ),
            ("other", Err(SendError::Other("reset".into())), retry(None)),
            (
                "blocked",
                Err(SendError::Blocked {
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                }),
                dead(DeadReason::BlockedDestination),
            ),
            (
                "invalid url",
                Err(SendError::InvalidUrl("no host".into())),
                dead(DeadReason::Rejected),
            ),
        ];
        for (name, result, expected) in cases {
            assert_eq!(classify(&result, now), expected, "{name}");
        }
    }

    #[test]
    fn dead_reasons_round_trip_through_their_names() {
        let names = [
            "exhausted",
            "rejected",
            "gone",
            "blocked_destination",
            "malformed",
            "too_large",
            "webhook_disabled",
            "redelivered",
        ];
        assert_eq!(names.len(), ALL_REASONS.len());
        for (reason, name) in ALL_REASONS.into_iter().zip(names) {
            assert_eq!(reason.as_str(), name);
            assert_eq!(reason.to_string(), name);
            assert_eq!(name.parse::<DeadReason>().ok(), Some(reason));
        }
        assert!("Rejected".parse::<DeadReason>().is_err());
        assert!("".parse::<DeadReason>().is_err());
    }
}
