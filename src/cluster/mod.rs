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
//! own, `{p:room:NAME}` (see `fleet_room.rs`): a room's scripts touch only its own slot,
//! and a Redis Cluster spreads the rooms over its masters.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub mod fleet;
pub mod fleet_room;
pub mod redis_conn;

use fleet::*;

use crate::app::App;
use crate::cache::PurgeScope;
use crate::clock::now_ms;

/// The sync loop; runs until `stop` changes.
pub async fn run(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(fleet) = app.fleet.clone() else {
        return;
    };
    let s = fleet.settings.clone();
    // One Redis, or the master Sentinel names: a lazy connection, now. A Redis Cluster:
    // connected at the first exchange that reaches it (the node serves in fallback until
    // then).
    let mut conn: Option<redis_conn::RedisConn> = None;
    if !s.redis_cluster {
        match redis_conn::RedisConn::new(&s) {
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
            match tokio::time::timeout(s.timeout * 4, redis_conn::RedisConn::cluster(&s)).await {
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
        app.degrade.set_fleet_floor(d, 0);
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
    conn: &mut redis_conn::RedisConn,
    meter: &RateMeter,
    cursor: &mut Option<String>,
    now: u64,
    rounds: u64,
) -> redis::RedisResult<()> {
    let s = &fleet.settings;
    let k = |x: &str| fleet.key(x);
    let config = app.config();
    let degr = &app.degrade;
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
