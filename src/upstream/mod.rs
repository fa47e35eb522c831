//! Upstream servers: health, passive ejection, selection and in-flight accounting.
//!
//! The state of a server (is it healthy, how many requests it has in flight) outlives any
//! one config: a reload that keeps `10.0.0.5:8000` in origin `ent` keeps its health and its
//! counters. [`Registry`] hands out the same `Arc` for the same (origin, address) across
//! reloads; runtime configs only hold references.

pub mod health;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::policy::degrade::Measured;
use crate::policy::signals::{
    failures_without_top_key, in_mask, outliers, Exchange, Failure, KeyHasher, CLIENT_KEYS,
};

/// One upstream server of one origin.
#[derive(Debug)]
pub struct ServerState {
    pub addr: SocketAddr,
    /// What ops wrote (`ent-1.lan:8000`), for the admin API and the metric label.
    pub name: String,
    /// Verdict of active health checks. Starts healthy: a new server gets traffic at
    /// once, and the first failed checks take it out.
    healthy: AtomicBool,
    /// Consecutive failures seen on live traffic.
    passive_failures: AtomicU32,
    /// The client keys (`policy::signals`, bit mask) whose requests failed in the current
    /// streak, and whether one failure of it was the server's alone (connect): one
    /// client's requests alone never eject a server others are served by
    /// (`signals::streak_ejects`).
    streak_clients: AtomicU32,
    streak_server_caused: AtomicBool,
    /// Until when (ms since `epoch`) the server is ejected by passive checks; 0 = not.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    /// Requests in flight to this server.
    inflight: AtomicUsize,
    /// Active check streaks, owned by the health checker.
    pub(crate) check_ok_streak: AtomicU32,
    pub(crate) check_fail_streak: AtomicU32,
    /// Why the last active check failed (None after a success), for `/admin/state`.
    check_error: std::sync::Mutex<Option<String>>,
    up_gauge: IntGauge,
}

impl ServerState {
    fn new(origin: &str, name: &str, addr: SocketAddr) -> ServerState {
        let up_gauge = crate::metrics::get()
            .origin_server_up
            .with_label_values(&[origin, name]);
        up_gauge.set(1);
        ServerState {
            addr,
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            passive_failures: AtomicU32::new(0),
            streak_clients: AtomicU32::new(0),
            streak_server_caused: AtomicBool::new(false),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            inflight: AtomicUsize::new(0),
            check_ok_streak: AtomicU32::new(0),
            check_fail_streak: AtomicU32::new(0),
            check_error: std::sync::Mutex::new(None),
            up_gauge,
        }
    }

    /// Why the last active check failed, if it did.
    pub fn check_error(&self) -> Option<String> {
        self.check_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_check_error(&self, why: Option<&str>) {
        *self.check_error.lock().unwrap_or_else(|p| p.into_inner()) = why.map(str::to_string);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Healthy by active checks and not currently ejected by passive ones.
    pub fn in_rotation(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            log::warn!(
                "upstream {} ({}) is now {}",
                self.name,
                self.addr,
                if healthy { "healthy" } else { "unhealthy" }
            );
        }
        self.refresh_gauge();
    }

    fn refresh_gauge(&self) {
        self.up_gauge.set(i64::from(self.in_rotation()));
    }

    /// Live traffic reached the server and got a usable answer.
    pub fn record_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
            self.streak_clients.store(0, Ordering::Relaxed);
            self.streak_server_caused.store(false, Ordering::Relaxed);
        }
    }

    /// Live traffic failed on this server: `by` is the client key of the request that
    /// failed, `None` when the failure was the server's alone (the connection could not
    /// be opened). After `max_failures` in a row the server is ejected for `ejection`,
    /// unless the streak is one client's doing while others are served (`active`: the
    /// client keys with recent exchanges, asked only then); returns true when this call
    /// ejected it.
    pub fn record_failure(
        &self,
        max_failures: u32,
        ejection: Duration,
        by: Option<u8>,
        active: impl FnOnce() -> u32,
    ) -> bool {
        match by {
            Some(k) => {
                self.streak_clients.fetch_or(
                    1u32 << (u32::from(k) % CLIENT_KEYS as u32),
                    Ordering::Relaxed,
                );
            }
            None => self.streak_server_caused.store(true, Ordering::Relaxed),
        }
        let n = self
            .passive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if max_failures > 0 && n >= max_failures {
            let streak = self.streak_clients.load(Ordering::Relaxed);
            let server_caused = self.streak_server_caused.load(Ordering::Relaxed);
            if !crate::policy::signals::streak_ejects(server_caused, streak, active()) {
                // One client's failures: the server stays; the streak goes on, so the
                // first failure of another client (or a refused connection) ejects it.
                self.passive_failures.store(max_failures, Ordering::Relaxed);
                return false;
            }
            self.passive_failures.store(0, Ordering::Relaxed);
            self.streak_clients.store(0, Ordering::Relaxed);
            self.streak_server_caused.store(false, Ordering::Relaxed);
            let until = self.now_ms() + ejection.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            log::warn!(
                "upstream {} ({}) ejected for {:?} after {n} consecutive failures",
                self.name,
                self.addr,
                ejection
            );
            self.refresh_gauge();
            return true;
        }
        false
    }

    /// Called by the health checker each round so the gauge notices ejections ending.
    pub(crate) fn tick(&self) {
        self.refresh_gauge();
    }
}

