//! pingora-cache storage: a bounded memory tier with eviction and an optional disk tier
//! that survives restarts, both provided by `foyer` (`store`), plus the cache lock that
//! coalesces concurrent misses and the cache metrics.

pub mod auth;
mod disk_plan;
mod engine;
mod gauges;
mod guard;
mod key;
mod object;
pub mod space;
mod storage;
pub mod store;
mod tombstones;

use std::sync::atomic::{AtomicU64, Ordering};

use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::CacheOptionOverrides;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

use crate::policy::cache_rules::CacheStorage;
pub use store::{PurgeScope, Store};

/// The process's one cache: fixed at start (storage settings need a restart to change).
pub struct Cache {
    pub store: &'static Store,
    pub lock: &'static CacheKeyLockImpl,
    pub settings: CacheStorage,
    pub metrics: CacheMetrics,
    /// Recent authorizations on `revalidate` routes: who may get a stale copy on error.
    pub authorizations: auth::Authorizations,
    /// Objects found to answer each credential its own body: not stored (`cache::auth`).
    pub variants: auth::Variants,
}

impl Cache {
    pub fn open(settings: &CacheStorage) -> Result<Cache, String> {
        let store = Store::open(&store::StoreConfig {
            memory_bytes: settings.memory_bytes,
            disk: settings
                .disk
                .as_ref()
                .map(|(path, bytes)| store::DiskConfig {
                    path: path.clone(),
                    bytes: *bytes,
                }),
            max_object_bytes: settings.max_object_bytes,
        })?;
        // A writer that holds the lock longer than this is presumed dead and its waiters
        // go to the origin themselves.
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        Ok(Cache {
            store,
            lock,
            settings: settings.clone(),
            metrics: CacheMetrics::new(),
            authorizations: auth::Authorizations::new(),
            variants: auth::Variants::new(),
        })
    }

    /// Per-request lock options: waiters give up after `lock_timeout`.
    pub fn lock_options(&self) -> CacheOptionOverrides {
        let mut o = CacheOptionOverrides::default();
        o.wait_timeout = Some(self.settings.lock_timeout);
        o.max_lock_retries = Some(3);
        o
    }

    /// Purge now and count it.
    pub fn purge(&self, scope: &PurgeScope, kind: &str) -> usize {
        let n = self.store.purge(scope);
        self.metrics.purges.with_label_values(&[kind]).inc();
        n
    }

    /// Create the config's cache series at 0 (see `app::init_series`).
    pub fn init_series(&self, cfg: &crate::config::Config) {
        let m = &self.metrics;
        for kind in ["url", "prefix", "invalidation"] {
            m.purges.with_label_values(&[kind]);
        }
        for r in cfg.router.routes() {
            if r.cache.is_some() {
                for result in ["hit", "stale", "revalidated", "expired", "miss", "bypass"] {
                    m.requests.with_label_values(&[&r.name, result]);
                }
                m.fetches_saved.with_label_values(&[&r.name]);
            }
        }
        self.refresh_metrics();
    }

    /// Copy the store's figures into the gauges (called before each `/metrics` render).
    pub fn refresh_metrics(&self) {
        let s = self.store.stats();
        let m = &self.metrics;
        m.bytes
            .with_label_values(&["memory"])
            .set(s.memory_used_bytes as i64);
        m.bytes
            .with_label_values(&["disk"])
            .set(s.disk_used_bytes as i64);
        m.capacity
            .with_label_values(&["memory"])
            .set(s.memory_capacity_bytes as i64);
        m.capacity
            .with_label_values(&["disk"])
            .set(s.disk_capacity_bytes as i64);
        m.disk_written.set_to(s.disk_written_bytes);
        m.disk_enabled.set(i64::from(s.disk_enabled));
        m.disk_free.set(s.disk_free_bytes as i64);
        m.disk_write_errors.set_to(s.disk_write_errors);
        m.evictions_memory.set_to(s.memory_evictions);
        m.evictions_disk.set_to(s.disk_evictions);
    }
}

