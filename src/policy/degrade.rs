//! Degradation levels: signals → level (with hysteresis) → features switched off.
//!
//! Levels are declared in order (`normal`, `busy`, `critical`…). Level `i ≥ 1` has enter
//! thresholds (any one exceeded is enough to go up to it) and exit thresholds (all must be
//! back under to come down from it), and the level must have been held for `min_hold`
//! before any move. The level moves one step at a time, so a spike cannot jump from normal
//! to survival and an oscillating signal cannot make it flap. Ops may force a level, or a
//! feature on or off, with an optional expiry. Times are unix ms passed by the caller.

use std::collections::HashMap;
use std::time::Duration;

use super::signals::{outliers, Exchange, Failure, CLIENT_KEYS, URL_KEYS};

/// What ecluse measures, worst origin first (see `Signals::worst`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// In-flight requests over the origin's hard maximum (0..1+).
    pub inflight_ratio: f64,
    /// 95th percentile latency of the origin's answers over the sliding window, ms.
    pub p95_ms: f64,
    /// Share of exchanges that failed (5xx from the origin, errors, time-outs), 0..1.
    pub error_rate: f64,
    /// Students waiting in waiting rooms.
    pub queue_depth: f64,
}

impl Signals {
    /// The element-wise worst of several origins' signals.
    pub fn worst(a: Signals, b: Signals) -> Signals {
        Signals {
            inflight_ratio: a.inflight_ratio.max(b.inflight_ratio),
            p95_ms: a.p95_ms.max(b.p95_ms),
            error_rate: a.error_rate.max(b.error_rate),
            queue_depth: a.queue_depth.max(b.queue_depth),
        }
    }
}

/// Thresholds on each signal; `None` ignores the signal.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub inflight_ratio: Option<f64>,
    pub p95_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub queue_depth: Option<f64>,
}

