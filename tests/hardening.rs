//! Hostile input and faults: waiting-room cookies of every bad kind, the admin surface on
//! every mutating endpoint, and origins that die mid-response or answer garbage.

mod common;

use std::net::SocketAddr;

use common::*;
use ecluse::policy::ticket::{Keyring, Ticket, TicketState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "k1:8f3a5e0c9b1d2f4a6c8e0b2d4f6a8c0e1f3b5d7a9c1e3f5b7d9a1c3e5f7b9d1a";
const OTHER_KEY: &str = "k1:0000000000000000000000000000000000000000000000000000000000000001";

fn room_yaml(origin: SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0", token_file: admin.token }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 60, secret_file: ticket.key, abandon_timeout: 1m, session_idle_timeout: 5m }}
degradation:
  levels: [{{ name: normal }}, {{ name: busy, disable: [visio] }}]
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: visio
    match: {{ path_prefix: /visio }}
    origin: ent
    feature: visio
  - name: files
    match: {{ path_prefix: /files/ }}
    origin: ent
    cache: {{ ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
    waiting_room: ent
"#
    )
}

const TOKEN: &str = "hardening-admin-token-0123456789abcdef";

fn start(origin: SocketAddr) -> Ecluse {
    Ecluse::start_with(
        &room_yaml(origin),
        &[
            ("admin.token", format!("{TOKEN}\n").as_bytes()),
            ("ticket.key", format!("{KEY}\n").as_bytes()),
        ],
        |_| {},
    )
}

fn ticket(number: u64, state: TicketState, issued: u64) -> Ticket {
    Ticket {
        room: "ent".into(),
        class: 0,
        state,
        number,
        issued,
        seen: issued,
        bucket: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_waiting_room_cookies_never_admit_and_never_panic() {
    let origin = EchoOrigin::start("ent").await;
    let e = start(origin.addr);
    let c = client();
    // The one place is taken.
    let first = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let r = first.get(e.url("/home")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("\"server\":\"ent\""));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ring = Keyring::parse(KEY).unwrap();
    let other = Keyring::parse(OTHER_KEY).unwrap();
    let good = ring.seal(&ticket(1, TicketState::Admitted, now));
    let mut cookies: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("garbage", "not-a-ticket".into()),
        ("oversized", "A".repeat(6000)),
        ("truncated", good[..good.len() / 2].to_string()),
        (
            "wrong key",
            other.seal(&ticket(1, TicketState::Admitted, now)),
        ),
        ("altered", {
            // One character of the signature changed.
            let mut b = good.clone().into_bytes();
            let last = b.len() - 1;
            b[last] = if b[last] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        }),
        (
            "expired",
            ring.seal(&ticket(1, TicketState::Admitted, now - 3 * 3600)),
        ),
        (
            "admitted number never issued",
            ring.seal(&ticket(999_999, TicketState::Admitted, now)),
        ),
        (
            "waiting far behind",
            ring.seal(&ticket(999_999, TicketState::Waiting, now)),
        ),
        (
            "waiting ticket past the abandon timeout",
            ring.seal(&ticket(1, TicketState::Waiting, now - 3600)),
        ),
        ("nul and controls", "a\u{1}b\u{7f}c".into()),
        ("utf8", "é€😀".repeat(50)),
    ];
    // Every cookie must fail to get a second session in. Those a client library refuses
    // to send (control bytes) go raw: refused as a malformed head (400) or
    // queued, never admitted.
    let (sendable, raw): (Vec<_>, Vec<_>) = cookies
        .drain(..)
        .partition(|(_, v)| http::HeaderValue::from_str(&format!("ecluse_ent={v}")).is_ok());
    assert!(
        raw.iter().any(|(what, _)| *what == "nul and controls"),
        "the control-byte cookie goes raw"
    );
    let addr = e.proxy;
    for (what, v) in raw {
        let (status, body) = tokio::task::spawn_blocking(move || {
            raw_request(
                addr,
                "GET",
                "/home",
                &[
                    ("Cookie", &format!("ecluse_ent={v}")),
                    ("Accept", "application/json"),
                ],
                b"",
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{what}: no answer: {err}"));
        assert!(status == 200 || status == 400, "{what}: {status}");
        assert!(
            !body.contains("\"server\":\"ent\""),
            "a {what} cookie was let in"
        );
    }
    for (what, v) in &sendable {
        let r = c
            .get(e.url("/home"))
            .header("cookie", format!("ecluse_ent={v}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("\"server\":\"ent\""),
            "a {what} cookie was let in: {body}"
        );
    }
    // Raw bytes a client library would refuse to send, and a mangled cookie list.
    let text = tokio::task::spawn_blocking(move || {
        raw_request(
            addr,
            "GET",
            "/home",
            &[("Cookie", "ecluse_ent=\u{ff}\u{fe}; ecluse_ent=;;;=;")],
            b"",
        )
    })
    .await
    .unwrap();
    let (status, body) = text.expect("an answer");
    assert!(status == 200 || status == 400, "{status}");
    assert!(!body.contains("\"server\":\"ent\""));
    // Still alive and serving.
    assert_eq!(
        c.get(e.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// A waiting ticket copied to other browsers (a link shared in a class chat, a replayed
/// request) gets one student in, once: the copies presented after the admission are
/// refused as `reused` and queued fresh, behind everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_waiting_ticket_gets_in_only_once() {
    let origin = EchoOrigin::start("ent").await;
    let e = start(origin.addr);
    let jar = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap()
    };
    let from_origin = |body: &str| body.contains("\"server\":\"ent\"");
    // The one place is taken; the second student waits.
    let first = jar();
    let r = first.get(e.url("/home")).send().await.unwrap();
    assert!(from_origin(&r.text().await.unwrap()));
    let c = client();
    let r = c
        .get(e.url("/home"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let waiting = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| {
            let v = v.to_str().ok()?;
            Some(
                v.strip_prefix("ecluse_ent=")?
                    .split(';')
                    .next()?
                    .to_string(),
            )
        })
        .expect("a waiting ticket");
    let status: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status["state"], "waiting", "{status}");

    // Ops open a second place: the ticket's owner gets in.
    let r = c
        .post(e.admin_url("/admin/rooms/ent"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "active_users": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut admitted = false;
    eventually(
        "the waiting ticket is admitted",
        std::time::Duration::from_secs(10),
        async || {
            let r = c
                .get(e.url("/home"))
                .header("cookie", format!("ecluse_ent={waiting}"))
                .send()
                .await
                .unwrap();
            admitted = from_origin(&r.text().await.unwrap());
            admitted
        },
    )
    .await;
    assert!(admitted);

    // Copies of that same waiting ticket, from other browsers, gain nothing.
    let reused = || {
        e.metric(
            "ecluse_room_rejected_tickets_total",
            &[("room", "ent"), ("reason", "reused")],
        )
    };
    let before = reused();
    for _ in 0..3 {
        let r = c
            .get(e.url("/home"))
            .header("cookie", format!("ecluse_ent={waiting}"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(
            !from_origin(&body),
            "a replayed waiting ticket got in: {body}"
        );
    }
    eventually(
        "the copies are counted as reused",
        std::time::Duration::from_secs(5),
        async || reused() >= before + 3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_admin_endpoint_needs_the_token_and_no_secret_leaks() {
    let origin = EchoOrigin::start("ent").await;
    let e = start(origin.addr);
    let c = client();
    let endpoints = [
        ("/admin/reload", ""),
        ("/admin/level", r#"{"level": "busy"}"#),
        ("/admin/features/visio", r#"{"on": false}"#),
        ("/admin/rooms/ent/pause", ""),
        ("/admin/rooms/ent/resume", ""),
        ("/admin/rooms/ent", r#"{"active_users": 10}"#),
        ("/admin/cache/purge", r#"{"prefix": "/"}"#),
        (
            "/admin/cache/warm",
            r#"{"host": "x", "urls": ["/files/a"]}"#,
        ),
        ("/admin/unknown", ""),
    ];
    for (path, body) in endpoints {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic Zm9vOmJhcg=="),
            Some("Bearer "),
        ] {
            let mut rb = c.post(e.admin_url(path)).body(body);
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {auth:?}");
            let text = r.text().await.unwrap();
            assert!(
                !text.contains(TOKEN) && !text.contains("8f3a5e0c"),
                "{text}"
            );
        }
        let r = c
            .post(e.admin_url(path))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401, "{path} with the token");
    }
    let state = c
        .get(e.admin_url("/admin/state"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!state.contains(TOKEN), "token in /admin/state");
    assert!(!state.contains("8f3a5e0c"), "ticket key in /admin/state");
    let logs = e.stderr_text() + &e.stdout.lock().unwrap().join("\n");
    assert!(
        !logs.contains(TOKEN) && !logs.contains("8f3a5e0c"),
        "secret in the logs"
    );
    // The admin listener is on loopback unless configured otherwise.
    assert!(e.admin.ip().is_loopback());
}

/// An origin that answers every request with `head` then `body`, then closes (after an
/// optional pause). Counts requests.
async fn raw_origin(
    head: &'static str,
    body: &'static [u8],
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"GET /healthz") {
                    return;
                }
                h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
                let _ = s.flush().await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_response_is_never_a_clean_200_and_never_cached() {
    // Promises 1000 bytes, sends 500, closes.
    let (addr, hits) = raw_origin(
        "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\ncache-control: max-age=600\r\n\r\n",
        &[b'x'; 500],
    )
    .await;
    let e = start(addr);
    for round in 0..2 {
        let res = tokio::task::spawn_blocking({
            let a = e.proxy;
            move || raw_get(a, "/files/exam.pdf")
        })
        .await
        .unwrap();
        if let Ok((status, body)) = res {
            assert!(
                !(status == 200 && body.len() == 1000),
                "round {round}: a clean 200"
            );
        }
        // With `Connection: close`, a client reading to the end must see fewer bytes
        // than promised (a reset or truncation), never a complete response.
        let c = client();
        let r = c.get(e.url("/files/exam.pdf")).send().await;
        if let Ok(r) = r {
            let b = r.bytes().await;
            assert!(
                b.is_err(),
                "round {round}: the body must fail, got {:?}",
                b.map(|b| b.len())
            );
        }
    }
    // Nothing was stored: every request went to the origin.
    assert!(hits.load(std::sync::atomic::Ordering::Relaxed) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_origin_is_a_502() {
    let (addr, _) = raw_origin("this is not HTTP\r\n\r\n", b"").await;
    let e = start(addr);
    let r = client().get(e.url("/files/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let (addr2, _) = raw_origin("HTTP/1.1 200 OK\r\nx-huge: \r\n", b"").await;
    let e2 = start(addr2);
    let r = client().get(e2.url("/files/y")).send().await.unwrap();
    assert_eq!(r.status(), 502, "a header section cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_origin_times_out_on_time_and_other_routes_stay_fast() {
    // Accepts, reads the request, never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            held.push(s);
        }
    });
    let fast = EchoOrigin::start("fast").await;
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  slow: {{ servers: ["{slow}"], read_timeout: 500ms, total_timeout: 1s, retries: 0, health_check: {{ disabled: true }} }}
  fast: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: slow, match: {{ path_prefix: /slow }}, origin: slow }}
  - {{ name: fast, match: {{ path_prefix: / }}, origin: fast }}
"#,
        fast.addr
    );
    let e = Ecluse::start(&yaml);
    let c = client();
    // Fifty requests hang on the slow origin meanwhile.
    let mut hung = Vec::new();
    for _ in 0..50 {
        let (c, url) = (c.clone(), e.url("/slow"));
        hung.push(tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), t0.elapsed())
        }));
    }
    let mut worst = std::time::Duration::ZERO;
    for _ in 0..50 {
        let t0 = std::time::Instant::now();
        let r = c.get(e.url("/page")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t0.elapsed());
    }
    assert!(
        worst < std::time::Duration::from_millis(300),
        "fast route slowed to {worst:?}"
    );
    for h in hung {
        let (status, took) = h.await.unwrap();
        assert_eq!(status, 504);
        assert!(
            took >= std::time::Duration::from_millis(450)
                && took < std::time::Duration::from_secs(3),
            "504 after {took:?}"
        );
    }
}

/// An origin that keeps its connections open and answers, per request, with what
/// `answer(n)` gives for the n-th request overall (0-based). Counts connections accepted.
async fn keepalive_origin(
    answer: fn(usize) -> Vec<u8>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    got.drain(..end);
                    let n = requests.fetch_add(1, Ordering::Relaxed);
                    if s.write_all(&answer(n)).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// Oversized or malformed response heads are a 502, and the connection they came on is
/// never reused for the next request (it is in an unknown state): the next request opens
/// a new connection and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_garbage_origin_heads_are_502_and_the_connection_is_not_reused() {
    fn oversized(n: usize) -> Vec<u8> {
        if n == 0 {
            // 2 MiB of header fields: over pingora's 1 MiB response head limit.
            let mut h = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
            for i in 0..512 {
                h.extend_from_slice(format!("X-Big-{i}: {}\r\n", "v".repeat(4096)).as_bytes());
            }
            h.extend_from_slice(b"\r\nok");
            h
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    }
    fn garbage(n: usize) -> Vec<u8> {
        if n == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header Line\r\n\r\nok".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    }
    for (what, answer) in [
        ("oversized", oversized as fn(usize) -> Vec<u8>),
        ("garbage", garbage),
    ] {
        let (addr, conns) = keepalive_origin(answer).await;
        let e = start(addr);
        let c = client();
        let r = c.get(e.url("/files/first")).send().await.unwrap();
        assert_eq!(r.status(), 502, "{what}");
        let r = c.get(e.url("/files/second")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(r.text().await.unwrap(), "ok");
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "{what}: the connection that carried the bad head was reused"
        );
    }
}
