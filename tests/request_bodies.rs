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
    // What arrived is claimed on disk, not the announced 3 000 000 bytes.
    eventually("the bytes sent are claimed", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[]) == 1_000_000.0
    })
    .await;
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

/// A connection to the proxy from the loopback address `127.0.0.<host>` (every
/// `127.0.0.0/8` address is local on Linux): one client address per `host`.
async fn connect_from(proxy: SocketAddr, host: u8) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .expect("bind a loopback address");
    sock.connect(proxy).await.expect("connect")
}

/// Upload `data` whole to `path` from `127.0.0.<host>`; the raw response.
async fn upload_from(proxy: SocketAddr, host: u8, path: &str, data: &[u8]) -> Vec<u8> {
    let mut s = connect_from(proxy, host).await;
    s.write_all(upload_head(path, data.len(), Framing::Length).as_bytes())
        .await
        .expect("head");
    s.write_all(data).await.expect("body");
    read_until_closed(&mut s, DEADLINE).await.0
}

/// Many connections from several addresses announce the largest body the route accepts
/// (their `Content-Length` alone is more than the whole disk budget) and send a few bytes:
/// they hold what they sent, not what they announced, and an honest pupil's upload, larger
/// than the memory buffer, is received and forwarded while they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_lengths_hold_nothing_and_an_honest_upload_still_fits() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "  request_bodies: { memory_buffer: 16KiB, max_disk: 2MiB }",
        "  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 1MiB }",
    ));
    let mut held = Vec::new();
    for host in 10..14u8 {
        for k in 0..3 {
            let mut s = connect_from(e.proxy, host).await;
            s.write_all(
                upload_head(&format!("/hold/{host}/{k}"), 1 << 20, Framing::Length).as_bytes(),
            )
            .await
            .expect("head");
            s.write_all(&body(host, 1_000)).await.expect("a little");
            held.push(s);
        }
    }
    eventually("the 12 bodies are being received", DEADLINE, async || {
        e.metric("ecluse_inflight_requests", &[]) >= 12.0
            || e.metric("ecluse_request_bodies_total", &[("outcome", "no_space")]) >= 1.0
    })
    .await;
    let data = body(7, 600_000);
    let raw = upload_from(e.proxy, 2, "/homework", &data).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/homework")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(&data), "intact");
    // The held bodies were never refused: they are still waiting for their bytes.
    assert_eq!(
        e.metric("ecluse_request_bodies_total", &[("outcome", "no_space")]),
        0.0
    );
    assert!(e.metric("ecluse_inflight_requests", &[]) >= 12.0);
    assert!(e.metric("ecluse_request_body_disk_bytes", &[]) <= 12_000.0);
    drop(held);
    eventually("the held bodies are given back", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[]) == 0.0
            && e.metric("ecluse_request_body_memory_bytes", &[]) == 0.0
    })
    .await;
}

/// One client address over `max_per_client` (its bodies in memory and on disk together)
/// gets a 503 with `Retry-After` for the body that crosses it, while another address's
/// upload is served at the same moment; the first client's own body in progress is not
/// harmed, and its share comes back when it ends. A client that stops sending is cut by
/// the body timeouts while it is buffered, and holds nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_its_share_is_refused_and_another_is_served() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        "  request_bodies: { memory_buffer: 64KiB, max_per_client: 200000 }\n  clients: { body_min_rate: 500, body_grace: 2s }",
        "  - { name: ent, match: { path_prefix: / }, origin: ent, max_body_size: 200000 }",
    ));
    // Every series is there from the start, at 0.
    let (_, text) = raw_get(e.admin, "/metrics").expect("metrics");
    for line in [
        "ecluse_request_bodies_total{outcome=\"client_cap\"} 0",
        "ecluse_request_bodies_total{outcome=\"no_space\"} 0",
        "ecluse_request_body_memory_bytes 0",
        "ecluse_request_body_disk_bytes 0",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
    // Client .3 holds 150 000 bytes of a 180 000-byte upload.
    let first = body(3, 180_000);
    let mut s1 = connect_from(e.proxy, 3).await;
    s1.write_all(upload_head("/a/1", first.len(), Framing::Length).as_bytes())
        .await
        .expect("head");
    s1.write_all(&first[..150_000]).await.expect("part");
    eventually("the 150 000 bytes are held", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[])
            + e.metric("ecluse_request_body_memory_bytes", &[])
            >= 150_000.0
    })
    .await;
    // Its second upload crosses its share at its last byte sent: 503, Retry-After.
    let mut s2 = connect_from(e.proxy, 3).await;
    s2.write_all(upload_head("/a/2", 100_000, Framing::Length).as_bytes())
        .await
        .expect("head");
    s2.write_all(&body(4, 50_001)).await.expect("part");
    let (raw, _) = read_until_closed(&mut s2, DEADLINE).await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert_eq!(status_of(&raw), Some(503), "{text}");
    assert!(text.contains("retry-after: "), "{text}");
    assert_eq!(
        e.metric("ecluse_request_bodies_total", &[("outcome", "client_cap")]),
        1.0
    );
    // Another address, at the same moment: served.
    let other = body(5, 150_000);
    let raw = upload_from(e.proxy, 4, "/b/1", &other).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    // The first client's upload in progress ends well.
    s1.write_all(&first[150_000..]).await.expect("rest");
    let (raw, _) = read_until_closed(&mut s1, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    for (path, data) in [("/a/1", &first), ("/b/1", &other)] {
        let seen: Vec<_> = ent.seen().into_iter().filter(|s| s.path == path).collect();
        assert_eq!(seen.len(), 1, "{path}");
        assert_eq!(seen[0].body_sha256, sha(data), "{path} intact");
    }
    assert_eq!(ent.hits_on("/a/2"), 0, "the refused body never left ecluse");
    // Its share is back: the same upload is now received.
    let again = body(6, 100_000);
    let raw = upload_from(e.proxy, 3, "/a/3", &again).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    // A client that sends a head and a few bytes, then nothing, is cut once its grace is
    // over, and what it held is given back.
    let cut_before = e.metric("ecluse_client_timeouts_total", &[("phase", "body")]);
    let mut s3 = connect_from(e.proxy, 5).await;
    s3.write_all(upload_head("/silent", 100_000, Framing::Length).as_bytes())
        .await
        .expect("head");
    s3.write_all(b"0123456789").await.expect("a few bytes");
    let (_, closed) = read_until_closed(&mut s3, DEADLINE).await;
    assert!(closed.is_some(), "a silent body is cut by body_min_rate");
    assert!(e.metric("ecluse_client_timeouts_total", &[("phase", "body")]) > cut_before);
    eventually("nothing is held", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[]) == 0.0
            && e.metric("ecluse_request_body_memory_bytes", &[]) == 0.0
    })
    .await;
    assert_eq!(ent.hits_on("/silent"), 0);
}

