//! Proxy core, end to end: real ecluse binary, real origins on port 0, real clients.

mod common;

use common::*;
use std::time::Duration;

fn yaml_two_servers(a: std::net::SocketAddr, b: std::net::SocketAddr, balance: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s, trusted_proxies: ["10.0.0.0/8"] }}
access_log: {{ enabled: false }}
origins:
  ent:
    servers: ["{a}", "{b}"]
    balance: {balance}
    health_check: {{ path: /healthz, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }}
routes:
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_and_sets_forwarded_headers() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let e = Ecluse::start(&yaml_two_servers(a.addr, b.addr, "round_robin"));
    let c = client();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let r = c
            .get(e.url("/pages/x"))
            .header("x-forwarded-for", "6.6.6.6")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        *seen
            .entry(v["server"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
        // 127.0.0.1 is not a trusted proxy: the client's XFF is replaced, not extended.
        assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
        assert_eq!(v["headers"]["x-forwarded-proto"], "http");
        assert_eq!(v["path"], "/pages/x");
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    assert!(
        e.metric(
            "ecluse_requests_total",
            &[("route", "ent"), ("status_class", "2xx")]
        ) >= 20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_xff_is_extended() {
    let a = EchoOrigin::start("a").await;
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\nserver: {{ trusted_proxies: [\"127.0.0.0/8\"] }}\naccess_log: {{ enabled: false }}\norigins:\n  ent: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ name: ent, origin: ent }}\n",
        a.addr
    );
    let e = Ecluse::start(&yaml);
    let v: serde_json::Value = client()
        .get(e.url("/"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(v["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_leaves_rotation_without_client_errors() {
    let a = EchoOrigin::start("a").await;
    let dead = dead_port();
    let e = Ecluse::start(&yaml_two_servers(a.addr, dead, "round_robin"));
    let c = client();
    // Connect failures are retried on the other server, for any method.
    for i in 0..10 {
        let r = if i % 2 == 0 {
            c.get(e.url("/")).send().await
        } else {
            c.post(e.url("/files/upload")).body("x").send().await
        }
        .expect("request");
        assert_eq!(r.status(), 200, "request {i}");
    }
    // Active checks take the dead server out of rotation.
    eventually(
        "dead server marked down",
        Duration::from_secs(10),
        async || {
            e.metric(
                "ecluse_origin_server_up",
                &[("origin", "ent"), ("server", &dead.to_string())],
            ) == 0.0
        },
    )
    .await;
    // ...and so do the active health checks, independently of passive ejection.
    eventually(
        "health check marks the dead server",
        Duration::from_secs(10),
        async || {
            let state: serde_json::Value = match c.get(e.admin_url("/admin/state")).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            state["origins"][0]["servers"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|s| s["address"] == dead.to_string() && s["healthy"] == false)
            })
        },
    )
    .await;
    let before = e.metric(
        "ecluse_origin_errors_total",
        &[("origin", "ent"), ("kind", "connect")],
    );
    for _ in 0..10 {
        assert_eq!(c.get(e.url("/")).send().await.expect("req").status(), 200);
    }
    let after = e.metric(
        "ecluse_origin_errors_total",
        &[("origin", "ent"), ("kind", "connect")],
    );
    assert_eq!(
        before, after,
        "no traffic is sent to a server out of rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_server() {
    use ecluse::demo::{DemoOrigin, OriginOptions};
    // A slow origin (every request takes 1.5 s) next to a fast one. The gap must stay
    // wide when the machine is loaded: a CPU-starved fast origin still answers in well
    // under a second, so the slow one, busy with one request, keeps losing the choice.
    let slow = DemoOrigin::start(
        "127.0.0.1:0".parse().expect("addr"),
        OriginOptions {
            base_latency: Duration::from_millis(1500),
            ..OriginOptions::default()
        },
    )
    .await
    .expect("origin");
    let fast = DemoOrigin::start(
        "127.0.0.1:0".parse().expect("addr"),
        OriginOptions::default(),
    )
    .await
    .expect("origin");
    // No health check: its probes would be counted with the requests (and a probe
    // slower than its time-out would take the slow server out of rotation).
    let yaml = yaml_two_servers(slow.addr(), fast.addr(), "least_connections");
    let probe = yaml
        .lines()
        .find(|l| l.trim_start().starts_with("health_check:"))
        .expect("the shared policy has a health check")
        .to_string();
    let e = Ecluse::start(&yaml.replace(&format!("{probe}\n"), ""));
    let c = client();
    // 4 clients, each sending 10 requests one after the other: with round robin both
    // servers would get 20; least-connections keeps sending to the one that is free.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let u = e.url("/pages/a");
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let s = c.get(&u).send().await.map(|r| r.status().as_u16());
                assert_eq!(s.expect("req"), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let s = slow.stats().requests_total();
    let f = fast.stats().requests_total();
    assert!(
        f > 2 * s,
        "fast {f} vs slow {s}: least-connections should favour the fast server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_and_origin_limit_answer_friendly_errors() {
    let a = EchoOrigin::start("a").await;
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{}"], max_inflight: 1 }}
routes:
  - name: only_ent_host
    match: {{ host: ent.example.fr, path_prefix: /, methods: [GET] }}
    origin: ent
"#,
        a.addr
    );
    let e = Ecluse::start(&yaml);
    let c = client();
    let r = c
        .get(e.url("/"))
        .header("accept-language", "en")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 404);
    assert!(r.text().await.expect("body").contains("Page not found"));
    let r = c
        .get(e.url("/"))
        .header("host", "ent.example.fr")
        .header("accept", "application/json")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let r = c
        .post(e.url("/"))
        .header("host", "ent.example.fr")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 404, "method not matched");
    let r = c
        .get(e.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("req");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_gets_504_on_time() {
    // An origin that accepts and never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{addr}"], read_timeout: 300ms, total_timeout: 1s, health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent }}
"#
    );
    let e = Ecluse::start(&yaml);
    let t0 = std::time::Instant::now();
    let r = client().get(e.url("/")).send().await.expect("req");
    let took = t0.elapsed();
    assert_eq!(r.status(), 504);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        e.metric(
            "ecluse_origin_errors_total",
            &[("origin", "ent"), ("kind", "timeout")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served() {
    let a = EchoOrigin::start("a").await;
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\naccess_log: {{ enabled: false }}\norigins:\n  ent: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ name: ent, origin: ent }}\n",
        a.addr
    );
    let e = Ecluse::start(&yaml);
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = c.get(e.url("/h2")).send().await.expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_h2_alpn() {
    let a = EchoOrigin::start("a").await;
    let cert = SelfSigned::localhost();
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\ntls: {{ listen: [\"127.0.0.1:0\"], cert_file: cert.pem, key_file: key.pem }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\naccess_log: {{ enabled: false }}\norigins:\n  ent: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ name: ent, origin: ent }}\n",
        a.addr
    );
    let e = Ecluse::start_with(&yaml, &cert.files(), |_| {});
    let tls = e.tls.expect("tls address printed");
    let c = cert.client(tls);
    let r = c
        .get(format!("https://localhost:{}/secure", tls.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
}

/// The JSON lines of `access.log` beside the node's config, once there are `at_least`.
async fn access_log_lines(e: &Ecluse, at_least: usize) -> Vec<serde_json::Value> {
    let log = e.config.with_file_name("access.log");
    let mut lines: Vec<serde_json::Value> = Vec::new();
    eventually(
        &format!("{at_least} access log lines"),
        Duration::from_secs(10),
        async || {
            lines = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            lines.len() >= at_least
        },
    )
    .await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let a = EchoOrigin::start("a").await;
    let yaml = format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\naccess_log: {{ path: access.log }}\ndegradation: {{ levels: [{{ name: normal }}] }}\norigins:\n  ent: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ name: files, match: {{ path_prefix: /files/ }}, origin: ent, cache: {{ ttl: 1m }} }}\n",
        a.addr
    );
    let e = Ecluse::start(&yaml);
    let c = client();
    assert_eq!(
        c.get(e.url("/files/a.pdf?x=1"))
            .send()
            .await
            .expect("req")
            .status(),
        200
    );
    assert_eq!(
        c.get(e.url("/elsewhere"))
            .send()
            .await
            .expect("req")
            .status(),
        404
    );
    let lines = access_log_lines(&e, 2).await;
    let ok = &lines[0];
    assert_eq!(ok["route"], "files");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/files/a.pdf", "the query string is not logged");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["upstream"], a.addr.to_string());
    assert_eq!(ok["attempts"], 1);
    assert_eq!(ok["cache"], "miss");
    assert_eq!(ok["level"], "normal");
    assert!(ok["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(ok["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    let miss = &lines[1];
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["decision"], "no_route");
    assert!(miss["route"].is_null());
}

/// The log line says what each policy decided: the rate limit's result (`limited`,
/// `dry_run_limited`) and the waiting room's decision (`direct`, `queued`, `inside`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_records_rate_limit_and_queue_decisions() {
    let a = EchoOrigin::start("a").await;
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ path: access.log }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 60, secret_file: keys }}
origins:
  ent: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: api, match: {{ path_prefix: /api/ }}, origin: ent, rate_limits: [{{ key: route, rate: 1/m, burst: 1 }}] }}
  - {{ name: trial, match: {{ path_prefix: /trial/ }}, origin: ent, rate_limits: [{{ key: route, rate: 1/m, burst: 1, mode: dry_run }}] }}
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent, waiting_room: ent }}
"#,
        a.addr
    );
    let e = Ecluse::start_with(
        &yaml,
        &[("keys", b"k1:0123456789abcdef0123456789abcdef0123\n")],
        |_| {},
    );
    let c = client();
    let jar = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .expect("client")
    };
    let get = async |c: &reqwest::Client, path: &str| {
        c.get(e.url(path)).send().await.expect("req").status()
    };
    assert_eq!(get(&c, "/api/a").await, 200);
    assert_eq!(get(&c, "/api/b").await, 429);
    assert_eq!(get(&c, "/trial/a").await, 200);
    assert_eq!(
        get(&c, "/trial/b").await,
        200,
        "a dry-run limit lets it through"
    );
    let first = jar();
    assert_eq!(get(&first, "/home").await, 200);
    assert_eq!(get(&first, "/cahier").await, 200);
    let second = jar();
    assert_eq!(get(&second, "/home").await, 200, "the queue page");

    let lines = access_log_lines(&e, 7).await;
    // Lines of one connection are in order; across connections, look them up by path.
    let line = |path: &str, nth: usize| -> &serde_json::Value {
        lines
            .iter()
            .filter(|l| l["path"] == path)
            .nth(nth)
            .unwrap_or_else(|| panic!("log line {nth} for {path} in {lines:?}"))
    };
    assert!(
        line("/api/a", 0)["rate_limit"].is_null(),
        "allowed: no result"
    );
    assert_eq!(line("/api/b", 0)["rate_limit"], "limited");
    assert_eq!(line("/api/b", 0)["status"], 429);
    assert!(line("/trial/a", 0)["rate_limit"].is_null());
    assert_eq!(line("/trial/b", 0)["rate_limit"], "dry_run_limited");
    assert_eq!(line("/trial/b", 0)["status"], 200);
    assert_eq!(
        line("/home", 0)["queue"],
        "direct",
        "spare capacity: let in"
    );
    assert_eq!(line("/cahier", 0)["queue"], "inside", "the session goes on");
    assert_eq!(line("/home", 1)["queue"], "queued", "the room is full");
    assert!(
        line("/api/a", 0)["queue"].is_null(),
        "no room on that route"
    );
}
