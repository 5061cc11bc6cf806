//! The stored form of one attempt record: a compact binary encoding rather than JSON.
//!
//! Why: every delivery's attempt is kept encoded in memory until the next persist and then in a
//! fixed-size slot of its webhook's ring file (`store::attempt_log`), so a record's size is both
//! resident memory at thousands of deliveries a second and the room left for an error text in a
//! slot. As JSON a typical record took 161 bytes, mostly field names, punctuation and two long
//! strings; here it takes about 40.
//!
//! The layout, after a format byte (`1`), field by field in declaration order:
//!
//! - strings: a LEB128 length, then the UTF-8 bytes;
//! - integers: LEB128;
//! - `at`: `1` and the milliseconds since the Unix epoch, which read back as RFC 3339 with
//!   milliseconds, UTC (`0` and a string is also read: the layout's other form, which webhookd
//!   does not write);
//! - `delivery_id`: `1` and the 16 bytes of the UUID, when the string is exactly its lowercase
//!   hyphenated form (every delivery id webhookd makes); else `0` and the string;
//! - `status`: LEB128 of `status + 1`, `0` for none;
//! - `error`: `0` for none, else `1` and the string.
//!
//! A record is encoded from the typed [`NewAttempt`] the daemon hands over, so the delivery path
//! never formats a time only to parse it back here. It decodes to the [`Attempt`] shown to
//! operators: the delivery id exactly as given, the time as the instant's RFC 3339 text. The
//! format byte lets a later layout be told apart. Decoding checks every length against the bytes
//! present, so a damaged record is an error, never a panic or a huge allocation.

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::{Attempt, NewAttempt, StoreError};

const FORMAT: u8 = 1;

/// The last millisecond RFC 3339 can show, 9999-12-31T23:59:59.999Z.
const MAX_MILLIS: u64 = 253_402_300_799_999;

/// Appends `attempt`, encoded, to `out`. A clock set before 1970 records the epoch, and one past
/// the year 9999 that year's last millisecond, so every record decodes.
pub(super) fn encode(attempt: &NewAttempt<'_>, out: &mut Vec<u8>) {
    let NewAttempt {
        at,
        delivery_id,
        attempt,
        status,
        error,
        latency_ms,
        outcome,
    } = *attempt;
    out.push(FORMAT);
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    out.push(1);
    put_uint(out, millis.min(MAX_MILLIS));
    match canonical_uuid(delivery_id) {
        Some(uuid) => {
            out.push(1);
            out.extend_from_slice(uuid.as_bytes());
        }
        None => {
            out.push(0);
            put_str(out, delivery_id);
        }
    }
    put_uint(out, u64::from(attempt));
    put_uint(out, status.map_or(0, |status| u64::from(status) + 1));
    match error {
        None => out.push(0),
        Some(error) => {
            out.push(1);
            put_str(out, error);
        }
    }
    put_uint(out, latency_ms);
    put_str(out, outcome);
}

pub(super) fn decode(bytes: &[u8]) -> Result<Attempt, StoreError> {
    let mut reader = Reader { bytes };
    let format = reader.byte()?;
    if format != FORMAT {
        return Err(corrupt(format!("attempt record format {format}")));
    }
    let attempt = Attempt {
        at: match reader.byte()? {
            0 => reader.string()?,
            1 => format_millis(reader.uint()?)?,
            other => return Err(corrupt(format!("attempt time tag {other}"))),
        },
        delivery_id: match reader.byte()? {
            0 => reader.string()?,
            1 => {
                let bytes = reader.take(16)?.try_into().map_err(|_| corrupt("uuid"))?;
                Uuid::from_bytes(bytes).hyphenated().to_string()
            }
            other => return Err(corrupt(format!("attempt delivery id tag {other}"))),
        },
        attempt: reader.uint_below(u64::from(u32::MAX) + 1)? as u32,
        status: match reader.uint_below(u64::from(u16::MAX) + 2)? {
            0 => None,
            status => Some((status - 1) as u16),
        },
        error: match reader.byte()? {
            0 => None,
            1 => Some(reader.string()?),
            other => return Err(corrupt(format!("attempt error tag {other}"))),
        },
        latency_ms: reader.uint()?,
        outcome: reader.string()?,
    };
    if !reader.bytes.is_empty() {
        return Err(corrupt("bytes after an attempt record"));
    }
    Ok(attempt)
}

