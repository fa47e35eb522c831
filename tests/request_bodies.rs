//! Request bodies through the real binary and a lenient ENT backend (issue #17, class 7):
//! buffered before the origin slot (slow uploads hold no slot), bounded per route (413
//! before anything is forwarded, a chunked body crossing the limit never arrives
//! complete), spilled to an unnamed file past the memory buffer, streaming routes intact.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lenient_ent::LenientEnt;
use common::*;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

fn sha(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

/// A body of `n` bytes that differs for each `tag` (so each upload is told apart).
fn body(tag: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i + tag as usize) % 26) as u8)
        .collect()
}

fn yaml(origin: SocketAddr, extra_server: &str, routes: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server:
  threads: 2
  grace_period: 0s
  shutdown_timeout: 2s
{extra_server}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: 2, health_check: {{ disabled: true }} }}
routes:
{routes}
"#
    )
}

/// How an upload is framed on the wire.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length,
    Chunked,
}

/// The request head of an upload of `len` bytes to `path`.
fn upload_head(path: &str, len: usize, framing: Framing) -> String {
    let framing = match framing {
        Framing::Length => format!("Content-Length: {len}"),
        Framing::Chunked => "Transfer-Encoding: chunked".to_string(),
    };
    format!("POST {path} HTTP/1.1\r\nHost: ent\r\n{framing}\r\nConnection: close\r\n\r\n")
}

/// Send `piece` in the upload's framing.
async fn send_piece(s: &mut TcpStream, piece: &[u8], framing: Framing) -> std::io::Result<()> {
    match framing {
        Framing::Length => s.write_all(piece).await,
        Framing::Chunked => {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            s.write_all(piece).await?;
            s.write_all(b"\r\n").await
        }
    }
}

async fn end_body(s: &mut TcpStream, framing: Framing) -> std::io::Result<()> {
    match framing {
        Framing::Length => Ok(()),
        Framing::Chunked => s.write_all(b"0\r\n\r\n").await,
    }
}

/// Upload `data` to `path`, `piece` bytes every `every` (a pace, not a synchronisation),
/// and return the response's status (None: no response).
async fn trickle_upload(
    proxy: SocketAddr,
    path: String,
    data: Vec<u8>,
    framing: Framing,
    piece: usize,
    every: Duration,
) -> Option<u16> {
    let mut s = TcpStream::connect(proxy).await.ok()?;
    s.write_all(upload_head(&path, data.len(), framing).as_bytes())
        .await
        .ok()?;
    for p in data.chunks(piece) {
        if send_piece(&mut s, p, framing).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let _ = end_body(&mut s, framing).await;
    let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
    status_of(&raw)
}

/// Slow uploads, at several rates above `body_min_rate` (500 B/s), chunked and with a
/// length, more of them than the origin's `max_inflight` (2): while they trickle, every
/// other request is still served; then each upload reaches the origin exactly once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_hold_no_origin_slot_and_arrive_once_whole() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "",
        "  - { name: ent, match: { path_prefix: / }, origin: ent }",
    ));
    // 4 uploads of 6 000 bytes: 1 000, 1 500 and 2 000 B/s, both framings: 3 to 6 s each.
    let plans = [
        (Framing::Length, 100, 100u64),
        (Framing::Chunked, 100, 100),
        (Framing::Length, 150, 100),
        (Framing::Chunked, 200, 100),
    ];
    let sending = Arc::new(AtomicUsize::new(plans.len()));
    let mut uploads = Vec::new();
    let mut bodies = Vec::new();
    for (i, (framing, piece, ms)) in plans.iter().copied().enumerate() {
        let data = body(i as u8, 6_000);
        bodies.push(data.clone());
        let (proxy, sending) = (e.proxy, sending.clone());
        uploads.push(tokio::spawn(async move {
            let st = trickle_upload(
                proxy,
                format!("/up/{i}"),
                data,
                framing,
                piece,
                Duration::from_millis(ms),
            )
            .await;
            sending.fetch_sub(1, Ordering::SeqCst);
            st
        }));
    }
    // As many uploads in ecluse as the origin has slots (without buffering, any more are
    // refused at once and every page after them too).
    eventually("the uploads are in ecluse", DEADLINE, async || {
        e.metric("ecluse_inflight_requests", &[]) >= 2.0
    })
    .await;
    // Other requests while every upload is still trickling: served, not 503.
    let c = client();
    let mut served = 0;
    for k in 0..6 {
        let r = c
            .get(e.url(&format!("/page/{k}")))
            .send()
            .await
            .expect("page");
        assert_eq!(r.status(), 200, "a page while uploads trickle");
        served += 1;
    }
    assert_eq!(
        sending.load(Ordering::SeqCst),
        plans.len(),
        "the uploads were still trickling while {served} pages were served"
    );
    for (i, u) in uploads.into_iter().enumerate() {
        assert_eq!(u.await.expect("task"), Some(200), "upload {i}");
    }
    for (i, b) in bodies.iter().enumerate() {
        let seen: Vec<_> = ent
            .seen()
            .into_iter()
            .filter(|s| s.path == format!("/up/{i}"))
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "upload {i} reached the origin once: {seen:?}"
        );
        assert!(seen[0].body_complete);
        assert_eq!(seen[0].body_len, b.len(), "upload {i} whole");
        assert_eq!(seen[0].body_sha256, sha(b), "upload {i} intact");
    }
}

