//! Waiting rooms at run time: the state that outlives configs (one `RoomState` per room
//! name, behind a mutex), the keys and settings of the running config, snapshots to disk,
//! and the metrics. The decisions themselves are in `policy::waiting_room`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{IntCounter, IntGauge};

use crate::clock::now_ms;
use crate::policy::rate_limit::KeyedLimiter;
use crate::policy::room_sizing::{self, Bounds, Sizer};
use crate::policy::ticket::Keyring;
use crate::policy::waiting_room::{Arrival, FleetShare, RoomParams, RoomState, PREQUEUE_BIT};

/// Default lower bound of an `auto` number (`auto.min_active_users`,
/// `auto.min_new_users_per_minute`).
pub const AUTO_MIN: u32 = 10;
/// Default upper bound of an `auto` number.
pub const AUTO_MAX: u32 = 1_000_000;

/// Bounds of a room's automatic numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoBounds {
    pub capacity: Bounds,
    pub pace: Bounds,
}

/// A room sized from the origins it guards (`active_users: auto`, `new_users_per_minute:
/// auto`): which of the two numbers are automatic, and their bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomAuto {
    pub capacity: bool,
    pub pace: bool,
    pub bounds: AutoBounds,
}

impl RoomAuto {
    /// The sizer's settings, with the guarded origins' latency tolerance.
    pub fn params(&self, tolerance: f64) -> room_sizing::Params {
        room_sizing::Params {
            capacity: self.bounds.capacity,
            pace: self.bounds.pace,
            tolerance,
        }
    }
}

/// Ops overrides from the admin API, cleared by the next successful reload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    pub active_users: Option<u32>,
    pub new_users_per_minute: Option<u32>,
}

/// A room's state, shared by every config that names the room.
pub struct RoomShared {
    pub name: String,
    state: Mutex<RoomState>,
    pub overrides: Mutex<Overrides>,
    /// Counter values already exported (counters are derived from the state's totals).
    exported: Mutex<[u64; 4]>,
    /// Capacity factor of the degradation level in force (f64 bits).
    factor: std::sync::atomic::AtomicU64,
    /// Fingerprints of the room's ticket keys (see [`Keyring::fingerprints`]): saved
    /// with the state, so a snapshot is restored only into the room it came from.
    identity: Mutex<Vec<String>>,
    /// Ticket numbers made durable ahead of use (see [`RoomShared::make_durable`]).
    reserve: Mutex<Reserve>,
    /// The automatic sizing (`auto`), once the room first ticks with it; it outlives
    /// reloads, so a reload does not send a sized room back to its lower bounds.
    sizer: Mutex<Option<Sizer>>,
    /// The automatic numbers in force for the hot path: capacity << 32 | pace, 0 before
    /// the first sizing (both are at least 1 once sized).
    auto_now: std::sync::atomic::AtomicU64,
}

/// Ticket numbers reserved on disk ahead of use: no number leaves ecluse before the
/// reservation covering it is on disk, so a `kill -9` between two snapshots never hands
/// the same number to two pupils. The block adapts to the arrival rate (about a second's
/// worth), so a surge costs a few small synchronous writes per second and a restart
/// skips at most one block of numbers nobody holds (their grants expire unclaimed).
#[derive(Debug)]
struct Reserve {
    /// Per class: every number up to this one may be handed out.
    until: Vec<u64>,
    block: u64,
    last: Option<std::time::Instant>,
    dir: Option<PathBuf>,
    failing: bool,
}

const RESERVE_MIN: u64 = 32;
const RESERVE_MAX: u64 = 65_536;

/// A room's snapshot on disk, with who it belongs to.
#[derive(serde::Serialize)]
struct SavedRef<'a> {
    room: &'a str,
    keys: &'a [String],
    state: &'a RoomState,
}

#[derive(serde::Deserialize)]
struct Saved {
    room: String,
    keys: Vec<String>,
    state: RoomState,
}

/// The reservation file: numbers handed out may reach `next` per class.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reserved {
    room: String,
    keys: Vec<String>,
    next: Vec<u64>,
}

/// Whether state saved for (`room`, `keys`) belongs to the room `name` with `identity`:
/// same name, and at least one ticket key in common (a rotation keeps the old key
/// verifying; with no key in common no saved ticket could be honoured anyway).
fn belongs(room: &str, keys: &[String], name: &str, identity: &[String]) -> bool {
    room == name && keys.iter().any(|k| identity.contains(k))
}

