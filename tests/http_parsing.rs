//! HTTP/1 request parsing at the edge, end to end: raw bytes on a real TCP socket to the
//! real binary, a real origin behind a relay that records every byte ecluse forwards.
//!
//! A framing or syntax error must be answered by ecluse itself (400, or 414/431/501 where
//! that is the precise answer), the connection must close afterwards (anything the client
//! sent after the bad head is unframed and must never be read as a request), and nothing
//! may reach the origin: no hit, and not one byte through the relay.
//!
//! Several cases pass only because of `proxy::hygiene::check_request` (and HTTP/1.1
//! pipelining) in `request_filter`: pingora 0.9.1 alone forwards them (table at the top of
//! `src/proxy/hygiene.rs`).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml(origin: SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent }}
"#
    )
}

/// A TCP relay in front of the origin that keeps every byte ecluse sends toward it. The
/// origin's hit counter only sees requests the origin accepts (hyper answers a request it
/// finds malformed, or with over 100 fields, with its own 400/431 and counts nothing); the
/// relay proves that *nothing at all* left ecluse.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn start(to: SocketAddr) -> Tap {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = l.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut dr, mut dw) = down.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let to_origin = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match dr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    sink.lock().expect("lock").extend_from_slice(&buf[..n]);
                                    if uw.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = uw.shutdown().await;
                    };
                    let from_origin = async move {
                        let _ = tokio::io::copy(&mut ur, &mut dw).await;
                        let _ = dw.shutdown().await;
                    };
                    tokio::join!(to_origin, from_origin);
                });
            }
        });
        Tap { addr, seen }
    }

    /// Everything ecluse sent toward the origin so far.
    fn seen(&self) -> Vec<u8> {
        self.seen.lock().expect("lock").clone()
    }
}

/// An origin, the relay in front of it, and ecluse routing everything through the relay.
async fn setup() -> (EchoOrigin, Tap, Ecluse) {
    let origin = EchoOrigin::start("ent").await;
    let tap = Tap::start(origin.addr).await;
    let e = Ecluse::start(&yaml(tap.addr));
    (origin, tap, e)
}

fn cut(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    match t.char_indices().nth(600) {
        Some((i, _)) => format!("{}… ({} bytes)", &t[..i], b.len()),
        None => t.into_owned(),
    }
}

/// How long a silent connection is given before we call it "still open".
const IDLE: Duration = Duration::from_secs(3);

/// What came back on one connection.
#[derive(Debug)]
struct Reply {
    raw: Vec<u8>,
    /// The server closed the connection (EOF or reset) within `IDLE` of its last byte.
    closed: bool,
}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Reply {
    /// The responses, in order (Content-Length and chunked bodies; anything else is taken
    /// to run to the end of the bytes).
    fn responses(&self) -> Vec<Resp> {
        let mut out = Vec::new();
        let mut rest = &self.raw[..];
        while !rest.is_empty() {
            let Some(end) = find(rest, b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            rest = &rest[end + 4..];
            let mut r = Resp {
                status,
                head,
                body: Vec::new(),
            };
            let informational = (100..200).contains(&status) && status != 101;
            if let Some(n) = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                let n = n.min(rest.len());
                r.body = rest[..n].to_vec();
                rest = &rest[n..];
            } else if r
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                loop {
                    let Some(eol) = find(rest, b"\r\n") else {
                        rest = &[];
                        break;
                    };
                    let size = std::str::from_utf8(&rest[..eol])
                        .ok()
                        .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                        .unwrap_or(0);
                    rest = &rest[eol + 2..];
                    if size == 0 {
                        // Skip (empty) trailers.
                        let t = find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
                        rest = &rest[t..];
                        break;
                    }
                    let n = size.min(rest.len());
                    r.body.extend_from_slice(&rest[..n]);
                    rest = &rest[(n + 2).min(rest.len())..];
                }
            } else if !informational && status != 304 && status != 204 {
                r.body = rest.to_vec();
                rest = &[];
            }
            out.push(r);
        }
        out
    }

    fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|r| r.status).collect()
    }

    /// The bytes as text, cut to a readable length for assertion messages.
    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.raw);
        match t.char_indices().nth(1500) {
            Some((i, _)) => format!("{}… ({} bytes)", &t[..i], self.raw.len()),
            None => t.into_owned(),
        }
    }
}

