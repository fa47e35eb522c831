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
