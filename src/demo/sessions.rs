//! Sessions issued by the simulated ENT's `POST /login`.
//!
//! A surge test can log in millions of simulated students, so the store is bounded: past
//! its capacity the oldest session is forgotten (its cookie then gets a 403, like an
//! expired session on a real ENT).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// Default bound on remembered sessions (≈ 48 MB worst case: 16 bytes in the set plus 16
/// in the queue, plus hash-table overhead).
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;

/// Cookie carrying the session, as on the real ENT.
pub const SESSION_COOKIE: &str = "ENTSESSION";

/// What a request's cookies say about its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    /// No `ENTSESSION` cookie at all: 401.
    Missing,
    /// A cookie that we did not issue, or that was evicted: 403.
    Unknown,
    /// A live session.
    Valid,
}

/// Bounded FIFO set of session ids (128-bit random values).
#[derive(Debug)]
pub struct SessionStore {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashSet<u128>,
    order: VecDeque<u128>,
}

impl SessionStore {
    /// A store remembering at most `cap` sessions (at least one).
    pub fn new(cap: usize) -> SessionStore {
        SessionStore {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Issues a fresh random session and returns its cookie value (32 lower-case hex
    /// digits), evicting the oldest session when full.
    pub fn issue(&self) -> String {
        let id: u128 = rand::random();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.live.insert(id) {
            inner.order.push_back(id);
        }
        while inner.order.len() > self.cap {
            if let Some(old) = inner.order.pop_front() {
                inner.live.remove(&old);
            }
        }
        format!("{id:032x}")
    }

    /// Is this cookie value a live session? Anything that is not 32 hex digits is unknown.
    pub fn is_valid(&self, value: &str) -> bool {
        if value.len() != 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        match u128::from_str_radix(value, 16) {
            Ok(id) => self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .live
                .contains(&id),
            Err(_) => false,
        }
    }

    /// Classifies a request from all its `Cookie` header values.
    pub fn check<'a>(&self, cookie_headers: impl IntoIterator<Item = &'a str>) -> SessionCheck {
        let mut seen = false;
        for header in cookie_headers {
            for pair in header.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim() != SESSION_COOKIE {
                    continue;
                }
                seen = true;
                if self.is_valid(value.trim().trim_matches('"')) {
                    return SessionCheck::Valid;
                }
            }
        }
        if seen {
            SessionCheck::Unknown
        } else {
            SessionCheck::Missing
        }
    }

    /// Number of live sessions.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_sessions_are_valid_and_hex() {
        let s = SessionStore::new(10);
        let id = s.issue();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(s.is_valid(&id));
        assert!(!s.is_valid("0123"));
        assert!(!s.is_valid("zz23456789abcdef0123456789abcdef"));
    }

    #[test]
    fn oldest_session_is_evicted_past_capacity() {
        let s = SessionStore::new(2);
        let a = s.issue();
        let b = s.issue();
        let c = s.issue();
        assert!(!s.is_valid(&a));
        assert!(s.is_valid(&b));
        assert!(s.is_valid(&c));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn cookie_header_classification() {
        let s = SessionStore::new(10);
        let id = s.issue();
        assert_eq!(s.check(["lang=fr"]), SessionCheck::Missing);
        assert_eq!(s.check([]), SessionCheck::Missing);
        assert_eq!(
            s.check(["lang=fr; ENTSESSION=00000000000000000000000000000000"]),
            SessionCheck::Unknown
        );
        let good = format!("lang=fr; ENTSESSION={id}");
        assert_eq!(s.check([good.as_str()]), SessionCheck::Valid);
        // A stale cookie next to a valid one (two Cookie headers) still authenticates.
        let stale = "ENTSESSION=garbage";
        assert_eq!(s.check([stale, good.as_str()]), SessionCheck::Valid);
    }
}