/// Read until EOF/reset, or until nothing arrives for `IDLE`.
fn read_all(s: &mut std::net::TcpStream, raw: &mut Vec<u8>) -> bool {
    s.set_read_timeout(Some(IDLE)).expect("timeout");
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset (the server closed with bytes of ours unread): closed.
            Err(_) => return true,
        }
    }
}

/// Send `req` in one write, read everything the server sends until it closes (or stays
/// silent for `IDLE`). A write error (the server closed early on an oversized head) is
/// not a failure: what matters is what came back and that the connection ended.
fn exchange_blocking(addr: SocketAddr, req: &[u8]) -> Reply {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("conn");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(req);
    let mut raw = Vec::new();
    let closed = read_all(&mut s, &mut raw);
    Reply { raw, closed }
}

async fn exchange(addr: SocketAddr, req: Vec<u8>) -> Reply {
    tokio::task::spawn_blocking(move || exchange_blocking(addr, &req))
        .await
        .expect("join")
}

/// The request is refused with one of `allowed`, nothing else is answered, the connection
/// is closed, and the origin never saw a request.
async fn assert_rejected(case: &str, req: Vec<u8>, allowed: &[u16]) {
    let (origin, tap, e) = setup().await;
    let reply = exchange(e.proxy, req).await;
    let statuses = reply.statuses();
    assert!(
        statuses.len() == 1 && allowed.contains(&statuses[0]),
        "{case}: expected exactly one response in {allowed:?}, got {statuses:?}:\n{}",
        reply.text()
    );
    assert!(
        reply.closed,
        "{case}: the connection must close after a rejected request; got:\n{}",
        reply.text()
    );
    assert!(
        tap.seen().is_empty() && origin.hits() == 0,
        "{case}: a rejected request was forwarded ({} hits); the origin received:\n{}\nthe client got:\n{}",
        origin.hits(),
        cut(&tap.seen()),
        reply.text()
    );
    // Nothing more can be said on that connection: ecluse is still alive and well.
    let (status, _) = tokio::task::spawn_blocking({
        let addr = e.proxy;
        move || raw_get(addr, "/after")
    })
    .await
    .expect("join")
    .expect("ecluse still answers");
    assert_eq!(
        status, 200,
        "{case}: ecluse stopped answering normal requests"
    );
}

/// A smuggling tail: if a framing bug makes this look like a second request, it reaches
/// the origin and the hit counter shows it.
const TAIL: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

fn req(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

// --- Content-Length / Transfer-Encoding framing -----------------------------------------

/// RFC 9112 §6.1: a request with both is a smuggling attempt or broken; pingora drops the
/// Content-Length and forwards the chunked body, ecluse must refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    let r = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{TAIL}"
    );
    assert_rejected("CL+TE", req(&r), &[400]).await;
    let r = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{TAIL}"
    );
    assert_rejected("TE+CL", req(&r), &[400]).await;
}

/// CL+TE with a smuggled request as the body's tail: whatever is answered (the 400 is
/// asserted above), the tail never reaches the origin as a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_never_smuggles_the_tail() {
    let (origin, tap, e) = setup().await;
    let r = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{TAIL}"
    );
    let reply = exchange(e.proxy, req(&r)).await;
    let resps = reply.responses();
    assert!(resps.len() <= 1, "{}", reply.text());
    assert!(reply.closed, "{}", reply.text());
    assert!(origin.hits() <= 1);
    assert!(
        find(&tap.seen(), b"/smuggled").is_none(),
        "smuggled: {}",
        cut(&tap.seen())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_content_lengths_are_400() {
    let r = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 39\r\n\r\n{TAIL}"
    );
    assert_rejected("CL 0 / CL 39", req(&r), &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_content_length_is_400() {
    for cl in ["1,2", "+5", "-1", "abc", "0x5", "5 5", ""] {
        let r = format!("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\nhello{TAIL}");
        assert_rejected(&format!("Content-Length: {cl:?}"), req(&r), &[400]).await;
    }
}

/// RFC 9110 §8.6 lets a recipient either reject `5, 5` (or two identical lines) or
/// collapse them; pingora collapses for its own framing but forwards the list as sent, and
/// an origin that reads the first/last/sum differently is a desync. An edge refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_identical_content_length_is_400() {
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello";
    assert_rejected("Content-Length: 5, 5", req(r), &[400]).await;
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
    assert_rejected("two Content-Length: 5", req(r), &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_without_final_chunked_is_400() {
    for te in ["gzip", "chunked, gzip", "identity", "chunked,", "xchunked"] {
        let r = format!("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
        assert_rejected(&format!("Transfer-Encoding: {te}"), req(&r), &[400]).await;
    }
    // The final coding is on the last line.
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n";
    assert_rejected("TE chunked then TE gzip", req(r), &[400]).await;
}

/// `gzip, chunked` is well framed (chunked is final, RFC 9112 §6.1), but ecluse does not
/// implement the gzip transfer coding and would hand the origin a body in a coding almost no
/// application server decodes. RFC 9112 §6.1: "A server that receives a request message
/// with a transfer coding it does not understand SHOULD respond with 501 (Not
/// Implemented)". Same for `chunked, chunked` (chunked applied twice is forbidden → 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_plain_chunked_is_refused() {
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_rejected("Transfer-Encoding: gzip, chunked", req(r), &[501]).await;
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_rejected("TE gzip then TE chunked", req(r), &[501]).await;
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n";
    assert_rejected("Transfer-Encoding: chunked, chunked", req(r), &[400]).await;
}

/// Plain `chunked` (any case) is of course fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_chunked_is_forwarded() {
    let (origin, _tap, e) = setup().await;
    let r = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let reply = exchange(e.proxy, req(r)).await;
    let resps = reply.responses();
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text());
    assert_eq!(resps[0].json()["body_len"], 5);
    assert_eq!(origin.hits(), 1);
}

/// RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request is faulty framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_on_http10_is_400() {
    let r =
        format!("POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{TAIL}");
    assert_rejected("HTTP/1.0 + TE", req(&r), &[400]).await;
}

