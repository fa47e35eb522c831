//! The stored object (`CachedObject`: URL, decoded meta, body as one `Bytes`), what it
//! weighs in the memory tier, and its disk encoding (foyer's `Code`).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use foyer::{Code, ErrorKind};
use pingora_cache::CacheMeta;
use pingora_error::Result;
use pingora_http::ResponseHeader;

// ---------------------------------------------------------------------------------------
// The stored object and its disk encoding.
// ---------------------------------------------------------------------------------------

/// Per-object bookkeeping not visible in the body and headers: foyer's record, the
/// `CacheMeta` box, the `Arc<str>` and the `Bytes` handle, the index entry.
pub(super) const OBJECT_OVERHEAD: usize = 512;

/// One cached response.
pub(crate) struct CachedObject {
    /// `primary_key()` of the response; empty when the key was not UTF-8 (such an entry
    /// can only be purged by its pingora key).
    pub(super) url: Arc<str>,
    /// `CacheMeta`'s internal part, serialized. `CacheMeta` is not `Clone`; decoding these
    /// few dozen bytes and cloning the decoded header is how a hit gets its own copy
    /// without decompressing the header again.
    pub(super) internal: Box<[u8]>,
    pub(super) meta: CacheMeta,
    pub(super) body: Bytes,
    /// What this object costs the memory tier, computed once (the weighter runs under
    /// foyer's shard lock).
    pub(super) weight: usize,
}

impl CachedObject {
    pub(super) fn new(
        url: Arc<str>,
        internal: Box<[u8]>,
        meta: CacheMeta,
        body: Bytes,
    ) -> CachedObject {
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
    pub(super) fn from_meta(url: Arc<str>, meta: &CacheMeta, body: Bytes) -> Result<CachedObject> {
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
pub(super) fn header_bytes_estimate(header: &ResponseHeader) -> usize {
    header
        .headers
        .iter()
        .map(|(name, value)| 2 * (name.as_str().len() + value.len()) + 64)
        .sum::<usize>()
        + 128
}

/// First bytes of an encoded object: tells our own format (and its version) from anything
/// else a reused directory might hold.
pub(super) const MAGIC: [u8; 4] = *b"EcO1";

/// Largest allocation made up front while decoding; anything longer grows as it is read, so
/// a wrong length can never ask for an absurd allocation.
pub(super) const DECODE_PREALLOC_MAX: usize = 64 << 20;

pub(super) fn write_len32(w: &mut impl Write, len: usize, what: &str) -> foyer::Result<()> {
    let len = u32::try_from(len).map_err(|_| {
        foyer::Error::new(
            ErrorKind::BufferSizeLimit,
            format!("{what} longer than 4 GiB"),
        )
    })?;
    w.write_all(&len.to_le_bytes())
        .map_err(foyer::Error::io_error)
}

pub(super) fn read_u32(r: &mut impl Read) -> foyer::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u32::from_le_bytes(b))
}

pub(super) fn read_u64(r: &mut impl Read) -> foyer::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
    Ok(u64::from_le_bytes(b))
}

pub(super) fn read_field(r: &mut impl Read, len: usize, what: &str) -> foyer::Result<Vec<u8>> {
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

/// The serialized form of an empty header, to decode a `CacheMeta`'s internal part alone.
pub(super) fn empty_header_bytes() -> std::result::Result<Vec<u8>, String> {
    let header = ResponseHeader::build(200, None).map_err(|e| format!("cache: {e}"))?;
    CacheMeta::new(UNIX_EPOCH, UNIX_EPOCH, 0, 0, header)
        .serialize()
        .map(|(_, header)| header)
        .map_err(|e| format!("cache: cannot encode a response header: {e}"))
}
