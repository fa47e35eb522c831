//! Live reload (file change, SIGHUP, admin API), the admin API, and shutdown signals.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn yaml(a: std::net::SocketAddr, b: std::net::SocketAddr, files_to_b: bool, extra: &str) -> String {
    let files_origin = if files_to_b { "b" } else { "a" };
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0"{extra} }}
server: {{ threads: 2, grace_period: 1s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  a: {{ servers: ["{a}"] }}
  b: {{ servers: ["{b}"] }}
routes:
  - name: files
    match: {{ path_prefix: /files/ }}
    origin: {files_origin}
  - name: rest
    origin: a
"#
    )
}

async fn server_of(c: &reqwest::Client, url: &str) -> String {
    let r = c.get(url).send().await.expect("req");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    v["server"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_sighup_and_bad_file() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let e = Ecluse::start(&yaml(a.addr, b.addr, false, ""));
    let c = client();
    assert_eq!(server_of(&c, &e.url("/files/1")).await, "a");

    // Edit the file: the watcher picks it up.
    e.write_config(&yaml(a.addr, b.addr, true, ""));
    eventually("file change applied", Duration::from_secs(10), async || {
        server_of(&c, &e.url("/files/1")).await == "b"
    })
    .await;
    assert_eq!(
        e.metric("ecluse_config_reloads_total", &[("result", "ok")]),
        1.0
    );

    // A broken file keeps the running config, and the failure is counted.
    e.write_config(
        "listen: [\"127.0.0.1:0\"]\norigins: {}\nroutes:\n  - name: x\n    origin: nowhere\n",
    );
    eventually("bad reload counted", Duration::from_secs(10), async || {
        e.metric("ecluse_config_reloads_total", &[("result", "error")]) >= 1.0
    })
    .await;
    assert_eq!(
        server_of(&c, &e.url("/files/1")).await,
        "b",
        "old config still serving"
    );
    assert!(e
        .stderr_text()
        .contains("routes[0].origin: origin `nowhere` is not defined"));

    // SIGHUP after writing a good file with the watcher off.
    let mut y = yaml(a.addr, b.addr, false, "");
    y = y.replace(
        "grace_period: 1s,",
        "grace_period: 1s, watch_config: false,",
    );
    e.write_config(&y);
    // The watcher sees this file (it still had watch_config on), so to prove SIGHUP alone
    // works, write a second change after the first is live.
    eventually("watch disabled", Duration::from_secs(10), async || {
        server_of(&c, &e.url("/files/1")).await == "a"
    })
    .await;
    let version_before: serde_json::Value = c
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    e.write_config(&y.replace("origin: a\n  - name: rest", "origin: b\n  - name: rest"));
    // Not applied without a trigger (watcher off)...
    let v2: serde_json::Value = c
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert_eq!(version_before["config"]["version"], v2["config"]["version"]);
    e.signal(libc::SIGHUP);
    eventually(
        "SIGHUP reload applied",
        Duration::from_secs(10),
        async || server_of(&c, &e.url("/files/1")).await == "b",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_token_state_and_reload() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let token = "s3cr3t-token-for-tests-0123456789";
    let cfg = yaml(a.addr, b.addr, false, ", token_file: admin.token");
    let e = Ecluse::start_with(
        &cfg,
        &[("admin.token", format!("{token}\n").as_bytes())],
        |_| {},
    );
    let c = client();

    let r = c.get(e.admin_url("/healthz")).send().await.expect("req");
    assert_eq!(r.status(), 200);
    let r = c.get(e.admin_url("/metrics")).send().await.expect("req");
    let text = r.text().await.expect("text");
    for name in [
        "ecluse_config_info",
        "ecluse_origin_server_up",
        "ecluse_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("ecluse_"),
            "metric without the ecluse_ prefix: {line}"
        );
    }

    // The state is for ops: with a token configured it needs it too.
    let r = c
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    let state: serde_json::Value = c
        .get(e.admin_url("/admin/state"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(state["config"]["version"], 1);
    assert_eq!(state["config"]["hash"].as_str().map(str::len), Some(16));
    assert_eq!(state["routes"][0]["name"], "files");
    let state_text = state.to_string();
    assert!(
        !state_text.contains(token),
        "the token must never appear in /admin/state"
    );

    // Mutating endpoints: token required, checked exactly.
    let r = c
        .post(e.admin_url("/admin/reload"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = c
        .post(e.admin_url("/admin/reload"))
        .bearer_auth("s3cr3t-token-for-tests-012345678X")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 401);
    let r = c
        .get(e.admin_url("/admin/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 405);

    // Reload through the API: unchanged, then changed, then invalid (422 + diagnostics).
    let r = c
        .post(e.admin_url("/admin/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["result"], "unchanged");

    let mut changed = yaml(a.addr, b.addr, true, ", token_file: admin.token");
    changed = changed.replace(
        "grace_period: 1s,",
        "grace_period: 1s, watch_config: false,",
    );
    e.write_config(&changed);
    let r = c
        .post(e.admin_url("/admin/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    let v: serde_json::Value = r.json().await.expect("json");
    // The file watcher may have won the race; either way the new config is live.
    assert!(
        v["result"] == "reloaded" || v["result"] == "unchanged",
        "{v}"
    );
    assert_eq!(server_of(&c, &e.url("/files/x")).await, "b");

    e.write_config("listen: [\"127.0.0.1:0\"]\nadmin: { token_file: admin.token }\norigins: { a: { servers: [\"bad\"] } }\nroutes: [{ name: r, origin: a }]\n");
    let r = c
        .post(e.admin_url("/admin/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(
        v["diagnostics"][0]
            .as_str()
            .unwrap_or("")
            .contains("origins.a.servers[0]"),
        "{v}"
    );
    assert_eq!(
        server_of(&c, &e.url("/files/x")).await,
        "b",
        "still the last good config"
    );

    let r = c
        .post(e.admin_url("/admin/reload"))
        .bearer_auth(token)
        .body("{not json")
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 400);
    let r = c
        .post(e.admin_url("/admin/nope"))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_during_reloads_under_load() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let e = Arc::new(Ecluse::start(&yaml(a.addr, b.addr, false, "")));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (e, stop, ok, failed) = (e.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match c.get(e.url("/files/x")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let c = client();
    for i in 0..10 {
        e.write_config(&yaml(a.addr, b.addr, i % 2 == 0, ""));
        let want = if i % 2 == 0 { "b" } else { "a" };
        eventually("reload applied", Duration::from_secs(10), async || {
            server_of(&c, &e.url("/files/x")).await == want
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("join");
    }
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "load ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request may fail during a reload"
    );
    assert!(e.metric("ecluse_config_reloads_total", &[("result", "ok")]) >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_sigint_stops_fast() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let mut e = Ecluse::start(&yaml(a.addr, b.addr, false, ""));
    e.signal(libc::SIGTERM);
    // During the grace period /readyz says 503 while requests are still served.
    let c = client();
    eventually(
        "readyz 503 while draining",
        Duration::from_secs(5),
        async || matches!(c.get(e.admin_url("/readyz")).send().await, Ok(r) if r.status() == 503),
    )
    .await;
    let status = e
        .wait_exit(Duration::from_secs(15))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");

    let mut e = Ecluse::start(&yaml(a.addr, b.addr, false, ""));
    let t0 = std::time::Instant::now();
    e.signal(libc::SIGINT);
    e.wait_exit(Duration::from_secs(5))
        .expect("SIGINT stops fast");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// #17: a rejected reload logs every problem of the new file in one go, as `ecluse check`
/// does (same loader): a wrong type and an unknown key do not hide an undefined origin or
/// a bad duration elsewhere. The running config stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_logs_every_problem() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let good = yaml(a.addr, b.addr, false, "");
    let e = Ecluse::start(&good);
    let c = client();
    assert_eq!(server_of(&c, &e.url("/files/1")).await, "a");

    let bad = good
        .replace("threads: 2,", "threads: two,")
        .replace(
            "match: { path_prefix: /files/ }",
            "match: { path_prefx: /files/ }",
        )
        .replace("origin: a\n", "origin: nowhere\n")
        .replace("shutdown_timeout: 2s", "shutdown_timeout: 2 parsecs");
    assert_ne!(bad, good);
    e.write_config(&bad);
    e.signal(libc::SIGHUP);
    let wanted = [
        "server.threads: expected an integer",
        "server.shutdown_timeout: `2 parsecs`",
        "routes[0].match: unknown key `path_prefx` (did you mean `path_prefix`?)",
        "routes[1].origin: origin `nowhere` is not defined",
    ];
    eventually(
        "every problem logged",
        Duration::from_secs(10),
        async || {
            let log = e.stderr_text();
            wanted.iter().all(|w| log.contains(w))
        },
    )
    .await;
    assert_eq!(
        server_of(&c, &e.url("/files/1")).await,
        "a",
        "old config still serving"
    );
}
