//! A fleet behind a real load balancer: Debian's HAProxy running the shipped
//! `config/haproxy/ecluse-fleet.cfg` (only its addresses replaced), three ecluse nodes
//! sharing one waiting room through a real `redis-server`, the ENT a real origin, all on
//! loopback ports chosen by binding port 0. Pupils connect from 127.0.0.3, HAProxy
//! reaches the nodes from 127.0.0.2 (the only address in `proxy_protocol_from`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

const LB: &str = "127.0.0.2";
const PUPILS_FROM: &str = "127.0.0.3";

/// The shipped configuration, as ops install it.
const SHIPPED: &str = include_str!("../config/haproxy/ecluse-fleet.cfg");

/// Replace `from` by `to` in `cfg`, exactly `times` times: the shipped file must still
/// hold what the test adapts (a rewrite of it fails here, not silently).
fn swap(cfg: &mut String, from: &str, to: &str, times: usize) {
    assert_eq!(
        cfg.matches(from).count(),
        times,
        "the shipped HAProxy config no longer holds {from:?} {times} time(s)"
    );
    *cfg = cfg.replace(from, to);
}

/// HAProxy with the shipped config; its two frontends listen on sockets made here on
/// port 0 and handed over as fds 3 and 4 (`bind fd@N`).
struct Haproxy {
    child: Child,
    http: SocketAddr,
    sock: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    /// `nodes`: (traffic address, admin address) of n1, n2, n3.
    fn start(nodes: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        assert_eq!(nodes.len(), 3, "the shipped config lists three nodes");
        let dir = TempDir::new("haproxy-fleet");
        let sock = dir.path().join("admin.sock");
        let lh = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ls = TcpListener::bind("127.0.0.1:0").expect("bind");
        let http = lh.local_addr().expect("addr");
        let mut cfg = SHIPPED.to_string();
        swap(&mut cfg, "bind :80\n", "bind fd@3\n", 1);
        swap(&mut cfg, "bind :443\n", "bind fd@4\n", 1);
        swap(
            &mut cfg,
            "stats socket /run/haproxy/admin.sock",
            &format!("stats socket {}", sock.display()),
            1,
        );
        // No syslog in a test; a test user cannot raise its fd limit to 200,000.
        swap(&mut cfg, "    log /dev/log local0\n", "", 1);
        swap(&mut cfg, "maxconn 200000", "maxconn 2000", 1);
        // The balancer's own address, as `source` on a real host's second interface.
        swap(
            &mut cfg,
            "default-server send-proxy-v2",
            &format!("default-server source {LB} send-proxy-v2"),
            1,
        );
        for (i, (proxy, admin)) in nodes.iter().enumerate() {
            let host = format!("10.0.1.1{}", i + 1);
            // The TLS backend points at the plain listener: nothing uses it here, its
            // health checks must still find the node.
            swap(&mut cfg, &format!("{host}:8080 "), &format!("{proxy} "), 1);
            swap(&mut cfg, &format!("{host}:8443 "), &format!("{proxy} "), 1);
            swap(
                &mut cfg,
                &format!("addr {host} port 9090"),
                &format!("addr {} port {}", admin.ip(), admin.port()),
                2,
            );
        }
        let left: Vec<&str> = cfg
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains("10.0.1."))
            .collect();
        assert!(left.is_empty(), "addresses left over: {left:?}");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).expect("write cfg");
        let (fh, fs) = (lh.as_raw_fd(), ls.as_raw_fd());
        let child = spawn_haproxy(&path, [fh, fs]);
        drop((lh, ls));
        Haproxy {
            child,
            http,
            sock,
            _dir: dir,
        }
    }

    /// Each server of the plain backend and its state (`UP`, `DOWN`, `MAINT`...), from
    /// the stats socket; empty while HAProxy is not answering yet.
    fn servers(&self) -> Vec<(String, String)> {
        let Ok(mut s) = UnixStream::connect(&self.sock) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"show stat\n").is_err() {
            return Vec::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        // CSV: pxname,svname,...,status is the 18th field.
        out.lines()
            .filter(|l| l.starts_with("ecluse_http,n"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(1)?.to_string(), f.get(17)?.to_string()))
            })
            .collect()
    }

    fn state_of(&self, server: &str) -> String {
        self.servers()
            .into_iter()
            .find(|(n, _)| n == server)
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_yaml(origin: SocketAddr, redis: u16, id: &str, cap: usize) -> String {
    format!(
        r#"listen:
  - {{ address: "127.0.0.1:0", proxy_protocol: true, proxy_protocol_from: ["{LB}/32"] }}
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 6s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
cluster: {{ redis: "redis://127.0.0.1:{redis}/", node_id: {id}, sync_interval: 100ms, timeout: 1s }}
waiting_rooms:
  ent: {{ active_users: {cap}, new_users_per_minute: 600, secret_env: ECLUSE_LB_TEST_KEYS, poll_interval: 1s, abandon_timeout: 1m, session_idle_timeout: 5m }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
    waiting_room: ent
"#
    )
}

/// A pupil's browser: keeps its cookies, comes from the pupils' address, and opens a
/// new connection for each request (so every request is balanced anew, as many
/// browsers behind many NATs would be, and none rides a connection to a dead node).
fn pupil() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .local_address(PUPILS_FROM.parse::<IpAddr>().expect("ip"))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_json(p: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = p
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url} through HAProxy: {e:?}"));
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("{url}: {status} {body}"))
}

