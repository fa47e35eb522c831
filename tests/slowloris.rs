//! Slowloris: normal students served at their usual speed while hundreds of connections
//! trickle their request heads. A test binary of its own: its 400 connections would starve
//! tests running beside it in the same binary.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Latency percentiles (ms) of sequential GETs, each on a new connection, from each of
/// `workers` tasks during `time`; and how many were sent and failed.
async fn measure(proxy: SocketAddr, workers: usize, time: Duration) -> (f64, f64, usize, usize) {
    let end = Instant::now() + time;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            while Instant::now() < end {
                let t = Instant::now();
                let ok = async {
                    let mut s = TcpStream::connect(proxy).await.ok()?;
                    s.write_all(b"GET /page HTTP/1.1\r\nHost: ent\r\nConnection: close\r\n\r\n")
                        .await
                        .ok()?;
                    let (raw, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
                    (status_of(&raw) == Some(200)).then_some(())
                }
                .await;
                if ok.is_some() {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.expect("worker");
        all.extend(l);
        failed += f;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (pct(0.5), pct(0.99), all.len() + failed, failed)
}

/// 400 slowloris connections trickling their heads (and coming back when cut) while
/// students keep loading pages: nobody fails and the p99 stays close to the quiet one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_leaves_normal_clients_unharmed() {
    let origin = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&clients_yaml(origin.addr, "header_timeout: 2s"));
    let proxy = e.proxy;
    // Warm up, then the quiet baseline.
    let (_, _, warm, _) = measure(proxy, 4, Duration::from_millis(500)).await;
    let (q50, q99, quiet, qfail) = measure(proxy, 4, Duration::from_secs(2)).await;
    assert_eq!(qfail, 0);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for i in 0..400u32 {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let head = format!(
                "GET /loris/{i} HTTP/1.1\r\nHost: ent\r\nX-Loris: {}\r\n\r\n",
                "z".repeat(200)
            );
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(proxy).await else {
                    continue;
                };
                for b in head.as_bytes() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || s.write_all(&[*b]).await.is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await; // the attack's pace
                }
            }
        }));
    }
    eventually(
        "400 slowloris connections open",
        Duration::from_secs(15),
        async || e.metric("ecluse_client_connections", &[]) >= 400.0,
    )
    .await;
    // Measure through at least one round of cuts (2 s head deadline).
    let (l50, l99, loaded, lfail) = measure(proxy, 4, Duration::from_secs(3)).await;
    let cut = e.metric("ecluse_client_timeouts_total", &[("phase", "header")]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    eprintln!(
        "quiet: {quiet} requests, p50 {q50:.2} ms p99 {q99:.2} ms; under 400 slowloris: {loaded} requests, p50 {l50:.2} ms p99 {l99:.2} ms; {cut} slowloris connections cut"
    );
    assert_eq!(lfail, 0, "normal clients failed under slowloris");
    // Not one slowloris head reached the origin: it saw the students' requests only.
    assert_eq!(origin.hits(), warm + quiet + loaded);
    // Harm from slowloris means students waiting for a slot until the attackers' heads
    // are cut (the 2 s deadline). The p99 must stay near the quiet one, or at least
    // below that deadline: a loaded machine can slow both measures apart, but only
    // held slots make a student wait out the deadline.
    assert!(
        l99 <= q99 * 3.0 + 10.0 || l99 < 1500.0,
        "p99 under slowloris {l99:.2} ms vs quiet {q99:.2} ms"
    );
    assert!(
        cut >= 1.0,
        "no slowloris connection was cut by the head deadline"
    );
}
