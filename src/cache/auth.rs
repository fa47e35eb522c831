//! Who the origin recently let read what: the memory behind `stale_if_error` on a
//! `revalidate` route.
//!
//! In `revalidate` mode every request asks the origin with the user's own credentials.
//! When the origin fails, nobody can say yes or no for this user, so a stored copy may go
//! only to credentials the origin itself gave **that very version** of the object (same
//! status and body bytes: a [`Version`]) as its latest answer, within the route's
//! `stale_if_error` window. Many ENTs answer each pupil their own body at one URL (a
//! bulletin, a personalised exam paper, a 200 login page for anonymous visitors), and the
//! stored copy is whichever answer came last: remembering "the origin said yes to this
//! user for this URL" would hand the newest pupil's body to everyone authorized before.
//! Anyone whose latest answer was another version (another pupil's body, a refusal, a
//! login page) gets the error, never the file.
//!
//! Entries are a keyed hash (HMAC-SHA256 with a random per-process key, truncated to
//! 128 bits) over the object's primary cache key and the request's credentials
//! (`Authorization` values and every cookie other than ecluse's own, sorted), with the
//! version the origin last answered them and when. Nothing readable is kept: not the
//! cookie, not the URL. The memory is process-local and lost on restart (then nobody gets
//! a stale copy until the origin authorizes them again: an error, never a leak).
//!
//! [`Variants`] remembers, per stored object, which versions the origin answered lately,
//! to find URLs whose body differs by credential: those are then not stored at all (see
//! docs/policy.md's Cache section for why not per credential).
//!
//! Bounded: [`CAPACITY`] grants over [`SHARDS`] shards, at most [`PER_OBJECT`] per
//! object. Only grants of the stored version are kept (any other serves nothing, and
//! forgetting it means the same: ask the origin). A full object first drops grants of a
//! copy since replaced, then its oldest eighth; a full shard drops expired grants, then
//! takes from the object holding the most (no object is cut while a bigger one stands).
//! So a client flooding one URL with credentials pushes out that URL's grants only, and a
//! flood spread over URLs must first fill the whole shard with grants of stored copies
//! (each one an answer the origin gave, within rate limits) before a popular object loses
//! its oldest grants. A forgotten grant never means "allowed": the
//! credentials are asked as a stranger's (no validator of the stored copy) and get the
//! error page during an outage, never someone else's file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Most authorizations remembered at once (about 64 bytes each with the map's overhead:
/// at most about 8 MiB).
pub const CAPACITY: usize = 131_072;
const SHARDS: usize = 16;
const PER_SHARD: usize = CAPACITY / SHARDS;
/// Most authorizations remembered for one object (URL): a whole school reading one
/// bulletin within its window, and never more than a quarter of its shard.
pub const PER_OBJECT: usize = 2_048;
/// Longest window that keeps a grant from expiring (an origin's `stale-if-error` is a
/// 32-bit count of seconds).
const MAX_WINDOW_MS: u64 = u32::MAX as u64 * 1000;

/// One authorization: object, and object with credentials, each hashed with the process
/// key (nothing readable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    object: [u8; 16],
    credentials: [u8; 16],
}

/// One version of a response: SHA-256 of its status and body bytes, truncated to 128 bits.
/// Two answers have one version exactly when they are the same bytes.
pub type Version = [u8; 16];

/// The stored object's [`Version`] travels in its stored header under this name (set by
/// the store when the body is complete, on `revalidate` routes; never sent to a client,
/// and removed from every origin response).
pub const VERSION_HEADER: &str = "x-ecluse-version";

/// Hashes a response into its [`Version`] as it streams.
pub struct VersionHasher(Sha256);

impl VersionHasher {
    pub fn new(status: u16) -> VersionHasher {
        let mut h = Sha256::new();
        h.update(status.to_be_bytes());
        VersionHasher(h)
    }

    pub fn update(&mut self, body: &[u8]) {
        self.0.update(body);
    }

