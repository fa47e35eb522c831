//! The status page of the admin listener (issue #26): open like `/metrics`, the same
//! figures as `/admin/state`, nothing `/metrics` would not tell, and buttons that need the
//! admin token (typed into the form) and refuse a form sent from another site.

mod common;

use common::lenient_ent::LenientEnt;
use common::*;
use std::time::Duration;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";

fn start(origin: std::net::SocketAddr, dead: std::net::SocketAddr) -> Ecluse {
    status_page_policy(origin, dead, TOKEN, KEY)
}

fn admin_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

async fn state(e: &Ecluse) -> serde_json::Value {
    admin_client()
        .get(e.admin_url("/admin/state"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json")
}

/// The text of the element carrying `data-k="KEY"` on the page.
fn shown(html: &str, key: &str) -> String {
    let tag = format!("data-k=\"{key}\">");
    let i = html
        .find(&tag)
        .unwrap_or_else(|| panic!("no {key} on the page:\n{html}"))
        + tag.len();
    html[i..i + html[i..].find('<').expect("closing tag")].to_string()
}

async fn post_form(e: &Ecluse, form: &[(&str, &str)], origin: Option<&str>) -> reqwest::Response {
    let mut r = admin_client()
        .post(e.admin_url("/status/action"))
        .form(form);
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    r.send().await.expect("post")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_open_shows_the_admin_state_and_its_buttons_need_the_token() {
    let ent = LenientEnt::start().await;
    let dead = dead_port();
    let e = start(ent.addr, dead);
    let c = admin_client();

    // A full room: one pupil inside, a second one queued.
    let inside = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    assert_eq!(
        inside.get(e.url("/")).send().await.expect("in").status(),
        200
    );
    let queued = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let r = queued.get(e.url("/")).send().await.expect("queued");
    assert!(
        r.text().await.expect("page").contains("id=\"q\""),
        "queue page"
    );
    // Two refusals on the rate-limited route (burst 1), visio forced off, a cached file.
    for _ in 0..3 {
        c.get(e.url("/search/x")).send().await.expect("search");
    }
    let r = c
        .post(e.admin_url("/admin/features/visio"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({ "on": false }))
        .send()
        .await
        .expect("force visio off");
    assert_eq!(r.status(), 200);

    // The far server is down once its health check failed.
    eventually("the far server is down", DEADLINE, async || {
        state(&e).await["origins"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["name"] == "files"))
            .and_then(|o| o["servers"].as_array().cloned())
            .is_some_and(|s| {
                s.iter()
                    .any(|s| s["server"] == dead.to_string() && s["healthy"] == false)
            })
    })
    .await;

    // Open without the token, as /metrics; `/` leads to it; /admin/state stays closed.
    let r = c.get(e.admin_url("/")).send().await.expect("/");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/status");
    let r = c
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state");
    assert_eq!(r.status(), 401, "the JSON state stays guarded");
    let r = c.get(e.admin_url("/status")).send().await.expect("status");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/html"));
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap_or("")
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = r.text().await.expect("html");

    // The same figures as /admin/state.
    let s = state(&e).await;
    let room = &s["rooms"][0];
    assert_eq!(room["waiting"], 1, "{room}");
    assert_eq!(shown(&html, "room-waiting"), room["waiting"].to_string());
    assert_eq!(
        shown(&html, "room-inside"),
        format!(
            "{} / {}",
            room["active_users"], room["capacity"]["active_users"]
        )
    );
    assert_eq!(
        shown(&html, "level"),
        s["degradation"]["level"].as_str().unwrap_or("?")
    );
    assert_eq!(s["degradation"]["features"]["visio"], false);
    assert_eq!(shown(&html, "feature-visio"), "off");
    assert!(
        html.contains("forced off by an operator"),
        "why visio is off"
    );
    let refused = s["rate_limits"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["route"] == "search"))
        .map(|l| l["refused"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert_eq!(refused, 2, "{}", s["rate_limits"]);
    assert_eq!(shown(&html, "limited-search"), "2");
    assert!(s["cache"]["memory_capacity_bytes"].as_u64() == Some(1024 * 1024));
    assert!(
        html.contains("down (health check failing)"),
        "the far server"
    );
    assert!(html.contains("<svg"), "charts");
    assert!(
        html.contains("http-equiv=\"refresh\""),
        "refreshes without JS"
    );
    // Nothing /metrics would not tell: servers by the name ops wrote (their metric
    // label), never the token, the config's path or a health check's error text.
    let metrics = c
        .get(e.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains(&format!("server=\"{dead}\"")));
    let dir = e.config.parent().expect("dir").display().to_string();
    for secret in [TOKEN, dir.as_str(), "refused", "Connection"] {
        assert!(!html.contains(secret), "the page shows {secret}");
    }

    // Buttons: without the token, with a wrong one, and from another site: refused.
    for (form, origin, want) in [
        (vec![("action", "pause"), ("room", "ent")], None, 401),
        (
            vec![("action", "pause"), ("room", "ent"), ("token", "wrong")],
            None,
            401,
        ),
        (
            vec![
                ("action", "pause"),
                ("room", "ent"),
                ("token", &TOKEN[..31]),
            ],
            None,
            401,
        ),
        (
            vec![("action", "pause"), ("room", "ent"), ("token", TOKEN)],
            Some("http://evil.example"),
            403,
        ),
        (vec![("action", "level"), ("level", "busy")], None, 401),
    ] {
        let r = post_form(&e, &form, origin).await;
        assert_eq!(r.status().as_u16(), want, "{form:?} {origin:?}");
        let body = r.text().await.unwrap_or_default();
        assert!(!body.contains(TOKEN));
    }
    let s = state(&e).await;
    assert_eq!(s["rooms"][0]["paused"], false, "nothing changed");
    assert_eq!(s["degradation"]["level"], "normal");
    // GET on the form's path does nothing either.
    let r = c
        .get(e.admin_url("/status/action?action=pause&room=ent&token=x"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);

    // With the token typed into the form (from the page itself): done, back to the page.
    let page_origin = format!("http://{}", e.admin);
    let r = post_form(
        &e,
        &[("action", "pause"), ("room", "ent"), ("token", TOKEN)],
        Some(&page_origin),
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/status?done=pause");
    assert_eq!(state(&e).await["rooms"][0]["paused"], true);
    let r = post_form(
        &e,
        &[
            ("action", "level"),
            ("level", "busy"),
            ("for", "5m"),
            ("token", TOKEN),
        ],
        None,
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(state(&e).await["degradation"]["level"], "busy");
    let html = c
        .get(e.admin_url("/status?done=pause"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("html");
    assert!(html.contains("The room is paused"));
    assert!(html.contains("paused</span>"));
    // The demo's surge button exists only in `ecluse demo`.
    let r = post_form(&e, &[("action", "surge"), ("token", TOKEN)], None).await;
    assert_eq!(r.status(), 404);
    drop(inside);
}

/// In fleet mode the page shows Redis's state and the nodes, and says so when Redis goes
/// away; the Redis address (which may carry a password) is never on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fleet_mode_the_page_shows_redis_and_the_nodes() {
    let mut redis = Redis::start();
    let ent = LenientEnt::start().await;
    let node = |id: &str| {
        format!(
            r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
cluster: {{ redis: "redis://127.0.0.1:{r}/", node_id: {id}, sync_interval: 100ms, timeout: 1s }}
origins:
  ent: {{ servers: ["{o}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent }}
"#,
            r = redis.port,
            o = ent.addr
        )
    };
    let a = Ecluse::start(&node("node-a"));
    let _b = Ecluse::start(&node("node-b"));
    let c = admin_client();
    let page = async || {
        c.get(a.admin_url("/status"))
            .send()
            .await
            .expect("status")
            .text()
            .await
            .expect("html")
    };
    eventually(
        "both nodes on the page, Redis reachable",
        DEADLINE,
        async || {
            let html = page().await;
            html.contains("data-k=\"redis\">reachable<")
                && html.contains(">node-a<")
                && html.contains(">node-b<")
        },
    )
    .await;
    let html = page().await;
    assert!(
        !html.contains(&format!("127.0.0.1:{}", redis.port)),
        "the Redis URL"
    );
    redis.kill();
    eventually("Redis unreachable on the page", DEADLINE, async || {
        page().await.contains("data-k=\"redis\">unreachable<")
    })
    .await;
}