/// A counter fed from an absolute total kept elsewhere (the store's statistics).
pub struct MirroredCounter {
    counter: IntCounter,
    seen: AtomicU64,
}

impl MirroredCounter {
    fn new(counter: IntCounter) -> Self {
        MirroredCounter {
            counter,
            seen: AtomicU64::new(0),
        }
    }

    pub fn set_to(&self, total: u64) {
        let before = self.seen.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.counter.inc_by(total - before);
        }
    }
}

pub struct CacheMetrics {
    /// Requests on cacheable routes by result: hit, stale, revalidated, expired, miss,
    /// bypass.
    pub requests: IntCounterVec,
    /// Requests answered without any origin exchange (fresh hits, including the ones
    /// that waited for another request's fetch; stale-while-revalidate and `serve_stale`
    /// answers). Not revalidations, not stale-if-error (the origin was asked).
    pub fetches_saved: IntCounterVec,
    pub bytes: IntGaugeVec,
    pub capacity: IntGaugeVec,
    pub disk_written: MirroredCounter,
    /// 1 while new objects go to the disk tier; 0 without one or while it is off.
    pub disk_enabled: IntGauge,
    pub disk_free: IntGauge,
    pub disk_write_errors: MirroredCounter,
    pub evictions_memory: MirroredCounter,
    pub evictions_disk: MirroredCounter,
    pub purges: IntCounterVec,
}

impl CacheMetrics {
    fn new() -> CacheMetrics {
        let r = &crate::metrics::get().registry;
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            // Registered once per process: a second `Cache` (tests) keeps its own handles.
            let _ = r.register(Box::new(c.clone()));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            let _ = r.register(Box::new(g.clone()));
            g
        };
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
        let evictions = counter_vec(
            "ecluse_cache_evictions_total",
            "Objects evicted from a cache tier to make room.",
            &["tier"],
        );
        CacheMetrics {
            requests: counter_vec(
                "ecluse_cache_requests_total",
                "Requests on cacheable routes by cache result (hit, stale, revalidated, expired, miss, bypass).",
                &["route", "result"],
            ),
            fetches_saved: counter_vec(
                "ecluse_cache_origin_fetches_saved_total",
                "Requests answered from the cache without any origin exchange for them (fresh hits, stale-while-revalidate, serve_stale; not revalidations or stale-if-error).",
                &["route"],
            ),
            bytes: gauge_vec(
                "ecluse_cache_bytes",
                "Bytes held by each cache tier: memory (object weights), disk (whole blocks holding objects, 0 without a disk tier).",
                &["tier"],
            ),
            capacity: gauge_vec(
                "ecluse_cache_capacity_bytes",
                "Configured size of each cache tier.",
                &["tier"],
            ),
            disk_written: MirroredCounter::new({
                let c = IntCounter::new(
                    "ecluse_cache_disk_written_bytes_total",
                    "Bytes written to the disk tier of the cache.",
                )
                .expect("static metric definition");
                let _ = r.register(Box::new(c.clone()));
                c
            }),
            disk_enabled: gauge(
                "ecluse_cache_disk_enabled",
                "1 while new objects are written to the cache's disk tier; 0 without a disk tier, or while it is off (filesystem short of space, or a failed write).",
            ),
            disk_free: gauge(
                "ecluse_cache_disk_free_bytes",
                "Free bytes of the filesystem holding the cache's disk tier (0 without one).",
            ),
            disk_write_errors: MirroredCounter::new(counter(
                "ecluse_cache_disk_write_errors_total",
                "Writes to the cache's disk tier that failed (the tier is then off until space has stayed free, and comes back empty).",
            )),
            evictions_memory: MirroredCounter::new(evictions.with_label_values(&["memory"])),
            evictions_disk: MirroredCounter::new(evictions.with_label_values(&["disk"])),
            purges: counter_vec(
                "ecluse_cache_purges_total",
                "Purges by kind: url and prefix (admin API), invalidation (an unsafe method succeeded on the URL).",
                &["kind"],
            ),
        }
    }
}