    pub fn finish(self) -> Version {
        let full = self.0.finalize();
        let mut v = [0u8; 16];
        v.copy_from_slice(&full[..16]);
        v
    }
}

/// The value of [`VERSION_HEADER`]: the version in hex, and `;anon` when the stored copy
/// answered an anonymous request.
pub fn version_header_value(v: &Version, anonymous: bool) -> String {
    let mut s = hex::encode(v);
    if anonymous {
        s.push_str(";anon");
    }
    s
}

/// A stored copy's version and whether it answered an anonymous request, from its header
/// (`None` when absent or not complete: such a copy goes to nobody on error).
pub fn parse_version_header(v: &[u8]) -> Option<(Version, bool)> {
    let (hexpart, anonymous) = match v.strip_suffix(b";anon") {
        Some(h) => (h, true),
        None => (v, false),
    };
    let mut out = [0u8; 16];
    hex::decode_to_slice(hexpart, &mut out).ok()?;
    Some((out, anonymous))
}

pub struct Authorizations {
    key: [u8; 32],
    shards: Vec<Mutex<Shard>>,
    /// The longest `stale_if_error` window granted or asked about so far, in ms (older
    /// entries are useless).
    horizon_ms: AtomicU64,
}

/// Credentials hashed with their object (see [`Authorizations::grant_for`]).
type CredentialsId = [u8; 16];

/// The grants of one shard, grouped by object so that an eviction forced by one object's
/// crowd of credentials falls on that object first.
#[derive(Default)]
struct Shard {
    objects: HashMap<[u8; 16], ObjectGrants>,
    /// Grants held over all objects of this shard.
    len: usize,
}

#[derive(Default)]
struct ObjectGrants {
    /// Each credential's latest version, and when the origin answered it.
    grants: HashMap<CredentialsId, (Instant, Version)>,
    /// The version most recently granted (the stored copy's, as far as we know): grants
    /// of any other version name a copy that has been replaced.
    newest: Option<Version>,
}

impl Shard {
    fn remove(&mut self, g: &Grant) {
        if let Some(o) = self.objects.get_mut(&g.object) {
            if o.grants.remove(&g.credentials).is_some() {
                self.len -= 1;
            }
            if o.grants.is_empty() {
                self.objects.remove(&g.object);
            }
        }
    }

    /// Drops every grant older than `horizon` (no window reaches them any more).
    fn drop_expired(&mut self, now: Instant, horizon: Duration) {
        let mut dropped = 0;
        self.objects.retain(|_, o| {
            let before = o.grants.len();
            o.grants
                .retain(|_, (t, _)| now.saturating_duration_since(*t) <= horizon);
            dropped += before - o.grants.len();
            !o.grants.is_empty()
        });
        self.len -= dropped;
    }
}

