//! One canonical path (issue #17, class 2): every spelling of a protected path meets the
//! protected route's decision through the real proxy, in front of a backend that
//! normalizes paths the way lenient ENTs do (`LenientEnt`), and what that backend
//! receives is the canonical path.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::lenient_ent::LenientEnt;
use common::*;

const KEY: &str = "k1:8f3a5e0c9b1d2f4a6c8e0b2d4f6a8c0e1f3b5d7a9c1e3f5b7d9a1c3e5f7b9d1a";

fn yaml(origin: SocketAddr, paths: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s{paths} }}
access_log: {{ enabled: false }}
waiting_rooms:
  exam: {{ active_users: 1, new_users_per_minute: 1, secret_file: ticket.key, abandon_timeout: 10m, session_idle_timeout: 10m }}
degradation:
  levels: [{{ name: normal }}, {{ name: busy, disable: [visio] }}]
  force_features: {{ visio: false }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: visio
    match: {{ path_prefix: /visio/ }}
    origin: ent
    feature: visio
  - name: search
    match: {{ path_prefix: /api/search }}
    origin: ent
    rate_limits:
      - {{ key: client_ip, rate: 1/h, burst: 1 }}
  - name: exam
    match: {{ path_prefix: /exam/ }}
    origin: ent
    waiting_room: exam
  - name: files
    match: {{ path_prefix: /files/ }}
    origin: ent
    cache: {{ ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

fn start(origin: SocketAddr, paths: &str) -> Ecluse {
    Ecluse::start_with(
        &yaml(origin, paths),
        &[("ticket.key", format!("{KEY}\n").as_bytes())],
        |_| {},
    )
}

/// One raw request (the target exactly as written: no client library cleans it up).
async fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || raw_request(addr, "GET", &target, &[], b""))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("request: {e}"))
}