async fn state(c: &reqwest::Client, e: &Ecluse) -> serde_json::Value {
    c.get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json")
}

/// Inside (the ENT answered, or the status says admitted), or waiting at a place.
fn standing(v: &serde_json::Value) -> Result<(), Option<u64>> {
    if v["server"] == "ent" || v["state"] == "admitted" {
        Ok(())
    } else {
        assert_eq!(v["state"], "waiting", "{v}");
        Err(v["position"].as_u64())
    }
}

/// Three nodes and HAProxy in front, once HAProxy sees all three UP.
async fn fleet_behind_haproxy(
    origin: SocketAddr,
    redis: u16,
    cap: usize,
) -> (Vec<Ecluse>, Haproxy) {
    std::env::set_var(
        "ECLUSE_LB_TEST_KEYS",
        "k1:8f3a5e0c9b1d2f4a6c8e0b2d4f6a8c0e1f3b5d7a9c1e3f5b7d9a1c3e5f7b9d1a",
    );
    let nodes: Vec<Ecluse> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Ecluse::start(&node_yaml(origin, redis, id, cap)))
        .collect();
    let admin = client();
    for e in &nodes {
        eventually(
            "every node sees Redis and three live nodes",
            DEADLINE,
            async || {
                let s = state(&admin, e).await;
                s["cluster"]["redis_up"] == true && s["cluster"]["live_nodes"] == 3
            },
        )
        .await;
    }
    let addrs: Vec<(SocketAddr, SocketAddr)> = nodes.iter().map(|e| (e.proxy, e.admin)).collect();
    let lb = Haproxy::start(&addrs);
    eventually("HAProxy sees the three nodes UP", DEADLINE, async || {
        let s = lb.servers();
        s.len() == 3 && s.iter().all(|(_, st)| st == "UP")
    })
    .await;
    (nodes, lb)
}

