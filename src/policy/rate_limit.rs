//! Keyed rate limits: governor's GCRA over a bounded, sharded key store.
//!
//! Why a custom store under governor: governor decides (the GCRA maths, burst, wait
//! times, clocks we can fake in tests) and calls its `StateStore` to read and replace a
//! key's state. Our store adds two things governor's maps don't have:
//! - **peek then charge**: a route's limits are all checked before any is charged, so a
//!   request refused by the second limit does not burn a token of the first. The mode
//!   travels in the key: in `Peek` mode the store answers the decision without writing.
//! - **bounded memory**: at most `max_keys` keys per limit, whatever the number of
//!   distinct clients (see [`BoundedStore`] for exactly what happens at the cap).
//!
//! Degradation levels tighten a limit by a factor (`check(.., factor)`): the same store
//! backs one governor limiter per factor, so tightening keeps every key's history.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, QuantaClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

/// A rate as ops write it: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: Duration,
}

impl Rate {
    /// Parse `20/s`, `1200/min`, `100/h`, `0.5/s`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let hint = "write it like `20/s`, `1200/min` or `100/h`";
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a rate: {hint}"))?;
        let count: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a rate: `{n}` is not a number; {hint}"))?;
        if !count.is_finite() || count <= 0.0 {
            return Err(format!("`{s}`: the rate must be more than 0"));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            other => return Err(format!("`{s}`: unknown unit `{other}`; {hint}")),
        };
        let r = Rate { count, per };
        if r.interval() < Duration::from_nanos(1) {
            return Err(format!("`{s}` is too fast to measure"));
        }
        if r.interval() > Duration::from_secs(86400 * 365) {
            return Err(format!("`{s}` is too slow (less than one per year)"));
        }
        Ok(r)
    }

    /// Time between two cells at this rate.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.per.as_secs_f64() / self.count)
    }

    /// Cells per second.
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

/// Whether a store call may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Peek,
    Commit,
}

/// The key handed to governor: the hashed client key, the mode, and the offset of the
/// calling limiter's time origin within the store's (limiters for several factors share
/// one store but each counts time from its own creation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StoreKey {
    hash: u64,
    mode: Mode,
    offset: u64,
}

const SHARDS: usize = 16;
/// Keys per slot group: a key lives in one group of 8 slots chosen by its hash.
const WAYS: usize = 8;

/// One slot: a key hash (0 = empty) and its GCRA arrival time.
#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    tat: u64,
}

/// Key state (a GCRA "theoretical arrival time", in ns since the store's epoch) for up to
/// `max_keys` keys, in a fixed table allocated once: 16 mutex-guarded shards of 8-way slot
/// groups (like a CPU cache). Memory is `max_keys × 16 bytes`, whatever the traffic.
///
/// What happens at the cap: a key whose arrival time has passed is indistinguishable
/// from a new key (its bucket is full again), so its slot is free to reuse and dropping it
/// changes no decision; [`Self::sweep`] clears those periodically. When all 8 slots of a
/// new key's group hold keys that are still counting, the new key takes the slot of the
/// *least charged* of them (the one closest to a full bucket). An attacker spraying
/// addresses can therefore, at worst, hand some other client a fresh bucket early; memory
/// never grows, and every key that stays is limited exactly. Evictions are counted.
pub struct BoundedStore {
    shards: Box<[Mutex<Vec<[Slot; WAYS]>>]>,
    groups_per_shard: usize,
    len: AtomicUsize,
    evictions: AtomicUsize,
}

