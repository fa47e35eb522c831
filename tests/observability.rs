//! Issue #20 through the real proxy: request ids from the page to the ENT's log, the
//! access log's new fields, metrics that exist from the start and do not churn.

mod common;

use common::lenient_ent::LenientEnt;
use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";

fn yaml(origin: SocketAddr, server: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s{server} }}
access_log: {{ path: access.log }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 1, secret_file: keys }}
degradation:
  levels:
    - {{ name: normal }}
    - {{ name: busy, disable: [visio] }}
  features:
    visio: {{ message_fr: "Visio coupée", message_en: "Video is off" }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
  gone: {{ servers: ["{dead}"], health_check: {{ disabled: true }}, retries: 0 }}
routes:
  - name: visio
    match: {{ path_prefix: /visio }}
    origin: ent
    feature: visio
  - name: limited
    match: {{ path_prefix: /limited }}
    origin: ent
    rate_limits: [{{ key: client_ip, rate: 1/m, burst: 1 }}]
  - name: gone
    match: {{ path_prefix: /gone }}
    origin: gone
  - name: room
    match: {{ path_prefix: /room }}
    origin: ent
    waiting_room: ent
  - name: ent
    match: {{ path_prefix: /ent }}
    origin: ent
"#,
        dead = dead_port(),
    )
}

fn start(origin: SocketAddr, server: &str) -> Ecluse {
    Ecluse::start_with(&yaml(origin, server), &[("keys", KEY.as_bytes())], |_| {})
}

