//! The edge owns forwarding headers (issue #17, class 3), through the real proxy in front
//! of `LenientEnt`, a backend that honours `X-Original-URL`, `X-Forwarded-Host`,
//! `Forwarded: host=`, `X-Forwarded-Port`/`-Prefix` and `X-Real-IP`.

mod common;

use common::lenient_ent::{LenientEnt, Seen};
use common::*;
use std::net::SocketAddr;

fn yaml(origin: SocketAddr, server: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
server: {{ {server} }}
origins:
  ent: {{ servers: ["{origin}"] }}
routes:
  - name: public_pages
    match: {{ path_prefix: /pub/ }}
    origin: ent
    cache: {{ mode: public, ttl: 10m }}
  - name: shared_pages
    match: {{ path_prefix: /shared/ }}
    origin: ent
    cache: {{ mode: shared, ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

/// Every name the edge owns that a client might try, as sent on the wire.
const ATTACKS: &[(&str, &str)] = &[
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "6666"),
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Forwarded-Proto", "evil"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Server", "evil.example"),
    ("X-Forwarded-Scheme", "evil"),
    ("X-Forwarded-Ssl", "evil"),
    ("X-Forwarded-User", "evil-teacher"),
    ("X-Forwarded-Client-Cert", "evil"),
    ("Forwarded", "for=6.6.6.6;host=evil.example;proto=evil"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Original-URL", "/evil/admin"),
    ("X-Rewrite-URL", "/evil/admin"),
    ("X-Original-URI", "/evil/admin"),
    ("X-Forwarded-Uri", "/evil/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("Front-End-Https", "evil"),
    ("X-Url-Scheme", "evil"),
    ("X-Client-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Cluster-Client-IP", "6.6.6.6"),
    ("Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("X-Host", "evil.example"),
    ("X-Remote-User", "evil-teacher"),
];

/// The spellings of `name` a lenient backend reads as `name`.
fn spellings(name: &str) -> Vec<String> {
    vec![
        name.to_string(),
        name.to_ascii_uppercase(),
        name.to_ascii_lowercase(),
        name.replace('-', "_"),
        name.to_ascii_uppercase().replace('-', "_"),
        name.replace('-', "."),
    ]
}

/// What the backend reads a field name as (CGI: uppercase, `-`/`.` as `_`).
fn cgi(name: &str) -> String {
    name.to_ascii_uppercase().replace(['-', '.'], "_")
}

fn evil_in(seen: &Seen) -> Vec<(String, String)> {
    seen.headers
        .iter()
        .filter(|(_, v)| v.contains("evil") || v.contains("6.6.6.6") || v == "DELETE")
        .cloned()
        .collect()
}

async fn send(
    addr: SocketAddr,
    path: &'static str,
    headers: Vec<(String, String)>,
) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        raw_request(addr, "GET", path, &h, b"").expect("request")
    })
    .await
    .expect("join")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_untrusted_peer_no_spelling_of_a_forwarding_header_reaches_the_ent() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ""));
    let mut n = 0;
    for (name, value) in ATTACKS {
        for spelled in spellings(name) {
            // Twice on separate lines, too: every line goes.
            let h = vec![
                (spelled.clone(), value.to_string()),
                (spelled.clone(), value.to_string()),
            ];
            let (status, body) = send(e.proxy, "/echo", h).await;
            assert_eq!(status, 200, "{spelled}: {body}");
            n += 1;
            let seen = ent.seen();
            assert_eq!(
                seen.len(),
                n,
                "one request reached the ENT per request sent"
            );
            let last = seen.last().expect("seen");
            assert!(
                evil_in(last).is_empty(),
                "{spelled}: the ENT received {:?}",
                evil_in(last)
            );
            assert!(
                last.headers
                    .iter()
                    .all(|(k, _)| !k.contains('_') && !k.contains('.')),
                "{spelled}: {:?}",
                last.headers
            );
            let v = json(&body);
            assert_eq!(v["path"], "/echo", "{spelled}: the ENT routed elsewhere");
            assert_eq!(v["method"], "GET");
            assert_eq!(v["host"], e.proxy.to_string(), "{spelled}");
            assert_eq!(v["real_ip"], "127.0.0.1", "{spelled}");
            assert_eq!(v["port"], e.proxy.port().to_string(), "{spelled}");
            assert!(v["prefix"].is_null(), "{spelled}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecluse_writes_what_the_ent_receives() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, "forwarding: { forwarded_header: true }"));
    let (status, _) = send(e.proxy, "/echo", vec![]).await;
    assert_eq!(status, 200);
    let seen = ent.seen();
    let h = |n: &str| -> Vec<String> {
        seen[0]
            .headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(h("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(h("x-forwarded-proto"), ["http"]);
    assert_eq!(h("x-forwarded-host"), [e.proxy.to_string()]);
    assert_eq!(h("x-forwarded-port"), [e.proxy.port().to_string()]);
    assert_eq!(h("x-real-ip"), ["127.0.0.1"]);
    // `host:port` is not a token: quoted (RFC 7239 §4).
    assert_eq!(
        h("forwarded"),
        [format!("for=127.0.0.1;host=\"{}\";proto=http", e.proxy)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_is_written_in_brackets_and_quoted() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let ent = LenientEnt::start().await;
    let y = yaml(ent.addr, "forwarding: { forwarded_header: true }")
        .replace(r#"listen: ["127.0.0.1:0"]"#, r#"listen: ["[::1]:0"]"#);
    let e = Ecluse::start(&y);
    let (status, _) = send(e.proxy, "/echo", vec![]).await;
    assert_eq!(status, 200);
    let seen = ent.seen();
    let fwd: Vec<&String> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "forwarded")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        fwd,
        [&format!("for=\"[::1]\";host=\"{}\";proto=http", e.proxy)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_headers_pass_and_are_extended() {
    let ent = LenientEnt::start().await;
    // Second ecluse (the one in front of the ENT) trusts the first (127.0.0.1).
    let inner = Ecluse::start(&yaml(
        ent.addr,
        r#"trusted_proxies: ["127.0.0.1"], forwarding: { forwarded_header: true }"#,
    ));
    let outer = Ecluse::start(&yaml(inner.proxy, "forwarding: { forwarded_header: true }"));
    // Through both: the client's headers die at the edge, the edge's own pass the inner
    // one and are extended there.
    let mut h: Vec<(String, String)> = ATTACKS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.push(("X_Forwarded_Host".into(), "evil.example".into()));
    let (status, body) = send(outer.proxy, "/echo", h).await;
    assert_eq!(status, 200, "{body}");
    let seen = ent.seen();
    let last = seen.last().expect("seen");
    assert!(evil_in(last).is_empty(), "{:?}", evil_in(last));
    let get = |n: &str| {
        last.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("x-forwarded-for"), "127.0.0.1, 127.0.0.1");
    assert_eq!(get("x-forwarded-host"), outer.proxy.to_string());
    assert_eq!(get("x-forwarded-port"), outer.proxy.port().to_string());
    assert_eq!(
        get("forwarded"),
        format!(
            "for=127.0.0.1;host=\"{0}\";proto=http, for=127.0.0.1;host=\"{0}\";proto=http",
            outer.proxy
        )
    );
    let v = json(&body);
    assert_eq!(v["host"], outer.proxy.to_string());
    assert_eq!(v["path"], "/echo");

    // Straight to the trusted one: a load balancer's headers are kept and extended, a
    // rewrite header is removed all the same.
    let h = vec![
        ("X-Forwarded-For".into(), "203.0.113.9".into()),
        ("X-Forwarded-Host".into(), "ent.example".into()),
        ("X-Forwarded-Port".into(), "443".into()),
        ("X-Forwarded-Proto".into(), "https".into()),
        ("X-Forwarded-Prefix".into(), "/ent".into()),
        ("Forwarded".into(), "for=203.0.113.9;proto=https".into()),
        ("X-Real-IP".into(), "198.51.100.1".into()),
        ("X-Original-URL".into(), "/evil/admin".into()),
        ("X_Rewrite_URL".into(), "/evil/admin".into()),
    ];
    let (status, body) = send(inner.proxy, "/echo", h).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["host"], "ent.example");
    assert_eq!(v["port"], "443");
    assert_eq!(v["prefix"], "/ent");
    // ecluse's own idea of the client: the right-most untrusted X-Forwarded-For hop.
    assert_eq!(v["real_ip"], "203.0.113.9");
    let seen = ent.seen();
    let last = seen.last().expect("seen");
    let get = |n: &str| {
        last.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(get("x-forwarded-proto"), "https");
    assert_eq!(
        get("forwarded"),
        format!(
            "for=203.0.113.9;proto=https, for=127.0.0.1;host=\"{}\";proto=http",
            inner.proxy
        )
    );
    assert!(evil_in(last).is_empty(), "{:?}", evil_in(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoning_attempt_never_changes_what_the_next_client_gets() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ""));
    for path in ["/pub/home", "/shared/home"] {
        // The attacker asks first, so whatever the ENT answers it is what gets stored.
        let attack: Vec<(String, String)> = ATTACKS
            .iter()
            .flat_map(|(k, v)| {
                [
                    (k.to_string(), v.to_string()),
                    (k.replace('-', "_"), v.to_string()),
                ]
            })
            .collect();
        let (status, poisoned) = send(e.proxy, path, attack).await;
        assert_eq!(status, 200);
        let (status, victim) = send(e.proxy, path, vec![]).await;
        assert_eq!(status, 200);
        assert_eq!(
            ent.hits_on(path),
            1,
            "{path}: the second answer came from the cache"
        );
        assert_eq!(json(&victim), json(&poisoned));
        let v = json(&victim);
        assert_eq!(v["path"], path);
        assert_eq!(v["host"], e.proxy.to_string());
        assert_eq!(v["real_ip"], "127.0.0.1");
        assert!(v["prefix"].is_null());
        assert!(
            !victim.contains("evil") && !victim.contains("6.6.6.6"),
            "{victim}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_header_names_are_dropped_rejected_or_kept_as_ops_say() {
    let ent = LenientEnt::start().await;
    let drop = Ecluse::start(&yaml(ent.addr, ""));
    let (status, _) = send(
        drop.proxy,
        "/echo",
        vec![
            ("X_Custom".into(), "1".into()),
            ("X-Fine".into(), "2".into()),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<String> = ent.seen()[0]
        .headers
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!names.contains(&"x_custom".to_string()), "{names:?}");
    assert!(names.contains(&"x-fine".to_string()), "{names:?}");

    let reject = Ecluse::start(&yaml(ent.addr, "forwarding: { odd_header_names: reject }"));
    let (status, _) = send(reject.proxy, "/echo", vec![("X_Custom".into(), "1".into())]).await;
    assert_eq!(status, 400);
    assert_eq!(
        ent.seen().len(),
        1,
        "a refused request never reaches the ENT"
    );

    let keep = Ecluse::start(&yaml(
        ent.addr,
        "forwarding: { odd_header_names: keep, strip_from_untrusted: [X-Ent-Role] }",
    ));
    let h = vec![
        ("X_Custom".into(), "1".into()),
        ("X_Forwarded_Host".into(), "evil.example".into()),
        ("X.Original.URL".into(), "/evil/admin".into()),
        ("X_ENT_ROLE".into(), "evil-admin".into()),
        ("X-Ent-Role".into(), "evil-admin".into()),
    ];
    let (status, body) = send(keep.proxy, "/echo", h).await;
    assert_eq!(status, 200);
    let seen = ent.seen();
    let last = seen.last().expect("seen");
    let cgi_names: Vec<String> = last.headers.iter().map(|(k, _)| cgi(k)).collect();
    assert!(cgi_names.contains(&"X_CUSTOM".to_string()), "{cgi_names:?}");
    assert!(evil_in(last).is_empty(), "{:?}", evil_in(last));
    assert_eq!(json(&body)["path"], "/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_gateways_identity_header_makes_the_request_credentialed() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(
        ent.addr,
        r#"trusted_proxies: ["127.0.0.1"], forwarding: { strip_from_untrusted: [X-Ent-User] }"#,
    ));
    // A `public` route never stores nor serves a credentialed request's answer: each
    // user's request reaches the ENT.
    for user in ["alice", "bob"] {
        for name in ["X-Ent-User", "X-Forwarded-User"] {
            let (status, _) =
                send(e.proxy, "/pub/timetable", vec![(name.into(), user.into())]).await;
            assert_eq!(status, 200);
        }
    }
    assert_eq!(ent.hits_on("/pub/timetable"), 4);
    let seen = ent.seen();
    assert!(seen.iter().any(|s| s
        .headers
        .iter()
        .any(|(k, v)| k == "x-ent-user" && v == "bob")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_same_headers_are_removed() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr, ""));
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let mut req = c.get(e.url("/pub/h2"));
    for (name, value) in ATTACKS {
        req = req
            .header(*name, *value)
            .header(name.replace('-', "_"), *value);
    }
    let r = req.send().await.expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v = json(&r.text().await.unwrap());
    assert_eq!(v["path"], "/pub/h2");
    assert_eq!(v["host"], e.proxy.to_string());
    assert_eq!(v["real_ip"], "127.0.0.1");
    let seen = ent.seen();
    let last = seen.last().expect("seen");
    assert!(evil_in(last).is_empty(), "{:?}", evil_in(last));
}