/// A `Content-Length` over the route's limit is answered 413 at once, before the body is
/// read (the client did not even send it), and the connection is closed; the origin sees
/// nothing. The default limit (1 MiB) holds on a route without its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_too_large_body_is_refused_before_anything_is_forwarded() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "",
        "  - { name: small, match: { path_prefix: /small/ }, origin: ent, max_body_size: 1KB }\n  - { name: ent, match: { path_prefix: / }, origin: ent }",
    ));
    for (path, len) in [("/small/x", 1_001usize), ("/other", (1 << 20) + 1)] {
        let mut s = TcpStream::connect(e.proxy).await.expect("connect");
        // The head only: the body is never sent.
        s.write_all(
            upload_head(path, len, Framing::Length)
                .replace("Connection: close\r\n", "")
                .as_bytes(),
        )
        .await
        .expect("head");
        let (raw, closed) = read_until_closed(&mut s, DEADLINE).await;
        assert_eq!(
            status_of(&raw),
            Some(413),
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert!(closed.is_some(), "the connection is closed after the 413");
    }
    // At the limit: accepted.
    let r = client()
        .post(e.url("/small/ok"))
        .body(vec![b'k'; 1_000])
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let seen = ent.seen();
    assert!(
        seen.iter()
            .all(|s| s.path != "/small/x" && s.path != "/other"),
        "{seen:?}"
    );
    assert_eq!(ent.hits_on("/small/ok"), 1);
    assert!(e.metric("ecluse_request_bodies_total", &[("outcome", "too_large")]) >= 2.0);
}