impl Thresholds {
    fn pairs(&self, s: &Signals) -> [(Option<f64>, f64, &'static str); 4] {
        [
            (self.inflight_ratio, s.inflight_ratio, "inflight_ratio"),
            (self.p95_ms, s.p95_ms, "p95_ms"),
            (self.error_rate, s.error_rate, "error_rate"),
            (self.queue_depth, s.queue_depth, "queue_depth"),
        ]
    }

    /// The first signal at or above its threshold, as a reason.
    pub fn exceeded(&self, s: &Signals) -> Option<String> {
        self.pairs(s).into_iter().find_map(|(t, v, name)| match t {
            Some(t) if v >= t => Some(format!("{name} {v:.3} >= {t}")),
            _ => None,
        })
    }

    /// Every signal with a threshold is under it.
    pub fn all_below(&self, s: &Signals) -> bool {
        self.pairs(s)
            .into_iter()
            .all(|(t, v, _)| t.is_none_or(|t| v < t))
    }

    pub fn is_empty(&self) -> bool {
        self.pairs(&Signals::default())
            .iter()
            .all(|(t, _, _)| t.is_none())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub name: String,
    /// Feature names switched off at this level.
    pub disable: Vec<String>,
    /// Factor on waiting-room capacity (active users and pace), 0 < f <= 1.
    pub room_factor: f64,
    /// Factor on rate limits, 0 < f <= 1.
    pub rate_factor: f64,
    /// Serve stale cache entries whatever their age.
    pub serve_stale: bool,
    /// Least time at this level before moving again; `None`: the global hold.
    pub hold: Option<Duration>,
    pub enter: Thresholds,
    pub exit: Thresholds,
}

/// A level change, for the log and the counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// The level state machine.
#[derive(Debug, Clone)]
pub struct Degrader {
    /// The level the signals put us at.
    auto: usize,
    since_ms: u64,
    /// Forced by ops: (level, expiry).
    forced: Option<(usize, Option<u64>)>,
    /// Feature forced on (true) or off (false), with expiry.
    features: HashMap<String, (bool, Option<u64>)>,
    /// The level in force at the last step or force, to report changes (a forced level
    /// that expires between two steps is reported at the next one).
    in_force: usize,
    /// Fleet mode: the highest automatic level of the other nodes. The level in force is
    /// at least this, so every node of a fleet switches the same features off.
    fleet_floor: usize,
}

impl Degrader {
    pub fn new(now_ms: u64) -> Degrader {
        Degrader {
            auto: 0,
            since_ms: now_ms,
            forced: None,
            features: HashMap::new(),
            in_force: 0,
            fleet_floor: 0,
        }
    }

    /// The level in force (forced, else automatic).
    pub fn level(&self, now_ms: u64) -> usize {
        match self.forced {
            Some((l, exp)) if exp.is_none_or(|e| now_ms < e) => l,
            _ => self.auto.max(self.fleet_floor),
        }
    }

    /// Fleet mode: raise (or lower) the floor set by the other nodes' automatic levels.
    /// Returns the change of the level in force, if any.
    pub fn set_fleet_floor(&mut self, floor: usize, now_ms: u64) -> Option<Change> {
        self.fleet_floor = floor;
        let before = self.in_force;
        let after = self.level(now_ms);
        self.in_force = after;
        (before != after).then(|| Change {
            from: before,
            to: after,
            reason: format!("another node of the fleet is at level {floor}"),
        })
    }

    pub fn auto_level(&self) -> usize {
        self.auto
    }

    pub fn forced(&self, now_ms: u64) -> Option<(usize, Option<u64>)> {
        self.forced
            .filter(|(_, exp)| exp.is_none_or(|e| now_ms < e))
    }

    /// Force a level (None: back to automatic). Returns the change, if the level in
    /// force changed.
    pub fn force(
        &mut self,
        level: Option<usize>,
        until_ms: Option<u64>,
        now_ms: u64,
        who: &str,
    ) -> Option<Change> {
        let before = self.in_force;
        self.forced = level.map(|l| (l, until_ms));
        let after = self.level(now_ms);
        self.in_force = after;
        (before != after).then(|| Change {
            from: before,
            to: after,
            reason: match level {
                Some(_) => format!("forced by {who}"),
                None => format!("back to automatic ({who})"),
            },
        })
    }

    /// Force a feature on or off (None: follow the level). Returns whether the override
    /// changed.
    pub fn force_feature(
        &mut self,
        feature: &str,
        on: Option<bool>,
        until_ms: Option<u64>,
    ) -> bool {
        match on {
            Some(v) => {
                self.features.insert(feature.to_string(), (v, until_ms)) != Some((v, until_ms))
            }
            None => self.features.remove(feature).is_some(),
        }
    }

    /// Drop the feature overrides whose expiry has come; returns them (feature, forced
    /// on), for the log and the counters.
    pub fn expire_features(&mut self, now_ms: u64) -> Vec<(String, bool)> {
        let mut gone: Vec<(String, bool)> = self
            .features
            .iter()
            .filter(|(_, (_, exp))| exp.is_some_and(|e| now_ms >= e))
            .map(|(f, (on, _))| (f.clone(), *on))
            .collect();
        gone.sort();
        for (f, _) in &gone {
            self.features.remove(f);
        }
        gone
    }

    /// Forced features still in force.
    pub fn feature_overrides(&self, now_ms: u64) -> Vec<(String, bool, Option<u64>)> {
        let mut v: Vec<_> = self
            .features
            .iter()
            .filter(|(_, (_, exp))| exp.is_none_or(|e| now_ms < e))
            .map(|(k, (on, exp))| (k.clone(), *on, *exp))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Whether a feature is on at `now_ms`.
    pub fn feature_on(&self, levels: &[Level], feature: &str, now_ms: u64) -> bool {
        if let Some((on, exp)) = self.features.get(feature) {
            if exp.is_none_or(|e| now_ms < e) {
                return *on;
            }
        }
        let l = self.level(now_ms).min(levels.len().saturating_sub(1));
        !levels
            .get(l)
            .is_some_and(|lv| lv.disable.iter().any(|f| f == feature))
    }

    /// One evaluation of the signals. Moves the automatic level at most one step, after
    /// the current level's hold (its own, else `min_hold`). Returns the change of the level *in force*, if any
    /// (a forced level hides automatic moves, which still happen underneath).
    pub fn step(
        &mut self,
        levels: &[Level],
        s: &Signals,
        now_ms: u64,
        min_hold: Duration,
    ) -> Option<Change> {
        let before = self.in_force;
        if self
            .forced
            .is_some_and(|(_, exp)| exp.is_some_and(|e| now_ms >= e))
        {
            self.forced = None;
        }
        self.features
            .retain(|_, (_, exp)| exp.is_none_or(|e| now_ms < e));
        // The level we are at says how long it must be held (its own `hold`, else the
        // global one).
        let hold = levels
            .get(self.auto)
            .and_then(|l| l.hold)
            .unwrap_or(min_hold);
        let held = now_ms.saturating_sub(self.since_ms) >= hold.as_millis() as u64;
        let mut reason = None;
        if held {
            if let Some(next) = levels.get(self.auto + 1) {
                if let Some(why) = next.enter.exceeded(s) {
                    self.auto += 1;
                    self.since_ms = now_ms;
                    reason = Some(why);
                }
            }
            if reason.is_none() && self.auto > 0 {
                if let Some(cur) = levels.get(self.auto) {
                    if cur.exit.all_below(s) {
                        self.auto -= 1;
                        self.since_ms = now_ms;
                        reason = Some("signals back under the exit thresholds".to_string());
                    }
                }
            }
        }
        if self.auto >= levels.len() && !levels.is_empty() {
            self.auto = levels.len() - 1;
        }
        let after = self.level(now_ms);
        self.in_force = after;
        (before != after).then(|| Change {
            from: before,
            to: after,
            reason: reason.unwrap_or_else(|| "forced level expired".to_string()),
        })
    }
}

/// Latencies and outcomes of one origin over a sliding window of `SLOTS` × 1 s.
///
/// Latencies go into log-spaced buckets (10% apart), so a percentile is exact to
/// within one bucket's width. Every slot keeps them per client key, and the failures per
/// client key and per URL key (`policy::signals`), so that what one client or one URL
/// brings can be told from what the whole traffic shows: the signals
/// ([`Window::measure`]) leave out the keys whose share is a gross outlier. Memory is
/// fixed: about 11 KB per slot.
#[derive(Debug, Clone)]
pub struct Window {
    slots: Vec<Slot>,
    /// Second of the first slot's data (unix s).
    head_sec: u64,
}

const SLOTS: usize = 10;
const LAT_BUCKETS: usize = 168;

#[derive(Debug, Clone, Copy, Default)]
struct UrlTally {
    total: u32,
    failed: u32,
    deterministic: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    sec: u64,
    /// Latency histogram per client key.
    lat: Box<[[u32; LAT_BUCKETS]; CLIENT_KEYS]>,
    /// (exchanges, failures) per client key.
    clients: [(u32, u32); CLIENT_KEYS],
    urls: [UrlTally; URL_KEYS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            sec: 0,
            lat: Box::new([[0; LAT_BUCKETS]; CLIENT_KEYS]),
            clients: [(0, 0); CLIENT_KEYS],
            urls: [UrlTally::default(); URL_KEYS],
        }
    }
}

impl Slot {
    fn total(&self) -> u32 {
        self.clients.iter().map(|(t, _)| *t).sum()
    }

    fn reset(&mut self, sec: u64) {
        self.sec = sec;
        for h in self.lat.iter_mut() {
            h.fill(0);
        }
        self.clients = [(0, 0); CLIENT_KEYS];
        self.urls = [UrlTally::default(); URL_KEYS];
    }
}

fn bucket_of(ms: f64) -> usize {
    // 0.1 ms → bucket 0, ×1.1 per bucket: bucket 167 ≈ 15 min.
    if ms.is_nan() || ms <= 0.1 {
        return 0;
    }
    (((ms / 0.1).ln() / 1.1f64.ln()) as usize).min(LAT_BUCKETS - 1)
}

fn bucket_upper_ms(b: usize) -> f64 {
    0.1 * 1.1f64.powi(b as i32 + 1)
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: vec![Slot::default(); SLOTS],
            head_sec: 0,
        }
    }
}

