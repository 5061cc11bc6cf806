//! Each webhook's last 100 attempts, kept in a file of its own as a ring of fixed-size slots.
//!
//! Why not in sled with the registry: the attempt log is written for every delivery, and sled
//! holds what it writes in memory on its way to disk. In the benchmark with a thousand active
//! webhooks, persisting the log through sled took about 60 of the daemon's ~90 MiB peak (heaptrack
//! put it in the rewritten values and sled's 512 KiB write buffers; with persisting switched off
//! the peak was ~30 MiB). Storing the log in chunks and in a compact binary form brought that to
//! ~52 MiB; the rest is sled's write path itself. A ring file needs none of it: appending is a
//! `pwrite` of the new slots and of the header, in place, and the data lives in the kernel's page
//! cache, not the daemon's heap.
//!
//! # Layout
//!
//! `DIR/<webhook id>`: a 16-byte header (`WHAL`, format 1, three zero bytes, then the number of
//! records ever appended as a u64 big-endian), then `ATTEMPTS_KEPT` slots of `SLOT_BYTES`. Record
//! `n` (counting from 0) lives in slot `n % ATTEMPTS_KEPT`: a u16 big-endian length, then the
//! record in the compact form of `store::record`. A record that would not fit (only a very long
//! error text can make it so) has its error cut at a character boundary and marked with `…`.
//!
//! Slots are written before the header that counts them, so a crash in between leaves the header
//! one persist behind: a reader may then see the newest slots' records in place of the oldest
//! ones, which is harmless for a diagnostic log. A slot that does not decode (torn by a crash of
//! the machine) is skipped on reading and overwritten in time. There is no fsync: the log is a
//! diagnostic, and a webhook change never waits for it.
//!
//! A webhook id reaches a path only if it looks like one (`wh_` and lowercase letters and
//! digits), so an id typed into `webhooks attempts` can never name a file elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{record, Attempt, NewAttempt, StoreError, ATTEMPTS_KEPT};

const MAGIC: [u8; 8] = *b"WHAL\x01\0\0\0";
const HEADER_BYTES: usize = 16;
/// Room for a record with an error text of about 200 bytes, enough for webhookd's own error
/// messages, hints included (the longest, an untrusted TLS issuer, is about 140); a log file is
/// then 25,616 bytes, and a longer error is cut. A dead letter's `x-webhookd-last-error` keeps
/// the whole text.
const SLOT_BYTES: usize = 256;
const RECORD_MAX: usize = SLOT_BYTES - 2;
const SLOTS: u64 = ATTEMPTS_KEPT as u64;

/// The directory of ring files.
#[derive(Debug)]
pub(super) struct AttemptLog {
    dir: PathBuf,
}

impl AttemptLog {
    pub(super) fn open(dir: PathBuf) -> Result<AttemptLog, StoreError> {
        fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        Ok(AttemptLog { dir })
    }

    /// The file of `webhook_id`, if the id is one webhookd could have made.
    fn path(&self, webhook_id: &str) -> Option<PathBuf> {
        let suffix = webhook_id.strip_prefix(super::webhook::ID_PREFIX)?;
        let plausible = !suffix.is_empty()
            && suffix.len() <= 64
            && suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        plausible.then(|| self.dir.join(webhook_id))
    }