/// Move a file that belongs to another room or instance out of the way, keeping it for
/// ops to look at.
fn set_aside(p: &Path, why: &str) {
    let aside = p.with_extension(format!("set-aside-{}", now_ms()));
    match std::fs::rename(p, &aside) {
        Ok(()) => log::warn!("{}: {why}; set aside as {}", p.display(), aside.display()),
        Err(e) => log::warn!("{}: {why}; cannot set it aside: {e}", p.display()),
    }
}

/// Write `bytes` to `path` durably: temp file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RoomShared {
    /// Write the reservation file: numbers handed out may reach `next` per class.
    fn write_reservation(&self, dir: &Path, next: Vec<u64>) -> std::io::Result<()> {
        let rec = Reserved {
            room: self.name.clone(),
            keys: self
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            next,
        };
        let bytes = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        write_durably(&reserve_path(dir, &self.name), &bytes)
    }

    /// Make sure every ticket number up to `next` (per class) is covered by a
    /// reservation on disk; called after an arrival, before its ticket leaves. Another
    /// block is written only when a number passes the reservation.
    fn make_durable(&self, next: &[u64]) {
        let mut r = self.reserve.lock().unwrap_or_else(|p| p.into_inner());
        if r.until.len() < next.len() {
            r.until.resize(next.len(), 0);
        }
        if next.iter().zip(&r.until).all(|(n, u)| n <= u) {
            return;
        }
        let Some(dir) = r.dir.clone() else {
            return;
        };
        // About a second's worth of arrivals: double when a block lasted under a second,
        // halve when it lasted over ten.
        let now = std::time::Instant::now();
        if let Some(last) = r.last {
            let lasted = now.duration_since(last);
            if lasted < std::time::Duration::from_secs(1) {
                r.block = (r.block * 2).min(RESERVE_MAX);
            } else if lasted > std::time::Duration::from_secs(10) {
                r.block = (r.block / 2).max(RESERVE_MIN);
            }
        }
        r.last = Some(now);
        let block = r.block;
        let until: Vec<u64> = next
            .iter()
            .zip(r.until.iter().chain(std::iter::repeat(&0)))
            .map(|(n, u)| (*u).max(n + block))
            .collect();
        let written = crate::instance::ensure_private_dir(&dir)
            .map_err(std::io::Error::other)
            .and_then(|()| self.write_reservation(&dir, until.clone()));
        match written {
            Ok(()) => {
                if r.failing {
                    log::info!("room {}: ticket reservations written again", self.name);
                }
                r.failing = false;
                r.until = until;
            }
            Err(e) => {
                // The ticket still leaves (the room stays open), but a crash before the
                // next snapshot could hand its number out again: say so once.
                if !r.failing {
                    log::error!(
                        "room {}: cannot reserve ticket numbers in {}: {e}; after a crash some numbers could be handed out twice",
                        self.name,
                        dir.display()
                    );
                }
                r.failing = true;
            }
        }
    }

    /// Set the degradation level's capacity factor.
    pub fn set_factor(&self, f: f64) {
        self.factor
            .store(f.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The automatic numbers in force (capacity, pace), once sized.
    fn auto_numbers(&self) -> Option<(u32, u32)> {
        let v = self.auto_now.load(std::sync::atomic::Ordering::Relaxed);
        (v != 0).then_some(((v >> 32) as u32, v as u32))
    }

    /// The automatic sizing's state for `/admin/state`: capacity, pace and the last
    /// change (`None` before the room first sized itself).
    pub fn auto_view(&self) -> Option<(u32, u32, Option<room_sizing::Change>)> {
        let (c, p) = self.auto_numbers()?;
        let last = self
            .sizer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|s| s.last_change().cloned());
        Some((c, p, last))
    }
}

#[derive(Default)]
pub struct RoomRegistry {
    rooms: Mutex<HashMap<String, Arc<RoomShared>>>,
    /// Where snapshots are read from at first use (set once, before the first load).
    state_dir: Mutex<Option<PathBuf>>,
}

fn snapshot_path(dir: &Path, room: &str) -> PathBuf {
    dir.join(format!("room-{room}.json"))
}

fn reserve_path(dir: &Path, room: &str) -> PathBuf {
    dir.join(format!("room-{room}.reserved"))
}