/// State shared by all servers of one origin, surviving reloads.
#[derive(Debug)]
pub struct OriginShared {
    pub name: String,
    /// Requests in flight to the origin, all servers together.
    pub inflight: AtomicUsize,
    cursor: AtomicUsize,
    pub inflight_gauge: IntGauge,
    /// Latencies and failures over the last 10 s (degradation signals, adaptive limit).
    pub window: Mutex<crate::policy::degrade::Window>,
    /// Adaptive concurrency limit (0 until the first evaluation).
    pub limit: AtomicUsize,
    /// The adaptive controller and the exchanges since its last update.
    adaptive: Mutex<AdaptiveState>,
    /// Most requests in flight at once since the controller's last update.
    pub peak_inflight: AtomicUsize,
    /// Woken when a permit is given back and no priority request waits (admitted
    /// sessions waiting for a slot).
    pub freed: tokio::sync::Notify,
    /// Woken when a permit is given back while a priority request waits.
    freed_priority: tokio::sync::Notify,
    /// Priority-class requests waiting for a slot: while any waits, nobody else takes
    /// one (they go ahead of admitted sessions and anonymous visitors).
    priority_waiting: AtomicUsize,
    /// Whether the origin has an adaptive limit (set by `adapt`): only then are
    /// exchanges sampled for it.
    adaptive_on: std::sync::atomic::AtomicBool,
    /// Requests in flight per client key (`policy::signals`), to tell requests one
    /// client holds open from a slow ENT.
    client_inflight: [AtomicUsize; CLIENT_KEYS],
    /// Client keys the last measure left out of some signal (bit mask): their exchanges
    /// are not fed to the adaptive limit either.
    client_outliers: AtomicU64,
    /// URL keys whose deterministic failures the last measure left out.
    url_outliers: AtomicU64,
}

#[derive(Debug, Default)]
struct AdaptiveState {
    ctl: Option<crate::policy::concurrency::Controller>,
    /// Latencies (ms) since the last judged window, at most `MAX_SAMPLES`, with their
    /// client key and whether the exchange failed.
    samples: Vec<(f32, u8, bool)>,
}

/// The keys of requests and clients, with this process's secret.
pub fn keys() -> &'static KeyHasher {
    static K: std::sync::OnceLock<KeyHasher> = std::sync::OnceLock::new();
    K.get_or_init(KeyHasher::default)
}

const MAX_SAMPLES: usize = 4096;

impl OriginShared {
    /// Record one finished exchange.
    pub fn record(&self, now_ms: u64, x: &Exchange) {
        self.window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_exchange(now_ms, x);
        if !self.adaptive_on.load(Ordering::Relaxed) {
            return;
        }
        // A client (or a URL failing for everyone) the signals already leave out does
        // not move the limit either.
        if in_mask(self.client_outliers.load(Ordering::Relaxed), x.client)
            || (x.failure == Some(Failure::Deterministic)
                && in_mask(self.url_outliers.load(Ordering::Relaxed), x.url))
        {
            return;
        }
        let mut a = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        if a.samples.len() < MAX_SAMPLES {
            a.samples
                .push((x.latency_ms as f32, x.client, x.failure.is_some()));
        }
    }