fn log_lines(e: &Ecluse) -> Vec<serde_json::Value> {
    let path = e.config.parent().expect("dir").join("access.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn log_line_of(e: &Ecluse, id: &str) -> serde_json::Value {
    let mut found = None;
    eventually("the access log line", Duration::from_secs(10), async || {
        found = log_lines(e).into_iter().find(|l| l["request_id"] == id);
        found.is_some()
    })
    .await;
    found.expect("line")
}

fn is_uuid_v7(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && b[8] == b'-'
        && b[13] == b'-'
        && b[14] == b'7'
        && s.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_a_request_from_the_client_to_the_ent_and_the_log() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let c = client();
    // A client naming its own request is not believed (it could collide on purpose or
    // write into ops' logs); every spelling of the header is removed.
    let r = c
        .get(e.url("/ent/page?q=maths&ticket=ST-1-secret&TOKEN=abc&to%6Ben=def"))
        .header("X-Request-Id", "chosen-by-the-client")
        .header("X_Request_Id", "chosen-too")
        .header("User-Agent", "PronoteMobile/1.0 (Android)")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert!(is_uuid_v7(&id), "a fresh UUIDv7, got {id:?}");
    let seen = ent.seen();
    let last = seen.last().expect("the ENT saw it");
    let ids: Vec<&str> = last
        .headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case("x-request-id"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()], "the ENT gets the same id, once");
    let line = log_line_of(&e, &id).await;
    assert_eq!(line["user_agent"], "PronoteMobile/1.0 (Android)");
    assert_eq!(
        line["query"], "q=maths&ticket=REDACTED&TOKEN=REDACTED&to%6Ben=REDACTED",
        "credentials in the query are not written to the log"
    );
    assert_eq!(line["upstream"], ent.addr.to_string());

    // Two requests, two ids.
    let r2 = c.get(e.url("/ent/page")).send().await.expect("request");
    assert_ne!(request_id(&r2), id);
    assert!(log_line_of(&e, &request_id(&r2)).await["query"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_request_with_a_safe_value_only() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, ", trusted_proxies: [\"127.0.0.1\"]");
    let c = client();
    let r = c
        .get(e.url("/ent/x"))
        .header("X-Request-Id", "lb-7f3a:0001")
        .send()
        .await
        .expect("request");
    assert_eq!(request_id(&r), "lb-7f3a:0001");
    let seen = ent.seen();
    assert!(seen
        .last()
        .expect("seen")
        .headers
        .iter()
        .any(|(k, v)| k == "x-request-id" && v == "lb-7f3a:0001"));
    log_line_of(&e, "lb-7f3a:0001").await;
    // A value that could break a page, a log line or a header is replaced.
    for bad in [
        "<script>alert(1)</script>",
        "a b",
        "x\";drop",
        &"a".repeat(129),
    ] {
        let r = c
            .get(e.url("/ent/x"))
            .header("X-Request-Id", bad)
            .send()
            .await
            .expect("request");
        let id = request_id(&r);
        assert!(is_uuid_v7(&id), "{bad:?} replaced, got {id:?}");
    }
}

/// `(status, x-request-id, body)` of a request.
async fn fetch(c: &reqwest::Client, url: String, json: bool) -> (u16, String, String) {
    let mut req = c.get(url).header("Accept-Language", "en");
    if json {
        req = req.header("Accept", "application/json");
    }
    let r = req.send().await.expect("request");
    let id = request_id(&r);
    (r.status().as_u16(), id, r.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_ecluse_makes_shows_the_request_id() {
    let ent = LenientEnt::start().await;
    let e = start(ent.addr, "");
    let c = client();
    // 502: the origin cannot be reached; the log says which server it was.
    let (status, id, body) = fetch(&c, e.url("/gone/x"), false).await;
    assert_eq!(status, 502);
    assert!(is_uuid_v7(&id) && body.contains(&id), "502 page: {body}");
    let line = log_line_of(&e, &id).await;
    assert!(
        line["upstream"]
            .as_str()
            .is_some_and(|u| u.parse::<SocketAddr>().is_ok()),
        "the unreachable server is named: {line}"
    );
    // 404 (no route), 400 (a path ecluse refuses), HTML and JSON.
    for (url, want) in [(e.url("/nowhere"), 404), (e.url("/ent/%2e%00"), 400)] {
        for json in [false, true] {
            let (status, id, body) = fetch(&c, url.clone(), json).await;
            assert_eq!(status, want, "{url}");
            assert!(is_uuid_v7(&id) && body.contains(&id), "{url}: {body}");
            if json {
                let v: serde_json::Value = serde_json::from_str(&body).expect("json");
                assert_eq!(v["request_id"], id.as_str());
            }
        }
    }
    // 429: the second request in the minute.
    let _ = fetch(&c, e.url("/limited/a"), false).await;
    let (status, id, body) = fetch(&c, e.url("/limited/a"), false).await;
    assert_eq!(status, 429);
    assert!(body.contains(&id), "429 page: {body}");
    // 503: the feature is switched off.
    let r = c
        .post(e.admin_url("/admin/level"))
        .json(&serde_json::json!({"level": "busy"}))
        .send()
        .await
        .expect("force");
    assert!(r.status().is_success());
    for json in [false, true] {
        let (status, id, body) = fetch(&c, e.url("/visio/room"), json).await;
        assert_eq!(status, 503);
        assert!(is_uuid_v7(&id) && body.contains(&id), "503 page: {body}");
    }
    // The queue page and its JSON status: the room holds one; the second waits.
    let first = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let r = first.get(e.url("/room/")).send().await.expect("first");
    assert_eq!(r.status(), 200);
    let second = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client");
    let (status, id, body) = fetch(&second, e.url("/room/"), false).await;
    assert_eq!(status, 200);
    assert!(body.contains("q-pos-v"), "a queue page: {body}");
    assert!(is_uuid_v7(&id) && body.contains(&id), "queue page: {body}");
    let (_, id, body) = fetch(&second, e.url("/.ecluse/queue/status?room=ent"), true).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(is_uuid_v7(&id), "status poll id {id:?}");
    assert_eq!(v["request_id"], id.as_str());
    log_line_of(&e, &id).await;
}

/// The metric families documented in docs/ (every `| \`ecluse_...\`` table row).
fn documented_families() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for entry in std::fs::read_dir(docs).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("| `ecluse_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(format!("ecluse_{name}"));
            }
        }
    }
    names
}

