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
    // Page answers to requests sent once the level is `busy`: served, shed by ecluse
    // (fast 503 with Retry-After), anything else (origin errors, time-outs).
    let busy = Arc::new(AtomicBool::new(false));
    let pages = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let mut load = Vec::new();
    for w in 0..48 {
        let (e, stop, accepted, refused, busy, pages) = (
            e.clone(),
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            busy.clone(),
            pages.clone(),
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
                } else {
                    let after_switch = busy.load(Ordering::Relaxed);
                    let kind = match c.get(e.url("/pages/cahier")).send().await {
                        Ok(r) if r.status() == 200 => 0,
                        Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => 1,
                        _ => 2,
                    };
                    if after_switch {
                        pages[kind].fetch_add(1, Ordering::Relaxed);
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
    busy.store(true, Ordering::Relaxed);
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        503
    );
    // While visio is off the pages stay up. Under the surge (5x what the ENT can take,
    // clients retrying at once) most page requests are the excess, refused in a
    // millisecond; what matters is that the ENT keeps serving pages (60 within the
    // deadline; about 50/s on a quiet machine) and never fails one.
    let t0 = std::time::Instant::now();
    eventually(
        "pages served after the switch",
        Duration::from_secs(15),
        async || pages[0].load(Ordering::Relaxed) >= 60,
    )
    .await;
    let took = t0.elapsed();
    let [ok, shed, failed] = [0, 1, 2].map(|i| pages[i].load(Ordering::Relaxed));
    assert_eq!(
        level(&e).await,
        "busy",
        "still busy while the pages were counted"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    eprintln!("after the switch, under the surge: {ok} pages served in {took:?}, {shed} shed, {failed} failed");
    assert_eq!(failed, 0, "no page failed at the origin or timed out");
    // A normal load while the level is still `busy` (visio off): pages are served.
    assert_eq!(
        c.get(e.url("/visio")).send().await.expect("r").status(),
        503
    );
    let calm: Vec<_> = (0..4)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move {
                let c = client();
                let mut ok = 0;
                for _ in 0..25 {
                    if let Ok(r) = c.get(e.url("/pages/cahier")).send().await {
                        ok += usize::from(r.status() == 200);
                    }
                }
                ok
            })
        })
        .collect();
    let mut calm_ok = 0;
    for t in calm {
        calm_ok += t.await.expect("calm task");
    }
    assert_eq!(
        level(&e).await,
        "busy",
        "still busy while the calm pages were counted"
    );
    eprintln!("calm pages while busy: {calm_ok} of 100 served");
    assert!(
        calm_ok >= 90,
        "pages stay up while visio is off: {calm_ok} of 100 served"
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

/// An origin the test steers: `/hold…` requests wait until the test lets them go, `/slow`
/// takes 20 ms, a POST is counted by the checksum of its body (`201`), anything else
/// takes 5 ms (so every exchange is slower than a 1 ms `target_p50`).
struct GateOrigin {
    addr: std::net::SocketAddr,
    gate: Arc<tokio::sync::Semaphore>,
    inflight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    uploads: Arc<Mutex<std::collections::HashMap<String, usize>>>,
}

impl GateOrigin {
    async fn start() -> GateOrigin {
        use http_body_util::{BodyExt, Full};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let o = GateOrigin {
            addr: l.local_addr().expect("addr"),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            inflight: Arc::default(),
            peak: Arc::default(),
            uploads: Arc::default(),
        };
        let (gate, inflight, peak, uploads) = (
            o.gate.clone(),
            o.inflight.clone(),
            o.peak.clone(),
            o.uploads.clone(),
        );
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (gate, inflight, peak, uploads) = (
                    gate.clone(),
                    inflight.clone(),
                    peak.clone(),
                    uploads.clone(),
                );
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (gate, inflight, peak, uploads) = (
                                gate.clone(),
                                inflight.clone(),
                                peak.clone(),
                                uploads.clone(),
                            );
                            async move {
                                let now = inflight.fetch_add(1, Ordering::SeqCst) + 1;
                                peak.fetch_max(now, Ordering::SeqCst);
                                let path = req.uri().path().to_string();
                                let post = req.method() == hyper::Method::POST;
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = if path.starts_with("/hold") {
                                    if let Ok(p) = gate.acquire().await {
                                        p.forget();
                                    }
                                    200
                                } else if post {
                                    let sha = hex_sha(&String::from_utf8_lossy(&body));
                                    *uploads.lock().expect("l").entry(sha).or_default() += 1;
                                    201
                                } else {
                                    let ms = if path == "/slow" { 20 } else { 5 };
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                    200
                                };
                                inflight.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(bytes::Bytes::from_static(b"ok")))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                });
            }
        });
        o
    }

    fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    fn arrivals(&self, sha: &str) -> usize {
        self.uploads
            .lock()
            .expect("l")
            .get(sha)
            .copied()
            .unwrap_or(0)
    }
}

