//! Fleet mode: several ecluse nodes behind one load balancer share state through Redis.
//!
//! Nothing here is on the request path. Every `sync_interval` one background task makes
//! one pipelined exchange with Redis: it publishes this node's heartbeat (config hash,
//! automatic level, requests per second by route) and reads back the fleet's: which nodes
//! are alive, their levels and traffic, levels and features forced by ops on any node,
//! and cache purges made on other nodes. From that it sets, locally:
//! - each route's share of global rate limits (this node's part of the route's traffic,
//!   at least a quarter of an equal split), applied as a factor on the local limiters;
//! - the degradation floor (the highest automatic level of the other nodes), so every
//!   node switches the same features off within a couple of intervals;
//! - forced levels and features, and purges, as if made on this node.
//!
//! Redis unreachable: the node keeps serving. Limits fall back to its share (limit ÷
//! nodes last seen alive; `fail_mode: local_full` keeps the whole limit), the floor
//! drops to its own level, and it says so in the log and in `ecluse_cluster_*`. It
//! resynchronises by itself when Redis answers again (the connection manager reconnects).
//!
//! Keys of the fleet, under one Redis Cluster hash tag `{prefix}` (one slot):
//! `{p}:nodes` (sorted set node → last heartbeat ms), `{p}:node_info` (hash node → JSON),
//! `{p}:seq` (counter), `{p}:forced_level` (JSON), `{p}:forced_features` (hash),
//! `{p}:purges` (stream, capped). Each waiting room's keys are under a hash tag of their
//! own, `{p:room:NAME}` (see `room.rs`): a room's scripts touch only its own slot, and a
//! Redis Cluster spreads the rooms over its masters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};

pub mod conn;
pub mod room;

use crate::app::App;
use crate::cache::PurgeScope;
use crate::rooms::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    LocalShare,
    LocalFull,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// One Redis or a Cluster node (empty with `sentinel`).
    pub redis_url: String,
    /// `redis_url` is a node of a Redis Cluster.
    pub redis_cluster: bool,
    /// The master is found through Sentinel (and followed across its failovers).
    pub sentinel: Option<SentinelSettings>,
    /// PEM certificate authority for TLS to Redis (`None`: the system's roots).
    pub tls_ca: Option<Vec<u8>>,
    pub prefix: String,
    pub node_id: String,
    pub timeout: Duration,
    pub sync_interval: Duration,
    pub fail_mode: FailMode,
    /// Fleet size assumed until Redis has answered once.
    pub expected_nodes: u32,
}

/// Where the Sentinels are and which master they watch.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelSettings {
    /// Sentinel URLs (`redis://host:26379/`, auth and TLS of the Sentinels themselves).
    pub addresses: Vec<String>,
    pub master_name: String,
    /// ACL user and password on the master (and its replicas).
    pub username: Option<String>,
    pub password: Option<Redacted>,
    /// The master speaks TLS.
    pub tls: bool,
    pub db: i64,
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl ClusterSettings {
    /// A node unheard of for this long counts as gone.
    pub fn node_ttl(&self) -> Duration {
        (self.sync_interval * 8).max(Duration::from_secs(2))
    }
}

