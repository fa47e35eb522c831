//! Degradation through the real proxy: forced levels and features, and the simulated ENT
//! driven past its capacity.

mod common;

use common::*;
use ecluse::demo::{DemoOrigin, OriginOptions};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn yaml(origin: std::net::SocketAddr, max_inflight: u32, hold: &str) -> String {
    yaml_with(origin, max_inflight, hold, "")
}

fn yaml_with(
    origin: std::net::SocketAddr,
    max_inflight: u32,
    hold: &str,
    origin_extra: &str,
) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2 }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: {max_inflight}, health_check: {{ disabled: true }}, passive: {{ max_failures: 0 }}{origin_extra} }}
degradation:
  hold: {hold}
  levels:
    - {{ name: normal }}
    - name: busy
      disable: [visio]
      enter: {{ inflight_ratio: 0.9, p95_latency: 150ms }}
      exit: {{ inflight_ratio: 0.3, p95_latency: 40ms }}
  features:
    visio: {{ message_fr: "La visio est suspendue pendant la forte affluence ; vos cours et devoirs restent accessibles.", message_en: "Video lessons are paused while the ENT is very busy.", retry_after: 2m }}
routes:
  - {{ name: visio, match: {{ path_prefix: /visio }}, origin: ent, feature: visio }}
  - {{ name: uploads, match: {{ path_prefix: /files/upload }}, origin: ent }}
  - {{ name: ent, origin: ent }}
"#
    )
}

async fn level(e: &Ecluse) -> String {
    let v: serde_json::Value = client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    v["degradation"]["level"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_level_switches_the_feature_off_and_the_rest_stays_up() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start(&yaml(o.addr, 100, "1s"));
    let c = client();
    assert_eq!(
        c.get(e.url("/visio/cours"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    let r = c
        .post(e.admin_url("/admin/level"))
        .json(&serde_json::json!({"level": "busy", "for": "10m"}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let r = c.get(e.url("/visio/cours")).send().await.expect("r");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "120");
    let body = r.text().await.expect("body");
    assert!(body.contains("La visio est suspendue"), "{body}");
    assert!(
        body.contains("href=\"/\""),
        "a way back to what still works"
    );
    let r = c
        .get(e.url("/visio"))
        .header("accept", "application/json")
        .header("accept-language", "en")
        .send()
        .await
        .expect("r");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "feature_off");
    assert_eq!(
        v["message"],
        "Video lessons are paused while the ENT is very busy."
    );
    assert_eq!(
        c.get(e.url("/cahier")).send().await.expect("r").status(),
        200,
        "the rest stays up"
    );
    assert_eq!(
        e.metric("ecluse_feature_enabled", &[("feature", "visio")]),
        0.0
    );
    assert_eq!(e.metric("ecluse_degradation_level", &[]), 1.0);
    assert!(
        e.metric(
            "ecluse_degradation_changes_total",
            &[("to", "busy"), ("cause", "forced")]
        ) >= 1.0
    );
    assert!(e.metric("ecluse_shed_requests_total", &[("reason", "feature_off")]) >= 2.0);
    // Back to automatic.
    c.post(e.admin_url("/admin/level"))
        .json(&serde_json::json!({"level": null}))
        .send()
        .await
        .expect("r");
    assert_eq!(
        c.get(e.url("/visio/cours"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    // A feature forced off by itself, and bad admin calls.
    let r = c
        .post(e.admin_url("/admin/features/visio"))
        .json(&serde_json::json!({"on": false}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        503
    );
    c.post(e.admin_url("/admin/features/visio"))
        .json(&serde_json::json!({"on": null}))
        .send()
        .await
        .expect("r");
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        200
    );
    for (path, body) in [
        ("/admin/level", serde_json::json!({"level": "panic"})),
        ("/admin/level", serde_json::json!({"level": 3})),
        (
            "/admin/level",
            serde_json::json!({"level": "busy", "for": "soon"}),
        ),
        ("/admin/features/visio", serde_json::json!({"on": "yes"})),
    ] {
        let r = c
            .post(e.admin_url(path))
            .json(&body)
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 400, "{path} {body}");
    }
    let r = c
        .post(e.admin_url("/admin/features/chat"))
        .json(&serde_json::json!({"on": false}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_switches_visio_off_then_back_and_uploads_arrive_once() {
    // A small ENT: 8 requests at once is its comfort, 30 ms a page at rest, slower
    // with load.
    let origin = DemoOrigin::start(
        "127.0.0.1:0".parse().expect("addr"),
        OriginOptions {
            capacity: 8,
            hard_limit: 40,
            base_latency: Duration::from_millis(30),
            latency_per_inflight: Duration::from_millis(15),
            ..OriginOptions::default()
        },
    )
    .await
    .expect("origin");
    let max_inflight = 12;
    let e = Arc::new(Ecluse::start(&yaml_with(
        origin.addr(),
        max_inflight,
        "1s",
        ", adaptive_concurrency: { min: 4, tolerance: 2.0 }",
    )));
    assert_eq!(level(&e).await, "normal");

    // Surge: 48 clients hammering pages, and uploads with distinct bodies.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let refused: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for w in 0..48 {
        let (e, stop, accepted, refused, served) = (
            e.clone(),
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            served.clone(),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                i += 1;
                if w % 8 == 0 {
                    let body = format!("copie de l'élève {w}-{i}");
                    let sha = hex_sha(&body);
                    match c.post(e.url("/files/upload")).body(body).send().await {
                        Ok(r) if r.status() == 201 => accepted.lock().expect("l").push(sha),
                        Ok(r) if r.status() == 503 => refused.lock().expect("l").push(sha),
                        Ok(r) => panic!("upload answered {}", r.status()),
                        Err(err) => panic!("upload failed at the transport level: {err}"),
                    }
                } else if let Ok(r) = c.get(e.url("/pages/cahier")).send().await {
                    if r.status() == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let c = client();
    eventually(
        "visio switched off by itself",
        Duration::from_secs(15),
        async || level(&e).await == "busy",
    )
    .await;
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        503
    );
    let r = c.get(e.url("/pages/accueil")).send().await.expect("r");
    assert!(
        r.status() == 200 || r.status() == 503,
        "pages stay up (or get a fast 503 at the limit)"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    assert!(
        served.load(Ordering::Relaxed) > 50,
        "pages were served during the surge"
    );
    // Recovery: once the origin is calm again, visio comes back.
    eventually(
        "visio back after recovery",
        Duration::from_secs(30),
        async || level(&e).await == "normal",
    )
    .await;
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        200
    );

    // The origin never saw more than the hard maximum in flight.
    let peak = origin.stats().peak_inflight();
    assert!(
        peak <= max_inflight as usize,
        "origin peak in-flight {peak} > {max_inflight}"
    );
    // Every upload ecluse accepted arrived exactly once; refused ones never arrived.
    let ups = origin.stats().uploads();
    for sha in accepted.lock().expect("l").iter() {
        let n = ups
            .iter()
            .find(|u| &u.sha256_hex == sha)
            .map(|u| u.count)
            .unwrap_or(0);
        assert_eq!(n, 1, "accepted upload {sha} arrived {n} times");
    }
    for sha in refused.lock().expect("l").iter() {
        assert!(
            !ups.iter().any(|u| &u.sha256_hex == sha),
            "a refused upload reached the origin"
        );
    }
    assert!(!accepted.lock().expect("l").is_empty());
}

fn hex_sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
