//! The waiting room through the real proxy: queueing, order, rate, forgery, restarts,
//! priority classes, ops control.

mod common;

use common::*;
use ecluse::policy::ticket::{Keyring, TicketState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";

fn yaml(origin: std::net::SocketAddr, room: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s, trusted_proxies: ["127.0.0.1"] }}
access_log: {{ enabled: false }}
priority_classes:
  - {{ name: staff, headers: {{ X-ENT-Role: [enseignant] }} }}
waiting_rooms:
  ent: {{ {room}, secret_file: keys, classes: {{ staff: {{ bypass: true }} }} }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    )
}

fn start(origin: std::net::SocketAddr, room: &str) -> Ecluse {
    Ecluse::start_with(&yaml(origin, room), &[("keys", KEY.as_bytes())], |_| {})
}

fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

fn keyring() -> Keyring {
    Keyring::parse(KEY).expect("key")
}

/// The ticket number a response's Set-Cookie carries (the test knows the key).
fn ticket_of(r: &reqwest::Response) -> Option<(u64, TicketState)> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let val = s.strip_prefix("ecluse_ent=")?.split(';').next()?;
        let t = keyring().open(val, "ent").ok()?;
        Some((t.number, t.state))
    })
}

async fn status(c: &reqwest::Client, e: &Ecluse) -> serde_json::Value {
    c.get(e.url("/.ecluse/queue/status?room=ent"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spare_capacity_means_no_queue_page() {
    let o = EchoOrigin::start("o").await;
    let e = start(o.addr, "active_users: 100, new_users_per_minute: 6000");
    for _ in 0..20 {
        let c = cookie_client();
        let r = c.get(e.url("/")).send().await.expect("req");
        assert_eq!(r.status(), 200);
        assert_eq!(ticket_of(&r).map(|t| t.1), Some(TicketState::Admitted));
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "the origin answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_students_are_admitted_in_order_at_the_rate() {
    let o = EchoOrigin::start("o").await;
    // 20 inside at once, 600 new per minute (10/s, burst 50), polls every 200 ms.
    let e = Arc::new(start(
        o.addr,
        "active_users: 20, new_users_per_minute: 600, poll_interval: 200ms, abandon_timeout: 5s",
    ));
    let n = 150;
    // Per ticket: when its last poll answered "waiting" was sent, and when the answer
    // that let it in came back. Comparing those two (not when each task got to run)
    // keeps the order check true on a loaded machine: a task scheduled late only makes
    // its own times later, it never makes an inversion appear.
    type Seen = (u64, Option<Instant>, Instant);
    let admitted: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (e, admitted) = (e.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            // Arrivals spread over 300 ms, like a bell ringing.
            tokio::time::sleep(Duration::from_millis((i * 2) as u64)).await;
            let c = cookie_client();
            // Each student from their own address (the load balancer is trusted): one
            // address would meet the per-address ticket rate, which is not this test's
            // subject (on a slow machine fewer get in directly and more need tickets).
            let r = c
                .get(e.url("/cahier"))
                .header(
                    "x-forwarded-for",
                    format!("10.0.{}.{}", i / 200, i % 200 + 1),
                )
                .send()
                .await
                .expect("first");
            let (number, state) = ticket_of(&r).expect("a ticket cookie");
            let mut last_waiting: Option<Instant> = None;
            let mut let_in = Instant::now();
            let deadline = Instant::now() + Duration::from_secs(60);
            if state == TicketState::Waiting {
                assert_eq!(r.status(), 200);
                let html = r.text().await.expect("queue page");
                assert!(html.contains("aria-live"), "the queue page");
                loop {
                    assert!(Instant::now() < deadline, "ticket {number} never admitted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let sent = Instant::now();
                    let s = status(&c, &e).await;
                    match s["state"].as_str() {
                        Some("admitted") => {
                            let_in = Instant::now();
                            break;
                        }
                        Some("waiting") => last_waiting = Some(sent),
                        other => panic!("ticket {number}: unexpected state {other:?}"),
                    }
                }
                // The page reloads and lands where the student wanted to go.
                let r = c
                    .get(e.url("/cahier"))
                    .send()
                    .await
                    .expect("after admission");
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.expect("origin json");
                assert_eq!(v["path"], "/cahier");
            }
            admitted
                .lock()
                .expect("lock")
                .push((number, last_waiting, let_in));
            // Work a little, then log out: the place is freed at once.
            let r = c.get(e.url("/logout")).send().await.expect("logout");
            assert_eq!(r.status(), 200);
        }));
    }
    for t in tasks {
        t.await.expect("student task");
    }
    let took = t0.elapsed();
    let mut adm = admitted.lock().expect("lock").clone();
    assert_eq!(adm.len(), n, "everyone got in");
    adm.sort_by_key(|a| a.0);
    // FIFO: nobody gets in more than a poll round (+ a tick) before a smaller ticket.
    // An inversion is proven when a smaller ticket was still told "waiting" by a poll
    // sent after a larger one's admission had come back (plus that slack).
    let slack = Duration::from_millis(700);
    let mut inversions = 0;
    for (i, b) in adm.iter().enumerate() {
        let Some(waiting) = b.1 else { continue };
        for a in &adm[i + 1..] {
            if waiting > a.2 + slack {
                inversions += 1;
            }
        }
    }
    assert_eq!(inversions, 0, "admission order is FIFO: {adm:?}");
    // Rate: at most 10/s sustained plus the burst of 50 (and the first 20 direct).
    let max = 50.0 + 10.0 * took.as_secs_f64() + 20.0;
    assert!(
        (n as f64) <= max,
        "{n} admitted in {took:?}: faster than the rate allows"
    );
    assert!(
        took >= Duration::from_secs_f64((n as f64 - 70.0) / 10.0 * 0.9),
        "admitted {n} in {took:?}: the rate was not applied"
    );
    let state: serde_json::Value = client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("j");
    assert_eq!(state["rooms"][0]["waiting"], 0);
    assert!(e.metric("ecluse_room_admitted_total", &[("room", "ent")]) >= n as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_tampered_cookies_are_queued_fresh() {
    let o = EchoOrigin::start("o").await;
    let e = start(o.addr, "active_users: 1, new_users_per_minute: 60");
    let inside = cookie_client();
    assert_eq!(
        ticket_of(&inside.get(e.url("/")).send().await.expect("r")).map(|t| t.1),
        Some(TicketState::Admitted)
    );
    let c = client();
    let r = c.get(e.url("/")).send().await.expect("r");
    let (n1, st) = ticket_of(&r).expect("ticket");
    assert_eq!(st, TicketState::Waiting);
    // Forge an admitted ticket with another key, and tamper with a real one.
    let evil = Keyring::parse("k1:not-the-real-secret-0000000000000000").expect("k");
    let forged = evil.seal(&ecluse::policy::ticket::Ticket {
        room: "ent".into(),
        class: 0,
        state: TicketState::Admitted,
        number: 1,
        issued: 0,
        seen: u64::MAX / 2,
        bucket: 0,
    });
    let r = c
        .get(e.url("/"))
        .header("cookie", format!("ecluse_ent={forged}"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let (n2, st) = ticket_of(&r).expect("fresh ticket");
    assert_eq!(
        st,
        TicketState::Waiting,
        "a forged admission is not honoured"
    );
    assert!(n2 > n1, "queued at the back");
    for bad in ["garbage", "a.b", &"x".repeat(5000), "djF8azF8ZW50.AAAA"] {
        let r = c
            .get(e.url("/"))
            .header("cookie", format!("ecluse_ent={bad}"))
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 200);
        assert_eq!(ticket_of(&r).map(|t| t.1), Some(TicketState::Waiting));
    }
    assert!(
        e.metric(
            "ecluse_room_rejected_tickets_total",
            &[("room", "ent"), ("reason", "forged")]
        ) >= 5.0
    );
    assert_eq!(o.hits(), 1, "only the admitted student reached the ENT");
    // Tabs of one browser share one place: the same cookie keeps the same number.
    let tab = cookie_client();
    let first = ticket_of(&tab.get(e.url("/")).send().await.expect("r"))
        .expect("t")
        .0;
    for _ in 0..3 {
        let r = tab.get(e.url("/other-tab")).send().await.expect("r");
        assert_eq!(
            ticket_of(&r).expect("t").0,
            first,
            "same place in every tab"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_bypass_and_ops_pause_resume_capacity() {
    let o = EchoOrigin::start("o").await;
    let e = start(
        o.addr,
        "active_users: 1, new_users_per_minute: 600, poll_interval: 200ms, abandon_timeout: 5s",
    );
    let inside = cookie_client();
    inside.get(e.url("/")).send().await.expect("r");
    let r = client()
        .get(e.url("/"))
        .header("x-ent-role", "enseignant")
        .send()
        .await
        .expect("r");
    assert_eq!(
        ticket_of(&r).map(|t| t.1),
        Some(TicketState::Admitted),
        "staff bypass the queue"
    );
    assert_eq!(r.headers()["content-type"], "application/json");

    let waiting = cookie_client();
    waiting.get(e.url("/")).send().await.expect("r");
    assert_eq!(status(&waiting, &e).await["state"], "waiting");
    let admin = client();
    let r = admin
        .post(e.admin_url("/admin/rooms/ent/pause"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    // Capacity raised live, but the room is paused: nobody moves.
    let r = admin
        .post(e.admin_url("/admin/rooms/ent"))
        .json(&serde_json::json!({"active_users": 50}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let s = status(&waiting, &e).await;
    assert_eq!(s["state"], "waiting");
    assert_eq!(s["paused"], true);
    let r = admin
        .post(e.admin_url("/admin/rooms/ent"))
        .json(&serde_json::json!({"active_users": 0}))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 400);
    let r = admin
        .post(e.admin_url("/admin/rooms/nope/pause"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 404);
    admin
        .post(e.admin_url("/admin/rooms/ent/resume"))
        .send()
        .await
        .expect("r");
    eventually(
        "admitted after resume",
        Duration::from_secs(10),
        async || status(&waiting, &e).await["state"] == "admitted",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_everyones_place() {
    let o = EchoOrigin::start("o").await;
    let room = "active_users: 1, new_users_per_minute: 60, abandon_timeout: 1m";
    let dir = TempDir::new("restart");
    std::fs::write(dir.path().join("keys"), KEY).expect("keys");
    let cfg = yaml(o.addr, room);
    let run = |d: &std::path::Path| {
        let d = d.to_path_buf();
        Ecluse::start_with(&cfg, &[("keys", KEY.as_bytes())], move |tmp| {
            // Share one state dir across both runs.
            std::os::unix::fs::symlink(d.join("state"), tmp.join("state")).expect("symlink");
        })
    };
    std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
    let mut e = run(dir.path());
    let inside = cookie_client();
    inside.get(e.url("/")).send().await.expect("r");
    let students: Vec<reqwest::Client> = (0..5).map(|_| cookie_client()).collect();
    let mut before = Vec::new();
    for c in &students {
        c.get(e.url("/")).send().await.expect("r");
        before.push(status(c, &e).await["position"].as_u64().expect("position"));
    }
    assert_eq!(before, vec![1, 2, 3, 4, 5]);
    e.signal(libc::SIGTERM);
    e.wait_exit(Duration::from_secs(10)).expect("graceful exit");
    let e2 = run(dir.path());
    for (c, want) in students.iter().zip(&before) {
        let s = status(c, &e2).await;
        assert_eq!(s["state"], "waiting");
        assert_eq!(
            s["position"].as_u64(),
            Some(*want),
            "same place after the restart"
        );
    }
    // A newcomer after the restart is behind them.
    let late = cookie_client();
    late.get(e2.url("/")).send().await.expect("r");
    assert_eq!(status(&late, &e2).await["position"], 6);
}

/// Status polls on a kept-alive HTTP/1.1 connection are answered below pingora's HTTP
/// layer (the hot path of a full room): the same answer, headers and log line as through
/// pingora. A poll pipelined with another, or following a request pingora read past,
/// goes through pingora, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_polls_below_pingora_answer_like_pingora() {
    use std::io::{Read, Write};
    let o = EchoOrigin::start("o").await;
    let yaml = yaml(o.addr, "active_users: 1, new_users_per_minute: 60").replace(
        "access_log: { enabled: false }",
        "access_log: { path: access.log }",
    );
    let e = Ecluse::start_with(&yaml, &[("keys", KEY.as_bytes())], |_| {});
    // The one place is taken; the second student waits.
    let first = cookie_client();
    assert_eq!(first.get(e.url("/")).send().await.unwrap().status(), 200);
    let r = cookie_client().get(e.url("/")).send().await.unwrap();
    let (number, state) = ticket_of(&r).expect("a ticket");
    assert_eq!(state, TicketState::Waiting);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .expect("cookie");
    let layer = |l: &str| e.metric("ecluse_queue_status_polls_total", &[("layer", l)]);
    let (conn0, http0) = (layer("connection"), layer("http"));

    let addr = e.proxy;
    let poll = format!(
        "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: ent\r\nCookie: {cookie}\r\n\r\n"
    );
    let answers = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut answers: Vec<String> = Vec::new();
        let mut pending = String::new();
        // One poll at a time (the first also passes pingora's HTTP/2 sniff), then two
        // pipelined in one write.
        let mut want = 0;
        for send in [1, 1, 1, 2] {
            want += send;
            s.write_all(poll.repeat(send).as_bytes()).unwrap();
            while answers.len() < want {
                let mut buf = [0u8; 8192];
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "connection closed after {answers:?}");
                pending.push_str(&String::from_utf8_lossy(&buf[..n]));
                // Cut whole responses (their length is known).
                while let Some(end) = pending.find("\r\n\r\n") {
                    let len: usize = pending[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("content-length");
                    if pending.len() < end + 4 + len {
                        break;
                    }
                    answers.push(pending[..end + 4 + len].to_string());
                    pending.drain(..end + 4 + len);
                }
            }
        }
        answers
    })
    .await
    .unwrap();
    assert_eq!(answers.len(), 5, "{answers:#?}");
    let names = |a: &str| -> Vec<String> {
        let mut n: Vec<String> = a
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| l.split(':').next().map(|h| h.to_ascii_lowercase()))
            .filter(|h| h != "set-cookie")
            .collect();
        n.sort();
        n
    };
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert_eq!(names(a), names(&answers[0]), "same headers: {a}");
        let body: serde_json::Value =
            serde_json::from_str(a.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["state"], "waiting", "{a}");
        assert_eq!(body["position"], 1, "ticket {number}: {a}");
    }
    // The first poll (after the sniff) and the pipelined pair went through pingora; the
    // two single polls on the kept-alive connection were answered below it.
    eventually(
        "polls counted by layer",
        Duration::from_secs(5),
        async || layer("connection") - conn0 == 2.0 && layer("http") - http0 == 3.0,
    )
    .await;
    // One log line per poll, whichever layer answered.
    let log = e.config.with_file_name("access.log");
    eventually("a log line per poll", Duration::from_secs(5), async || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"queue\":\"status\""))
            .count()
            == 5
    })
    .await;
}

/// Over TLS a poll can be a connection's very first request, answered below pingora
/// (which then never saw the connection in use): the keep-alive timeout is ecluse's own
/// to apply, and the idle connection is closed on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_polled_below_pingora_closes_at_the_keepalive_timeout() {
    let o = EchoOrigin::start("o").await;
    let cert = SelfSigned::localhost();
    let yaml = yaml(o.addr, "active_users: 1, new_users_per_minute: 60")
        .replace(
            "admin:",
            "tls: { listen: [\"127.0.0.1:0\"], cert_file: cert.pem, key_file: key.pem }\nadmin:",
        )
        .replace("server: {", "server: { clients: { keepalive_timeout: 1s },");
    let mut files = cert.files().to_vec();
    files.push(("keys", KEY.as_bytes()));
    let e = Ecluse::start_with(&yaml, &files, |_| {});
    let tls = e.tls.expect("tls address");
    let c = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert_pem.as_bytes()).unwrap())
        .resolve("localhost", tls)
        .http1_only()
        .build()
        .unwrap();
    let below = || {
        e.metric(
            "ecluse_queue_status_polls_total",
            &[("layer", "connection")],
        )
    };
    let before = below();
    let r = c
        .get(format!(
            "https://localhost:{}/.ecluse/queue/status?room=ent",
            tls.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["state"], "lost", "no ticket: {v}");
    assert_eq!(below(), before + 1.0, "answered below pingora");
    let idle = Instant::now();
    eventually(
        "the idle connection is closed",
        Duration::from_secs(10),
        async || e.metric("ecluse_client_connections", &[]) == 0.0,
    )
    .await;
    assert!(
        idle.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, the keep-alive timeout is 1 s",
        idle.elapsed()
    );
}

/// A pupil's phone sleeps through the turn (no poll past `abandon_timeout`): the place
/// went on to the next pupil meanwhile, and on waking within the return grace the pupil
/// is next, ahead of everyone who was behind, and gets the next free place, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_that_slept_through_its_turn_gets_the_next_place() {
    let o = EchoOrigin::start("o").await;
    let e = start(
        o.addr,
        "active_users: 1, new_users_per_minute: 600, poll_interval: 200ms, abandon_timeout: 1s, return_grace: 5m",
    );
    let inside = cookie_client();
    inside.get(e.url("/")).send().await.expect("r");
    let sleeper = cookie_client();
    let next = cookie_client();
    let later = cookie_client();
    for c in [&sleeper, &next, &later] {
        c.get(e.url("/")).send().await.expect("r");
        assert_eq!(status(c, &e).await["state"], "waiting");
    }
    // The sleeper's turn comes while it does not poll; its grant lapses and the next
    // pupil gets in: nobody waited for the phone.
    inside.get(e.url("/logout")).send().await.expect("logout");
    eventually("the next pupil gets in meanwhile", DEADLINE, async || {
        status(&next, &e).await["state"] == "admitted"
    })
    .await;
    // Awake again, past abandon_timeout: still its ticket, first in line.
    let s = status(&sleeper, &e).await;
    assert_eq!(s["state"], "waiting", "{s}");
    assert_eq!(s["position"], 1, "ahead of those who were behind: {s}");
    let s = status(&later, &e).await;
    assert_eq!(s["state"], "waiting", "{s}");
    // The next free place is the sleeper's, not the pupil behind.
    next.get(e.url("/logout")).send().await.expect("logout");
    eventually("the sleeper gets the next place", DEADLINE, async || {
        let s = status(&sleeper, &e).await;
        assert_ne!(status(&later, &e).await["state"], "admitted", "overtaken");
        s["state"] == "admitted"
    })
    .await;
    assert_eq!(status(&later, &e).await["state"], "waiting");
}

/// A queue that has just started moving is measured over a second or two: its status
/// gives the wait as a range (`eta_low_seconds` <= `eta_seconds` <= `eta_high_seconds`,
/// the low end below the high one), and the page says it as a range in both languages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_just_started_gives_its_wait_as_a_range() {
    let o = EchoOrigin::start("o").await;
    let e = start(
        o.addr,
        "active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 5m",
    );
    let inside = cookie_client();
    inside.get(e.url("/")).send().await.expect("r");
    // Enough of them that even the fastest first measure (one place in a 250 ms tick)
    // puts the last one more than a minute away at the high end.
    let pupils: Vec<reqwest::Client> = (0..100).map(|_| cookie_client()).collect();
    for c in &pupils {
        c.get(e.url("/")).send().await.expect("r");
    }
    // One place frees: the queue moves once, and the room has measured one tick of it.
    inside.get(e.url("/logout")).send().await.expect("logout");
    let last = &pupils[pupils.len() - 1];
    let mut s = serde_json::Value::Null;
    eventually("an estimate", DEADLINE, async || {
        s = status(last, &e).await;
        s["eta_seconds"].as_u64().is_some()
    })
    .await;
    let (low, eta, high) = (
        s["eta_low_seconds"].as_u64().expect("low"),
        s["eta_seconds"].as_u64().expect("eta"),
        s["eta_high_seconds"].as_u64().expect("high"),
    );
    assert!(low <= eta && eta <= high, "{s}");
    assert!(low < high, "a range from a queue measured this little: {s}");
    // The page in French and English: the range in words (JavaScript or not, it is the
    // same text: the page's script shows the status's eta_text).
    for (lang, words) in [
        ("fr", ["entre ", "moins de "]),
        ("en", ["between ", "less than "]),
    ] {
        let html = last
            .get(e.url("/"))
            .header("accept-language", lang)
            .header("accept", "text/html")
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("html");
        let shown = html
            .split("id=\"q-eta-v\"")
            .nth(1)
            .and_then(|r| r.split('>').nth(1))
            .and_then(|r| r.split('<').next())
            .unwrap_or("");
        assert!(
            words.iter().any(|w| shown.starts_with(w)),
            "{lang}: the wait as a range, not {shown:?}"
        );
    }
}