/// What an origin's window says, with the outlier keys left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// The quantile asked for (p95 for the levels), ms; 0 when empty.
    pub quantile_ms: f64,
    /// Share of failed exchanges, 0..1.
    pub error_rate: f64,
    /// Exchanges in the window (all of them).
    pub count: u64,
    /// The same two over every exchange, outliers included (for the admin API).
    pub raw_quantile_ms: f64,
    pub raw_error_rate: f64,
    /// Client keys left out of the error rate or the latency.
    pub client_outliers: u64,
    /// URL keys whose deterministic failures were left out.
    pub url_outliers: u64,
}

/// Window totals: latency histograms and (exchanges, failures) per client key, and
/// (exchanges, failures, deterministic failures) per URL key.
struct Sums {
    lat: Vec<[u64; LAT_BUCKETS]>,
    clients: [(u64, u64); CLIENT_KEYS],
    urls: [(u64, u64, u64); URL_KEYS],
}

/// The `q` quantile of a histogram with `total` samples, as a bucket index.
fn quantile_bucket(h: &[u64; LAT_BUCKETS], total: u64, q: f64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, c) in h.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(b);
        }
    }
    Some(LAT_BUCKETS - 1)
}

/// The merged histogram of the client keys not in `mask`.
fn merged(lat: &[[u64; LAT_BUCKETS]], mask: u64) -> ([u64; LAT_BUCKETS], u64) {
    let mut m = [0u64; LAT_BUCKETS];
    for (k, h) in lat.iter().enumerate() {
        if mask & (1 << k) == 0 {
            for (a, c) in m.iter_mut().zip(h.iter()) {
                *a += c;
            }
        }
    }
    let total = m.iter().sum();
    (m, total)
}

impl Window {
    fn slot(&mut self, now_ms: u64) -> &mut Slot {
        let sec = now_ms / 1000;
        self.head_sec = self.head_sec.max(sec);
        let s = &mut self.slots[(sec % SLOTS as u64) as usize];
        if s.sec != sec {
            s.reset(sec);
        }
        s
    }

    /// Record one exchange with the origin, all of it under one client and one URL (the
    /// shorthand of tests and of callers that know neither).
    pub fn record(&mut self, now_ms: u64, latency: Duration, error: bool) {
        self.record_exchange(
            now_ms,
            &Exchange {
                latency_ms: latency.as_secs_f64() * 1000.0,
                failure: error.then_some(Failure::Overload),
                client: 0,
                url: 0,
            },
        );
    }

    /// Record one exchange with the origin under its client and URL keys.
    pub fn record_exchange(&mut self, now_ms: u64, x: &Exchange) {
        let b = bucket_of(x.latency_ms);
        let c = usize::from(x.client) % CLIENT_KEYS;
        let u = usize::from(x.url) % URL_KEYS;
        let s = self.slot(now_ms);
        s.lat[c][b] = s.lat[c][b].saturating_add(1);
        let failed = u32::from(x.failure.is_some());
        let det = u32::from(x.failure == Some(Failure::Deterministic));
        let ct = &mut s.clients[c];
        *ct = (ct.0.saturating_add(1), ct.1.saturating_add(failed));
        let ut = &mut s.urls[u];
        ut.total = ut.total.saturating_add(1);
        ut.failed = ut.failed.saturating_add(failed);
        ut.deterministic = ut.deterministic.saturating_add(det);
    }

    fn live(&self, now_ms: u64) -> impl Iterator<Item = &Slot> {
        self.recent(now_ms, SLOTS as u64)
    }

    fn recent(&self, now_ms: u64, secs: u64) -> impl Iterator<Item = &Slot> {
        let sec = now_ms / 1000;
        self.slots
            .iter()
            .filter(move |s| s.sec + secs > sec && s.sec <= sec && s.total() > 0)
    }

    fn sums(&self, now_ms: u64, secs: u64) -> Sums {
        let mut out = Sums {
            lat: vec![[0u64; LAT_BUCKETS]; CLIENT_KEYS],
            clients: [(0, 0); CLIENT_KEYS],
            urls: [(0, 0, 0); URL_KEYS],
        };
        for s in self.recent(now_ms, secs) {
            for (m, h) in out.lat.iter_mut().zip(s.lat.iter()) {
                for (a, c) in m.iter_mut().zip(h.iter()) {
                    *a += u64::from(*c);
                }
            }
            for (m, c) in out.clients.iter_mut().zip(s.clients.iter()) {
                m.0 += u64::from(c.0);
                m.1 += u64::from(c.1);
            }
            for (m, u) in out.urls.iter_mut().zip(s.urls.iter()) {
                m.0 += u64::from(u.total);
                m.1 += u64::from(u.failed);
                m.2 += u64::from(u.deterministic);
            }
        }
        out
    }

    /// The `q` quantile over the last `secs` seconds only (a control loop must not
    /// react to what the 10 s window still remembers), with the sample count.
    pub fn recent_quantile_ms(&self, now_ms: u64, q: f64, secs: u64) -> (f64, u64) {
        self.recent_quantile_ms_without(now_ms, q, secs, 0)
    }

