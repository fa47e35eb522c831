//! `cache` and `routes[].cache`: storage settings and each route's cache rules.

use std::time::Duration;

use super::context::{duration_or, size_or, BuildContext, Problems};
use crate::config::file::FileConfig;
use crate::config::tree::Seg;
use crate::path;
use crate::policy::cache_rules::{CacheMode, CacheStorage, QueryMode, RouteCache};

pub(super) fn build_cache_storage(
    p: &mut Problems,
    file: &FileConfig,
    ctx: &BuildContext,
) -> CacheStorage {
    let d = CacheStorage::default();
    let Some(c) = &file.cache else {
        return d;
    };
    let memory_bytes = size_or(p, &c.memory, d.memory_bytes, path!["cache", "memory"]);
    if memory_bytes < 1 << 20 {
        p.at(path!["cache", "memory"], "must be at least 1MiB");
    }
    // Without a disk tier an object must fit in memory (a quarter of it by default, so
    // one file cannot flush everything else).
    let default_max = if c.disk.is_some() {
        d.max_object_bytes
    } else {
        d.max_object_bytes.min(memory_bytes / 4)
    };
    let max_object_bytes = size_or(
        p,
        &c.max_object_size,
        default_max,
        path!["cache", "max_object_size"],
    );
    if c.disk.is_none() && max_object_bytes > memory_bytes {
        p.at(
            path!["cache", "max_object_size"],
            "is larger than the memory tier (`cache.memory`) and there is no disk tier: such an object could never be stored",
        );
    }
    let disk = c.disk.as_ref().map(|disk| {
        let bytes = size_or(
            p,
            &Some(disk.size.clone()),
            0,
            path!["cache", "disk", "size"],
        );
        let floor = (4 * max_object_bytes).max(64 << 20);
        if bytes < floor {
            p.at(
                path!["cache", "disk", "size"],
                format!(
                    "must be at least {} MiB (4 × max_object_size, and 64MiB)",
                    floor >> 20
                ),
            );
        }
        let dir = ctx.base_dir.join(&disk.path);
        // Against the filesystem of this machine: a warning only, since `check` often
        // runs elsewhere (a config repository's CI); `ecluse run` refuses a tier larger
        // than its whole filesystem and warns when free space is short.
        if bytes >= floor {
            if let Ok(fit) = crate::cache::space::fit(&dir, bytes) {
                if let Some(msg) = crate::cache::space::describe(&dir, bytes, &fit) {
                    let msg = match fit {
                        crate::cache::space::Fit::Short { .. } => msg,
                        _ => format!("{msg} (`ecluse run` refuses to start on this machine)"),
                    };
                    p.warn_at(path!["cache", "disk", "size"], msg);
                }
            }
        }
        (dir, bytes)
    });
    CacheStorage {
        memory_bytes,
        disk,
        max_object_bytes,
        lock_timeout: duration_or(
            p,
            &c.lock_timeout,
            d.lock_timeout,
            path!["cache", "lock_timeout"],
        ),
    }
}

pub(super) fn build_route_cache(
    p: &mut Problems,
    c: &super::file::RouteCacheFile,
    storage: &CacheStorage,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> RouteCache {
    use super::file::{CacheModeFile, CacheQueryFile};
    let opt = |p: &mut Problems, v: &Option<super::file::DurationText>, key: &str| {
        v.as_ref()
            .map(|_| duration_or(p, v, Duration::ZERO, at(path!["cache", key])))
    };
    let ttl = opt(p, &c.ttl, "ttl");
    let max_ttl = opt(p, &c.max_ttl, "max_ttl");
    if let (Some(t), Some(m)) = (ttl, max_ttl) {
        if t > m {
            p.at(
                at(path!["cache", "ttl"]),
                "is longer than `max_ttl`, which caps every freshness",
            );
        }
    }
    let max_object_bytes = size_or(
        p,
        &c.max_object_size,
        storage.max_object_bytes,
        at(path!["cache", "max_object_size"]),
    );
    if max_object_bytes > storage.max_object_bytes {
        p.at(
            at(path!["cache", "max_object_size"]),
            format!(
                "is larger than the storage's `cache.max_object_size` ({} bytes)",
                storage.max_object_bytes
            ),
        );
    }
    let mode = match c.mode {
        None | Some(CacheModeFile::Public) => CacheMode::Public,
        Some(CacheModeFile::Shared) => CacheMode::Shared,
        Some(CacheModeFile::Revalidate) => CacheMode::Revalidate,
    };
    let trust_strong_etags = c.trust_strong_etags.unwrap_or(false);
    if trust_strong_etags && mode != CacheMode::Revalidate {
        p.at(
            at(path!["cache", "trust_strong_etags"]),
            "only applies to `mode: revalidate` (other modes never send a stored copy's \
             validators on behalf of credentials)",
        );
    }
    RouteCache {
        mode,
        ttl,
        max_ttl,
        stale_while_revalidate: opt(p, &c.stale_while_revalidate, "stale_while_revalidate")
            .unwrap_or(Duration::ZERO),
        stale_if_error: opt(p, &c.stale_if_error, "stale_if_error").unwrap_or(Duration::ZERO),
        max_object_bytes,
        query: match c.query {
            None | Some(CacheQueryFile::Sort) => QueryMode::Sort,
            Some(CacheQueryFile::Keep) => QueryMode::Keep,
            Some(CacheQueryFile::Ignore) => QueryMode::Ignore,
        },
        trust_strong_etags,
    }
}
