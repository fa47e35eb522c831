//! Slow and greedy clients, end to end against the real binary: a request head trickled
//! byte by byte (slowloris), a silent connection, a trickled upload, connection caps, the
//! keep-alive timeout. (Slowloris under load is `tests/slowloris.rs`, a binary of its own
//! so that its 400 connections do not starve the other tests.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `bytes` one at a time, `every` apart, until the server closes the connection or
/// everything is sent. Returns when the server closed it (None: never did).
async fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration) -> Option<Instant> {
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            return Some(Instant::now());
        }
        // A closed connection shows as EOF on read before the next write fails.
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(every, s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            _ => {}
        }
    }
    None
}

/// A head trickled one byte every 200 ms never completes within the 1 s head deadline:
/// the connection is closed at about 1 s (pingora alone would wait 60 s per byte), and the
/// origin sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_the_header_deadline() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(origin.addr, "header_timeout: 1s"));
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    let start = Instant::now();
    let head =
        b"GET /slow HTTP/1.1\r\nHost: ent\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let closed = trickle(&mut s, head, Duration::from_millis(200)).await;
    let closed = closed.expect("the connection stayed open for the whole trickled head");
    let after = closed - start;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "closed after {after:?}, expected about 1 s"
    );
    assert_eq!(origin.hits(), 0);
    eventually(
        "the header timeout counted",
        Duration::from_secs(5),
        async || e.metric("ecluse_client_timeouts_total", &[("phase", "header")]) >= 1.0,
    )
    .await;
}

/// A connection that sends nothing at all is closed at the head deadline (this includes
/// the HTTP/2 prior-knowledge sniff, which has no timeout of its own in pingora).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(origin.addr, "header_timeout: 1s"));
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    let start = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let after = closed.expect("a silent connection stayed open 5 s") - start;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
}

/// HTTP/2 with prior knowledge still works through the sniff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_still_works() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(origin.addr, "header_timeout: 2s"));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = c.get(e.url("/h2")).send().await.expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // The head deadline does not apply to a kept h2 connection: it serves again later.
    tokio::time::sleep(Duration::from_millis(2500)).await; // the scenario itself: idle > header_timeout
    let r = c.get(e.url("/h2-again")).send().await.expect("h2 request");
    assert_eq!(r.status(), 200);
}

/// Idle time between requests on a kept-alive connection is not counted in the next head's
/// deadline; past the keep-alive timeout the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_idle_is_not_head_time_and_ends_at_the_keepalive_timeout() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(
        origin.addr,
        "header_timeout: 1s, keepalive_timeout: 3s",
    ));
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    let req = b"GET /one HTTP/1.1\r\nHost: ent\r\nContent-Length: 0\r\n\r\n";
    s.write_all(req).await.expect("write");
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(status_of(&buf[..n]), Some(200));
    // Idle 1.5 s: longer than the head deadline, shorter than the keep-alive timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await; // the scenario itself: idle time
    s.write_all(req).await.expect("write");
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(
        status_of(&buf[..n]),
        Some(200),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_from = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    let after = closed.expect("an idle kept-alive connection stayed open 8 s") - idle_from;
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(6),
        "closed after {after:?}, expected about 3 s"
    );
    assert_eq!(origin.hits(), 2);
}

/// An upload trickled far below `body_min_rate` is cut after the grace period and never
/// answered 2xx; the same upload at full speed goes through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_is_cut_and_a_normal_one_passes() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(
        origin.addr,
        "header_timeout: 2s, body_min_rate: 2KiB, body_grace: 1s",
    ));
    let mut s = TcpStream::connect(e.proxy).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: ent\r\nContent-Length: 100000\r\n\r\n")
        .await
        .expect("write head");
    let start = Instant::now();
    // 50 bytes every 100 ms = 500 B/s, a quarter of the minimum rate.
    let mut closed = None;
    let mut raw = Vec::new();
    for _ in 0..100 {
        if s.write_all(&[b'x'; 50]).await.is_err() {
            closed = Some(Instant::now());
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = Some(Instant::now());
                break;
            }
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let after = closed.expect("a 500 B/s upload was never cut") - start;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "cut after {after:?}, expected a little over the 1 s grace"
    );
    assert!(
        status_of(&raw).is_none_or(|c| c >= 400),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    eventually(
        "the body timeout counted",
        Duration::from_secs(5),
        async || e.metric("ecluse_client_timeouts_total", &[("phase", "body")]) >= 1.0,
    )
    .await;

    let body = vec![b'y'; 1_000_000];
    let r = client()
        .post(e.url("/upload"))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["body_len"], 1_000_000);
}