// --- Header syntax -------------------------------------------------------------------

/// RFC 9112 §5.2: obs-fold in a request → 400 (httparse refuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_is_400() {
    let r = "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n";
    assert_rejected("obs-fold (space)", req(r), &[400]).await;
    let r = "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n";
    assert_rejected("obs-fold (tab)", req(r), &[400]).await;
    // Whitespace before the first field line (RFC 9112 §2.2).
    let r = "GET /a HTTP/1.1\r\n Host: x\r\n\r\n";
    assert_rejected("space before first field", req(r), &[400]).await;
}

/// RFC 9112 §2.2 lets a recipient accept a bare LF as a line ending; httparse does, and
/// pingora re-serialises the head with CRLF, so nothing reaches the origin raw. But a
/// front-end that reads lines differently from the next hop is how desyncs start: the
/// issue asks for a 400 and ecluse answers one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_line_endings_are_400() {
    let r = "GET /a HTTP/1.1\nHost: x\n\n";
    assert_rejected("bare LF everywhere", req(r), &[400]).await;
    let r = "GET /a HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n";
    assert_rejected("one bare LF", req(r), &[400]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_cr_and_nul_in_a_header_value_are_400() {
    assert_rejected(
        "bare CR in value",
        req("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
        &[400],
    )
    .await;
    assert_rejected(
        "bare CR ending a line",
        req("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n"),
        &[400],
    )
    .await;
    assert_rejected(
        "NUL in value",
        req("GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
        &[400],
    )
    .await;
    assert_rejected(
        "NUL in name",
        req("GET /a HTTP/1.1\r\nHost: x\r\nX-\0A: b\r\n\r\n"),
        &[400],
    )
    .await;
}

/// RFC 9112 §5.1: no whitespace between field name and colon → 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_before_colon_is_400() {
    assert_rejected(
        "Host : x",
        req("GET /a HTTP/1.1\r\nHost : x\r\n\r\n"),
        &[400],
    )
    .await;
    assert_rejected(
        "Transfer-Encoding\\t: chunked",
        req("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding\t: chunked\r\n\r\nhello"),
        &[400],
    )
    .await;
}

/// RFC 9112 §3.2: more than one Host → 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_400() {
    assert_rejected(
        "two Host",
        req("GET /a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"),
        &[400],
    )
    .await;
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host → 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_without_host_is_400() {
    // (Padded past 24 bytes: see `a_head_shorter_than_the_h2c_preface_is_answered`.)
    assert_rejected(
        "no Host",
        req("GET /a HTTP/1.1\r\nX-Pad: padding\r\n\r\n"),
        &[400],
    )
    .await;
}

/// With `h2c` on (src/server.rs), pingora sniffs for the 24-byte HTTP/2 preface with a
/// `read_exact` that has no timeout (pingora-core `apps/mod.rs`): alone, it never answers
/// a complete HTTP/1.0 head shorter than 24 bytes. `proxy::conn_guard` stops the sniff at the
/// first byte that differs from the preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_shorter_than_the_h2c_preface_is_answered() {
    let (origin, _tap, e) = setup().await;
    let reply = exchange(e.proxy, req("GET / HTTP/1.0\r\n\r\n")).await;
    assert_eq!(reply.statuses(), vec![200], "{}", reply.text());
    assert!(reply.closed);
    assert_eq!(origin.hits(), 1);
}

/// Control bytes and spaces in the request-target: pingora percent-encodes them before
/// anything sees the request (RFC 9112 §3.2 allows a 400 or a redirect). Guard: they
/// never reach the origin raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_in_the_target_never_reach_the_origin_raw() {
    let (origin, _tap, e) = setup().await;
    let reply = exchange(
        e.proxy,
        req("GET /a\0b c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let resps = reply.responses();
    assert_eq!(resps.len(), 1, "{}", reply.text());
    if resps[0].status == 200 {
        assert_eq!(resps[0].json()["path"], "/a%00b%20c");
        assert_eq!(origin.hits(), 1);
    } else {
        assert_eq!(resps[0].status, 400, "{}", reply.text());
        assert_eq!(origin.hits(), 0);
    }
}

// --- HTTP/1.0 body without length ----------------------------------------------------

/// RFC 9112 §6.3: a request with neither Content-Length nor Transfer-Encoding has no body,
/// so what follows the head is the next request. Floor: the bytes after the head never
/// reach the origin as a request of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_post_without_length_never_smuggles_the_tail() {
    let (origin, tap, e) = setup().await;
    for conn in ["", "Connection: keep-alive\r\n"] {
        let before = origin.hits();
        let r = format!("POST /a HTTP/1.0\r\nHost: x\r\n{conn}\r\n{TAIL}");
        let reply = exchange(e.proxy, req(&r)).await;
        let resps = reply.responses();
        assert!(resps.len() <= 1, "{conn:?}: {}", reply.text());
        assert!(reply.closed, "{conn:?}: {}", reply.text());
        assert!(origin.hits() - before <= 1, "{conn:?}");
        assert!(
            find(&tap.seen(), b"/smuggled").is_none(),
            "smuggled: {}",
            cut(&tap.seen())
        );
        if let Some(r) = resps.first().filter(|r| r.status == 200) {
            assert_eq!(r.json()["path"], "/a");
            assert_eq!(r.json()["body_len"], 0);
        }
    }
}

/// RFC 1945 §7.2.2 / §8.3: an HTTP/1.0 POST must carry a valid Content-Length, and a
/// server that cannot determine the length "should send a 400 (bad request)". ecluse
/// cannot tell "no body" from "unframed body", so it refuses the request (PUT and PATCH
/// alike) rather than guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_post_without_length_is_400() {
    let r = format!("POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n{TAIL}");
    assert_rejected("HTTP/1.0 POST, no length", req(&r), &[400]).await;
    let r = "PUT /a HTTP/1.0\r\nHost: x\r\n\r\nhello";
    assert_rejected("HTTP/1.0 PUT, no length", req(r), &[400]).await;
}

