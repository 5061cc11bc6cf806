//! Acknowledgements, coalesced.
//!
//! One `basic.ack` per message costs the broker about as much as delivering it: a bare consumer
//! drains a classic queue about four times faster acking with `multiple=true` than acking one by
//! one. So message tasks do not ack; they report their verdict to one acker per session, which
//! acks the contiguous prefix of finished tags with a single `multiple=true` ack.
//!
//! The rule that keeps this safe: an ack with `multiple=true` up to tag T acks every unacked
//! message at or below T, so it is sent only once every tag at or below T has been reported.
//! A message still in flight (a receiver that is slow, a retry job not yet confirmed) therefore
//! holds the prefix back — and with it the acks of everything after it, which would fill the
//! prefetch window and stall the consumer. So a finished message waits at most [`STRAGGLE`] for
//! the prefix to reach it, then is acked alone (`multiple=false`), and the prefix later passes
//! over it without acking it twice. Requeues (nacks) are sent at once, alone, and are passed
//! over the same way: RabbitMQ's `multiple` ack covers only messages still unacked, and its own
//! tag is always one that was neither nacked nor acked alone.
//!
//! Delivery tags are per channel, start at 1 and count every delivery on it (AMQP 0-9-1,
//! `basic.deliver`); the session's consuming channel is new for each session and carries only
//! its one consumer, so the acker needs no registration of tags, only the verdicts. A tag that
//! never got a verdict (which would be a bug) costs only the coalescing: everything after it is
//! acked alone after [`STRAGGLE`].
//!
//! A message that comes with its [`Marks`] (see `timeline.rs`) is timed when the ack that covers
//! it has been sent: that instant ends its `settle` stage.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::timeline::Marks;
use crate::metrics::Metrics;

/// How long a finished message waits for the messages before it to finish, so that one ack
/// covers them all, before it is acked alone. Short enough that a stuck message holds back
/// at most a few milliseconds' worth of the prefetch window.
const STRAGGLE: Duration = Duration::from_millis(5);

/// At most this many verdicts are taken in before the acks they allow are sent.
const BATCH: usize = 1024;

/// What becomes of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Ack,
    /// Hand it back to the broker (nack with requeue): it will be delivered again.
    Requeue,
}

/// Where message tasks send their verdicts. Cheap to clone; the acker ends once every clone
/// is dropped and every verdict sent before is acted on.
#[derive(Clone)]
pub(super) struct Acks {
    verdicts: mpsc::UnboundedSender<Settled>,
}

/// A message's tag, its verdict, and its marks if it is timed.
type Settled = (u64, Verdict, Option<Marks>);

impl Acks {
    /// Starts the acker of `channel`, the session's consuming channel, timing into `metrics`.
    pub(super) fn start(
        channel: Channel,
        metrics: Arc<Metrics>,
    ) -> (Acks, tokio::task::JoinHandle<()>) {
        let (verdicts, received) = mpsc::unbounded_channel();
        let timed = Timed {
            metrics,
            waiting: BTreeMap::new(),
        };
        let acker = tokio::spawn(run(channel, received, timed));
        (Acks { verdicts }, acker)
    }

    /// `marks` time the message once it is acked (`None`: not timed).
    pub(super) fn settle(&self, tag: u64, verdict: Verdict, marks: Option<Marks>) {
        // The acker ends only after every sender is gone, so this cannot fail while `self`
        // lives; if the task was aborted (the session is lost), the broker requeues anyway.
        let _ = self.verdicts.send((tag, verdict, marks));
    }
}

/// A frame the acker sends.
#[derive(Debug, PartialEq, Eq)]
enum Send {
    /// `basic.ack` with `multiple=true`: every message up to this tag.
    AckUpTo(u64),
    /// `basic.ack` of this one message.
    AckOne(u64),
    /// `basic.nack` with `requeue=true` of this one message.
    Requeue(u64),
}

async fn run(channel: Channel, mut received: mpsc::UnboundedReceiver<Settled>, mut timed: Timed) {
    let mut window = Window::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let more = match window.next_deadline() {
            Some(deadline) => tokio::select! {
                biased;
                count = received.recv_many(&mut batch, BATCH) => count,
                () = tokio::time::sleep_until(deadline) => usize::MAX,
            },
            None => received.recv_many(&mut batch, BATCH).await,
        };
        if more == 0 {
            break;
        }
        let now = Instant::now();
        let mut sends = Vec::new();
        for (tag, verdict, marks) in batch.drain(..) {
            sends.extend(window.report(tag, verdict, now));
            if let (Verdict::Ack, Some(marks)) = (verdict, marks) {
                timed.waiting.insert(tag, marks);
            }
        }
        sends.extend(window.advance());
        sends.extend(window.stragglers(now));
        if !send_all(&channel, &sends).await {
            return;
        }
        timed.sent(&sends);
    }
    // Every task is done: a gap (a tag without a verdict) is the only thing that could keep a
    // finished message from the prefix, so what still waits is acked alone.
    let sends = window
        .advance()
        .into_iter()
        .chain(window.stragglers(Instant::now() + STRAGGLE))
        .collect::<Vec<_>>();
    if send_all(&channel, &sends).await {
        timed.sent(&sends);
    }
}

