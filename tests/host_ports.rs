//! The port in a request's host (issue #17): an ENT that builds absolute links from `Host`
//! writes the port it receives into its pages, and the shared cache serves them to
//! everyone. A port that is not this deployment's is answered 421 before anything else;
//! the ports that are (the listeners', `server.public_ports`) reach the ENT and are part
//! of the cache key, and purges by host cover every port. `LenientEnt`'s JSON echo holds
//! the host it would build links from (`X-Forwarded-Host`, else `Host`).

mod common;

use std::net::SocketAddr;

use common::lenient_ent::LenientEnt;
use common::*;

fn yaml(origin: SocketAddr, server: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s{server} }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: pages
    match: {{ path_prefix: /pub/ }}
    origin: ent
    cache: {{ mode: public, ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

/// One raw HTTP/1.1 request with `head` as its request line and fields (no client library
/// writes the Host for us): status, and the whole answer.
async fn raw(addr: SocketAddr, head: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
            .expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        (status_of(&buf).unwrap_or(0), text)
    })
    .await
    .expect("join")
}

async fn get(addr: SocketAddr, path: &str, host: &str, extra: &str) -> (u16, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"),
    )
    .await
}

/// The host the ENT echoed (what it would build links from).
fn echoed_host(answer: &str) -> String {
    echoed(answer, "host")
}