/// A surge through HAProxy; one node SIGKILLed in the middle of it. HAProxy takes the
/// dead node out (health check) and sends its connections elsewhere meanwhile
/// (redispatch); the pupils keep their places on the two others: nobody inside is sent
/// back to the queue, no waiting ticket is refused, never more inside than the
/// capacity, the queue moves in arrival order (within one polling round), and pupils
/// who arrive after the kill get a place and get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_behind_haproxy_mid_surge_loses_no_place() {
    let redis = Redis::start();
    let origin = EchoOrigin::start("ent").await;
    let cap = 6usize;
    let (mut nodes, lb) = fleet_behind_haproxy(origin.addr, redis.port, cap).await;
    let total = 40usize;
    let pupils: Vec<reqwest::Client> = (0..total).map(|_| pupil()).collect();
    let mut queued = vec![false; total];
    let mut let_in: Vec<Option<usize>> = vec![None; total];
    let mut left = vec![false; total];
    let mut after_kill = vec![false; total];
    let mut arrived = 0usize;
    let mut round = 0usize;
    let mut killed: Option<Instant> = None;
    let mut in_after_kill = 0usize;
    let mut late_in = 0usize;
    let mut down_after: Option<Duration> = None;
    let mut wrong: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        round += 1;
        assert!(
            Instant::now() < deadline,
            "the surge did not finish: arrived {arrived}, let in {let_in:?}, {wrong:?}"
        );
        // Two newcomers a round.
        for _ in 0..2 {
            if arrived < total {
                let i = arrived;
                arrived += 1;
                after_kill[i] = killed.is_some();
                let v = get_json(&pupils[i], &lb.url("/home")).await;
                match standing(&v) {
                    Ok(()) => let_in[i] = Some(round),
                    Err(p) => {
                        assert!(p.is_some(), "pupil {i} queued without a place: {v}");
                        queued[i] = true;
                    }
                }
                if i == 0 {
                    // The ENT sees the pupil's address, carried by the PROXY header.
                    assert_eq!(v["headers"]["x-real-ip"], PUPILS_FROM, "{v}");
                }
            }
        }
        // Every other round, the one inside longest leaves.
        if round % 2 == 0 {
            if let Some(i) = (0..total).find(|&i| let_in[i].is_some() && !left[i]) {
                let r = pupils[i]
                    .get(lb.url("/logout"))
                    .send()
                    .await
                    .expect("logout through HAProxy");
                assert_eq!(r.status(), 200);
                left[i] = true;
            }
        }
        // Those inside keep using the ENT.
        for i in 0..total {
            if let_in[i].is_some() && !left[i] {
                let v = get_json(&pupils[i], &lb.url("/page")).await;
                if v["server"] != "ent" {
                    wrong.push(format!(
                        "pupil {i}, inside since round {:?}, sent back at round {round}: {v}",
                        let_in[i]
                    ));
                    left[i] = true;
                }
            }
        }
        // Those waiting poll.
        for i in 0..arrived {
            if queued[i] && let_in[i].is_none() && !left[i] {
                let v = get_json(&pupils[i], &lb.url("/.ecluse/queue/status?room=ent")).await;
                if v["state"] == "lost" {
                    wrong.push(format!("pupil {i}: ticket refused at round {round}"));
                    left[i] = true;
                    continue;
                }
                if standing(&v).is_ok() {
                    let_in[i] = Some(round);
                    if killed.is_some() {
                        in_after_kill += 1;
                        if after_kill[i] {
                            late_in += 1;
                        }
                    }
                }
            }
        }
        let inside = (0..total)
            .filter(|&i| let_in[i].is_some() && !left[i])
            .count();
        assert!(
            inside <= cap,
            "{inside} inside, capacity {cap} (round {round})"
        );
        // n2 dies mid-surge, a queue standing.
        if killed.is_none() && arrived >= 14 {
            assert!(queued.iter().any(|q| *q), "a queue stands at the kill");
            // HAProxy spread the pupils: the node about to die served some of them.
            for (k, e) in nodes.iter().enumerate() {
                let served = e.metric("ecluse_requests_total", &[]);
                assert!(
                    served > 0.0,
                    "node n{} served nobody before the kill",
                    k + 1
                );
            }
            nodes[1].child.kill().expect("SIGKILL n2");
            let _ = nodes[1].child.wait();
            killed = Some(Instant::now());
        }
        if let (Some(k), None) = (killed, down_after) {
            if lb.state_of("n2").starts_with("DOWN") {
                down_after = Some(k.elapsed());
            }
        }
        if arrived == total && down_after.is_some() && late_in >= 2 {
            break;
        }
    }
    println!(
        "behind HAProxy: n2 SIGKILLed; HAProxy marked it DOWN after {down_after:?}; {in_after_kill} let in after the kill ({late_in} who arrived after it); let in (round) {let_in:?}"
    );
    assert!(wrong.is_empty(), "{wrong:?}");
    // Arrival order: nobody let in before an earlier queued pupil, but within one
    // polling round (both turns came between two polls).
    for i in 0..total {
        for j in i + 1..total {
            if !queued[i] {
                continue;
            }
            if let Some(b) = let_in[j] {
                let a = let_in[i].unwrap_or(round + 1);
                assert!(
                    a <= b + 1,
                    "pupil {j} let in at round {b}, before pupil {i} (round {a}), who came first: {let_in:?}"
                );
            }
        }
    }
    // The two others stay UP.
    assert_eq!(lb.state_of("n1"), "UP");
    assert_eq!(lb.state_of("n3"), "UP");
    for e in [&nodes[0], &nodes[2]] {
        assert_eq!(
            e.metric(
                "ecluse_room_rejected_tickets_total",
                &[("reason", "reused")]
            ),
            0.0,
            "a ticket refused as used"
        );
    }
}

