//! Purge tombstones: a purge holds for entries this process never saw (the disk tier comes
//! back after a restart with whatever it held), so it records the URL or prefix and its
//! time; an entry created before a matching tombstone is never served. With a disk tier
//! they are saved next to it (`tombstones.json`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::key::{host_name, split_url};

// ---------------------------------------------------------------------------------------
// Tombstones.
// ---------------------------------------------------------------------------------------

pub(super) const TOMBSTONES_FILE: &str = "tombstones.json";
/// Exact-URL tombstones kept; beyond, the oldest go (their entries may then be served
/// again if they are still stored, which takes more than 100k purges in a row).
pub(super) const MAX_URL_TOMBSTONES: usize = 100_000;
/// Prefix tombstones are scanned on every hit, so they stay few.
pub(super) const MAX_PREFIX_TOMBSTONES: usize = 1_000;

pub(super) struct PrefixTombstone {
    pub(super) host: Option<Box<str>>,
    pub(super) prefix: Box<str>,
    pub(super) at: SystemTime,
}

#[derive(Default)]
pub(super) struct TombSet {
    /// "host/path?query" -> purge time.
    pub(super) by_url: HashMap<Arc<str>, SystemTime>,
    /// "/path?query" (any host) -> purge time.
    pub(super) by_path: HashMap<Arc<str>, SystemTime>,
    /// Insertion order of both maps, oldest first, to drop the oldest; may hold superseded
    /// duplicates (a re-purged URL), which are skipped.
    pub(super) order: VecDeque<(bool, Arc<str>, SystemTime)>,
    pub(super) prefixes: Vec<PrefixTombstone>,
}

impl TombSet {
    pub(super) fn add_url(&mut self, host: Option<&str>, path: &str, at: SystemTime) {
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

    pub(super) fn add_prefix(&mut self, host: Option<&str>, prefix: &str, at: SystemTime) {
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

    pub(super) fn matches(&self, url: &str, created: SystemTime) -> bool {
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

    pub(super) fn to_file(&self) -> TombFile {
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

    pub(super) fn is_empty(&self) -> bool {
        self.by_url.is_empty() && self.by_path.is_empty() && self.prefixes.is_empty()
    }
}

/// `tombstones.json`: purges that must outlive the process (times in ns since the epoch,
/// oldest first).
#[derive(Serialize, Deserialize)]
pub(super) struct TombFile {
    pub(super) version: u32,
    #[serde(default)]
    pub(super) urls: Vec<TombRecord>,
    #[serde(default)]
    pub(super) prefixes: Vec<TombRecord>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct TombRecord {
    pub(super) host: Option<String>,
    /// The path and query (URL tombstones) or the path prefix.
    pub(super) path: String,
    pub(super) at: u64,
}

pub(super) fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The tombstone set, its flag for the hot path, and its file.
pub(super) struct Tombstones {
    /// False until the first tombstone: lookups then skip the lock entirely.
    pub(super) any: AtomicBool,
    pub(super) set: RwLock<TombSet>,
    pub(super) file: Option<PathBuf>,
    /// A background write is queued and has not yet taken its snapshot.
    pub(super) write_queued: AtomicBool,
    /// Serializes writers so the file always ends with the latest snapshot.
    pub(super) write_lock: Mutex<()>,
}

impl Tombstones {
    /// Load `file` if it exists. An unreadable file fails the open; an undecodable one is
    /// replaced by one tombstone over everything created before now, so nothing purged is
    /// ever served (the price: the disk tier starts cold).
    pub(super) fn load(file: Option<PathBuf>) -> std::result::Result<Tombstones, String> {
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

    pub(super) fn read(&self) -> RwLockReadGuard<'_, TombSet> {
        self.set.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, TombSet> {
        self.set.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn matches(&self, url: &str, created: SystemTime) -> bool {
        self.any.load(Ordering::Acquire) && self.read().matches(url, created)
    }

    pub(super) fn add_url(&self, host: Option<&str>, path: &str, at: SystemTime) {
        self.write().add_url(host, path, at);
        self.any.store(true, Ordering::Release);
    }

    pub(super) fn add_prefix(&self, host: Option<&str>, prefix: &str, at: SystemTime) {
        self.write().add_prefix(host, prefix, at);
        self.any.store(true, Ordering::Release);
    }

    /// Save the set in the background (the purge may run on a proxy worker, and the file
    /// can reach megabytes); bursts of purges coalesce into few writes.
    pub(super) fn save_soon(self: &Arc<Self>, runtime: &Handle) {
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
    pub(super) fn save_now(&self) {
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

pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