/// What each node publishes about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub config_hash: String,
    pub config_version: u64,
    /// The level the node's own signals put it at (by name: nodes may list levels in
    /// the same order under one config, names are what ops read).
    pub auto_level: Option<String>,
    pub level: Option<String>,
    /// Requests per second by route, smoothed.
    pub routes: BTreeMap<String, f64>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ForcedLevel {
    seq: u64,
    /// When it was forced: orders changes even if Redis lost its data (and `seq`
    /// restarted) in between.
    at_ms: u64,
    level: Option<String>,
    until_ms: Option<u64>,
    by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ForcedFeature {
    seq: u64,
    at_ms: u64,
    on: Option<bool>,
    until_ms: Option<u64>,
    by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PurgeMsg {
    by: String,
    kind: String,
    host: Option<String>,
    target: String,
}

/// Changes kept for Redis at most (a long outage with many purges).
const MAX_OUTGOING: usize = 10_000;

/// A change made on this node that every node must follow. Kept until Redis has it: a
/// change made while Redis is unreachable is sent once it is back.
#[derive(Clone)]
enum Outgoing {
    Level(Option<String>, Option<u64>),
    Feature(String, Option<bool>, Option<u64>),
    Purge(PurgeMsg),
}

pub struct Fleet {
    pub settings: ClusterSettings,
    pub redis_up: AtomicBool,
    /// Whether Redis' state (up or down) has been reported once.
    reported: AtomicBool,
    /// Nodes alive at the last successful exchange (at least 1: this one).
    pub live: AtomicU64,
    /// This node's place among them (by id), for numbering tickets during an outage.
    slot: AtomicU64,
    /// When Redis last stopped answering (unix ms; 0: never): for a while after it
    /// answers again, the fleet is not taken to have shrunk (see `sync_once`).
    down_at: AtomicU64,
    nodes: ArcSwap<Vec<NodeInfo>>,
    shares: ArcSwap<HashMap<String, f64>>,
    /// Changes not yet in Redis, each with its number in this node's sequence.
    outgoing: Mutex<(u64, Vec<(u64, Outgoing)>)>,
    /// The Redis connection, once the sync loop made it (shared by the rooms' calls).
    conn: std::sync::OnceLock<conn::RedisConn>,
    /// Shared waiting rooms, by name.
    rooms: Mutex<HashMap<String, Arc<room::FleetRoom>>>,
    /// Last change applied, per forced item (`level`, `feature:NAME`): (at_ms, seq).
    applied: Mutex<HashMap<String, (u64, u64)>>,
    metrics: FleetMetrics,
}

struct FleetMetrics {
    redis_up: IntGauge,
    nodes: IntGauge,
    fallback: IntGauge,
    commands: IntCounter,
    failures: IntCounter,
    share: GaugeVec,
}

impl FleetMetrics {
    fn new(node: &str) -> FleetMetrics {
        let r = &crate::metrics::get().registry;
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            let _ = r.register(Box::new(g.clone()));
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            let _ = r.register(Box::new(c.clone()));
            c
        };
        let info = IntGaugeVec::new(
            Opts::new(
                "ecluse_cluster_node_info",
                "Always 1; the label names this node in the fleet.",
            ),
            &["node"],
        )
        .expect("static metric definition");
        let _ = r.register(Box::new(info.clone()));
        info.with_label_values(&[node]).set(1);
        let share = GaugeVec::new(
            Opts::new(
                "ecluse_cluster_limit_share_ratio",
                "This node's share of each route's global rate limits (0 to 1).",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let _ = r.register(Box::new(share.clone()));
        FleetMetrics {
            redis_up: gauge(
                "ecluse_cluster_redis_up",
                "1 when the last exchange with Redis succeeded.",
            ),
            nodes: gauge(
                "ecluse_cluster_nodes",
                "Nodes of the fleet alive (as last seen in Redis).",
            ),
            fallback: gauge(
                "ecluse_cluster_fallback",
                "1 while Redis is unreachable and this node enforces its local share.",
            ),
            commands: counter(
                "ecluse_cluster_redis_commands_total",
                "Redis commands sent by this node (they do not depend on the request rate).",
            ),
            failures: counter(
                "ecluse_cluster_sync_failures_total",
                "Exchanges with Redis that failed or timed out.",
            ),
            share,
        }
    }
}

impl Fleet {
    pub fn new(settings: ClusterSettings) -> Fleet {
        let metrics = FleetMetrics::new(&settings.node_id);
        let expected = u64::from(settings.expected_nodes.max(1));
        Fleet {
            settings,
            redis_up: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            live: AtomicU64::new(expected),
            slot: AtomicU64::new(0),
            down_at: AtomicU64::new(0),
            nodes: ArcSwap::from_pointee(Vec::new()),
            shares: ArcSwap::from_pointee(HashMap::new()),
            outgoing: Mutex::new((0, Vec::new())),
            applied: Mutex::new(HashMap::new()),
            conn: std::sync::OnceLock::new(),
            rooms: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The shared room `name` (created on first use).
    pub fn room(&self, name: &str) -> Arc<room::FleetRoom> {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                let r = room::FleetRoom::new(&self.settings.prefix, name);
                r.set_claim_fence(self.settings.timeout);
                Arc::new(r)
            })
            .clone()
    }

    /// A handle on the Redis connection while Redis answers; `None` in fallback.
    pub fn conn(&self) -> Option<conn::RedisConn> {
        if !self.redis_up.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.get().cloned()
    }

    /// Count a failed call made on the request path (a room operation): the node falls
    /// back until the next successful sync.
    pub fn call_failed(&self, e: &redis::RedisError) {
        self.metrics.failures.inc();
        log::warn!("cluster: Redis call failed on the request path: {e}");
        self.set_up(false);
    }

    pub fn count_commands(&self, n: u64) {
        self.metrics.commands.inc_by(n);
    }

    /// While Redis is unreachable: this node's share of the rooms (capacity and pace
    /// divided by the nodes last seen, numbering interleaved by node); `None` while
    /// Redis answers.
    pub fn fallback_share(&self) -> Option<crate::policy::waiting_room::FleetShare> {
        if self.redis_up.load(Ordering::Relaxed) {
            return None;
        }
        let nodes = self.live.load(Ordering::Relaxed).clamp(1, 1000) as u32;
        Some(crate::policy::waiting_room::FleetShare {
            slot: (self.slot.load(Ordering::Relaxed) % u64::from(nodes)) as u32,
            nodes,
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{{{}}}:{k}", self.settings.prefix)
    }

    /// This node's factor on the route's rate limits (1.0 = the whole limit).
    /// Set `ecluse_cluster_limit_share_ratio` for every route to the share in force
    /// before the first sync (the metric exists from the start; nothing else changes).
    pub fn publish_initial_shares(&self, cfg: &crate::config::Config) {
        for r in cfg.router.routes() {
            self.metrics
                .share
                .with_label_values(&[&r.name])
                .set(self.share(&r.name));
        }
    }

    #[inline]
    pub fn share(&self, route: &str) -> f64 {
        if !self.redis_up.load(Ordering::Relaxed) && self.settings.fail_mode == FailMode::LocalFull
        {
            return 1.0;
        }
        match self.shares.load().get(route) {
            Some(s) => *s,
            None => 1.0 / self.live.load(Ordering::Relaxed).max(1) as f64,
        }
    }

    fn push(&self, o: Outgoing) {
        let mut g = self.outgoing.lock().unwrap_or_else(|p| p.into_inner());
        let (next, q) = &mut *g;
        // Only the last forced level, and the last word on each feature, still matter.
        match &o {
            Outgoing::Level(..) => q.retain(|(_, x)| !matches!(x, Outgoing::Level(..))),
            Outgoing::Feature(f, ..) => {
                q.retain(|(_, x)| !matches!(x, Outgoing::Feature(g, ..) if g == f))
            }
            Outgoing::Purge(_) => {}
        }
        // Purges made during a long outage: bounded, the oldest dropped first (a purge
        // that is not broadcast leaves the other nodes' copies to expire by their TTL).
        if q.len() >= MAX_OUTGOING {
            if let Some(i) = q.iter().position(|(_, x)| matches!(x, Outgoing::Purge(_))) {
                q.remove(i);
                log::warn!(
                    "cluster: {MAX_OUTGOING} changes wait for Redis; the oldest purge will not reach the other nodes"
                );
            }
        }
        *next += 1;
        q.push((*next, o));
    }

    /// A level forced on this node (admin API): every node follows.
    pub fn publish_level(&self, level: Option<String>, until_ms: Option<u64>) {
        self.push(Outgoing::Level(level, until_ms));
    }

    /// A feature forced on this node: every node follows.
    pub fn publish_feature(&self, feature: &str, on: Option<bool>, until_ms: Option<u64>) {
        self.push(Outgoing::Feature(feature.to_string(), on, until_ms));
    }

    /// A purge made on this node: every node applies it.
    pub fn broadcast_purge(&self, scope: &PurgeScope, kind: &str) {
        let (host, target) = match scope {
            PurgeScope::Url {
                host,
                path_and_query,
            } => (host.clone(), path_and_query.clone()),
            PurgeScope::Prefix { host, path_prefix } => (host.clone(), path_prefix.clone()),
        };
        self.push(Outgoing::Purge(PurgeMsg {
            by: self.settings.node_id.clone(),
            kind: match scope {
                PurgeScope::Url { .. } => "url".into(),
                PurgeScope::Prefix { .. } => "prefix".into(),
            },
            host,
            target,
        }));
        let _ = kind;
    }

    /// For `GET /admin/state`.
    pub fn state(&self) -> serde_json::Value {
        let now = now_ms();
        serde_json::json!({
            "node_id": self.settings.node_id,
            "redis_up": self.redis_up.load(Ordering::Relaxed),
            "live_nodes": self.live.load(Ordering::Relaxed),
            "fail_mode": match self.settings.fail_mode { FailMode::LocalShare => "local_share", FailMode::LocalFull => "local_full" },
            "nodes": self.nodes.load().iter().map(|n| serde_json::json!({
                "id": n.id,
                "config_hash": n.config_hash,
                "config_version": n.config_version,
                "level": n.level,
                "auto_level": n.auto_level,
                "seen_ms_ago": now.saturating_sub(n.at_ms),
            })).collect::<Vec<_>>(),
            "limit_shares": (**self.shares.load()).clone(),
        })
    }

    fn set_up(&self, up: bool) {
        let was = self.redis_up.swap(up, Ordering::Relaxed);
        let first = !self.reported.swap(true, Ordering::Relaxed);
        self.metrics.redis_up.set(i64::from(up));
        self.metrics.fallback.set(i64::from(!up));
        if first && !up {
            log::warn!(
                "cluster: Redis unreachable at start; enforcing a local share of global limits for {} nodes (cluster.expected_nodes) until it answers",
                self.live.load(Ordering::Relaxed)
            );
        } else if was && !up {
            self.down_at.store(now_ms(), Ordering::Relaxed);
            log::warn!(
                "cluster: Redis unreachable; enforcing this node's local share of global limits ({} nodes last seen)",
                self.live.load(Ordering::Relaxed)
            );
        } else if !was && up {
            log::info!("cluster: Redis reachable; fleet state in sync");
        }
    }
}

/// Requests per second by route, from the per-route request counters.
struct RateMeter {
    last: HashMap<String, (u64, u64)>,
    rates: BTreeMap<String, f64>,
}

impl RateMeter {
    fn sample(&mut self, cfg: &crate::config::Config, now: u64) {
        for r in cfg.router.routes() {
            let total: u64 = r.metrics.by_class.iter().map(|c| c.get()).sum();
            let (t0, c0) = self.last.get(&r.name).copied().unwrap_or((now, total));
            let dt = now.saturating_sub(t0);
            if dt >= 200 {
                let inst = (total.saturating_sub(c0)) as f64 * 1000.0 / dt as f64;
                let prev = self.rates.get(&r.name).copied().unwrap_or(inst);
                // ~2 s smoothing.
                let alpha = (dt as f64 / 2000.0).min(1.0);
                self.rates
                    .insert(r.name.clone(), alpha * inst + (1.0 - alpha) * prev);
                self.last.insert(r.name.clone(), (now, total));
            } else if !self.last.contains_key(&r.name) {
                self.last.insert(r.name.clone(), (now, total));
            }
        }
    }
}

/// The sync loop; runs until `stop` changes.
pub async fn run(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(fleet) = app.fleet.clone() else {
        return;
    };
    let s = fleet.settings.clone();
    // One Redis, or the master Sentinel names: a lazy connection, now. A Redis Cluster:
    // connected at the first exchange that reaches it (the node serves in fallback until
    // then).
    let mut conn: Option<conn::RedisConn> = None;
    if !s.redis_cluster {
        match conn::RedisConn::new(&s) {
            Ok(c) => {
                let _ = fleet.conn.set(c.for_requests());
                conn = Some(c);
            }
            Err(e) => {
                log::error!("cluster: cannot set up the Redis connection: {e}");
                return;
            }
        }
    }
    fleet.metrics.fallback.set(1);
    let mut meter = RateMeter {
        last: HashMap::new(),
        rates: BTreeMap::new(),
    };
    let mut cursor: Option<String> = None;
    let mut tick = tokio::time::interval(s.sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        rounds += 1;
        let now = now_ms();
        let config = app.config();
        meter.sample(&config, now);
        if conn.is_none() {
            match tokio::time::timeout(s.timeout * 4, conn::RedisConn::cluster(&s)).await {
                Ok(Ok(c)) => {
                    let _ = fleet.conn.set(c.clone());
                    conn = Some(c);
                }
                Ok(Err(e)) => {
                    fleet.metrics.failures.inc();
                    if fleet.redis_up.load(Ordering::Relaxed) || rounds == 1 {
                        log::warn!("cluster: cannot reach the Redis Cluster: {e}");
                    }
                    fallback(&app, &fleet);
                    continue;
                }
                Err(_) => {
                    fleet.metrics.failures.inc();
                    fallback(&app, &fleet);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let work = sync_once(&app, &fleet, c, &meter, &mut cursor, now, rounds);
        match tokio::time::timeout(s.timeout * 4, work).await {
            Ok(Ok(())) => fleet.set_up(true),
            Ok(Err(e)) => {
                fleet.metrics.failures.inc();
                if fleet.redis_up.load(Ordering::Relaxed) {
                    log::warn!("cluster: exchange with Redis failed: {e}");
                }
                fallback(&app, &fleet);
            }
            Err(_) => {
                fleet.metrics.failures.inc();
                fallback(&app, &fleet);
            }
        }
    }
}

fn fallback(app: &App, fleet: &Fleet) {
    fleet.set_up(false);
    // Own level only: the others' levels are unknown now.
    let cfg = app.config();
    if let Some(d) = &cfg.degradation {
        app.registry.degrade.set_fleet_floor(d, 0);
    }
    let n = fleet.live.load(Ordering::Relaxed).max(1) as f64;
    let shares: HashMap<String, f64> = cfg
        .router
        .routes()
        .iter()
        .map(|r| (r.name.clone(), 1.0 / n))
        .collect();
    publish_shares(fleet, shares);
}

fn publish_shares(fleet: &Fleet, shares: HashMap<String, f64>) {
    for (r, s) in &shares {
        fleet.metrics.share.with_label_values(&[r]).set(*s);
    }
    fleet.shares.store(Arc::new(shares));
}

async fn sync_once(
    app: &App,
    fleet: &Fleet,
    conn: &mut conn::RedisConn,
    meter: &RateMeter,
    cursor: &mut Option<String>,
    now: u64,
    rounds: u64,
) -> redis::RedisResult<()> {
    let s = &fleet.settings;
    let k = |x: &str| fleet.key(x);
    let config = app.config();
    let degr = &app.registry.degrade;
    let level_name = |i: usize| {
        config
            .degradation
            .as_ref()
            .and_then(|d| d.levels.get(i))
            .map(|l| l.name.clone())
    };
    let (auto, level) = {
        let g = degr.lock();
        (g.auto_level(), g.level(now))
    };

    // 1. What this node changed since the last exchange (or during an outage), oldest
    // first. Each change leaves the queue only once Redis has it: a failed or timed-out
    // exchange keeps it for the next one.
    let queue = || fleet.outgoing.lock().unwrap_or_else(|p| p.into_inner());
    let mut sent = 0u64;
    loop {
        // (The guard is dropped at the end of this statement, never held over an await.)
        let next = queue().1.first().cloned();
        let Some((id, o)) = next else { break };
        match &o {
            Outgoing::Level(l, until) => {
                let seq: u64 = redis::cmd("INCR").arg(k("seq")).query_async(conn).await?;
                let v = ForcedLevel {
                    seq,
                    at_ms: now,
                    level: l.clone(),
                    until_ms: *until,
                    by: s.node_id.clone(),
                };
                let _: () = redis::cmd("SET")
                    .arg(k("forced_level"))
                    .arg(serde_json::to_string(&v).unwrap_or_default())
                    .query_async(conn)
                    .await?;
                mark_applied(fleet, "level", (now, seq));
                sent += 2;
            }
            Outgoing::Feature(f, on, until) => {
                let seq: u64 = redis::cmd("INCR").arg(k("seq")).query_async(conn).await?;
                let v = ForcedFeature {
                    seq,
                    at_ms: now,
                    on: *on,
                    until_ms: *until,
                    by: s.node_id.clone(),
                };
                let _: () = redis::cmd("HSET")
                    .arg(k("forced_features"))
                    .arg(f)
                    .arg(serde_json::to_string(&v).unwrap_or_default())
                    .query_async(conn)
                    .await?;
                mark_applied(fleet, &format!("feature:{f}"), (now, seq));
                sent += 2;
            }
            Outgoing::Purge(p) => {
                let _: String = redis::cmd("XADD")
                    .arg(k("purges"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(10_000)
                    .arg("*")
                    .arg("p")
                    .arg(serde_json::to_string(p).unwrap_or_default())
                    .query_async(conn)
                    .await?;
                sent += 1;
            }
        }
        // Done: off the queue (unless a newer change already replaced it).
        queue().1.retain(|(i, _)| *i != id);
    }

    // 2. Heartbeat and the fleet's view, in one round trip.
    let me = NodeInfo {
        id: s.node_id.clone(),
        config_hash: config.hash.clone(),
        config_version: config.version,
        auto_level: level_name(auto),
        level: level_name(level),
        routes: meter.rates.clone(),
        at_ms: now,
    };
    let ttl = s.node_ttl().as_millis() as u64;
    if cursor.is_none() {
        // Start after the purges already made: they were applied before this node ran
        // (and purges persist in each node's cache).
        let last: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg(k("purges"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async::<redis::streams::StreamRangeReply>(conn)
            .await
            .map(|r| {
                r.ids
                    .into_iter()
                    .map(|i| {
                        let map = i
                            .map
                            .iter()
                            .filter_map(|(f, v)| {
                                redis::from_redis_value_ref::<String>(v)
                                    .ok()
                                    .map(|v| (f.clone(), v))
                            })
                            .collect();
                        (i.id, map)
                    })
                    .collect()
            })?;
        *cursor = Some(
            last.first()
                .map(|l| l.0.clone())
                .unwrap_or_else(|| "0-0".into()),
        );
        sent += 1;
    }
    let from = format!("({}", cursor.as_deref().unwrap_or("0-0"));
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(k("nodes"))
        .arg(now)
        .arg(&s.node_id)
        .ignore();
    pipe.cmd("HSET")
        .arg(k("node_info"))
        .arg(&s.node_id)
        .arg(serde_json::to_string(&me).unwrap_or_default())
        .ignore();
    pipe.cmd("ZRANGEBYSCORE")
        .arg(k("nodes"))
        .arg(now.saturating_sub(ttl))
        .arg("+inf");
    pipe.cmd("HGETALL").arg(k("node_info"));
    pipe.cmd("GET").arg(k("forced_level"));
    pipe.cmd("HGETALL").arg(k("forced_features"));
    pipe.cmd("XRANGE")
        .arg(k("purges"))
        .arg(&from)
        .arg("+")
        .arg("COUNT")
        .arg(1000);
    sent += 7;
    if rounds % 40 == 0 {
        // Forget nodes gone for a minute.
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(k("nodes"))
            .arg("-inf")
            .arg(now.saturating_sub(60_000))
            .ignore();
        sent += 1;
    }
    #[allow(clippy::type_complexity)]
    let (live, infos, forced_level, forced_features, purges): (
        Vec<String>,
        HashMap<String, String>,
        Option<String>,
        HashMap<String, String>,
        redis::streams::StreamRangeReply,
    ) = pipe.query_async(conn).await?;
    fleet.metrics.commands.inc_by(sent);

    // 3. Apply.
    let mut nodes: Vec<NodeInfo> = live
        .iter()
        .filter_map(|id| infos.get(id))
        .filter_map(|j| serde_json::from_str::<NodeInfo>(j).ok())
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    let n = live.len().max(1) as u64;
    // Right after an outage the other nodes' heartbeats are older than the TTL until each
    // has made its own first exchange: the fleet has not shrunk. Its size and this
    // node's place number the tickets handed out alone (`number % nodes == slot`), and a
    // node that falls back again with a smaller fleet in mind would hand out the
    // numbers of another node: they hold, never shrink, until a TTL after the outage.
    let settling = !fleet.redis_up.load(Ordering::Relaxed)
        || now.saturating_sub(fleet.down_at.load(Ordering::Relaxed)) < 2 * ttl;
    let shrinks = n < fleet.live.load(Ordering::Relaxed);
    if !(settling && shrinks) {
        fleet.live.store(n, Ordering::Relaxed);
    }
    // This node's place among the live ones, by id.
    if live.contains(&s.node_id) && !(settling && shrinks) {
        let before = live.iter().filter(|id| **id < s.node_id).count();
        fleet.slot.store(before as u64, Ordering::Relaxed);
    }
    fleet.metrics.nodes.set(n as i64);

    // Rate-limit shares: this node's part of each route's traffic, at least a quarter of
    // an equal split (a node whose traffic just started is not starved for a window).
    let floor = 1.0 / (4.0 * n as f64);
    let mut shares = HashMap::new();
    for r in config.router.routes() {
        let own = meter.rates.get(&r.name).copied().unwrap_or(0.0);
        let total: f64 = nodes
            .iter()
            .map(|x| x.routes.get(&r.name).copied().unwrap_or(0.0))
            .sum();
        let share = if total >= 1.0 && own > 0.0 {
            (own / total).clamp(floor, 1.0)
        } else {
            1.0 / n as f64
        };
        shares.insert(r.name.clone(), share);
    }
    publish_shares(fleet, shares);

    if let Some(d) = &config.degradation {
        let idx = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| d.levels.iter().position(|l| &l.name == n))
                .unwrap_or(0)
        };
        let floor = nodes
            .iter()
            .filter(|x| x.id != s.node_id)
            .map(|x| idx(&x.auto_level))
            .max()
            .unwrap_or(0);
        degr.set_fleet_floor(d, floor);
        if let Some(j) = forced_level {
            if let Ok(f) = serde_json::from_str::<ForcedLevel>(&j) {
                if take_new(fleet, "level", (f.at_ms, f.seq)) {
                    let level = f
                        .level
                        .as_ref()
                        .and_then(|n| d.levels.iter().position(|l| &l.name == n));
                    let for_ = f
                        .until_ms
                        .map(|u| Duration::from_millis(u.saturating_sub(now)));
                    if for_.is_none_or(|f| !f.is_zero()) {
                        log::info!("cluster: level forced to {:?} by node {}", f.level, f.by);
                        degr.force(d, level, for_);
                    }
                }
            }
        }
        for (feature, j) in &forced_features {
            if let Ok(f) = serde_json::from_str::<ForcedFeature>(j) {
                if take_new(fleet, &format!("feature:{feature}"), (f.at_ms, f.seq)) {
                    let for_ = f
                        .until_ms
                        .map(|u| Duration::from_millis(u.saturating_sub(now)));
                    if for_.is_none_or(|f| !f.is_zero()) {
                        log::info!(
                            "cluster: feature {feature} forced to {:?} by node {}",
                            f.on,
                            f.by
                        );
                        degr.force_feature(d, feature, f.on, for_);
                    }
                }
            }
        }
    }

    for id in purges.ids {
        *cursor = Some(id.id.clone());
        let Some(v) = id.map.get("p") else { continue };
        let Ok(text) = redis::from_redis_value_ref::<String>(v) else {
            continue;
        };
        let Ok(p) = serde_json::from_str::<PurgeMsg>(&text) else {
            continue;
        };
        if p.by == s.node_id {
            continue;
        }
        if let Some(cache) = app.cache.get() {
            let scope = if p.kind == "prefix" {
                PurgeScope::Prefix {
                    host: p.host,
                    path_prefix: p.target,
                }
            } else {
                PurgeScope::Url {
                    host: p.host,
                    path_and_query: p.target,
                }
            };
            cache.purge(&scope, "fleet");
        }
    }
    fleet.nodes.store(Arc::new(nodes));

    // 4. The shared waiting rooms: this node's moves, one admission tick, a fresh view.
    // After an outage, the room this node ran meanwhile goes with them (Redis raises
    // its ticket counters to it); then the local room follows the shared one.
    for r in &config.rooms {
        let fr = fleet.room(&r.name);
        let mark = fr.diverged_mark();
        let ran_alone = mark.map(|_| {
            r.shared
                .lock()
                .queues
                .iter()
                .map(|q| (q.frontier, q.next))
                .collect::<Vec<_>>()
        });
        let sent = fr
            .sync(conn, &r.effective(), now, ran_alone.as_deref())
            .await?;
        if let Some(m) = mark {
            fr.synced_since(m);
        }
        fleet.metrics.commands.inc_by(sent);
        let v = fr.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.follow_fleet(&v, n, now, &fr.alone_next());
        r.publish_fleet_view(&v);
    }
    Ok(())
}

fn mark_applied(fleet: &Fleet, item: &str, seq: (u64, u64)) {
    fleet
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(item.to_string(), seq);
}

/// True the first time this change (or a later one) is seen for `item`.
fn take_new(fleet: &Fleet, item: &str, seq: (u64, u64)) -> bool {
    let mut g = fleet.applied.lock().unwrap_or_else(|p| p.into_inner());
    let seen = g.get(item).copied().unwrap_or((0, 0));
    if seq > seen {
        g.insert(item.to_string(), seq);
        true
    } else {
        false
    }
}