/// The time as webhookd writes it; an error past what RFC 3339 can show (the year 9999).
fn format_millis(millis: u64) -> Result<String, StoreError> {
    let out_of_range = || corrupt(format!("attempt time {millis} ms out of range"));
    let instant = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .ok_or_else(out_of_range)?;
    let mut text = String::with_capacity(24);
    write!(text, "{}", humantime::format_rfc3339_millis(instant)).map_err(|_| out_of_range())?;
    Ok(text)
}

/// `id` as a UUID, if its lowercase hyphenated form is `id` exactly.
fn canonical_uuid(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    (uuid.hyphenated().encode_lower(&mut Uuid::encode_buffer()) == id).then_some(uuid)
}

fn put_uint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    put_uint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt(message.into())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| corrupt("attempt record cut short"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn uint(&mut self) -> Result<u64, StoreError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may carry only the top bit of a u64.
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("attempt record integer over 64 bits"))
    }

    /// An integer below `bound`.
    fn uint_below(&mut self, bound: u64) -> Result<u64, StoreError> {
        let value = self.uint()?;
        if value < bound {
            Ok(value)
        } else {
            Err(corrupt(format!(
                "attempt record integer {value} out of range"
            )))
        }
    }

    fn take(&mut self, length: usize) -> Result<&[u8], StoreError> {
        if length > self.bytes.len() {
            return Err(corrupt("attempt record cut short"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let length = usize::try_from(self.uint()?).unwrap_or(usize::MAX);
        let text = self.take(length)?.to_vec();
        String::from_utf8(text).map_err(|_| corrupt("attempt record string not UTF-8"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encoded(attempt: &Attempt) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&attempt.as_new(), &mut out);
        out
    }

    fn typical() -> Attempt {
        Attempt {
            at: "2026-11-29T20:47:24.123Z".to_owned(),
            delivery_id: "a37c6d31-c3a8-523a-b839-368c1a75aa22".to_owned(),
            attempt: 1,
            status: Some(200),
            error: None,
            latency_ms: 3,
            outcome: "delivered".to_owned(),
        }
    }

    #[test]
    fn round_trips_typical_and_extreme_values() {
        let extremes = [
            typical(),
            Attempt {
                at: "1970-01-01T00:00:00.000Z".to_owned(),
                delivery_id: "ü".repeat(200),
                attempt: u32::MAX,
                status: Some(u16::MAX),
                error: Some("connect: connection refused".to_owned()),
                latency_ms: u64::MAX,
                outcome: "dead:gone".to_owned(),
            },
            Attempt {
                at: "9999-12-31T23:59:59.999Z".to_owned(),
                attempt: 0,
                status: Some(0),
                error: Some(String::new()),
                latency_ms: 0,
                ..typical()
            },
            Attempt {
                status: None,
                latency_ms: 128,
                ..typical()
            },
            // Ids that only look like what webhookd makes are kept as strings.
            Attempt {
                delivery_id: "A37C6D31-C3A8-523A-B839-368C1A75AA22".to_owned(),
                ..typical()
            },
            Attempt {
                delivery_id: "a37c6d31c3a8523ab839368c1a75aa22".to_owned(),
                ..typical()
            },
            Attempt {
                delivery_id: String::new(),
                ..typical()
            },
        ];
        for attempt in extremes {
            assert_eq!(decode(&encoded(&attempt)).unwrap(), attempt);
        }
    }

    #[test]
    fn a_clock_outside_what_rfc_3339_shows_records_the_nearest_instant_it_does() {
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_millis(1);
        let past_9999 = SystemTime::UNIX_EPOCH + Duration::from_millis(MAX_MILLIS + 1);
        for (at, shown) in [
            (before_1970, "1970-01-01T00:00:00.000Z"),
            (past_9999, "9999-12-31T23:59:59.999Z"),
        ] {
            let mut out = Vec::new();
            let attempt = typical();
            encode(
                &NewAttempt {
                    at,
                    ..attempt.as_new()
                },
                &mut out,
            );
            assert_eq!(decode(&out).unwrap().at, shown);
        }
    }

    #[test]
    fn a_time_stored_as_a_string_reads_back_as_that_string() {
        // The layout's other form for `at`: tag 0 and the text, as written before this encoder.
        let mut record = vec![FORMAT, 0];
        put_str(&mut record, "2026-11-29T20:47:24Z");
        let mut rest = encoded(&typical());
        // After the format byte, the tag and the time's LEB128 bytes, the last of which is < 0x80.
        let after_time = 2 + rest[2..].iter().position(|&b| b < 0x80).unwrap() + 1;
        record.extend_from_slice(&rest.split_off(after_time));
        let attempt = decode(&record).unwrap();
        assert_eq!(
            attempt,
            Attempt {
                at: "2026-11-29T20:47:24Z".to_owned(),
                ..typical()
            }
        );
    }

    #[test]
    fn a_typical_record_takes_about_a_quarter_of_its_json() {
        let json = serde_json::to_vec(&typical()).unwrap();
        let binary = encoded(&typical());
        assert_eq!((json.len(), binary.len()), (161, 40));
    }

    #[test]
    fn the_delivery_ids_webhookd_makes_take_the_short_form() {
        let id = crate::delivery::sign::delivery_id("evt-1", "wh_1");
        assert!(canonical_uuid(&id).is_some(), "{id}");
    }

    #[test]
    fn damaged_records_are_errors() {
        let whole = encoded(&Attempt {
            error: Some("timeout".to_owned()),
            ..typical()
        });
        // Every proper prefix is cut short somewhere.
        for end in 0..whole.len() {
            assert!(decode(&whole[..end]).is_err(), "prefix of {end} bytes");
        }
        let mut trailing = whole.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let mut other_format = whole.clone();
        other_format[0] = b'{';
        assert!(decode(&other_format).is_err());
        assert!(decode(br#"{"at":"x"}"#).is_err());
        // A length far beyond the record, and an integer that never ends.
        assert!(decode(&[FORMAT, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode(&[&[FORMAT, 0][..], &[0][..], &[0xff; 11][..]].concat()).is_err());
        // Not UTF-8.
        assert!(decode(&[FORMAT, 0, 1, 0xff]).is_err());
        // Unknown tags.
        assert!(decode(&[FORMAT, 2]).is_err());
        assert!(decode(&[FORMAT, 0, 0, 2]).is_err());
    }

    #[test]
    fn out_of_range_numbers_are_errors() {
        let mut record = vec![FORMAT, 0, 0, 0, 0];
        put_uint(&mut record, u64::from(u32::MAX) + 1);
        assert!(decode(&record).is_err());
        let mut record = vec![FORMAT, 0, 0, 0, 0, 0];
        put_uint(&mut record, u64::from(u16::MAX) + 2);
        assert!(decode(&record).is_err());
        // Times past the year 9999, and past what a SystemTime holds.
        for millis in [253_402_300_800_000, u64::MAX] {
            let mut record = vec![FORMAT, 1];
            put_uint(&mut record, millis);
            record.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
            assert!(decode(&record).is_err(), "{millis}");
        }
        let mut record = vec![FORMAT, 1];
        put_uint(&mut record, 253_402_300_799_999);
        record.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&record).unwrap().at, "9999-12-31T23:59:59.999Z");
    }
}