    /// This origin's degradation signals, with what single clients and URLs brought
    /// beyond the rest left out (`policy::signals`).
    pub fn signals(
        &self,
        now_ms: u64,
        max_inflight: Option<u32>,
    ) -> crate::policy::degrade::Signals {
        self.measure(now_ms, max_inflight).0
    }

    /// The signals, and what was left out: (client keys, URL keys, requests in flight).
    pub fn measure(
        &self,
        now_ms: u64,
        max_inflight: Option<u32>,
    ) -> (crate::policy::degrade::Signals, Measured, usize) {
        let (m, tallies) = {
            let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            (w.measure(now_ms, 0.95), w.client_tallies(now_ms))
        };
        // Requests in flight: a client key holding far more than its exchanges explain
        // (Little's law: in flight = rate × time, the same time for everyone when the
        // ENT is slow) is left out.
        let held: Vec<(f64, f64)> = tallies
            .iter()
            .zip(self.client_inflight.iter())
            .map(|((t, _), i)| (*t as f64, i.load(Ordering::Relaxed) as f64))
            .collect();
        let held_out = outliers(&held, false);
        let excused: usize = held
            .iter()
            .enumerate()
            .filter(|(k, _)| held_out & (1 << k) != 0)
            .map(|(_, (_, i))| *i as usize)
            .sum();
        let inflight = self
            .inflight
            .load(Ordering::Relaxed)
            .saturating_sub(excused) as f64;
        let mut m = m;
        m.client_outliers |= held_out;
        self.client_outliers
            .store(m.client_outliers, Ordering::Relaxed);
        self.url_outliers.store(m.url_outliers, Ordering::Relaxed);
        let cap = max_inflight.map(f64::from).unwrap_or(0.0);
        let s = crate::policy::degrade::Signals {
            inflight_ratio: if cap > 0.0 { inflight / cap } else { 0.0 },
            p95_ms: m.quantile_ms,
            error_rate: m.error_rate,
            queue_depth: 0.0,
        };
        (s, m, excused)
    }

    /// What an `auto` waiting room needs of this origin (`policy::room_sizing`): the last
    /// three seconds' median latency and throughput (a control loop must not react to
    /// what the 10 s window still remembers), the error rate without outliers, requests
    /// in flight, the limit in force and the adaptive limit's unloaded latency.
    pub fn room_sample(
        &self,
        now_ms: u64,
        max_inflight: Option<u32>,
        active: u64,
        waiting: u64,
    ) -> crate::policy::room_sizing::Sample {
        const SECS: u64 = 3;
        let (p50_ms, exchanges, error_rate, mask) = {
            let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            // What single clients brought beyond the rest is left out, as for the
            // degradation signals: one client cannot shrink the room for everyone.
            let m = w.measure(now_ms, 0.5);
            let mask = m.client_outliers | self.client_outliers.load(Ordering::Relaxed);
            let (p50, n) = w.recent_quantile_ms_without(now_ms, 0.5, SECS, mask);
            (p50, n, m.error_rate, mask)
        };
        // The requests those clients hold open are left out too: the room judges the
        // origin's load by its requests in flight, and one client holding many open
        // (slow downloads, a slowloris) must not make the origin look full.
        let excused: usize = self
            .client_inflight
            .iter()
            .enumerate()
            .filter(|(k, _)| in_mask(mask, *k as u8))
            .map(|(_, i)| i.load(Ordering::Relaxed))
            .sum();
        let baseline_ms = self
            .adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ctl
            .as_ref()
            .and_then(|c| c.baseline_ms());
        crate::policy::room_sizing::Sample {
            exchanges,
            throughput: exchanges as f64 / SECS as f64,
            p50_ms,
            baseline_ms,
            error_rate,
            inflight: self
                .inflight
                .load(Ordering::Relaxed)
                .saturating_sub(excused) as f64,
            limit: self.current_limit(max_inflight).map(|l| l as f64),
            active,
            // The room's to say (`Room::size`).
            pending: 0,
            waiting,
        }
    }

