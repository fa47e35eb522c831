//! pingora-cache's `Storage` over the store: lookup (tombstones checked), the miss
//! handler that stores a response, purge, meta update, and the hit handler that serves a
//! stored body whole or by ranges.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use foyer::Source;
use pingora_cache::max_file_size::ERR_RESPONSE_TOO_LARGE;
use pingora_cache::storage::{HandleHit, HandleMiss, MissFinishType};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_error::{Error, ErrorType, Result};

use super::key::hash_key;
use super::object::CachedObject;
use super::store::Store;

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
pub(super) struct Hit {
    pub(super) body: Bytes,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) done: bool,
}

impl Hit {
    pub(super) fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
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
pub(super) struct Miss {
    pub(super) store: &'static Store,
    pub(super) key: u128,
    pub(super) url: Arc<str>,
    pub(super) internal: Box<[u8]>,
    pub(super) meta: CacheMeta,
    pub(super) chunks: Vec<Bytes>,
    pub(super) size: usize,
    pub(super) too_large: bool,
}

impl Miss {
    pub(super) fn too_large_error<T>(&self) -> Result<T> {
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
