//! No single client steers the degradation signals (issue #17, class 6): one address
//! asking for failing or slow URLs, holding requests open or hanging up does not move the
//! level nor collapse the adaptive limit while the other clients are served well; a URL
//! failing for everyone is a bug, not an overload; and a real overload (the ENT failing or
//! slow for everyone) still moves the level with the same clients around.
//!
//! Clients are real distinct peers: loopback addresses 127.0.0.N.

mod common;

use common::lenient_ent::LenientEnt;
use common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn yaml(origin: std::net::SocketAddr, max_inflight: u32, origin_extra: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2 }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: {max_inflight}, retries: 0, health_check: {{ disabled: true }}, passive: {{ max_failures: 0 }}{origin_extra} }}
degradation:
  hold: 1s
  levels:
    - {{ name: normal }}
    - name: busy
      disable: [visio]
      enter: {{ error_rate: 0.05, p95_latency: 300ms, inflight_ratio: 0.5 }}
      exit: {{ error_rate: 0.01, p95_latency: 100ms, inflight_ratio: 0.2 }}
routes:
  - {{ name: visio, match: {{ path_prefix: /visio }}, origin: ent, feature: visio }}
  - {{ name: ent, origin: ent }}
"#
    )
}

/// A client on its own loopback address 127.0.0.`last`.
fn client_at(last: u8, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .timeout(timeout)
        .build()
        .expect("client")
}

async fn state(e: &Ecluse) -> serde_json::Value {
    client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json")
}