/// When the memory every body shares (`max_memory`) is in use, the next body goes to disk
/// from its first byte instead of being refused, and arrives intact; memory held never
/// exceeds the budget, and both gauges show where the bytes are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_budget_spills_bodies_to_disk() {
    let ent = LenientEnt::start().await;
    let spool = TempDir::new("bodies-mem");
    let e = Ecluse::start(&yaml(
        ent.addr,
        &format!(
            "  request_bodies: {{ memory_buffer: 256KiB, max_memory: 64KiB, temp_dir: \"{}\" }}",
            spool.path().join("spool").display()
        ),
        "  - { name: ent, match: { path_prefix: / }, origin: ent }",
    ));
    // A body kept in memory takes (nearly) the whole budget: 60 000 bytes of 64 KiB.
    let first = body(8, 64_000);
    let mut s1 = connect_from(e.proxy, 1).await;
    s1.write_all(upload_head("/m/1", first.len(), Framing::Length).as_bytes())
        .await
        .expect("head");
    s1.write_all(&first[..60_000]).await.expect("part");
    eventually("the first body is in memory", DEADLINE, async || {
        e.metric("ecluse_request_body_memory_bytes", &[]) >= 60_000.0
    })
    .await;
    assert!(e.metric("ecluse_request_body_memory_bytes", &[]) <= 65_536.0);
    assert_eq!(e.metric("ecluse_request_body_disk_bytes", &[]), 0.0);
    // The next one, small enough for memory, finds none: on disk, forwarded whole.
    let second = body(9, 20_000);
    let mut s2 = connect_from(e.proxy, 1).await;
    s2.write_all(upload_head("/m/2", 30_000, Framing::Length).as_bytes())
        .await
        .expect("head");
    s2.write_all(&second).await.expect("part");
    eventually("the second body is on disk", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[]) >= 20_000.0
    })
    .await;
    assert!(e.metric("ecluse_request_body_memory_bytes", &[]) <= 65_536.0);
    let rest = body(10, 10_000);
    s2.write_all(&rest).await.expect("rest");
    let (raw, _) = read_until_closed(&mut s2, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    let whole: Vec<u8> = [second, rest].concat();
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/m/2")
        .collect();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_sha256, sha(&whole), "intact");
    assert_eq!(
        e.metric("ecluse_request_bodies_total", &[("outcome", "disk")]),
        1.0
    );
    // The first one, still in memory, ends well too.
    s1.write_all(&first[60_000..]).await.expect("rest");
    let (raw, _) = read_until_closed(&mut s1, DEADLINE).await;
    assert_eq!(
        status_of(&raw),
        Some(200),
        "{}",
        String::from_utf8_lossy(&raw[..raw.len().min(400)])
    );
    assert_eq!(
        e.metric("ecluse_request_bodies_total", &[("outcome", "memory")]),
        1.0
    );
    let seen: Vec<_> = ent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/m/1")
        .collect();
    assert_eq!(seen[0].body_sha256, sha(&first), "intact");
    eventually("nothing is held", DEADLINE, async || {
        e.metric("ecluse_request_body_disk_bytes", &[]) == 0.0
            && e.metric("ecluse_request_body_memory_bytes", &[]) == 0.0
    })
    .await;
    assert_eq!(
        e.metric("ecluse_request_bodies_total", &[("outcome", "no_space")]),
        0.0
    );
}
