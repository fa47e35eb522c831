//! The Grafana dashboard and the alert rules, proven against a real Prometheus scraping a
//! real `ecluse demo` under a load that exercises every feature: every panel's query must
//! return data, every alert expression must parse, every metric named must exist.
//!
//! Needs Debian's `prometheus` package (`prometheus`, `promtool`); `make test` installs it.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const DASHBOARD: &str = "dashboards/ecluse-overview.json";
const ALERTS: &str = "dashboards/alerts.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is missing: install Debian's `prometheus` package (`scripts/need.sh prometheus promtool`, which `make test` runs)");
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every panel (rows' nested panels included) with its title, id and query expressions.
fn panels(v: &serde_json::Value) -> Vec<(String, i64, Vec<String>)> {
    let mut out = Vec::new();
    fn walk(list: &serde_json::Value, out: &mut Vec<(String, i64, Vec<String>)>) {
        for p in list.as_array().into_iter().flatten() {
            let exprs = p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str().map(str::to_string))
                .collect();
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                p["id"].as_i64().unwrap_or(-1),
                exprs,
            ));
            walk(&p["panels"], out);
        }
    }
    walk(&v["panels"], &mut out);
    out
}

/// Grafana variables replaced the way a user choosing "All" would see them.
fn substitute(expr: &str) -> String {
    expr.replace("${datasource}", "prometheus")
        .replace("$__rate_interval", "1m")
        .replace("${__rate_interval}", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${route}", ".*")
        .replace("$route", ".*")
        .replace("${room}", ".*")
        .replace("$room", ".*")
        .replace("${origin}", ".*")
        .replace("$origin", ".*")
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("ecluse_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn dashboard_json_is_valid_with_unique_panel_ids() {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).expect("dashboard file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let ps = panels(&v);
    assert!(ps.len() > 20, "only {} panels", ps.len());
    let mut ids = BTreeSet::new();
    for (title, id, _) in &ps {
        assert!(ids.insert(*id), "panel id {id} ({title}) is used twice");
    }
    let vars: Vec<&str> = v["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for want in ["datasource", "instance", "route", "room", "origin"] {
        assert!(vars.contains(&want), "variable `{want}` missing: {vars:?}");
    }
    for (title, _, exprs) in &ps {
        let is_row = exprs.is_empty();
        if !is_row {
            let p = v["panels"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(
                    v["panels"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|r| r["panels"].as_array().into_iter().flatten()),
                )
                .find(|p| p["title"] == title.as_str())
                .expect("panel");
            assert!(
                p["description"].as_str().is_some_and(|d| d.len() > 20),
                "panel `{title}` has no description saying what a worrying value looks like"
            );
        }
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(root().join(ALERTS))
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_returns_data_from_a_real_prometheus_scraping_the_demo() {
    let prom_bin = tool("prometheus");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap()).unwrap();
    let alerts = alert_rules(&root().join(ALERTS));

    // 1. The demo: the simulated ENT with ecluse in front.
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--origin-port",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let out = child.stdout.take().expect("stdout");
    let _demo = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + DEADLINE;
    let (mut ent, mut admin) = (None, None);
    while ent.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its URLs");
        if line.contains("the ENT through ecluse") {
            ent = line.split_whitespace().next().map(str::to_string);
        }
        if line.contains("/metrics") {
            admin = line
                .split_whitespace()
                .next()
                .map(|u| u.trim_end_matches("metrics").to_string());
        }
    }
    let (ent, admin) = (ent.unwrap(), admin.unwrap());
    let plain = client();
    eventually("demo ready", DEADLINE, async || {
        matches!(plain.get(format!("{admin}readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;

    // A fleet-mode node too (Redis), so the fleet panels have something to show.
    let redis = Redis::start();
    let fleet_origin = EchoOrigin::start("ent").await;
    // With a TLS listener, for the certificate expiry series.
    let cert = SelfSigned::localhost();
    let fleet_node = Ecluse::start_with(
        &format!(
            r#"listen: ["127.0.0.1:0"]
tls: {{ listen: ["127.0.0.1:0"], cert_file: cert.pem, key_file: key.pem }}
admin: {{ listen: "127.0.0.1:0" }}
access_log: {{ enabled: false }}
cluster: {{ redis: "redis://127.0.0.1:{}/", node_id: dash, sync_interval: 100ms }}
origins:
  ent: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: fleet, match: {{ path_prefix: / }}, origin: ent, rate_limits: [{{ key: route, rate: 100/s, burst: 100 }}] }}
"#,
            redis.port, fleet_origin.addr
        ),
        &cert.files(),
        |_| {},
    );
    eventually("the fleet node reaches Redis", DEADLINE, async || {
        fleet_node.metric("ecluse_cluster_redis_up", &[]) == 1.0
    })
    .await;

    // A node whose room sizes itself (`active_users: auto`, refused in fleet mode and
    // not in the demo), so the automatic capacity and pace series exist.
    let auto_node = Ecluse::start_with(
        &format!(
            r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent:
    active_users: auto
    new_users_per_minute: auto
    secret_file: keys
origins:
  ent: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#,
            fleet_origin.addr
        ),
        &[(
            "keys",
            b"k1:0123456789abcdef0123456789abcdef0123\n".as_slice(),
        )],
        |_| {},
    );
    eventually("the auto room is sized", DEADLINE, async || {
        auto_node.metric("ecluse_room_auto_capacity", &[("room", "ent")]) > 0.0
    })
    .await;

    // 2. Prometheus scraping them every second, with the alert rules loaded.
    let dir = TempDir::new("prometheus");
    let admin_hostport = admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{}\"]\nscrape_configs:\n  - job_name: ecluse\n    static_configs: [{{ targets: [\"{admin_hostport}\", \"{}\"] }}]\n",
            root().join(ALERTS).display(),
            fleet_node.admin
        ),
    )
    .unwrap();
    let mut prom = None;
    let mut prom_url = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut c = Killed(
            Command::new(&prom_bin)
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn prometheus"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let mut ready = false;
        while started.elapsed() < DEADLINE {
            if let Ok(Some(_)) = c.0.try_wait() {
                break; // port taken meanwhile, or bad config: try again / report below
            }
            if matches!(plain.get(format!("{url}/-/ready")).send().await, Ok(r) if r.status() == 200)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if ready {
            prom = Some(c);
            prom_url = url;
            break;
        }
        let _ = c.0.kill();
    }
    let _prom = prom.expect("prometheus started on a free loopback port");
    eventually("prometheus scrapes the demo", DEADLINE, async || {
        let r = plain
            .get(format!("{prom_url}/api/v1/query"))
            .query(&[("query", "up")])
            .send()
            .await;
        match r {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["value"][1] == "1"))
            }),
            Err(_) => false,
        }
    })
    .await;
    let started = SystemTime::now();

    // 3. A load that exercises every feature.
    // A student gets in, logs in and fetches an assignment file three times (cache).
    let student = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(student.get(&ent).send().await.unwrap().status(), 200);
    let r = student
        .post(format!("{ent}login"))
        .form(&[("user", "eleve1"), ("password", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    for _ in 0..3 {
        let r = student
            .get(format!("{ent}files/assignments/1.pdf"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().starts_with(b"%PDF-"));
    }
    // Ops switch visio off; a student tries it.
    let r = plain
        .post(format!("{admin}admin/features/visio"))
        .body(r#"{"on": false, "for": "10m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        student
            .get(format!("{ent}visio"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        plain
            .post(format!("{admin}admin/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The 08:00 surge, paced over 12 s so Prometheus sees it unfold: new browsers arrive
    // (filling the room, then the rate limit), the student keeps fetching the file and
    // trying the visio.
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut tasks = Vec::new();
    let surge_start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while surge_start.elapsed() < Duration::from_secs(12) {
        tick.tick().await;
        for _ in 0..3 {
            let ent = ent.clone();
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::builder()
                    .cookie_store(true)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap();
                let mut out = Vec::new();
                for _ in 0..2 {
                    if let Ok(r) = c
                        .get(&ent)
                        .header("accept", "application/json")
                        .send()
                        .await
                    {
                        out.push(r.status().as_u16());
                    }
                }
                out
            }));
        }
        if let Ok(r) = student
            .get(format!("{ent}files/assignments/1.pdf"))
            .send()
            .await
        {
            *statuses.entry(r.status().as_u16()).or_default() += 1;
            let _ = r.bytes().await;
        }
        let _ = plain.get(fleet_node.url("/x")).send().await;
        if let Ok(r) = student.get(format!("{ent}visio")).send().await {
            *statuses.entry(r.status().as_u16()).or_default() += 1;
        }
    }
    for t in tasks {
        for s in t.await.unwrap() {
            *statuses.entry(s).or_default() += 1;
        }
    }
    assert!(
        statuses.contains_key(&429),
        "the surge hit the rate limit: {statuses:?}"
    );
    let metrics = plain
        .get(format!("{admin}metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let waiting = metric_value(&metrics, "ecluse_room_waiting", &[("room", "ent")]);
    assert!(
        waiting > 0.0,
        "the surge filled the room (waiting {waiting}): {statuses:?}"
    );

    // Every metric the dashboard or the alerts name is one ecluse exports (after this load,
    // every family has been used at least once).
    let fleet_metrics = plain
        .get(format!("http://{}/metrics", fleet_node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let auto_metrics = plain
        .get(format!("http://{}/metrics", auto_node.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = metrics
        .lines()
        .chain(fleet_metrics.lines())
        .chain(auto_metrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s).is_some_and(|b| exported.contains(b)))
    };
    let ps = panels(&dashboard);
    let mut unknown = Vec::new();
    for (title, _, exprs) in &ps {
        for e in exprs {
            for m in metric_names(e) {
                if !known(&m) {
                    unknown.push(format!("panel `{title}`: {m}"));
                }
            }
        }
    }
    for a in &alerts {
        for m in metric_names(&a.1) {
            if !known(&m) {
                unknown.push(format!("alert `{}`: {m}", a.0));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics ecluse does not export:\n{}",
        unknown.join("\n")
    );

    // 4. Wait until Prometheus holds enough samples for rates over the load.
    let q = |expr: String| {
        let plain = plain.clone();
        let url = format!("{prom_url}/api/v1/query");
        async move {
            let r = plain
                .get(url)
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .expect("query prometheus");
            let status = r.status();
            let v: serde_json::Value = r.json().await.expect("prometheus answers JSON");
            (status, v)
        }
    };
    eventually(
        "prometheus scraped the load",
        Duration::from_secs(30),
        async || {
            let (_, v) = q("count_over_time(ecluse_config_info[1m])".to_string()).await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|n| n >= 4.0)
        },
    )
    .await;

    // 5. Every panel returns at least one series; every alert expression parses.
    let mut failures = Vec::new();
    let mut queried = 0;
    for (title, _, exprs) in &ps {
        for e in exprs {
            queried += 1;
            let (status, v) = q(substitute(e)).await;
            if v["status"] != "success" {
                failures.push(format!(
                    "panel `{title}`: `{e}` does not parse ({status}): {}",
                    v["error"]
                ));
            } else if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                failures.push(format!("panel `{title}`: `{e}` returns nothing"));
            }
        }
    }
    assert!(queried > 30, "only {queried} queries in the dashboard");
    for (name, expr) in &alerts {
        let (status, v) = q(expr.clone()).await;
        if v["status"] != "success" {
            failures.push(format!(
                "alert `{name}`: `{expr}` does not parse ({status}): {}",
                v["error"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}",
        failures.len(),
        failures.join("\n")
    );

    // 6. Alerts that nothing in this run should raise stay quiet: every instance is up,
    // Redis is reachable and no reload failed (a fresh instance must not look like a
    // failed reload).
    let expr_of = |name: &str| {
        alerts
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("alert {name} in {ALERTS}"))
            .1
            .clone()
    };
    for name in [
        "EcluseInstanceDown",
        "EcluseRedisUnreachable",
        "EcluseConfigReloadFailed",
    ] {
        let (_, v) = q(expr_of(name)).await;
        assert_eq!(
            v["data"]["result"].as_array().map(Vec::len),
            Some(0),
            "alert {name} would fire although nothing went wrong: {}",
            v["data"]["result"]
        );
    }
    // ...and the reload alert does fire, for that instance, once a reload fails.
    fleet_node.write_config("routes: [ {{ this is not a policy");
    let r = plain
        .post(format!("http://{}/admin/reload", fleet_node.admin))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 422, "a broken file is refused");
    let fleet_instance = fleet_node.admin.to_string();
    let reload_failed = expr_of("EcluseConfigReloadFailed");
    eventually(
        "EcluseConfigReloadFailed fires for the node whose reload failed",
        Duration::from_secs(30),
        async || {
            let (_, v) = q(reload_failed.clone()).await;
            let res = v["data"]["result"].as_array().cloned().unwrap_or_default();
            res.len() == 1 && res[0]["metric"]["instance"] == fleet_instance.as_str()
        },
    )
    .await;

    // 7. A picture of what ops see, from this Prometheus.
    let end = SystemTime::now();
    render_picture(&plain, &prom_url, started, end).await;
}

/// Key panels rendered to `target/test-output/dashboard/overview.svg` (and to
/// `docs/dashboard-overview.svg` when `ECLUSE_UPDATE_DOCS=1`).
async fn render_picture(c: &reqwest::Client, prom: &str, start: SystemTime, end: SystemTime) {
    use plotters::prelude::*;
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let (t0, t1) = (secs(start) - 5.0, secs(end) + 1.0);
    let panels: [(&str, &str); 4] = [
        (
            "Requests/s by status class",
            "sum by (status_class) (rate(ecluse_requests_total[5s]))",
        ),
        (
            "Waiting room: waiting vs active",
            "sum by (__name__) ({__name__=~\"ecluse_room_waiting|ecluse_room_active_users\"})",
        ),
        (
            "Cache results/s",
            "sum by (result) (rate(ecluse_cache_requests_total[5s]))",
        ),
        (
            "Shed requests/s by reason",
            "sum by (reason) (rate(ecluse_shed_requests_total[5s]))",
        ),
    ];
    let out_dir = root().join("target/test-output/dashboard");
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("overview.svg");
    {
        let area = SVGBackend::new(&path, (1200, 700)).into_drawing_area();
        area.fill(&WHITE).unwrap();
        let cells = area.split_evenly((2, 2));
        for ((title, expr), cell) in panels.iter().zip(cells.iter()) {
            let r = c
                .get(format!("{prom}/api/v1/query_range"))
                .query(&[
                    ("query", expr.to_string()),
                    ("start", format!("{t0:.3}")),
                    ("end", format!("{t1:.3}")),
                    ("step", "1".to_string()),
                ])
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
            for s in v["data"]["result"].as_array().into_iter().flatten() {
                let name = s["metric"]
                    .as_object()
                    .and_then(|m| m.values().next())
                    .and_then(|x| x.as_str())
                    .unwrap_or("all")
                    .to_string();
                let pts = s["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some((p[0].as_f64()? - t0, p[1].as_str()?.parse::<f64>().ok()?))
                    })
                    .collect();
                series.push((name, pts));
            }
            // What the picture shows must have happened: a curve with a non-zero point.
            assert!(
                series
                    .iter()
                    .any(|(_, pts)| pts.len() >= 2 && pts.iter().any(|p| p.1 > 0.0)),
                "picture panel `{title}` has nothing to draw: {}",
                v["data"]
            );
            let ymax = series
                .iter()
                .flat_map(|s| s.1.iter().map(|p| p.1))
                .fold(1.0f64, f64::max)
                * 1.1;
            let mut chart = ChartBuilder::on(cell)
                .caption(*title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..(t1 - t0), 0.0..ymax)
                .unwrap();
            chart.configure_mesh().x_desc("seconds").draw().unwrap();
            for (i, (name, pts)) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .unwrap()
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .unwrap();
        }
        area.present().unwrap();
    }
    if std::env::var("ECLUSE_UPDATE_DOCS").as_deref() == Ok("1") {
        std::fs::copy(&path, root().join("docs/dashboard-overview.svg")).unwrap();
    }
}

/// Each alert's name and expression, from the rule file.
fn alert_rules(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("alert rules file");
    let v: serde_json::Value = serde_saphyr::from_str(&text).expect("alert rules are YAML");
    let out: Vec<(String, String)> = v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["expr"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(!out.is_empty(), "no alert in {}", path.display());
    out
}

/// The panels the edge's operators asked for: days to expiry of each certificate (with
/// thresholds that go red before the expiry alert's 14 days run out), file descriptors
/// against their limit, and memory. Their queries are also run against a real Prometheus
/// above (the fleet node there has a TLS listener).
#[test]
fn the_dashboard_shows_certificate_expiry_and_process_resources() {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).expect("dashboard file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let ps = panels(&v);
    let with = |metric: &str| {
        ps.iter()
            .find(|(_, _, exprs)| exprs.iter().any(|e| metric_names(e).contains(metric)))
            .map(|(title, id, _)| (title.clone(), *id))
            .unwrap_or_else(|| panic!("no panel queries {metric}"))
    };
    for m in [
        "ecluse_process_open_fds",
        "ecluse_process_max_fds",
        "ecluse_process_resident_memory_bytes",
    ] {
        with(m);
    }
    let (title, id) = with("ecluse_tls_certificate_expiry_seconds");
    let all: Vec<&serde_json::Value> = v["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()))
        .collect();
    let panel = all.iter().find(|p| p["id"] == id).expect("panel");
    let expr = panel["targets"][0]["expr"].as_str().unwrap_or_default();
    assert!(expr.contains("/ 86400"), "`{title}` shows days: {expr}");
    assert!(
        expr.contains("by (instance, name)"),
        "per certificate: {expr}"
    );
    assert_eq!(panel["fieldConfig"]["defaults"]["unit"], "d", "{title}");
    let steps: Vec<(String, Option<f64>)> = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|s| {
            (
                s["color"].as_str().unwrap_or_default().to_string(),
                s["value"].as_f64(),
            )
        })
        .collect();
    // Red below the alert's 14 days, green only with a month to go.
    assert_eq!(
        steps.first().map(|s| s.0.as_str()),
        Some("red"),
        "{steps:?}"
    );
    assert!(steps.iter().any(|s| s.1 == Some(14.0)), "{steps:?}");
    assert_eq!(steps.last(), Some(&("green".to_string(), Some(30.0))));
}
