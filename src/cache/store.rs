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

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, ErrorKind, Event, EventListener, EvictionInfo,
    EvictionPicker, FifoPicker, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCacheEntry,
    HybridCachePolicy, HybridCacheProperties, InvalidRatioPicker, Location, RecoverMode, Source,
    Spawner,
};
use pingora_cache::key::CacheHashKey;
use pingora_cache::max_file_size::ERR_RESPONSE_TOO_LARGE;
use pingora_cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::guard::{DiskGuard, EngineFreeze};
use super::space;

/// Where and how large the disk tier is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory holding foyer's files and `tombstones.json`; created if missing. One
    /// open store per directory: two would overwrite each other's blocks.
    pub path: PathBuf,
    /// Bytes reserved on disk (the files are created at this size, sparse).
    pub bytes: u64,
}

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

/// The URL form used as pingora CacheKey primary and for purges: "scheme://host/path?query"
/// (query omitted when empty). The proxy builds keys with CacheKey::new(primary_key(..), "").
///
/// Scheme and host are lowercased (they are case-insensitive in HTTP), the path and query
/// are kept as given; a path that does not start with `/` gets one.
pub fn primary_key(scheme: &str, host: &str, path_and_query: &str) -> String {
    let pq = path_and_query.strip_suffix('?').unwrap_or(path_and_query);
    let mut s = String::with_capacity(scheme.len() + 3 + host.len() + pq.len() + 1);
    s.extend(scheme.chars().map(|c| c.to_ascii_lowercase()));
    s.push_str("://");
    s.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    if !pq.starts_with('/') {
        s.push('/');
    }
    s.push_str(pq);
    s
}

/// The path and query as [`primary_key`] writes them, for tombstones and index matching.
fn normalize_path(path_and_query: &str) -> String {
    let pq = path_and_query.strip_suffix('?').unwrap_or(path_and_query);
    if pq.starts_with('/') {
        pq.to_string()
    } else {
        format!("/{pq}")
    }
}

/// Split a [`primary_key`] URL into ("host/path?query", "host", "/path?query") without
/// allocating (the tombstone check runs on every hit while tombstones exist).
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let start = url.find("://")? + 3;
    let rest = url.get(start..)?;
    let slash = rest.find('/').unwrap_or(rest.len());
    Some((rest, &rest[..slash], &rest[slash..]))
}

/// The host of a key without its port (`ent.fr:8443` → `ent.fr`, `[::1]:8443` → `[::1]`):
/// what purges name, so a purge by host covers every port.
fn host_name(host: &str) -> &str {
    crate::policy::route::host_without_port(host)
}

/// foyer key of a pingora key.
fn hash_key<K: CacheHashKey>(key: &K) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

// ---------------------------------------------------------------------------------------
// The stored object and its disk encoding.
// ---------------------------------------------------------------------------------------

/// Per-object bookkeeping not visible in the body and headers: foyer's record, the
/// `CacheMeta` box, the `Arc<str>` and the `Bytes` handle, the index entry.
const OBJECT_OVERHEAD: usize = 512;

/// One cached response.
pub(crate) struct CachedObject {
    /// `primary_key()` of the response; empty when the key was not UTF-8 (such an entry
    /// can only be purged by its pingora key).
    url: Arc<str>,
    /// `CacheMeta`'s internal part, serialized. `CacheMeta` is not `Clone`; decoding these
    /// few dozen bytes and cloning the decoded header is how a hit gets its own copy
    /// without decompressing the header again.
    internal: Box<[u8]>,
    meta: CacheMeta,
    body: Bytes,
    /// What this object costs the memory tier, computed once (the weighter runs under
    /// foyer's shard lock).
    weight: usize,
}

impl CachedObject {
    fn new(url: Arc<str>, internal: Box<[u8]>, meta: CacheMeta, body: Bytes) -> CachedObject {
        let weight = body.len()
            + url.len()
            + internal.len()
            + header_bytes_estimate(meta.response_header())
            + OBJECT_OVERHEAD;
        CachedObject {
            url,
            internal,
            meta,
            body,
            weight,
        }
    }

    /// Own a copy of `meta` for storage.
    fn from_meta(url: Arc<str>, meta: &CacheMeta, body: Bytes) -> Result<CachedObject> {
        let (internal, header) = meta.serialize()?;
        let owned = CacheMeta::deserialize(&internal, &header)?;
        Ok(CachedObject::new(
            url,
            internal.into_boxed_slice(),
            owned,
            body,
        ))
    }
}

/// Memory taken by a decoded header: the names and values plus the header map's and the
/// case map's per-entry cost.
fn header_bytes_estimate(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| 2 * (name.as_str().len() + value.len()) + 64)
        .sum::<usize>()
        + 128
}

/// First bytes of an encoded object: tells our own format (and its version) from anything
/// else a reused directory might hold.
const MAGIC: [u8; 4] = *b"EcO1";

/// Largest allocation made up front while decoding; anything longer grows as it is read, so
/// a wrong length can never ask for an absurd allocation.
const DECODE_PREALLOC_MAX: usize = 64 << 20;

fn write_len32(w: &mut impl Write, len: usize, what: &str) -> foyer::Result<()> {
    let len = u32::try_from(len).map_err(|_| {
        foyer::Error::new(
            ErrorKind::BufferSizeLimit,
            format!("{what} longer than 4 GiB"),
        )
    })?;
    w.write_all(&len.to_le_bytes())
        .map_err(foyer::Error::io_error)
}

fn read_u32(r: &mut impl Read) -> foyer::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> foyer::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u64::from_le_bytes(b))
}

fn read_field(r: &mut impl Read, len: usize, what: &str) -> foyer::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(len.min(DECODE_PREALLOC_MAX));
    (&mut *r)
        .take(len as u64)
        .read_to_end(&mut v)
        .map_err(foyer::Error::io_error)?;
    if v.len() != len {
        return Err(foyer::Error::new(
            ErrorKind::OutOfRange,
            format!("cached object truncated in its {what}"),
        ));
    }
    // Exact size: the weight of the object must be what it really costs.
    v.shrink_to_fit();
    Ok(v)
}

/// Disk format: magic, then the URL, the internal meta and the (compressed) header, each
/// prefixed by its u32 length, then the body prefixed by its u64 length (little endian).
impl Code for CachedObject {
    fn encode(&self, w: &mut impl Write) -> foyer::Result<()> {
        let (_, header) = self.meta.serialize().map_err(|e| {
            foyer::Error::new(
                ErrorKind::External,
                format!("cache meta not encodable: {e}"),
            )
        })?;
        w.write_all(&MAGIC).map_err(foyer::Error::io_error)?;
        write_len32(w, self.url.len(), "url")?;
        w.write_all(self.url.as_bytes())
            .map_err(foyer::Error::io_error)?;
        write_len32(w, self.internal.len(), "meta")?;
        w.write_all(&self.internal)
            .map_err(foyer::Error::io_error)?;
        write_len32(w, header.len(), "header")?;
        w.write_all(&header).map_err(foyer::Error::io_error)?;
        w.write_all(&(self.body.len() as u64).to_le_bytes())
            .map_err(foyer::Error::io_error)?;
        w.write_all(&self.body).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl Read) -> foyer::Result<Self> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).map_err(foyer::Error::io_error)?;
        if magic != MAGIC {
            return Err(foyer::Error::new(
                ErrorKind::MagicMismatch,
                "not an ecluse cached object (or an older format)",
            ));
        }
        let parse = |what: &str, e: &dyn std::fmt::Display| {
            foyer::Error::new(ErrorKind::Parse, format!("cached object {what}: {e}"))
        };
        let len = read_u32(r)? as usize;
        let url = String::from_utf8(read_field(r, len, "url")?).map_err(|e| parse("url", &e))?;
        let len = read_u32(r)? as usize;
        let internal = read_field(r, len, "meta")?;
        let len = read_u32(r)? as usize;
        let header = read_field(r, len, "header")?;
        let len = usize::try_from(read_u64(r)?).map_err(|e| parse("body length", &e))?;
        let body = read_field(r, len, "body")?;
        let meta = CacheMeta::deserialize(&internal, &header).map_err(|e| parse("meta", &e))?;
        Ok(CachedObject::new(
            Arc::from(url),
            internal.into_boxed_slice(),
            meta,
            Bytes::from(body),
        ))
    }

    fn estimated_size(&self) -> usize {
        4 + 4
            + self.url.len()
            + 4
            + self.internal.len()
            + 4
            + header_bytes_estimate(self.meta.response_header()) / 2
            + 8
            + self.body.len()
    }
}