impl RoomRegistry {
    pub fn set_state_dir(&self, dir: PathBuf) {
        *self.state_dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir);
    }

    /// The room's shared state; created (from a snapshot when one exists) on first use.
    /// `identity`: the fingerprints of the room's ticket keys; a snapshot saved under
    /// other keys or for another room is set aside, never restored.
    pub fn get(&self, name: &str, params: &RoomParams, identity: &[String]) -> Arc<RoomShared> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = rooms.get(name) {
            r.lock().resize(params);
            *r.identity.lock().unwrap_or_else(|p| p.into_inner()) = identity.to_vec();
            return r.clone();
        }
        let dir = self
            .state_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let restored = dir
            .as_ref()
            .and_then(|d| restore(d, name, params, identity));
        let reserved = dir
            .as_ref()
            .and_then(|d| restore_reserved(d, name, identity));
        let mut state = restored.unwrap_or_else(|| RoomState::new(params, now_ms()));
        if let Some(next) = &reserved {
            // Numbers reserved before a crash may have been handed out after the last
            // snapshot: continue after them.
            for (q, n) in state.queues.iter_mut().zip(next) {
                q.next = q.next.max(*n);
            }
        }
        let shared = Arc::new(RoomShared {
            name: name.to_string(),
            state: Mutex::new(state),
            overrides: Mutex::new(Overrides::default()),
            exported: Mutex::new([0; 4]),
            factor: std::sync::atomic::AtomicU64::new(1f64.to_bits()),
            identity: Mutex::new(identity.to_vec()),
            reserve: Mutex::new(Reserve {
                until: reserved.unwrap_or_default(),
                block: RESERVE_MIN,
                last: None,
                dir,
                failing: false,
            }),
            sizer: Mutex::new(None),
            auto_now: std::sync::atomic::AtomicU64::new(0),
        });
        rooms.insert(name.to_string(), shared.clone());
        shared
    }

    fn all(&self) -> Vec<Arc<RoomShared>> {
        self.rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The last snapshot, once every service has stopped (no ticket can leave any more):
    /// the reservations shrink back to the numbers really handed out, so a clean restart
    /// continues exactly where the room stopped (only a crash skips a reserved block).
    pub fn snapshot_final(&self, dir: &Path) {
        self.snapshot(dir);
        let rooms = self.all();
        for r in rooms {
            let next: Vec<u64> = r.lock().queues.iter().map(|q| q.next).collect();
            if let Err(e) = r.write_reservation(dir, next) {
                log::warn!("room {}: cannot write its last reservation: {e}", r.name);
            }
        }
    }

    /// Write every room's state to `dir` (atomically: temp file + rename).
    pub fn snapshot(&self, dir: &Path) {
        let rooms = self.all();
        if rooms.is_empty() {
            return;
        }
        if let Err(e) = crate::instance::ensure_private_dir(dir) {
            log::warn!("cannot save the waiting rooms: state_dir {e}");
            return;
        }
        for r in rooms {
            let keys = r.identity.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let saved = serde_json::to_string(&SavedRef {
                room: &r.name,
                keys: &keys,
                state: &r.lock(),
            });
            let Ok(text) = saved else {
                continue;
            };
            let path = snapshot_path(dir, &r.name);
            let tmp = path.with_extension("json.tmp");
            if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
                log::warn!(
                    "room {}: cannot save state to {}: {e}",
                    r.name,
                    path.display()
                );
            }
        }
    }
}

/// The room's snapshot in `dir`, if there is one and it belongs to this room.
fn restore(dir: &Path, name: &str, params: &RoomParams, identity: &[String]) -> Option<RoomState> {
    let p = snapshot_path(dir, name);
    let text = std::fs::read_to_string(&p).ok()?;
    match serde_json::from_str::<Saved>(&text) {
        Ok(saved) if belongs(&saved.room, &saved.keys, name, identity) => {
            let mut s = saved.state;
            s.resize(params);
            log::info!(
                "room {name}: restored from {} ({} waiting, {} active)",
                p.display(),
                s.waiting(),
                s.active()
            );
            Some(s)
        }
        Ok(saved) => {
            set_aside(
                &p,
                &format!(
                    "saved by room `{}` under other ticket keys: not this room's state",
                    saved.room
                ),
            );
            None
        }
        Err(e) => {
            set_aside(
                &p,
                &format!("not a snapshot of this version of ecluse ({e})"),
            );
            None
        }
    }
}

