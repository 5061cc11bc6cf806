//! Console sessions: what a sign-in exchanges the token for.
//!
//! The token itself never leaves the sign-in request: the browser gets a random session id
//! (256 bits, in an HttpOnly, SameSite=Strict cookie), and the daemon keeps, per id, who signed
//! in, the CSRF token its forms carry, and when the session ends: after an idle time without a
//! request, and a fixed time after sign-in however busy. Sessions live in this process's memory:
//! a restart signs everyone out, and each instance of a scaled-out daemon has its own (a
//! browser signs in to the one it reaches). Their number is capped, so sign-ins cannot grow
//! memory without bound: at the cap, expired sessions are dropped first, then the oldest.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::admin::Principal;
use crate::lifecycle::Trial;

/// Sessions kept at most; a sign-in beyond it ends the oldest.
const MAX_SESSIONS: usize = 10_000;

/// A random 256-bit value as hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    /// Every form of this session carries it; a POST without it is refused.
    pub csrf: String,
    /// A secret, notice or test result to show once on the next page (after a
    /// POST-redirect-GET), then forget.
    pub flash: Option<Flash>,
    started: Instant,
    seen: Instant,
}

/// Something shown once, on the page a POST redirects to.
#[derive(Debug, Clone)]
pub enum Flash {
    /// A webhook's new signing secret.
    Secret { webhook_id: String, secret: String },
    /// A line saying what an action did.
    Notice(String),
    /// What a test event sent from the webhook's page got.
    Trial(Trial),
}

/// Every live session, by id.
pub struct Sessions {
    idle: Duration,
    max_age: Duration,
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Sessions {
        Sessions {
            idle,
            max_age,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `principal` at `now`; returns its id.
    pub fn start(&self, principal: Principal, now: Instant) -> String {
        let id = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            flash: None,
            started: now,
            seen: now,
        };
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| self.live(s, now));
        }
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session);
        id
    }

    /// The session `id` at `now`, taking its flash (shown once), and marking it used; `None` if
    /// there is none or it has expired (then it is forgotten).
    pub fn touch(&self, id: &str, now: Instant) -> Option<Session> {
        let mut sessions = self.lock();
        let session = sessions.get_mut(id)?;
        if !self.live(session, now) {
            sessions.remove(id);
            return None;
        }
        session.seen = now;
        let copy = session.clone();
        session.flash = None;
        Some(copy)
    }

    /// Sets what the next page of session `id` shows once.
    pub fn flash(&self, id: &str, flash: Flash) {
        if let Some(session) = self.lock().get_mut(id) {
            session.flash = Some(flash);
        }
    }

    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    fn live(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.seen) < self.idle
            && now.saturating_duration_since(session.started) < self.max_age
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_session_ends_when_idle_too_long() {
        let sessions = Sessions::new(10 * MINUTE, 60 * MINUTE);
        let t0 = Instant::now();
        let id = sessions.start(Principal::Account(3), t0);
        let kept = sessions.touch(&id, t0 + 9 * MINUTE).map(|s| s.principal);
        assert_eq!(kept, Some(Principal::Account(3)));
        assert!(sessions.touch(&id, t0 + 18 * MINUTE).is_some());
        assert!(sessions.touch(&id, t0 + 29 * MINUTE).is_none());
        assert!(sessions.touch(&id, t0 + 30 * MINUTE).is_none(), "forgotten");
    }

    #[test]
    fn a_session_ends_at_its_max_age_however_busy() {
        let sessions = Sessions::new(10 * MINUTE, 30 * MINUTE);
        let t0 = Instant::now();
        let id = sessions.start(Principal::Operator, t0);
        for minutes in (5..30).step_by(5) {
            assert!(sessions.touch(&id, t0 + minutes * MINUTE).is_some());
        }
        assert!(sessions.touch(&id, t0 + 30 * MINUTE).is_none());
    }

    #[test]
    fn a_flash_is_shown_once_and_logout_ends_the_session() {
        let sessions = Sessions::new(MINUTE, MINUTE);
        let now = Instant::now();
        let id = sessions.start(Principal::Operator, now);
        sessions.flash(&id, Flash::Notice("done".into()));
        assert!(sessions.touch(&id, now).and_then(|s| s.flash).is_some());
        assert!(sessions.touch(&id, now).and_then(|s| s.flash).is_none());
        sessions.end(&id);
        assert!(sessions.touch(&id, now).is_none());
        assert!(sessions.touch("unknown", now).is_none());
    }

    #[test]
    fn ids_and_csrf_tokens_are_distinct_and_compared_whole() {
        let sessions = Sessions::new(MINUTE, MINUTE);
        let now = Instant::now();
        let a = sessions.start(Principal::Operator, now);
        let b = sessions.start(Principal::Operator, now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let csrf = sessions.touch(&a, now).map(|s| s.csrf).unwrap_or_default();
        assert!(same_secret(&csrf, &csrf));
        assert!(!same_secret(&csrf, &csrf[..63]));
    }
}
