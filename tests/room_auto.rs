//! A waiting room that sizes itself from the ENT (`active_users: auto`, issue #23),
//! through the real proxy, in front of an ENT whose capacity the test changes
//! (`LenientEnt::set_servers`: `n` servers answering one request at a time each, so the
//! latency rises with the load past `n`). Pupils click in a closed loop, each from its own
//! address. Asserted: the room grows from its lower bound while the ENT is fast and stops
//! where its latency rises; half the servers die: admissions stop at once and those inside
//! get no error; the servers come back: the room admits again.

mod common;

use common::lenient_ent::LenientEnt;
use common::*;
use ecluse::policy::ticket::{Keyring, TicketState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";
const SERVICE: Duration = Duration::from_millis(100);

fn yaml(origin: std::net::SocketAddr) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s, trusted_proxies: ["127.0.0.1"] }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent:
    active_users: auto
    new_users_per_minute: auto
    auto: {{ min_active_users: 2, max_active_users: 40, min_new_users_per_minute: 60 }}
    secret_file: keys
    poll_interval: 1s
    abandon_timeout: 30s
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    )
}

fn ticket_state(r: &reqwest::Response) -> Option<TicketState> {
    let keys = Keyring::parse(KEY).ok()?;
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let val = s.strip_prefix("ecluse_ent=")?.split(';').next()?;
        Some(keys.open(val, "ent").ok()?.state)
    })
}

async fn room(e: &Ecluse) -> serde_json::Value {
    // A trace of what the room said, for a failure's report (every 40th look).
    static LOOKS: AtomicU64 = AtomicU64::new(0);
    let v: serde_json::Value = client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    let r = v["rooms"][0].clone();
    if LOOKS.fetch_add(1, Ordering::Relaxed) % 40 == 0 {
        eprintln!(
            "room: active {} pending {} waiting {} admitted {} auto {}",
            r["active_users"],
            r["pending_admissions"],
            r["waiting"],
            r["counters"]["admitted"],
            r["auto"]
        );
    }
    r
}

