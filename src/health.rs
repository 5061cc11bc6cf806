//! Where the daemon stands, for those who watch it: `/readyz` (through the admin server) and
//! systemd (through its notify protocol and watchdog).
//!
//! Both the admin server and the service read or write it, so it lives apart from either: the
//! service sets the state as its broker sessions come and go, and the admin server only reads it.

mod systemd;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use systemd::watchdog;

/// Where the daemon stands with the broker; `/readyz` answers 200 only while consuming, and says
/// why not otherwise.
#[derive(Debug, Default)]
pub struct Readiness {
    state: Mutex<State>,
}

/// The daemon's state with the broker.
#[derive(Debug, Clone, Default)]
pub enum State {
    #[default]
    Connecting,
    Consuming,
    Reconnecting(String),
    Stopping,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Connecting => f.write_str("connecting to the broker"),
            State::Consuming => f.write_str("consuming"),
            State::Reconnecting(error) => write!(f, "reconnecting to the broker after: {error}"),
            State::Stopping => f.write_str("stopping"),
        }
    }
}

impl Readiness {
    /// Why the daemon is not ready (`None` when it is), for `/readyz`'s 503 body.
    pub fn reason(&self) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (!matches!(*state, State::Consuming)).then(|| state.to_string())
    }

    /// Records the new state and tells systemd (`READY=1` once consuming, `STOPPING=1`, and a
    /// `STATUS=` line for `systemctl status`).
    pub fn set(&self, state: State) {
        systemd::announce(&state);
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }
}

/// Which webhook URLs have their circuit open, asked by the console for each webhook it lists.
/// The service's per-endpoint admission state answers it; the console only reads.
pub trait Circuits: Send + Sync {
    /// How long `url`'s circuit keeps deliveries away, if it is open.
    fn open_for(&self, url: &str) -> Option<Duration>;
}