    /// Appends what is pending (only the newest 100 count) to the webhook's ring.
    pub(super) fn append(&self, webhook_id: &str, pending: &Pending) -> Result<(), StoreError> {
        let Some(path) = self.path(webhook_id) else {
            return Ok(());
        };
        let entries = pending.entries();
        let new = &entries[entries.len().saturating_sub(ATTEMPTS_KEPT)..];
        if new.is_empty() {
            return Ok(());
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| io_error(&path, source))?;
        let mut header = [0u8; HEADER_BYTES];
        let appended = match file.read_exact_at(&mut header, 0) {
            Ok(()) => parse_header(&header).unwrap_or(0),
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => 0,
            Err(source) => return Err(io_error(&path, source)),
        };
        let first_slot = (appended % SLOTS) as usize;
        let mut slots = vec![0u8; new.len() * SLOT_BYTES];
        for (entry, slot) in new.iter().zip(slots.chunks_exact_mut(SLOT_BYTES)) {
            slot[..entry.len()].copy_from_slice(entry);
        }
        // The run of slots wraps at most once.
        let before_wrap = (ATTEMPTS_KEPT - first_slot).min(new.len()) * SLOT_BYTES;
        let (tail, head) = slots.split_at(before_wrap);
        write_at(&file, &path, tail, slot_offset(first_slot))?;
        write_at(&file, &path, head, slot_offset(0))?;
        let mut header = [0u8; HEADER_BYTES];
        header[..8].copy_from_slice(&MAGIC);
        header[8..].copy_from_slice(&(appended + new.len() as u64).to_be_bytes());
        write_at(&file, &path, &header, 0)
    }

    /// Up to `limit` of the webhook's stored attempts, newest first.
    pub(super) fn newest(
        &self,
        webhook_id: &str,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let Some(path) = self.path(webhook_id) else {
            return Ok(Vec::new());
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_error(&path, source)),
        };
        let Some(appended) = bytes.get(..HEADER_BYTES).and_then(parse_header) else {
            return Ok(Vec::new());
        };
        let stored = appended.min(SLOTS);
        Ok((appended - stored..appended)
            .rev()
            .filter_map(|n| decode_slot(&bytes, (n % SLOTS) as usize))
            .take(limit)
            .collect())
    }

    /// Forgets the webhook's log.
    pub(super) fn remove(&self, webhook_id: &str) -> Result<(), StoreError> {
        let Some(path) = self.path(webhook_id) else {
            return Ok(());
        };
        match fs::remove_file(&path) {
            Err(error) if error.kind() != ErrorKind::NotFound => Err(io_error(&path, error)),
            _ => Ok(()),
        }
    }
}

fn slot_offset(slot: usize) -> u64 {
    (HEADER_BYTES + slot * SLOT_BYTES) as u64
}

fn write_at(file: &File, path: &Path, bytes: &[u8], offset: u64) -> Result<(), StoreError> {
    if bytes.is_empty() {
        return Ok(());
    }
    file.write_all_at(bytes, offset)
        .map_err(|source| io_error(path, source))
}

/// The number of records ever appended, if `header` is one of ours.
fn parse_header(header: &[u8]) -> Option<u64> {
    let count = header.strip_prefix(&MAGIC)?;
    Some(u64::from_be_bytes(count.try_into().ok()?))
}

/// Attempts recorded since the last persist, encoded as they will be stored: each entry a u16
/// big-endian length and the record, as in a slot. Encoded at once because a decoded [`Attempt`]
/// takes about 280 bytes of heap (four strings) and its record about 45: at 18,000 deliveries a
/// second the difference is megabytes of resident memory.
#[derive(Debug, Default)]
pub(super) struct Pending {
    bytes: Vec<u8>,
    count: usize,
}

impl Pending {
    pub(super) fn push(&mut self, attempt: &NewAttempt<'_>) {
        if encode_entry(attempt, &mut self.bytes) {
            self.count += 1;
        }
        // Only the newest 100 are ever stored; dropping the rest in bulk keeps this amortised.
        if self.count == 2 * ATTEMPTS_KEPT {
            let keep_from = entry_ranges(&self.bytes)[ATTEMPTS_KEPT].start;
            self.bytes.drain(..keep_from);
            self.count = ATTEMPTS_KEPT;
        }
    }

    /// Pending attempts from their encoding ([`Pending::as_bytes`]), another instance's; `None`
    /// unless every entry is a record that decodes and fits a slot.
    pub(super) fn from_bytes(bytes: Vec<u8>) -> Option<Pending> {
        let ranges = entry_ranges(&bytes);
        let whole = ranges.last().map_or(0, |last| last.end) == bytes.len();
        let valid = ranges.iter().all(|range| {
            range.len() - 2 <= RECORD_MAX
                && bytes
                    .get(range.start + 2..range.end)
                    .is_some_and(|record| record::decode(record).is_ok())
        });
        (whole && valid).then_some(Pending {
            count: ranges.len(),
            bytes,
        })
    }

