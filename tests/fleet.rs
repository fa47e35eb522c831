//! Fleet mode: three real ecluse nodes and a real `redis-server` on free loopback ports.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

fn node_yaml(origin: SocketAddr, redis: u16, id: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
cluster: {{ redis: "redis://127.0.0.1:{redis}/", node_id: {id}, sync_interval: 100ms, timeout: 200ms }}
degradation:
  levels:
    - {{ name: normal }}
    - {{ name: busy, disable: [visio] }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: files
    match: {{ path_prefix: /files/ }}
    origin: ent
    cache: {{ ttl: 10m }}
  - name: visio
    match: {{ path_prefix: /visio }}
    origin: ent
    feature: visio
  - name: api
    match: {{ path_prefix: /api/ }}
    origin: ent
    rate_limits: [{{ key: route, rate: 60/s, burst: 30 }}]
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
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

async fn fleet_of_three(origin: SocketAddr, redis: u16) -> Vec<Ecluse> {
    let nodes: Vec<Ecluse> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| Ecluse::start(&node_yaml(origin, redis, id)))
        .collect();
    let c = client();
    for e in &nodes {
        eventually("every node sees three live nodes", DEADLINE, async || {
            state(&c, e).await["cluster"]["live_nodes"] == 3
        })
        .await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_config_view_levels_and_purges() {
    let mut redis = Redis::start();
    let origin = EchoOrigin::start("ent").await;
    let nodes = fleet_of_three(origin.addr, redis.port).await;
    let c = client();

    // Every node's config hash is visible from every node (the files differ by node_id).
    let s = state(&c, &nodes[0]).await;
    let seen: Vec<(String, String)> = s["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["config_hash"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{s}");
    for (i, e) in nodes.iter().enumerate() {
        let own = state(&c, e).await["config"]["hash"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            seen.contains(&(format!("n{}", i + 1), own.clone())),
            "node n{} runs {own}; node n1 sees {seen:?}",
            i + 1
        );
    }
    assert_eq!(
        nodes[1].metric("ecluse_cluster_nodes", &[]),
        3.0,
        "the fleet size is exported"
    );

    // A level forced on one node applies fleet-wide.
    let r = c
        .post(nodes[0].admin_url("/admin/level"))
        .body(r#"{"level": "busy"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for e in &nodes {
        eventually(
            "every node at level busy",
            Duration::from_secs(5),
            async || state(&c, e).await["degradation"]["level"] == "busy",
        )
        .await;
        assert_eq!(c.get(e.url("/visio")).send().await.unwrap().status(), 503);
    }
    let r = c
        .post(nodes[2].admin_url("/admin/level"))
        .body(r#"{"level": null}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for e in &nodes {
        eventually(
            "every node back to normal",
            Duration::from_secs(5),
            async || state(&c, e).await["degradation"]["level"] == "normal",
        )
        .await;
    }

    // A purge on one node empties the others.
    for e in &nodes {
        let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
        assert!(
            r.headers()["cache-status"]
                .to_str()
                .unwrap()
                .starts_with("ecluse; hit"),
            "each node caches"
        );
    }
    let before = origin.hits();
    let r = c
        .post(nodes[1].admin_url("/admin/cache/purge"))
        .body(r#"{"prefix": "/files/"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for e in &nodes {
        eventually(
            "the purge reached the node",
            Duration::from_secs(5),
            async || {
                let r = c.get(e.url("/files/a.pdf")).send().await.unwrap();
                r.headers()["cache-status"]
                    .to_str()
                    .unwrap()
                    .contains("fwd=uri-miss")
            },
        )
        .await;
    }
    assert!(origin.hits() >= before + 3);

    // Redis killed: every node keeps serving and says it fell back; Redis back: in sync.
    redis.kill();
    for e in &nodes {
        eventually(
            "the node notices Redis is gone",
            Duration::from_secs(5),
            async || state(&c, e).await["cluster"]["redis_up"] == false,
        )
        .await;
        assert_eq!(e.metric("ecluse_cluster_fallback", &[]), 1.0);
        assert_eq!(c.get(e.url("/hello")).send().await.unwrap().status(), 200);
        // Its share of the global limit: a third, as last seen.
        let share = e.metric("ecluse_cluster_limit_share_permille", &[("route", "api")]);
        assert!((330.0..=340.0).contains(&share), "share {share}");
    }
    assert!(redis.spawn(), "redis-server restarted on its port");
    for e in &nodes {
        eventually(
            "the node resynchronises",
            Duration::from_secs(10),
            async || {
                let s = state(&c, e).await;
                s["cluster"]["redis_up"] == true && s["cluster"]["live_nodes"] == 3
            },
        )
        .await;
    }
    // And forced levels work again.
    let r = c
        .post(nodes[2].admin_url("/admin/level"))
        .body(r#"{"level": "busy", "for": "1m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for e in &nodes {
        eventually(
            "every node at busy again",
            Duration::from_secs(5),
            async || state(&c, e).await["degradation"]["level"] == "busy",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_global_rate_limit_holds_fleet_wide() {
    let _redis = Redis::start();
    let redis_port = _redis.port;
    let origin = EchoOrigin::start("ent").await;
    let nodes = fleet_of_three(origin.addr, redis_port).await;
    let urls: Vec<String> = nodes.iter().map(|e| e.url("/api/x")).collect();
    // Warm-up: the nodes learn how the traffic spreads.
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let run = |secs: u64| {
        let c = c.clone();
        let urls = urls.clone();
        async move {
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..12 {
                let (c, urls) = (c.clone(), urls.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut ok, mut limited, mut i) = (0u64, 0u64, w);
                    while t0.elapsed() < Duration::from_secs(secs) {
                        // Round robin over the nodes, like the load balancer.
                        let r = c.get(&urls[i % urls.len()]).send().await;
                        i += 1;
                        match r.map(|r| r.status().as_u16()) {
                            Ok(200) => ok += 1,
                            Ok(429) => limited += 1,
                            _ => {}
                        }
                    }
                    (ok, limited)
                }));
            }
            let (mut ok, mut limited) = (0, 0);
            for t in tasks {
                let (o, l) = t.await.unwrap();
                ok += o;
                limited += l;
            }
            (ok, limited, t0.elapsed())
        }
    };
    run(2).await;
    let (ok, limited, took) = run(6).await;
    let configured = 60.0 * took.as_secs_f64();
    let ratio = ok as f64 / configured;
    assert!(
        limited > ok,
        "the load is well above the limit ({ok} ok, {limited} limited)"
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "fleet-wide {ok} allowed in {took:?} against {configured:.0} configured (ratio {ratio:.3})"
    );
    let commands: f64 = nodes
        .iter()
        .map(|e| e.metric("ecluse_cluster_redis_commands_total", &[]))
        .sum();
    let requests = (ok + limited) as f64;
    eprintln!(
        "fleet-wide allowed {ok} vs configured {configured:.0} (ratio {ratio:.3}); redis commands {commands} for {requests} requests ({:.4} per request)",
        commands / requests
    );
    assert!(commands / requests < 0.1, "Redis commands per request");
}