    /// [`recent_quantile_ms`](Self::recent_quantile_ms) without the client keys of
    /// `mask` (those the signals left out: one client's slow requests do not move an
    /// `auto` waiting room either).
    pub fn recent_quantile_ms_without(
        &self,
        now_ms: u64,
        q: f64,
        secs: u64,
        mask: u64,
    ) -> (f64, u64) {
        let s = self.sums(now_ms, secs);
        let (m, total) = merged(&s.lat, mask);
        match quantile_bucket(&m, total, q) {
            Some(b) => (bucket_upper_ms(b), total),
            None => (0.0, 0),
        }
    }

    /// Exchanges in the window.
    pub fn count(&self, now_ms: u64) -> u64 {
        self.live(now_ms).map(|s| u64::from(s.total())).sum()
    }

    /// Share of failed exchanges in the window, outlier keys left out (0 when none).
    pub fn error_rate(&self, now_ms: u64) -> f64 {
        self.measure(now_ms, 0.95).error_rate
    }

    /// The `q` quantile of latency in ms (upper bound of its bucket), outlier client keys
    /// left out; 0 when empty.
    pub fn quantile_ms(&self, now_ms: u64, q: f64) -> f64 {
        self.measure(now_ms, q).quantile_ms
    }

    /// The window's signals, each without the keys that are gross outliers of it
    /// (`policy::signals::outliers`):
    /// - latency: a client key is judged on how many of its answers are slower than the
    ///   other keys' `q` quantile;
    /// - failures: a client key on its failures against the other keys' rate, and a URL
    ///   key on its deterministic failures against the other URLs'; the error rate is the
    ///   lower of the two views (each leaves its outliers' exchanges out entirely).
    pub fn measure(&self, now_ms: u64, q: f64) -> Measured {
        let s = self.sums(now_ms, SLOTS as u64);
        let count: u64 = s.clients.iter().map(|(t, _)| *t).sum();
        if count == 0 {
            return Measured::default();
        }
        let failed: u64 = s.clients.iter().map(|(_, f)| *f).sum();
        let raw_error_rate = failed as f64 / count as f64;
        let (all, _) = merged(&s.lat, 0);
        let raw_quantile_ms = quantile_bucket(&all, count, q)
            .map(bucket_upper_ms)
            .unwrap_or(0.0);

        // Failures by client.
        let by_client: Vec<(f64, f64)> = s
            .clients
            .iter()
            .map(|(t, f)| (*t as f64, *f as f64))
            .collect();
        let client_fail = outliers(&by_client, true);
        let rate_without = |tallies: &mut dyn Iterator<Item = (u64, u64, bool)>| {
            let (t, f) = tallies
                .filter(|(_, _, out)| !out)
                .fold((0u64, 0u64), |(t, f), (a, b, _)| (t + a, f + b));
            if t == 0 {
                raw_error_rate
            } else {
                f as f64 / t as f64
            }
        };
        let by_client_rate = rate_without(
            &mut s
                .clients
                .iter()
                .enumerate()
                .map(|(k, (t, f))| (*t, *f, client_fail & (1 << k) != 0)),
        );
        // Deterministic failures by URL.
        let by_url: Vec<(f64, f64)> = s
            .urls
            .iter()
            .map(|(t, _, d)| (*t as f64, *d as f64))
            .collect();
        let url_fail = outliers(&by_url, true);
        let by_url_rate = rate_without(
            &mut s
                .urls
                .iter()
                .enumerate()
                .map(|(k, (t, f, _))| (*t, *f, url_fail & (1 << k) != 0)),
        );

        // Latency by client: how many answers of each key are slower than the others'
        // quantile, judged like failures (the slow share of the others is about 1 − q).
        let mut client_slow = 0u64;
        for _ in 0..CLIENT_KEYS / 2 {
            let (m, _) = merged(&s.lat, client_slow);
            let mut tallies = vec![(0.0, 0.0); CLIENT_KEYS];
            let mut slow_rest = vec![(0.0, 0.0); CLIENT_KEYS];
            for (k, h) in s.lat.iter().enumerate() {
                if client_slow & (1 << k) != 0 {
                    continue;
                }
                let t: u64 = h.iter().sum();
                if t == 0 {
                    continue;
                }
                let mut rest = m;
                for (a, c) in rest.iter_mut().zip(h.iter()) {
                    *a -= c;
                }
                let rest_t: u64 = rest.iter().sum();
                let Some(qb) = quantile_bucket(&rest, rest_t, q) else {
                    continue;
                };
                let slow: u64 = h[qb + 1..].iter().sum();
                let rest_slow: u64 = rest[qb + 1..].iter().sum();
                tallies[k] = (t as f64, slow as f64);
                slow_rest[k] = (rest_t as f64, rest_slow as f64);
            }
            // The worst key against its own rest (each key has its own quantile to beat).
            let mut worst: Option<(usize, f64)> = None;
            for k in 0..CLIENT_KEYS {
                let ((t, slow), (rt, rs)) = (tallies[k], slow_rest[k]);
                if slow <= 0.0 || rt <= 0.0 {
                    continue;
                }
                let pair = [(t, slow), (rt, rs)];
                if outliers(&pair, true) & 1 != 0 {
                    let excess = slow / t - rs / rt;
                    if worst.is_none_or(|(_, e)| excess > e) {
                        worst = Some((k, excess));
                    }
                }
            }
            let active = s.lat.iter().filter(|h| h.iter().any(|c| *c > 0)).count();
            match worst {
                Some((k, _)) if (client_slow.count_ones() as usize) < active / 2 => {
                    client_slow |= 1 << k
                }
                _ => break,
            }
        }
        let (kept, kept_total) = merged(&s.lat, client_slow);
        let quantile_ms = quantile_bucket(&kept, kept_total, q)
            .map(bucket_upper_ms)
            .unwrap_or(raw_quantile_ms);

        Measured {
            quantile_ms,
            error_rate: by_client_rate.min(by_url_rate),
            count,
            raw_quantile_ms,
            raw_error_rate,
            client_outliers: client_fail | client_slow,
            url_outliers: url_fail,
        }
    }