/// The numbers reserved for the room before it stopped, if they are this room's.
fn restore_reserved(dir: &Path, name: &str, identity: &[String]) -> Option<Vec<u64>> {
    let p = reserve_path(dir, name);
    let text = std::fs::read_to_string(&p).ok()?;
    match serde_json::from_str::<Reserved>(&text) {
        Ok(r) if belongs(&r.room, &r.keys, name, identity) => Some(r.next),
        Ok(_) => {
            set_aside(&p, "reserved by another room or under other ticket keys");
            None
        }
        Err(e) => {
            set_aside(&p, &format!("unreadable ({e})"));
            None
        }
    }
}

/// Per-room metric handles.
pub struct RoomMetrics {
    pub waiting: IntGauge,
    pub active: IntGauge,
    pub capacity: IntGauge,
    pub frontier: IntGauge,
    pub estimated_wait: prometheus::Gauge,
    pub admitted: IntCounter,
    pub abandoned: IntCounter,
    pub issued: IntCounter,
    pub direct: IntCounter,
    /// Refused cookies: forged or altered (bad signature, unknown key, malformed).
    pub rejected_forged: IntCounter,
    pub rejected_other_room: IntCounter,
    /// Waiting tickets past the abandon timeout, sessions past the idle timeout.
    pub rejected_expired: IntCounter,
    /// Copies of a waiting ticket that was already used to get in.
    pub rejected_reused: IntCounter,
}

impl RoomMetrics {
    pub fn new(room: &str) -> RoomMetrics {
        let m = crate::metrics::get();
        RoomMetrics {
            waiting: m.room_waiting.with_label_values(&[room]),
            active: m.room_active.with_label_values(&[room]),
            capacity: m.room_capacity.with_label_values(&[room]),
            frontier: m.room_frontier.with_label_values(&[room]),
            estimated_wait: m.room_estimated_wait.with_label_values(&[room]),
            admitted: m.room_admitted.with_label_values(&[room]),
            abandoned: m.room_abandoned.with_label_values(&[room]),
            issued: m.room_issued.with_label_values(&[room]),
            direct: m.room_direct.with_label_values(&[room]),
            rejected_forged: m.room_rejected_tickets.with_label_values(&[room, "forged"]),
            rejected_other_room: m
                .room_rejected_tickets
                .with_label_values(&[room, "other_room"]),
            rejected_expired: m
                .room_rejected_tickets
                .with_label_values(&[room, "expired"]),
            rejected_reused: m.room_rejected_tickets.with_label_values(&[room, "reused"]),
        }
    }
}

/// One room of the running config.
pub struct Room {
    pub name: String,
    pub params: RoomParams,
    pub keys: Keyring,
    pub shared: Arc<RoomShared>,
    /// Cookie holding the ticket: `ecluse_<room>`.
    pub cookie_name: String,
    /// Path prefixes needing admission (empty: all paths of the guarded routes).
    pub inside: Vec<String>,
    /// Config class index → room class index (0 = default queue).
    pub class_map: Vec<u8>,
    /// New tickets per client address.
    pub ticket_limiter: Arc<KeyedLimiter>,
    pub ticket_fingerprint: String,
    /// The config's pages with this room's queue template and name.
    pub pages: Arc<crate::pages::Pages>,
    /// A chime when the turn comes in a background tab (`turn_sound`).
    pub turn_sound: bool,
    pub end_header: http::HeaderName,
    pub metrics: RoomMetrics,
    /// `active_users: auto` / `new_users_per_minute: auto`.
    pub auto: Option<RoomAuto>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.name)
            .field("params", &self.params)
            .finish()
    }
}

impl Room {
    /// The params with ops overrides applied.
    pub fn effective(&self) -> RoomParams {
        let o = *self
            .shared
            .overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut p = self.params.clone();
        // The automatic numbers, once sized (until then the params hold the lower bounds).
        if let Some(auto) = &self.auto {
            if let Some((c, n)) = self.shared.auto_numbers() {
                if auto.capacity {
                    p.active_users = c;
                }
                if auto.pace {
                    p.new_users_per_minute = n;
                }
            }
        }
        if let Some(a) = o.active_users {
            p.active_users = a;
        }
        if let Some(n) = o.new_users_per_minute {
            p.new_users_per_minute = n;
        }
        // A degradation level may shrink the room.
        let f = self.shared.factor();
        if f < 1.0 {
            p.active_users = ((f64::from(p.active_users) * f) as u32).max(1);
            p.new_users_per_minute = ((f64::from(p.new_users_per_minute) * f) as u32).max(1);
        }
        p
    }

