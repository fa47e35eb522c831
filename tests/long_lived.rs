//! Long-lived connections through ecluse: WebSocket tunnels and long downloads are held
//! to idle timeouts, never to request ones; switching a feature off drains what is open.
//! Real WebSocket origin and client (tokio-tungstenite), real proxy, loopback only.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lenient_ent::LenientEnt;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket origin that echoes every text message and remembers the close frames it
/// receives (code, reason), and how many tunnels ended.
struct WsOrigin {
    addr: SocketAddr,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
}

impl WsOrigin {
    async fn start() -> WsOrigin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let closes = Arc::new(Mutex::new(Vec::new()));
        let c = closes.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        match m {
                            Message::Text(t)
                                if ws.send(Message::Text(t.clone())).await.is_err() =>
                            {
                                return;
                            }
                            Message::Close(f) => {
                                let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                                c.lock()
                                    .expect("lock")
                                    .push(f.unwrap_or((0, String::new())));
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        WsOrigin { addr, closes }
    }

    fn closes(&self) -> Vec<(u16, String)> {
        self.closes.lock().expect("lock").clone()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(e: &Ecluse, path: &str) -> Ws {
    let url = format!("ws://{}{path}", e.proxy);
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut()
        .insert("accept-language", "en-GB,en;q=0.9".parse().expect("header"));
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket through ecluse");
    assert_eq!(resp.status(), 101);
    ws
}

/// Send `text` and wait for its echo.
async fn echo(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => {}
            other => return Err(format!("no echo of {text}: {other:?}")),
        }
    }
}

/// The close the client sees: `Some((code, reason))` for a close frame, `None` for a
/// bare end of stream. Waits at most `limit`.
async fn closed(ws: &mut Ws, limit: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("the tunnel was not closed within {limit:?}"),
            Ok(Some(Ok(Message::Close(f)))) => {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return None,
        }
    }
}

fn yaml(ws: SocketAddr, ent: SocketAddr, drain: &str, tunnel: &str, extra: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
server:
  clients: {{ header_timeout: 1s, keepalive_timeout: 1s, send_timeout: 1s }}
origins:
  ws: {{ servers: ["{ws}"], read_timeout: 500ms, total_timeout: 1s, {tunnel} health_check: {{ disabled: true }} }}
  ent: {{ servers: ["{ent}"], read_timeout: 10s, health_check: {{ disabled: true }} }}
routes:
  - {{ name: visio_ws, match: {{ path_prefix: /visio/ws }}, origin: ws, feature: visio }}
  - {{ name: visio_files, match: {{ path_prefix: /visio/ }}, origin: ent, feature: visio }}
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent }}
degradation:
  hold: 1s
  levels:
    - {{ name: normal }}
    - {{ name: busy, disable: [visio], enter: {{ error_rate: 0.5 }}, exit: {{ error_rate: 0.01 }} }}
  features:
    visio: {{ message_en: "Visio is paused: too many people. Back soon.", message_fr: "La visio est suspendue : trop de monde. Revenez bientôt.", drain: {drain} }}
{extra}"#
    )
}

