//! What travels with a message besides its body: webhookd's own `x-webhookd-*` headers.
//!
//! A retry job is one event for one webhook, waiting in a delay queue; a dead letter is the same
//! plus why it died. Both carry their state in AMQP headers written by webhookd itself, never in
//! the broker's `x-death` (RabbitMQ 3.13+ ignores a republished one, and its count is per queue,
//! not per webhook). Keeping the encoding in one module keeps the consumer, the DLQ tools and the
//! replay path agreeing on one vocabulary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// Header names, public so tests and `dlq` filters name them once.
pub mod header {
    pub const WEBHOOK_ID: &str = "x-webhookd-webhook-id";
    pub const ACCOUNT_ID: &str = "x-webhookd-account-id";
    pub const EVENT: &str = "x-webhookd-event";
    pub const EVENT_ID: &str = "x-webhookd-event-id";
    pub const DELIVERY_ID: &str = "x-webhookd-delivery-id";
    pub const URL: &str = "x-webhookd-url";
    pub const ATTEMPTS: &str = "x-webhookd-attempts";
    pub const FIRST_ATTEMPT_AT: &str = "x-webhookd-first-attempt-at";
    pub const LAST_STATUS: &str = "x-webhookd-last-status";
    pub const LAST_ERROR: &str = "x-webhookd-last-error";
    pub const REASON: &str = "x-webhookd-reason";
    pub const DEAD_AT: &str = "x-webhookd-dead-at";
    pub const NOT_BEFORE: &str = "x-webhookd-not-before";
}

/// A retry job's state: which webhook, how many attempts so far, since when.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub webhook_id: String,
    pub event_id: String,
    /// Attempts already made (0 for a replayed dead letter: it starts a fresh schedule).
    pub attempts: u32,
    /// Unix milliseconds of the first attempt of the current schedule.
    pub first_attempt_at_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Unix milliseconds of the send slot a rate-limited webhook reserved for this job: it is
    /// sent once that time has come, without taking another slot.
    pub not_before_ms: Option<u64>,
}

/// Longest value of any `x-webhookd-*` header webhookd reads, in bytes. Webhookd writes far
/// shorter ones (ids, counts, a one-line error cut to [`MAX_ERROR_TEXT`]); anything longer was
/// not written by webhookd, and a message carrying it is parked as malformed.
pub const MAX_HEADER_VALUE: usize = 4096;

/// Longest error text a job carries in `x-webhookd-last-error`, in bytes.
pub const MAX_ERROR_TEXT: usize = 1024;

/// A message whose `x-webhookd-*` headers webhookd would never have written.
#[derive(Debug, thiserror::Error)]
#[error("header `{name}` is {len} bytes, over {MAX_HEADER_VALUE}")]
pub struct HeaderTooLong {
    name: String,
    len: usize,
}

impl Job {
    /// Reads a job from a message's headers; `Ok(None)` for a plain event from a publisher.
    pub fn from_headers(headers: Option<&FieldTable>) -> Result<Option<Job>, HeaderTooLong> {
        let Some(headers) = headers else {
            return Ok(None);
        };
        for (name, value) in headers.inner() {
            let len = match value {
                AMQPValue::LongString(s) => s.as_bytes().len(),
                AMQPValue::ShortString(s) => s.as_str().len(),
                _ => 0,
            };
            if len > MAX_HEADER_VALUE && name.as_str().starts_with("x-webhookd-") {
                return Err(HeaderTooLong {
                    name: name.as_str().to_owned(),
                    len,
                });
            }
        }
        let Some(webhook_id) = get_str(headers, header::WEBHOOK_ID) else {
            return Ok(None);
        };
        Ok(Some(Job {
            webhook_id,
            event_id: get_str(headers, header::EVENT_ID).unwrap_or_default(),
            attempts: get_u64(headers, header::ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            first_attempt_at_ms: get_u64(headers, header::FIRST_ATTEMPT_AT).unwrap_or(0),
            last_status: get_u64(headers, header::LAST_STATUS).and_then(|s| u16::try_from(s).ok()),
            last_error: get_str(headers, header::LAST_ERROR),
            not_before_ms: get_u64(headers, header::NOT_BEFORE),
        }))
    }

    /// The properties of this job's message in a delay queue, named by its delivery id.
    pub fn properties(&self, delivery_id: &str) -> BasicProperties {
        let mut headers = FieldTable::default();
        self.write(&mut headers);
        BasicProperties::default()
            .with_message_id(ShortString::from(delivery_id))
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers)
    }