// --- Size limits ---------------------------------------------------------------------

/// A 64 KiB request-target: pingora cannot even build the URI (the `http` crate caps it at
/// 65 534 bytes) and answers 400 itself. 414 would be the precise status; 400 is correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_of_64k_is_refused() {
    let r = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(64 * 1024));
    assert_rejected("64 KiB path", req(&r), &[400, 414]).await;
}

/// A 16 KiB request-target fits pingora's limits and is forwarded; ecluse caps the
/// request line (8 KiB by default, like nginx/Apache) with 414 URI Too Long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_of_16k_is_414() {
    let r = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(16 * 1024));
    assert_rejected("16 KiB path", req(&r), &[414]).await;
}

/// 200 KiB of header fields (50 of 4 KiB) fits pingora's fixed 1 MiB / 256 fields and is
/// forwarded; ecluse caps the header section (64 KiB by default) with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_of_200k_is_431() {
    let mut r = String::from("GET /a HTTP/1.1\r\nHost: x\r\n");
    for i in 0..50 {
        r.push_str(&format!("X-Big-{i}: {}\r\n", "v".repeat(4096)));
    }
    r.push_str("\r\n");
    assert_rejected("200 KiB of header", req(&r), &[431]).await;
}

/// Beyond pingora's fixed 1 MiB header buffer, pingora answers 400 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_section_over_1m_is_refused() {
    let mut r = String::from("GET /a HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        r.push_str(&format!("X-Big-{i}: {}\r\n", "v".repeat(8 * 1024)));
    }
    r.push_str("\r\n");
    assert_rejected("1.6 MiB of header", req(&r), &[400, 431]).await;
}

