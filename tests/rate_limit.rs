//! Rate limits through the real proxy.

mod common;

use common::*;
use std::process::Command;

fn yaml(origin: std::net::SocketAddr, limits: &str, extra_route: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
priority_classes:
  - name: staff
    headers: {{ X-ENT-Role: [enseignant] }}
origins:
  ent: {{ servers: ["{origin}"] }}
routes:
{extra_route}  - name: ent
    origin: ent
    rate_limit_headers: true
    rate_limits:
{limits}
"#
    )
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_at_the_expected_request_with_standard_headers() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start(&yaml(
        o.addr,
        "      - { name: per_ip, key: client_ip, rate: 1/min, burst: 3 }",
        "",
    ));
    let c = client();
    for i in 1..=3 {
        let r = get(&c, &e.url("/"), &[]).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.headers()["ratelimit-policy"], "\"per_ip\";q=3;w=180");
        assert_eq!(
            r.headers()["ratelimit"]
                .to_str()
                .expect("ascii")
                .split(";t=")
                .next(),
            Some(format!("\"per_ip\";r={}", 3 - i).as_str())
        );
    }
    // An untrusted X-Forwarded-For does not change who we count.
    let r = get(
        &c,
        &e.url("/"),
        &[
            ("x-forwarded-for", "198.51.100.77"),
            ("accept-language", "en"),
        ],
    )
    .await;
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "60");
    assert_eq!(h["ratelimit-policy"], "\"per_ip\";q=3;w=180");
    assert!(h["ratelimit"]
        .to_str()
        .expect("ascii")
        .starts_with("\"per_ip\";r=0;t="));
    assert_eq!(h["cache-control"], "no-store");
    assert!(r.text().await.expect("body").contains("A short pause"));
    let r = get(&c, &e.url("/"), &[("accept", "application/json")]).await;
    assert_eq!(r.status(), 429);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "rate_limited");
    let r = get(&c, &e.url("/"), &[]).await;
    assert!(
        r.text().await.expect("body").contains("Une petite pause"),
        "French by default"
    );
    assert_eq!(o.hits(), 3, "refused requests never reach the origin");
    assert_eq!(
        e.metric(
            "ecluse_ratelimit_decisions_total",
            &[("limit", "per_ip"), ("result", "allowed")]
        ),
        3.0
    );
    assert_eq!(
        e.metric(
            "ecluse_ratelimit_decisions_total",
            &[("limit", "per_ip"), ("result", "limited")]
        ),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_by_one_limit_charges_none() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start(&yaml(
        o.addr,
        "      - { name: per_ip, key: client_ip, rate: 1/h, burst: 2 }\n      - { name: per_session, key: cookie, cookie: ENTSESSION, rate: 1/h, burst: 1 }",
        "",
    ));
    let c = client();
    let s = |v: &str| format!("ENTSESSION={v}");
    assert_eq!(
        get(&c, &e.url("/"), &[("cookie", &s("x"))]).await.status(),
        200
    );
    // Same session again: per_session refuses; per_ip must not lose a token for it.
    let r = get(&c, &e.url("/"), &[("cookie", &s("x"))]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit-policy"]
        .to_str()
        .expect("a")
        .contains("per_session"));
    assert_eq!(
        get(&c, &e.url("/"), &[("cookie", &s("y"))]).await.status(),
        200,
        "per_ip still had one token"
    );
    let r = get(&c, &e.url("/"), &[("cookie", &s("z"))]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers()["ratelimit-policy"]
        .to_str()
        .expect("a")
        .contains("per_ip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lets_everything_through_and_counts() {
    let o = EchoOrigin::start("o").await;
    let e = Ecluse::start(&yaml(
        o.addr,
        "      - { name: shadow, key: route, rate: 1/h, burst: 2, mode: dry_run }",
        "",
    ));
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 200);
    }
    assert_eq!(o.hits(), 10);
    assert_eq!(
        e.metric(
            "ecluse_ratelimit_decisions_total",
            &[("limit", "shadow"), ("result", "dry_run_limited")]
        ),
        8.0
    );
    assert_eq!(
        e.metric(
            "ecluse_ratelimit_decisions_total",
            &[("limit", "shadow"), ("result", "allowed")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemptions_by_cidr_and_class() {
    let o = EchoOrigin::start("o").await;
    // The class comes from a header: believed only from a trusted proxy (here, the test).
    let e = Ecluse::start(
        &yaml(
            o.addr,
            "      - { name: r, key: route, rate: 1/h, burst: 1, exempt: { classes: [staff] } }\n      - { name: ip, key: client_ip, rate: 1/h, burst: 1, exempt: { cidrs: [\"127.0.0.0/8\"] } }",
            "",
        )
        .replace("access_log:", "server: { trusted_proxies: [\"127.0.0.1\"] }\naccess_log:"),
    );
    let c = client();
    assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 200);
    assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 429);
    for _ in 0..5 {
        assert_eq!(
            get(&c, &e.url("/"), &[("x-ent-role", "Enseignant")])
                .await
                .status(),
            200,
            "staff are exempt"
        );
    }
    assert!(
        e.metric(
            "ecluse_ratelimit_decisions_total",
            &[("limit", "ip"), ("result", "exempt")]
        ) >= 6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_buckets_and_resets_changed_ones() {
    let o = EchoOrigin::start("o").await;
    let limit = "      - { name: per_ip, key: client_ip, rate: 1/h, burst: 2 }";
    let e = Ecluse::start(&yaml(o.addr, limit, ""));
    let c = client();
    assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 200);
    assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 200);
    assert_eq!(get(&c, &e.url("/"), &[]).await.status(), 429);
    // An unrelated change (a new route in front): the bucket is kept.
    e.write_config(&yaml(
        o.addr,
        limit,
        "  - { name: other, match: { path_prefix: /other }, origin: ent }\n",
    ));
    let cc = c.clone();
    eventually("reload 1", std::time::Duration::from_secs(10), async || {
        e.metric("ecluse_config_reloads_total", &[("result", "ok")]) >= 1.0
    })
    .await;
    assert_eq!(
        get(&cc, &e.url("/"), &[]).await.status(),
        429,
        "unchanged limit keeps its bucket"
    );
    // The limit itself changes: it starts fresh.
    e.write_config(&yaml(
        o.addr,
        "      - { name: per_ip, key: client_ip, rate: 2/h, burst: 2 }",
        "",
    ));
    eventually("reload 2", std::time::Duration::from_secs(10), async || {
        e.metric("ecluse_config_reloads_total", &[("result", "ok")]) >= 2.0
    })
    .await;
    assert_eq!(
        get(&c, &e.url("/"), &[]).await.status(),
        200,
        "changed limit starts fresh"
    );
}

#[test]
fn bad_limits_are_reported_with_positions() {
    let dir = TempDir::new("rl-check");
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        r#"listen: ["0.0.0.0:8080"]
origins: { ent: { servers: ["127.0.0.1:1"] } }
routes:
  - name: ent
    origin: ent
    rate_limits:
      - { key: client_ip, rate: 0/s }
      - { name: b, key: client_ip, rate: -1/s }
      - { name: c, key: client_ip, rate: 5/s, burst: 0 }
      - { name: d, key: client_ip, rate: 5/s, exempt: { cidrs: ["10.0.0.0/99"], classes: [staf] } }
      - { name: e, key: cookie, rate: 5/s }
"#,
    )
    .expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "F");
    assert_eq!(out.status.code(), Some(1));
    for want in [
        "F:7:33: routes[0].rate_limits[0].rate: `0/s`: the rate must be more than 0",
        "F:8:42: routes[0].rate_limits[1].rate: `-1/s`: the rate must be more than 0",
        "F:9:54: routes[0].rate_limits[2].burst: must be at least 1",
        "F:10:65: routes[0].rate_limits[3].exempt.cidrs[0]: `10.0.0.0/99` is not a CIDR",
        "F:10:91: routes[0].rate_limits[3].exempt.classes[0]: priority class `staf` is not defined",
        "F:11:25: routes[0].rate_limits[4].key: `key: cookie` needs `cookie: NAME`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    std::fs::write(
        &f,
        "listen: [\"0.0.0.0:8080\"]\norigins: { ent: { servers: [\"127.0.0.1:1\"] } }\nroutes:\n  - name: ent\n    origin: ent\n    rate_limits: [{ key: client_adress, rate: 5/s }]\n",
    )
    .expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "F");
    assert!(
        err.contains("F:6:26: routes[0].rate_limits[0].key: unknown value `client_adress` (did you mean `client_ip`?)"),
        "{err}"
    );
}