    /// Each client key's (exchanges, failures) over the window.
    pub fn client_tallies(&self, now_ms: u64) -> [(u64, u64); CLIENT_KEYS] {
        let mut out = [(0u64, 0u64); CLIENT_KEYS];
        for s in self.live(now_ms) {
            for (m, c) in out.iter_mut().zip(s.clients.iter()) {
                m.0 += u64::from(c.0);
                m.1 += u64::from(c.1);
            }
        }
        out
    }
}

/// The message of a switched-off feature.
#[derive(Debug, Clone)]
pub struct FeatureMessage {
    /// The name pupils know the feature by (`name_fr` / `name_en`), never the internal one.
    pub name_fr: Option<String>,
    pub name_en: Option<String>,
    pub fr: String,
    pub en: String,
    pub retry_after: Duration,
    /// Grace before what is open on the feature's routes is closed once it is switched
    /// off (`drain`); `None`: never.
    pub drain: Option<Duration>,
}

/// The message of a switched-off feature when ops wrote none: its display name when
/// given, never its internal name (pupils do not know the word `visio`).
pub fn default_message(name: Option<&str>, fr: bool) -> String {
    match (name, fr) {
        (Some(n), true) => format!("« {n} » est en pause pendant que le site est très chargé."),
        (None, true) => "Ce service est en pause pendant que le site est très chargé.".into(),
        (Some(n), false) => format!("“{n}” is paused while the site is very busy."),
        (None, false) => "This service is paused while the site is very busy.".into(),
    }
}

/// `drain` when the file says nothing.
pub const DEFAULT_DRAIN: Option<Duration> = Some(Duration::from_secs(30));

/// Degradation settings of a config.
#[derive(Debug, Clone)]
pub struct Degradation {
    pub levels: Vec<Level>,
    pub hold: Duration,
    /// `force_level` of the file: the level and its expiry (unix ms).
    pub force_level: Option<(usize, Option<u64>)>,
    /// `force_features` of the file: feature, forced on, expiry (unix ms).
    pub force_features: Vec<(String, bool, Option<u64>)>,
    pub messages: HashMap<String, FeatureMessage>,
    /// Every feature named by a route or a level.
    pub features: Vec<String>,
}