    /// Whether a path needs admission. A browser fetches `/favicon.ico` and
    /// `/robots.txt` by itself (even right after a logout, without the cookie): they never
    /// take a place.
    pub fn is_inside(&self, path: &str) -> bool {
        if path == "/favicon.ico" || path == "/robots.txt" {
            return false;
        }
        self.inside.is_empty() || self.inside.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// Fleet mode: the gauges from the shared room's view.
    pub fn publish_fleet_view(&self, v: &crate::cluster::fleet_room::View) {
        let p = self.effective();
        self.metrics.waiting.set(v.waiting() as i64);
        self.metrics.active.set(v.active as i64);
        self.metrics.capacity.set(i64::from(p.active_users));
        self.metrics
            .frontier
            .set(v.queues.first().map(|q| q.0).unwrap_or(0) as i64);
        self.metrics.estimated_wait.set(
            v.eta(v.waiting().max(1))
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0),
        );
        let mut seen = self
            .shared
            .exported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let counters = [
            &self.metrics.admitted,
            &self.metrics.abandoned,
            &self.metrics.issued,
            &self.metrics.direct,
        ];
        for i in 0..4 {
            if v.counters[i] > seen[i] {
                counters[i].inc_by(v.counters[i] - seen[i]);
                seen[i] = v.counters[i];
            }
        }
    }

    /// Params for this node: in fleet fallback (Redis unreachable), its share of the
    /// room's capacity and pace (÷ nodes last seen), so the fleet never admits more than
    /// configured, over the fleet's numbering.
    pub fn effective_share(&self, share: Option<FleetShare>) -> RoomParams {
        let mut p = self.effective();
        if let Some(s) = share {
            let d = s.nodes.max(1);
            p.active_users = (p.active_users / d).max(1);
            p.new_users_per_minute = (p.new_users_per_minute / d).max(1);
            p.fleet = Some(s);
        }
        p
    }

    /// Fleet mode, Redis answering: the local room follows the shared one (so that it
    /// can go on from there if Redis becomes unreachable), this node's share of its
    /// sessions counted in a seed bucket.
    /// `alone`: per class, the highest number this node handed out alone: its own room
    /// never numbers below it again, even while Redis has not raised its counter to it.
    pub fn follow_fleet(
        &self,
        v: &crate::cluster::fleet_room::View,
        nodes: u64,
        now: u64,
        alone: &[u64],
    ) {
        let p = self.effective();
        let n = nodes.max(1);
        let mut s = self.shared.lock();
        s.follow(
            &p,
            &v.queues,
            &v.prequeue,
            v.opened,
            &v.margin,
            v.active.div_ceil(n),
            v.pending.div_ceil(n),
            v.paused,
            v.rate,
            now,
        );
        for (q, a) in s.queues.iter_mut().zip(alone) {
            q.next = q.next.max(*a);
        }
    }

    /// A newcomer arrives at this node's own room (single node, or a fleet node while
    /// Redis is away). The number it gets is covered by a reservation on disk before this
    /// returns, so it can never be handed out twice, even after a `kill -9`.
    pub fn arrive_local(&self, params: &RoomParams, class: usize, now: u64) -> Arrival {
        let mut s = self.shared.lock();
        let a = s.arrive(params, class, now);
        let next: Vec<u64> = s.queues.iter().map(|q| q.next & !PREQUEUE_BIT).collect();
        drop(s);
        self.shared.make_durable(&next);
        a
    }

