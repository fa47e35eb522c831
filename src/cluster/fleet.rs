//! The fleet as this node sees it: the nodes alive, this node's shares of global limits,
//! changes waiting for Redis, the shared rooms, and the fleet's metrics. Kept in `App`;
//! the sync loop that fills it is `crate::cluster::run`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{GaugeVec, IntCounter, IntGauge, IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};

use super::{fleet_room, redis_conn};
use crate::cache::PurgeScope;
use crate::clock::now_ms;
use crate::config::fleet::{ClusterSettings, FailMode};

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
pub(super) struct ForcedLevel {
    pub(super) seq: u64,
    /// When it was forced: orders changes even if Redis lost its data (and `seq`
    /// restarted) in between.
    pub(super) at_ms: u64,
    pub(super) level: Option<String>,
    pub(super) until_ms: Option<u64>,
    pub(super) by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ForcedFeature {
    pub(super) seq: u64,
    pub(super) at_ms: u64,
    pub(super) on: Option<bool>,
    pub(super) until_ms: Option<u64>,
    pub(super) by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PurgeMsg {
    pub(super) by: String,
    pub(super) kind: String,
    pub(super) host: Option<String>,
    pub(super) target: String,
}

/// Changes kept for Redis at most (a long outage with many purges).
pub(super) const MAX_OUTGOING: usize = 10_000;

/// A change made on this node that every node must follow. Kept until Redis has it: a
/// change made while Redis is unreachable is sent once it is back.
#[derive(Clone)]
pub(super) enum Outgoing {
    Level(Option<String>, Option<u64>),
    Feature(String, Option<bool>, Option<u64>),
    Purge(PurgeMsg),
}

pub struct Fleet {
    pub settings: ClusterSettings,
    pub redis_up: AtomicBool,
    /// Whether Redis' state (up or down) has been reported once.
    pub(super) reported: AtomicBool,
    /// Nodes alive at the last successful exchange (at least 1: this one).
    pub live: AtomicU64,
    /// This node's place among them (by id), for numbering tickets during an outage.
    pub(super) slot: AtomicU64,
    /// When Redis last stopped answering (unix ms; 0: never): for a while after it
    /// answers again, the fleet is not taken to have shrunk (see `sync_once`).
    pub(super) down_at: AtomicU64,
    pub(super) nodes: ArcSwap<Vec<NodeInfo>>,
    pub(super) shares: ArcSwap<HashMap<String, f64>>,
    /// Changes not yet in Redis, each with its number in this node's sequence.
    pub(super) outgoing: Mutex<(u64, Vec<(u64, Outgoing)>)>,
    /// The Redis connection, once the sync loop made it (shared by the rooms' calls).
    pub(super) conn: std::sync::OnceLock<redis_conn::RedisConn>,
    /// Shared waiting rooms, by name.
    pub(super) rooms: Mutex<HashMap<String, Arc<fleet_room::FleetRoom>>>,
    /// Last change applied, per forced item (`level`, `feature:NAME`): (at_ms, seq).
    pub(super) applied: Mutex<HashMap<String, (u64, u64)>>,
    pub(super) metrics: FleetMetrics,
}

pub(super) struct FleetMetrics {
    pub(super) redis_up: IntGauge,
    pub(super) nodes: IntGauge,
    pub(super) fallback: IntGauge,
    pub(super) commands: IntCounter,
    pub(super) failures: IntCounter,
    pub(super) share: GaugeVec,
}

impl FleetMetrics {
    pub(super) fn new(node: &str) -> FleetMetrics {
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
    pub fn room(&self, name: &str) -> Arc<fleet_room::FleetRoom> {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| {
                let r = fleet_room::FleetRoom::new(&self.settings.prefix, name);
                r.set_claim_fence(self.settings.timeout);
                Arc::new(r)
            })
            .clone()
    }

    /// A handle on the Redis connection while Redis answers; `None` in fallback.
    pub fn conn(&self) -> Option<redis_conn::RedisConn> {
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

    pub(super) fn key(&self, k: &str) -> String {
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

    pub(super) fn push(&self, o: Outgoing) {
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

    pub(super) fn set_up(&self, up: bool) {
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
pub(super) struct RateMeter {
    pub(super) last: HashMap<String, (u64, u64)>,
    pub(super) rates: BTreeMap<String, f64>,
}

impl RateMeter {
    pub(super) fn sample(&mut self, cfg: &crate::config::Config, now: u64) {
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