impl ObjectGrants {
    /// Makes room in a full object: grants of a replaced copy first (they can serve
    /// nothing), then the oldest eighth (at least one). Returns how many went.
    fn make_room(&mut self) -> usize {
        let before = self.grants.len();
        if let Some(newest) = self.newest {
            self.grants.retain(|_, (_, v)| *v == newest);
        }
        if self.grants.len() == before && before > 0 {
            // Each grant has its own time (ties are broken by key), so exactly the
            // oldest `cut` go, never a whole object that was granted in one instant.
            let mut by_age: Vec<(Instant, CredentialsId)> =
                self.grants.iter().map(|(c, (t, _))| (*t, *c)).collect();
            let cut = (before / 8).max(1);
            by_age.select_nth_unstable(cut - 1);
            for (_, c) in &by_age[..cut] {
                self.grants.remove(c);
            }
        }
        before - self.grants.len()
    }
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
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            horizon_ms: AtomicU64::new(0),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The grant for `object` (a primary cache key hash) and these credentials (each item
    /// one `Authorization` value or one `name=value` cookie; order does not matter).
    pub fn grant_for(&self, object: &[u8], credentials: &[&[u8]]) -> Grant {
        let mut items: Vec<&[u8]> = credentials.to_vec();
        items.sort_unstable();
        let object_id = self.mac(&[b"object", object]);
        let mut parts: Vec<&[u8]> = vec![b"credentials", object];
        parts.extend(items);
        Grant {
            object: object_id,
            credentials: self.mac(&parts),
        }
    }

    fn shard(&self, g: &Grant) -> MutexGuard<'_, Shard> {
        // By object: one object's grants live in one shard, where their bound is kept.
        // A panic elsewhere while holding the lock leaves a consistent map: keep using it.
        self.shards[usize::from(g.object[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The origin answered these credentials `version` of this object now (their latest
    /// answer: it replaces any earlier one); `window` is how long that may stand in for it
    /// (the route's `stale_if_error`). `current`: that version is (or is becoming) the
    /// stored copy's; any other is only remembered as "not the stored one", which is what
    /// forgetting means too, so it is not kept (a flood of answers nobody stores costs no
    /// one a grant).
    pub fn allow(&self, g: Grant, version: Version, window: Duration, current: bool) {
        self.allow_at(g, version, window, current, Instant::now());
    }

    fn allow_at(&self, g: Grant, version: Version, window: Duration, current: bool, now: Instant) {
        self.widen_horizon(window);
        let mut s = self.shard(&g);
        if !current {
            s.remove(&g);
            return;
        }
        let known = s
            .objects
            .get(&g.object)
            .is_some_and(|o| o.grants.contains_key(&g.credentials));
        if !known {
            // One object never holds more than its share: a crowd of credentials on one
            // URL pushes out that URL's own grants, nobody else's.
            if let Some(o) = s.objects.get_mut(&g.object) {
                if o.grants.len() >= PER_OBJECT {
                    let n = o.make_room();
                    s.len -= n;
                }
            }
            if s.len >= PER_SHARD {
                // Full: make room for a sixteenth at once, so the scans below run once per
                // many grants, never once per request.
                let target = PER_SHARD - PER_SHARD / 16;
                let horizon = Duration::from_millis(self.horizon_ms.load(Ordering::Relaxed));
                s.drop_expired(now, horizon);
                if s.len > target {
                    // The objects holding the most give some up first (a replaced copy's
                    // grants, else their oldest eighth), so the cost of a flood falls
                    // first on what the flood made big.
                    // Among objects as big, the one with the oldest grant first.
                    let mut by_size: Vec<(std::cmp::Reverse<usize>, Instant, [u8; 16])> = s
                        .objects
                        .iter()
                        .map(|(k, o)| {
                            let oldest = o.grants.values().map(|(t, _)| *t).min();
                            (std::cmp::Reverse(o.grants.len()), oldest.unwrap_or(now), *k)
                        })
                        .collect();
                    by_size.sort_unstable();
                    for (_, _, k) in by_size {
                        if s.len <= target {
                            break;
                        }
                        let n = s.objects.get_mut(&k).map_or(0, ObjectGrants::make_room);
                        s.len -= n;
                        if s.objects.get(&k).is_some_and(|o| o.grants.is_empty()) {
                            s.objects.remove(&k);
                        }
                    }
                }
            }
        }
        let o = s.objects.entry(g.object).or_default();
        o.newest = Some(version);
        if o.grants.insert(g.credentials, (now, version)).is_none() {
            s.len += 1;
        }
    }

    /// The origin is answering these credentials anew (its answer is not complete yet, or
    /// is a refusal): forget the earlier version until a complete answer names one.
    pub fn revoke(&self, g: &Grant) {
        self.shard(g).remove(g);
    }

    /// The version the origin last answered these credentials for this object, whatever
    /// its age (`None`: never, or forgotten; the caller then asks the origin as for a
    /// stranger, never less).
    pub fn current(&self, g: &Grant) -> Option<Version> {
        self.shard(g)
            .objects
            .get(&g.object)
            .and_then(|o| o.grants.get(&g.credentials))
            .map(|(_, v)| *v)
    }

    /// The version the origin last answered these credentials for this object, if within
    /// `window`.
    pub fn current_within(&self, g: &Grant, window: Duration) -> Option<Version> {
        self.current_within_at(g, window, Instant::now())
    }

    /// Whether the origin's latest answer to these credentials, within `window`, was
    /// exactly `version`.
    pub fn allowed_within(&self, g: &Grant, version: &Version, window: Duration) -> bool {
        self.current_within(g, window).as_ref() == Some(version)
    }

    fn current_within_at(&self, g: &Grant, window: Duration, now: Instant) -> Option<Version> {
        self.widen_horizon(window);
        self.shard(g)
            .objects
            .get(&g.object)
            .and_then(|o| o.grants.get(&g.credentials))
            .filter(|(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, v)| *v)
    }

    #[cfg(test)]
    fn allowed_within_at(&self, g: &Grant, v: &Version, window: Duration, now: Instant) -> bool {
        self.current_within_at(g, window, now).as_ref() == Some(v)
    }

    fn widen_horizon(&self, window: Duration) {
        // A window is a `stale_if_error` (a route's, or an origin's header capped by the
        // policy): finite. An unbounded one would keep every grant "unexpired" forever.
        let ms = window.as_millis().min(u128::from(MAX_WINDOW_MS)) as u64;
        self.horizon_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Entries held now (tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One stored object (URL and, when the response varies, its variant): what [`Variants`]
/// keys on. Not secret (no credentials in it).
pub type ObjectId = [u8; 16];

/// The [`ObjectId`] of a primary key hash and an optional variance hash.
pub fn object_id(primary: &[u8], variance: Option<&[u8]>) -> ObjectId {
    let mut h = Sha256::new();
    h.update((primary.len() as u64).to_le_bytes());
    h.update(primary);
    match variance {
        Some(v) => {
            h.update([1]);
            h.update(v);
        }
        None => h.update([0]),
    }
    let full = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&full[..16]);
    id
}

/// Most recent versions remembered per object.
const RECENT: usize = 4;
/// Most objects tracked at once.
pub const VARIANT_CAPACITY: usize = 65_536;
const VARIANT_PER_SHARD: usize = VARIANT_CAPACITY / SHARDS;

#[derive(Default)]
struct ObjectVersions {
    /// Newest first: the versions complete credentialed answers carried lately.
    recent: Vec<Version>,
    personal: bool,
    touched: Option<Instant>,
}

/// Which objects answer each credential its own body (per-credential variants): such an
/// object is never stored or served from the store again (while remembered).
///
/// Detected when the origin answers credentials a version it had already answered, after
/// answering another one since (`A, B, A`: two versions are current at once, which a
/// re-upload never does: it only goes forward), or a body that differs from the stored
/// one under the same strong `ETag` (the ETag does not identify the body, so a `304`
/// would not either). Bounded like [`Authorizations`]; a forgotten object may be stored
/// again, and version-bound authorization still keeps each body with its own credentials.
pub struct Variants {
    shards: Vec<Mutex<HashMap<ObjectId, ObjectVersions>>>,
}

impl Default for Variants {
    fn default() -> Self {
        Self::new()
    }
}

impl Variants {
    pub fn new() -> Variants {
        Variants {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, o: &ObjectId) -> MutexGuard<'_, HashMap<ObjectId, ObjectVersions>> {
        self.shards[usize::from(o[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `o` is known to answer each credential its own body.
    pub fn is_personal(&self, o: &ObjectId) -> bool {
        self.shard(o).get(o).is_some_and(|e| e.personal)
    }

    /// A complete answer of `version` to credentials (`etag_clash`: it came under the
    /// stored copy's strong ETag with other bytes). Returns whether `o` is (now) personal.
    pub fn observe(&self, o: ObjectId, version: Version, etag_clash: bool) -> bool {
        self.observe_at(o, version, etag_clash, Instant::now())
    }

    fn observe_at(&self, o: ObjectId, version: Version, etag_clash: bool, now: Instant) -> bool {
        let mut m = self.shard(&o);
        if m.len() >= VARIANT_PER_SHARD && !m.contains_key(&o) {
            let mut times: Vec<Instant> = m.values().filter_map(|e| e.touched).collect();
            let cut = times.len() / 8;
            if cut > 0 {
                let (_, nth, _) = times.select_nth_unstable(cut);
                let threshold = *nth;
                m.retain(|_, e| e.touched.is_some_and(|t| t > threshold));
            } else {
                m.clear();
            }
        }
        let e = m.entry(o).or_default();
        e.touched = Some(now);
        let went_back = e.recent.first() != Some(&version) && e.recent.contains(&version);
        if etag_clash || went_back {
            e.personal = true;
        }
        e.recent.retain(|v| *v != version);
        e.recent.insert(0, version);
        e.recent.truncate(RECENT);
        e.personal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: Version = [1; 16];
    const V2: Version = [2; 16];

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
        a.allow_at(alice, V1, w, true, t0);
        assert!(a.allowed_within_at(&alice, &V1, w, t0 + Duration::from_secs(10)));
        assert!(!a.allowed_within_at(&bob, &V1, w, t0 + Duration::from_secs(10)));
        assert!(!a.allowed_within_at(&alice, &V1, w, t0 + Duration::from_secs(3601)));
        a.revoke(&alice);
        assert!(!a.allowed_within_at(&alice, &V1, w, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn only_the_version_of_the_latest_answer() {
        let a = Authorizations::new();
        let alice = a.grant_for(b"bulletin", &[b"session=alice"]);
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        a.allow_at(alice, V1, w, true, t0);
        assert!(!a.allowed_within_at(&alice, &V2, w, t0));
        // A newer answer (a re-upload, a refusal's body) replaces the older version.
        a.allow_at(alice, V2, w, true, t0);
        assert!(a.allowed_within_at(&alice, &V2, w, t0));
        assert!(!a.allowed_within_at(&alice, &V1, w, t0));
    }

    #[test]
    fn variants_are_versions_that_come_back() {
        let v = Variants::new();
        let t0 = Instant::now();
        let exam = object_id(b"exam", None);
        // A re-upload only goes forward.
        for (i, ver) in [V1, V1, V2, V2, [3; 16]].iter().enumerate() {
            assert!(!v.observe_at(exam, *ver, false, t0 + Duration::from_secs(i as u64)));
        }
        assert!(!v.is_personal(&exam));
        // A bulletin answers alice, bob, alice: two versions current at once.
        let bulletin = object_id(b"bulletin", None);
        assert!(!v.observe_at(bulletin, V1, false, t0));
        assert!(!v.observe_at(bulletin, V2, false, t0));
        assert!(v.observe_at(bulletin, V1, false, t0));
        assert!(v.is_personal(&bulletin));
        // Other bytes under the stored copy's strong ETag: personal at once.
        let lying = object_id(b"lying", None);
        assert!(v.observe_at(lying, V1, true, t0));
        // Variants of a `Vary` response are separate objects.
        assert_ne!(object_id(b"f", Some(b"fr")), object_id(b"f", Some(b"en")));
        assert_ne!(object_id(b"f", None), object_id(b"f", Some(b"")));
    }

    #[test]
    fn variants_are_bounded() {
        let v = Variants::new();
        let t0 = Instant::now();
        for i in 0..(VARIANT_CAPACITY * 2) as u64 {
            let o = object_id(&i.to_le_bytes(), None);
            v.observe_at(o, V1, false, t0 + Duration::from_millis(i));
        }
        let n: usize = v
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum();
        assert!(n <= VARIANT_CAPACITY, "{n}");
    }

    #[test]
    fn versions_are_status_and_bytes() {
        let v = |status: u16, parts: &[&[u8]]| {
            let mut h = VersionHasher::new(status);
            for p in parts {
                h.update(p);
            }
            h.finish()
        };
        assert_eq!(v(200, &[b"ab", b"c"]), v(200, &[b"abc"]));
        assert_ne!(v(200, &[b"abc"]), v(404, &[b"abc"]));
        assert_ne!(v(200, &[b"abc"]), v(200, &[b"abd"]));
        let x = v(200, &[b"x"]);
        let h = version_header_value(&x, false);
        assert_eq!(parse_version_header(h.as_bytes()), Some((x, false)));
        let h = version_header_value(&x, true);
        assert_eq!(parse_version_header(h.as_bytes()), Some((x, true)));
        assert_eq!(parse_version_header(b"pending"), None);
        assert_eq!(parse_version_header(b"pending;anon"), None);
        assert_eq!(parse_version_header(b""), None);
    }

    #[test]
    fn bounded_and_evicts_the_oldest() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        // Many objects, a few credentials each.
        let g = |i: u64| a.grant_for(&(i / 4).to_le_bytes(), &[&i.to_le_bytes()]);
        let first = g(u64::MAX);
        a.allow_at(first, V1, w, true, t0);
        for i in 0..(CAPACITY * 2) as u64 {
            a.allow_at(g(i), V1, w, true, t0 + Duration::from_millis(1 + i));
        }
        assert!(a.len() <= CAPACITY, "{} entries", a.len());
        assert!(a.len() > CAPACITY / 2, "{} entries", a.len());
        // The last is there (a full shard is never wiped), and so is the first: alone on
        // its object, it is never the biggest one's grant.
        let at = t0 + Duration::from_secs(1000);
        assert!(a.allowed_within_at(&first, &V1, w, at));
        let last = (CAPACITY * 2) as u64 - 1;
        assert!(a.allowed_within_at(&g(last), &V1, w, at));
    }

    #[test]
    fn an_evicted_grant_is_no_grant() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        let alice = a.grant_for(b"exam", &[b"session=alice"]);
        a.allow_at(alice, V1, w, true, t0);
        assert_eq!(a.current(&alice), Some(V1));
        for i in 0..(PER_OBJECT * 2) as u64 {
            let g = a.grant_for(b"exam", &[&i.to_le_bytes()]);
            a.allow_at(g, V1, w, true, t0 + Duration::from_millis(1 + i));
        }
        // Forgotten: no version at all (never another one, never "any").
        assert_eq!(a.current(&alice), None);
        assert!(!a.allowed_within_at(&alice, &V1, w, t0));
        assert!(!a.allowed_within_at(&alice, &V2, w, t0));
    }

    #[test]
    fn a_flood_of_credentials_on_one_url_evicts_that_url_only() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        // A class's pupils read their bulletin, and a whole school its timetable.
        let pupils: Vec<Grant> = (0..30u64)
            .map(|i| a.grant_for(b"bulletin", &[&i.to_le_bytes()]))
            .collect();
        for g in &pupils {
            a.allow_at(*g, V1, w, true, t0);
        }
        let school: Vec<Grant> = (0..1500u64)
            .map(|i| a.grant_for(b"timetable", &[&i.to_le_bytes()]))
            .collect();
        for g in &school {
            a.allow_at(*g, V2, w, true, t0);
        }
        // One client, many credentials, on one URL, each answered and stored.
        let t1 = t0 + Duration::from_secs(1);
        // More than the whole capacity: evicting the oldest anywhere would take them all.
        for i in 0..(CAPACITY + CAPACITY / 4) as u64 {
            let g = a.grant_for(b"flooded", &[b"x", &i.to_le_bytes()]);
            a.allow_at(g, V1, w, true, t1);
        }
        let at = t1 + Duration::from_secs(1);
        assert!(pupils.iter().all(|g| a.allowed_within_at(g, &V1, w, at)));
        assert!(school.iter().all(|g| a.allowed_within_at(g, &V2, w, at)));
        assert!(a.len() <= 30 + 1500 + PER_OBJECT, "{}", a.len());
        // Answers nobody stores cost nobody a grant (and keep none themselves).
        let before = a.len();
        for i in 0..(PER_OBJECT * 4) as u64 {
            let g = a.grant_for(b"bulletin", &[b"y", &i.to_le_bytes()]);
            a.allow_at(g, V2, w, false, t1);
        }
        assert_eq!(a.len(), before);
        assert!(pupils.iter().all(|g| a.allowed_within_at(g, &V1, w, at)));
    }

    #[test]
    fn a_full_shard_takes_from_its_biggest_object_first() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        // Objects of one shard (the shard is the object id's first byte).
        let shard_of = |g: &Grant| usize::from(g.object[0]) % SHARDS;
        let target = shard_of(&a.grant_for(b"bulletin", &[b"p"]));
        let pupils: Vec<Grant> = (0..30u64)
            .map(|i| a.grant_for(b"bulletin", &[&i.to_le_bytes()]))
            .collect();
        for g in &pupils {
            a.allow_at(*g, V1, w, true, t0);
        }
        // A flood over many URLs of that shard, PER_OBJECT credentials each, then more.
        let mut n = 0u64;
        let mut i = 0u64;
        while n < (PER_SHARD * 2) as u64 {
            let url = format!("/flood/{i}");
            i += 1;
            if shard_of(&a.grant_for(url.as_bytes(), &[b"p"])) != target {
                continue;
            }
            for c in 0..PER_OBJECT as u64 {
                let g = a.grant_for(url.as_bytes(), &[&c.to_le_bytes()]);
                a.allow_at(g, V2, w, true, t0 + Duration::from_millis(1 + n));
                n += 1;
            }
        }
        let at = t0 + Duration::from_secs(10);
        assert!(pupils.iter().all(|g| a.allowed_within_at(g, &V1, w, at)));
        assert!(a.len() <= PER_SHARD, "{}", a.len());
    }

    #[test]
    fn a_full_object_drops_a_replaced_copys_grants_first() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(3600);
        let early: Vec<Grant> = (0..(PER_OBJECT / 2) as u64)
            .map(|i| a.grant_for(b"paper", &[b"e", &i.to_le_bytes()]))
            .collect();
        for g in &early {
            a.allow_at(*g, V2, w, true, t0);
        }
        // The copy was then replaced by V1, granted to as many, and a few more.
        for i in 0..(PER_OBJECT / 2 + 10) as u64 {
            let g = a.grant_for(b"paper", &[b"l", &i.to_le_bytes()]);
            a.allow_at(g, V1, w, true, t0 + Duration::from_millis(1 + i));
        }
        assert!(early.iter().all(|g| a.current(g).is_none()));
        let g0 = a.grant_for(b"paper", &[b"l", &0u64.to_le_bytes()]);
        assert_eq!(a.current(&g0), Some(V1));
    }

    #[test]
    fn a_full_shard_drops_only_what_expired_when_it_can() {
        let a = Authorizations::new();
        let t0 = Instant::now();
        let w = Duration::from_secs(60);
        // Fill everything long ago (expired by the time the next ones come).
        for i in 0..CAPACITY as u64 {
            let g = a.grant_for(&(i / 8).to_le_bytes(), &[&i.to_le_bytes()]);
            a.allow_at(g, V1, w, true, t0);
        }
        let later = t0 + Duration::from_secs(120);
        let mut recent = Vec::new();
        for i in 0..(CAPACITY / 2) as u64 {
            let g = a.grant_for(&(i / 8).to_le_bytes(), &[b"new", &i.to_le_bytes()]);
            a.allow_at(g, V1, w, true, later + Duration::from_millis(i));
            recent.push(g);
        }
        // Every recent grant survived the evictions (only expired ones were dropped).
        let at = later + Duration::from_secs(1);
        assert!(recent.iter().all(|g| a.allowed_within_at(
            g,
            &V1,
            w,
            at + Duration::from_millis(70)
        )));
        assert!(a.len() <= CAPACITY);
    }
}