/// `systemctl stop` on one node (SIGTERM): its `/readyz` turns 503 at once, HAProxy's
/// check takes it out within the node's grace period, while it still serves, and no
/// request through the balancer fails meanwhile (but one whose connection reached the
/// node at the signal's instant: see the loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_node_leaves_haproxy_before_it_stops_serving() {
    let redis = Redis::start();
    let origin = EchoOrigin::start("ent").await;
    let (mut nodes, lb) = fleet_behind_haproxy(origin.addr, redis.port, 1000).await;
    let p = pupil();
    let t0 = Instant::now();
    nodes[0].signal(libc::SIGTERM);
    let mut requests = 0usize;
    // Requests whose connection was closed unanswered, and when (since the SIGTERM).
    let mut closed: Vec<Duration> = Vec::new();
    loop {
        let r = p.get(lb.url("/page")).send().await;
        let v: serde_json::Value = match r {
            Ok(r) => r.json().await.expect("json"),
            // A connection the node accepted at the very instant of the signal, its
            // request not read yet, is closed unanswered (pingora closes the connections
            // it sees idle when the drain starts; a browser reloads). Tolerated once,
            // at the signal, and reported; never later in the grace period.
            Err(e) if e.is_request() && closed.is_empty() && t0.elapsed() < Duration::from_secs(1) => {
                closed.push(t0.elapsed());
                continue;
            }
            Err(e) => panic!(
                "request {requests} failed {:?} after SIGTERM (closed before: {closed:?}), n1 {:?}, n1 exited {:?}: {e:?}",
                t0.elapsed(),
                lb.state_of("n1"),
                nodes[0].child.try_wait()
            ),
        };
        assert_eq!(v["server"], "ent", "{v}");
        requests += 1;
        if lb.state_of("n1").starts_with("DOWN") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "HAProxy never took the draining node out: {:?}",
            lb.servers()
        );
    }
    let out = t0.elapsed();
    // Still inside the grace period (6 s): the node was taken out while it served.
    assert!(
        nodes[0].child.try_wait().expect("wait").is_none(),
        "n1 exited before HAProxy took it out ({out:?})"
    );
    println!(
        "drain: HAProxy took n1 out {out:?} after SIGTERM ({requests} requests answered, closed unanswered at the signal: {closed:?})"
    );
    for _ in 0..10 {
        let v = get_json(&p, &lb.url("/page")).await;
        assert_eq!(v["server"], "ent", "{v}");
    }
    assert!(nodes[0].wait_exit(Duration::from_secs(20)).is_some());
}