impl Degradation {
    pub fn message(&self, feature: &str) -> FeatureMessage {
        self.messages
            .get(feature)
            .cloned()
            .unwrap_or_else(|| FeatureMessage {
                name_fr: None,
                name_en: None,
                fr: default_message(None, true),
                en: default_message(None, false),
                retry_after: Duration::from_secs(300),
                drain: DEFAULT_DRAIN,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Vec<Level> {
        let l = |name: &str, disable: &[&str], enter: f64, exit: f64| Level {
            name: name.into(),
            disable: disable.iter().map(|s| s.to_string()).collect(),
            room_factor: 1.0,
            rate_factor: 1.0,
            serve_stale: false,
            hold: None,
            enter: Thresholds {
                inflight_ratio: Some(enter),
                ..Thresholds::default()
            },
            exit: Thresholds {
                inflight_ratio: Some(exit),
                ..Thresholds::default()
            },
        };
        vec![
            l("normal", &[], 0.0, 0.0),
            l("busy", &["visio"], 0.8, 0.6),
            l("critical", &["visio", "chat"], 0.95, 0.8),
        ]
    }

    fn sig(r: f64) -> Signals {
        Signals {
            inflight_ratio: r,
            ..Signals::default()
        }
    }

    const HOLD: Duration = Duration::from_secs(10);

    #[test]
    fn one_step_at_a_time_with_hold() {
        let lv = levels();
        let mut d = Degrader::new(0);
        // Held long enough at normal; a huge spike moves one step only.
        let c = d.step(&lv, &sig(1.0), 10_000, HOLD).expect("change");
        assert_eq!((c.from, c.to), (0, 1));
        assert!(c.reason.contains("inflight_ratio"));
        // Not held yet at busy: stays.
        assert_eq!(d.step(&lv, &sig(1.0), 15_000, HOLD), None);
        assert_eq!(d.step(&lv, &sig(1.0), 20_000, HOLD).map(|c| c.to), Some(2));
        assert!(!d.feature_on(&lv, "chat", 20_000));
        // Recovery: under critical's exit (0.8) → down to busy, then under busy's (0.6).
        assert_eq!(d.step(&lv, &sig(0.7), 30_000, HOLD).map(|c| c.to), Some(1));
        assert!(d.feature_on(&lv, "chat", 30_000));
        assert!(!d.feature_on(&lv, "visio", 30_000));
        assert_eq!(
            d.step(&lv, &sig(0.7), 40_000, HOLD),
            None,
            "0.7 is above busy's exit"
        );
        assert_eq!(d.step(&lv, &sig(0.5), 40_000, HOLD).map(|c| c.to), Some(0));
        assert!(d.feature_on(&lv, "visio", 40_000));
    }

    #[test]
    fn no_flapping_around_a_threshold() {
        let lv = levels();
        let mut d = Degrader::new(0);
        let mut changes = 0;
        // A signal oscillating around busy's enter threshold every 100 ms for 10 min.
        for i in 0..6000u64 {
            let r = if i % 2 == 0 { 0.79 } else { 0.81 };
            if d.step(&lv, &sig(r), i * 100, HOLD).is_some() {
                changes += 1;
            }
        }
        assert_eq!(
            changes, 1,
            "enters busy once and stays: 0.79 is above the exit (0.6)"
        );
        assert_eq!(d.level(600_000), 1);
    }

    /// `normal` and `busy` with the given thresholds.
    fn two(enter: Thresholds, exit: Thresholds) -> Vec<Level> {
        let mut lv = levels();
        lv.truncate(2);
        lv[1].enter = enter;
        lv[1].exit = exit;
        lv
    }

    /// The signals an origin's window gives at `now` (fake clock, ms).
    fn measured(w: &Window, now: u64) -> Signals {
        Signals {
            p95_ms: w.quantile_ms(now, 0.95),
            error_rate: w.error_rate(now),
            ..Signals::default()
        }
    }

    #[test]
    fn p95_latency_thresholds_through_the_window() {
        let lv = two(
            Thresholds {
                p95_ms: Some(800.0),
                ..Thresholds::default()
            },
            Thresholds {
                p95_ms: Some(300.0),
                ..Thresholds::default()
            },
        );
        let mut d = Degrader::new(0);
        let mut w = Window::default();
        // 20 s of 100 ms pages: p95 ≈ 100 ms, normal.
        for ms in (0..20_000u64).step_by(50) {
            w.record(ms, Duration::from_millis(100), false);
        }
        assert_eq!(d.step(&lv, &measured(&w, 20_000), 20_000, HOLD), None);
        // 4% of slow answers in the window: p95 still fast.
        for ms in (20_000..20_400u64).step_by(50) {
            w.record(ms, Duration::from_millis(2_000), false);
        }
        let s = measured(&w, 20_500);
        assert!(s.p95_ms < 800.0, "{}", s.p95_ms);
        assert_eq!(d.step(&lv, &s, 20_500, HOLD), None);
        // 8% slow: p95 is past 800 ms, busy.
        for ms in (20_400..21_200u64).step_by(50) {
            w.record(ms, Duration::from_millis(2_000), false);
        }
        let s = measured(&w, 21_500);
        assert!(s.p95_ms >= 800.0, "{}", s.p95_ms);
        let c = d.step(&lv, &s, 21_500, HOLD).expect("enters busy");
        assert_eq!((c.from, c.to), (0, 1));
        assert!(c.reason.starts_with("p95_ms"), "{}", c.reason);
        // Latency back to 400 ms (under the enter, over the exit): stays busy.
        for ms in (21_500..45_000u64).step_by(50) {
            w.record(ms, Duration::from_millis(400), false);
        }
        assert_eq!(d.step(&lv, &measured(&w, 45_000), 45_000, HOLD), None);
        // Fast again for a whole window: back to normal.
        for ms in (45_000..56_000u64).step_by(50) {
            w.record(ms, Duration::from_millis(100), false);
        }
        let c = d
            .step(&lv, &measured(&w, 56_000), 56_000, HOLD)
            .expect("leaves busy");
        assert_eq!(c.to, 0);
    }

    #[test]
    fn error_rate_thresholds_through_the_window() {
        let lv = two(
            Thresholds {
                error_rate: Some(0.05),
                ..Thresholds::default()
            },
            Thresholds {
                error_rate: Some(0.01),
                ..Thresholds::default()
            },
        );
        let mut d = Degrader::new(0);
        let mut w = Window::default();
        // 180 exchanges over 9 s, every 25th failing: 8 of 180 ≈ 4.4%, under the enter
        // threshold.
        for i in 0..180u64 {
            w.record(11_000 + i * 50, Duration::from_millis(20), i % 25 == 0);
        }
        let s = measured(&w, 20_000);
        assert!(
            (s.error_rate - 8.0 / 180.0).abs() < 1e-9,
            "{}",
            s.error_rate
        );
        assert_eq!(d.step(&lv, &s, 20_000, HOLD), None);
        // Four more failures: 12 of 184 ≈ 6.5%, busy.
        for i in 0..4u64 {
            w.record(19_990 + i, Duration::from_millis(20), true);
        }
        let c = d
            .step(&lv, &measured(&w, 20_000), 20_000, HOLD)
            .expect("enters busy");
        assert!(c.reason.starts_with("error_rate"), "{}", c.reason);
        // Next 10 s at 2% failures: under the enter, over the exit: stays.
        let mut w = Window::default();
        for i in 0..200u64 {
            w.record(21_000 + i * 50, Duration::from_millis(20), i % 50 == 0);
        }
        assert_eq!(d.step(&lv, &measured(&w, 31_000), 31_000, HOLD), None);
        assert_eq!(d.level(31_000), 1);
        // Then 0.5%: under the exit, and held long enough: normal.
        for i in 0..200u64 {
            w.record(31_000 + i * 50, Duration::from_millis(20), i % 200 == 0);
        }
        let s = measured(&w, 41_500);
        assert!(s.error_rate < 0.01, "{}", s.error_rate);
        assert_eq!(d.step(&lv, &s, 41_500, HOLD).map(|c| c.to), Some(0));
    }

    #[test]
    fn queue_depth_thresholds() {
        let lv = two(
            Thresholds {
                queue_depth: Some(20_000.0),
                ..Thresholds::default()
            },
            Thresholds {
                queue_depth: Some(5_000.0),
                ..Thresholds::default()
            },
        );
        let q = |n: f64| Signals {
            queue_depth: n,
            ..Signals::default()
        };
        let mut d = Degrader::new(0);
        assert_eq!(d.step(&lv, &q(19_999.0), 10_000, HOLD), None);
        let c = d
            .step(&lv, &q(20_000.0), 10_500, HOLD)
            .expect("at the threshold");
        assert!(c.reason.starts_with("queue_depth"), "{}", c.reason);
        assert_eq!(
            d.step(&lv, &q(10_000.0), 30_000, HOLD),
            None,
            "over the exit"
        );
        assert_eq!(
            d.step(&lv, &q(5_000.0), 31_000, HOLD),
            None,
            "exit is strict"
        );
        assert_eq!(
            d.step(&lv, &q(4_999.0), 31_500, HOLD).map(|c| c.to),
            Some(0)
        );
    }

    #[test]
    fn no_flapping_around_an_exit_threshold() {
        let lv = levels();
        let mut d = Degrader::new(0);
        assert!(d.step(&lv, &sig(0.9), 10_000, HOLD).is_some(), "busy");
        let mut changes = Vec::new();
        // Then a signal oscillating around busy's exit (0.6) every 100 ms for 10 min.
        for i in 0..6000u64 {
            let now = 10_100 + i * 100;
            let r = if i % 2 == 0 { 0.61 } else { 0.59 };
            if let Some(c) = d.step(&lv, &sig(r), now, HOLD) {
                changes.push((now, c.to));
            }
        }
        assert_eq!(
            changes,
            vec![(20_000, 0)],
            "leaves busy once, at the first dip after the hold, and stays normal (0.61 is \
             under the enter, 0.8)"
        );
    }

    #[test]
    fn a_level_may_hold_longer_than_the_others() {
        let mut lv = levels();
        lv[2].hold = Some(Duration::from_secs(60));
        let mut d = Degrader::new(0);
        assert_eq!(d.step(&lv, &sig(1.0), 10_000, HOLD).map(|c| c.to), Some(1));
        assert_eq!(d.step(&lv, &sig(1.0), 20_000, HOLD).map(|c| c.to), Some(2));
        // Calm again: busy would have left after 10 s, critical holds 60 s.
        assert_eq!(d.step(&lv, &sig(0.0), 30_000, HOLD), None);
        assert_eq!(d.step(&lv, &sig(0.0), 79_999, HOLD), None);
        assert_eq!(d.step(&lv, &sig(0.0), 80_000, HOLD).map(|c| c.to), Some(1));
        // Back at busy, the global hold again.
        assert_eq!(d.step(&lv, &sig(0.0), 89_999, HOLD), None);
        assert_eq!(d.step(&lv, &sig(0.0), 90_000, HOLD).map(|c| c.to), Some(0));
    }

    #[test]
    fn forced_levels_and_expiry() {
        let lv = levels();
        let mut d = Degrader::new(0);
        let c = d
            .force(Some(2), Some(60_000), 1_000, "admin")
            .expect("change");
        assert_eq!((c.from, c.to), (0, 2));
        // Automatic steps go on underneath but the forced level holds.
        assert_eq!(d.step(&lv, &sig(0.0), 30_000, HOLD), None);
        assert_eq!(d.level(30_000), 2);
        let c = d.step(&lv, &sig(0.0), 60_000, HOLD).expect("expired");
        assert_eq!((c.from, c.to), (2, 0));
        assert_eq!(c.reason, "forced level expired");
        d.force(Some(1), None, 70_000, "admin");
        assert_eq!(d.force(None, None, 80_000, "admin").map(|c| c.to), Some(0));
    }

    #[test]
    fn forced_features() {
        let lv = levels();
        let mut d = Degrader::new(0);
        d.force_feature("visio", Some(false), Some(5_000));
        assert!(!d.feature_on(&lv, "visio", 1_000));
        assert!(d.feature_on(&lv, "visio", 5_000), "expired");
        d.force(Some(1), None, 0, "t");
        d.force_feature("visio", Some(true), None);
        assert!(d.feature_on(&lv, "visio", 6_000), "forced on even at busy");
        d.force_feature("visio", None, None);
        assert!(!d.feature_on(&lv, "visio", 6_000));
    }

    #[test]
    fn forced_features_expire_once_and_say_so() {
        let lv = levels();
        let mut d = Degrader::new(0);
        assert!(d.force_feature("visio", Some(false), Some(5_000)));
        assert!(
            !d.force_feature("visio", Some(false), Some(5_000)),
            "the same override again is no change"
        );
        assert!(d.force_feature("chat", Some(true), None));
        assert!(d.expire_features(4_999).is_empty());
        assert_eq!(d.expire_features(5_000), vec![("visio".to_string(), false)]);
        assert!(d.expire_features(6_000).is_empty(), "reported once");
        assert_eq!(d.feature_overrides(6_000).len(), 1, "chat has no expiry");
        assert!(d.feature_on(&lv, "visio", 6_000));
        assert!(d.force_feature("chat", None, None));
        assert!(!d.force_feature("chat", None, None));
    }

    #[test]
    fn window_percentiles_and_errors() {
        let mut w = Window::default();
        for i in 0..100u64 {
            w.record(1_000 + i, Duration::from_millis(10), false);
        }
        for i in 0..10u64 {
            w.record(1_500 + i, Duration::from_millis(500), true);
        }
        let p50 = w.quantile_ms(2_000, 0.5);
        let p95 = w.quantile_ms(2_000, 0.95);
        assert!((10.0..=11.0).contains(&p50), "{p50}");
        assert!((500.0..=550.0).contains(&p95), "{p95}");
        assert!((w.error_rate(2_000) - 10.0 / 110.0).abs() < 1e-9);
        // Ten seconds later the window has slid past it all.
        assert_eq!(w.count(12_000), 0);
        assert_eq!(w.quantile_ms(12_000, 0.95), 0.0);
    }
}

/// What one client or one URL can do to the window's signals (`policy::signals`), on a
/// fake clock.
#[cfg(test)]
mod steering_tests {
    use super::*;

    fn x(latency_ms: f64, failure: Option<Failure>, client: u8, url: u8) -> Exchange {
        Exchange {
            latency_ms,
            failure,
            client,
            url,
        }
    }

    /// Ten seconds of eight pupils (client keys 1..=8) at 4 pages a second each, 20 ms,
    /// on 40 URLs; `fail` says which of their exchanges fail, `ms` how long they take.
    fn pupils(w: &mut Window, fail: impl Fn(u64) -> Option<Failure>, ms: f64) {
        for i in 0..320u64 {
            let f = fail(i);
            w.record_exchange(
                10_000 + i * 31,
                &x(ms, f, (i % 8) as u8 + 1, (i % 40) as u8),
            );
        }
    }

    #[test]
    fn one_client_failing_moves_no_error_rate_the_whole_traffic_does_a_school_too() {
        let mut w = Window::default();
        pupils(&mut w, |_| None, 20.0);
        // One client (key 12), 5 a second, each on another URL the ENT fails on.
        for i in 0..50u64 {
            w.record_exchange(
                10_000 + i * 200,
                &x(20.0, Some(Failure::Deterministic), 12, (i % 64) as u8),
            );
        }
        let m = w.measure(19_999, 0.95);
        assert!(m.raw_error_rate > 0.13, "{m:?}");
        assert_eq!(m.error_rate, 0.0, "{m:?}");
        assert_eq!(m.client_outliers, 1 << 12);
        // The same client with overload statuses (504 from a search timing out).
        let mut w = Window::default();
        pupils(&mut w, |_| None, 20.0);
        for i in 0..50u64 {
            w.record_exchange(10_000 + i * 200, &x(20.0, Some(Failure::Overload), 12, 7));
        }
        assert_eq!(w.error_rate(19_999), 0.0);
        // The ENT failing 10% for everyone, that client still there: 10% counts.
        let mut w = Window::default();
        pupils(&mut w, |i| (i % 10 == 0).then_some(Failure::Overload), 20.0);
        for i in 0..50u64 {
            w.record_exchange(10_000 + i * 200, &x(20.0, Some(Failure::Overload), 12, 7));
        }
        let r = w.error_rate(19_999);
        assert!((0.09..=0.11).contains(&r), "{r}");
        // A school behind one address with half the traffic, in a real overload.
        // Key 3 is a school: half of all traffic. The ENT fails 20% for everyone.
        let mut w = Window::default();
        for i in 0..600u64 {
            let key = if i % 2 == 0 { 3 } else { (i % 7) as u8 + 5 };
            let f = (i % 5 == 1 || i % 5 == 2 && i % 10 < 5).then_some(Failure::Overload);
            w.record_exchange(10_000 + i * 16, &x(20.0, f, key, (i % 50) as u8));
        }
        let m = w.measure(19_999, 0.95);
        assert_eq!(m.client_outliers, 0, "{m:?}");
        assert!((m.error_rate - m.raw_error_rate).abs() < 1e-9, "{m:?}");
        assert!(m.error_rate > 0.2, "{m:?}");
        // The school alone on the ENT: nobody to compare with, it counts as it is.
        let mut w = Window::default();
        for i in 0..300u64 {
            let f = (i % 3 == 0).then_some(Failure::Overload);
            w.record_exchange(10_000 + i * 33, &x(20.0, f, 3, (i % 50) as u8));
        }
        assert!((w.error_rate(19_999) - 100.0 / 300.0).abs() < 1e-9);
    }

    #[test]
    fn a_url_failing_for_everyone_is_no_overload_but_503s_everywhere_are() {
        // Every pupil's fourth request is a widget that always answers 500.
        let mut w = Window::default();
        for i in 0..320u64 {
            let widget = (i / 8) % 4 == 0;
            let f = widget.then_some(Failure::Deterministic);
            let url = if widget { 63 } else { (i % 40) as u8 };
            w.record_exchange(10_000 + i * 31, &x(20.0, f, (i % 8) as u8 + 1, url));
        }
        let m = w.measure(19_999, 0.95);
        assert!(m.raw_error_rate >= 0.25, "{m:?}");
        assert_eq!(m.error_rate, 0.0, "{m:?}");
        assert_eq!(m.url_outliers, 1 << 63);
        // The same spread, but 503s (the ENT overloaded where it is busiest, the login):
        // overload failures are judged by client only, and every client sees them.
        let mut w = Window::default();
        for i in 0..320u64 {
            let login = (i / 8) % 4 == 0;
            let f = login.then_some(Failure::Overload);
            let url = if login { 63 } else { (i % 40) as u8 };
            w.record_exchange(10_000 + i * 31, &x(20.0, f, (i % 8) as u8 + 1, url));
        }
        assert!(w.error_rate(19_999) >= 0.25);
    }

    #[test]
    fn one_client_on_slow_urls_moves_no_p95_a_slow_ent_does() {
        let mut w = Window::default();
        pupils(&mut w, |_| None, 20.0);
        // One client: a heavy search, 3 s, 40 of them in the window (11% of answers).
        for i in 0..40u64 {
            w.record_exchange(10_000 + i * 250, &x(3_000.0, None, 12, (i % 64) as u8));
        }
        let m = w.measure(19_999, 0.95);
        assert!(m.raw_quantile_ms >= 3_000.0, "{m:?}");
        assert!(m.quantile_ms < 25.0, "{m:?}");
        assert_eq!(m.client_outliers, 1 << 12);
        // The ENT slow for everyone (800 ms), the client still there: p95 is slow.
        let mut w = Window::default();
        pupils(&mut w, |_| None, 800.0);
        for i in 0..40u64 {
            w.record_exchange(10_000 + i * 250, &x(3_000.0, None, 12, (i % 64) as u8));
        }
        let p95 = w.quantile_ms(19_999, 0.95);
        assert!((800.0..900.0).contains(&p95), "{p95}");
        // Everybody's answers slow in the same way, including a big school: nobody left
        // out.
        let mut w = Window::default();
        for i in 0..600u64 {
            let key = if i % 2 == 0 { 3 } else { (i % 7) as u8 + 5 };
            let ms = 100.0 + (i % 20) as f64 * 50.0;
            w.record_exchange(10_000 + i * 16, &x(ms, None, key, 0));
        }
        let m = w.measure(19_999, 0.95);
        assert_eq!(m.client_outliers, 0, "{m:?}");
        assert_eq!(m.quantile_ms, m.raw_quantile_ms);
    }
}
