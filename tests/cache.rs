//! Assignment-file cache, end to end: real ecluse binary, a real file origin on port 0 that
//! counts every fetch, real clients.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Clone)]
struct File {
    body: Bytes,
    version: u64,
    cache_control: &'static str,
}

/// Counts per path: full responses (200) and revalidations answered 304.
#[derive(Default, Clone, Copy, Debug, PartialEq)]
struct Counts {
    full: u64,
    not_modified: u64,
    denied: u64,
}

/// A simulated ENT file server. `/files/*` are plain files; `/private/*` need the cookie
/// `user=alice` (bob gets 403, nobody 401); `/host/*` answer with the Host they were asked
/// for. ETags follow the version; `PUT` replaces a file (a teacher's re-upload).
#[derive(Clone)]
struct FileOrigin {
    addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, File>>>,
    counts: Arc<Mutex<HashMap<String, Counts>>>,
    down: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    seen_inm: Arc<Mutex<Vec<String>>>,
    /// Alice is refused too (her rights were withdrawn).
    refuse_alice: Arc<AtomicBool>,
    /// When each request arrived, by path.
    arrivals: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Set to stop: the listener closes and every open connection is dropped.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FileOrigin {
    async fn start() -> FileOrigin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let o = FileOrigin {
            addr: l.local_addr().expect("addr"),
            files: Default::default(),
            counts: Default::default(),
            down: Default::default(),
            delay_ms: Default::default(),
            seen_inm: Default::default(),
            refuse_alice: Default::default(),
            arrivals: Default::default(),
            stop: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let me = o.clone();
        tokio::spawn(async move {
            let mut stopped = me.stop.subscribe();
            loop {
                let s = tokio::select! {
                    a = l.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    _ = stopped.wait_for(|v| *v) => return,
                };
                let me = me.clone();
                let mut stopped = me.stop.subscribe();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.answer(req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(s), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|v| *v) => {}
                    }
                });
            }
        });
        o
    }

    /// Stop for good: nothing listens any more, open connections are cut.
    fn stop(&self) {
        let _ = self.stop.send(true);
    }

    fn put(&self, path: &str, body: impl Into<Bytes>, cache_control: &'static str) {
        let mut files = self.files.lock().unwrap();
        let version = files.get(path).map(|f| f.version + 1).unwrap_or(1);
        files.insert(
            path.to_string(),
            File {
                body: body.into(),
                version,
                cache_control,
            },
        );
    }

    fn counts(&self, path: &str) -> Counts {
        self.counts
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    fn count(&self, path: &str, f: impl FnOnce(&mut Counts)) {
        f(self
            .counts
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default());
    }

    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let hdr = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (cookie, inm, host) = (hdr("cookie"), hdr("if-none-match"), hdr("host"));
        let lang = hdr("accept-language");
        self.arrivals
            .lock()
            .unwrap()
            .push((path.clone(), Instant::now()));
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let resp = |status: u16, b: Bytes| {
            hyper::Response::builder()
                .status(status)
                .body(Full::new(b))
                .expect("response")
        };
        if self.down.load(Ordering::Relaxed) {
            return resp(503, Bytes::from_static(b"down"));
        }
        let d = self.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if method == hyper::Method::PUT {
            let b = body.unwrap_or_default();
            self.put(&path, b, "max-age=3600");
            return resp(204, Bytes::new());
        }
        if path.starts_with("/private/") {
            let user = cookie
                .as_deref()
                .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("user=")))
                .map(str::to_string);
            let status = match user.as_deref() {
                Some("alice") if !self.refuse_alice.load(Ordering::Relaxed) => 0,
                Some(_) => 403,
                None => 401,
            };
            if status != 0 {
                self.count(&path, |c| c.denied += 1);
                return resp(status, Bytes::from_static(b"denied"));
            }
        }
        if path.starts_with("/files/vary/") {
            self.count(&path, |c| c.full += 1);
            return hyper::Response::builder()
                .header("cache-control", "max-age=600")
                .header("vary", "Accept-Language")
                .body(Full::new(Bytes::from(format!(
                    "lang={}",
                    lang.unwrap_or_default()
                ))))
                .expect("response");
        }
        if path.starts_with("/host/") {
            self.count(&path, |c| c.full += 1);
            return hyper::Response::builder()
                .header("cache-control", "max-age=600")
                .body(Full::new(Bytes::from(format!(
                    "host={}",
                    host.unwrap_or_default()
                ))))
                .expect("response");
        }
        let Some(f) = self.files.lock().unwrap().get(&path).cloned() else {
            return resp(404, Bytes::from_static(b"no such file"));
        };
        let etag = format!("\"v{}\"", f.version);
        if let Some(inm) = inm {
            self.seen_inm.lock().unwrap().push(inm.clone());
            if inm == etag {
                self.count(&path, |c| c.not_modified += 1);
                return hyper::Response::builder()
                    .status(304)
                    .header("etag", etag)
                    .header("cache-control", f.cache_control)
                    .body(Full::new(Bytes::new()))
                    .expect("response");
            }
        }
        self.count(&path, |c| c.full += 1);
        let mut b = hyper::Response::builder()
            .header("etag", etag)
            .header("last-modified", "Mon, 30 Nov 2026 07:00:00 GMT")
            .header("content-type", "application/pdf");
        if !f.cache_control.is_empty() {
            b = b.header("cache-control", f.cache_control);
        }
        if path.starts_with("/private/") {
            b = b.header("set-cookie", "session=alice-refreshed; Path=/");
        }
        b.body(Full::new(f.body)).expect("response")
    }
}