/// The timed messages whose ack has not been sent yet, by tag.
struct Timed {
    metrics: Arc<Metrics>,
    waiting: BTreeMap<u64, Marks>,
}

impl Timed {
    /// `sends` went out: every timed message they acked is settled now.
    fn sent(&mut self, sends: &[Send]) {
        let settled = std::time::Instant::now();
        for send in sends {
            match *send {
                Send::AckUpTo(tag) => {
                    let later = self.waiting.split_off(&(tag + 1));
                    for marks in std::mem::replace(&mut self.waiting, later).values() {
                        self.metrics.message_timed(marks, settled);
                    }
                }
                Send::AckOne(tag) => {
                    if let Some(marks) = self.waiting.remove(&tag) {
                        self.metrics.message_timed(&marks, settled);
                    }
                }
                // Never timed: only acked messages are.
                Send::Requeue(_) => {}
            }
        }
    }
}

/// Sends the frames in order; `false` once the channel failed (the session is being lost, and
/// the broker requeues whatever is unacked).
async fn send_all(channel: &Channel, sends: &[Send]) -> bool {
    for send in sends {
        let result = match *send {
            Send::AckUpTo(tag) => {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
            }
            Send::AckOne(tag) => {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await
            }
            Send::Requeue(tag) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                channel.basic_nack(tag, requeue).await
            }
        };
        if let Err(error) = result {
            debug!(%error, "settling messages failed");
            return false;
        }
    }
    true
}

/// The acker's bookkeeping, free of I/O so the rule can be tested on its own.
#[derive(Debug)]
struct Window {
    /// The lowest tag the prefix has not passed yet.
    floor: u64,
    /// Tags at or above `floor` that have a verdict.
    marks: BTreeMap<u64, Mark>,
    /// Finished messages in the order they finished, to find the ones that waited too long.
    waiting: VecDeque<(Instant, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Finished, not acked yet.
    Waiting,
    /// Already acked alone or nacked: the prefix passes it without a frame.
    Sent,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            floor: 1,
            marks: BTreeMap::new(),
            waiting: VecDeque::new(),
        }
    }
}

impl Window {
    fn report(&mut self, tag: u64, verdict: Verdict, now: Instant) -> Option<Send> {
        match verdict {
            Verdict::Ack => {
                self.marks.insert(tag, Mark::Waiting);
                self.waiting.push_back((now, tag));
                None
            }
            Verdict::Requeue => {
                self.marks.insert(tag, Mark::Sent);
                Some(Send::Requeue(tag))
            }
        }
    }

    /// Moves the floor over every tag with a verdict; one ack covers the waiting ones passed.
    fn advance(&mut self) -> Option<Send> {
        let mut last_waiting = None;
        while let Some(mark) = self.marks.remove(&self.floor) {
            if mark == Mark::Waiting {
                last_waiting = Some(self.floor);
            }
            self.floor += 1;
        }
        last_waiting.map(Send::AckUpTo)
    }

    /// Acks alone the messages that finished at least [`STRAGGLE`] before `now` and are still
    /// waiting for the prefix.
    fn stragglers(&mut self, now: Instant) -> Vec<Send> {
        let mut sends = Vec::new();
        while let Some(&(finished, tag)) = self.waiting.front() {
            if finished + STRAGGLE > now {
                break;
            }
            self.waiting.pop_front();
            if let Some(mark @ Mark::Waiting) = self.marks.get_mut(&tag) {
                *mark = Mark::Sent;
                sends.push(Send::AckOne(tag));
            }
        }
        sends
    }

    /// When the oldest message still waiting becomes a straggler.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(finished, tag)) = self.waiting.front() {
            if self.marks.get(&tag) == Some(&Mark::Waiting) {
                return Some(finished + STRAGGLE);
            }
            // Passed by the prefix or acked alone already.
            self.waiting.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;

    use super::*;

    fn finish(window: &mut Window, tags: &[u64], now: Instant) -> Vec<Send> {
        let mut sends: Vec<Send> = tags
            .iter()
            .filter_map(|&tag| window.report(tag, Verdict::Ack, now))
            .collect();
        sends.extend(window.advance());
        sends
    }

    #[test]
    fn one_ack_covers_the_contiguous_prefix_in_any_finishing_order() {
        let now = Instant::now();
        let mut window = Window::default();
        assert_eq!(finish(&mut window, &[3, 2], now), []);
        assert_eq!(finish(&mut window, &[1], now), [Send::AckUpTo(3)]);
        assert_eq!(finish(&mut window, &[5], now), []);
        assert_eq!(finish(&mut window, &[4, 6], now), [Send::AckUpTo(6)]);
        assert!(window.marks.is_empty());
        assert_eq!(window.next_deadline(), None);
    }