// ---------------------------------------------------------------------------------------
// Tombstones.
// ---------------------------------------------------------------------------------------

const TOMBSTONES_FILE: &str = "tombstones.json";
/// Exact-URL tombstones kept; beyond, the oldest go (their entries may then be served
/// again if they are still stored, which takes more than 100k purges in a row).
const MAX_URL_TOMBSTONES: usize = 100_000;
/// Prefix tombstones are scanned on every hit, so they stay few.
const MAX_PREFIX_TOMBSTONES: usize = 1_000;

struct PrefixTombstone {
    host: Option<Box<str>>,
    prefix: Box<str>,
    at: SystemTime,
}

#[derive(Default)]
struct TombSet {
    /// "host/path?query" -> purge time.
    by_url: HashMap<Arc<str>, SystemTime>,
    /// "/path?query" (any host) -> purge time.
    by_path: HashMap<Arc<str>, SystemTime>,
    /// Insertion order of both maps, oldest first, to drop the oldest; may hold superseded
    /// duplicates (a re-purged URL), which are skipped.
    order: VecDeque<(bool, Arc<str>, SystemTime)>,
    prefixes: Vec<PrefixTombstone>,
}

impl TombSet {
    fn add_url(&mut self, host: Option<&str>, path: &str, at: SystemTime) {
        let any_host = host.is_none();
        let key: Arc<str> = match host {
            Some(h) => Arc::from(format!("{h}{path}")),
            None => Arc::from(path),
        };
        let map = if any_host {
            &mut self.by_path
        } else {
            &mut self.by_url
        };
        // A later purge covers everything an earlier one did (a clock step back must not
        // shrink it).
        let at = map.get(&key).map_or(at, |old| (*old).max(at));
        map.insert(key.clone(), at);
        self.order.push_back((any_host, key, at));
        while self.order.len() > MAX_URL_TOMBSTONES {
            let Some((any_host, key, at)) = self.order.pop_front() else {
                break;
            };
            let map = if any_host {
                &mut self.by_path
            } else {
                &mut self.by_url
            };
            if map.get(&key) == Some(&at) {
                map.remove(&key);
            }
        }
    }

    fn add_prefix(&mut self, host: Option<&str>, prefix: &str, at: SystemTime) {
        let mut at = at;
        self.prefixes.retain(|p| {
            let same = p.host.as_deref() == host && &*p.prefix == prefix;
            if same {
                at = at.max(p.at);
            }
            !same
        });
        self.prefixes.push(PrefixTombstone {
            host: host.map(Box::from),
            prefix: Box::from(prefix),
            at,
        });
        if self.prefixes.len() > MAX_PREFIX_TOMBSTONES {
            let excess = self.prefixes.len() - MAX_PREFIX_TOMBSTONES;
            self.prefixes.drain(..excess);
        }
    }

    fn matches(&self, url: &str, created: SystemTime) -> bool {
        let Some((host_path, host, path)) = split_url(url) else {
            return false;
        };
        let before = |t: Option<&SystemTime>| t.is_some_and(|t| created < *t);
        // Purges name hosts without a port and cover every port the key may hold
        // (`proxy::cache_phase::request_host`): `ent.fr:8443` is looked up as `ent.fr`.
        let name = host_name(host);
        before(self.by_url.get(host_path))
            || (name.len() != host.len()
                && before(self.by_url.get(format!("{name}{path}").as_str())))
            || before(self.by_path.get(path))
            || self.prefixes.iter().any(|p| {
                created < p.at
                    && p.host.as_deref().is_none_or(|h| h == name)
                    && path.starts_with(&*p.prefix)
            })
    }

    fn to_file(&self) -> TombFile {
        let urls = self
            .order
            .iter()
            .filter(|(any_host, key, at)| {
                let map = if *any_host {
                    &self.by_path
                } else {
                    &self.by_url
                };
                map.get(key) == Some(at)
            })
            .map(|(any_host, key, at)| {
                let (host, path) = if *any_host {
                    (None, key.to_string())
                } else {
                    let slash = key.find('/').unwrap_or(key.len());
                    (Some(key[..slash].to_string()), key[slash..].to_string())
                };
                TombRecord {
                    host,
                    path,
                    at: to_nanos(*at),
                }
            })
            .collect();
        let prefixes = self
            .prefixes
            .iter()
            .map(|p| TombRecord {
                host: p.host.as_deref().map(str::to_string),
                path: p.prefix.to_string(),
                at: to_nanos(p.at),
            })
            .collect();
        TombFile {
            version: 1,
            urls,
            prefixes,
        }
    }

    fn is_empty(&self) -> bool {
        self.by_url.is_empty() && self.by_path.is_empty() && self.prefixes.is_empty()
    }
}

/// `tombstones.json`: purges that must outlive the process (times in ns since the epoch,
/// oldest first).
#[derive(Serialize, Deserialize)]
struct TombFile {
    version: u32,
    #[serde(default)]
    urls: Vec<TombRecord>,
    #[serde(default)]
    prefixes: Vec<TombRecord>,
}

#[derive(Serialize, Deserialize)]
struct TombRecord {
    host: Option<String>,
    /// The path and query (URL tombstones) or the path prefix.
    path: String,
    at: u64,
}

fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The tombstone set, its flag for the hot path, and its file.
struct Tombstones {
    /// False until the first tombstone: lookups then skip the lock entirely.
    any: AtomicBool,
    set: RwLock<TombSet>,
    file: Option<PathBuf>,
    /// A background write is queued and has not yet taken its snapshot.
    write_queued: AtomicBool,
    /// Serializes writers so the file always ends with the latest snapshot.
    write_lock: Mutex<()>,
}