    /// The client keys with exchanges in the signals' window (bit mask), for passive
    /// ejection (`ServerState::record_failure`).
    pub fn active_clients(&self, now_ms: u64) -> u32 {
        let tallies = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .client_tallies(now_ms);
        tallies
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0)
            .fold(0u32, |m, (k, _)| m | 1 << k)
    }

    /// Whether client key `k` is one the last measure left out of the signals: its
    /// failures say nothing of the servers either.
    pub fn is_outlier_client(&self, k: u8) -> bool {
        in_mask(self.client_outliers.load(Ordering::Relaxed), k)
    }

    /// The concurrency limit in force: the adaptive one when adaptive concurrency is on,
    /// never above the hard maximum.
    pub fn current_limit(&self, max_inflight: Option<u32>) -> Option<usize> {
        let adaptive = self.limit.load(Ordering::Relaxed);
        match (max_inflight, adaptive) {
            (Some(m), 0) => Some(m as usize),
            (Some(m), a) => Some(a.min(m as usize)),
            (None, _) => None,
        }
    }

    /// Adaptive concurrency, every 100 ms: the exchanges since the last update go to the
    /// origin's [`Controller`](crate::policy::concurrency::Controller) (Vegas with a slow
    /// start and a latency probe; see `policy::concurrency`), whose limit is stored.
    pub fn adapt(
        &self,
        adaptive: Option<&crate::policy::concurrency::Adaptive>,
        max_inflight: Option<u32>,
        now_ms: u64,
    ) {
        use crate::policy::concurrency::{Controller, Params, Window, MIN_SAMPLES};
        let Some(ac) = adaptive else {
            self.adaptive_on.store(false, Ordering::Relaxed);
            self.limit.store(0, Ordering::Relaxed);
            return;
        };
        self.adaptive_on.store(true, Ordering::Relaxed);
        let p = Params {
            min: ac.min,
            max: max_inflight.map(|m| m as usize).unwrap_or(ac.max),
            tolerance: ac.tolerance,
            target_p50_ms: ac.target_p50_ms,
        };
        let mut a = self.adaptive.lock().unwrap_or_else(|p| p.into_inner());
        let n = a.samples.len();
        let judged = n >= MIN_SAMPLES;
        let peak_inflight = if judged {
            // The next window starts from what is in flight now.
            self.peak_inflight
                .swap(self.inflight.load(Ordering::Relaxed), Ordering::Relaxed)
        } else {
            self.peak_inflight.load(Ordering::Relaxed)
        };
        let p50_ms = if judged {
            let mid = n / 2;
            let (_, m, _) = a
                .samples
                .select_nth_unstable_by(mid, |x, y| x.0.total_cmp(&y.0));
            f64::from(m.0)
        } else {
            0.0
        };
        // Failures: the client key with the most is left out when others were served
        // too, so one client's failing URLs never shrink the limit on their own before
        // the signals catch it.
        let mut by_key = [(0u32, 0u32); CLIENT_KEYS];
        for (_, k, failed) in &a.samples {
            let t = &mut by_key[usize::from(*k) % CLIENT_KEYS];
            *t = (t.0 + 1, t.1 + u32::from(*failed));
        }
        let w = Window {
            n,
            errors: failures_without_top_key(&by_key),
            p50_ms,
            peak_inflight,
        };
        let ctl = a.ctl.get_or_insert_with(|| Controller::new(&p));
        let next = ctl.update(&p, now_ms, &w);
        if judged {
            a.samples.clear();
        }
        drop(a);
        self.limit.store(next, Ordering::Relaxed);
        self.limit_gauge().set(next as i64);
    }

    fn limit_gauge(&self) -> IntGauge {
        crate::metrics::get()
            .origin_concurrency_limit
            .with_label_values(&[&self.name])
    }
}

/// Long-lived store of upstream state, keyed by origin name and server address.
#[derive(Default)]
pub struct Registry {
    servers: Mutex<HashMap<(String, SocketAddr), Arc<ServerState>>>,
    origins: Mutex<HashMap<String, Arc<OriginShared>>>,
}