/// Changes of the room's automatic numbers so far, for these reasons.
async fn changes(e: &Ecluse, reasons: &[&str]) -> f64 {
    let text = client()
        .get(e.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    reasons
        .iter()
        .map(|r| {
            metric_value(
                &text,
                "ecluse_room_auto_changes_total",
                &[("room", "ent"), ("reason", r)],
            )
        })
        .sum()
}

const CUTS: &[&str] = &["latency", "saturated", "errors"];

/// What the pupils saw.
#[derive(Default)]
struct Seen {
    /// Answers to pupils already inside that were not the ENT's 200.
    errors_inside: AtomicU64,
    /// Requests answered to pupils inside.
    served_inside: AtomicU64,
    stop: AtomicBool,
}

/// A pupil: opens the ENT, waits on the queue when there is one (polling its status),
/// then clicks in a closed loop until the test ends.
async fn pupil(e: Arc<Ecluse>, i: usize, seen: Arc<Seen>) {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let addr = format!("10.1.{}.{}", i / 200, i % 200 + 1);
    let mut inside = false;
    let mut n = 0u64;
    while !seen.stop.load(Ordering::Relaxed) {
        if !inside {
            let s: Option<serde_json::Value> = match c
                .get(e.url("/.ecluse/queue/status?room=ent"))
                .header("x-forwarded-for", &addr)
                .send()
                .await
            {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            let admitted = s.as_ref().and_then(|s| s["state"].as_str()) == Some("admitted");
            if !admitted && n > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        }
        n += 1;
        let r = c
            .get(e.url(&format!("/cahier/{i}/{n}")))
            .header("x-forwarded-for", &addr)
            .send()
            .await;
        match r {
            Ok(r) => {
                let state = ticket_state(&r);
                let queue = state == Some(TicketState::Waiting);
                let ok = r.status() == 200;
                let _ = r.bytes().await;
                if inside {
                    seen.served_inside.fetch_add(1, Ordering::Relaxed);
                    if !ok || queue {
                        seen.errors_inside.fetch_add(1, Ordering::Relaxed);
                    }
                } else if ok && !queue {
                    inside = true;
                }
            }
            Err(_) if inside => {
                seen.errors_inside.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_room_follows_the_ent_through_a_lost_server() {
    let ent = LenientEnt::start().await;
    ent.set_servers(Some((4, SERVICE)));
    let e = Arc::new(Ecluse::start_with(
        &yaml(ent.addr),
        &[("keys", KEY.as_bytes())],
        |_| {},
    ));
    let seen = Arc::new(Seen::default());
    let mut pupils = Vec::new();
    for i in 0..24 {
        pupils.push(tokio::spawn(pupil(e.clone(), i, seen.clone())));
    }
    let limit = Duration::from_secs(90);

    // 1. The room grows from its lower bound (2) while the ENT answers at its unloaded
    // speed (up to 1.5 times it: 6 pupils clicking in a loop on 4 servers), then stops
    // where the latency rises: more than 8 pupils double it. Others queue.
    eventually(
        "the room grew from its lower bound to the ENT's knee",
        limit,
        async || {
            let r = room(&e).await;
            r["auto"]["capacity"].as_u64().unwrap_or(0) >= 6
                && r["active_users"].as_u64().unwrap_or(0) >= 6
                && r["waiting"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    let r = room(&e).await;
    let grown = r["auto"]["capacity"].as_u64().unwrap_or(0);
    assert!(
        grown <= 16,
        "the room stopped near the ENT's knee (4 servers), not at {grown}: {r}"
    );

    // 2. Half the servers die: the latency doubles; the room cuts at once below the
    // pupils inside, so admissions stop; those inside keep being served, without error.
    let cuts = changes(&e, CUTS).await;
    ent.set_servers(Some((2, SERVICE)));
    eventually("the room cut on latency", limit, async || {
        let r = room(&e).await;
        let cap = r["auto"]["capacity"].as_u64().unwrap_or(u64::MAX);
        let inside =
            r["active_users"].as_u64().unwrap_or(0) + r["pending_admissions"].as_u64().unwrap_or(0);
        cap < inside && changes(&e, CUTS).await > cuts
    })
    .await;
    let admitted = room(&e).await["counters"]["admitted"].as_u64().unwrap_or(0);
    // While the pupils inside go on clicking (progress, not time) nobody else gets in.
    let served = seen.served_inside.load(Ordering::Relaxed);
    eventually("the pupils inside go on clicking", limit, async || {
        seen.served_inside.load(Ordering::Relaxed) >= served + 40
    })
    .await;
    let r = room(&e).await;
    assert_eq!(
        r["counters"]["admitted"].as_u64().unwrap_or(0),
        admitted,
        "no admission while the ENT is overloaded: {r}"
    );
    assert!(
        r["waiting"].as_u64().unwrap_or(0) > 0,
        "the others wait: {r}"
    );

    // 3. The servers come back (and more): the room grows and admits again.
    let growths = changes(&e, &["headroom"]).await;
    ent.set_servers(Some((8, SERVICE)));
    eventually("admissions resume after the recovery", limit, async || {
        room(&e).await["counters"]["admitted"].as_u64().unwrap_or(0) > admitted
    })
    .await;
    assert!(
        changes(&e, &["headroom"]).await > growths,
        "the room grew again on headroom"
    );
    seen.stop.store(true, Ordering::Relaxed);
    for p in pupils {
        let _ = p.await;
    }
    assert_eq!(
        seen.errors_inside.load(Ordering::Relaxed),
        0,
        "pupils inside never got an error or a queue page"
    );
    // Visible to ops: the gauges and the changes by reason.
    let text = client()
        .get(e.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metric_value(&text, "ecluse_room_auto_capacity", &[("room", "ent")]) >= 2.0);
    assert!(metric_value(&text, "ecluse_room_auto_pace", &[("room", "ent")]) >= 60.0);
    assert!(changes(&e, CUTS).await >= 1.0);
    let log = e.stderr_text();
    assert!(
        log.contains("room ent: auto capacity") && log.contains("(latency)"),
        "each change is logged with its cause"
    );
}

#[test]
fn check_validates_the_auto_keys() {
    let cases: &[(&str, &str)] = &[
        (
            "active_users: auto, new_users_per_minute: 60, auto: { min_new_users_per_minute: 5 }",
            "which is a fixed number",
        ),
        (
            "active_users: 10, new_users_per_minute: 60, auto: { min_active_users: 5 }",
            "neither",
        ),
        (
            "active_users: auto, new_users_per_minute: auto, auto: { min_active_users: 50, max_active_users: 10 }",
            "max_active_users",
        ),
        (
            "active_users: auto, new_users_per_minute: auto, auto: { min_active_users: 0 }",
            "min_active_users",
        ),
        (
            "active_users: automatic, new_users_per_minute: 60",
            "active_users",
        ),
    ];
    for (room, want) in cases {
        let dir = TempDir::new("room-auto-check");
        std::fs::write(dir.path().join("keys"), KEY).expect("keys");
        let yaml = format!(
            r#"listen: ["127.0.0.1:8080"]
admin: {{ listen: "127.0.0.1:9090" }}
waiting_rooms:
  ent: {{ {room}, secret_file: keys }}
origins:
  ent: {{ servers: ["127.0.0.1:1"] }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
        );
        let f = dir.path().join("ecluse.yaml");
        std::fs::write(&f, yaml).expect("write");
        let out = check(&f);
        let err = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{room}: refused");
        assert!(err.contains(want), "{room}: says {want}: {err}");
        assert!(
            err.contains("ecluse.yaml:"),
            "{room}: with a position: {err}"
        );
    }
    // Fleet mode refuses `auto`, with the reason.
    let dir = TempDir::new("room-auto-fleet");
    std::fs::write(dir.path().join("keys"), KEY).expect("keys");
    let f = dir.path().join("ecluse.yaml");
    std::fs::write(
        &f,
        r#"listen: ["127.0.0.1:8080"]
admin: { listen: "127.0.0.1:9090" }
cluster: { redis: "redis://127.0.0.1:6379/" }
waiting_rooms:
  ent: { active_users: auto, new_users_per_minute: auto, secret_file: keys }
origins:
  ent: { servers: ["127.0.0.1:1"] }
routes:
  - { name: ent, origin: ent, waiting_room: ent }
"#,
    )
    .expect("write");
    let out = check(&f);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fleet mode"), "{err}");
    // And a room with both numbers `auto` and bounds passes.
    std::fs::write(
        &f,
        r#"listen: ["127.0.0.1:8080"]
admin: { listen: "127.0.0.1:9090" }
waiting_rooms:
  ent: { active_users: auto, new_users_per_minute: auto, auto: { min_active_users: 20, max_active_users: 900 }, secret_file: keys }
origins:
  ent: { servers: ["127.0.0.1:1"] }
routes:
  - { name: ent, origin: ent, waiting_room: ent }
"#,
    )
    .expect("write");
    let out = check(&f);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ecluse check FILE`, its output.
fn check(f: &std::path::Path) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("check")
        .arg(f)
        .output()
        .expect("check")
}