    /// `auto` rooms, about once a second: measure the origins the room guards (`origins`:
    /// those of the routes naming the room) and step the sizer; a change is logged with
    /// its cause and counted. The room reads the new numbers at its next tick.
    pub fn size(&self, origins: &[Guarded<'_>], now: u64) {
        let Some(auto) = &self.auto else {
            return;
        };
        if origins.is_empty() {
            return;
        }
        let (active, pending, waiting) = {
            let s = self.shared.lock();
            (s.active() + s.pending(), s.pending(), s.waiting())
        };
        // A degradation level shrinks the room by its factor after the sizer: the sizer
        // sees the sessions inside at its own scale, or a room at 80% could never count
        // as in use (and grow) while the level holds.
        let f = self.shared.factor();
        let (active, pending) = if f > 0.0 && f < 1.0 {
            (
                (active as f64 / f).ceil() as u64,
                (pending as f64 / f).floor() as u64,
            )
        } else {
            (active, pending)
        };
        // The strictest tolerance of the guarded origins' adaptive limits (2 without).
        let tolerance = origins
            .iter()
            .filter_map(|o| o.tolerance)
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
            .unwrap_or(2.0);
        let p = auto.params(tolerance);
        let samples: Vec<(&str, room_sizing::Sample)> = origins
            .iter()
            .map(|o| {
                (
                    o.name,
                    room_sizing::Sample {
                        pending,
                        ..o.shared.room_sample(now, o.max_inflight, active, waiting)
                    },
                )
            })
            .collect();
        let mut g = self.shared.sizer.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = Vec::new();
        let sizer = g.get_or_insert_with(|| {
            let s = Sizer::new(&p, now);
            if let Some(c) = s.last_change() {
                changes.push(c.clone());
            }
            s
        });
        changes.extend(sizer.rebound(&p, now));
        changes.extend(sizer.step_all(&p, &samples, now));
        let (c, n) = (sizer.capacity(&p), sizer.pace(&p));
        drop(g);
        let packed = (u64::from(c.max(1)) << 32) | u64::from(n.max(1));
        self.shared
            .auto_now
            .store(packed, std::sync::atomic::Ordering::Relaxed);
        let m = crate::metrics::get();
        if auto.capacity {
            m.room_auto_capacity
                .with_label_values(&[&self.name])
                .set(i64::from(c));
        }
        if auto.pace {
            m.room_auto_pace
                .with_label_values(&[&self.name])
                .set(i64::from(n));
        }
        for ch in changes {
            let reason = ch.reason.as_str();
            let line = format!(
                "room {}: auto capacity {} -> {}, pace {} -> {}/min ({reason}): {}",
                self.name, ch.capacity_from, ch.capacity_to, ch.pace_from, ch.pace_to, ch.detail
            );
            match ch.reason {
                room_sizing::Reason::Latency
                | room_sizing::Reason::Errors
                | room_sizing::Reason::Saturated => log::warn!("{line}"),
                _ => log::info!("{line}"),
            }
            m.room_auto_changes
                .with_label_values(&[&self.name, reason])
                .inc();
        }
    }

    /// Advance admission and refresh the gauges. Called about once a second.
    pub fn tick(&self, now: u64) {
        self.tick_share(now, None)
    }

    /// `tick` with this node's share of a fleet's room (fleet fallback).
    pub fn tick_share(&self, now: u64, share: Option<FleetShare>) {
        let p = self.effective_share(share);
        let mut s = self.shared.lock();
        s.tick(&p, now);
        self.metrics.waiting.set(s.waiting() as i64);
        self.metrics.active.set(s.active() as i64);
        self.metrics.capacity.set(i64::from(p.active_users));
        self.metrics
            .frontier
            .set(s.queues.first().map(|q| q.frontier).unwrap_or(0) as i64);
        self.metrics.estimated_wait.set(
            s.eta(s.waiting().max(1))
                .map(|d| d.as_secs_f64())
                .unwrap_or(-1.0),
        );
        let totals = [
            s.counters.admitted,
            s.counters.abandoned,
            s.counters.issued,
            s.counters.direct,
        ];
        drop(s);
        let mut seen = self
            .shared
            .exported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let counters = [
            &self.metrics.admitted,
            &self.metrics.abandoned,
            &self.metrics.issued,
            &self.metrics.direct,
        ];
        for i in 0..4 {
            if totals[i] > seen[i] {
                counters[i].inc_by(totals[i] - seen[i]);
                seen[i] = totals[i];
            }
        }
    }
}

/// An origin an `auto` room guards, as the sizer reads it (built by `crate::sizing` from
/// the routes that name the room).
pub struct Guarded<'a> {
    pub name: &'a str,
    /// The adaptive limit's latency tolerance, when the origin has one.
    pub tolerance: Option<f64>,
    pub max_inflight: Option<u32>,
    pub shared: &'a crate::upstream::OriginShared,
}

/// An `auto` room's series exist from the start, at 0 until its first step, like every
/// other series (a reload leaves the values it finds).
pub fn touch_auto_series(room: &str, auto: &RoomAuto) {
    let m = crate::metrics::get();
    if auto.capacity {
        let _ = m.room_auto_capacity.with_label_values(&[room]);
    }
    if auto.pace {
        let _ = m.room_auto_pace.with_label_values(&[room]);
    }
    for r in room_sizing::Reason::ALL {
        let _ = m.room_auto_changes.with_label_values(&[room, r.as_str()]);
    }
}