/// 2000 fields: over httparse's fixed 256-slot array, pingora answers 400 itself (431
/// would be the precise status, pingora does not distinguish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_header_fields_are_refused() {
    let mut r = String::from("GET /a HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        r.push_str(&format!("X-{i}: v\r\n"));
    }
    r.push_str("\r\n");
    assert_rejected("2000 fields", req(&r), &[400, 431]).await;
}

/// 150 fields fit pingora's 256; ecluse caps the count (100 by default) with 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_fifty_header_fields_are_431() {
    let mut r = String::from("GET /a HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        r.push_str(&format!("X-{i}: v\r\n"));
    }
    r.push_str("\r\n");
    assert_rejected("150 fields", req(&r), &[431]).await;
}

// --- Pipelining and upgrades ---------------------------------------------------------

/// RFC 9112 §9.3.2: pipelined requests are answered, in order. pingora's default drops
/// everything after the first response and closes; `set_pipelining_enabled(true)` fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (origin, _tap, e) = setup().await;
    let r = "GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
             GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = exchange(e.proxy, req(r)).await;
    let resps = reply.responses();
    let paths: Vec<_> = resps
        .iter()
        .map(|r| {
            (
                r.status,
                r.json()["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        vec![
            (200, "/one".to_string()),
            (200, "/two".to_string()),
            (200, "/three".to_string())
        ],
        "{}",
        reply.text()
    );
    assert_eq!(resps[1].json()["body_len"], 5);
    assert!(reply.closed);
    assert_eq!(origin.hits(), 3);
}

/// Pipelined requests followed by a close: each is either answered in order or not at all
/// (the connection closes), never answered out of order or merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_never_out_of_order() {
    let (origin, _tap, e) = setup().await;
    let r = "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = exchange(e.proxy, req(r)).await;
    let resps = reply.responses();
    let paths: Vec<_> = resps
        .iter()
        .map(|r| r.json()["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        paths == ["/one"] || paths == ["/one", "/two"],
        "{paths:?}: {}",
        reply.text()
    );
    assert!(reply.closed);
    assert_eq!(origin.hits(), paths.len());
}

/// An upgrade request answered 200 (not 101) must not become a tunnel: what the client
/// sends next is parsed as HTTP by ecluse (it carries ecluse's X-Forwarded-For, which a
/// raw tunnel would not add) or the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_answered_200_is_not_a_tunnel() {
    let (origin, _tap, e) = setup().await;
    let addr = e.proxy;
    let (first, second, closed) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("conn");
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("write");
        // Read the first response (its body length is known).
        s.set_read_timeout(Some(IDLE)).expect("timeout");
        let mut raw = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        let mut buf = [0u8; 8192];
        let mut eof = false;
        while Instant::now() < deadline {
            let r = Reply {
                raw: raw.clone(),
                closed: false,
            };
            if let Some(resp) = r.responses().first() {
                let cl = resp.header("content-length").and_then(|v| v.parse().ok());
                if cl == Some(resp.body.len()) {
                    break;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    eof = true;
                    break;
                }
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let first = Reply { raw, closed: eof };
        // Then a plain request on the same connection.
        let _ = s.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut raw = Vec::new();
        let closed = read_all(&mut s, &mut raw);
        (first, Reply { raw, closed }, closed)
    })
    .await
    .expect("join");
    let r1 = first.responses();
    assert_eq!(first.statuses(), vec![200], "{}", first.text());
    assert_eq!(r1[0].json()["path"], "/ws");
    assert!(closed, "the connection must end: {}", second.text());
    let r2 = second.responses();
    match r2.as_slice() {
        [] => assert_eq!(origin.hits(), 1, "nothing may reach the origin raw"),
        [r] => {
            assert_eq!(r.status, 200, "{}", second.text());
            assert_eq!(r.json()["path"], "/after");
            assert!(
                r.json()["headers"]["x-forwarded-for"].is_string(),
                "/after reached the origin without passing through ecluse: {}",
                second.text()
            );
            assert_eq!(origin.hits(), 2);
        }
        _ => panic!("more than one answer to one request: {}", second.text()),
    }
}

