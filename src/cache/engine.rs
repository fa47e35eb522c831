//! The foyer hybrid cache under the store: what foyer tells us (memory evictions through
//! the listener, disk block evictions through the picker), building it from a plan, and
//! one generation of it (`Gen`, replaced when a failed disk tier is rebuilt).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foyer::{
    BlockEngineConfig, DeviceBuilder, Event, EventListener, EvictionInfo, EvictionPicker,
    FifoPicker, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy,
    HybridCacheProperties, InvalidRatioPicker, RecoverMode, Spawner,
};

use super::disk_plan::DiskPlan;
use super::gauges::{BlockGauges, FoyerMetrics};
use super::guard::EngineFreeze;
use super::object::CachedObject;
use super::space;

// ---------------------------------------------------------------------------------------
// What foyer tells us: memory evictions (listener) and disk block evictions (picker).
// ---------------------------------------------------------------------------------------

/// State shared with foyer's callbacks.
#[derive(Default)]
pub(super) struct Shared {
    /// URL -> keys (variants) of the entries this process stored or read back from disk and
    /// that are still in memory, so a purge by host-less URL or by prefix can remove them
    /// now. Entries leave it when they leave memory (disk-only entries are left to the
    /// tombstones); a stale key is harmless (removing an absent key does nothing).
    pub(super) index: Mutex<HashMap<Arc<str>, Vec<u128>>>,
    pub(super) memory_evictions: AtomicU64,
}

impl Shared {
    // Lock order: the index lock is never held while calling into foyer, whose callbacks
    // take it.
    pub(super) fn index(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<u128>>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn index_add(&self, url: &Arc<str>, key: u128) {
        if url.is_empty() {
            return;
        }
        let mut index = self.index();
        let keys = index.entry(url.clone()).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    pub(super) fn index_remove(&self, url: &str, key: u128) {
        let mut index = self.index();
        if let Some(keys) = index.get_mut(url) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                index.remove(url);
            }
        }
    }

    pub(super) fn index_take(&self, url: &str) -> Vec<u128> {
        self.index().remove(url).unwrap_or_default()
    }

    pub(super) fn index_take_matching(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<u128> {
        let mut taken = Vec::new();
        self.index().retain(|url, keys| {
            if matches(url) {
                taken.extend_from_slice(keys);
                false
            } else {
                true
            }
        });
        taken
    }
}

pub(super) struct Listener {
    pub(super) shared: Arc<Shared>,
    /// Set when this listener's cache has been replaced (a rebuilt disk tier): what it
    /// drops then was carried over to the new one and stays indexed.
    pub(super) retired: Arc<AtomicBool>,
    /// Objects heavier than this were never resident (see the memory filter): foyer still
    /// reports them as evicted when the caller drops them, which is not an eviction.
    pub(super) shard_capacity: usize,
}

impl EventListener for Listener {
    type Key = u128;
    type Value = CachedObject;

    fn on_leave(&self, reason: Event, key: &u128, value: &CachedObject) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        match reason {
            Event::Evict if value.weight > self.shard_capacity => {}
            Event::Evict => {
                self.shared.memory_evictions.fetch_add(1, Ordering::Relaxed);
                self.shared.index_remove(&value.url, *key);
            }
            Event::Remove | Event::Clear => self.shared.index_remove(&value.url, *key),
            // The key stays, with a new value.
            Event::Replace => {}
        }
    }
}

/// foyer's FIFO block picker, counting the blocks the disk tier evicts (every eviction is
/// reported to every picker, whichever picked the block).
#[derive(Debug)]
pub(super) struct CountingFifo {
    pub(super) inner: FifoPicker,
    pub(super) evicted: Arc<AtomicU64>,
}

impl EvictionPicker for CountingFifo {
    fn init(&mut self, blocks: &[u32], block_size: usize) {
        self.inner.init(blocks, block_size);
    }

    fn pick(&mut self, info: EvictionInfo<'_>) -> Option<u32> {
        self.inner.pick(info)
    }

    fn on_block_evictable(&mut self, info: EvictionInfo<'_>, block: u32) {
        self.inner.on_block_evictable(info, block);
    }

    fn on_block_evict(&mut self, info: EvictionInfo<'_>, block: u32) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
        self.inner.on_block_evict(info, block);
    }
}

pub(super) type Hybrid = HybridCache<u128, CachedObject>;