impl BoundedStore {
    pub fn new(max_keys: usize) -> BoundedStore {
        let groups_per_shard = max_keys.div_ceil(SHARDS * WAYS).max(1);
        BoundedStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![[Slot::default(); WAYS]; groups_per_shard]))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            groups_per_shard,
            len: AtomicUsize::new(0),
            evictions: AtomicUsize::new(0),
        }
    }

    /// Shard (top bits) and group (the rest) of a key hash; 0 is the empty marker.
    fn place(&self, hash: u64) -> (usize, usize, u64) {
        let key = hash.max(1);
        let shard = (key >> 60) as usize % SHARDS;
        let group = ((key & 0x0fff_ffff_ffff_ffff) % self.groups_per_shard as u64) as usize;
        (shard, group, key)
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most keys held at once.
    pub fn capacity(&self) -> usize {
        self.groups_per_shard * WAYS * SHARDS
    }

    /// Keys evicted at the cap since creation.
    pub fn evictions(&self) -> usize {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Clear every key whose bucket is full again at `now_ns` (store time). Returns how
    /// many were cleared.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut groups = s.lock().unwrap_or_else(|p| p.into_inner());
            for g in groups.iter_mut() {
                for slot in g.iter_mut() {
                    if slot.key != 0 && slot.tat <= now_ns {
                        *slot = Slot::default();
                        dropped += 1;
                    }
                }
            }
        }
        self.len.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }
}

/// The handle governor owns; all handles of one limit share the store.
struct StoreHandle(Arc<BoundedStore>);

impl StateStore for StoreHandle {
    type Key = StoreKey;

    fn measure_and_replace<T, F, E>(&self, key: &StoreKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let store = &self.0;
        let (shard, group, k) = store.place(key.hash);
        let mut groups = store.shards[shard]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let slots = &mut groups[group];
        let found = slots.iter().position(|s| s.key == k);
        let prev = found.map(|i| Nanos::new(slots[i].tat.saturating_sub(key.offset)));
        let (out, next) = f(prev)?;
        if key.mode == Mode::Commit {
            let abs = next.as_u64().saturating_add(key.offset);
            let i = match found {
                Some(i) => i,
                None => {
                    // An empty slot, else the least charged key of the group.
                    match slots.iter().position(|s| s.key == 0) {
                        Some(i) => {
                            store.len.fetch_add(1, Ordering::Relaxed);
                            i
                        }
                        None => {
                            store.evictions.fetch_add(1, Ordering::Relaxed);
                            slots
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, s)| s.tat)
                                .map(|(i, _)| i)
                                .unwrap_or(0)
                        }
                    }
                }
            };
            slots[i] = Slot { key: k, tat: abs };
        }
        Ok(out)
    }
}

type Governor<C> = RateLimiter<StoreKey, StoreHandle, C, StateInformationMiddleware>;

struct Scaled<C: Clock> {
    /// Factor in thousandths (1000 = the limit as written).
    milli: u32,
    limiter: Governor<C>,
    offset: u64,
    /// For the headers.
    burst: u32,
    interval: Duration,
}