/// A field of the ENT's JSON echo (`host`, `port`: its `X-Forwarded-Port`).
fn echoed(answer: &str, field: &str) -> String {
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"));
    v[field].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_of_another_server_is_misdirected_and_never_reaches_the_ent() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ""));
    let port = e.proxy.port();
    for host in [
        "127.0.0.1:1234".to_string(),
        "127.0.0.1:01234".to_string(),
        "ENT.example.:1234".to_string(),
        "127.0.0.1:0".to_string(),
        "127.0.0.1:00000".to_string(),
        "[::1]:81".to_string(),
        // 443 is not the default port of this plain listener.
        "127.0.0.1:443".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
    ] {
        let (s, answer) = get(e.proxy, "/pub/home", &host, "").await;
        assert_eq!(s, 421, "{host}: {answer}");
        assert!(answer.contains("<html"), "{host}: ecluse's page: {answer}");
        let (s, answer) = get(e.proxy, "/pub/home", &host, "Accept: application/json\r\n").await;
        assert_eq!(s, 421, "{host}: {answer}");
        assert!(
            answer.contains("\"misdirected_request\""),
            "{host}: {answer}"
        );
        // The absolute form names the same host (pingora refuses one that differs).
        let (s, answer) = raw(
            e.proxy,
            format!("GET http://{host}/pub/home HTTP/1.1\r\nHost: {host}\r\n"),
        )
        .await;
        assert_eq!(s, 421, "absolute-form {host}: {answer}");
    }
    // Other orders and headers: HTTP/1.0 absolute form without `Host`; an IPv4-mapped or
    // numeric host; an untrusted `X-Forwarded-Port` naming the port (removed, not
    // believed); the queue's status path (answered by ecluse, but after the host check).
    for head in [
        "GET http://127.0.0.1:1234/pub/home HTTP/1.0\r\n".to_string(),
        "GET /pub/home HTTP/1.1\r\nHost: [::ffff:127.0.0.1]:1234\r\n".to_string(),
        "GET /pub/home HTTP/1.1\r\nHost: 2130706433:1234\r\n".to_string(),
        "GET /pub/home HTTP/1.1\r\nHost: 127.0.0.1:1234\r\nX-Forwarded-Port: 1234\r\n".to_string(),
        "GET /.ecluse/queue/status HTTP/1.1\r\nHost: 127.0.0.1:1234\r\n".to_string(),
    ] {
        let (s, answer) = raw(e.proxy, head.clone()).await;
        assert_eq!(s, 421, "{head}: {answer}");
    }
    assert!(ent.seen().is_empty(), "{:?}", ent.seen());
    // The page everyone gets names the port they reached.
    let (s, answer) = get(e.proxy, "/pub/home", &e.proxy.to_string(), "").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(echoed_host(&answer), e.proxy.to_string());
    // Spellings of the listener's own port and of the default are one host each.
    // `X-Forwarded-Port` is the port of that host (80 when it names none), not the
    // listener's: it follows the cache key like `Host`.
    for (host, one, xfp) in [
        (
            format!("127.0.0.1.:{port}"),
            format!("127.0.0.1:{port}"),
            port,
        ),
        ("127.0.0.1:80".to_string(), "127.0.0.1".to_string(), 80),
        ("127.0.0.1:080".to_string(), "127.0.0.1".to_string(), 80),
        ("127.0.0.1:".to_string(), "127.0.0.1".to_string(), 80),
        ("[::1]:80".to_string(), "[::1]".to_string(), 80),
    ] {
        let (s, answer) = get(e.proxy, "/echo", &host, "").await;
        assert_eq!(s, 200, "{host}: {answer}");
        assert_eq!(echoed_host(&answer), one, "{host}");
        assert_eq!(echoed(&answer, "port"), xfp.to_string(), "{host}");
    }
    // A port that is no port stays a bad host (400), ecluse's page too.
    for host in ["127.0.0.1:65536", "127.0.0.1:8o", "127.0.0.1:-1"] {
        let (s, answer) = get(e.proxy, "/pub/home", host, "").await;
        assert_eq!(s, 400, "{host}: {answer}");
        assert!(answer.contains("<html"), "{host}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_port_is_part_of_the_cache_key_and_purges_cover_every_port() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ", public_ports: [8443]"));
    let own = e.proxy.to_string();
    // The balancer's port reaches the ENT first: its page names 8443...
    let (s, ported) = get(e.proxy, "/pub/home", "127.0.0.1:8443", "").await;
    assert_eq!(s, 200, "{ported}");
    assert_eq!(echoed_host(&ported), "127.0.0.1:8443");
    assert_eq!(echoed(&ported, "port"), "8443");
    // ...and is never what a client of another port gets.
    let (s, plain) = get(e.proxy, "/pub/home", &own, "").await;
    assert_eq!(s, 200, "{plain}");
    assert_eq!(echoed_host(&plain), own);
    assert_eq!(echoed(&plain, "port"), e.proxy.port().to_string());
    assert_eq!(ent.hits_on("/pub/home"), 2);
    // Each is stored under its own key, whatever the spelling of the port.
    for (host, want) in [
        ("127.0.0.1:08443".to_string(), "127.0.0.1:8443".to_string()),
        ("127.0.0.1.:8443".to_string(), "127.0.0.1:8443".to_string()),
        (own.clone(), own.clone()),
    ] {
        let (s, answer) = get(e.proxy, "/pub/home", &host, "").await;
        assert_eq!(s, 200, "{answer}");
        assert_eq!(echoed_host(&answer), want, "{host}");
    }
    assert_eq!(ent.hits_on("/pub/home"), 2, "served from the cache");
    // A purge by host (written without a port, or with any) covers every port.
    for body in [
        r#"{"prefix": "/pub/", "host": "127.0.0.1"}"#,
        r#"{"url": "/pub/home", "host": "127.0.0.1:9999"}"#,
    ] {
        let before = ent.hits_on("/pub/home");
        let r = client()
            .post(e.admin_url("/admin/cache/purge"))
            .body(body)
            .send()
            .await
            .expect("purge");
        assert_eq!(r.status(), 200, "{body}");
        for host in ["127.0.0.1:8443", own.as_str()] {
            let (s, answer) = get(e.proxy, "/pub/home", host, "").await;
            assert_eq!(s, 200, "{answer}");
        }
        assert_eq!(ent.hits_on("/pub/home"), before + 2, "{body}");
    }
    // Other ports stay misdirected.
    assert_eq!(get(e.proxy, "/pub/home", "127.0.0.1:8444", "").await.0, 421);
}

/// One HTTP/2 (prior knowledge) GET of `http://{authority}{path}` to `addr`: the
/// `:authority` exactly as written. Status and body.
async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> (u16, String) {
    h2_get_with_host(addr, authority, None, path).await
}

/// Same, with a `Host` field beside `:authority`.
async fn h2_get_with_host(
    addr: SocketAddr,
    authority: &str,
    host: Option<&str>,
    path: &str,
) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://{authority}{path}"));
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).expect("request");
    let r = send.send_request(req).await.expect("h2 request");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_authority_reaches_the_ent_in_its_one_spelling() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ""));
    let port = e.proxy.port();
    for (authority, one) in [
        (
            format!("ENT.Example.:{port}"),
            format!("ent.example:{port}"),
        ),
        ("ent.example:00080".to_string(), "ent.example".to_string()),
        ("ent.example:80".to_string(), "ent.example".to_string()),
        ("ENT.example.:".to_string(), "ent.example".to_string()),
    ] {
        let (s, body) = h2_get(e.proxy, &authority, "/echo").await;
        assert_eq!(s, 200, "{authority}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["host"], one.as_str(), "{authority}");
        let seen = ent.seen();
        let last = seen.last().expect("seen");
        let header = |n: &str| {
            last.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("host").as_deref(), Some(one.as_str()), "{authority}");
        assert_eq!(
            header("x-forwarded-host").as_deref(),
            Some(one.as_str()),
            "{authority}"
        );
    }
    // A port of another server over HTTP/2: 421 too, never forwarded.
    let before = ent.seen().len();
    for authority in ["ent.example:1234", "ent.example:443", "[::1]:81"] {
        let (s, body) = h2_get(e.proxy, authority, "/pub/home").await;
        assert_eq!(s, 421, "{authority}: {body}");
    }
    // A `Host` beside `:authority` naming another port (or spelled otherwise): pingora's
    // own 400 (RFC 9113 §8.3.1), before ecluse; nothing forwarded either way.
    let ours = format!("ent.example:{port}");
    for host in ["ent.example:1234", "ent.example", "ENT.example"] {
        let (s, body) = h2_get_with_host(e.proxy, &ours, Some(host), "/pub/home").await;
        assert_eq!(s, 400, "{host}: {body}");
    }
    assert_eq!(ent.seen().len(), before);
}

#[test]
fn check_reports_bad_public_ports_with_positions() {
    let text = r#"listen: ["127.0.0.1:0"]
server:
  public_ports: [8443, 0, 70000, "x"]
origins:
  ent: { servers: ["127.0.0.1:9"] }
routes:
  - name: ent
    match: { path_prefix: / }
    origin: ent
"#;
    let err = check_refuses(text);
    assert!(
        err.contains(":3:24: server.public_ports[1]") && err.contains("no port a client reaches"),
        "{err}"
    );
    assert!(err.contains(":3:27: server.public_ports[2]"), "{err}");
    assert!(err.contains(":3:34: server.public_ports[3]"), "{err}");
    assert!(err.contains("3 problems found"), "{err}");
}