    /// Writes the job's fields into `headers`.
    pub fn write(&self, headers: &mut FieldTable) {
        put_str(headers, header::WEBHOOK_ID, &self.webhook_id);
        put_str(headers, header::EVENT_ID, &self.event_id);
        put_u64(headers, header::ATTEMPTS, u64::from(self.attempts));
        put_u64(headers, header::FIRST_ATTEMPT_AT, self.first_attempt_at_ms);
        if let Some(status) = self.last_status {
            put_u64(headers, header::LAST_STATUS, u64::from(status));
        }
        if let Some(error) = &self.last_error {
            put_str(headers, header::LAST_ERROR, truncate(error, MAX_ERROR_TEXT));
        }
        if let Some(not_before) = self.not_before_ms {
            put_u64(headers, header::NOT_BEFORE, not_before);
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Time since a first attempt made at `first_attempt_at_ms`; zero if the clock went backwards.
pub fn elapsed_since(first_attempt_at_ms: u64, now: SystemTime) -> Duration {
    Duration::from_millis(unix_ms(now).saturating_sub(first_attempt_at_ms))
}

/// A string header, accepting the AMQP string types and integers (published by other tools).
pub fn get_str(headers: &FieldTable, key: &str) -> Option<String> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An unsigned integer header, accepting every AMQP integer width and digit strings.
pub fn get_u64(headers: &FieldTable, key: &str) -> Option<u64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

pub fn put_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

pub fn put_u64(headers: &mut FieldTable, key: &str, value: u64) {
    // AMQP 0-9-1 as RabbitMQ speaks it has no unsigned 64-bit field; i64 holds every value we
    // write (milliseconds since 1970, attempt counts).
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_round_trips_through_headers() {
        let job = Job {
            webhook_id: "wh_1".into(),
            event_id: "ev-1".into(),
            attempts: 3,
            first_attempt_at_ms: 1_700_000_000_123,
            last_status: Some(503),
            last_error: Some("timed out".into()),
            not_before_ms: Some(1_700_000_000_500),
        };
        let mut headers = FieldTable::default();
        job.write(&mut headers);
        assert_eq!(Job::from_headers(Some(&headers)).ok(), Some(Some(job)));
    }

    #[test]
    fn an_overlong_webhookd_header_is_refused_and_a_foreign_one_ignored() {
        let mut headers = FieldTable::default();
        put_str(&mut headers, header::WEBHOOK_ID, "wh_1");
        put_str(&mut headers, "x-publisher-trace", &"t".repeat(40_000));
        assert!(Job::from_headers(Some(&headers)).is_ok());
        put_str(
            &mut headers,
            header::EVENT,
            &"e".repeat(MAX_HEADER_VALUE + 1),
        );
        let error = Job::from_headers(Some(&headers)).expect_err("too long");
        assert!(error.to_string().contains(header::EVENT), "{error}");
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let job = Job {
            webhook_id: "wh_1".into(),
            event_id: "ev".into(),
            attempts: 1,
            first_attempt_at_ms: 1,
            last_status: None,
            last_error: Some("é".repeat(MAX_ERROR_TEXT)),
            not_before_ms: None,
        };
        let mut headers = FieldTable::default();
        job.write(&mut headers);
        let written = get_str(&headers, header::LAST_ERROR).expect("an error");
        assert_eq!(written.len(), MAX_ERROR_TEXT);
        assert!(Job::from_headers(Some(&headers)).is_ok());
    }

    #[test]
    fn a_retry_job_is_named_by_its_delivery_and_carries_its_state() {
        let job = Job {
            webhook_id: "wh_1".into(),
            event_id: "ev-1".into(),
            attempts: 2,
            first_attempt_at_ms: 7,
            last_status: Some(500),
            last_error: None,
            not_before_ms: None,
        };
        let properties = job.properties("d-1");
        assert_eq!(
            properties.message_id().as_ref().map(|id| id.as_str()),
            Some("d-1")
        );
        assert_eq!(
            Job::from_headers(properties.headers().as_ref()).ok(),
            Some(Some(job))
        );
    }

    #[test]
    fn a_message_without_a_webhook_header_is_not_a_job() {
        let mut headers = FieldTable::default();
        put_str(&mut headers, header::EVENT, "message_created");
        assert_eq!(Job::from_headers(Some(&headers)).ok(), Some(None));
        assert_eq!(Job::from_headers(None).ok(), Some(None));
    }

    #[test]
    fn integer_headers_accept_other_widths_and_digit_strings() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), AMQPValue::LongInt(7));
        headers.insert("b".into(), AMQPValue::ShortUInt(8));
        put_str(&mut headers, "c", "9");
        headers.insert("d".into(), AMQPValue::LongLongInt(-1));
        assert_eq!(get_u64(&headers, "a"), Some(7));
        assert_eq!(get_u64(&headers, "b"), Some(8));
        assert_eq!(get_u64(&headers, "c"), Some(9));
        assert_eq!(get_u64(&headers, "d"), None);
    }

    #[test]
    fn elapsed_saturates_when_the_clock_goes_back() {
        assert_eq!(elapsed_since(u64::MAX, SystemTime::now()), Duration::ZERO);
    }
}