/// A chunked body that crosses the limit while arriving: on a buffering route it is
/// answered 413 and the origin sees nothing; on a streaming route the exchange is cut, and
/// the origin never receives it as a complete body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_the_limit_never_reaches_the_origin_complete() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "",
        "  - { name: stream, match: { path_prefix: /stream/ }, origin: ent, max_body_size: 10KB, request_buffering: false }\n  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 10KB }",
    ));
    for path in ["/buffered/over", "/stream/over"] {
        let mut s = TcpStream::connect(e.proxy).await.expect("connect");
        s.write_all(upload_head(path, 0, Framing::Chunked).as_bytes())
            .await
            .expect("head");
        // 30 KB in 1 KB chunks; the connection may be cut before the end.
        for p in body(1, 30_000).chunks(1_000) {
            if send_piece(&mut s, p, Framing::Chunked).await.is_err() {
                break;
            }
        }
        let _ = end_body(&mut s, Framing::Chunked).await;
        let (raw, closed) = read_until_closed(&mut s, DEADLINE).await;
        assert!(closed.is_some(), "{path}: the exchange ends");
        if let Some(st) = status_of(&raw) {
            assert_eq!(st, 413, "{path}: {}", String::from_utf8_lossy(&raw));
        }
    }
    assert_eq!(
        ent.hits_on("/buffered/over"),
        0,
        "the buffered body never left ecluse"
    );
    // The streamed one may have started to reach the origin; it never arrives complete.
    eventually(
        "the origin is done with the cut request",
        DEADLINE,
        async || {
            ent.seen()
                .iter()
                .all(|s| s.path != "/stream/over" || !s.body_complete)
        },
    )
    .await;
    let complete = ent
        .seen()
        .iter()
        .filter(|s| s.path == "/stream/over" && s.body_complete)
        .count();
    assert_eq!(complete, 0, "{:?}", ent.seen());
    // Under the limit, both routes pass chunked bodies whole.
    for path in ["/buffered/ok", "/stream/ok"] {
        let mut s = TcpStream::connect(e.proxy).await.expect("connect");
        s.write_all(upload_head(path, 0, Framing::Chunked).as_bytes())
            .await
            .expect("head");
        let data = body(2, 9_000);
        for p in data.chunks(1_000) {
            send_piece(&mut s, p, Framing::Chunked)
                .await
                .expect("piece");
        }
        end_body(&mut s, Framing::Chunked).await.expect("end");
        let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
        assert_eq!(status_of(&raw), Some(200), "{path}");
        let seen: Vec<_> = ent.seen().into_iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].body_complete);
        assert_eq!(seen[0].body_sha256, sha(&data));
    }
}

/// A streaming route (`request_buffering: false`) passes bodies as before, either framing,
/// larger than anything buffered in memory; and a body without a length, larger than
/// pingora can hold back, is refused `411` on a buffering route before reaching the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_route_still_streams_and_an_unframed_big_body_needs_a_length_elsewhere() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "",
        "  - { name: stream, match: { path_prefix: /stream/ }, origin: ent, max_body_size: 10MB, request_buffering: false }\n  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 10MB }",
    ));
    let data = body(3, 300_000);
    for (path, framing) in [
        ("/stream/len", Framing::Length),
        ("/stream/chunked", Framing::Chunked),
    ] {
        let mut s = TcpStream::connect(e.proxy).await.expect("connect");
        s.write_all(upload_head(path, data.len(), framing).as_bytes())
            .await
            .expect("head");
        for p in data.chunks(16_000) {
            send_piece(&mut s, p, framing).await.expect("piece");
        }
        end_body(&mut s, framing).await.expect("end");
        let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
        assert_eq!(status_of(&raw), Some(200), "{path}");
        let seen: Vec<_> = ent.seen().into_iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body_sha256, sha(&data), "{path} intact");
    }
    assert!(e.metric("ecluse_request_bodies_total", &[("outcome", "streamed")]) >= 2.0);

    // Chunked, 300 KB, on a buffering route: 411, nothing forwarded.
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    s.write_all(upload_head("/buffered/chunked", 0, Framing::Chunked).as_bytes())
        .await
        .expect("head");
    for p in data.chunks(16_000) {
        if send_piece(&mut s, p, Framing::Chunked).await.is_err() {
            break;
        }
    }
    let _ = end_body(&mut s, Framing::Chunked).await;
    let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(411),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(ent.hits_on("/buffered/chunked"), 0);
    // The same body with its length: buffered (to disk: over the 128 KiB memory buffer)
    // and forwarded whole.
    let r = client()
        .post(e.url("/buffered/len"))
        .body(data.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/buffered/len")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(&data));
    // The origin gets the buffered body with its length, never chunked.
    assert!(seen[0]
        .headers
        .iter()
        .any(|(k, v)| k == "content-length" && v == &data.len().to_string()));
}

/// The descriptors of process `pid` that point into `dir`.
fn open_in(pid: u32, dir: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let dir = dir.to_string_lossy().into_owned();
    fds.filter_map(|f| f.ok())
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with(&dir))
        .count()
}

