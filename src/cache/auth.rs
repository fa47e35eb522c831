//! Who the origin recently let read what: the memory behind `stale_if_error` on a
//! `revalidate` route.
//!
//! In `revalidate` mode every request asks the origin with the user's own credentials.
//! When the origin fails, nobody can say yes or no for this user, so a stored copy may go
//! only to credentials the origin itself authorized (`200` or `304`) for that object
//! within the route's `stale_if_error` window. Anyone else gets the error, never the file.
//!
//! Entries are a keyed hash (HMAC-SHA256 with a random per-process key, truncated to
//! 128 bits) over the object's primary cache key and the request's credentials
//! (`Authorization` values and every cookie other than ecluse's own, sorted), with the
//! time of the last authorization. Nothing readable is kept: not the cookie, not the
//! URL. The memory is process-local and lost on restart (then nobody gets a stale copy
//! until the origin authorizes them again: an error, never a leak).
//!
//! Bounded: [`CAPACITY`] entries over [`SHARDS`] shards. A full shard first drops entries
//! older than the longest window seen, then the oldest eighth. An evicted user gets the
//! error page during an outage, never someone else's file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Most authorizations remembered at once (about 64 bytes each with the map's overhead:
/// at most about 8 MiB).
pub const CAPACITY: usize = 131_072;
const SHARDS: usize = 16;
const PER_SHARD: usize = CAPACITY / SHARDS;

/// One authorization: object and credentials, hashed with the process key.
pub type Grant = [u8; 16];

pub struct Authorizations {
    key: [u8; 32],
    shards: Vec<Mutex<HashMap<Grant, Instant>>>,
    /// The longest window granted or asked about so far, in ms (older entries are useless).
    horizon_ms: AtomicU64,
}

impl Default for Authorizations {
    fn default() -> Self {
        Self::new()
    }
}

impl Authorizations {
    pub fn new() -> Authorizations {
        Authorizations {
            key: rand::random(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            horizon_ms: AtomicU64::new(0),
        }
    }

    /// The grant for `object` (a primary cache key hash) and these credentials (each item
    /// one `Authorization` value or one `name=value` cookie; order does not matter).
    pub fn grant_for(&self, object: &[u8], credentials: &[&[u8]]) -> Grant {
        let mut items: Vec<&[u8]> = credentials.to_vec();
        items.sort_unstable();
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&(object.len() as u64).to_le_bytes());
        mac.update(object);
        for i in items {
            mac.update(&(i.len() as u64).to_le_bytes());
            mac.update(i);
        }
        let full = mac.finalize().into_bytes();
        let mut g = [0u8; 16];
        g.copy_from_slice(&full[..16]);
        g
    }

