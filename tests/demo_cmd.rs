//! `ecluse demo`: starts the simulated ENT and ecluse, prints URLs that work.

// kill(2) and pre_exec on the processes under test; the crate denies unsafe code.
#![allow(unsafe_code)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_urls_and_serves_the_ent() {
    let mut child = Command::new(bin())
        .args(["demo", "--port", "0", "--admin-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let mut urls = Vec::new();
    while urls.len() < 4 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its URLs");
        if line.starts_with("http://127.0.0.1:") {
            urls.push(line.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    let ent = urls[0].clone();
    let metrics = urls
        .iter()
        .find(|u| u.ends_with("/metrics"))
        .expect("metrics url")
        .clone();

    // Readiness through the admin listener.
    let admin = metrics.trim_end_matches("metrics");
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    eventually(
        "demo ready",
        Duration::from_secs(20),
        async || matches!(c.get(format!("{admin}readyz")).send().await, Ok(r) if r.status() == 200),
    )
    .await;

    // A student's morning through ecluse: page, login, assignment file.
    let r = c.get(&ent).send().await.expect("home");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("html").contains("<html lang=\"fr\""));
    let r = c
        .get(format!("{ent}files/assignments/1.pdf"))
        .send()
        .await
        .expect("file");
    assert_eq!(r.status(), 401, "files need a session");
    let r = c
        .post(format!("{ent}login"))
        .form(&[("user", "eleve1"), ("password", "x")])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303);
    let r = c
        .get(format!("{ent}files/assignments/1.pdf"))
        .send()
        .await
        .expect("file");
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("pdf");
    assert!(body.starts_with(b"%PDF-"));

    // Requests are counted in the logging phase, just after the response: poll.
    eventually(
        "the assignments requests counted",
        Duration::from_secs(10),
        async || {
            let Ok(r) = c.get(&metrics).send().await else {
                return false;
            };
            let text = r.text().await.unwrap_or_default();
            metric_value(&text, "ecluse_requests_total", &[("route", "assignments")]) >= 2.0
        },
    )
    .await;

    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ecluse demo --surge` (issue #26): the simulated pupils fill the room (somebody
/// queues), the heavy visio is switched off while the queue is long and comes back
/// once it drained, and every pupil ends up served. Properties, watched on
/// `/admin/state` with a deadline; never how fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_surge_fills_the_room_switches_visio_off_and_drains() {
    let mut child = Command::new(bin())
        .args(["demo", "--surge", "--port", "0", "--admin-port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Generous: the debug build on a shared machine; the demo's own pupils give up after 4 min.
    let limit = Duration::from_secs(300);
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    let status = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its URLs");
        lines.push(line.clone());
        if line.ends_with("ecluse status page (live; a button starts a surge)") {
            break line.split_whitespace().next().unwrap_or("").to_string();
        }
    };
    let admin = status.trim_end_matches("status").to_string();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // (most waiting seen, visio seen off, visio seen on again after that, waiting back to 0 after that)
    let (mut most_waiting, mut went_off, mut came_back, mut drained) = (0u64, false, false, false);
    let mut over = None;
    while Instant::now() < deadline {
        while let Ok(l) = rx.try_recv() {
            if l.contains("surge over") {
                over = Some(l.clone());
            }
            lines.push(l);
        }
        if let Ok(r) = c.get(format!("{admin}admin/state")).send().await {
            if let Ok(s) = r.json::<serde_json::Value>().await {
                let waiting = s["rooms"][0]["waiting"].as_u64().unwrap_or(0);
                most_waiting = most_waiting.max(waiting);
                let visio = s["degradation"]["features"]["visio"].as_bool();
                if visio == Some(false) {
                    went_off = true;
                } else if visio == Some(true) && went_off {
                    came_back = true;
                }
                if most_waiting > 0 && waiting == 0 {
                    drained = true;
                }
            }
        }
        if came_back && drained && over.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The status page tells the same story.
    let html = c
        .get(&status)
        .send()
        .await
        .expect("status page")
        .text()
        .await
        .expect("html");
    // The page's button starts another surge, without a token: the demo's admin listener
    // is tokenless on loopback; a second press while it runs is refused.
    let button = async || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .post(format!("{admin}status/action"))
            .form(&[("action", "surge")])
            .send()
            .await
            .expect("button")
            .status()
            .as_u16()
    };
    let first = button().await;
    let second = button().await;
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let stop = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < stop, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(most_waiting > 0, "nobody queued: {lines:?}");
    assert!(went_off, "visio never switched off: {lines:?}");
    assert!(came_back, "visio never came back: {lines:?}");
    assert!(drained, "the queue never drained: {lines:?}");
    let over = over.unwrap_or_else(|| panic!("the surge never ended: {lines:?}"));
    assert!(
        over.contains("150 pupils") && over.contains("150 served") && over.contains("0 gave up"),
        "every simulated pupil is served: {over}"
    );
    assert!(
        html.contains("Demo surge") && html.contains("Last surge over"),
        "{html}"
    );
    assert_eq!((first, second), (303, 409), "the surge button");
}