impl Tombstones {
    /// Load `file` if it exists. An unreadable file fails the open; an undecodable one is
    /// replaced by one tombstone over everything created before now, so nothing purged is
    /// ever served (the price: the disk tier starts cold).
    fn load(file: Option<PathBuf>) -> std::result::Result<Tombstones, String> {
        let mut set = TombSet::default();
        if let Some(path) = &file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<TombFile>(&bytes) {
                    Ok(f) if f.version == 1 => {
                        for r in f.urls {
                            set.add_url(r.host.as_deref(), &r.path, from_nanos(r.at));
                        }
                        for r in f.prefixes {
                            set.add_prefix(r.host.as_deref(), &r.path, from_nanos(r.at));
                        }
                    }
                    Ok(f) => {
                        log::warn!(
                            "cache tombstones {}: unknown version {}; not serving anything stored before now",
                            path.display(),
                            f.version
                        );
                        set.add_prefix(None, "", SystemTime::now());
                    }
                    Err(e) => {
                        log::warn!(
                            "cache tombstones {}: {e}; not serving anything stored before now",
                            path.display()
                        );
                        set.add_prefix(None, "", SystemTime::now());
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cache tombstones {}: {e}", path.display())),
            }
        }
        Ok(Tombstones {
            any: AtomicBool::new(!set.is_empty()),
            set: RwLock::new(set),
            file,
            write_queued: AtomicBool::new(false),
            write_lock: Mutex::new(()),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, TombSet> {
        self.set.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, TombSet> {
        self.set.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn matches(&self, url: &str, created: SystemTime) -> bool {
        self.any.load(Ordering::Acquire) && self.read().matches(url, created)
    }

    fn add_url(&self, host: Option<&str>, path: &str, at: SystemTime) {
        self.write().add_url(host, path, at);
        self.any.store(true, Ordering::Release);
    }

    fn add_prefix(&self, host: Option<&str>, prefix: &str, at: SystemTime) {
        self.write().add_prefix(host, prefix, at);
        self.any.store(true, Ordering::Release);
    }

    /// Save the set in the background (the purge may run on a proxy worker, and the file
    /// can reach megabytes); bursts of purges coalesce into few writes.
    fn save_soon(self: &Arc<Self>, runtime: &Handle) {
        if self.file.is_none() || self.write_queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        runtime.spawn_blocking(move || {
            // Cleared before the snapshot: a purge after this point queues another write.
            me.write_queued.store(false, Ordering::SeqCst);
            me.save_now();
        });
    }

    /// Write the current set (temp file, fsync, rename): a crash leaves either the old or
    /// the new file, never a torn one.
    fn save_now(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let _writer = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let json = match serde_json::to_vec(&self.read().to_file()) {
            Ok(j) => j,
            Err(e) => {
                log::error!("cache tombstones {}: {e}", path.display());
                return;
            }
        };
        if let Err(e) = write_atomically(path, &json) {
            log::error!(
                "cache tombstones {}: {e}; purges since the last save would not survive a restart",
                path.display()
            );
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself must reach the disk for the new file to survive a power loss.
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// What foyer tells us: memory evictions (listener) and disk block evictions (picker).
// ---------------------------------------------------------------------------------------

/// State shared with foyer's callbacks.
#[derive(Default)]
struct Shared {
    /// URL -> keys (variants) of the entries this process stored or read back from disk and
    /// that are still in memory, so a purge by host-less URL or by prefix can remove them
    /// now. Entries leave it when they leave memory (disk-only entries are left to the
    /// tombstones); a stale key is harmless (removing an absent key does nothing).
    index: Mutex<HashMap<Arc<str>, Vec<u128>>>,
    memory_evictions: AtomicU64,
}

impl Shared {
    // Lock order: the index lock is never held while calling into foyer, whose callbacks
    // take it.
    fn index(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<u128>>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn index_add(&self, url: &Arc<str>, key: u128) {
        if url.is_empty() {
            return;
        }
        let mut index = self.index();
        let keys = index.entry(url.clone()).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
    }

    fn index_remove(&self, url: &str, key: u128) {
        let mut index = self.index();
        if let Some(keys) = index.get_mut(url) {
            keys.retain(|k| *k != key);
            if keys.is_empty() {
                index.remove(url);
            }
        }
    }

    fn index_take(&self, url: &str) -> Vec<u128> {
        self.index().remove(url).unwrap_or_default()
    }

    fn index_take_matching(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<u128> {
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

struct Listener {
    shared: Arc<Shared>,
    /// Set when this listener's cache has been replaced (a rebuilt disk tier): what it
    /// drops then was carried over to the new one and stays indexed.
    retired: Arc<AtomicBool>,
    /// Objects heavier than this were never resident (see the memory filter): foyer still
    /// reports them as evicted when the caller drops them, which is not an eviction.
    shard_capacity: usize,
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
struct CountingFifo {
    inner: FifoPicker,
    evicted: Arc<AtomicU64>,
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

// ---------------------------------------------------------------------------------------
// Disk sizing.
// ---------------------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
/// foyer's I/O page.
const PAGE: u64 = 4096;
/// foyer's deletion log keeps 16-byte records, 256 per page, one per possible 4 KiB entry.
const TOMBSTONE_LOG_SLOTS_PER_PAGE: u64 = PAGE / 16;
/// Room in a block beyond the body: foyer's entry header and blob index (4 KiB), our URL,
/// meta and compressed header.
const BLOCK_OVERHEAD: u64 = MIB;
/// foyer's default block size, and our floor.
const MIN_BLOCK: u64 = 16 * MIB;

#[derive(Debug, Clone)]
struct DiskPlan {
    path: PathBuf,
    capacity: usize,
    block: usize,
}

/// Bytes foyer's deletion log takes out of a device of `capacity` bytes (page-aligned).
fn tombstone_log_bytes(capacity: u64) -> u64 {
    (capacity / PAGE).div_ceil(TOMBSTONE_LOG_SLOTS_PER_PAGE) * PAGE
}

/// Blocks a device of `bytes` holds once the deletion log has its share.
fn disk_blocks(bytes: u64, block: u64) -> u64 {
    let capacity = bytes / PAGE * PAGE;
    capacity.saturating_sub(tombstone_log_bytes(capacity)) / block
}

impl DiskPlan {
    fn new(cfg: &DiskConfig, max_object_bytes: u64) -> std::result::Result<DiskPlan, String> {
        let err = |m: String| format!("cache disk {}: {m}", cfg.path.display());
        // An object must fit in one block: foyer drops larger entries silently.
        let block = max_object_bytes
            .checked_add(BLOCK_OVERHEAD)
            .map(|b| b.div_ceil(MIB) * MIB)
            .ok_or_else(|| err(format!("max_object_bytes {max_object_bytes} is too large")))?
            .max(MIN_BLOCK);
        if disk_blocks(cfg.bytes, block) < 2 {
            // One block in writing and one clean to switch to is foyer's minimum.
            let mut need = 2 * block;
            while disk_blocks(need, block) < 2 {
                need += tombstone_log_bytes(need).max(PAGE);
            }
            return Err(err(format!(
                "{} bytes hold fewer than 2 blocks of {block} bytes (the block follows max_object_bytes {max_object_bytes}); give at least {need} bytes",
                cfg.bytes
            )));
        }
        let capacity = usize::try_from(cfg.bytes)
            .map_err(|_| err(format!("{} bytes do not fit this machine", cfg.bytes)))?;
        let block = usize::try_from(block)
            .map_err(|_| err(format!("block of {block} bytes does not fit this machine")))?;
        Ok(DiskPlan {
            path: cfg.path.clone(),
            capacity,
            block,
        })
    }
}

/// Memory shards: foyer splits the memory bound evenly between them and evicts within a
/// shard, so each must hold several of the largest objects.
fn shard_count(memory: usize, max_object: usize) -> usize {
    let per_shard = max_object
        .saturating_add(OBJECT_OVERHEAD)
        .saturating_mul(4)
        .max(1);
    (memory / per_shard).clamp(1, 8)
}

type Hybrid = HybridCache<u128, CachedObject>;

/// Build the foyer cache; runs on the store's own runtime.
async fn build_hybrid(
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

/// foyer's disk blocks by state. foyer says how much of its disk tier holds data only
/// through its metrics registry (mixtrics): `FoyerMetrics` keeps these gauges and drops
/// every other foyer metric.
#[derive(Debug, Default)]
struct BlockGauges {
    writing: AtomicU64,
    evictable: AtomicU64,
}

#[derive(Debug)]
struct FoyerMetrics(Arc<BlockGauges>);

/// One of foyer's block gauges (`None`: a state we do not keep).
#[derive(Debug)]
struct BlockGauge(Arc<BlockGauges>, Option<fn(&BlockGauges) -> &AtomicU64>);

impl mixtrics::metrics::GaugeOps for BlockGauge {
    fn increase(&self, val: u64) {
        if let Some(f) = self.1 {
            f(&self.0).fetch_add(val, Ordering::Relaxed);
        }
    }

    fn decrease(&self, val: u64) {
        if let Some(f) = self.1 {
            let _ = f(&self.0).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(val))
            });
        }
    }

    fn absolute(&self, val: u64) {
        if let Some(f) = self.1 {
            f(&self.0).store(val, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
struct BlockGaugeVec(Arc<BlockGauges>);

impl mixtrics::metrics::GaugeVecOps for BlockGaugeVec {
    fn gauge(&self, labels: &[std::borrow::Cow<'static, str>]) -> mixtrics::metrics::BoxedGauge {
        // Labels: [cache name, block state].
        let pick: Option<fn(&BlockGauges) -> &AtomicU64> = match labels.get(1).map(|l| l.as_ref()) {
            Some("writing") => Some(|g| &g.writing),
            Some("evictable") => Some(|g| &g.evictable),
            _ => None,
        };
        Box::new(BlockGauge(self.0.clone(), pick))
    }
}

impl mixtrics::metrics::RegistryOps for FoyerMetrics {
    fn register_counter_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedCounterVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_counter_vec(name, desc, label_names)
    }

    fn register_gauge_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedGaugeVec {
        if name == "foyer_storage_block_engine_block" {
            Box::new(BlockGaugeVec(self.0.clone()))
        } else {
            mixtrics::registry::noop::NoopMetricsRegistry.register_gauge_vec(
                name,
                desc,
                label_names,
            )
        }
    }

    fn register_histogram_vec(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
    ) -> mixtrics::metrics::BoxedHistogramVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_histogram_vec(
            name,
            desc,
            label_names,
        )
    }

    fn register_histogram_vec_with_buckets(
        &self,
        name: std::borrow::Cow<'static, str>,
        desc: std::borrow::Cow<'static, str>,
        label_names: &'static [&'static str],
        buckets: Vec<f64>,
    ) -> mixtrics::metrics::BoxedHistogramVec {
        mixtrics::registry::noop::NoopMetricsRegistry.register_histogram_vec_with_buckets(
            name,
            desc,
            label_names,
            buckets,
        )
    }
}

/// The serialized form of an empty header, to decode a `CacheMeta`'s internal part alone.
fn empty_header_bytes() -> std::result::Result<Vec<u8>, String> {
    let header = ResponseHeader::build(200, None).map_err(|e| format!("cache: {e}"))?;
    CacheMeta::new(UNIX_EPOCH, UNIX_EPOCH, 0, 0, header)
        .serialize()
        .map(|(_, header)| header)
        .map_err(|e| format!("cache: cannot encode a response header: {e}"))
}

// ---------------------------------------------------------------------------------------
// The store.
// ---------------------------------------------------------------------------------------

/// One foyer hybrid cache and what belongs to it alone. The store replaces it when a
/// failed disk tier is rebuilt (see `DiskGuard`).
struct Gen {
    cache: Hybrid,
    /// The disk engine's own runtime, and whether it was frozen by a failure (a default,
    /// never frozen one without a disk tier).
    freeze: Arc<EngineFreeze>,
    /// Set once replaced (the listener stops touching the shared index).
    retired: Arc<AtomicBool>,
    /// foyer's disk blocks holding data (see `BlockGauges`).
    blocks: Arc<BlockGauges>,
}

/// What building a [`Gen`] takes, kept to build it again.
struct GenPlan {
    memory: usize,
    shards: usize,
    shard_capacity: usize,
    disk: Option<DiskPlan>,
}

impl GenPlan {
    /// Build a cache (runs on the store's runtime). With a disk tier, foyer runs on a
    /// runtime of its own with one worker thread (see `EngineFreeze`), armed once open.
    async fn open(
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

/// pingora-cache storage over a foyer hybrid cache. Opened once and leaked (`&'static`):
/// pingora requires `'static` storage.
pub struct Store {
    /// The current cache; replaced only when a failed disk tier is rebuilt. Insertions and
    /// removals hold the read lock while they call foyer, so none reaches a replaced one.
    gen: RwLock<Arc<Gen>>,
    plan: GenPlan,
    /// The store's own runtime (tombstone saves, the guard's poll, rebuilds; foyer itself
    /// without a disk tier); kept alive by `spawner`.
    runtime: Handle,
    spawner: Spawner,
    shared: Arc<Shared>,
    tombstones: Arc<Tombstones>,
    disk_evictions: Arc<AtomicU64>,
    /// Bytes written by the disk engines replaced so far (the counter goes on).
    written_before: AtomicU64,
    objects_inserted: AtomicU64,
    max_object_bytes: u64,
    shard_capacity: usize,
    disk_block_bytes: u64,
    empty_header: Vec<u8>,
    /// Keeps the disk tier off a full filesystem (None without a disk tier).
    guard: Option<DiskGuard>,
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
    fn watch(&'static self) -> &'static Store {
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
    fn gen(&self) -> Arc<Gen> {
        self.gen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace a failed disk tier by a new, empty one over the same files, carrying the
    /// memory tier over. Runs on the store's runtime while the guard keeps everything off
    /// the old engine (memory only), so requests in flight go on from memory and the
    /// origin throughout.
    async fn rebuild(&'static self, guard: &DiskGuard) {
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
    fn carry_over(&self, old: &Gen, new: &Gen) -> usize {
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
    fn disk_usable(&self, gen: &Gen) -> bool {
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
    async fn entry(&self, key: u128) -> Option<HybridCacheEntry<u128, CachedObject>> {
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
    fn copy_meta(&self, object: &CachedObject) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&object.internal, &self.empty_header)?;
        *meta.response_header_mut() = object.meta.response_header().clone();
        Ok(meta)
    }

    fn insert(&self, key: u128, object: CachedObject) {
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
    fn remove_key(&self, key: u128) -> bool {
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

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let k = hash_key(key);
        let Some(entry) = self.entry(k).await else {
            return Ok(None);
        };
        let object = entry.value();
        if key.primary_key_str().is_some_and(|url| *object.url != *url) {
            // Two URLs with one 128-bit hash: never serve one for the other.
            return Ok(None);
        }
        if self.tombstones.matches(&object.url, object.meta.created()) {
            drop(entry);
            self.remove_key(k);
            return Ok(None);
        }
        if entry.source() == Source::Disk && object.weight <= self.shard_capacity {
            self.shared.index_add(&object.url, k);
        }
        let meta = match self.copy_meta(object) {
            Ok(meta) => meta,
            Err(e) => {
                log::warn!(
                    "cache: stored meta of {} unusable, dropped: {e}",
                    object.url
                );
                drop(entry);
                self.remove_key(k);
                return Ok(None);
            }
        };
        let hit = Hit {
            end: object.body.len(),
            body: object.body.clone(),
            start: 0,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        let meta = CacheMeta::deserialize(&internal, &header)?;
        Ok(Box::new(Miss {
            store: self,
            key: hash_key(key),
            url: Arc::from(key.primary_key_str().unwrap_or("")),
            internal: internal.into_boxed_slice(),
            meta,
            chunks: Vec::new(),
            size: 0,
            too_large: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // This store gives no entry IDs, so an identified entry cannot be one of ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        Ok(if self.remove_key(hash_key(target.key())) {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = hash_key(key);
        let Some(entry) = self.entry(k).await else {
            return Ok(false);
        };
        let old = entry.value();
        if self.tombstones.matches(&old.url, old.meta.created()) {
            drop(entry);
            self.remove_key(k);
            return Ok(false);
        }
        // A revalidation updates the copy it revalidated, never one stored since (another
        // request's answer, another user's body): `meta` carries the `created` time and
        // version of the copy that was looked up, and must not land on other bytes.
        let version = |m: &CacheMeta| {
            m.headers()
                .get(crate::cache::auth::VERSION_HEADER)
                .map(|v| v.as_bytes().to_vec())
        };
        if old.meta.created() != meta.created() || version(&old.meta) != version(meta) {
            return Ok(false);
        }
        let object = CachedObject::from_meta(old.url.clone(), meta, old.body.clone())?;
        drop(entry);
        // Re-inserted whole (foyer values are immutable); with a disk tier this writes the
        // object again, and the newer copy wins on recovery.
        self.insert(k, object);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Serves one stored body, whole or by ranges (pingora seeks with `end` exclusive, and for
/// multipart ranges seeks again after each part has been read to its `None`).
struct Hit {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
}

impl Hit {
    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {len}"),
            );
        }
        // An end past the body is allowed: the part stops at the body's end.
        let end = end.map_or(len, |end| end.min(len));
        if end < start {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek end {end} before start {start}"),
            );
        }
        self.start = start;
        self.end = end;
        // One handler serves several parts: each seek re-arms the read.
        self.done = false;
        Ok(())
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.start >= self.end {
            self.done = true;
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn seek_multipart(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; stores it on `finish`, not before (a handler dropped
/// mid-way stores nothing).
struct Miss {
    store: &'static Store,
    key: u128,
    url: Arc<str>,
    internal: Box<[u8]>,
    meta: CacheMeta,
    chunks: Vec<Bytes>,
    size: usize,
    too_large: bool,
}

impl Miss {
    fn too_large_error<T>(&self) -> Result<T> {
        Error::e_explain(
            ERR_RESPONSE_TOO_LARGE,
            format!(
                "response body exceeds the cache's max_object_bytes of {}",
                self.store.max_object_bytes
            ),
        )
    }
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.too_large {
            return self.too_large_error();
        }
        self.size = self.size.saturating_add(data.len());
        if self.size as u64 > self.store.max_object_bytes {
            self.too_large = true;
            self.chunks = Vec::new();
            return self.too_large_error();
        }
        if !data.is_empty() {
            self.chunks.push(data);
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        if self.too_large {
            return self.too_large_error();
        }
        let Miss {
            store,
            key,
            url,
            internal,
            mut meta,
            chunks,
            size,
            ..
        } = *self;
        // On a `revalidate` route the copy carries its version (status and body bytes), so
        // a stale copy goes only to credentials the origin gave these very bytes.
        use crate::cache::auth::{version_header_value, VersionHasher, VERSION_HEADER};
        if let Some(v) = meta.headers().get(VERSION_HEADER) {
            let anonymous = v.as_bytes().ends_with(b";anon");
            let mut h = VersionHasher::new(meta.response_header().status.as_u16());
            for chunk in &chunks {
                h.update(chunk);
            }
            let value = version_header_value(&h.finish(), anonymous);
            meta.response_header_mut()
                .insert_header(VERSION_HEADER, value)?;
        }
        if store.tombstones.matches(&url, meta.created()) {
            // Fetched before a purge of its URL: it would never be served.
            return Ok(MissFinishType::Created(size));
        }
        // Copied into one exact-size buffer: the chunks may be slices of larger read
        // buffers, which would hold more memory than the weight says.
        let mut body = Vec::with_capacity(size);
        for chunk in &chunks {
            body.extend_from_slice(chunk);
        }
        drop(chunks);
        store.insert(
            key,
            CachedObject::new(url, internal, meta, Bytes::from(body)),
        );
        store.objects_inserted.fetch_add(1, Ordering::Relaxed);
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::trace::Span;
    use std::sync::atomic::AtomicUsize;

    const KIB: usize = 1024;

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    fn meta_created(created: SystemTime, fresh: Duration) -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.insert_header("content-type", "text/plain").unwrap();
        header.insert_header("X-Case", "Kept").unwrap();
        CacheMeta::new(created + fresh, created, 0, 0, header)
    }

    fn meta(fresh: Duration) -> CacheMeta {
        meta_created(SystemTime::now(), fresh)
    }

    fn memory_store(memory: u64, max_object: u64) -> &'static Store {
        Store::open(&StoreConfig {
            memory_bytes: memory,
            disk: None,
            max_object_bytes: max_object,
        })
        .unwrap()
    }

    fn key(scheme: &str, host: &str, pq: &str) -> CacheKey {
        CacheKey::new(primary_key(scheme, host, pq), "")
    }

    async fn put_with(store: &'static Store, key: &CacheKey, meta: &CacheMeta, body: &[u8]) {
        let mut miss = store.get_miss_handler(key, meta, &span()).await.unwrap();
        let half = body.len() / 2;
        miss.write_body(Bytes::copy_from_slice(&body[..half]), false)
            .await
            .unwrap();
        miss.write_body(Bytes::copy_from_slice(&body[half..]), true)
            .await
            .unwrap();
        match miss.finish().await.unwrap() {
            MissFinishType::Created(n) => assert_eq!(n, body.len()),
            MissFinishType::Appended(..) => panic!("appended"),
        }
    }

    async fn put(store: &'static Store, key: &CacheKey, body: &[u8]) {
        put_with(store, key, &meta(Duration::from_secs(60)), body).await;
    }

    /// pingora's single-entry purge (the trait method, not `Store::purge`).
    async fn purge_target(store: &'static Store, key: &CacheKey) -> PurgeOutcome {
        let compact = key.to_compact();
        Storage::purge(
            store,
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .unwrap()
    }

    async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    async fn get(store: &'static Store, key: &CacheKey) -> Option<(CacheMeta, Vec<u8>)> {
        let (meta, mut hit) = store.lookup(key, &span()).await.unwrap()?;
        let body = read_all(&mut hit).await;
        Some((meta, body))
    }

    static DIRS: AtomicUsize = AtomicUsize::new(0);

    /// A fresh directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "ecluse-store-test-{}-{}",
                std::process::id(),
                DIRS.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn disk_store(dir: &TempDir, memory: u64) -> &'static Store {
        Store::open(&StoreConfig {
            memory_bytes: memory,
            disk: Some(DiskConfig {
                path: dir.0.clone(),
                bytes: 64 << 20,
            }),
            max_object_bytes: 1 << 20,
        })
        .unwrap()
    }

    fn body_of(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn primary_key_form() {
        assert_eq!(
            primary_key("HTTPS", "Ent.Example.ORG", "/a/b?x=1"),
            "https://ent.example.org/a/b?x=1"
        );
        assert_eq!(primary_key("http", "h", "/a?"), "http://h/a");
        assert_eq!(primary_key("http", "h", ""), "http://h/");
        assert_eq!(
            split_url("https://h:8443/p?q"),
            Some(("h:8443/p?q", "h:8443", "/p?q"))
        );
    }

    /// Outside any runtime too (sync startup code).
    #[test]
    fn opens_and_closes_outside_a_runtime() {
        let store = memory_store(1 << 20, 64 * KIB as u64);
        assert_eq!(store.stats().memory_capacity_bytes, 1 << 20);
        assert_eq!(store.max_object_bytes(), 64 * KIB as u64);
        store.close();
    }

    #[tokio::test]
    async fn write_then_read() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "ent.example.org", "/doc.pdf");
        let body = body_of(7, 10_000);
        let m = meta(Duration::from_secs(60));
        let fresh_until = m.fresh_until();
        put_with(store, &k, &m, &body).await;
        let (got, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(got.fresh_until(), fresh_until);
        assert_eq!(got.created(), m.created());
        assert_eq!(got.response_header().status.as_u16(), 200);
        assert_eq!(got.headers().get("x-case").unwrap(), "Kept");
        assert_eq!(hit.get_eviction_weight(), body.len());
        assert!(hit.can_seek());
        let first = hit.read_body().await.unwrap().unwrap();
        assert_eq!(&first[..], &body[..]);
        assert!(hit.read_body().await.unwrap().is_none());
        hit.finish(store.storage(), &k, &span()).await.unwrap();
        assert!(store
            .lookup(&key("https", "ent.example.org", "/other"), &span())
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.stats().objects_inserted, 1);
    }

    #[tokio::test]
    async fn dropped_miss_handler_stores_nothing() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/partial");
        let mut miss = store
            .get_miss_handler(&k, &meta(Duration::from_secs(60)), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"half"), false)
            .await
            .unwrap();
        drop(miss);
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn seek_single_and_multipart() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/digits");
        put(store, &k, b"0123456789").await;
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();

        hit.seek(2, Some(5)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"234");
        hit.seek(7, None).unwrap();
        assert_eq!(read_all(&mut hit).await, b"789");
        hit.seek(3, Some(100)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"3456789");
        assert!(hit.seek(10, None).is_err());
        assert!(hit.seek(5, Some(4)).is_err());

        // As pingora does for multipart: seek, read to None, seek the next part.
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek_multipart());
        let mut parts = Vec::new();
        for (start, end) in [(0, 2), (4, 6), (8, 10)] {
            hit.seek_multipart(start, Some(end)).unwrap();
            let mut part = Vec::new();
            while let Some(b) = hit.read_body().await.unwrap() {
                part.extend_from_slice(&b);
            }
            parts.push(part);
        }
        assert_eq!(parts, vec![b"01".to_vec(), b"45".to_vec(), b"89".to_vec()]);
    }

    #[tokio::test]
    async fn update_meta_never_lands_on_a_copy_stored_since() {
        use crate::cache::auth::{parse_version_header, VersionHasher, VERSION_HEADER};
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/bulletin");
        let t0 = SystemTime::now() - Duration::from_secs(10);
        let versioned = |created: SystemTime, fresh: u64| {
            let mut m = meta_created(created, Duration::from_secs(fresh));
            m.response_header_mut()
                .insert_header(VERSION_HEADER, "pending")
                .unwrap();
            m
        };
        put_with(store, &k, &versioned(t0, 60), b"alice's bulletin").await;
        let (looked_up, _) = get(store, &k).await.unwrap();
        // The store names the version of the bytes it keeps.
        let mut h = VersionHasher::new(200);
        h.update(b"alice's bulletin");
        let alice = h.finish();
        let v = looked_up.headers().get(VERSION_HEADER).unwrap().as_bytes();
        assert_eq!(parse_version_header(v), Some((alice, false)));
        // Bob's answer replaces the copy while alice's revalidation is under way: her
        // refreshed header must not land on his body.
        put_with(
            store,
            &k,
            &versioned(t0 + Duration::from_secs(1), 60),
            b"bob's",
        )
        .await;
        let mut reval = meta_created(t0, Duration::from_secs(3600));
        *reval.response_header_mut() = looked_up.response_header().clone();
        assert!(!store.update_meta(&k, &reval, &span()).await.unwrap());
        let (got, body) = get(store, &k).await.unwrap();
        assert_eq!(body, b"bob's");
        assert_eq!(got.created(), t0 + Duration::from_secs(1));
        // Same `created`, another version: not that copy either.
        let mut other = meta_created(t0 + Duration::from_secs(1), Duration::from_secs(3600));
        *other.response_header_mut() = looked_up.response_header().clone();
        assert!(!store.update_meta(&k, &other, &span()).await.unwrap());
        // The copy that was looked up is updated.
        let (bobs, _) = get(store, &k).await.unwrap();
        let mut fresh = meta_created(t0 + Duration::from_secs(1), Duration::from_secs(3600));
        *fresh.response_header_mut() = bobs.response_header().clone();
        assert!(store.update_meta(&k, &fresh, &span()).await.unwrap());
    }

    #[tokio::test]
    async fn update_meta_keeps_body_changes_freshness() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/page");
        // A revalidation keeps the stored copy's `created` (pingora's
        // `revalidate_cache_meta`), and only such a meta updates it.
        let t0 = SystemTime::now();
        put_with(
            store,
            &k,
            &meta_created(t0, Duration::from_secs(60)),
            b"body",
        )
        .await;
        let longer = meta_created(t0, Duration::from_secs(3600));
        assert!(store.update_meta(&k, &longer, &span()).await.unwrap());
        let (got, body) = get(store, &k).await.unwrap();
        assert_eq!(body, b"body");
        assert_eq!(got.fresh_until(), longer.fresh_until());
        assert!(!store
            .update_meta(&key("https", "h", "/absent"), &longer, &span())
            .await
            .unwrap());
        assert_eq!(store.stats().objects_inserted, 1);
    }

    #[tokio::test]
    async fn purge_by_target() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/gone");
        put(store, &k, b"x").await;
        let outcome = purge_target(store, &k).await;
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        let outcome = purge_target(store, &k).await;
        assert_eq!(outcome, PurgeOutcome::NotFound);
    }

    #[tokio::test]
    async fn purge_url_host_specific_and_any_host() {
        let store = memory_store(4 << 20, 1 << 20);
        let a = key("https", "a.example", "/x?v=1");
        let a_http = key("http", "a.example", "/x?v=1");
        let b = key("https", "b.example", "/x?v=1");
        let other = key("https", "a.example", "/y");
        for k in [&a, &a_http, &b, &other] {
            put(store, k, b"x").await;
        }
        let removed = store.purge(&PurgeScope::Url {
            host: Some("A.example".into()),
            path_and_query: "/x?v=1".into(),
        });
        assert_eq!(removed, 2);
        assert!(get(store, &a).await.is_none());
        assert!(get(store, &a_http).await.is_none());
        assert!(get(store, &b).await.is_some());
        assert!(get(store, &other).await.is_some());

        put(store, &a, b"again").await;
        let removed = store.purge(&PurgeScope::Url {
            host: None,
            path_and_query: "/x?v=1".into(),
        });
        assert_eq!(removed, 2);
        assert!(get(store, &a).await.is_none());
        assert!(get(store, &b).await.is_none());
        assert!(get(store, &other).await.is_some());
    }

    /// A key may hold a port this deployment allows (`ent.fr:8443`); purges name the host
    /// without one and cover every port, now and by tombstone.
    #[tokio::test]
    async fn purge_by_host_covers_every_port() {
        let store = memory_store(4 << 20, 1 << 20);
        let created = SystemTime::now() - std::time::Duration::from_secs(1);
        let plain = key("https", "ent.fr", "/x");
        let ported = key("https", "ent.fr:8443", "/x");
        let v6 = key("https", "[::1]:8443", "/x");
        let other = key("https", "ent.fr.evil:8443", "/x");
        for k in [&plain, &ported, &v6, &other] {
            put(store, k, b"x").await;
        }
        let removed = store.purge(&PurgeScope::Url {
            host: Some("ENT.fr:443".into()),
            path_and_query: "/x".into(),
        });
        assert_eq!(removed, 2);
        assert!(get(store, &plain).await.is_none());
        assert!(get(store, &ported).await.is_none());
        assert!(get(store, &other).await.is_some());
        assert!(store.purged_since("https://ent.fr:8443/x", created));
        assert!(!store.purged_since("https://ent.fr.evil:8443/x", created));

        store.purge(&PurgeScope::Prefix {
            host: Some("[::1]".into()),
            path_prefix: "/".into(),
        });
        assert!(get(store, &v6).await.is_none());
        assert!(store.purged_since("https://[::1]:8443/y", created));
        assert!(get(store, &other).await.is_some());
    }

    #[tokio::test]
    async fn purge_prefix_host_specific_and_any_host() {
        let store = memory_store(4 << 20, 1 << 20);
        let docs_a = key("https", "a", "/docs/one");
        let docs_a2 = key("https", "a", "/docs/sub/two?x=1");
        let docs_b = key("https", "b", "/docs/one");
        let doc_a = key("https", "a", "/doc");
        for k in [&docs_a, &docs_a2, &docs_b, &doc_a] {
            put(store, k, b"x").await;
        }
        let removed = store.purge(&PurgeScope::Prefix {
            host: Some("a".into()),
            path_prefix: "/docs/".into(),
        });
        assert_eq!(removed, 2);
        assert!(get(store, &docs_a).await.is_none());
        assert!(get(store, &docs_a2).await.is_none());
        assert!(get(store, &docs_b).await.is_some());
        assert!(get(store, &doc_a).await.is_some());

        let removed = store.purge(&PurgeScope::Prefix {
            host: None,
            path_prefix: "/docs/".into(),
        });
        assert_eq!(removed, 1);
        assert!(get(store, &docs_b).await.is_none());
        assert!(get(store, &doc_a).await.is_some());
    }

    #[tokio::test]
    async fn stored_after_purge_is_served_fetched_before_is_not() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/news");
        let before = SystemTime::now() - Duration::from_secs(5);
        put(store, &k, b"old").await;
        store.purge(&PurgeScope::Prefix {
            host: None,
            path_prefix: "/".into(),
        });
        // Fetched before the purge, finished after: never served.
        put_with(
            store,
            &k,
            &meta_created(before, Duration::from_secs(60)),
            b"stale",
        )
        .await;
        assert!(get(store, &k).await.is_none());
        // Fetched after the purge: served.
        put(store, &k, b"new").await;
        assert_eq!(get(store, &k).await.unwrap().1, b"new");
    }

    #[tokio::test]
    async fn tombstone_drops_entries_purge_did_not_reach() {
        let store = memory_store(4 << 20, 1 << 20);
        let k = key("https", "h", "/unindexed");
        put(store, &k, b"x").await;
        // Forget the index, as for an entry recovered from disk and never read.
        store.shared.index().clear();
        let removed = store.purge(&PurgeScope::Prefix {
            host: Some("h".into()),
            path_prefix: "/un".into(),
        });
        assert_eq!(removed, 0);
        assert!(get(store, &k).await.is_none());
        assert!(!store.gen().cache.contains(&hash_key(&k)));
    }

    #[tokio::test]
    async fn max_object_bytes_rejects_large_bodies() {
        let store = memory_store(4 << 20, 1000);
        let k = key("https", "h", "/big");
        let mut miss = store
            .get_miss_handler(&k, &meta(Duration::from_secs(60)), &span())
            .await
            .unwrap();
        miss.write_body(Bytes::from(vec![0u8; 600]), false)
            .await
            .unwrap();
        let err = miss
            .write_body(Bytes::from(vec![0u8; 600]), true)
            .await
            .unwrap_err();
        assert_eq!(err.etype(), &ERR_RESPONSE_TOO_LARGE);
        assert!(miss.finish().await.is_err());
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        // Exactly the limit is stored.
        put(store, &k, &[1u8; 1000]).await;
        assert!(get(store, &k).await.is_some());
    }

    #[tokio::test]
    async fn memory_tier_is_bounded_and_evicts() {
        let store = memory_store(1 << 20, 64 * KIB as u64);
        for i in 0..200 {
            let k = key("https", "h", &format!("/obj/{i}"));
            put(store, &k, &body_of(i as u8, 64 * KIB)).await;
        }
        let s = store.stats();
        assert!(
            s.memory_used_bytes <= s.memory_capacity_bytes,
            "{} > {}",
            s.memory_used_bytes,
            s.memory_capacity_bytes
        );
        assert!(s.memory_used_bytes > 512 * KIB as u64, "{s:?}");
        assert!(s.memory_evictions > 0);
        assert_eq!(s.objects_inserted, 200);
        // The index follows memory: it does not keep the evicted.
        assert!(store.shared.index().len() < 20);
        // The latest is still there.
        let last = key("https", "h", "/obj/199");
        assert_eq!(get(store, &last).await.unwrap().1, body_of(199, 64 * KIB));
    }

    #[test]
    fn object_encoding_round_trips_and_rejects_garbage() {
        let m = meta(Duration::from_secs(60));
        let o = CachedObject::from_meta(Arc::from("https://h/x"), &m, Bytes::from_static(b"hello"))
            .unwrap();
        let mut buf = Vec::new();
        o.encode(&mut buf).unwrap();
        assert!(o.estimated_size() > 0);
        let back = CachedObject::decode(&mut &buf[..]).unwrap();
        assert_eq!(&*back.url, "https://h/x");
        assert_eq!(&back.body[..], b"hello");
        assert_eq!(back.meta.created(), m.created());
        assert_eq!(back.meta.headers().get("x-case").unwrap(), "Kept");
        assert_eq!(back.weight, o.weight);
        for cut in [0, 3, 6, buf.len() / 2, buf.len() - 1] {
            assert!(CachedObject::decode(&mut &buf[..cut]).is_err(), "cut {cut}");
        }
        let mut garbage = buf.clone();
        garbage[0] ^= 0xff;
        assert!(CachedObject::decode(&mut &garbage[..]).is_err());
        // A wrong length must not allocate it: 4 GiB claimed, a few bytes given.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(b"abc");
        assert!(CachedObject::decode(&mut &huge[..]).is_err());
        // A corrupt meta is an error, not a panic.
        let mut bad_meta = MAGIC.to_vec();
        for field in [&b"https://h/x"[..], b"\xff\xfe", b"\x00"] {
            bad_meta.extend_from_slice(&(field.len() as u32).to_le_bytes());
            bad_meta.extend_from_slice(field);
        }
        bad_meta.extend_from_slice(&0u64.to_le_bytes());
        assert!(CachedObject::decode(&mut &bad_meta[..]).is_err());
    }

    #[test]
    fn disk_too_small_is_an_error() {
        let dir = TempDir::new();
        let err = Store::open(&StoreConfig {
            memory_bytes: 1 << 20,
            disk: Some(DiskConfig {
                path: dir.0.clone(),
                bytes: 32 << 20,
            }),
            max_object_bytes: 1 << 20,
        })
        .err()
        .unwrap();
        assert!(err.starts_with("cache disk "), "{err}");
        assert!(err.contains("at least"), "{err}");
        // The size it asks for is enough.
        let need: u64 = err
            .rsplit("at least ")
            .next()
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        let store = Store::open(&StoreConfig {
            memory_bytes: 1 << 20,
            disk: Some(DiskConfig {
                path: dir.0.clone(),
                bytes: need,
            }),
            max_object_bytes: 1 << 20,
        })
        .unwrap();
        assert_eq!(store.stats().disk_block_bytes, 16 << 20);
        store.close();
    }

    #[test]
    fn disk_block_follows_max_object() {
        let plan = DiskPlan::new(
            &DiskConfig {
                path: "/x".into(),
                bytes: 1 << 30,
            },
            40 << 20,
        )
        .unwrap();
        assert_eq!(plan.block, 41 << 20);
        assert!(DiskPlan::new(
            &DiskConfig {
                path: "/x".into(),
                bytes: 1 << 30,
            },
            u64::MAX,
        )
        .is_err());
    }

    #[tokio::test]
    async fn disk_restart_finds_objects() {
        let dir = TempDir::new();
        let keys: Vec<CacheKey> = (0..20)
            .map(|i| key("https", "h", &format!("/file/{i}")))
            .collect();
        // A revalidation's meta keeps the stored copy's `created` (see `update_meta`).
        let t0 = SystemTime::now();
        let updated = meta_created(t0, Duration::from_secs(7200));
        {
            let store = disk_store(&dir, 8 << 20);
            for (i, k) in keys.iter().enumerate() {
                let m = meta_created(t0, Duration::from_secs(60));
                put_with(store, k, &m, &body_of(i as u8, 100 * KIB)).await;
            }
            assert!(store
                .update_meta(&keys[0], &updated, &span())
                .await
                .unwrap());
            // Served from memory while the disk writes go on.
            assert!(get(store, &keys[3]).await.is_some());
            store.close();
            let s = store.stats();
            assert!(s.disk_written_bytes >= 20 * 100 * KIB as u64, "{s:?}");
            assert_eq!(s.disk_capacity_bytes, 64 << 20);
        }
        let store = disk_store(&dir, 8 << 20);
        assert_eq!(store.stats().memory_used_bytes, 0);
        for (i, k) in keys.iter().enumerate() {
            let (m, body) = get(store, k).await.unwrap_or_else(|| panic!("{i} lost"));
            assert_eq!(body, body_of(i as u8, 100 * KIB), "{i}");
            if i == 0 {
                // The newer copy wins.
                assert_eq!(m.fresh_until(), updated.fresh_until());
            }
        }
        // Read back from disk, the objects are in memory (and indexed) again.
        assert!(store.stats().memory_used_bytes > 0);
        assert!(store
            .shared
            .index()
            .contains_key(&*primary_key("https", "h", "/file/5")));
        store.close();
    }

    #[tokio::test]
    async fn purged_entries_do_not_come_back_after_restart() {
        let dir = TempDir::new();
        let purged_url = key("https", "h", "/purged");
        let purged_target = key("https", "h", "/target");
        let purged_lazily = key("https", "h", "/lazy/1");
        let kept = key("https", "h", "/kept");
        {
            let store = disk_store(&dir, 8 << 20);
            for k in [&purged_url, &purged_target, &purged_lazily, &kept] {
                put(store, k, b"payload").await;
            }
            assert_eq!(
                store.purge(&PurgeScope::Url {
                    host: Some("h".into()),
                    path_and_query: "/purged".into(),
                }),
                1
            );
            // pingora's own purge: no tombstone of ours, foyer's deletion log must hold it.
            assert_eq!(
                purge_target(store, &purged_target).await,
                PurgeOutcome::Purged(None)
            );
            // An entry the process does not know about (as if only on disk): only the
            // tombstone can stop it.
            store.shared.index().clear();
            assert_eq!(
                store.purge(&PurgeScope::Prefix {
                    host: None,
                    path_prefix: "/lazy/".into(),
                }),
                0
            );
            store.close();
        }
        assert!(dir.0.join(TOMBSTONES_FILE).exists());
        let store = disk_store(&dir, 8 << 20);
        assert!(get(store, &purged_url).await.is_none());
        assert!(get(store, &purged_target).await.is_none());
        assert!(get(store, &purged_lazily).await.is_none());
        assert_eq!(get(store, &kept).await.unwrap().1, b"payload");
        // Stored after the purge: served, and kept through a restart.
        put(store, &purged_lazily, b"fresh").await;
        store.close();
        let store = disk_store(&dir, 8 << 20);
        assert_eq!(get(store, &purged_lazily).await.unwrap().1, b"fresh");
        store.close();
    }

    #[tokio::test]
    async fn disk_bytes_held_are_what_the_filesystem_holds() {
        let dir = TempDir::new();
        {
            let store = disk_store(&dir, 8 << 20);
            let s = store.stats();
            assert_eq!(s.disk_used_bytes, 0, "{s:?}");
            for i in 0..4 {
                put(
                    store,
                    &key("https", "h", &format!("/f/{i}")),
                    &body_of(i, 300 * KIB),
                )
                .await;
            }
            store.close();
            // What the filesystem holds: the four bodies, not the 16 MiB block foyer
            // counts as used from its first write.
            let s = store.stats();
            assert!(s.disk_used_bytes >= 4 * 300 * KIB as u64, "{s:?}");
            assert!(s.disk_used_bytes < s.disk_block_bytes, "{s:?}");
        }
        // After a restart: the recovered objects count too.
        let store = disk_store(&dir, 8 << 20);
        let s = store.stats();
        assert!(s.disk_used_bytes >= 4 * 300 * KIB as u64, "{s:?}");
        // Without a disk tier: nothing on disk.
        let mem = Store::open(&StoreConfig {
            memory_bytes: 1 << 20,
            disk: None,
            max_object_bytes: 1 << 20,
        })
        .unwrap();
        put(mem, &key("https", "h", "/m"), b"x").await;
        assert_eq!(mem.stats().disk_used_bytes, 0);
        store.close();
    }

    #[tokio::test]
    async fn disk_tier_evicts_blocks_when_full() {
        let dir = TempDir::new();
        let need = 2 * (16 << 20) + (1 << 20);
        let store = Store::open(&StoreConfig {
            memory_bytes: 2 << 20,
            disk: Some(DiskConfig {
                path: dir.0.clone(),
                bytes: need,
            }),
            max_object_bytes: 1 << 20,
        })
        .unwrap();
        for i in 0..120 {
            let k = key("https", "h", &format!("/big/{i}"));
            put(store, &k, &body_of(i as u8, 512 * KIB)).await;
            if i % 8 == 7 {
                // Let the flusher keep up (foyer drops writes past its queue bound).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        store.close();
        let s = store.stats();
        assert!(s.disk_evictions > 0, "{s:?}");
        assert!(s.disk_written_bytes > need, "{s:?}");
        // The latest objects are still there; every answer is a right one.
        let last = key("https", "h", "/big/119");
        assert_eq!(get(store, &last).await.unwrap().1, body_of(119, 512 * KIB));
        for i in 0..120 {
            let k = key("https", "h", &format!("/big/{i}"));
            if let Some((_, body)) = get(store, &k).await {
                assert_eq!(body, body_of(i as u8, 512 * KIB), "{i}");
            }
        }
    }

    /// No memory tier: objects live on disk only and are read back from it each time.
    #[tokio::test]
    async fn disk_only_store() {
        let dir = TempDir::new();
        let store = disk_store(&dir, 0);
        let k = key("https", "h", "/disk-only");
        put(store, &k, b"on disk").await;
        for _ in 0..3 {
            assert_eq!(get(store, &k).await.unwrap().1, b"on disk");
        }
        let s = store.stats();
        assert_eq!(s.memory_used_bytes, 0);
        assert_eq!(s.memory_evictions, 0);
        assert_eq!(
            store.purge(&PurgeScope::Url {
                host: Some("h".into()),
                path_and_query: "/disk-only".into(),
            }),
            1
        );
        assert!(get(store, &k).await.is_none());
        store.close();
    }

    #[tokio::test]
    async fn corrupt_tombstone_file_fails_safe() {
        let dir = TempDir::new();
        let k = key("https", "h", "/a");
        {
            let store = disk_store(&dir, 8 << 20);
            put(store, &k, b"x").await;
            store.close();
        }
        std::fs::write(dir.0.join(TOMBSTONES_FILE), b"{not json").unwrap();
        let store = disk_store(&dir, 8 << 20);
        assert!(get(store, &k).await.is_none());
        put(store, &k, b"y").await;
        assert_eq!(get(store, &k).await.unwrap().1, b"y");
        store.close();
    }

    #[test]
    fn tombstone_set_is_bounded() {
        let mut set = TombSet::default();
        let t0 = SystemTime::now();
        for i in 0..MAX_URL_TOMBSTONES + 10 {
            set.add_url(Some("h"), &format!("/{i}"), t0);
        }
        assert_eq!(set.by_url.len(), MAX_URL_TOMBSTONES);
        assert!(!set.by_url.contains_key("h/0"));
        assert!(set.by_url.contains_key("h/10"));
        for i in 0..MAX_PREFIX_TOMBSTONES + 5 {
            set.add_prefix(None, &format!("/p{i}/"), t0);
        }
        assert_eq!(set.prefixes.len(), MAX_PREFIX_TOMBSTONES);
        assert!(set.matches("https://x/p10/a", t0 - Duration::from_secs(1)));
        assert!(!set.matches("https://x/p0/a", t0 - Duration::from_secs(1)));
        assert!(!set.matches("https://x/p10/a", t0));
    }
}