/// One raw request asking for JSON (the queue's answer is then a JSON status).
async fn get_json(addr: SocketAddr, target: &str) -> (u16, String) {
    let target = target.to_string();
    tokio::task::spawn_blocking(move || {
        raw_request(addr, "GET", &target, &[("Accept", "application/json")], b"")
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("request: {e}"))
}

fn queued(body: &str) -> bool {
    body.contains("\"state\":\"waiting\"")
}

/// Spellings of `/{a}/{b}` (a protected prefix `/{a}/` and a resource under it) that a
/// lenient backend reads as that path.
fn spellings(addr: SocketAddr, a: &str, b: &str) -> Vec<String> {
    let enc = |s: &str| s.bytes().map(|c| format!("%{c:02x}")).collect::<String>();
    let first = &a[..1];
    let rest = &a[1..];
    vec![
        format!("/{}/{b}", enc(a)),
        format!("/%{:02X}{rest}/{b}", first.as_bytes()[0]),
        format!("/x/../{a}/{b}"),
        format!("/x/%2e%2e/{a}/{b}"),
        format!("/x/.%2E/{a}/{b}"),
        format!("/./{a}/{b}"),
        format!("/%2e/{a}/{b}"),
        format!("//{a}/{b}"),
        format!("///{a}//{b}"),
        format!("/{a}/./{b}"),
        format!("/{a}/x/../{b}"),
        format!("/../{a}/{b}"),
        format!("/{a}/{b}?q=/x/../y"),
        format!("http://{addr}/x/../{a}/{b}"),
        format!("HTTP://{addr}//{a}/{b}"),
    ]
}

/// Spellings a lenient backend reads as `/{a}/{b}` that have no canonical form under the
/// default policy: 400.
fn refused(a: &str, b: &str) -> Vec<String> {
    vec![
        format!("/x%2F..%2F{a}/{b}"),
        format!("/x%2f..%2f{a}/{b}"),
        format!("/x%5C..%5C{a}/{b}"),
        format!("/{a}%2F{b}"),
        format!("/..;/{a}/{b}"),
        format!("/{a};x=1/{b}"),
        format!("/%c0%ae%c0%ae/{a}/{b}"),
        format!("/%zz/../{a}/{b}"),
        format!("/{a}/{b}%"),
        format!("/{a}/{b}%4"),
        format!("/{a}/%00{b}"),
        format!("/{a}/%0a{b}"),
        // Double encoding: `.` or `/` to a backend that decodes twice.
        format!("/x/%252e%252e/{a}/{b}"),
        format!("/x%252F..%252F{a}/{b}"),
        format!("/x/%25%32%65%25%32%65/{a}/{b}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_switched_off_feature_is_switched_off() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    let (s, _) = get(addr, "/visio/room").await;
    assert_eq!(s, 503, "the canonical spelling is switched off");
    for t in spellings(addr, "visio", "room") {
        let (s, body) = get(addr, &t).await;
        assert_eq!(s, 503, "{t}: {body}");
    }
    for t in refused("visio", "room") {
        let (s, body) = get(addr, &t).await;
        assert_eq!(s, 400, "{t}: {body}");
    }
    assert_eq!(ent.hits_on("/visio/room"), 0, "{:?}", ent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_rate_limited_route_is_limited() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    let (s, _) = get(addr, "/api/search/q").await;
    assert_eq!(s, 200, "the one token");
    for t in spellings(addr, "api", "search/q") {
        let (s, body) = get(addr, &t).await;
        assert_eq!(s, 429, "{t}: {body}");
    }
    for t in refused("api", "search/q") {
        let (s, body) = get(addr, &t).await;
        assert_eq!(s, 400, "{t}: {body}");
    }
    assert_eq!(ent.hits_on("/api/search/q"), 1, "{:?}", ent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_waiting_room_path_is_queued() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    // The room's one place is taken (its cookie thrown away).
    let (s, _) = get(addr, "/exam/paper").await;
    assert_eq!(s, 200);
    assert_eq!(ent.hits_on("/exam/paper"), 1);
    let (s, body) = get_json(addr, "/exam/paper").await;
    assert_eq!(s, 200);
    assert!(queued(&body), "queued: {body}");
    for t in spellings(addr, "exam", "paper") {
        let (s, body) = get_json(addr, &t).await;
        assert_eq!(s, 200, "{t}");
        assert!(queued(&body), "{t} not queued: {body}");
    }
    for t in refused("exam", "paper") {
        let (s, body) = get(addr, &t).await;
        assert_eq!(s, 400, "{t}: {body}");
    }
    assert_eq!(ent.hits_on("/exam/paper"), 1, "{:?}", ent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ent_receives_the_canonical_path_and_the_query_as_sent() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    for (sent, received) in [
        (
            "/%6Eotes//%7Ebob/./a%2bb/../c?x=%2F..&y=%76",
            "/notes/~bob/c?x=%2F..&y=%76",
        ),
        (
            "/notes/%e9t%c3%a9/%7b%25%3f%23",
            "/notes/%E9t%C3%A9/%7B%25%3F%23",
        ),
        ("/notes/{a}|", "/notes/%7Ba%7D%7C"),
        ("http://ENT/../notes?q", "/notes?q"),
        ("/notes/plain?kept=as%20is", "/notes/plain?kept=as%20is"),
    ] {
        let sent = sent.replace("ENT", &addr.to_string());
        let (s, body) = get(addr, &sent).await;
        assert_eq!(s, 200, "{sent}: {body}");
        let seen = ent.seen();
        let last = seen.last().expect("one request");
        assert_eq!(last.raw, received, "{sent}");
    }
}

/// A status answer less what changes from one poll to the next (the jittered interval,
/// the clock).
fn answer(body: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    if let Some(o) = v.as_object_mut() {
        o.remove("poll_after_ms");
        o.remove("updated_at");
        o.remove("updated_at_text");
        o.remove("request_id");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_path_gets_one_answer_whatever_its_spelling() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    let (s, want) = get(addr, "/.ecluse/queue/status?room=exam").await;
    assert_eq!(s, 200);
    assert!(want.contains("\"state\""), "{want}");
    for t in [
        "/.ecluse/queue/%73tatus?room=exam",
        "//.ecluse/queue/status?room=exam",
        "/x/../.ecluse/queue/status?room=exam",
        "/.ecluse/./queue/status?room=exam",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(answer(&body), answer(&want), "{t}: {body}");
    }
    assert!(ent.seen().is_empty(), "{:?}", ent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_escaped_slash_and_path_parameter_policies_apply() {
    let ent = LenientEnt::start().await;
    let e = start(
        ent.addr,
        ", paths: { escaped_slashes: decode, path_params: strip }",
    );
    let addr = e.proxy;
    for t in [
        "/x%2F..%2Fvisio/room",
        "/x%5c..%5cvisio/room",
        "/x\\..\\visio\\room",
        "/visio%2Froom",
        "/..;/visio/room",
        "/;x/visio;jsessionid=1/room",
        "/vis%69o;a=b/room",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 503, "{t}: {body}");
    }
    let (s, _) = get(addr, "/notes;jsessionid=1/a%2Fb").await;
    assert_eq!(s, 200);
    assert_eq!(ent.seen().last().expect("seen").raw, "/notes/a/b");
    drop(e);

    // `keep`: the escapes are data, forwarded as they came (upper-cased); `;` too.
    let e = start(
        ent.addr,
        ", paths: { escaped_slashes: keep, path_params: keep, merge_slashes: false }",
    );
    let addr = e.proxy;
    let (s, _) = get(addr, "/notes/a%2fb%5Cc\\d;e//f").await;
    assert_eq!(s, 200);
    assert_eq!(
        ent.seen().last().expect("seen").raw,
        "/notes/a%2Fb%5Cc%5Cd;e//f"
    );
    let (s, _) = get(addr, "//visio/room").await;
    assert_eq!(
        s, 200,
        "merge_slashes: false keeps `//visio` apart from `/visio/`"
    );
    assert_eq!(ent.seen().last().expect("seen").raw, "//visio/room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_normalized_like_the_requests() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let addr = e.proxy;
    let c = client();
    let fetch = |t: &'static str| get(addr, t);
    assert_eq!(fetch("/files/a.pdf").await.0, 200);
    assert_eq!(fetch("/files/%61.pdf").await.0, 200);
    assert_eq!(fetch("/x/../files//a.pdf").await.0, 200);
    assert_eq!(
        ent.hits_on("/files/a.pdf"),
        1,
        "one object for every spelling"
    );
    // Purged by another spelling of the prefix: fetched again.
    let r = c
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"prefix": "/%66iles/./"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    assert!(body.contains("\"target\":\"/files/\""), "{body}");
    assert_eq!(fetch("/files/a.pdf").await.0, 200);
    assert_eq!(ent.hits_on("/files/a.pdf"), 2);
    // And by another spelling of the URL.
    let r = c
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"url": "/files//%61.pdf"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    assert_eq!(fetch("/files/a.pdf").await.0, 200);
    assert_eq!(ent.hits_on("/files/a.pdf"), 3);
    // No canonical form: a clear 400, nothing purged.
    for body in [r#"{"prefix": "/files%2F"}"#, r#"{"url": "/files/%zz"}"#] {
        let r = c
            .post(e.admin_url("/admin/cache/purge"))
            .body(body)
            .send()
            .await
            .expect("purge");
        assert_eq!(r.status(), 400, "{body}");
    }
    eventually(
        "the cache still holds a.pdf",
        Duration::from_secs(5),
        async || fetch("/files/a.pdf").await.0 == 200 && ent.hits_on("/files/a.pdf") == 3,
    )
    .await;
}

#[test]
fn check_refuses_a_prefix_that_is_not_canonical() {
    let text = r#"listen: ["127.0.0.1:0"]
origins:
  ent: { servers: ["127.0.0.1:9"] }
routes:
  - name: visio
    match: { path_prefix: /%76isio/ }
    origin: ent
  - name: x
    match: { path_prefix: "/a/../b" }
    origin: ent
  - name: y
    match: { path_prefix: "/c%2Fd" }
    origin: ent
"#;
    let err = check_refuses(text);
    assert!(
        err.contains(":6:") && err.contains("write `/visio/`"),
        "{err}"
    );
    assert!(err.contains(":9:") && err.contains("write `/b`"), "{err}");
    assert!(
        err.contains(":12:") && err.contains("encoded slash"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_get_the_same_canonical_path() {
    // Over HTTP/2 the URI carries `:scheme` and `:authority`: they stay, the path changes.
    let ent = LenientEnt::start().await;
    let cert = SelfSigned::localhost();
    let text = yaml(ent.addr, "").replacen(
        "listen: [\"127.0.0.1:0\"]\n",
        "listen: [\"127.0.0.1:0\"]\ntls: { listen: [\"127.0.0.1:0\"], cert_file: cert.pem, key_file: key.pem }\n",
        1,
    );
    let mut files = cert.files().to_vec();
    let key = format!("{KEY}\n");
    files.push(("ticket.key", key.as_bytes()));
    let e = Ecluse::start_with(&text, &files, |_| {});
    let tls = e.tls.expect("tls address printed");
    let c = cert.client(tls);
    let url = |p: &str| format!("https://localhost:{}{p}", tls.port());
    for p in ["/%76isio/room", "//visio/room", "/vis%69o//room"] {
        let r = c.get(url(p)).send().await.expect("h2 request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 503, "{p}");
    }
    let r = c
        .get(url("/visio%2Froom"))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.status(), 400);
    let r = c
        .get(url("/%6Eotes//a?b=%2F"))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.status(), 200);
    let last = ent.seen().last().cloned().expect("seen");
    assert_eq!(last.raw, "/notes/a?b=%2F");
    let host = last
        .headers
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.clone());
    assert_eq!(
        host.as_deref(),
        Some(format!("localhost:{}", tls.port()).as_str())
    );
    assert_eq!(ent.hits_on("/visio/room"), 0);
}

// ---- Case, Windows names, front controllers, path parameters (#17, last classes) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_spelling_of_a_protected_path_meets_its_policy() {
    // The ENT routes case-insensitively (IIS, a case-insensitive router), ecluse is left at
    // its defaults (the path's case is kept): policies still fold the case.
    let ent = LenientEnt::start().await;
    ent.set_case_insensitive(true);
    let e = start(ent.addr, "");
    let addr = e.proxy;
    for t in [
        "/VISIO/room",
        "/Visio/room",
        "/vIsIo/ROOM",
        "/%56%49%53%49%4F/room",
        "/%56isio/room",
        "/vi%C5%BFio/room",
        "/v%c4%b1sio/room",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 503, "{t}: {body}");
    }
    // The rate limit: one token for every spelling together.
    assert_eq!(get(addr, "/API/search/q").await.0, 200);
    for t in ["/api/search/q", "/Api/Search/q", "/%41PI/SEARCH/q"] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 429, "{t}: {body}");
    }
    // The waiting room: its one place taken, every spelling queues.
    assert_eq!(get(addr, "/exam/paper").await.0, 200);
    for t in ["/EXAM/paper", "/Exam/Paper", "/%45xam/paper"] {
        let (s, body) = get_json(addr, t).await;
        assert_eq!(s, 200, "{t}");
        assert!(queued(&body), "{t} not queued: {body}");
    }
    assert_eq!(ent.hits_on("/visio/room"), 0, "{:?}", ent.seen());
    assert_eq!(ent.hits_on("/api/search/q"), 1, "{:?}", ent.seen());
    assert_eq!(ent.hits_on("/exam/paper"), 1, "{:?}", ent.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_insensitive_ent_gets_one_path_and_one_cache_entry() {
    let ent = LenientEnt::start().await;
    ent.set_case_insensitive(true);
    let e = start(ent.addr, ", paths: { case_insensitive: true }");
    let addr = e.proxy;
    for t in [
        "/files/A.pdf",
        "/FILES/a.PDF",
        "/Files/%41.pdf",
        "/files/a.pdf",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 200, "{t}: {body}");
    }
    assert_eq!(ent.hits_on("/files/a.pdf"), 1, "{:?}", ent.seen());
    assert_eq!(
        ent.seen()[0].raw,
        "/files/a.pdf",
        "the ENT gets the folded path"
    );
    // A purge in any case reaches the one copy.
    let r = client()
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"prefix": "/FILES/"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    assert_eq!(get(addr, "/Files/A.PDF").await.0, 200);
    assert_eq!(ent.hits_on("/files/a.pdf"), 2, "{:?}", ent.seen());
    drop(e);

    // A case-sensitive ENT (the default): two resources, two entries, each forwarded as
    // sent.
    let ent2 = LenientEnt::start().await;
    let e = start(ent2.addr, "");
    let addr = e.proxy;
    assert_eq!(get(addr, "/files/a.pdf").await.0, 200);
    assert_eq!(get(addr, "/Files/a.pdf").await.0, 200);
    assert_eq!(get(addr, "/files/a.pdf").await.0, 200);
    let raws: Vec<String> = ent2.seen().into_iter().map(|s| s.raw).collect();
    assert_eq!(raws, ["/files/a.pdf", "/Files/a.pdf"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_controllers_windows_names_and_path_parameters_meet_the_policy() {
    let ent = LenientEnt::start().await;
    ent.set_habits(common::lenient_ent::Habits {
        strip_path_params: false,
        windows_names: true,
        front_controller: Some("/index.php".into()),
    });
    let e = start(ent.addr, ", paths: { front_controllers: [/index.php] }");
    let addr = e.proxy;
    for t in [
        "/index.php/visio/room",
        "/INDEX.PHP/visio/room",
        "/index.php/index.php/visio/room",
        "/index.php./visio/room",
        "/visio./room",
        "/visio%20/room",
        "/visio.%20./room",
        "/index.php/VISIO./room",
        "/visio::$INDEX_ALLOCATION/room",
        "/VISIO:$i30:$INDEX_ALLOCATION/room",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 503, "{t}: {body}");
    }
    // A segment of only dots and spaces: `.` or `..` to Windows, refused. So are `;`
    // parameters (default `path_params: reject`).
    for t in [
        "/x/..%20/visio/room",
        "/x/.../visio/room",
        "/x/.%20/visio/room",
        "/visio;x=1/room",
        "/visio;/room",
        "/;/visio/room",
        "/index.php;x/visio/room",
    ] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 400, "{t}: {body}");
    }
    // The rate limit counts the controller's spelling with the plain one.
    assert_eq!(get(addr, "/api/search/q").await.0, 200);
    assert_eq!(get(addr, "/index.php/api/search/q").await.0, 429);
    assert_eq!(get(addr, "/api./search/q").await.0, 429);
    // The script itself and other paths reach the ENT as sent.
    assert_eq!(get(addr, "/index.php?page=1").await.0, 200);
    assert_eq!(ent.seen().last().expect("seen").raw, "/index.php?page=1");
    assert_eq!(ent.hits_on("/visio/room"), 0, "{:?}", ent.seen());
    drop(e);

    // Tomcat's reading, declared: `;` stripped, every spelling is visio.
    ent.set_habits(common::lenient_ent::Habits {
        strip_path_params: true,
        ..Default::default()
    });
    let e = start(ent.addr, ", paths: { path_params: strip }");
    for t in [
        "/visio;x=1/room",
        "/visio;/room",
        "/;/visio/room",
        "/VISIO;a/room",
    ] {
        let (s, body) = get(e.proxy, t).await;
        assert_eq!(s, 503, "{t}: {body}");
    }
    assert_eq!(ent.hits_on("/visio/room"), 0, "{:?}", ent.seen());
}

#[test]
fn check_refuses_bad_front_controllers_and_dots_only_prefixes() {
    let text = r#"listen: ["127.0.0.1:0"]
server:
  paths:
    front_controllers: ["/index.php/", "index.php", "/app%2Ephp"]
origins:
  ent: { servers: ["127.0.0.1:9"] }
routes:
  - name: dots
    match: { path_prefix: "/a/.../" }
    origin: ent
"#;
    let err = check_refuses(text);
    assert!(err.contains(":4:") && err.contains("no trailing"), "{err}");
    assert!(err.contains("must start with `/`"), "{err}");
    assert!(err.contains("write `/app.php`"), "{err}");
    assert!(
        err.contains(":9:") && err.contains("only dots and spaces"),
        "{err}"
    );
}

// ---- Host (#17): one syntax, one spelling ----

/// A head sent exactly as written (Host lines included), `Connection: close` added.
async fn send_head(addr: SocketAddr, head: &str) -> (u16, String) {
    let head = format!("{head}Connection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(head.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text)
    })
    .await
    .expect("join")
}

fn host_yaml(origin: SocketAddr) -> String {
    // 8080: a public port (a balancer's), kept in what the ENT receives (`host_ports.rs`
    // tests the ports that are not).
    yaml(origin, ", public_ports: [8080]").replacen(
        "routes:\n",
        "routes:\n  - name: visio-host\n    match: { hosts: [visio.ent.fr] }\n    origin: ent\n    feature: visio\n",
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_is_refused_with_the_bad_request_page() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start_with(
        &host_yaml(ent.addr),
        &[("ticket.key", format!("{KEY}\n").as_bytes())],
        |_| {},
    );
    let addr = e.proxy;
    for host in [
        "visio ent.fr",
        "visio.ent.fr:8o",
        "visio.ent.fr:99999",
        "visio.ent.fr:80:80",
        "visio%2Eent.fr",
        "visio.ent.fr,other.fr",
        "visio.ent.fr/x",
        "[::1",
    ] {
        let (s, text) = send_head(addr, &format!("GET /notes HTTP/1.1\r\nHost: {host}\r\n")).await;
        assert_eq!(s, 400, "{host:?}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("<html"),
            "ecluse's page: {text}"
        );
    }
    // No Host on HTTP/1.1: the page too, in JSON when asked.
    let (s, text) = send_head(addr, "GET /notes HTTP/1.1\r\nAccept: application/json\r\n").await;
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("\"bad_request\""), "{text}");
    // Refused before ecluse's code runs (pingora's own 400): userinfo, two `Host`, an
    // absolute-form target naming another host than `Host`. An absolute-form authority
    // is checked like a Host.
    for head in [
        "GET /notes HTTP/1.1\r\nHost: user@visio.ent.fr\r\n",
        "GET /notes HTTP/1.1\r\nHost: visio.ent.fr@other.fr\r\n",
        "GET /notes HTTP/1.1\r\nHost: other.fr\r\nHost: visio.ent.fr\r\n",
        "GET http://user@visio.ent.fr/notes HTTP/1.1\r\nHost: visio.ent.fr\r\n",
        "GET http://visio.ent.fr/notes HTTP/1.1\r\nHost: other.fr\r\n",
        "GET http://visio.ent.fr:8o/notes HTTP/1.1\r\nHost: visio.ent.fr:8o\r\n",
        "GET http://visio%2Eent.fr/notes HTTP/1.0\r\n",
    ] {
        let (s, text) = send_head(addr, head).await;
        assert_eq!(s, 400, "{head}: {text}");
    }
    assert!(
        ent.seen().is_empty(),
        "nothing reached the ENT: {:?}",
        ent.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_a_host_is_one_host() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start_with(
        &host_yaml(ent.addr),
        &[("ticket.key", format!("{KEY}\n").as_bytes())],
        |_| {},
    );
    let addr = e.proxy;
    // Every spelling of the host route's host meets its policy.
    for head in [
        "GET http://visio.ent.fr/notes HTTP/1.1\r\nHost: visio.ent.fr\r\n",
        "GET HTTP://VISIO.ENT.FR.:80/notes HTTP/1.1\r\nHost: VISIO.ENT.FR.:80\r\n",
        "GET http://Visio.Ent.Fr/notes HTTP/1.0\r\n",
        "GET /notes HTTP/1.1\r\nHost: VISIO.Ent.FR.:80\r\n",
        "GET /notes HTTP/1.1\r\nHost: visio.ent.fr:\r\n",
    ] {
        let (s, text) = send_head(addr, head).await;
        assert_eq!(s, 503, "{head}: {text}");
    }
    // The ENT and the cache get one spelling: lower-case, no root dot, no default port.
    for host in ["ENT.fr", "ent.fr.", "Ent.Fr.:80", "ent.fr:"] {
        let (s, text) = send_head(
            addr,
            &format!("GET /files/a.pdf HTTP/1.1\r\nHost: {host}\r\n"),
        )
        .await;
        assert_eq!(s, 200, "{host}: {text}");
    }
    let (s, text) = send_head(addr, "GET http://ENT.FR:80/notes/x HTTP/1.0\r\n").await;
    assert_eq!(s, 200, "{text}");
    let seen = ent.seen();
    assert_eq!(seen.len(), 2, "one copy for every spelling: {seen:?}");
    for s in &seen {
        let host: Vec<&str> = s
            .headers
            .iter()
            .filter(|(k, _)| k == "host")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(host, ["ent.fr"], "{}", s.raw);
    }
    // A purge names the host in any spelling too.
    let r = client()
        .post(e.admin_url("/admin/cache/purge"))
        .body(r#"{"url": "/files/a.pdf", "host": "ENT.fr.:80"}"#)
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    let (s, _) = send_head(addr, "GET /files/a.pdf HTTP/1.1\r\nHost: ent.fr\r\n").await;
    assert_eq!(s, 200);
    assert_eq!(ent.hits_on("/files/a.pdf"), 2, "purged: {:?}", ent.seen());
    // A non-default port is kept.
    let (s, _) = send_head(addr, "GET /notes/y HTTP/1.1\r\nHost: Ent.fr:8080\r\n").await;
    assert_eq!(s, 200);
    let last = ent.seen().last().cloned().expect("seen");
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "host" && v == "ent.fr:8080"),
        "{last:?}"
    );
}

/// In front of a Windows ENT (`case_insensitive: true`), an 8.3 short name or a character
/// Windows reads as ASCII is another spelling of a protected path: refused (400), never
/// forwarded. In front of a case-sensitive ENT (the default) they are names of their own,
/// forwarded as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_short_names_and_lookalikes_are_refused_in_front_of_a_windows_ent() {
    let ent = LenientEnt::start().await;
    ent.set_case_insensitive(true);
    ent.set_windows_lookalikes(true);
    let e = start(ent.addr, ", paths: { case_insensitive: true }");
    let addr = e.proxy;
    let lookalikes = [
        "/VISIO~1/room",
        "/vis~1/room",
        "/visio~1.x/room",
        "/%56ISIO%7E1/room",
        "/visio%EF%BC%8Froom",
        "/%EF%BD%96isio/room",
        "/%EF%BC%B6%EF%BC%A9%EF%BC%B3%EF%BC%A9%EF%BC%AF/room",
        "/x%EF%BC%8F%EF%BC%8E%EF%BC%8E%EF%BC%8Fvisio/room",
        "/x/..%EF%BC%8Fvisio/room",
    ];
    for t in lookalikes {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 400, "{t}: {body}");
    }
    // The switched-off feature was never reached, by any of them.
    assert_eq!(ent.hits_on("/visio/room"), 0, "{:?}", ent.seen());
    // Names that only look close still pass.
    for t in ["/~user/page", "/v1/page", "/caf%C3%A9/page"] {
        let (s, body) = get(addr, t).await;
        assert_eq!(s, 200, "{t}: {body}");
    }
    drop(e);

    // Default (case-sensitive, not Windows): other names, forwarded as sent.
    let ent2 = LenientEnt::start().await;
    let e = start(ent2.addr, "");
    for t in ["/SECRET~1/page", "/a%EF%BC%8Fb"] {
        let (s, body) = get(e.proxy, t).await;
        assert_eq!(s, 200, "{t}: {body}");
    }
    let raws: Vec<String> = ent2.seen().into_iter().map(|s| s.raw).collect();
    assert_eq!(raws, ["/SECRET~1/page", "/a%EF%BC%8Fb"]);
}