/// Build the foyer cache; runs on the store's own runtime.
pub(super) async fn build_hybrid(
    memory: usize,
    shards: usize,
    shard_capacity: usize,
    disk: Option<DiskPlan>,
    spawner: Spawner,
    (shared, retired): (Arc<Shared>, Arc<AtomicBool>),
    (disk_evictions, blocks): (Arc<AtomicU64>, Arc<BlockGauges>),
) -> std::result::Result<Hybrid, String> {
    let builder = HybridCacheBuilder::new()
        .with_name("ecluse-cache")
        .with_metrics_registry(Box::new(FoyerMetrics(blocks)))
        // With a disk tier every object is written when stored, not when evicted from
        // memory: a crash or restart finds it even if memory never let it go.
        .with_policy(if disk.is_some() {
            HybridCachePolicy::WriteOnInsertion
        } else {
            HybridCachePolicy::WriteOnEviction
        })
        // Flushing on close evicts the whole memory tier, which only makes sense when
        // writing on eviction; everything already went to disk at insertion.
        .with_flush_on_close(false)
        .with_event_listener(Arc::new(Listener {
            shared,
            retired,
            shard_capacity,
        }))
        .memory(memory)
        .with_shards(shards)
        .with_weighter(|_: &u128, v: &CachedObject| v.weight)
        // An object larger than a shard would push the shard past its bound until the
        // next insertion; it goes to disk only (or is not kept without a disk tier).
        .with_filter(move |_: &u128, v: &CachedObject| v.weight <= shard_capacity)
        .storage()
        .with_spawner(spawner);
    let Some(plan) = disk else {
        return builder
            .build()
            .await
            .map_err(|e| format!("cache memory: {e}"));
    };
    let err = |e: &dyn std::fmt::Display| format!("cache disk {}: {e}", plan.path.display());
    let device = FsDeviceBuilder::new(&plan.path)
        .with_capacity(plan.capacity)
        .build()
        .map_err(|e| err(&e))?;
    let engine = BlockEngineConfig::<u128, CachedObject, HybridCacheProperties>::new(device)
        .with_block_size(plan.block)
        // One flush buffer must hold the largest entry, or foyer drops it.
        .with_buffer_pool_size(plan.block)
        .with_submit_queue_size_threshold(plan.block.saturating_mul(2))
        // Deletions and replacements must survive a reopen, or a purged or superseded
        // entry comes back from the older copy still in its block.
        .with_tombstone_log(true)
        .with_eviction_pickers(vec![
            Box::new(InvalidRatioPicker::new(0.8)),
            Box::new(CountingFifo {
                inner: FifoPicker::default(),
                evicted: disk_evictions,
            }),
        ]);
    builder
        .with_engine_config(engine)
        // Skip what cannot be read back (a torn write) instead of refusing to start.
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await
        .map_err(|e| err(&e))
}

/// One foyer hybrid cache and what belongs to it alone. The store replaces it when a
/// failed disk tier is rebuilt (see `DiskGuard`).
pub(super) struct Gen {
    pub(super) cache: Hybrid,
    /// The disk engine's own runtime, and whether it was frozen by a failure (a default,
    /// never frozen one without a disk tier).
    pub(super) freeze: Arc<EngineFreeze>,
    /// Set once replaced (the listener stops touching the shared index).
    pub(super) retired: Arc<AtomicBool>,
    /// foyer's disk blocks holding data (see `BlockGauges`).
    pub(super) blocks: Arc<BlockGauges>,
}

/// What building a [`Gen`] takes, kept to build it again.
pub(super) struct GenPlan {
    pub(super) memory: usize,
    pub(super) shards: usize,
    pub(super) shard_capacity: usize,
    pub(super) disk: Option<DiskPlan>,
}

impl GenPlan {
    /// Build a cache (runs on the store's runtime). With a disk tier, foyer runs on a
    /// runtime of its own with one worker thread (see `EngineFreeze`), armed once open.
    pub(super) async fn open(
        &self,
        store_spawner: &Spawner,
        shared: &Arc<Shared>,
        disk_evictions: &Arc<AtomicU64>,
    ) -> std::result::Result<Gen, String> {
        let freeze = Arc::new(EngineFreeze::default());
        let spawner = match &self.disk {
            None => store_spawner.clone(),
            Some(plan) => {
                let on_start = freeze.clone();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("ecluse-cache-disk")
                    .on_thread_start(move || super::guard::engine_thread(on_start.clone()))
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        format!(
                            "cache disk {}: cannot start its runtime: {e}",
                            plan.path.display()
                        )
                    })?;
                Spawner::from(runtime)
            }
        };
        let retired = Arc::new(AtomicBool::new(false));
        let blocks = Arc::new(BlockGauges::default());
        let cache = build_hybrid(
            self.memory,
            self.shards,
            self.shard_capacity,
            self.disk.clone(),
            spawner,
            (shared.clone(), retired.clone()),
            (disk_evictions.clone(), blocks.clone()),
        )
        .await?;
        if let Some(plan) = &self.disk {
            // foyer's deletion log (its first file) is written by every removal, including
            // while the guard keeps new objects off the disk: its blocks are reserved now
            // so those writes cannot meet a full filesystem.
            let file = plan
                .path
                .join(format!("{}{:08}", space::FOYER_FILE_PREFIX, 0));
            space::preallocate(&file).map_err(|e| {
                format!(
                    "cache disk {}: cannot reserve the deletion log's space: {e}",
                    file.display()
                )
            })?;
        }
        freeze.arm();
        Ok(Gen {
            cache,
            freeze,
            retired,
            blocks,
        })
    }
}