    /// The encoded entries, oldest first, as [`Pending::from_bytes`] reads them.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Each entry (length prefix and record), oldest first.
    fn entries(&self) -> Vec<&[u8]> {
        entry_ranges(&self.bytes)
            .into_iter()
            .map(|range| &self.bytes[range])
            .collect()
    }

    /// Up to `limit` of the pending attempts, newest first.
    pub(super) fn newest(&self, limit: usize) -> Vec<Attempt> {
        self.entries()
            .iter()
            .rev()
            .filter_map(|entry| record::decode(&entry[2..]).ok())
            .take(limit)
            .collect()
    }
}

/// Where each entry of `bytes` is, oldest first.
fn entry_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(&[a, b]) = bytes.get(at..at + 2) {
        let end = at + 2 + usize::from(u16::from_be_bytes([a, b]));
        ranges.push(at..end);
        at = end;
    }
    ranges
}

/// Appends `attempt` to `out` as an entry that fits a slot, cutting its error text to fit;
/// `false` (and nothing appended) if even that cannot make it fit.
fn encode_entry(attempt: &NewAttempt<'_>, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    record::encode(attempt, out);
    let mut length = out.len() - start - 2;
    if length > RECORD_MAX {
        out.truncate(start + 2);
        let error = attempt.error.unwrap_or_default();
        // Everything but the error text fits (the other fields are short by construction); the
        // error keeps what is left, less the few bytes its longer length prefix and `…` take.
        let room = RECORD_MAX.saturating_sub(length - error.len() + 8);
        let mut cut = room.min(error.len());
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        let shortened = format!("{}…", &error[..cut]);
        let shortened = NewAttempt {
            error: Some(&shortened),
            ..*attempt
        };
        record::encode(&shortened, out);
        length = out.len() - start - 2;
    }
    if length > RECORD_MAX {
        // Only a malformed attempt (an outcome or id of a hundred bytes) gets here: leave it out
        // rather than store half a record.
        out.truncate(start);
        return false;
    }
    out[start..start + 2].copy_from_slice(&(length as u16).to_be_bytes());
    true
}