    fn shard(&self, g: &Grant) -> MutexGuard<'_, HashMap<Grant, Instant>> {
        // A panic elsewhere while holding the lock leaves a consistent map: keep using it.
        self.shards[usize::from(g[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The origin authorized these credentials for this object now; `window` is how long
    /// that may stand in for it (the route's `stale_if_error`).
    pub fn allow(&self, g: Grant, window: Duration) {
        self.allow_at(g, window, Instant::now());
    }

    fn allow_at(&self, g: Grant, window: Duration, now: Instant) {
        self.widen_horizon(window);
        let mut m = self.shard(&g);
        if m.len() >= PER_SHARD && !m.contains_key(&g) {
            let horizon = Duration::from_millis(self.horizon_ms.load(Ordering::Relaxed));
            m.retain(|_, t| now.saturating_duration_since(*t) <= horizon);
            if m.len() >= PER_SHARD {
                // Still full: drop the oldest eighth in one pass.
                let mut times: Vec<Instant> = m.values().copied().collect();
                let cut = times.len() / 8;
                let (_, nth, _) = times.select_nth_unstable(cut);
                let threshold = *nth;
                m.retain(|_, t| *t > threshold);
            }
        }
        m.insert(g, now);
    }

    /// The origin refused these credentials for this object: forget any earlier yes.
    pub fn revoke(&self, g: &Grant) {
        self.shard(g).remove(g);
    }

    /// Whether the origin authorized these credentials for this object within `window`.
    pub fn allowed_within(&self, g: &Grant, window: Duration) -> bool {
        self.allowed_within_at(g, window, Instant::now())
    }

    fn allowed_within_at(&self, g: &Grant, window: Duration, now: Instant) -> bool {
        self.widen_horizon(window);
        self.shard(g)
            .get(g)
            .is_some_and(|t| now.saturating_duration_since(*t) <= window)
    }

    fn widen_horizon(&self, window: Duration) {
        let ms = window.as_millis().min(u128::from(u64::MAX)) as u64;
        self.horizon_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Entries held now (tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_depend_on_object_and_credentials_not_their_order() {
        let a = Authorizations::new();
        let g1 = a.grant_for(b"obj", &[b"user=alice", b"lang=fr"]);
        assert_eq!(g1, a.grant_for(b"obj", &[b"lang=fr", b"user=alice"]));
        assert_ne!(g1, a.grant_for(b"obj", &[b"user=bob", b"lang=fr"]));
        assert_ne!(g1, a.grant_for(b"other", &[b"user=alice", b"lang=fr"]));
        // Concatenation does not collide: lengths are part of the input.
        assert_ne!(
            a.grant_for(b"obj", &[b"ab", b"c"]),
            a.grant_for(b"obj", &[b"a", b"bc"])
        );
        // Another process (another key) hashes differently.
        assert_ne!(
            g1,
            Authorizations::new().grant_for(b"obj", &[b"user=alice", b"lang=fr"])
        );
    }

    #[test]
    fn only_allowed_credentials_within_the_window() {
        let a = Authorizations::new();
        let alice = a.grant_for(b"exam", &[b"user=alice"]);
        let bob = a.grant_for(b"exam", &[b"user=bob"]);
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        a.allow_at(alice, w, t0);
        assert!(a.allowed_within_at(&alice, w, t0 + Duration::from_secs(10)));
        assert!(!a.allowed_within_at(&bob, w, t0 + Duration::from_secs(10)));
        assert!(!a.allowed_within_at(&alice, w, t0 + Duration::from_secs(3601)));
        a.revoke(&alice);
        assert!(!a.allowed_within_at(&alice, w, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn bounded_and_evicts_the_oldest() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        let first = a.grant_for(b"o", &[b"first"]);
        a.allow_at(first, w, t0);
        for i in 0..(CAPACITY * 2) as u64 {
            let g = a.grant_for(b"o", &[&i.to_le_bytes()]);
            a.allow_at(g, w, t0 + Duration::from_millis(1 + i));
        }
        assert!(a.len() <= CAPACITY, "{} entries", a.len());
        assert!(a.len() > CAPACITY / 2, "{} entries", a.len());
        // The oldest went first; the newest is still there.
        assert!(!a.allowed_within_at(&first, w, t0));
        // Only the oldest go: the newest half is all there (a full shard is never wiped).
        let at = t0 + Duration::from_secs(1000);
        for i in (CAPACITY * 3 / 2) as u64..(CAPACITY * 2) as u64 {
            let g = a.grant_for(b"o", &[&i.to_le_bytes()]);
            assert!(a.allowed_within_at(&g, w, at), "grant {i} was evicted");
        }
    }

    #[test]
    fn a_full_shard_drops_only_what_expired_when_it_can() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        // Fill everything long ago (expired by the time the next ones come).
        for i in 0..CAPACITY as u64 {
            a.allow_at(a.grant_for(b"old", &[&i.to_le_bytes()]), w, t0);
        }
        let later = t0 + Duration::from_secs(120);
        let mut recent = Vec::new();
        for i in 0..(CAPACITY / 2) as u64 {
            let g = a.grant_for(b"new", &[&i.to_le_bytes()]);
            a.allow_at(g, w, later + Duration::from_millis(i));
            recent.push(g);
        }
        // Every recent grant survived the evictions (only expired ones were dropped).
        let at = later + Duration::from_secs(1);
        assert!(recent
            .iter()
            .all(|g| a.allowed_within_at(g, w, at + Duration::from_millis(70))));
        assert!(a.len() <= CAPACITY);
    }
}