/// One configured limit's state: its store and a governor limiter per factor in use.
pub struct KeyedLimiter<C: Clock = QuantaClock> {
    rate: Rate,
    burst: NonZeroU32,
    clock: C,
    epoch: C::Instant,
    store: Arc<BoundedStore>,
    scaled: Mutex<Vec<Arc<Scaled<C>>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// The outcome of checking one limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests left right now after this one (0 when refused).
    pub remaining: u32,
    /// Burst size of the (possibly tightened) limit: the `q` of `RateLimit-Policy`.
    pub quota: u32,
    /// Seconds for the whole burst to refill from empty: the `w` of `RateLimit-Policy`.
    pub window: Duration,
    /// When refused: how long until one request would pass.
    pub retry_after: Duration,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

impl<C: Clock + Clone> KeyedLimiter<C> {
    pub fn new(rate: Rate, burst: NonZeroU32, max_keys: usize, clock: C) -> KeyedLimiter<C> {
        let epoch = clock.now();
        KeyedLimiter {
            rate,
            burst,
            clock,
            epoch,
            store: Arc::new(BoundedStore::new(max_keys)),
            scaled: Mutex::new(Vec::new()),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn store(&self) -> &Arc<BoundedStore> {
        &self.store
    }

    /// Hash a client key (keyed SipHash, seeded per limiter: an attacker cannot aim at one
    /// shard or collide with another client).
    pub fn key_hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    /// Hash a tagged key (`tag` keeps a cookie value from colliding with an address).
    pub fn key_hash_tagged(&self, tag: u8, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u8(tag);
        h.write(key);
        h.finish()
    }

    fn now_ns(&self) -> u64 {
        let d: Duration = self.clock.now().duration_since(self.epoch).into();
        d.as_nanos() as u64
    }

    /// The governor limiter for a factor (created on first use, kept after).
    fn for_factor(&self, factor: f64) -> Arc<Scaled<C>> {
        let milli = (factor.clamp(0.001, 1.0) * 1000.0).round() as u32;
        let mut v = self.scaled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = v.iter().find(|s| s.milli == milli) {
            return s.clone();
        }
        let f = f64::from(milli) / 1000.0;
        let interval = Duration::from_secs_f64(self.rate.interval().as_secs_f64() / f)
            .max(Duration::from_nanos(1));
        let burst = ((f64::from(self.burst.get()) * f).floor() as u32).max(1);
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        // The offset is read right after governor takes its own origin; the two reads are
        // sub-microsecond apart, far below any rate's interval.
        let limiter: Governor<C> = RateLimiter::<
            StoreKey,
            StoreHandle,
            C,
            governor::middleware::NoOpMiddleware<C::Instant>,
        >::new(
            quota, StoreHandle(self.store.clone()), self.clock.clone()
        )
        .with_middleware::<StateInformationMiddleware>();
        let offset = self.now_ns();
        let s = Arc::new(Scaled {
            milli,
            limiter,
            offset,
            burst,
            interval,
        });
        v.push(s.clone());
        s
    }

    fn decide(&self, hash: u64, factor: f64, mode: Mode) -> Verdict {
        let s = self.for_factor(factor);
        let key = StoreKey {
            hash,
            mode,
            offset: s.offset,
        };
        let window = s.interval * s.burst;
        match s.limiter.check_key(&key) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                let used = s.burst.saturating_sub(remaining);
                Verdict {
                    allowed: true,
                    remaining,
                    quota: s.burst,
                    window,
                    retry_after: Duration::ZERO,
                    reset: s.interval * used,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict {
                    allowed: false,
                    remaining: 0,
                    quota: s.burst,
                    window,
                    retry_after: wait,
                    reset: window.min(wait + s.interval * (s.burst - 1)),
                }
            }
        }
    }

    /// What would happen to a request with this key, without charging it.
    pub fn peek(&self, hash: u64, factor: f64) -> Verdict {
        self.decide(hash, factor, Mode::Peek)
    }

    /// Charge one request to this key. Call only after every limit of the route said yes
    /// in [`Self::peek`]. Under a race with another request of the same key the charge can
    /// find the bucket empty; the request is then let through uncharged (overshoot of at
    /// most one request per concurrent racer).
    pub fn commit(&self, hash: u64, factor: f64) -> Verdict {
        self.decide(hash, factor, Mode::Commit)
    }

    /// Peek and commit in one go (a route with a single limit).
    pub fn check(&self, hash: u64, factor: f64) -> Verdict {
        let v = self.peek(hash, factor);
        if v.allowed {
            self.commit(hash, factor)
        } else {
            v
        }
    }

    /// Forget keys whose bucket is full again.
    pub fn sweep(&self) -> usize {
        self.store.sweep(self.now_ns())
    }
}

/// Limiters by (route, limit name), kept across reloads: a limit whose definition did
/// not change keeps its buckets; a changed one starts fresh.
#[derive(Default)]
pub struct LimiterRegistry {
    live: Mutex<HashMap<LimitId, (String, Arc<KeyedLimiter>)>>,
}

/// (route name, limit name).
pub type LimitId = (String, String);

/// A live limiter with its definition fingerprint.
pub type LiveLimiter = (LimitId, String, Arc<KeyedLimiter>);

impl LimiterRegistry {
    /// The live limiter for this definition, or a new one (not recorded until
    /// [`Self::publish`], so a rejected config never disturbs the running buckets).
    pub fn get_or_new(
        &self,
        route: &str,
        name: &str,
        fingerprint: &str,
        make: impl FnOnce() -> KeyedLimiter,
    ) -> Arc<KeyedLimiter> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&(route.to_string(), name.to_string())) {
            Some((fp, l)) if fp == fingerprint => l.clone(),
            _ => Arc::new(make()),
        }
    }