/// The record in slot `slot` of a whole log file, if it holds one that decodes.
fn decode_slot(file: &[u8], slot: usize) -> Option<Attempt> {
    let start = slot_offset(slot) as usize;
    let bytes = file.get(start..start + SLOT_BYTES)?;
    let length = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    if length == 0 {
        return None;
    }
    record::decode(bytes.get(2..2 + length)?).ok()
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::AttemptLog {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt {
            at: "2026-11-29T21:00:00.123Z".to_owned(),
            delivery_id: "5f0c3a52-6d8e-5b1a-9c7e-2a4b6c8d0e1f".to_owned(),
            attempt: n,
            status: Some(503),
            error: None,
            latency_ms: 12,
            outcome: "retry in 5s".to_owned(),
        }
    }

    fn numbers(attempts: &[Attempt]) -> Vec<u32> {
        attempts.iter().map(|a| a.attempt).collect()
    }

    fn pending(attempts: impl IntoIterator<Item = Attempt>) -> Pending {
        let mut pending = Pending::default();
        for attempt in attempts {
            pending.push(&attempt.as_new());
        }
        pending
    }

    fn log() -> (tempfile::TempDir, AttemptLog) {
        let dir = tempfile::tempdir().unwrap();
        let log = AttemptLog::open(dir.path().join("attempts")).unwrap();
        (dir, log)
    }

    const ID: &str = "wh_abc123";

    #[test]
    fn the_ring_keeps_the_newest_100_newest_first_across_wraps() {
        let (_dir, log) = log();
        assert!(log.newest(ID, 10).unwrap().is_empty(), "no file yet");
        // 37 does not divide 100, so appends wrap in the middle of a run.
        for run in (1..=250).collect::<Vec<u32>>().chunks(37) {
            log.append(ID, &pending(run.iter().map(|&n| attempt(n))))
                .unwrap();
        }
        assert_eq!(
            numbers(&log.newest(ID, usize::MAX).unwrap()),
            (151..=250).rev().collect::<Vec<u32>>()
        );
        assert_eq!(numbers(&log.newest(ID, 3).unwrap()), [250, 249, 248]);
        assert_eq!(log.newest(ID, 1).unwrap(), [attempt(250)]);
        let size = fs::metadata(log.path(ID).unwrap()).unwrap().len();
        assert_eq!(
            size,
            (HEADER_BYTES + ATTEMPTS_KEPT * SLOT_BYTES) as u64,
            "the file never grows past its slots"
        );
    }

    #[test]
    fn more_than_100_at_once_keeps_the_newest() {
        let (_dir, log) = log();
        log.append(ID, &pending([attempt(1)])).unwrap();
        log.append(ID, &pending((2..=160).map(attempt))).unwrap();
        assert_eq!(
            numbers(&log.newest(ID, usize::MAX).unwrap()),
            (61..=160).rev().collect::<Vec<u32>>()
        );
    }

    #[test]
    fn a_long_error_is_cut_to_fit_its_slot_at_a_character_boundary() {
        let (_dir, log) = log();
        let long = Attempt {
            error: Some("é".repeat(300)),
            ..attempt(1)
        };
        log.append(ID, &pending([long.clone(), attempt(2)]))
            .unwrap();
        let newest = log.newest(ID, 10).unwrap();
        assert_eq!(numbers(&newest), [2, 1], "the neighbour is intact");
        let error = newest[1].error.as_deref().unwrap();
        assert!(error.ends_with('…'), "{error}");
        assert!(error.len() > 80, "keeps what fits: {} bytes", error.len());
        assert!(long.error.unwrap().starts_with(error.trim_end_matches('…')));
    }

    #[test]
    fn a_torn_slot_is_skipped_and_a_foreign_file_is_started_over() {
        let (_dir, log) = log();
        log.append(ID, &pending([attempt(1), attempt(2), attempt(3)]))
            .unwrap();
        let path = log.path(ID).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 8], slot_offset(1) + 2).unwrap();
        assert_eq!(numbers(&log.newest(ID, 10).unwrap()), [3, 1]);

        fs::write(&path, b"not a log").unwrap();
        assert!(log.newest(ID, 10).unwrap().is_empty());
        log.append(ID, &pending([attempt(7)])).unwrap();
        assert_eq!(numbers(&log.newest(ID, 10).unwrap()), [7]);
    }

    #[test]
    fn pending_keeps_at_least_the_newest_100_and_reads_newest_first() {
        let pending = pending((1..=250).map(attempt));
        assert!(pending.count >= ATTEMPTS_KEPT && pending.count < 2 * ATTEMPTS_KEPT);
        let newest = pending.newest(usize::MAX);
        assert_eq!(
            numbers(&newest[..ATTEMPTS_KEPT]),
            (151..=250).rev().collect::<Vec<u32>>()
        );
        assert_eq!(pending.newest(2), [attempt(250), attempt(249)]);
    }

    #[test]
    fn only_ids_webhookd_makes_reach_a_path() {
        let (dir, log) = log();
        for id in ["../escape", "wh_", "wh_../x", "wh_A", "wh_a/b", "", "x_abc"] {
            assert!(log.path(id).is_none(), "{id:?}");
            log.append(id, &pending([attempt(1)])).unwrap();
            assert!(log.newest(id, 10).unwrap().is_empty());
            log.remove(id).unwrap();
        }
        assert_eq!(
            fs::read_dir(dir.path().join("attempts")).unwrap().count(),
            0
        );
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn remove_forgets_the_log_and_tolerates_a_missing_one() {
        let (_dir, log) = log();
        log.remove(ID).unwrap();
        log.append(ID, &pending([attempt(1)])).unwrap();
        log.remove(ID).unwrap();
        assert!(log.newest(ID, 10).unwrap().is_empty());
    }
}
