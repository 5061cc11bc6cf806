//! Delivering one event to one webhook: the HTTP client, the headers and signatures of an
//! attempt, and the single function that turns what came back into an [`Outcome`].
//!
//! The parts are split so that each can be read and tested alone: `client` knows HTTP and
//! sockets (with the SSRF guard from `guard` under its connector and the trusted roots from
//! [`crate::tls`] in its TLS layer) but no policy, `sign` is pure byte work, and `outcome` is the whole
//! retry policy in one table-tested function. The rest of
//! the crate uses what is re-exported here, and `sign` by name: its functions read best
//! qualified (`sign::delivery_id`).

mod client;
mod guard;
mod outcome;
pub mod sign;

pub use client::{
    Client, ClientError, ClientSettings, Response, RetryAfter, SendError, MAX_REQUEST_TIMEOUT,
};
pub use guard::is_refused;
pub use outcome::{classify, DeadReason, Outcome, UnknownReason, ALL_REASONS};
