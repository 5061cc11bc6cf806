//! systemd's notify protocol: `READY=1` once consuming, `STOPPING=1` when the drain starts,
//! `STATUS=` lines for `systemctl status`, and watchdog pings.
//!
//! The watchdog tracks webhookd's own liveness, not the broker's: the pings come from a task on
//! the same runtime as everything else, so they stop when the runtime stops scheduling (its
//! worker threads wedged, a deadlock, a runaway blocking call) and systemd restarts the daemon.
//! A broker outage never stops them — the supervisor is alive and reconnecting, and a restart
//! would only add a restart loop to the outage. Without `NOTIFY_SOCKET` (not under systemd, or
//! `Type=` other than notify) every call here is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::State;

/// Tells systemd about a new state. Failing to notify is logged, never fatal: the daemon works
/// the same without a service manager listening.
pub(super) fn announce(state: &State) {
    let status = state.to_string();
    let mut message = vec![NotifyState::Status(&status)];
    match state {
        State::Consuming => message.push(NotifyState::Ready),
        State::Stopping => message.push(NotifyState::Stopping),
        State::Connecting | State::Reconnecting(_) => {}
    }
    if let Err(error) = sd_notify::notify(&message) {
        debug!(%error, "notifying systemd failed");
    }
}

/// Pings the watchdog at half the interval systemd asked for (`WATCHDOG_USEC`), until `stop`.
pub async fn watchdog(stop: CancellationToken) {
    let Some(timeout) = sd_notify::watchdog_enabled().filter(|t| !t.is_zero()) else {
        return;
    };
    let every = (timeout / 2).max(Duration::from_millis(1));
    info!(?every, "systemd watchdog enabled");
    let mut ticks = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {
                if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
                    debug!(%error, "pinging the systemd watchdog failed");
                }
            }
        }
    }
}
