//! State that belongs to one instance and survives a crash (issue #19): two ecluse on one
//! machine never share a waiting room, a snapshot is restored only into the room it came
//! from, and a `kill -9` never makes ecluse hand out a ticket number twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use ecluse::policy::ticket::{Keyring, TicketState};
use rand::Rng;

const KEY_A: &str = "a1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
const KEY_B: &str = "b1:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n";

fn yaml(origin: std::net::SocketAddr, server: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ grace_period: 0s, shutdown_timeout: 2s{server} }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 1, secret_file: keys }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    )
}

fn start(yaml: &str, key: &str, env: &[(&str, &str)]) -> Ecluse {
    Ecluse::start_full_env(yaml, &[("keys", key.as_bytes())], |_| {}, &[], env)
}

/// The ticket a response's Set-Cookie carries (the test knows the key).
fn ticket_of(r: &reqwest::Response, key: &str) -> Option<(u64, TicketState)> {
    let keys = Keyring::parse(key).expect("key");
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let s = v.to_str().ok()?;
        let val = s.strip_prefix("ecluse_ent=")?.split(';').next()?;
        let t = keys.open(val, "ent").ok()?;
        Some((t.number, t.state))
    })
}

async fn newcomer(e: &Ecluse, key: &str) -> Option<(u64, TicketState)> {
    let r = client().get(e.url("/")).send().await.ok()?;
    ticket_of(&r, key)
}

fn stop(mut e: Ecluse) {
    e.signal(libc::SIGTERM);
    e.wait_exit(Duration::from_secs(20)).expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_machine_never_share_a_waiting_room() {
    // Both processes see the same temp directory, as two services on one host do.
    let shared = TempDir::new("shared-tmp");
    let tmp = shared.path().to_str().expect("utf-8").to_string();
    let o = EchoOrigin::start("ent").await;
    let a = start(&yaml(o.addr, ""), KEY_A, &[("TMPDIR", &tmp)]);
    assert_eq!(
        newcomer(&a, KEY_A).await.map(|t| t.1),
        Some(TicketState::Admitted),
        "A's first pupil gets in"
    );
    assert_eq!(
        newcomer(&a, KEY_A).await.map(|t| t.1),
        Some(TicketState::Waiting),
        "A is full"
    );
    stop(a);
    // Another instance, another policy, other keys, same machine: its first pupil finds
    // an empty room, not A's sessions.
    let b = start(&yaml(o.addr, ""), KEY_B, &[("TMPDIR", &tmp)]);
    assert_eq!(
        newcomer(&b, KEY_B).await.map(|t| t.1),
        Some(TicketState::Admitted),
        "B's first pupil must not queue behind A's sessions; stderr:\n{}",
        b.stderr_text()
    );
    // Each instance's state sits in its own private directory.
    let mine = shared
        .path()
        .join(format!("ecluse-{}", rustix::process::geteuid().as_raw()));
    let dirs = std::fs::read_dir(&mine).expect("private dir").count();
    assert_eq!(dirs, 2, "one directory per instance in {}", mine.display());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&mine).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_under_other_keys_is_set_aside() {
    let state = TempDir::new("state");
    let dir = state.path().to_str().expect("utf-8").to_string();
    let server = format!(", state_dir: \"{dir}\"");
    let o = EchoOrigin::start("ent").await;
    let a = start(&yaml(o.addr, &server), KEY_A, &[]);
    assert_eq!(
        newcomer(&a, KEY_A).await.map(|t| t.1),
        Some(TicketState::Admitted)
    );
    stop(a);
    // Ops point another policy (other keys) at the same directory by mistake.
    let b = start(&yaml(o.addr, &server), KEY_B, &[]);
    assert_eq!(
        newcomer(&b, KEY_B).await.map(|t| t.1),
        Some(TicketState::Admitted),
        "not A's sessions; stderr:\n{}",
        b.stderr_text()
    );
    assert!(b.stderr_text().contains("set aside"), "{}", b.stderr_text());
    stop(b);
    // The same keys again: A's state (kept aside, B's saved now) is B's, and A finds
    // B's snapshot foreign in turn, never a merge of the two.
    let a = start(&yaml(o.addr, &server), KEY_A, &[]);
    assert_eq!(
        newcomer(&a, KEY_A).await.map(|t| t.1),
        Some(TicketState::Admitted)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_hands_a_number_out_twice() {
    let state = TempDir::new("state");
    let dir = state.path().to_str().expect("utf-8").to_string();
    let server = format!(", state_dir: \"{dir}\"");
    let o = EchoOrigin::start("ent").await;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut handed = 0usize;
    let mut rng = rand::rng();
    for round in 0..4 {
        let mut e = start(&yaml(o.addr, &server), KEY_A, &[]);
        // Newcomers arrive concurrently while the process is killed at a random moment
        // (well before the 2 s periodic snapshot).
        let url = e.url("/");
        let before_kill = rng.random_range(3..25);
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let r = client().get(url).send().await.ok()?;
                ticket_of(&r, KEY_A)
            }));
        }
        // Wait until a random number of them have their ticket, then kill -9.
        let mut got = Vec::new();
        let mut rest = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            if i < before_kill {
                got.push(t.await.expect("task"));
            } else {
                rest.push(t);
            }
        }
        let _ = e.child.kill();
        let _ = e.child.wait();
        for t in rest {
            got.push(t.await.expect("task"));
        }
        for (number, _) in got.into_iter().flatten() {
            handed += 1;
            assert!(
                seen.insert(number),
                "round {round}: ticket number {number} handed out twice"
            );
        }
    }
    assert!(handed >= 12, "enough tickets were handed out ({handed})");
}
