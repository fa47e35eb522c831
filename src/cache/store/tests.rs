//! The store's tests (moved from `store.rs` with it, issue #22).

use super::*;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use foyer::Code;
use pingora_cache::max_file_size::ERR_RESPONSE_TOO_LARGE;
use pingora_cache::storage::MissFinishType;
use pingora_cache::trace::SpanHandle;
use pingora_cache::{
    CacheKey, CacheMeta, HitHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage,
};
use pingora_http::ResponseHeader;

use crate::cache::disk_plan::{DiskConfig, DiskPlan};
use crate::cache::key::{hash_key, primary_key, split_url};
use crate::cache::object::{CachedObject, MAGIC};
use crate::cache::tombstones::{
    TombSet, MAX_PREFIX_TOMBSTONES, MAX_URL_TOMBSTONES, TOMBSTONES_FILE,
};
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