async fn admin_post(e: &Ecluse, path: &str, body: &str) -> u16 {
    client()
        .post(e.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_with_traffic_outlives_every_request_timeout_and_an_idle_one_closes() {
    let origin = WsOrigin::start().await;
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        origin.addr,
        ent.addr,
        "30s",
        "tunnel_idle_timeout: 2500ms,",
        "",
    ));
    let mut ws = open(&e, "/visio/ws/room1").await;
    // Well past the origin's read (500 ms) and total (1 s) timeouts and the clients'
    // header, keep-alive and send timeouts (1 s): frames keep flowing, the tunnel stays.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        echo(&mut ws, &format!("frame {n}"))
            .await
            .unwrap_or_else(|err| panic!("after {:?}: {err}", t0.elapsed()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Quiet longer than the origin's read timeout, shorter than the tunnel's idle one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    echo(&mut ws, "after a quiet spell")
        .await
        .expect("a quiet tunnel under its idle timeout stays open");
    // Then idle: closed at the tunnel idle timeout (2.5 s), not before.
    let idle_from = Instant::now();
    let close = closed(&mut ws, DEADLINE).await;
    let took = idle_from.elapsed();
    assert!(
        took >= Duration::from_millis(2400),
        "closed after {took:?} idle"
    );
    assert_eq!(close.map(|c| c.0), Some(1001), "a Going Away close frame");
    assert!(e.metric("ecluse_client_timeouts_total", &[("phase", "tunnel_idle")]) >= 1.0);
    // No origin error counted for any of it.
    assert_eq!(
        e.metric(
            "ecluse_origin_errors_total",
            &[("origin", "ws"), ("kind", "timeout")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_max_lifetime_closes_it_with_traffic() {
    let origin = WsOrigin::start().await;
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        origin.addr,
        ent.addr,
        "30s",
        "tunnel_max_lifetime: 1500ms,",
        "",
    ));
    let mut ws = open(&e, "/visio/ws/room1").await;
    let t0 = Instant::now();
    let mut n = 0;
    let outcome = loop {
        if let Err(err) = echo(&mut ws, &format!("frame {n}")).await {
            break err;
        }
        n += 1;
        assert!(t0.elapsed() < DEADLINE, "never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "closed early: {outcome}"
    );
    assert!(
        outcome.contains("1001") || outcome.contains("Away"),
        "a close frame: {outcome}"
    );
}

/// An origin that answers every request with `len` bytes of a known pattern, sent in
/// 64 KiB writes as fast as the connection takes them; counts the bytes written.
async fn big_origin(len: usize) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: video/mp4\r\n\r\n"
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut sent = 0;
                while sent < len {
                    let n = (len - sent).min(64 << 10);
                    let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += n;
                    w.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    (addr, written)
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_download_completes_and_a_client_that_stops_reading_is_cut() {
    const LEN: usize = 24 << 20;
    let (big, written) = big_origin(LEN).await;
    let e = Ecluse::start(&format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
server:
  clients: {{ send_timeout: 1s }}
origins:
  ent: {{ servers: ["{big}"], read_timeout: 500ms, health_check: {{ disabled: true }} }}
routes:
  - {{ name: videos, match: {{ path_prefix: / }}, origin: ent }}
"#
    ));
    // A slow link: 24 MiB read in 32 KiB sips with pauses, for longer than every timeout
    // in the file (and the read timeout many times over).
    let mut s = tokio::net::TcpStream::connect(e.proxy)
        .await
        .expect("connect");
    s.write_all(b"GET /course.mp4 HTTP/1.1\r\nHost: ent\r\n\r\n")
        .await
        .expect("request");
    let t0 = Instant::now();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.expect("head"), 1, "head cut");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let mut got = 0usize;
    let mut buf = vec![0u8; 32 << 10];
    let mut sips = 0u64;
    while got < LEN {
        let n = s.read(&mut buf).await.expect("body");
        assert!(
            n > 0,
            "download cut at {got} of {LEN} bytes after {:?}",
            t0.elapsed()
        );
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + k), "byte {}", got + k);
        }
        got += n;
        if got >= LEN / 2 && got - n < LEN / 2 {
            // Halfway: does the slow reader hold the origin's slot, and how far ahead of
            // it may the origin write? (pingora reads the origin at the client's pace.)
            let inflight = e.metric("ecluse_origin_inflight", &[("origin", "ent")]);
            let ahead = written.load(std::sync::atomic::Ordering::Relaxed) - got;
            eprintln!(
                "halfway through a slow download: origin slots held {inflight}, origin ahead of the client by {} KiB",
                ahead >> 10
            );
            assert_eq!(inflight, 1.0, "the slow reader holds its origin slot");
        }
        sips += 1;
        if sips % 32 == 0 {
            // ~1 MiB, then a pause shorter than the send timeout.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert_eq!(got, LEN);
    eventually("the origin slot given back", DEADLINE, async || {
        e.metric("ecluse_origin_inflight", &[("origin", "ent")]) == 0.0
    })
    .await;
    assert!(
        t0.elapsed() > Duration::from_secs(3),
        "not a slow download: {:?}",
        t0.elapsed()
    );

    // A client that stops reading is cut after the send timeout: logged and counted.
    let mut stalled = tokio::net::TcpStream::connect(e.proxy)
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /course.mp4 HTTP/1.1\r\nHost: ent\r\n\r\n")
        .await
        .expect("request");
    eventually("the stalled reader counted", DEADLINE, async || {
        e.metric("ecluse_client_timeouts_total", &[("phase", "send")]) >= 1.0
    })
    .await;
    eventually("the stalled reader logged", DEADLINE, async || {
        e.stderr_text().contains("too slow reading the response")
    })
    .await;
    // And its connection is closed: what is left reads to an end.
    let mut rest = 0usize;
    loop {
        match tokio::time::timeout(DEADLINE, stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => rest += n,
            Err(_) => panic!("the stalled connection was not closed"),
        }
    }
    assert!(rest < LEN, "a cut response is never complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_visio_off_from_the_admin_api_drains_its_tunnel_with_1013() {
    let origin = WsOrigin::start().await;
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(origin.addr, ent.addr, "1500ms", "", ""));
    assert_eq!(
        e.metric(
            "ecluse_feature_drained_connections_total",
            &[("feature", "visio")]
        ),
        0.0
    );
    let mut ws = open(&e, "/visio/ws/room1").await;
    echo(&mut ws, "hello").await.expect("echo");
    let off_at = Instant::now();
    assert_eq!(
        admin_post(&e, "/admin/features/visio", r#"{"on": false}"#).await,
        200
    );
    // A new tunnel is refused…
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/visio/ws/room2", e.proxy)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a new visio tunnel was not refused: {other:?}"),
    }
    // …the open one is visible in the state, draining…
    let st: serde_json::Value = client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    let drains = st["degradation"]["drains"]
        .as_array()
        .expect("drains")
        .clone();
    let visio = drains
        .iter()
        .find(|d| d["feature"] == "visio")
        .expect("visio drain");
    assert_eq!(visio["open"], 1, "{visio}");
    // …and gets a 1013 close frame with the message, within its grace.
    let close = closed(&mut ws, DEADLINE).await;
    let took = off_at.elapsed();
    assert_eq!(
        close,
        Some((
            1013,
            "Visio is paused: too many people. Back soon.".to_string()
        ))
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "closed {took:?} after the switch"
    );
    assert_eq!(u16::from(CloseCode::Again), 1013);
    // The origin's side was closed with a close frame too, not a bare reset.
    eventually("the origin saw a close frame", DEADLINE, async || {
        !origin.closes().is_empty()
    })
    .await;
    assert_eq!(origin.closes()[0].0, 1001);
    eventually("the drain counted", DEADLINE, async || {
        e.metric(
            "ecluse_feature_drained_connections_total",
            &[("feature", "visio")],
        ) >= 1.0
    })
    .await;
    assert!(e.stderr_text().contains("feature visio drained"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_force_drains_at_once_in_french_and_a_level_drains_too() {
    let origin = WsOrigin::start().await;
    let ent = LenientEnt::start().await;
    let base = yaml(origin.addr, ent.addr, "0s", "", "");
    let e = Ecluse::start(&base);
    // French client, YAML force, `0s`: closed at once, reason in French within 123 bytes.
    let url = format!("ws://{}/visio/ws/fr", e.proxy);
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut()
        .insert("accept-language", "fr-FR,fr;q=0.9".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    echo(&mut ws, "bonjour").await.expect("echo");
    e.write_config(&base.replace(
        "degradation:\n",
        "degradation:\n  force_features: { visio: false }\n",
    ));
    let close = closed(&mut ws, DEADLINE).await;
    assert_eq!(
        close,
        Some((
            1013,
            "La visio est suspendue : trop de monde. Revenez bientôt.".to_string()
        ))
    );
    // Back on (the force removed), then a level switches it off: drained as well.
    e.write_config(&base);
    let mut ws = None;
    eventually(
        "visio back on",
        DEADLINE,
        async || match tokio_tungstenite::connect_async(format!("ws://{}/visio/ws/again", e.proxy))
            .await
        {
            Ok((w, _)) => {
                ws = Some(w);
                true
            }
            Err(_) => false,
        },
    )
    .await;
    let mut ws = ws.expect("ws");
    echo(&mut ws, "hello").await.expect("echo");
    // Errors on the ENT push the automatic level to `busy`, which switches visio off.
    let c = client();
    eventually("the level goes up", DEADLINE, async || {
        for _ in 0..10 {
            let _ = c.get(e.url("/fail/x")).send().await;
        }
        e.metric("ecluse_degradation_level", &[]) >= 1.0
    })
    .await;
    let close = closed(&mut ws, DEADLINE).await;
    assert_eq!(close.map(|c| c.0), Some(1013));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_never_cuts_an_upload_and_switching_back_on_keeps_the_tunnel() {
    let origin = WsOrigin::start().await;
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(origin.addr, ent.addr, "1s", "", ""));
    let mut ws = open(&e, "/visio/ws/room1").await;
    echo(&mut ws, "hello").await.expect("echo");

    // An upload on the feature's route, its body trickling in across the drain.
    let mut up = tokio::net::TcpStream::connect(e.proxy)
        .await
        .expect("connect");
    up.write_all(
        b"POST /visio/recordings/lesson.webm HTTP/1.1\r\nHost: ent\r\nContent-Length: 4000\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("upload head");
    up.write_all(&[b'a'; 1000]).await.expect("first part");

    // Switched off, and back on before the grace ends: the tunnel is kept.
    assert_eq!(
        admin_post(&e, "/admin/features/visio", r#"{"on": false}"#).await,
        200
    );
    assert_eq!(
        admin_post(&e, "/admin/features/visio", r#"{"on": null}"#).await,
        200
    );
    // Past the grace (1 s), twice over: still open and carrying frames.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    echo(&mut ws, "still here")
        .await
        .expect("switching back on mid-drain keeps the tunnel");

    // Off for good: the tunnel goes, the upload is not cut.
    assert_eq!(
        admin_post(&e, "/admin/features/visio", r#"{"on": false}"#).await,
        200
    );
    assert_eq!(closed(&mut ws, DEADLINE).await.map(|c| c.0), Some(1013));
    for _ in 0..3 {
        up.write_all(&[b'b'; 1000])
            .await
            .expect("more of the upload");
    }
    let (answer, _) = read_until_closed(&mut up, DEADLINE).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"body_len\":4000"),
        "every byte a teacher sent arrived: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_origin_still_times_out_on_an_upgrade_request() {
    // Accepts, never answers the handshake.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(hung, ent.addr, "30s", "", ""));
    let t0 = Instant::now();
    let r = tokio_tungstenite::connect_async(format!("ws://{}/visio/ws/x", e.proxy)).await;
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 504),
        other => panic!("expected a 504: {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn check_refuses_timeouts_that_cannot_work() {
    let dir = TempDir::new("check-timeouts");
    let f = dir.path().join("policy.yaml");
    std::fs::write(
        &f,
        "listen: [\"127.0.0.1:8080\"]
server: { clients: { send_timeout: 30s, send_min_rate: 1KiB } }
origins:
  ent: { servers: [\"127.0.0.1:8000\"], total_timeout: 1s, tunnel_idle_timeout: 0s }
routes:
  - { name: visio, match: { path_prefix: /visio }, origin: ent, feature: visio, total_timeout: 0s }
  - { name: ent, match: { path_prefix: / }, origin: ent }
degradation:
  levels: [{ name: normal }, { name: busy, disable: [visio] }]
  features:
    visio: { drain: soon }
",
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(": degradation.features.visio.drain"), "{err}");
    // The value problems come once the file's structure is right.
    std::fs::write(
        &f,
        std::fs::read_to_string(&f)
            .expect("read")
            .replace("drain: soon", "drain: never"),
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "origins.ent.tunnel_idle_timeout: must be longer than 0s",
        "routes[0].total_timeout: must be longer than 0s",
        "server.clients.send_min_rate: set either `send_timeout` or `send_min_rate`",
    ] {
        assert!(
            err.contains(&format!(": {want}")),
            "missing `{want}` in:\n{err}"
        );
        assert!(err.contains("FILE:"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_whose_body_hangs_is_cut_at_the_read_timeout() {
    // Answers the handshake with a 200 whose body stops after 3 of 100 bytes.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                .await;
            held.push(s);
        }
    });
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(origin, ent.addr, "30s", "", ""));
    let mut s = tokio::net::TcpStream::connect(e.proxy)
        .await
        .expect("connect");
    s.write_all(
        b"GET /visio/ws/x HTTP/1.1\r\nHost: ent\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("request");
    let t0 = Instant::now();
    let (got, closed_at) = read_until_closed(&mut s, DEADLINE).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed_at.is_some(),
        "a hung body after a refused upgrade was never cut"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}