fn yaml(origin: SocketAddr, storage: &str, routes: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: 2000, health_check: {{ disabled: true }} }}
{storage}
routes:
{routes}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

const FILES_ROUTE: &str = r#"  - name: files
    match: { path_prefix: /files/ }
    origin: ent
    cache: { ttl: 10m, stale_if_error: 2s }
  - name: hosts
    match: { path_prefix: /host/ }
    origin: ent
    cache: {}
"#;

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_misses_make_one_origin_fetch() {
    let o = FileOrigin::start().await;
    let body: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    o.put("/files/exam.pdf", body.clone(), "max-age=600");
    // The fetch takes long enough for every request to arrive while it is in flight.
    o.delay_ms.store(500, Ordering::Relaxed);
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1000)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, url) = (c.clone(), e.url("/files/exam.pdf"));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.expect("request");
            let status = r.status().as_u16();
            let cs = cache_status(&r);
            (status, cs, r.bytes().await.expect("body"))
        }));
    }
    let mut hits = 0;
    for t in tasks {
        let (status, cs, b) = t.await.unwrap();
        assert_eq!(status, 200, "{cs}");
        assert_eq!(b.len(), body.len());
        assert!(b[..] == body[..], "body differs");
        if cs.starts_with("ecluse; hit") {
            hits += 1;
        }
    }
    assert_eq!(
        o.counts("/files/exam.pdf").full,
        1,
        "exactly one origin fetch"
    );
    assert_eq!(hits, 999, "every other request was served from the cache");
    eventually(
        "999 fetches saved are counted",
        Duration::from_secs(5),
        async || {
            e.metric(
                "ecluse_cache_origin_fetches_saved_total",
                &[("route", "files")],
            ) == 999.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_serves_stale_within_stale_if_error_then_an_error() {
    let o = FileOrigin::start().await;
    o.put("/files/a.pdf", "version one", "max-age=1");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert_eq!(
        cache_status(&r),
        "ecluse; fwd=uri-miss; fwd-status=200; stored"
    );
    assert_eq!(r.text().await.unwrap(), "version one");
    o.down.store(true, Ordering::Relaxed);
    // Fresh for 1 s: a hit, the origin is not asked.
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert!(
        cache_status(&r).starts_with("ecluse; hit; ttl="),
        "{}",
        cache_status(&r)
    );
    // Once stale, the origin fails: the stored copy is served for stale_if_error (2 s)…
    let mut saw_stale = false;
    eventually(
        "a stale copy is served",
        Duration::from_secs(5),
        async || {
            let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
            let cs = cache_status(&r);
            if cs == "ecluse; fwd=stale; fwd-status=503; detail=stale-if-error" {
                assert_eq!(r.status(), 200);
                assert_eq!(r.text().await.unwrap(), "version one");
                saw_stale = true;
            }
            saw_stale
        },
    )
    .await;
    // …and after it, the origin's failure shows.
    eventually(
        "the error shows after stale_if_error",
        Duration::from_secs(6),
        async || {
            let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
            r.status() == 503
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_files_never_reach_another_user() {
    let o = FileOrigin::start().await;
    // Even a file the origin wrongly marks cacheable stays with its user by default.
    o.put("/private/alice.pdf", "alice's marks", "max-age=600");
    let routes = r#"  - name: default
    match: { path_prefix: /private/ }
    origin: ent
    cache: { ttl: 10m }
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    let get = |cookie: Option<&'static str>| {
        let mut rb = c.get(e.url("/private/alice.pdf"));
        if let Some(ck) = cookie {
            rb = rb.header("cookie", ck);
        }
        rb.send()
    };
    let a = get(Some("user=alice")).await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(cache_status(&a), "ecluse; fwd=bypass; detail=credentials");
    assert_eq!(a.text().await.unwrap(), "alice's marks");
    let b = get(Some("user=bob")).await.unwrap();
    assert_eq!(b.status(), 403);
    assert_eq!(b.text().await.unwrap(), "denied");
    let anon = get(None).await.unwrap();
    assert_eq!(anon.status(), 401, "nothing was stored for anonymous users");
    assert_eq!(o.counts("/private/alice.pdf").full, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidate_mode_authorizes_every_request_and_serves_the_body_from_cache() {
    let o = FileOrigin::start().await;
    o.put(
        "/private/exam.pdf",
        "the exam paper",
        "private, max-age=600",
    );
    let routes = r#"  - name: private
    match: { path_prefix: /private/ }
    origin: ent
    cache: { mode: revalidate, stale_if_error: 1h }
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    let get = |cookie: Option<&'static str>| {
        let mut rb = c.get(e.url("/private/exam.pdf"));
        if let Some(ck) = cookie {
            rb = rb.header("cookie", ck);
        }
        rb.send()
    };
    let a = get(Some("user=alice")).await.unwrap();
    assert_eq!(a.status(), 200);
    assert!(
        a.headers().get("set-cookie").is_some(),
        "alice keeps her own cookie"
    );
    assert_eq!(a.text().await.unwrap(), "the exam paper");
    // Bob asks: the origin is asked with bob's cookie, and its refusal passes through.
    let b = get(Some("user=bob")).await.unwrap();
    assert_eq!(b.status(), 403);
    assert_eq!(b.text().await.unwrap(), "denied");
    let anon = get(None).await.unwrap();
    assert_eq!(anon.status(), 401);
    // Alice again: a conditional request, 304, the body from the cache.
    let a2 = get(Some("user=alice")).await.unwrap();
    assert_eq!(a2.status(), 200);
    assert_eq!(
        cache_status(&a2),
        "ecluse; fwd=stale; fwd-status=304; stored"
    );
    assert!(
        a2.headers().get("set-cookie").is_none(),
        "no other user's cookie in a response built from the cache"
    );
    assert_eq!(a2.text().await.unwrap(), "the exam paper");
    let n = o.counts("/private/exam.pdf");
    assert_eq!((n.full, n.not_modified, n.denied), (1, 1, 2), "{n:?}");
    assert!(o.seen_inm.lock().unwrap().iter().all(|v| v == "\"v1\""));
    // A re-upload is seen at once: the origin answers 200 with the new version.
    o.put(
        "/private/exam.pdf",
        "the corrected exam paper",
        "private, max-age=600",
    );
    let a3 = get(Some("user=alice")).await.unwrap();
    assert_eq!(a3.text().await.unwrap(), "the corrected exam paper");
    // Origin down: the stored copy goes only to the credentials the origin authorized
    // for it (alice, just now). Bob, whom it refused, a user it never saw, and anonymous
    // requests get the origin's error, never the file.
    o.down.store(true, Ordering::Relaxed);
    let a4 = get(Some("user=alice")).await.unwrap();
    assert_eq!(a4.status(), 200);
    assert_eq!(
        cache_status(&a4),
        "ecluse; fwd=stale; fwd-status=503; detail=stale-if-error"
    );
    assert_eq!(a4.text().await.unwrap(), "the corrected exam paper");
    for who in [Some("user=bob"), Some("user=carol"), None] {
        let r = get(who).await.unwrap();
        assert_eq!(r.status(), 503, "{who:?}");
        assert!(
            !cache_status(&r).contains("hit"),
            "{who:?}: {}",
            cache_status(&r)
        );
        let body = r.text().await.unwrap();
        assert!(!body.contains("exam"), "{who:?} got the file: {body}");
    }
    // Credentials are the whole set the origin saw: alice's cookie plus another one is
    // not what it authorized (the order of cookies does not matter: unit-tested in
    // cache::auth).
    let a5 = c
        .get(e.url("/private/exam.pdf"))
        .header("cookie", "theme=dark; user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(a5.status(), 503, "other credentials (an extra cookie)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidate_mode_stale_if_error_never_outlives_a_refusal() {
    let o = FileOrigin::start().await;
    o.put(
        "/private/exam.pdf",
        "the exam paper",
        "private, max-age=600",
    );
    o.put("/private/notes.pdf", "the notes", "private, max-age=600");
    let routes = r#"  - name: private
    match: { path_prefix: /private/ }
    origin: ent
    cache: { mode: revalidate, stale_if_error: 1h }
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    let get = |path: &'static str| c.get(e.url(path)).header("cookie", "user=alice").send();
    // Alice is authorized for both files, then the origin withdraws her right to the
    // exam (403) while the notes stay hers.
    assert_eq!(get("/private/exam.pdf").await.unwrap().status(), 200);
    assert_eq!(get("/private/notes.pdf").await.unwrap().status(), 200);
    o.refuse_alice.store(true, Ordering::Relaxed);
    assert_eq!(get("/private/exam.pdf").await.unwrap().status(), 403);
    o.refuse_alice.store(false, Ordering::Relaxed);
    o.down.store(true, Ordering::Relaxed);
    // Origin down: the refusal stands for the exam; the notes (authorized, per object)
    // are still served from the stored copy.
    let r = get("/private/exam.pdf").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_ne!(r.text().await.unwrap(), "the exam paper");
    let r = get("/private/notes.pdf").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "the notes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_one_fetch_serves_every_user_when_the_origin_says_public() {
    let o = FileOrigin::start().await;
    o.put("/private/timetable.pdf", "timetable", "public, max-age=600");
    let routes = r#"  - name: shared
    match: { path_prefix: /private/ }
    origin: ent
    cache: { mode: shared }
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    let a = c
        .get(e.url("/private/timetable.pdf"))
        .header("cookie", "user=alice")
        .send()
        .await
        .unwrap();
    assert_eq!(a.text().await.unwrap(), "timetable");
    let b = c
        .get(e.url("/private/timetable.pdf"))
        .header("cookie", "user=bob")
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
    assert!(cache_status(&b).starts_with("ecluse; hit"));
    assert!(
        b.headers().get("set-cookie").is_none(),
        "alice's cookie is not replayed"
    );
    assert_eq!(b.text().await.unwrap(), "timetable");
    assert_eq!(o.counts("/private/timetable.pdf").full, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_serves_after_a_restart_without_the_origin() {
    let o = FileOrigin::start().await;
    o.put("/files/exam.pdf", vec![7u8; 300_000], "max-age=600");
    let dir = TempDir::new("cache-disk");
    let storage = format!(
        "cache: {{ memory: 8MiB, max_object_size: 1MiB, disk: {{ path: \"{}\", size: 64MiB }} }}",
        dir.path().display()
    );
    let cfg = yaml(o.addr, &storage, FILES_ROUTE);
    let mut e = Ecluse::start(&cfg);
    // One host for both processes: the key holds a non-default port (#17), and the
    // restarted process listens on another one.
    let r = client()
        .get(e.url("/files/exam.pdf"))
        .header("host", "ent.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
    e.signal(libc::SIGTERM);
    assert!(
        e.wait_exit(Duration::from_secs(15)).is_some(),
        "ecluse stopped"
    );
    drop(e);
    o.down.store(true, Ordering::Relaxed);
    let e2 = Ecluse::start(&cfg);
    let r = client()
        .get(e2.url("/files/exam.pdf"))
        .header("host", "ent.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        cache_status(&r).starts_with("ecluse; hit"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.bytes().await.unwrap(), vec![7u8; 300_000]);
    assert_eq!(o.counts("/files/exam.pdf").full, 1);
    // The disk tier's bytes: the recovered block holding the file.
    let disk = e2.metric("ecluse_cache_bytes", &[("tier", "disk")]);
    assert!(
        (300_000.0..=64.0 * 1024.0 * 1024.0).contains(&disk),
        "disk tier holds {disk} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tier_stays_within_its_size() {
    let o = FileOrigin::start().await;
    for i in 0..200 {
        o.put(
            &format!("/files/f{i}.bin"),
            vec![i as u8; 64 * 1024],
            "max-age=600",
        );
    }
    let storage = "cache: { memory: 2MiB, max_object_size: 256KiB }";
    let e = Ecluse::start(&yaml(o.addr, storage, FILES_ROUTE));
    let c = client();
    for i in 0..200 {
        let r = c
            .get(e.url(&format!("/files/f{i}.bin")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().len(), 64 * 1024);
        let used = e.metric("ecluse_cache_bytes", &[("tier", "memory")]);
        assert!(
            used <= 2.0 * 1024.0 * 1024.0,
            "memory tier holds {used} bytes"
        );
    }
    assert!(e.metric("ecluse_cache_evictions_total", &[("tier", "memory")]) > 0.0);
    assert_eq!(
        e.metric("ecluse_cache_capacity_bytes", &[("tier", "memory")]),
        2.0 * 1024.0 * 1024.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_conditionals_head_and_hosts_from_cache() {
    let o = FileOrigin::start().await;
    o.put("/files/r.txt", "0123456789abcdef", "max-age=600");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let url = e.url("/files/r.txt");
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "0123456789abcdef"
    );
    // Single range.
    let r = c
        .get(&url)
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 2-5/16");
    assert_eq!(r.text().await.unwrap(), "2345");
    // Multiple ranges: multipart/byteranges with both parts.
    let r = c
        .get(&url)
        .header("range", "bytes=0-1,10-11")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("multipart/byteranges"), "{ct}");
    let t = r.text().await.unwrap();
    assert!(
        t.contains("Content-Range: bytes 0-1/16") && t.contains("\r\n01\r\n"),
        "{t}"
    );
    assert!(
        t.contains("Content-Range: bytes 10-11/16") && t.contains("\r\nab\r\n"),
        "{t}"
    );
    // Conditional requests answered by the cache.
    let r = c
        .get(&url)
        .header("if-none-match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(&url)
        .header("if-modified-since", "Mon, 30 Nov 2026 08:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = c
        .get(&url)
        .header("if-none-match", "\"v0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // HEAD from the cache: headers, no body.
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "16");
    assert!(cache_status(&r).starts_with("ecluse; hit"));
    assert_eq!(o.counts("/files/r.txt").full, 1, "all of it from one fetch");
    // The Host is part of the key.
    for host in ["a.test", "b.test", "a.test"] {
        let r = c
            .get(e.url("/host/x"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!("host={host}"));
    }
    assert_eq!(o.counts("/host/x").full, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_hit_is_never_read_as_the_next_request() {
    use std::io::{Read, Write};
    let o = FileOrigin::start().await;
    o.put("/files/s.txt", "public file", "max-age=600");
    o.put("/files/secret", "smuggled", "max-age=600");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    assert_eq!(
        c.get(e.url("/files/s.txt")).send().await.unwrap().status(),
        200
    );
    let addr = e.proxy;
    let text = tokio::task::spawn_blocking(move || {
        let inner = "GET /files/secret HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /files/s.txt HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        )
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.contains("public file"));
    assert_eq!(o.counts("/files/secret").full, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_warm_and_purge_and_reupload_invalidation() {
    let o = FileOrigin::start().await;
    o.put("/files/exam.pdf", "exam v1", "max-age=3600");
    o.put("/files/other.pdf", "other", "max-age=3600");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    // Warm before 08:00.
    let r = c
        .post(e.admin_url("/admin/cache/warm"))
        // The host students use, port included (a non-default port is part of the key).
        .body(format!(r#"{{"host": "{}", "urls": ["/files/exam.pdf", "/files/other.pdf", "/files/missing.pdf"]}}"#, e.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["warmed"], 2, "{v}");
    assert!(
        v["results"][0]["cache_status"]
            .as_str()
            .unwrap()
            .contains("stored"),
        "{v}"
    );
    assert_eq!(v["failed"], 1, "{v}");
    assert_eq!(v["results"][0]["status"], 200, "{v}");
    assert_eq!(o.counts("/files/exam.pdf").full, 1);
    let r = c.get(e.url("/files/exam.pdf")).send().await.unwrap();
    assert!(cache_status(&r).starts_with("ecluse; hit"));
    // A teacher re-uploads through ecluse: the next student gets the new version.
    let r = c
        .put(e.url("/files/exam.pdf"))
        .body("exam v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        cache_status(&r).contains("detail=method"),
        "{}",
        cache_status(&r)
    );
    let r = c.get(e.url("/files/exam.pdf")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "exam v2");
    // Purge by prefix: both files are fetched again.
    let r = c
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"prefix": "/files/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = o.counts("/files/other.pdf").full;
    let r = c.get(e.url("/files/other.pdf")).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.counts("/files/other.pdf").full, before + 1);
    // Purge one URL.
    let r = c
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"url": "/files/other.pdf"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(e.url("/files/other.pdf")).send().await.unwrap();
    assert!(cache_status(&r).contains("fwd=uri-miss"));
    // Bad admin input: a clear 400, nothing purged.
    let r = c
        .post(e.admin_url("/admin/cache/warm"))
        .body(r#"{"urls": ["/files/exam.pdf"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "warming needs the host students use");
    for bad in [
        r#"{"prefix": "files"}"#,
        r#"{}"#,
        r#"{"url": 3}"#,
        "not json",
    ] {
        let r = c
            .post(e.admin_url("/admin/cache/purge"))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = c.get(e.url("/files/other.pdf")).send().await.unwrap();
    assert!(cache_status(&r).starts_with("ecluse; hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_stale_level_serves_stored_copies_whatever_their_age() {
    let o = FileOrigin::start().await;
    o.put("/files/a.pdf", "stored copy", "max-age=1");
    let storage = "degradation:\n  levels:\n    - { name: normal }\n    - { name: survival, serve_stale: true }";
    let routes = r#"  - name: files
    match: { path_prefix: /files/ }
    origin: ent
    cache: {}
"#;
    let e = Ecluse::start(&yaml(o.addr, storage, routes));
    let c = client();
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    o.down.store(true, Ordering::Relaxed);
    // No stale_if_error: once stale, the origin's failure shows.
    eventually("the copy goes stale", Duration::from_secs(5), async || {
        c.get(e.url("/files/a.pdf")).send().await.unwrap().status() == 503
    })
    .await;
    let level = |body: &'static str| c.post(e.admin_url("/admin/level")).body(body).send();
    assert_eq!(
        level(r#"{"level": "survival"}"#).await.unwrap().status(),
        200
    );
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cache_status(&r), "ecluse; hit; detail=stale");
    assert_eq!(r.text().await.unwrap(), "stored copy");
    // Counted when the request's log line is written, just after the response.
    eventually(
        "the stale answer is counted",
        Duration::from_secs(5),
        async || {
            e.metric(
                "ecluse_cache_requests_total",
                &[("route", "files"), ("result", "stale")],
            ) == 1.0
        },
    )
    .await;
    assert_eq!(level(r#"{"level": null}"#).await.unwrap().status(), 200);
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_ecluse_makes_on_a_cacheable_route_carry_cache_status() {
    let o = FileOrigin::start().await;
    o.put("/files/a.pdf", "a", "max-age=600");
    let routes = r#"  - name: files
    match: { path_prefix: /files/ }
    origin: ent
    cache: {}
    rate_limits: [{ key: client_ip, rate: 1/min, burst: 1 }]
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        cache_status(&r),
        "ecluse; fwd=bypass; detail=answered-by-ecluse"
    );
    // Origin unreachable on a miss: the gateway error says what the cache did.
    let dead = dead_port();
    let e2 = Ecluse::start(&yaml(dead, "", FILES_ROUTE));
    let r = c.get(e2.url("/files/b.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        cache_status(&r) == "ecluse; fwd=miss; detail=origin-error",
        "{}",
        cache_status(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_objects_too_large() {
    let o = FileOrigin::start().await;
    o.put("/files/a.pdf", "v1", "max-age=1");
    o.put("/files/big.bin", vec![1u8; 300 * 1024], "max-age=600");
    let routes = r#"  - name: files
    match: { path_prefix: /files/ }
    origin: ent
    cache: { stale_while_revalidate: 1m, max_object_size: 256KiB }
"#;
    let e = Ecluse::start(&yaml(o.addr, "", routes));
    let c = client();
    assert_eq!(
        c.get(e.url("/files/a.pdf")).send().await.unwrap().status(),
        200
    );
    o.put("/files/a.pdf", "v2", "max-age=600");
    // Once stale: the old copy is served at once while one request refreshes it.
    let mut served_stale = false;
    eventually(
        "a stale copy is served while refreshing",
        Duration::from_secs(5),
        async || {
            let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
            if cache_status(&r) == "ecluse; hit; detail=stale" {
                assert_eq!(r.text().await.unwrap(), "v1");
                served_stale = true;
            }
            served_stale
        },
    )
    .await;
    eventually(
        "the background refresh stored v2",
        Duration::from_secs(5),
        async || {
            let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
            let fresh = cache_status(&r).starts_with("ecluse; hit; ttl=");
            fresh && r.text().await.unwrap() == "v2"
        },
    )
    .await;
    assert_eq!(o.counts("/files/a.pdf").full, 2);
    // Bigger than max_object_size: served whole, never stored.
    for _ in 0..2 {
        let r = c.get(e.url("/files/big.bin")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 300 * 1024);
    }
    assert_eq!(o.counts("/files/big.bin").full, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_an_https_url_serves_students_arriving_over_tls() {
    let o = FileOrigin::start().await;
    o.put("/files/exam.pdf", "exam", "max-age=600");
    o.put("/files/notes.pdf", "notes", "max-age=600");
    let cert = SelfSigned::localhost();
    let tls = r#"tls: { listen: ["127.0.0.1:0"], cert_file: cert.pem, key_file: key.pem }"#;
    let e = Ecluse::start_with(&yaml(o.addr, tls, FILES_ROUTE), &cert.files(), |_| {});
    let tls_addr = e.tls.expect("tls address printed");
    let c = client();
    // Warm the URL students use (https), and a relative one (https by default: ecluse
    // terminates TLS itself).
    let r = c
        .post(e.admin_url("/admin/cache/warm"))
        .body(r#"{"host": "localhost", "urls": ["https://localhost/files/exam.pdf", "/files/notes.pdf"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["warmed"], 2, "{v}");
    assert_eq!(v["results"][0]["scheme"], "https", "{v}");
    assert_eq!(v["results"][1]["scheme"], "https", "{v}");
    assert_eq!(o.counts("/files/exam.pdf").full, 1);
    // A student over TLS: a hit, no origin fetch.
    // Their browser reaches `https://localhost/`: the default port, no port in `Host`
    // (HTTP/1.1, where `Host` may be written apart from the URL's port).
    let s = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .resolve("localhost", tls_addr)
        .http1_only()
        .build()
        .unwrap();
    for path in ["/files/exam.pdf", "/files/notes.pdf"] {
        let r = s
            .get(format!("https://localhost:{}{path}", tls_addr.port()))
            .header("host", "localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            cache_status(&r).starts_with("ecluse; hit"),
            "{path}: {}",
            cache_status(&r)
        );
    }
    assert_eq!(o.counts("/files/exam.pdf").full, 1);
    assert_eq!(o.counts("/files/notes.pdf").full, 1);
    // The scheme is part of the key: the same URL over plain http is another object.
    let r = c
        .get(format!(
            "http://localhost:{}/files/exam.pdf",
            e.proxy.port()
        ))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.counts("/files/exam.pdf").full, 2);
    // An explicit `scheme` for relative URLs; a bad one is a clear 400.
    let r = c
        .post(e.admin_url("/admin/cache/warm"))
        .body(r#"{"host": "localhost", "scheme": "http", "urls": ["/files/notes.pdf"]}"#)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["scheme"], "http", "{v}");
    assert_eq!(o.counts("/files/notes.pdf").full, 2, "http is another key");
    for bad in [
        r#"{"host": "localhost", "scheme": "ftp", "urls": ["/files/a"]}"#,
        r#"{"urls": ["ftp://localhost/files/a"]}"#,
    ] {
        let r = c
            .post(e.admin_url("/admin/cache/warm"))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_give_up_on_a_slow_fetch_after_lock_timeout_and_fetch_themselves() {
    let o = FileOrigin::start().await;
    o.put("/files/slow.pdf", "slow file", "max-age=600");
    // The one fetch takes 3 s; waiters wait at most 1 s for it.
    o.delay_ms.store(3000, Ordering::Relaxed);
    let e = Ecluse::start(&yaml(o.addr, "cache: { lock_timeout: 1s }", FILES_ROUTE));
    let c = client();
    let first = {
        let (c, url) = (c.clone(), e.url("/files/slow.pdf"));
        tokio::spawn(async move { c.get(url).send().await.expect("request").status() })
    };
    // The others arrive once the first holds the lock (it is at the origin).
    eventually(
        "the first fetch reached the origin",
        Duration::from_secs(5),
        async || !o.arrivals.lock().unwrap().is_empty(),
    )
    .await;
    let t0 = o.arrivals.lock().unwrap()[0].1;
    let mut waiters = Vec::new();
    for _ in 0..4 {
        let (c, url) = (c.clone(), e.url("/files/slow.pdf"));
        waiters.push(tokio::spawn(async move {
            let r = c.get(url).send().await.expect("request");
            let cs = cache_status(&r);
            (r.status(), cs, r.text().await.expect("body"))
        }));
    }
    let mut gave_up = 0;
    for w in waiters {
        let (status, cs, body) = w.await.unwrap();
        assert_eq!(status, 200, "{cs}");
        assert_eq!(body, "slow file");
        // A waiter gives up and fetches uncached (`lock-timeout`), or takes over the lock
        // the slow writer held past `lock_timeout` and fetches for the cache itself.
        if cs == "ecluse; fwd=bypass; detail=lock-timeout" {
            gave_up += 1;
        } else {
            assert!(cs.starts_with("ecluse; fwd=uri-miss"), "{cs}");
        }
    }
    assert!(gave_up >= 1, "no waiter reported the lock timeout");
    assert_eq!(first.await.unwrap(), 200);
    let arrivals = o.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 5, "every waiter went to the origin itself");
    for (_, t) in &arrivals[1..] {
        let waited = t.duration_since(t0);
        // About lock_timeout (1 s) after the first fetch started, well before it ended
        // (3 s): they gave up on the lock rather than wait for the slow fetch.
        assert!(
            waited >= Duration::from_millis(800) && waited < Duration::from_millis(2800),
            "a waiter reached the origin {waited:?} after the first fetch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_one_copy_per_variant() {
    let o = FileOrigin::start().await;
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let get = |lang: &'static str| {
        c.get(e.url("/files/vary/page"))
            .header("accept-language", lang)
            .send()
    };
    for (lang, first) in [("fr", true), ("en", true), ("fr", false), ("en", false)] {
        let r = get(lang).await.unwrap();
        let cs = cache_status(&r);
        assert_eq!(r.text().await.unwrap(), format!("lang={lang}"), "{cs}");
        assert_eq!(!first, cs.starts_with("ecluse; hit"), "{lang}: {cs}");
    }
    assert_eq!(
        o.counts("/files/vary/page").full,
        2,
        "one fetch per language"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_order_does_not_split_the_key() {
    let o = FileOrigin::start().await;
    o.put("/files/q.pdf", "q", "max-age=600");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let r = c.get(e.url("/files/q.pdf?a=1&b=2")).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    for q in ["?b=2&a=1", "?a=1&&b=2", "?a=1&b=2"] {
        let r = c
            .get(e.url(&format!("/files/q.pdf{q}")))
            .send()
            .await
            .unwrap();
        assert!(
            cache_status(&r).starts_with("ecluse; hit"),
            "{q}: {}",
            cache_status(&r)
        );
    }
    // Another value is another object.
    let r = c.get(e.url("/files/q.pdf?a=2&b=2")).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.counts("/files/q.pdf").full, 2);
    // Purging one URL normalizes its query like the key: the reversed order purges the
    // stored `a=1&b=2`.
    let r = c
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"url": "/files/q.pdf?b=2&a=1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(e.url("/files/q.pdf?a=1&b=2")).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(o.counts("/files/q.pdf").full, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_head_stores_the_whole_object_for_the_next_get() {
    let o = FileOrigin::start().await;
    o.put("/files/h.pdf", "the whole file", "max-age=600");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let r = c.head(e.url("/files/h.pdf")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.headers()["content-length"], "14");
    assert_eq!(r.bytes().await.unwrap().len(), 0, "no body on HEAD");
    let r = c.get(e.url("/files/h.pdf")).send().await.unwrap();
    assert!(
        cache_status(&r).starts_with("ecluse; hit"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.text().await.unwrap(), "the whole file");
    assert_eq!(o.counts("/files/h.pdf").full, 1);
}

/// The `result` label a response's `Cache-Status` stands for.
fn result_of(cs: &str) -> &'static str {
    if cs.starts_with("ecluse; hit; detail=stale") || cs.contains("detail=stale-if-error") {
        "stale"
    } else if cs.starts_with("ecluse; hit") {
        "hit"
    } else if cs.starts_with("ecluse; fwd=stale; fwd-status=304") {
        "revalidated"
    } else if cs.starts_with("ecluse; fwd=stale") {
        "expired"
    } else if cs.starts_with("ecluse; fwd=uri-miss") {
        "miss"
    } else if cs.starts_with("ecluse; fwd=bypass") {
        "bypass"
    } else {
        panic!("unexpected Cache-Status `{cs}`")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_results_are_counted_by_label() {
    let o = FileOrigin::start().await;
    o.put("/files/m.pdf", "v1", "max-age=1");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    let c = client();
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    let mut get = async |cookie: Option<&str>| {
        let mut rb = c.get(e.url("/files/m.pdf"));
        if let Some(ck) = cookie {
            rb = rb.header("cookie", ck.to_string());
        }
        let r = rb.send().await.unwrap();
        let cs = cache_status(&r);
        assert_eq!(r.status(), 200, "{cs}");
        *seen.entry(result_of(&cs)).or_default() += 1;
        cs
    };
    assert!(get(None).await.contains("fwd=uri-miss"));
    assert!(get(None).await.starts_with("ecluse; hit; ttl="));
    // Stale after 1 s: revalidated (the origin answers 304)…
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(None).await != "ecluse; fwd=stale; fwd-status=304; stored" {
        assert!(Instant::now() < deadline, "never revalidated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …then, after a new version, refetched (expired).
    o.put("/files/m.pdf", "v2", "max-age=1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(None).await != "ecluse; fwd=stale; fwd-status=200; stored" {
        assert!(Instant::now() < deadline, "never refetched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get(Some("session=42")).await.contains("detail=credentials"));
    for label in ["hit", "miss", "revalidated", "expired", "bypass"] {
        assert!(seen.get(label).is_some_and(|n| *n > 0), "{label}: {seen:?}");
    }
    let seen = seen.clone();
    eventually(
        "the metric agrees with every Cache-Status",
        Duration::from_secs(5),
        async || {
            ["hit", "stale", "revalidated", "expired", "miss", "bypass"]
                .iter()
                .all(|l| {
                    e.metric(
                        "ecluse_cache_requests_total",
                        &[("route", "files"), ("result", l)],
                    ) == seen.get(l).copied().unwrap_or(0) as f64
                })
        },
    )
    .await;
    // Only the fresh hits spared the origin an exchange.
    assert_eq!(
        e.metric(
            "ecluse_cache_origin_fetches_saved_total",
            &[("route", "files")]
        ),
        seen["hit"] as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_gone_serves_stale_within_stale_if_error_then_ecluse_error_page() {
    let o = FileOrigin::start().await;
    o.put("/files/a.pdf", "stored copy", "max-age=1");
    let e = Ecluse::start(&yaml(o.addr, "", FILES_ROUTE));
    // One pooled client, as a browser: every answer for a dead origin must say whether
    // the connection stays open, so that reusing it never meets a reset.
    let c = client();
    let get = || {
        c.get(e.url("/files/a.pdf"))
            .header("accept", "application/json")
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    // The origin process is gone: nothing listens, connections are cut.
    o.stop();
    let mut stale = 0;
    eventually(
        "the stored copy stands in once stale",
        Duration::from_secs(5),
        async || {
            let r = get().await.unwrap();
            let cs = cache_status(&r);
            if cs == "ecluse; fwd=stale; detail=stale-if-error" {
                assert_eq!(r.status(), 200);
                // The origin's connection broke: the connection is not kept, and the
                // answer says so.
                assert_eq!(r.headers()["connection"], "close");
                assert_eq!(r.text().await.unwrap(), "stored copy");
                stale += 1;
            } else {
                assert!(cs.starts_with("ecluse; hit; ttl="), "{cs}");
            }
            stale > 0
        },
    )
    .await;
    // stale_if_error is 2 s: after it, ecluse's own gateway error page.
    eventually(
        "ecluse's error page after stale_if_error",
        Duration::from_secs(6),
        async || {
            let r = get().await.unwrap();
            if r.status() != 502 {
                assert_eq!(r.status(), 200);
                return false;
            }
            let cs = cache_status(&r);
            assert_eq!(r.headers()["cache-control"], "no-store");
            let body = r.text().await.unwrap();
            assert!(body.contains("bad_gateway"), "{body}");
            assert!(!body.contains("stored copy"));
            assert_eq!(cs, "ecluse; fwd=stale; detail=origin-error");
            true
        },
    )
    .await;
    eventually("counted as stale", Duration::from_secs(5), async || {
        e.metric(
            "ecluse_cache_requests_total",
            &[("route", "files"), ("result", "stale")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        e.metric(
            "ecluse_cache_origin_fetches_saved_total",
            &[("route", "files")]
        ),
        e.metric(
            "ecluse_cache_requests_total",
            &[("route", "files"), ("result", "hit")]
        ),
        "stale-if-error answers asked the origin: not saved fetches"
    );
}