/// An upload larger than the memory buffer goes to an unnamed file in the private
/// `temp_dir` while it arrives, reaches the origin intact once complete, and its file is
/// gone afterwards (no descriptor, nothing in the directory, the disk gauge back to 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_buffered_upload_spills_to_disk_arrives_intact_and_leaves_no_file() {
    let ent = LenientEnt::start().await;
    let spool = TempDir::new("bodies");
    let dir = spool.path().join("spool");
    let e = Ecluse::start(&yaml(
        ent.addr,
        &format!(
            "  request_bodies: {{ memory_buffer: 64KiB, temp_dir: \"{}\", max_disk: 64MiB }}",
            dir.display()
        ),
        "  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 50MB }",
    ));
    let pid = e.child.id();
    let data = body(4, 3_000_000);
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    s.write_all(upload_head("/up/big", data.len(), Framing::Length).as_bytes())
        .await
        .expect("head");
    let (first, rest) = data.split_at(1_000_000);
    s.write_all(first).await.expect("first part");
    // Mid-upload: the body is in a file under the spool directory, which has no name.
    eventually("the body spills to a file", DEADLINE, async || {
        open_in(pid, &dir) == 1
    })
    .await;
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "no named file"
    );
    assert!(e.metric("ecluse_request_body_disk_bytes", &[]) >= 3_000_000.0);
    assert_eq!(
        ent.hits_on("/up/big"),
        0,
        "nothing forwarded before the body is whole"
    );
    s.write_all(rest).await.expect("rest");
    let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(300)])
    );
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/up/big")
        .collect();
    assert_eq!(seen.len(), 1, "once");
    assert_eq!(seen[0].body_len, data.len());
    assert_eq!(seen[0].body_sha256, sha(&data), "intact");
    eventually("the file is gone", DEADLINE, async || {
        open_in(pid, &dir) == 0 && e.metric("ecluse_request_body_disk_bytes", &[]) == 0.0
    })
    .await;
    assert!(e.metric("ecluse_request_bodies_total", &[("outcome", "disk")]) >= 1.0);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir)
        .expect("spool dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the spool directory is private");
    // A client that gives up mid-upload leaves no file either.
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    s.write_all(upload_head("/up/abandoned", data.len(), Framing::Length).as_bytes())
        .await
        .expect("head");
    s.write_all(first).await.expect("first part");
    eventually("the body spills to a file", DEADLINE, async || {
        open_in(pid, &dir) == 1
    })
    .await;
    drop(s);
    eventually("the abandoned file is gone", DEADLINE, async || {
        open_in(pid, &dir) == 0 && e.metric("ecluse_request_body_disk_bytes", &[]) == 0.0
    })
    .await;
    assert_eq!(ent.hits_on("/up/abandoned"), 0);
}

/// A body over HTTP/2 (prior knowledge) is buffered and forwarded whole too, in memory and
/// past the memory buffer; `Expect: 100-continue` over HTTP/1.1 gets its `100` from ecluse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_and_expect_continue_are_buffered_whole() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "",
        "  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 10MB }",
    ));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    for (i, n) in [(0u8, 5_000usize), (1, 700_000)] {
        let data = body(10 + i, n);
        let path = format!("/h2/{i}");
        let r = c
            .post(e.url(&path))
            .body(data.clone())
            .send()
            .await
            .expect("h2 upload");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200, "{path}");
        let seen: Vec<_> = ent.seen().into_iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1, "{path} once");
        assert_eq!(seen[0].body_sha256, sha(&data), "{path} intact");
    }
    // Expect: 100-continue: the body is sent only after ecluse's 100.
    let data = body(20, 200_000);
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    let head = upload_head("/expect", data.len(), Framing::Length).replace(
        "Connection: close\r\n",
        "Connection: close\r\nExpect: 100-continue\r\n",
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut got = Vec::new();
    let started = Instant::now();
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        assert!(started.elapsed() < DEADLINE, "no 100 Continue");
        let mut buf = [0u8; 256];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
            .await
            .expect("read");
        assert!(n > 0, "closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(&data).await.expect("body");
    let (raw, _) = read_until_closed(&mut s, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/expect")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(&data));
    assert!(
        seen[0].headers.iter().all(|(k, _)| k != "expect"),
        "Expect is ecluse's to answer"
    );
}
