//! When one message passed each point of its way through webhookd, so `/metrics` shows where a
//! delivery's time goes, not only how long it took.
//!
//! The way has six stages, each ending where the next begins (the names are
//! [`crate::metrics::STAGES`]):
//!
//! | stage | from | to |
//! | --- | --- | --- |
//! | `dispatch` | the consumer handed the delivery over | its task runs |
//! | `decode` | its task runs | headers and envelope read |
//! | `lookup` | envelope read | its webhooks found |
//! | `prepare` | webhooks found | the request handed to the HTTP client (signing, admission) |
//! | `response` | request handed over | the receiver's answer read |
//! | `settle` | answer read | the ack sent (after a retry job or dead letter is confirmed) |
//!
//! Each stage is the difference of two consecutive instants, so a message's stages add up to its
//! total exactly. Only messages that made exactly one request and were acked are timed: with
//! several requests the middle stages overlap, and a message handed back has not finished its
//! way. That is every event of an account with one matching webhook, the common case.
//!
//! The marks are set from the message's task and its attempt, which share them by reference
//! across `await`s, hence the `OnceLock`s: each mark is set once, at its first passing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The instants that begin each stage, in [`crate::metrics::STAGES`] order; the ack's instant
/// ends the last.
pub(super) type Marks = [Instant; 6];

/// One message's marks as it goes.
pub(super) struct Timeline {
    received: Instant,
    started: Instant,
    decoded: OnceLock<Instant>,
    looked_up: OnceLock<Instant>,
    sent: OnceLock<Instant>,
    answered: OnceLock<Instant>,
    requests: AtomicU32,
}

impl Timeline {
    /// The timeline of a message the consumer handed over at `received`, whose task runs now.
    pub(super) fn new(received: Instant) -> Timeline {
        Timeline {
            received,
            started: Instant::now(),
            decoded: OnceLock::new(),
            looked_up: OnceLock::new(),
            sent: OnceLock::new(),
            answered: OnceLock::new(),
            requests: AtomicU32::new(0),
        }
    }

    pub(super) fn decoded(&self) {
        mark(&self.decoded);
    }

    pub(super) fn looked_up(&self) {
        mark(&self.looked_up);
    }

    /// A request is handed to the HTTP client.
    pub(super) fn sent(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        mark(&self.sent);
    }

    /// A request's answer (or its failure) is in.
    pub(super) fn answered(&self) {
        mark(&self.answered);
    }

    /// Every mark but the ack's, if the message made exactly one request.
    pub(super) fn marks(&self) -> Option<Marks> {
        if self.requests.load(Ordering::Relaxed) != 1 {
            return None;
        }
        Some([
            self.received,
            self.started,
            *self.decoded.get()?,
            *self.looked_up.get()?,
            *self.sent.get()?,
            *self.answered.get()?,
        ])
    }
}

fn mark(at: &OnceLock<Instant>) {
    let _ = at.set(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_message_with_one_request_has_marks_and_they_are_in_order() {
        let timeline = Timeline::new(Instant::now());
        timeline.decoded();
        timeline.looked_up();
        assert!(timeline.marks().is_none(), "no request yet");
        timeline.sent();
        timeline.answered();
        let marks = timeline.marks().expect("one request");
        assert!(marks.windows(2).all(|pair| pair[0] <= pair[1]), "{marks:?}");
        timeline.sent();
        assert!(timeline.marks().is_none(), "two requests overlap");
    }
}
