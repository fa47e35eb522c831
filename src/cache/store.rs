//! The production storage behind pingora-cache: a `foyer` hybrid cache (a memory tier bounded
//! in bytes with eviction, and an optional disk tier that survives restarts) plus purge
//! tombstones.
//!
//! Layout:
//! - key: the `u128` of the pingora key's `combined_bin()` (primary URL hash, plus the
//!   variance hash when the response varies);
//! - value: a [`CachedObject`]: the URL, the decoded [`CacheMeta`] and the body as one
//!   [`Bytes`], so a memory hit costs a meta copy and a reference count, never a body copy.
//!
//! Purges have to hold for entries this process never saw (the disk tier comes back after a
//! restart with whatever it held), so a purge both removes the entries it knows about and
//! records a tombstone (URL or prefix, with the time of the purge): an entry created before a
//! matching tombstone is never served, whatever tier it comes from. With a disk tier the
//! tombstones are saved next to it (`tombstones.json`) so they survive the restart too.
//!
//! Files, by concept: `key.rs` (the URL form), `object.rs` (the stored object and its
//! encoding), `tombstones.rs`, `disk_plan.rs` (sizing), `gauges.rs` (foyer's block
//! gauges), `engine.rs` (foyer itself, one generation), this file (the store: open,
//! rebuild, purge, figures), `storage.rs` (pingora's `Storage` and the hit/miss handlers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use foyer::{HybridCacheEntry, HybridCacheProperties, Location, Spawner};
use pingora_cache::{CacheKey, CacheMeta, Storage};
use pingora_error::Result;
use tokio::runtime::Handle;

pub use super::disk_plan::DiskConfig;
use super::disk_plan::{shard_count, DiskPlan};
use super::engine::{Gen, GenPlan, Shared};
use super::guard::DiskGuard;
pub use super::key::primary_key;
use super::key::{hash_key, host_name, normalize_path, split_url};
use super::object::{empty_header_bytes, CachedObject};
use super::space;
use super::tombstones::{Tombstones, TOMBSTONES_FILE};

/// Sizes of the store, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bound of the memory tier: bodies, headers and bookkeeping, not just bodies.
    pub memory_bytes: u64,
    /// The disk tier, if any.
    pub disk: Option<DiskConfig>,
    /// Largest body stored; a larger response is not cached.
    pub max_object_bytes: u64,
}

/// Which URLs a [`Store::purge`] targets. Hosts compare case-insensitively, paths exactly
/// (as the proxy put them in the key: see [`primary_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeScope {
    /// One URL: host None = any host; path_and_query exact (any scheme).
    Url {
        host: Option<String>,
        path_and_query: String,
    },
    /// Every URL whose path starts with `path_prefix` (host None = any host, any scheme).
    /// Compared with the path and query, so a prefix without `?` matches on the path, and
    /// one with `?` can also select queries; `"/"` matches everything.
    Prefix {
        host: Option<String>,
        path_prefix: String,
    },
}

/// A snapshot of the store's figures (see each field for what foyer can honestly tell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Weight held by the memory tier (bodies + headers + per-object overhead).
    pub memory_used_bytes: u64,
    pub memory_capacity_bytes: u64,
    /// Bytes reserved on disk for the disk tier (0 without one). A small part of it holds
    /// foyer's deletion log; the rest is split into blocks of `disk_block_bytes`.
    pub disk_capacity_bytes: u64,
    /// Bytes of the disk tier really on disk: what the filesystem gave foyer's (sparse)
    /// files, bounded by foyer's blocks that hold objects (full, or being filled: whole
    /// blocks of `disk_block_bytes`, including the space of objects deleted or replaced but
    /// not yet reclaimed). Includes foyer's deletion log. 0 without a disk tier.
    pub disk_used_bytes: u64,
    /// Bytes written to the disk device since this process opened the store, as foyer's
    /// device statistics count them: every write I/O, i.e. objects padded to 4 KiB pages
    /// plus foyer's own index and deletion-log pages. It measures disk wear, not how much
    /// cached data the disk holds.
    pub disk_written_bytes: u64,
    /// Objects that left the memory tier to make room (with a disk tier they usually
    /// remain on disk).
    pub memory_evictions: u64,
    /// Disk blocks reclaimed to make room. foyer's disk tier evicts whole blocks of
    /// `disk_block_bytes` at once and does not say how many objects a block held, so this
    /// counts blocks, not objects.
    pub disk_evictions: u64,
    /// Size of one disk block (the unit of disk eviction), 0 without a disk tier.
    pub disk_block_bytes: u64,
    /// Responses stored by this process (revalidations that only refresh the headers of a
    /// stored object are not counted).
    pub objects_inserted: u64,
    /// Whether new objects are written to the disk tier (false without one, and while the
    /// guard keeps it off: see `guard`).
    pub disk_enabled: bool,
    /// Writes foyer reported as failed.
    pub disk_write_errors: u64,
    /// Free bytes of the disk tier's filesystem at the last look (0 without a tier).
    pub disk_free_bytes: u64,
}