async fn level(e: &Ecluse) -> String {
    state(e).await["degradation"]["level"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The origin's signals in the admin state.
async fn signals(e: &Ecluse) -> serde_json::Value {
    state(e).await["signals"][0].clone()
}

/// An extra URL for the pupils: its switch, the URL of the i-th request, how often.
type Extra = (Arc<AtomicBool>, fn(usize) -> String, usize);

/// Normal traffic: `n` pupils on their own addresses (127.0.0.10…), each asking for its
/// pages in turn at a calm pace, and an extra URL every `every`-th request when given,
/// once its flag is set. Returns the stop flag and the counts of answers (200, other).
fn pupils(
    e: &Arc<Ecluse>,
    n: u8,
    extra: Option<Extra>,
) -> (Arc<AtomicBool>, Arc<[AtomicUsize; 2]>) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    for p in 0..n {
        let (e, stop, counts, extra) = (e.clone(), stop.clone(), counts.clone(), extra.clone());
        tokio::spawn(async move {
            let c = client_at(10 + p, Duration::from_secs(15));
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = match &extra {
                    Some((on, url, every)) if i % *every == 0 && on.load(Ordering::Relaxed) => {
                        url(i)
                    }
                    _ => format!("/pages/{p}/cahier?n={}", i % 40),
                };
                match c.get(e.url(&path)).send().await {
                    Ok(r) if r.status() == 200 => counts[0].fetch_add(1, Ordering::Relaxed),
                    _ => counts[1].fetch_add(1, Ordering::Relaxed),
                };
                // A pupil reads the page before the next one (pacing, not synchronisation).
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
    }
    (stop, counts)
}

/// The ENT in use: wait until the window holds `n` exchanges of normal traffic (an
/// attack on an ENT nobody uses yet has nobody to be compared with).
async fn in_use(e: &Ecluse, n: u64) {
    eventually(
        "normal traffic in the window",
        Duration::from_secs(15),
        async || signals(e).await["left_out"]["exchanges"].as_u64() >= Some(n),
    )
    .await;
}

/// One client (127.0.0.`last`) asking for `path(i)` as fast as it can on `conns`
/// connections at once, each request given up after `timeout`.
fn attacker(
    e: &Arc<Ecluse>,
    last: u8,
    conns: usize,
    timeout: Duration,
    path: fn(usize) -> String,
) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let c = client_at(last, timeout);
    for w in 0..conns {
        let (e, stop, c) = (e.clone(), stop.clone(), c.clone());
        tokio::spawn(async move {
            let mut i = w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = c.get(e.url(&path(i))).send().await;
            }
        });
    }
    stop
}

/// For `secs` seconds of the attack, the level stays `normal` and never changed.
async fn level_holds(e: &Ecluse, secs: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let s = state(e).await;
        assert_eq!(
            s["degradation"]["level"], "normal",
            "{what} moved the level: {}",
            s["signals"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        e.metric("ecluse_degradation_changes_total", &[("to", "busy")]),
        0.0,
        "{what}: no change at all, even between two looks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_on_failing_urls_moves_nothing_a_failing_ent_does() {
    let ent = LenientEnt::start().await;
    // Every answer takes 100 ms, so the adaptive limit sees a steady latency whatever
    // the machine's load; its `min` is above what these clients hold at once, so it
    // starts at the maximum (60) and only failures can bring it down to the minimum.
    ent.set_delay(Duration::from_millis(100));
    let e = Arc::new(Ecluse::start(&yaml(
        ent.addr,
        60,
        ", adaptive_concurrency: { min: 20, tolerance: 50.0 }",
    )));
    let (stop_pupils, served) = pupils(&e, 8, None);
    in_use(&e, 150).await;
    // One address, within any sensible rate limit of a school, asking for URLs the ENT
    // fails on (500), each a different one, as fast as the ENT answers.
    let stop_failing = attacker(&e, 200, 2, Duration::from_secs(15), |i| {
        format!("/fail/x{i}")
    });
    // And the same address hanging up on slow URLs before the answer comes.
    let stop_hangup = attacker(&e, 200, 4, Duration::from_millis(50), |i| {
        format!("/slow/400/h{i}")
    });
    eventually(
        "the failures weigh on the raw error rate",
        Duration::from_secs(15),
        async || signals(&e).await["left_out"]["raw_error_rate"].as_f64() >= Some(0.1),
    )
    .await;
    level_holds(&e, 4, "one client's failing URLs").await;
    let s = signals(&e).await;
    assert!(
        s["error_rate"].as_f64() < Some(0.05),
        "the signal leaves the client out: {s}"
    );
    assert!(s["left_out"]["client_keys"].as_u64() >= Some(1), "{s}");
    assert!(
        e.metric("ecluse_origin_signal_outliers", &[("origin", "ent")]) >= 1.0,
        "the metric says a client was left out"
    );
    let limit = e.metric("ecluse_origin_concurrency_limit", &[("origin", "ent")]);
    assert!(
        limit >= 30.0,
        "one client's failures did not collapse the adaptive limit (min 20, max 60): {limit}"
    );
    assert_eq!(
        client_at(10, Duration::from_secs(5))
            .get(e.url("/visio/cours"))
            .send()
            .await
            .expect("visio")
            .status(),
        200,
        "visio stays on for every pupil"
    );
    // The ENT now fails for everyone, the attacker still there: the level moves.
    ent.set_failing(true);
    eventually(
        "a failing ENT switches visio off",
        Duration::from_secs(15),
        async || level(&e).await == "busy",
    )
    .await;
    for s in [stop_pupils, stop_failing, stop_hangup] {
        s.store(true, Ordering::Relaxed);
    }
    eprintln!(
        "pupils: {} served, {} not",
        served[0].load(Ordering::Relaxed),
        served[1].load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_failing_for_everyone_is_a_bug_not_an_overload() {
    let ent = LenientEnt::start().await;
    let e = Arc::new(Ecluse::start(&yaml(ent.addr, 60, "")));
    // The ENT in use, then a deployment breaks a widget on every pupil's page (a 500 for
    // everyone): a quarter of all exchanges fail, from every client.
    let broken = Arc::new(AtomicBool::new(false));
    let (stop, _) = pupils(
        &e,
        8,
        Some((broken.clone(), |_| "/fail/widget".to_string(), 4)),
    );
    in_use(&e, 150).await;
    broken.store(true, Ordering::Relaxed);
    eventually(
        "the broken widget weighs on the raw error rate",
        Duration::from_secs(15),
        async || signals(&e).await["left_out"]["raw_error_rate"].as_f64() >= Some(0.15),
    )
    .await;
    level_holds(&e, 4, "a URL failing for everyone").await;
    let s = signals(&e).await;
    assert!(s["left_out"]["url_keys"].as_u64() >= Some(1), "{s}");
    // The ENT overloaded (503 everywhere): the level moves.
    ent.set_failing(true);
    eventually(
        "an overloaded ENT switches visio off",
        Duration::from_secs(15),
        async || level(&e).await == "busy",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_on_slow_urls_or_holding_requests_moves_nothing_a_slow_ent_does() {
    let ent = LenientEnt::start().await;
    let e = Arc::new(Ecluse::start(&yaml(ent.addr, 80, "")));
    let (stop_pupils, served) = pupils(&e, 8, None);
    in_use(&e, 150).await;
    // One address asks for a heavy search (700 ms) on 12 connections, and holds 36 more
    // requests open on a URL that takes 4 s: alone, 48 of the 80 slots, and far more
    // than 5% of the answers slow.
    let stop_slow = attacker(&e, 201, 12, Duration::from_secs(15), |i| {
        format!("/slow/700/search?q={i}")
    });
    let stop_held = attacker(&e, 201, 36, Duration::from_secs(15), |i| {
        format!("/slow/4000/held{i}")
    });
    eventually(
        "the slow answers and held requests weigh on the raw signals",
        Duration::from_secs(15),
        async || {
            signals(&e).await["left_out"]["raw_p95_latency_ms"].as_f64() >= Some(300.0)
                && e.metric("ecluse_origin_inflight", &[("origin", "ent")]) >= 40.0
        },
    )
    .await;
    level_holds(&e, 4, "one client's slow URLs and held requests").await;
    let s = signals(&e).await;
    assert!(s["p95_latency_ms"].as_f64() < Some(300.0), "{s}");
    assert!(s["inflight_ratio"].as_f64() < Some(0.5), "{s}");
    assert!(s["left_out"]["inflight"].as_u64() >= Some(30), "{s}");
    // The ENT slow for everyone (the attacker still there): the level moves.
    ent.set_delay(Duration::from_millis(500));
    eventually(
        "a slow ENT switches visio off",
        Duration::from_secs(20),
        async || level(&e).await == "busy",
    )
    .await;
    for s in [stop_pupils, stop_slow, stop_held] {
        s.store(true, Ordering::Relaxed);
    }
    assert!(served[0].load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_made_up_per_request_does_not_scatter_a_failing_url() {
    let ent = LenientEnt::start().await;
    let e = Arc::new(Ecluse::start(&yaml(ent.addr, 60, "")));
    // The broken widget, asked with a query made up on every request (a cache buster):
    // the same resource to the ENT, so the same URL key.
    let broken = Arc::new(AtomicBool::new(false));
    let (stop, _) = pupils(
        &e,
        8,
        Some((broken.clone(), |i| format!("/fail/widget?r={i}"), 4)),
    );
    in_use(&e, 150).await;
    broken.store(true, Ordering::Relaxed);
    eventually(
        "the broken widget weighs on the raw error rate",
        Duration::from_secs(15),
        async || signals(&e).await["left_out"]["raw_error_rate"].as_f64() >= Some(0.15),
    )
    .await;
    level_holds(&e, 4, "a URL failing for everyone, with a made-up query").await;
    let s = signals(&e).await;
    assert!(s["left_out"]["url_keys"].as_u64() >= Some(1), "{s}");
    stop.store(true, Ordering::Relaxed);
}

/// Two servers with passive ejection after 3 failures in a row.
fn two_servers(a: std::net::SocketAddr, b: std::net::SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2 }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{a}", "{b}"], retries: 0, health_check: {{ disabled: true }}, passive: {{ max_failures: 3, ejection_time: 1m }} }}
routes:
  - {{ name: ent, origin: ent }}
"#
    )
}

/// Whether each server of the origin is ejected, in declaration order.
async fn ejected(e: &Ecluse) -> Vec<bool> {
    state(e).await["origins"][0]["servers"]
        .as_array()
        .map(|v| v.iter().map(|s| s["ejected"] == true).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_eject_a_healthy_server_a_failing_server_is_ejected() {
    let a = LenientEnt::start().await;
    let b = LenientEnt::start().await;
    let e = Arc::new(Ecluse::start(&two_servers(a.addr, b.addr)));
    let (stop_pupils, served) = pupils(&e, 8, None);
    in_use(&e, 150).await;
    // One address asks, on 4 connections at once, for a URL both servers refuse with a
    // 503: failures in a row on each server, as many as it likes.
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let c = client_at(200, Duration::from_secs(15));
    for w in 0..4usize {
        let (e, stop, c, refused) = (e.clone(), stop.clone(), c.clone(), refused.clone());
        tokio::spawn(async move {
            let mut i = w * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if let Ok(r) = c.get(e.url(&format!("/busy/export{i}"))).send().await {
                    if r.status() == 503 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    eventually(
        "the attacker's failures pile up",
        Duration::from_secs(15),
        async || refused.load(Ordering::Relaxed) >= 200,
    )
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let ej = ejected(&e).await;
        assert_eq!(ej, [false, false], "one client ejected a healthy server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    // Server a now fails for everyone: the pupils' requests fail there too, and it goes.
    a.set_failing(true);
    eventually(
        "a server failing for everyone is ejected",
        Duration::from_secs(15),
        async || ejected(&e).await == [true, false],
    )
    .await;
    stop_pupils.store(true, Ordering::Relaxed);
    assert!(served[0].load(Ordering::Relaxed) > 0);
}