impl Registry {
    pub fn server(&self, origin: &str, name: &str, addr: SocketAddr) -> Arc<ServerState> {
        let mut map = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((origin.to_string(), addr))
            .or_insert_with(|| Arc::new(ServerState::new(origin, name, addr)))
            .clone()
    }

    pub fn origin(&self, origin: &str) -> Arc<OriginShared> {
        let mut map = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(origin.to_string())
            .or_insert_with(|| {
                Arc::new(OriginShared {
                    name: origin.to_string(),
                    inflight: AtomicUsize::new(0),
                    cursor: AtomicUsize::new(0),
                    inflight_gauge: crate::metrics::get()
                        .origin_inflight
                        .with_label_values(&[origin]),
                    window: Mutex::new(crate::policy::degrade::Window::default()),
                    limit: AtomicUsize::new(0),
                    adaptive: Mutex::new(AdaptiveState::default()),
                    peak_inflight: AtomicUsize::new(0),
                    freed: tokio::sync::Notify::new(),
                    freed_priority: tokio::sync::Notify::new(),
                    priority_waiting: AtomicUsize::new(0),
                    adaptive_on: std::sync::atomic::AtomicBool::new(false),
                    client_inflight: std::array::from_fn(|_| AtomicUsize::new(0)),
                    client_outliers: AtomicU64::new(0),
                    url_outliers: AtomicU64::new(0),
                })
            })
            .clone()
    }
}

/// How the next server is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// Pick a server in rotation, skipping those already tried for this request (`tried` is a
/// bitmask over server indices; origins have at most 64 servers, checked at load).
/// When every server is out of rotation, fall back to any untried one: an origin whose
/// health checks all fail may still answer, and a 502 from it says more than ours.
pub fn select(
    shared: &OriginShared,
    servers: &[Arc<ServerState>],
    balance: Balance,
    tried: u64,
) -> Option<usize> {
    let n = servers.len();
    if n == 0 {
        return None;
    }
    let start = shared.cursor.fetch_add(1, Ordering::Relaxed);
    let untried = |i: usize| tried & (1u64 << i) == 0;
    let pick = |require_rotation: bool| -> Option<usize> {
        match balance {
            Balance::RoundRobin => (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| untried(i) && (!require_rotation || servers[i].in_rotation())),
            Balance::LeastConnections => (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| untried(i) && (!require_rotation || servers[i].in_rotation()))
                .min_by_key(|&i| servers[i].inflight()),
        }
    };
    pick(true).or_else(|| pick(false))
}

/// Counts one request in flight to a server and its origin until dropped, so every exit
/// path (response, error, client gone) gives the slot back.
#[derive(Debug)]
pub struct InflightGuard {
    server: Arc<ServerState>,
}

impl InflightGuard {
    pub fn new(server: Arc<ServerState>) -> InflightGuard {
        server.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { server }
    }
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.server.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted request against the origin's `max_inflight`, released on drop.
#[derive(Debug)]
pub struct OriginPermit {
    shared: Arc<OriginShared>,
    /// The client key it is counted under, if any.
    client: Option<usize>,
}

impl OriginPermit {
    /// Take a slot unless `max` are already in use.
    pub fn try_acquire(shared: &Arc<OriginShared>, max: Option<usize>) -> Option<OriginPermit> {
        Self::take(shared, max, false)
    }