    /// Record the limiters of the config that just went live, forgetting the others.
    pub fn publish(&self, limiters: Vec<LiveLimiter>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.clear();
        for (k, fp, l) in limiters {
            live.insert(k, (fp, l));
        }
    }
}

/// The address a client is counted under: IPv4 as is (or to `v4_prefix`), IPv6
/// aggregated to `v6_prefix` bits (a /64 is one home or phone; counting each of its 2^64
/// addresses apart would let one device dodge any limit).
pub fn aggregate_ip(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> [u8; 17] {
    let mut out = [0u8; 17];
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let p = u32::from(v4_prefix.min(32));
            let masked = if p == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - p))
            };
            out[0] = 4;
            out[1..5].copy_from_slice(&masked.to_be_bytes());
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return aggregate_ip(IpAddr::V4(v4), v4_prefix, v6_prefix);
            }
            let bits = u128::from(v6);
            let p = u32::from(v6_prefix.min(128));
            let masked = if p == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - p))
            };
            out[0] = 6;
            out[1..17].copy_from_slice(&masked.to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use proptest::prelude::*;

    fn limiter(
        rate: &str,
        burst: u32,
        max_keys: usize,
    ) -> (KeyedLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::new(
            Rate::parse(rate).expect("rate"),
            NonZeroU32::new(burst).expect("burst"),
            max_keys,
            clock.clone(),
        );
        (l, clock)
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("20/s").expect("r").interval(),
            Duration::from_millis(50)
        );
        assert_eq!(
            Rate::parse("1200/min").expect("r").interval(),
            Duration::from_millis(50)
        );
        assert_eq!(
            Rate::parse("2/h").expect("r").interval(),
            Duration::from_secs(1800)
        );
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("-1/s").is_err());
        assert!(Rate::parse("20").is_err());
        assert!(Rate::parse("20/fortnight").is_err());
        assert!(Rate::parse("NaN/s").is_err());
        assert!(Rate::parse("inf/s").is_err());
    }

    #[test]
    fn burst_then_refill_with_headers() {
        let (l, clock) = limiter("10/s", 3, 100);
        let k = l.key_hash(b"a");
        let v = l.check(k, 1.0);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.quota), (2, 3));
        assert!(l.check(k, 1.0).allowed);
        assert!(l.check(k, 1.0).allowed);
        let v = l.check(k, 1.0);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert!(l.check(k, 1.0).allowed);
        // Other keys are independent.
        assert!(l.check(l.key_hash(b"b"), 1.0).allowed);
    }

    #[test]
    fn peek_does_not_charge() {
        let (l, _clock) = limiter("1/s", 1, 100);
        let k = l.key_hash(b"a");
        for _ in 0..10 {
            assert!(l.peek(k, 1.0).allowed);
        }
        assert!(l.commit(k, 1.0).allowed);
        assert!(!l.peek(k, 1.0).allowed);
    }

    #[test]
    fn factor_tightens_and_keeps_history() {
        let (l, clock) = limiter("10/s", 10, 100);
        let k = l.key_hash(b"a");
        // Halved: burst 5.
        let admitted = (0..20).filter(|_| l.check(k, 0.5).allowed).count();
        assert_eq!(admitted, 5);
        // Back to normal: the key's history is kept (it is not a fresh burst of 10).
        let more = (0..20).filter(|_| l.check(k, 1.0).allowed).count();
        assert!(more < 10, "{more}");
        clock.advance(Duration::from_secs(10));
        assert_eq!((0..20).filter(|_| l.check(k, 1.0).allowed).count(), 10);
    }

    #[test]
    fn memory_is_capped_and_swept() {
        let (l, clock) = limiter("1/s", 1, 1600);
        for i in 0..100_000u32 {
            let v = l.check(l.key_hash(&i.to_be_bytes()), 1.0);
            assert!(v.allowed, "fresh keys are always allowed");
        }
        let cap = l.store().capacity();
        assert!(
            (1600..1600 + 128).contains(&cap),
            "cap {cap} is max_keys rounded up to 128"
        );
        assert_eq!(l.store().len(), cap, "{}", l.store().len());
        assert_eq!(l.store().evictions(), 100_000 - cap);
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.sweep(), cap);
        assert!(l.store().is_empty());
    }

    #[test]
    fn ipv6_aggregates_to_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(aggregate_ip(a, 32, 64), aggregate_ip(b, 32, 64));
        assert_ne!(aggregate_ip(a, 32, 64), aggregate_ip(c, 32, 64));
        assert_ne!(aggregate_ip(a, 32, 128), aggregate_ip(b, 32, 128));
        let m: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let v4: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(aggregate_ip(m, 32, 64), aggregate_ip(v4, 32, 64));
        let v4b: IpAddr = "192.0.2.200".parse().expect("ip");
        assert_eq!(aggregate_ip(v4, 24, 64), aggregate_ip(v4b, 24, 64));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Over any arrival pattern, admitted ≤ rate × elapsed + burst (+1 for rounding).
        #[test]
        fn never_admits_more_than_rate_times_time_plus_burst(
            per_sec in 1u32..200,
            burst in 1u32..50,
            gaps_us in proptest::collection::vec(0u64..200_000, 1..400),
        ) {
            let (l, clock) = limiter(&format!("{per_sec}/s"), burst, 16);
            let k = l.key_hash(b"k");
            let mut admitted = 0u64;
            let mut elapsed = Duration::ZERO;
            for g in gaps_us {
                clock.advance(Duration::from_micros(g));
                elapsed += Duration::from_micros(g);
                if l.check(k, 1.0).allowed {
                    admitted += 1;
                }
            }
            let bound = f64::from(per_sec) * elapsed.as_secs_f64() + f64::from(burst) + 1.0;
            prop_assert!(admitted as f64 <= bound, "admitted {admitted} > bound {bound}");
        }

        /// A client that never goes faster than the rate is never refused.
        #[test]
        fn steady_client_under_the_rate_is_never_refused(
            per_sec in 1u32..1000,
            burst in 1u32..50,
            slack_us in 0u64..10_000,
            n in 1usize..300,
        ) {
            let (l, clock) = limiter(&format!("{per_sec}/s"), burst, 16);
            let k = l.key_hash(b"k");
            let gap = Duration::from_secs_f64(1.0 / f64::from(per_sec)) + Duration::from_micros(slack_us);
            for i in 0..n {
                prop_assert!(l.check(k, 1.0).allowed, "refused at request {i}");
                clock.advance(gap);
            }
        }

        /// Peeking never changes a later decision.
        #[test]
        fn peeks_are_free(peeks in 0usize..50, burst in 1u32..10) {
            let (l, _clock) = limiter("1/h", burst, 16);
            let k = l.key_hash(b"k");
            for _ in 0..peeks {
                let _ = l.peek(k, 1.0);
            }
            let admitted = (0..burst + 5).filter(|_| l.check(k, 1.0).allowed).count();
            prop_assert_eq!(admitted, burst as usize);
        }
    }
}