/// pingora-cache storage over a foyer hybrid cache. Opened once and leaked (`&'static`):
/// pingora requires `'static` storage.
pub struct Store {
    /// The current cache; replaced only when a failed disk tier is rebuilt. Insertions and
    /// removals hold the read lock while they call foyer, so none reaches a replaced one.
    pub(super) gen: RwLock<Arc<Gen>>,
    pub(super) plan: GenPlan,
    /// The store's own runtime (tombstone saves, the guard's poll, rebuilds; foyer itself
    /// without a disk tier); kept alive by `spawner`.
    pub(super) runtime: Handle,
    pub(super) spawner: Spawner,
    pub(super) shared: Arc<Shared>,
    pub(super) tombstones: Arc<Tombstones>,
    pub(super) disk_evictions: Arc<AtomicU64>,
    /// Bytes written by the disk engines replaced so far (the counter goes on).
    pub(super) written_before: AtomicU64,
    pub(super) objects_inserted: AtomicU64,
    pub(super) max_object_bytes: u64,
    pub(super) shard_capacity: usize,
    pub(super) disk_block_bytes: u64,
    pub(super) empty_header: Vec<u8>,
    /// Keeps the disk tier off a full filesystem (None without a disk tier).
    pub(super) guard: Option<DiskGuard>,
}

impl Store {
    /// Build the foyer hybrid cache. MUST work whether or not the caller is inside a tokio
    /// runtime (it is called from #[tokio::test]s and from sync startup code): create a
    /// dedicated multi-thread tokio runtime (2 workers, thread name "ecluse-cache") owned by
    /// the Store, build foyer from a std::thread that block_on's that runtime (never block_on
    /// from the caller's thread). Leak the Store (Box::leak) and return &'static: pingora
    /// needs 'static storage. Errors as readable Strings ("cache disk /x: ..."), never panics.
    pub fn open(cfg: &StoreConfig) -> std::result::Result<&'static Store, String> {
        let memory = usize::try_from(cfg.memory_bytes).map_err(|_| {
            format!(
                "cache memory: {} bytes do not fit this machine",
                cfg.memory_bytes
            )
        })?;
        let max_object = usize::try_from(cfg.max_object_bytes).unwrap_or(usize::MAX);
        let shards = shard_count(memory, max_object);
        let shard_capacity = memory / shards;
        let disk = cfg
            .disk
            .as_ref()
            .map(|d| DiskPlan::new(d, cfg.max_object_bytes))
            .transpose()?;
        if let Some(plan) = &disk {
            // Before creating anything: a tier larger than its whole filesystem can never
            // work, and a filesystem short of space is worth a loud word at start.
            let fit = space::fit(&plan.path, plan.capacity as u64)
                .map_err(|e| format!("cache disk {}: {e}", plan.path.display()))?;
            let msg = space::describe(&plan.path, plan.capacity as u64, &fit);
            match (&fit, msg) {
                (space::Fit::Short { .. }, Some(msg)) => log::warn!("{msg}"),
                (_, Some(msg)) => return Err(msg),
                (_, None) => {}
            }
            std::fs::create_dir_all(&plan.path)
                .map_err(|e| format!("cache disk {}: {e}", plan.path.display()))?;
            super::guard::install_foyer_hook();
        }
        let guard = disk
            .as_ref()
            .map(|p| DiskGuard::new(p.path.clone(), p.block as u64, cfg.max_object_bytes));
        let disk_block_bytes = disk.as_ref().map_or(0, |p| p.block as u64);
        let tombstones = Arc::new(Tombstones::load(
            disk.as_ref().map(|p| p.path.join(TOMBSTONES_FILE)),
        )?);
        let empty_header = empty_header_bytes()?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ecluse-cache")
            .enable_all()
            .build()
            .map_err(|e| format!("cache: cannot start its runtime: {e}"))?;
        let handle = runtime.handle().clone();
        // From here the runtime shuts down in the background when dropped, which is
        // allowed inside another runtime (a plain `Runtime` drop is not).
        let spawner = Spawner::from(runtime);
        let shared = Arc::new(Shared::default());
        let disk_evictions = Arc::new(AtomicU64::new(0));
        let plan = GenPlan {
            memory,
            shards,
            shard_capacity,
            disk,
        };