/// An upgrade the origin accepts (`101`) does become a tunnel: after the 101, bytes go
/// both ways untouched (a WebSocket for the ENT's chat works through ecluse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_answered_101_is_a_tunnel_both_ways() {
    // An origin that accepts the upgrade, then echoes every byte back with a prefix.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                    .await;
                loop {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&b[..n]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let e = Ecluse::start(&yaml(origin));
    let addr = e.proxy;
    let (head, echoed) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("conn");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while find(&raw, b"\r\n\r\n").is_none() {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let end = find(&raw, b"\r\n\r\n").map(|i| i + 4).unwrap_or(raw.len());
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut rest = raw[end..].to_vec();
        // Two frames' worth of bytes, one after the other, that are not HTTP at all.
        let mut echoed = Vec::new();
        for msg in [&b"\x81\x05hello"[..], &b"\x00\xffraw bytes\r\n\r\n"[..]] {
            s.write_all(msg).expect("write through the tunnel");
            let mut want = b"echo:".to_vec();
            want.extend_from_slice(msg);
            while rest.len() < want.len() {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&buf[..n]),
                }
            }
            let n = want.len().min(rest.len());
            echoed.push(rest.drain(..n).collect::<Vec<u8>>() == want);
        }
        (head, echoed)
    })
    .await
    .expect("join");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        echoed,
        [true, true],
        "bytes cross the tunnel both ways unchanged"
    );
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "one upgrade request reached the origin");
    assert!(
        heads[0].to_ascii_lowercase().contains("upgrade: websocket"),
        "the upgrade was forwarded: {}",
        heads[0]
    );
}

/// Same, with the follow-up bytes sent before any answer (a client that assumes the
/// upgrade will succeed): they must not be tunnelled to the origin when it answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_refused_upgrade_are_not_tunnelled() {
    let (origin, _tap, e) = setup().await;
    let r = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
             GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = exchange(e.proxy, req(r)).await;
    let resps = reply.responses();
    assert!(reply.closed, "{}", reply.text());
    assert!(!resps.is_empty(), "{}", reply.text());
    assert_eq!(resps[0].status, 200, "{}", reply.text());
    assert_eq!(resps[0].json()["path"], "/ws");
    for r in &resps[1..] {
        assert_eq!(r.json()["path"], "/after", "{}", reply.text());
        assert!(
            r.json()["headers"]["x-forwarded-for"].is_string(),
            "tunnelled raw: {}",
            reply.text()
        );
    }
    assert!(resps.len() <= 2, "{}", reply.text());
    assert_eq!(origin.hits(), resps.len());
}

// --- Limits set by ops ------------------------------------------------------------------

/// `server.clients` sets the limits: under `max_request_line: 1KiB`, `max_headers: 10` and
/// `max_header_bytes: 2KiB`, a 2 KiB target is 414, 11 fields or 3 KiB of fields are 431,
/// and requests just under each limit are forwarded. A reload applies new limits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_set_in_the_policy_apply_and_reload() {
    let origin = EchoOrigin::start("ent").await;
    let tight = yaml(origin.addr).replace(
        "server: { threads: 1, grace_period: 0s, shutdown_timeout: 2s }",
        "server: { threads: 1, grace_period: 0s, shutdown_timeout: 2s, clients: { max_request_line: 1KiB, max_headers: 10, max_header_bytes: 2KiB } }",
    );
    assert_ne!(tight, yaml(origin.addr));
    let e = Ecluse::start(&tight);
    let fields = |n: usize, len: usize| -> String {
        (0..n)
            .map(|i| format!("X-F{i}: {}\r\n", "v".repeat(len)))
            .collect()
    };
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "2 KiB target",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(2048)),
            414,
        ),
        (
            "900 B target",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(900)),
            200,
        ),
        // Host + 10 more fields = 11.
        (
            "11 fields",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(10, 4)),
            431,
        ),
        (
            "10 fields",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(9, 4)),
            200,
        ),
        (
            "3 KiB of fields",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(3, 1024)),
            431,
        ),
        (
            "1.5 KiB of fields",
            format!("GET /a HTTP/1.1\r\nHost: x\r\n{}\r\n", fields(3, 500)),
            200,
        ),
    ];
    for (case, r, want) in &cases {
        let reply = exchange(e.proxy, req(r)).await;
        assert_eq!(reply.statuses(), vec![*want], "{case}: {}", reply.text());
    }
    assert_eq!(origin.hits(), 3);
    // Back to the defaults by reload: the 2 KiB target passes.
    e.write_config(&yaml(origin.addr));
    eventually("the reload applied", Duration::from_secs(10), async || {
        let reply = exchange(e.proxy, req(&cases[0].1)).await;
        reply.statuses() == vec![200]
    })
    .await;
}