/// The families and series (name with labels, no value) in a scrape.
fn series(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut fams = BTreeSet::new();
    let mut all = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            fams.insert(rest.split(' ').next().unwrap_or("").to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            all.insert(
                line.rsplit_once(' ')
                    .map(|(s, _)| s)
                    .unwrap_or(line)
                    .to_string(),
            );
        }
    }
    (fams, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_there_from_the_start() {
    let redis = Redis::start();
    let ent = LenientEnt::start().await;
    // Everything configured: a room, levels, a cache, a fleet.
    let y = yaml(ent.addr, "").replace(
        "routes:\n",
        &format!(
            "cache: {{ memory: 1MiB }}\ncluster: {{ redis: \"redis://127.0.0.1:{}/\" }}\nroutes:\n  - {{ name: files, match: {{ path_prefix: /files }}, origin: ent, cache: {{ mode: public, ttl: 1m }} }}\n",
            redis.port
        ),
    );
    // An origin with a hard maximum (its limit gauges).
    let y = y.replace("ent: { servers", "ent: { max_inflight: 100, servers");
    let e = Ecluse::start_with(&y, &[("keys", KEY.as_bytes())], |_| {});
    let (_, text) = raw_get(e.admin, "/metrics").expect("metrics");
    let (mut fams, _) = series(&text);
    // A room that sizes itself (`auto`, refused in fleet mode): its series too.
    let auto = yaml(ent.addr, "").replace(
        "active_users: 1, new_users_per_minute: 1,",
        "active_users: auto, new_users_per_minute: auto,",
    );
    assert!(auto.contains("active_users: auto"), "{auto}");
    let a = Ecluse::start_with(&auto, &[("keys", KEY.as_bytes())], |_| {});
    let (_, auto_text) = raw_get(a.admin, "/metrics").expect("metrics");
    fams.extend(series(&auto_text).0);
    let documented = documented_families();
    assert!(documented.len() > 50, "{documented:?}");
    let missing: Vec<&String> = documented.iter().filter(|n| !fams.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "documented but absent at start: {missing:?}"
    );
    // Process metrics and the build.
    for name in [
        "ecluse_process_open_fds",
        "ecluse_process_max_fds",
        "ecluse_process_resident_memory_bytes",
        "ecluse_process_start_time_seconds",
    ] {
        assert!(metric_value(&text, name, &[]) > 0.0, "{name} in {text}");
    }
    // CPU seconds may still read 0 this early: present is what counts.
    assert!(text.contains("\necluse_process_cpu_seconds_total "));
    assert_eq!(
        metric_value(
            &text,
            "ecluse_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let commit = text
        .lines()
        .find(|l| l.starts_with("ecluse_build_info{"))
        .and_then(|l| l.split("commit=\"").nth(1))
        .and_then(|l| l.split('"').next())
        .unwrap_or_default()
        .to_string();
    assert!(!commit.is_empty(), "a commit label");
    // Each of these by every label value it can take, at 0.
    for (name, label, values) in [
        (
            "ecluse_client_timeouts_total",
            "phase",
            &[
                "handshake",
                "header",
                "body",
                "send",
                "tunnel_idle",
                "tunnel_lifetime",
            ][..],
        ),
        (
            "ecluse_client_connections_refused_total",
            "reason",
            &[
                "max_connections",
                "max_connections_per_ip",
                "proxy_protocol",
            ][..],
        ),
        (
            "ecluse_queue_status_polls_total",
            "layer",
            &["connection", "http"][..],
        ),
    ] {
        for v in values {
            let want = format!("{name}{{{label}=\"{v}\"}} 0");
            assert!(text.contains(&want), "{want} missing");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_no_series() {
    let ent = LenientEnt::start().await;
    let y = yaml(ent.addr, "");
    let e = Ecluse::start_with(&y, &[("keys", KEY.as_bytes())], |_| {});
    let (_, before) = raw_get(e.admin, "/metrics").expect("metrics");
    let hash_before = metric_value(&before, "ecluse_config_hash", &[]);
    assert!(hash_before > 0.0, "the hash is a number");
    assert_eq!(metric_value(&before, "ecluse_config_version", &[]), 1.0);
    // A changed config (a comment is enough to change the hash), reloaded three times.
    for n in 0..3 {
        e.write_config(&format!("{y}# edit {n}\n"));
        let r = client()
            .post(e.admin_url("/admin/reload"))
            .send()
            .await
            .expect("reload");
        assert!(r.status().is_success());
    }
    let (_, after) = raw_get(e.admin, "/metrics").expect("metrics");
    assert_eq!(metric_value(&after, "ecluse_config_version", &[]), 4.0);
    assert_ne!(metric_value(&after, "ecluse_config_hash", &[]), hash_before);
    let (_, s_before) = series(&before);
    let (_, s_after) = series(&after);
    let added: Vec<&String> = s_after
        .difference(&s_before)
        .filter(|s| !s.starts_with("ecluse_process_"))
        .collect();
    assert!(added.is_empty(), "series added by reloads: {added:?}");
}