        let gen = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("ecluse-cache-open".into())
                .spawn_scoped(scope, || {
                    handle.block_on(plan.open(&spawner, &shared, &disk_evictions))
                })
                .map_err(|e| format!("cache: cannot start a thread to open it: {e}"))?
                .join()
                .map_err(|_| "cache: opening the store failed unexpectedly (panic)".to_string())?
        })?;

        let store: &'static Store = Box::leak(Box::new(Store {
            gen: RwLock::new(Arc::new(gen)),
            plan,
            runtime: handle,
            spawner,
            shared,
            tombstones,
            disk_evictions,
            written_before: AtomicU64::new(0),
            objects_inserted: AtomicU64::new(0),
            max_object_bytes: cfg.max_object_bytes,
            shard_capacity,
            disk_block_bytes,
            empty_header,
            guard,
        }));
        Ok(store.watch())
    }

    /// Start the guard's poll (every second, on the store's runtime); it rebuilds a failed
    /// disk tier when the guard says so.
    pub(super) fn watch(&'static self) -> &'static Store {
        if let Some(guard) = &self.guard {
            guard.poll();
            self.runtime.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // statvfs and a directory listing: off the runtime's workers.
                    let due = tokio::task::spawn_blocking(move || guard.poll()).await;
                    if due.unwrap_or(false) {
                        self.rebuild(guard).await;
                    }
                }
            });
        }
        self
    }

    /// The current cache.
    pub(super) fn gen(&self) -> Arc<Gen> {
        self.gen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace a failed disk tier by a new, empty one over the same files, carrying the
    /// memory tier over. Runs on the store's runtime while the guard keeps everything off
    /// the old engine (memory only), so requests in flight go on from memory and the
    /// origin throughout.
    pub(super) async fn rebuild(&'static self, guard: &DiskGuard) {
        let Some(plan) = &self.plan.disk else {
            return;
        };
        let old = self.gen();
        if !old.freeze.is_frozen() {
            // Failed on something else than a write (a read, statvfs): its writer is
            // sound, and closing it waits for what it still had to write, so nothing of
            // it lands in the files the new engine is given.
            if let Err(e) = old.cache.close().await {
                log::warn!(
                    "cache disk {}: closing the old engine: {e}",
                    plan.path.display()
                );
            }
        }
        let dir = plan.path.clone();
        let emptied = tokio::task::spawn_blocking(move || space::empty_foyer_files(&dir))
            .await
            .map_err(|e| format!("cannot empty its files: {e}"))
            .and_then(|r| r);
        let new = match emptied {
            Ok(()) => {
                self.plan
                    .open(&self.spawner, &self.shared, &self.disk_evictions)
                    .await
            }
            Err(e) => Err(e),
        };
        let new = match new {
            Ok(new) => Arc::new(new),
            Err(e) => {
                guard.rebuild_failed(&e);
                return;
            }
        };
        {
            let mut current = self.gen.write().unwrap_or_else(PoisonError::into_inner);
            *current = new.clone();
        }
        old.retired.store(true, Ordering::Release);
        self.written_before.fetch_add(
            old.cache.statistics().disk_write_bytes() as u64,
            Ordering::Relaxed,
        );
        let carried = self.carry_over(&old, &new);
        // The old memory tier may be held by the frozen engine's tasks: emptied now, so a
        // failure does not cost the memory tier twice.
        old.cache.memory().clear();
        log::info!(
            "cache disk {}: {carried} objects of the memory tier carried over to the new disk engine",
            plan.path.display()
        );
        guard.rebuilt();
    }

    /// Copy what the old memory tier holds (the entries the index knows) into the new one,
    /// in memory only. Returns how many.
    pub(super) fn carry_over(&self, old: &Gen, new: &Gen) -> usize {
        let keys: Vec<u128> = self.shared.index().values().flatten().copied().collect();
        let mut carried = 0;
        for key in keys {
            if new.cache.memory().contains(&key) {
                // Stored since the swap: newer.
                continue;
            }
            let Some(entry) = old.cache.memory().get(&key) else {
                continue;
            };
            let object = entry.value();
            let Ok(meta) = self.copy_meta(object) else {
                continue;
            };
            let copy = CachedObject::new(
                object.url.clone(),
                object.internal.clone(),
                meta,
                object.body.clone(),
            );
            drop(entry);
            new.cache.insert_with_properties(
                key,
                copy,
                HybridCacheProperties::default().with_location(Location::InMem),
            );
            carried += 1;
        }
        carried
    }

    /// Whether foyer's disk engine of `gen` may be used at all (lookups, removals).
    pub(super) fn disk_usable(&self, gen: &Gen) -> bool {
        gen.cache.is_hybrid()
            && !gen.freeze.is_frozen()
            && !self.guard.as_ref().is_some_and(DiskGuard::has_failed)
    }

    /// This store as pingora sees it.
    pub fn storage(&'static self) -> &'static (dyn Storage + Sync) {
        self
    }

    /// Remove what matches now (entries this process knows about) and record a tombstone so
    /// that entries created before now that match are never served again, including entries
    /// recovered from disk after a restart. Returns how many entries were removed actively.
    ///
    /// "Knows about": entries in memory (stored or read back by this process), and for a
    /// URL with a host, its `http` and `https` entries wherever they are. Others (on disk
    /// only) are dropped by the tombstone when next looked up.
    pub fn purge(&self, scope: &PurgeScope) -> usize {
        // The tombstone first: from now on nothing older is served, even what a concurrent
        // request is about to store.
        let now = SystemTime::now();
        let mut keys = match scope {
            PurgeScope::Url {
                host,
                path_and_query,
            } => {
                let path = normalize_path(path_and_query);
                let host = host.as_deref().map(|h| host_name(h).to_ascii_lowercase());
                self.tombstones.add_url(host.as_deref(), &path, now);
                match &host {
                    Some(host) => {
                        let mut keys = Vec::new();
                        for scheme in ["http", "https"] {
                            let url = primary_key(scheme, host, &path);
                            keys.push(hash_key(&CacheKey::new(url.as_str(), "")));
                            keys.extend(self.shared.index_take(&url));
                        }
                        // The same URL on the other ports the key may hold.
                        keys.extend(self.shared.index_take_matching(|url| {
                            split_url(url).is_some_and(|(_, h, p)| {
                                p == path && h.len() != host.len() && host_name(h) == host
                            })
                        }));
                        keys
                    }
                    None => self.shared.index_take_matching(|url| {
                        split_url(url).is_some_and(|(_, _, p)| p == path)
                    }),
                }
            }
            PurgeScope::Prefix { host, path_prefix } => {
                let host = host.as_deref().map(|h| host_name(h).to_ascii_lowercase());
                self.tombstones
                    .add_prefix(host.as_deref(), path_prefix, now);
                self.shared.index_take_matching(|url| {
                    split_url(url).is_some_and(|(_, h, p)| {
                        host.as_deref().is_none_or(|host| host == host_name(h))
                            && p.starts_with(path_prefix.as_str())
                    })
                })
            }
        };
        self.tombstones.save_soon(&self.runtime);
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().filter(|k| self.remove_key(*k)).count()
    }

    /// Whether a purge since `created` covers `url` (a [`primary_key`]): a copy looked up
    /// before the purge must not be served after it (stale-if-error, once the origin has
    /// failed a request that was in flight when ops purged).
    pub fn purged_since(&self, url: &str, created: SystemTime) -> bool {
        self.tombstones.matches(url, created)
    }

    /// Drop the stored copies of one URL (a [`primary_key`]) this process knows about, all
    /// variants, without a tombstone (nothing older is wrong, it is just not to be shared).
    pub fn drop_url(&self, url: &str) -> usize {
        let mut keys = self.shared.index_take(url);
        keys.push(hash_key(&CacheKey::new(url, "")));
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter().filter(|k| self.remove_key(*k)).count()
    }

    /// Current figures (cheap: a few atomics and one read lock per memory shard).
    pub fn stats(&self) -> StoreStats {
        let gen = self.gen();
        let memory = gen.cache.memory();
        let hybrid = gen.cache.is_hybrid();
        StoreStats {
            memory_used_bytes: memory.usage() as u64,
            memory_capacity_bytes: memory.capacity() as u64,
            disk_capacity_bytes: if hybrid {
                gen.cache.storage().device().capacity() as u64
            } else {
                0
            },
            disk_used_bytes: match &self.guard {
                Some(guard) if hybrid => (gen.blocks.writing.load(Ordering::Relaxed)
                    + gen.blocks.evictable.load(Ordering::Relaxed))
                .saturating_mul(self.disk_block_bytes)
                // foyer counts a block as used from its first write, and even when the
                // write failed: what the filesystem holds is the true figure.
                .min(space::allocated_bytes(guard.dir())),
                _ => 0,
            },
            disk_written_bytes: if hybrid {
                self.written_before.load(Ordering::Relaxed)
                    + gen.cache.statistics().disk_write_bytes() as u64
            } else {
                0
            },
            memory_evictions: self.shared.memory_evictions.load(Ordering::Relaxed),
            disk_evictions: self.disk_evictions.load(Ordering::Relaxed),
            disk_block_bytes: self.disk_block_bytes,
            objects_inserted: self.objects_inserted.load(Ordering::Relaxed),
            disk_enabled: hybrid && self.guard.as_ref().is_some_and(DiskGuard::is_on),
            disk_write_errors: self.guard.as_ref().map_or(0, DiskGuard::write_errors),
            disk_free_bytes: self.guard.as_ref().map_or(0, DiskGuard::free_bytes),
        }
    }

    /// Flush the disk tier (foyer close) so a restart finds everything; callable from any
    /// thread, inside or outside a runtime (run it on the store's own runtime via a std::thread).
    ///
    /// Waits for the writes queued so far (to the OS: no fsync; a process restart finds
    /// them, a power loss may not), then saves the tombstones. The store keeps serving
    /// afterwards, but nothing more reaches the disk.
    pub fn close(&self) {
        let gen = self.gen();
        if gen.freeze.is_frozen() {
            // Its writer is broken (and its thread parked): nothing more can be written.
            log::warn!("cache: the disk tier failed earlier; nothing to flush");
            self.tombstones.save_now();
            return;
        }
        let cache = gen.cache.clone();
        let runtime = self.runtime.clone();
        let closed = std::thread::Builder::new()
            .name("ecluse-cache-close".into())
            .spawn(move || runtime.block_on(cache.close()))
            .map(|t| t.join());
        match closed {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => log::error!("cache: closing the disk tier: {e}"),
            Ok(Err(_)) => log::error!("cache: closing the disk tier failed unexpectedly (panic)"),
            Err(e) => log::error!("cache: cannot start a thread to close the disk tier: {e}"),
        }
        self.tombstones.save_now();
    }

    /// Largest body stored.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_bytes
    }

    /// The entry under `key`, from memory or disk. A disk read error is a miss (and the
    /// entry is dropped so the next request refetches it rather than fail again).
    pub(super) async fn entry(&self, key: u128) -> Option<HybridCacheEntry<u128, CachedObject>> {
        let gen = self.gen();
        if !self.disk_usable(&gen) {
            // Memory only: no need to go through foyer's fetch machinery (a task per miss).
            return gen.cache.memory().get(&key);
        }
        let got = tokio::select! {
            biased;
            got = gen.cache.get(&key) => got,
            // A read waiting on an engine frozen by a failure would wait for ever.
            () = gen.freeze.frozen() => return gen.cache.memory().get(&key),
        };
        match got {
            Ok(entry) => entry,
            Err(e) => {
                log::warn!("cache: unreadable stored object, dropped: {e}");
                self.remove_key(key);
                None
            }
        }
    }

    /// A copy of the object's meta for pingora (which takes it by value).
    pub(super) fn copy_meta(&self, object: &CachedObject) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&object.internal, &self.empty_header)?;
        *meta.response_header_mut() = object.meta.response_header().clone();
        Ok(meta)
    }

    pub(super) fn insert(&self, key: u128, object: CachedObject) {
        // Objects the memory tier refuses (see the filter) are not kept in memory, so not
        // indexed: the index follows memory.
        if object.weight <= self.shard_capacity {
            self.shared.index_add(&object.url, key);
        }
        // Held while foyer is called: a rebuild never swaps the cache under this insertion.
        let gen = self.gen.read().unwrap_or_else(PoisonError::into_inner);
        match &self.guard {
            Some(guard) if !guard.admit() || gen.freeze.is_frozen() => {
                // Memory only. An older copy on disk must not come back once this one
                // leaves memory (removing it writes only the reserved deletion log).
                if self.disk_usable(&gen) && gen.cache.storage().may_contains(&key) {
                    gen.cache.storage().delete(&key);
                }
                gen.cache.insert_with_properties(
                    key,
                    object,
                    HybridCacheProperties::default().with_location(Location::InMem),
                );
            }
            _ => {
                gen.cache.insert(key, object);
            }
        }
    }

    /// Remove `key` from both tiers; whether it was there.
    pub(super) fn remove_key(&self, key: u128) -> bool {
        let gen = self.gen.read().unwrap_or_else(PoisonError::into_inner);
        if !self.disk_usable(&gen) {
            return gen.cache.memory().remove(&key).is_some();
        }
        // `contains` first: a removal always logs a deletion on disk.
        if gen.cache.contains(&key) {
            gen.cache.remove(&key);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