    /// Take a slot unless `max` are already in use or, for a request that is not
    /// `priority`, a priority request is waiting for one.
    fn take(
        shared: &Arc<OriginShared>,
        max: Option<usize>,
        priority: bool,
    ) -> Option<OriginPermit> {
        if max.is_some() && !priority && shared.priority_waiting.load(Ordering::Acquire) > 0 {
            return None;
        }
        let prev = shared.inflight.fetch_add(1, Ordering::AcqRel);
        if let Some(max) = max {
            if prev >= max {
                shared.inflight.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
        }
        shared.peak_inflight.fetch_max(prev + 1, Ordering::Relaxed);
        shared.inflight_gauge.inc();
        Some(OriginPermit {
            shared: shared.clone(),
            client: None,
        })
    }

    /// Count this request in flight under its client's key too (in-flight signal).
    pub fn set_client(&mut self, key: u8) {
        if self.client.is_none() {
            let k = usize::from(key) % CLIENT_KEYS;
            self.shared.client_inflight[k].fetch_add(1, Ordering::Relaxed);
            self.client = Some(k);
        }
    }

    /// Take a slot under `max`, waiting up to `wait` for one to be given back. A
    /// `priority` request goes ahead of every other: while it waits, the others are
    /// refused (or keep waiting), and a freed slot is offered to it first.
    pub async fn acquire(
        shared: &Arc<OriginShared>,
        max: Option<usize>,
        wait: Duration,
        priority: bool,
    ) -> Option<OriginPermit> {
        if let Some(p) = Self::take(shared, max, priority) {
            return Some(p);
        }
        if wait.is_zero() {
            return None;
        }
        let _waiting = priority.then(|| PriorityWaiting::new(shared));
        let freed = if priority {
            &shared.freed_priority
        } else {
            &shared.freed
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = Self::take(shared, max, priority) {
                return Some(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Self::take(shared, max, priority);
            }
        }
    }
}

/// Counts one priority request waiting for a slot, until dropped (served, timed out or
/// the client gone).
struct PriorityWaiting(Arc<OriginShared>);

impl PriorityWaiting {
    fn new(shared: &Arc<OriginShared>) -> PriorityWaiting {
        shared.priority_waiting.fetch_add(1, Ordering::AcqRel);
        PriorityWaiting(shared.clone())
    }
}

impl Drop for PriorityWaiting {
    fn drop(&mut self) {
        if self.0.priority_waiting.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last priority waiter leaves: a slot it did not take goes to the others.
            self.0.freed.notify_one();
        }
    }
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        if let Some(k) = self.client {
            self.shared.client_inflight[k].fetch_sub(1, Ordering::Relaxed);
        }
        self.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        self.shared.inflight_gauge.dec();
        if self.shared.priority_waiting.load(Ordering::Acquire) > 0 {
            self.shared.freed_priority.notify_one();
        } else {
            self.shared.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(reg: &Registry, n: u16) -> Vec<Arc<ServerState>> {
        (0..n)
            .map(|i| {
                let a: SocketAddr = format!("127.0.0.1:{}", 10000 + i).parse().expect("addr");
                reg.server("t", &a.to_string(), a)
            })
            .collect()
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let reg = Registry::default();
        let s = servers(&reg, 3);
        let o = reg.origin("t");
        s[1].set_healthy(false);
        let picks: Vec<usize> = (0..4)
            .filter_map(|_| select(&o, &s, Balance::RoundRobin, 0))
            .collect();
        assert!(picks.iter().all(|&i| i != 1), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&2));
        // 0 and 2 tried: only the unhealthy one remains, used as a last resort.
        assert_eq!(select(&o, &s, Balance::RoundRobin, 0b101), Some(1));
        assert_eq!(select(&o, &s, Balance::RoundRobin, 0b111), None);
    }

    #[test]
    fn least_connections_prefers_idle_server() {
        let reg = Registry::default();
        let s = servers(&reg, 3);
        let o = reg.origin("t");
        let _g1 = InflightGuard::new(s[0].clone());
        let _g2 = InflightGuard::new(s[2].clone());
        for _ in 0..5 {
            assert_eq!(select(&o, &s, Balance::LeastConnections, 0), Some(1));
        }
    }

    #[test]
    fn passive_ejection_and_permits() {
        let reg = Registry::default();
        let s = servers(&reg, 2);
        let fail = |s: &ServerState| s.record_failure(3, Duration::from_secs(30), None, || 0);
        assert!(!fail(&s[0]));
        s[0].record_success();
        assert!(!fail(&s[0]));
        assert!(!fail(&s[0]));
        assert!(fail(&s[0]));
        // One client's failures while key 7 is served elsewhere: no ejection, until a
        // second client fails there too.
        let by = |s: &ServerState, k: u8| {
            s.record_failure(3, Duration::from_secs(30), Some(k), || 1 << 7 | 1 << 2)
        };
        assert!(!by(&s[1], 2));
        assert!(!by(&s[1], 2));
        assert!(!by(&s[1], 2));
        assert!(!by(&s[1], 2));
        assert!(s[1].in_rotation());
        assert!(by(&s[1], 7));
        assert!(!s[0].in_rotation());

        let o = reg.origin("t");
        let a = OriginPermit::try_acquire(&o, Some(2)).expect("first");
        let _b = OriginPermit::try_acquire(&o, Some(2)).expect("second");
        assert!(OriginPermit::try_acquire(&o, Some(2)).is_none());
        drop(a);
        assert!(OriginPermit::try_acquire(&o, Some(2)).is_some());
        assert_eq!(o.inflight.load(Ordering::Relaxed), 1);
    }

    /// Yield to the spawned tasks until `cond` holds (bounded).
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    #[test]
    fn a_client_holding_requests_open_does_not_fill_the_auto_room_sample() {
        // Four clients, ten answers each and one request in flight each; a fifth holds
        // thirty open and gets no answer (a slowloris, a stalled download). The `auto`
        // room judges the origin's load by its requests in flight: those thirty must not
        // make it look full.
        let reg = Registry::default();
        let o = reg.origin("held-open");
        let now = 100_000;
        for i in 0..40u8 {
            o.record(
                now - 500,
                &Exchange {
                    latency_ms: 50.0,
                    failure: None,
                    client: i % 4,
                    url: i % 8,
                },
            );
        }
        let mut permits = Vec::new();
        for k in 0..4u8 {
            let mut p = OriginPermit::try_acquire(&o, None).expect("no limit");
            p.set_client(k);
            permits.push(p);
        }
        for _ in 0..30 {
            let mut p = OriginPermit::try_acquire(&o, None).expect("no limit");
            p.set_client(9);
            permits.push(p);
        }
        let _ = o.measure(now, None);
        let s = o.room_sample(now, None, 10, 0);
        assert!(
            s.inflight <= 4.0,
            "the held requests are left out: {}",
            s.inflight
        );
        assert_eq!(s.exchanges, 40);
    }

    #[tokio::test]
    async fn a_waiting_priority_request_goes_first() {
        let reg = Registry::default();
        let o = reg.origin("prio");
        let held = OriginPermit::try_acquire(&o, Some(1)).expect("the only slot");
        let wait = Duration::from_secs(30);
        let (o1, o2) = (o.clone(), o.clone());
        let admitted =
            tokio::spawn(async move { OriginPermit::acquire(&o1, Some(1), wait, false).await });
        tokio::task::yield_now().await;
        let staff =
            tokio::spawn(async move { OriginPermit::acquire(&o2, Some(1), wait, true).await });
        until("the staff request waits", || {
            o.priority_waiting.load(Ordering::Relaxed) == 1
        })
        .await;
        // Nobody else takes a slot while it waits, even under a higher limit.
        assert!(OriginPermit::try_acquire(&o, Some(5)).is_none());
        // The freed slot goes to the staff request, though the other waited longer.
        drop(held);
        let p = tokio::time::timeout(Duration::from_secs(5), staff)
            .await
            .expect("staff served in time")
            .expect("task")
            .expect("a permit");
        assert_eq!(o.priority_waiting.load(Ordering::Relaxed), 0);
        assert!(!admitted.is_finished(), "the slot is taken");
        drop(p);
        let q = tokio::time::timeout(Duration::from_secs(5), admitted)
            .await
            .expect("then the admitted one")
            .expect("task");
        assert!(q.is_some());
    }

    #[tokio::test]
    async fn a_priority_wait_is_bounded_and_leaves_no_trace() {
        let reg = Registry::default();
        let o = reg.origin("prio-timeout");
        let _held = OriginPermit::try_acquire(&o, Some(1)).expect("the only slot");
        let t0 = std::time::Instant::now();
        let p = OriginPermit::acquire(&o, Some(1), Duration::from_millis(50), true).await;
        assert!(p.is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert_eq!(o.priority_waiting.load(Ordering::Relaxed), 0);
        assert!(
            OriginPermit::try_acquire(&o, Some(2)).is_some(),
            "others served again"
        );
    }
}