const ROOM_KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_anonymous_visitors_are_shed_first_staff_and_sessions_last() {
    let o = GateOrigin::start().await;
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, trusted_proxies: ["127.0.0.1"] }}
access_log: {{ enabled: false }}
priority_classes:
  - {{ name: staff, headers: {{ X-ENT-Role: [enseignant] }} }}
waiting_rooms:
  ent: {{ active_users: 1000, new_users_per_minute: 60000, secret_file: keys }}
origins:
  ent: {{ servers: ["{}"], max_inflight: 6, queue_timeout: 5s, adaptive_concurrency: {{ min: 2, target_p50: 1ms }}, health_check: {{ disabled: true }}, passive: {{ max_failures: 0 }} }}
routes:
  - {{ name: room, match: {{ path_prefix: /room }}, origin: ent, waiting_room: ent }}
  - {{ name: ent, origin: ent }}
"#,
        o.addr
    );
    let e = Arc::new(Ecluse::start_with(
        &yaml,
        &[("keys", ROOM_KEY.as_bytes())],
        |_| {},
    ));
    let c = client();
    let limit = || e.metric("ecluse_origin_concurrency_limit", &[("origin", "ent")]);
    let shed = |class: &str| {
        e.metric(
            "ecluse_shed_requests_total",
            &[
                ("origin", "ent"),
                ("reason", "concurrency"),
                ("class", class),
            ],
        )
    };
    // A student admitted by the waiting room (spare capacity: at once).
    let student = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    assert_eq!(
        student
            .get(e.url("/room/accueil"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );

    // Every exchange is slower than target_p50: the adaptive limit falls to its minimum
    // (2), well under the hard maximum (6).
    eventually(
        "the adaptive limit shrinks to its minimum",
        Duration::from_secs(15),
        async || {
            let batch: Vec<_> = (0..8)
                .map(|_| {
                    let (c, u) = (c.clone(), e.url("/slow"));
                    tokio::spawn(async move { c.get(u).send().await.map(|r| r.status()) })
                })
                .collect();
            for b in batch {
                let _ = b.await;
            }
            limit() == 2.0
        },
    )
    .await;

    // Two anonymous requests hold the two slots of the adaptive limit.
    let mut held = Vec::new();
    for i in 0..2 {
        let (c, u) = (c.clone(), e.url(&format!("/hold/{i}")));
        held.push(tokio::spawn(async move {
            c.get(u).send().await.map(|r| r.status())
        }));
    }
    eventually("two requests held at the origin", DEADLINE, async || {
        o.inflight() == 2
    })
    .await;
    assert_eq!(limit(), 2.0, "the limit did not move meanwhile");

    // Anonymous visitors: a fast 503 with Retry-After, counted under class `none`; an
    // anonymous upload is refused before its body is read and never arrives.
    let none_before = shed("none");
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let r = c.get(e.url("/pages/cahier")).send().await.expect("r");
        let took = t0.elapsed();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(took < Duration::from_millis(200), "shed in {took:?}");
    }
    let anon_upload = "copie anonyme".to_string();
    let r = c
        .post(e.url("/files/upload"))
        .body(anon_upload.clone())
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 503);
    assert!(shed("none") >= none_before + 4.0);

    // The admitted student and the staff still get through (reserve above the limit,
    // and the priority lane up to the hard maximum), and a staff upload arrives once.
    let r = student.get(e.url("/room/cahier")).send().await.expect("r");
    assert_eq!(
        r.status(),
        200,
        "an admitted session is served at the limit"
    );
    let r = c
        .get(e.url("/pages/cahier"))
        .header("x-ent-role", "enseignant")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200, "staff served at the limit");
    let copy = "corrigé du devoir 3".to_string();
    let r = c
        .post(e.url("/files/upload"))
        .header("x-ent-role", "enseignant")
        .body(copy.clone())
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 201);
    assert_eq!(o.arrivals(&hex_sha(&copy)), 1);

    // Staff fill the hard maximum: a staff upload now waits for a slot (it is not shed),
    // its body unread, and takes the first one freed.
    for i in 2..6 {
        let u = e.url(&format!("/hold/{i}"));
        let c = c.clone();
        held.push(tokio::spawn(async move {
            c.get(u)
                .header("x-ent-role", "enseignant")
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    eventually("six requests held at the origin", DEADLINE, async || {
        o.inflight() == 6
    })
    .await;
    let waiting_before = e.metric("ecluse_inflight_requests", &[]);
    let late = "copie rendue à la dernière minute".to_string();
    let upload = {
        let (c, u, body) = (c.clone(), e.url("/files/upload"), late.clone());
        tokio::spawn(async move {
            c.post(u)
                .header("x-ent-role", "enseignant")
                .body(body)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    eventually("the staff upload waits in ecluse", DEADLINE, async || {
        e.metric("ecluse_inflight_requests", &[]) > waiting_before
    })
    .await;
    assert_eq!(
        o.arrivals(&hex_sha(&late)),
        0,
        "not forwarded past the maximum"
    );
    assert!(!upload.is_finished(), "not refused either");
    o.gate.add_permits(1);
    let status = upload.await.expect("task").expect("upload");
    assert_eq!(status, 201);
    assert_eq!(o.arrivals(&hex_sha(&late)), 1, "arrived exactly once");

    o.gate.add_permits(100);
    for h in held {
        assert_eq!(h.await.expect("task").expect("held"), 200);
    }
    assert_eq!(shed("staff"), 0.0, "staff never shed");
    assert_eq!(shed("admitted"), 0.0, "the admitted session never shed");
    assert_eq!(
        o.arrivals(&hex_sha(&anon_upload)),
        0,
        "the refused upload never arrived"
    );
    let peak = o.peak.load(Ordering::SeqCst);
    assert!(peak <= 6, "origin peak in-flight {peak} > max_inflight 6");
}

/// An instant `secs` from now, written in RFC 3339 with a `+01:00` offset (Paris in
/// winter), as ops would write it.
fn paris_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs + 3600);
    let utc = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}+01:00", utc.trim_end_matches('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_level_and_features_from_the_file_with_an_expiry() {
    let o = EchoOrigin::start("o").await;
    let conf = |extra: &str| yaml(o.addr, 100, &format!("1s\n{extra}"));
    let e = Ecluse::start(&conf("  force_level: busy"));
    let c = client();
    let visio = async || c.get(e.url("/visio")).send().await.expect("r").status();
    let reloads = async |n: f64| {
        eventually("reload", Duration::from_secs(10), async || {
            e.metric("ecluse_config_reloads_total", &[("result", "ok")]) >= n
        })
        .await
    };
    assert_eq!(level(&e).await, "busy");
    assert_eq!(visio().await, 503);
    assert_eq!(
        e.metric(
            "ecluse_degradation_changes_total",
            &[("from", "normal"), ("to", "busy"), ("cause", "forced")]
        ),
        1.0
    );

    // The same level, now with an expiry: it holds until then, then back to automatic,
    // logged and counted.
    let until = paris_in(4);
    e.write_config(&conf(&format!(
        "  force_level: {{ level: busy, until: \"{until}\" }}"
    )));
    reloads(1.0).await;
    assert_eq!(level(&e).await, "busy", "forced until {until}");
    eventually(
        "the forced level expires",
        Duration::from_secs(15),
        // The hot path follows at the next evaluation (every 500 ms).
        async || level(&e).await == "normal" && visio().await == 200,
    )
    .await;
    assert_eq!(
        e.metric(
            "ecluse_degradation_changes_total",
            &[("from", "busy"), ("to", "normal"), ("cause", "forced")]
        ),
        1.0
    );
    assert!(e.stderr_text().contains("forced level expired"));

    // A feature forced off from the file, at level normal.
    e.write_config(&conf("  force_features: { visio: false }"));
    reloads(2.0).await;
    assert_eq!(visio().await, 503);
    let forced = || {
        e.metric(
            "ecluse_feature_changes_total",
            &[("feature", "visio"), ("cause", "forced")],
        )
    };
    assert_eq!(forced(), 1.0);
    // With an expiry: off until then, then on again, logged and counted as expired.
    let until = paris_in(3);
    e.write_config(&conf(&format!(
        "  force_features: {{ visio: {{ on: false, until: \"{until}\" }} }}"
    )));
    reloads(3.0).await;
    assert_eq!(visio().await, 503, "forced off until {until}");
    eventually(
        "the forced feature expires",
        Duration::from_secs(15),
        async || visio().await == 200,
    )
    .await;
    assert_eq!(
        e.metric(
            "ecluse_feature_changes_total",
            &[("feature", "visio"), ("cause", "expired")]
        ),
        1.0
    );
    assert!(e
        .stderr_text()
        .contains("feature visio: forced off expired"));
    assert_eq!(
        e.metric("ecluse_feature_enabled", &[("feature", "visio")]),
        1.0
    );

    // Forced on whatever the level; once the file stops forcing it, it follows the
    // level; once the file forces no level, back to automatic.
    e.write_config(&conf(
        "  force_level: busy\n  force_features: { visio: true }",
    ));
    reloads(4.0).await;
    assert_eq!(level(&e).await, "busy");
    assert_eq!(visio().await, 200, "forced on at busy");
    e.write_config(&conf("  force_level: busy"));
    reloads(5.0).await;
    assert_eq!(visio().await, 503, "follows the level again");
    e.write_config(&conf(""));
    reloads(6.0).await;
    assert_eq!(level(&e).await, "normal");
    assert_eq!(visio().await, 200);

    // An expiry already past forces nothing.
    let past = "2020-03-16T08:00:00+01:00";
    e.write_config(&conf(&format!(
        "  force_level: {{ level: busy, until: \"{past}\" }}"
    )));
    reloads(7.0).await;
    assert_eq!(level(&e).await, "normal");
    assert!(e.stderr_text().contains(
        "force_level busy until 2020-03-16T07:00:00.000Z: that time has passed, not forced"
    ));
}

#[test]
fn bad_forced_levels_and_features_are_reported() {
    let dir = TempDir::new("force-check");
    let f = dir.path().join("ecluse.yaml");
    let origin: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
    std::fs::write(
        &f,
        yaml(
            origin,
            100,
            "1s\n  force_level: { level: buzy, until: demain }\n  force_features: { chat: false, visio: { on: false, until: \"2026-12-01T18:00:00\" } }",
        ),
    )
    .expect("write");
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "F");
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        "degradation.force_level.level: level `buzy` is not declared under `levels` (did you mean `busy`?)",
        "degradation.force_level.until: `demain` is not an RFC 3339 time",
        "degradation.force_features.chat: feature `chat` is carried by no route",
        "degradation.force_features.visio.until: `2026-12-01T18:00:00` is not an RFC 3339 time like `2026-12-01T18:00:00+01:00`: it needs a time zone",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A config whose `busy` level (reached only when forced) scales rooms and rate limits.
fn factors_yaml(origin: std::net::SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 4, new_users_per_minute: 6000, secret_file: keys }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
degradation:
  hold: 1s
  levels:
    - {{ name: normal }}
    - {{ name: busy, room_capacity_factor: 0.5, rate_limit_factor: 0.5 }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    origin: ent
    rate_limits:
      - {{ name: per_user, key: header, header: X-User, rate: 4/h, burst: 4 }}
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    )
}

async fn force(e: &Ecluse, level: Option<&str>) {
    let r = client()
        .post(e.admin_url("/admin/level"))
        .json(&serde_json::json!({ "level": level }))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_room_capacity_factor_shrinks_the_waiting_room() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start_with(
        &factors_yaml(o.addr),
        &[("keys", ROOM_KEY.as_bytes())],
        |_| {},
    );
    let capacity = || e.metric("ecluse_room_capacity_users", &[("room", "ent")]);
    eventually("the room's capacity", DEADLINE, async || capacity() == 4.0).await;
    force(&e, Some("busy")).await;
    eventually("capacity × 0.5", DEADLINE, async || capacity() == 2.0).await;
    // Two new students get in; the third, who would fit in 4, waits.
    let mut inside = Vec::new();
    for i in 0..3 {
        let c = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        let r = c.get(e.url("/cours")).send().await.expect("r");
        assert_eq!(r.status(), 200);
        let origin_answered = r.headers()["content-type"] == "application/json";
        inside.push(origin_answered);
        eprintln!(
            "student {i}: {}",
            if origin_answered { "in" } else { "queued" }
        );
    }
    assert_eq!(inside, [true, true, false]);
    force(&e, None).await;
    eventually("capacity back", DEADLINE, async || capacity() == 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_rate_limit_factor_tightens_the_limits() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start_with(
        &factors_yaml(o.addr),
        &[("keys", ROOM_KEY.as_bytes())],
        |_| {},
    );
    let c = client();
    let allowed = async |user: &str| {
        let mut n = 0;
        for _ in 0..6 {
            let r = c
                .get(e.url("/api/notes"))
                .header("x-user", user)
                .send()
                .await
                .expect("r");
            match r.status().as_u16() {
                200 => n += 1,
                429 => {}
                s => panic!("answered {s}"),
            }
        }
        n
    };
    assert_eq!(allowed("alice").await, 4, "burst 4 at normal");
    force(&e, Some("busy")).await;
    assert_eq!(allowed("bob").await, 2, "burst 4 × 0.5 at busy");
    force(&e, None).await;
    assert_eq!(allowed("carol").await, 4, "as written again");
}