/// One connection over `max_connections_per_ip` gets a bare 503 with `Retry-After` and is
/// closed; once one closes, the next is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_are_refused_then_accepted_again() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(
        origin.addr,
        "header_timeout: 30s, max_connections_per_ip: 3",
    ));
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = TcpStream::connect(e.proxy).await.expect("connect");
        held.push(s);
    }
    eventually("3 connections open", Duration::from_secs(15), async || {
        e.metric("ecluse_client_connections", &[]) >= 3.0
    })
    .await;
    let mut extra = TcpStream::connect(e.proxy).await.expect("connect");
    let (raw, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    assert_eq!(status_of(&raw), Some(503), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(closed.is_some(), "a refused connection must be closed");
    assert_eq!(
        e.metric(
            "ecluse_client_connections_refused_total",
            &[("reason", "max_connections_per_ip")]
        ),
        1.0
    );
    // The held connections are still usable.
    let s = &mut held[0];
    s.write_all(b"GET /held HTTP/1.1\r\nHost: ent\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.expect("read");
    assert_eq!(status_of(&buf[..n]), Some(200));
    // One closes: a new connection is accepted.
    held.pop();
    eventually("a slot is free again", Duration::from_secs(5), async || {
        let Ok(mut s) = TcpStream::connect(e.proxy).await else {
            return false;
        };
        if s.write_all(b"GET /again HTTP/1.1\r\nHost: ent\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let (raw, _) = read_until_closed(&mut s, Duration::from_secs(3)).await;
        status_of(&raw) == Some(200)
    })
    .await;
}

/// The overall cap counts every client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_overall_cap_are_refused() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(
        origin.addr,
        "header_timeout: 30s, max_connections: 5",
    ));
    // The readiness probe (/readyz connects to every listener) is gone from the count by
    // the time readiness says yes: it never takes a client's place.
    assert_eq!(e.metric("ecluse_client_connections", &[]), 0.0);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(e.proxy).await.expect("connect"));
    }
    eventually("5 connections open", Duration::from_secs(15), async || {
        e.metric("ecluse_client_connections", &[]) >= 5.0
    })
    .await;
    let mut extra = TcpStream::connect(e.proxy).await.expect("connect");
    let (raw, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert_eq!(
        status_of(&raw),
        Some(503),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(closed.is_some());
    assert_eq!(
        e.metric(
            "ecluse_client_connections_refused_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    drop(held);
    eventually(
        "the gauge is back to 0",
        Duration::from_secs(5),
        async || e.metric("ecluse_client_connections", &[]) == 0.0,
    )
    .await;
}

/// The TLS handshake is under the head deadline and the caps: a connection that never
/// says hello is closed at the deadline (not after pingora's 60 s), one over the cap is
/// closed before any handshake, and a real HTTPS client still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_are_under_the_head_deadline_and_the_caps() {
    let origin = EchoOrigin::start("ent").await;
    let cert = SelfSigned::localhost();
    let yaml = clients_yaml(origin.addr, "header_timeout: 1s, max_connections: 3").replace(
        "admin:",
        "tls: { listen: [\"127.0.0.1:0\"], cert_file: cert.pem, key_file: key.pem }\nadmin:",
    );
    let e = Ecluse::start_with(&yaml, &cert.files(), |_| {});
    let tls = e.tls.expect("tls address printed");
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(tls).await.expect("connect"));
    }
    eventually(
        "3 handshakes pending count",
        Duration::from_secs(15),
        async || e.metric("ecluse_client_connections", &[]) >= 3.0,
    )
    .await;
    let mut extra = TcpStream::connect(tls).await.expect("connect");
    let (raw, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(
        raw.is_empty(),
        "nothing readable before a handshake: {raw:?}"
    );
    assert!(closed.is_some(), "the connection over the cap is closed");
    assert_eq!(
        e.metric(
            "ecluse_client_connections_refused_total",
            &[("reason", "max_connections")]
        ),
        1.0
    );
    for s in &mut silent {
        let (_, closed) = read_until_closed(s, Duration::from_secs(10)).await;
        let at = closed.expect("a silent TLS connection is closed");
        assert!(
            at - opened < Duration::from_secs(5),
            "closed {:?} after opening, the head deadline is 1 s",
            at - opened
        );
    }
    eventually(
        "handshake time-outs counted, places given back",
        Duration::from_secs(5),
        async || {
            e.metric("ecluse_client_timeouts_total", &[("phase", "handshake")]) == 3.0
                && e.metric("ecluse_client_connections", &[]) == 0.0
        },
    )
    .await;
    let r = cert
        .client(tls)
        .get(format!("https://localhost:{}/after", tls.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
}