    #[test]
    fn a_message_in_flight_holds_the_prefix_and_later_ones_are_acked_alone_after_the_straggle() {
        let start = Instant::now();
        let mut window = Window::default();
        // Tag 1 is stuck at a hanging receiver; 2 and 3 finish.
        assert_eq!(finish(&mut window, &[2, 3], start), []);
        assert_eq!(window.next_deadline(), Some(start + STRAGGLE));
        assert_eq!(window.stragglers(start + STRAGGLE / 2), []);
        assert_eq!(
            window.stragglers(start + STRAGGLE),
            [Send::AckOne(2), Send::AckOne(3)]
        );
        assert_eq!(window.next_deadline(), None);
        // 4 finishes; then 1 does: the prefix passes 2 and 3 without acking them again, and
        // its ack's own tag (4) is one that was never acked.
        let later = start + STRAGGLE * 2;
        assert_eq!(finish(&mut window, &[4], later), []);
        assert_eq!(finish(&mut window, &[1], later), [Send::AckUpTo(4)]);
        assert_eq!(window.floor, 5);
    }

    #[test]
    fn a_prefix_of_only_messages_already_sent_needs_no_ack() {
        let start = Instant::now();
        let mut window = Window::default();
        finish(&mut window, &[2], start);
        assert_eq!(window.stragglers(start + STRAGGLE), [Send::AckOne(2)]);
        assert_eq!(
            window.report(1, Verdict::Requeue, start),
            Some(Send::Requeue(1))
        );
        assert_eq!(window.advance(), None);
        assert_eq!(window.floor, 3);
    }

    #[test]
    fn requeues_go_at_once_and_the_ack_after_them_skips_their_tags() {
        let now = Instant::now();
        let mut window = Window::default();
        assert_eq!(
            window.report(2, Verdict::Requeue, now),
            Some(Send::Requeue(2))
        );
        assert_eq!(finish(&mut window, &[3], now), []);
        assert_eq!(finish(&mut window, &[1], now), [Send::AckUpTo(3)]);
        // Requeued last: the prefix passes it, and the ack stops at the last acked tag.
        assert_eq!(
            window.report(5, Verdict::Requeue, now),
            Some(Send::Requeue(5))
        );
        assert_eq!(finish(&mut window, &[4], now), [Send::AckUpTo(4)]);
        assert_eq!(window.floor, 6);
    }

    /// The broker's side of the frames: every tag is settled exactly once — acked alone, by
    /// one `multiple` ack at or above it, or nacked — and a `multiple` ack never covers a tag
    /// that is still in flight, nor has a tag that was already settled as its own.
    #[derive(Default)]
    struct Broker {
        reported: Vec<bool>,
        settled: Vec<bool>,
    }

    impl Broker {
        fn apply(&mut self, sends: Vec<Send>) {
            for send in sends {
                match send {
                    Send::AckOne(tag) | Send::Requeue(tag) => {
                        let tag = tag as usize;
                        assert!(self.reported[tag], "tag {tag} settled in flight");
                        assert!(!self.settled[tag], "tag {tag} settled twice");
                        self.settled[tag] = true;
                    }
                    Send::AckUpTo(tag) => {
                        let tag = tag as usize;
                        assert!(!self.settled[tag], "multiple ack on settled tag {tag}");
                        for below in 1..=tag {
                            assert!(self.reported[below], "ack up to {tag} covers {below}");
                            self.settled[below] = true;
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn every_tag_is_settled_exactly_once_whatever_the_order(
            order in (1..60u64).prop_flat_map(|n| {
                proptest::strategy::Just((1..=n).collect::<Vec<u64>>()).prop_shuffle()
            }),
            steps in proptest::collection::vec((proptest::bool::weighted(0.1), 0..4u8), 60),
        ) {
            let count = order.len();
            let mut broker = Broker {
                reported: vec![false; count + 1],
                settled: vec![false; count + 1],
            };
            let mut window = Window::default();
            let mut now = Instant::now();
            for (&tag, &(requeue, step)) in order.iter().zip(&steps) {
                let verdict = if requeue { Verdict::Requeue } else { Verdict::Ack };
                broker.reported[tag as usize] = true;
                broker.apply(window.report(tag, verdict, now).into_iter().collect());
                if step & 1 == 1 {
                    broker.apply(window.advance().into_iter().collect());
                }
                if step & 2 == 2 {
                    now += STRAGGLE;
                    let stragglers = window.stragglers(now);
                    broker.apply(stragglers);
                }
            }
            broker.apply(window.advance().into_iter().collect());
            proptest::prop_assert_eq!(window.floor, count as u64 + 1);
            proptest::prop_assert!(broker.settled[1..].iter().all(|&s| s), "a tag was never settled");
        }
    }
}
