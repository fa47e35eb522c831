//! The waiting room in a real browser (headless Chromium driven through chromedriver):
//! a French student who hits a full ENT sees the queue page, and is taken to the page
//! they asked for by the page itself once a place frees up — by the JavaScript poll, and
//! with JavaScript disabled by the `<noscript><meta refresh>` fallback.
//!
//! Chromium and chromedriver are system packages (`make test` installs them). When they
//! are missing this test fails, it never skips.

// kill(2) and pre_exec on the processes under test; the crate denies unsafe code.
#![allow(unsafe_code)]

mod common;

use common::*;
use ecluse::policy::ticket::{Keyring, TicketState};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "k1:0123456789abcdef0123456789abcdef0123\n";
const PAGE: &str = "/cahier-de-textes";
const TITLE_FR: &str = "Vous êtes dans la file d'attente";

// ---------------------------------------------------------------------------------------
// Tools: chromium + chromedriver, found or the test fails with a way out.

/// `name` in $PATH (or `/usr/bin/name`), or an explanation of how to get it.
fn tool(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env}={} does not exist; unset it or run `make test` (it installs chromium and chromedriver)",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` was not found in $PATH nor /usr/bin: the browser test needs Chromium \
                 and chromedriver. Run `make test` (it installs them), or \
                 `apt-get install -y chromium chromium-driver`, or point {env} at the binary."
            )
        })
}

/// A chromedriver on a free 127.0.0.1 port, in its own process group so that the
/// browsers it launches are killed with it (on drop, even when an assertion failed).
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
    dir: TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let chromium = tool("CHROMIUM", "chromium");
        let chromedriver = tool("CHROMEDRIVER", "chromedriver");
        let mut dir = TempDir::new("chromedriver");
        // The port is picked by binding :0 then released; if someone grabs it in
        // between, chromedriver exits at once and we try another one.
        let mut attempt = 0;
        loop {
            let port = dead_port().port();
            let log = dir.path().join(format!("chromedriver-{attempt}.log"));
            let child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", chromedriver.display()));
            // The guard exists from now on: any panic below kills the process group.
            let mut d = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
                chromium: chromium.clone(),
                dir,
            };
            match d.wait_ready().await {
                Ok(()) => return d,
                Err(why) if attempt < 2 => {
                    eprintln!("chromedriver on port {port}: {why}; retrying");
                    attempt += 1;
                    // Keep the directory; drop (kill) the failed driver.
                    dir = std::mem::replace(&mut d.dir, TempDir::new("chromedriver-retry"));
                }
                Err(why) => panic!(
                    "chromedriver never became ready: {why}\nlog:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
    }

    /// Poll `/status` until it says ready, with a deadline.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = client();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("chromedriver exited: {st}"));
            }
            if let Ok(r) = http.get(format!("{}/status", self.url)).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["value"]["ready"] == true {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/status not ready after {DEADLINE:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new browser session with a fresh profile; French is the preferred language.
    async fn browser(&self, javascript: bool) -> Client {
        self.browser_with(javascript, false, "fr-FR,fr").await
    }

    /// A session with JavaScript on or off, a dark or light colour scheme
    /// (`prefers-color-scheme`), and the given `Accept-Language`.
    async fn browser_with(&self, javascript: bool, dark: bool, languages: &str) -> Client {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = self.dir.path().join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=900,1000".into(),
            format!("--lang={}", languages.split(',').next().unwrap_or("fr-FR")),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut prefs = serde_json::json!({ "intl.accept_languages": languages });
        // Blink's PreferredColorScheme: 0 dark, 1 light.
        let mut blink = vec![format!("preferredColorScheme={}", if dark { 0 } else { 1 })];
        if !javascript {
            blink.push("scriptEnabled=false".into());
            prefs["profile.managed_default_content_settings.javascript"] = 2.into();
        }
        args.push(format!("--blink-settings={}", blink.join(",")));
        if dark {
            args.push("--force-dark-mode".into());
        }
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": args,
                "prefs": prefs,
            },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        // chromedriver speaks plain HTTP on 127.0.0.1: no TLS connector (and so no
        // rustls crypto provider to choose).
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "could not open a Chromium session ({}): {e}",
                    self.chromium.display()
                )
            })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let pgid = self.child.id() as i32;
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// ecluse + an origin, and what a test needs to look at them.

fn start_ecluse(origin: SocketAddr) -> Ecluse {
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 30s, secret_file: keys }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    );
    Ecluse::start_with(&yaml, &[("keys", KEY.as_bytes())], |_| {})
}

fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// The ticket state a response's Set-Cookie carries (the test knows the key).
fn ticket_state(r: &reqwest::Response) -> Option<TicketState> {
    let keys = Keyring::parse(KEY).expect("key");
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let val = v
            .to_str()
            .ok()?
            .strip_prefix("ecluse_ent=")?
            .split(';')
            .next()?;
        Some(keys.open(val, "ent").ok()?.state)
    })
}

/// A student who takes the only place: GET / is admitted at once.
async fn fill_the_room(e: &Ecluse) -> reqwest::Client {
    let c = cookie_client();
    let r = c.get(e.url("/")).send().await.expect("GET /");
    assert_eq!(r.status(), 200);
    assert_eq!(
        ticket_state(&r),
        Some(TicketState::Admitted),
        "the first student is admitted directly"
    );
    let v: serde_json::Value = r.json().await.expect("the origin's JSON");
    assert_eq!(v["server"], "ent");
    c
}

/// That student logs out: the ENT's answer ends the session and frees the place.
async fn log_out(c: &reqwest::Client, e: &Ecluse) {
    let r = c.get(e.url("/logout")).send().await.expect("GET /logout");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("the origin's JSON");
    assert_eq!(v["path"], "/logout", "the logout reached the ENT");
}

fn shot_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/browser");
    std::fs::create_dir_all(&d).expect("create screenshot dir");
    d
}

async fn screenshot(b: &Client, name: &str) -> PathBuf {
    let png = b.screenshot().await.expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "a real PNG"
    );
    let p = shot_dir().join(name);
    std::fs::write(&p, png).expect("write screenshot");
    p
}

async fn text_of(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
        .text()
        .await
        .expect("element text")
}

/// The browser shows the French queue page, at the address the student asked for,
/// with position 1 announced in the aria-live region.
async fn assert_queue_page(b: &Client, e: &Ecluse) {
    let url = b.current_url().await.expect("url");
    assert_eq!(
        url.as_str(),
        e.url(PAGE),
        "the queue page stands at the asked URL"
    );
    let src = b.source().await.expect("source");
    assert!(
        !src.contains("\"server\":\"ent\""),
        "the ENT must not be reached while the room is full:\n{src}"
    );
    let lang = b
        .find(Locator::Css("html"))
        .await
        .expect("html")
        .attr("lang")
        .await
        .expect("lang attr");
    assert_eq!(lang.as_deref(), Some("fr"), "a French queue page:\n{src}");
    let title = b.title().await.expect("title");
    assert!(title.starts_with(TITLE_FR), "title: {title:?}");
    assert_eq!(text_of(b, "h1").await, TITLE_FR);
    assert_eq!(
        text_of(b, "[aria-live] #q-pos-v").await,
        "1",
        "position 1, inside the aria-live region"
    );
    assert_eq!(
        b.find_all(Locator::Css("[aria-live] #q-pos-v"))
            .await
            .expect("find")
            .len(),
        1
    );
}

/// Poll the page (never touching it) until it is the ENT's JSON for `path`.
async fn wait_landed(b: &Client, path: &str, limit: Duration) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let url = b.current_url().await.map(|u| u.path().to_string());
        if let (Ok(u), Ok(src)) = (url, b.source().await) {
            if u == path && src.contains(&format!("\"path\":\"{path}\"")) {
                // Chromium shows JSON in a <pre>.
                let text = match b.find(Locator::Css("body > pre")).await {
                    Ok(pre) => pre.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(text.trim()) {
                    assert_eq!(v["path"], path);
                    return (v, t0.elapsed());
                }
            }
            last = src;
        }
        assert!(
            t0.elapsed() < limit,
            "the browser did not land on {path} by itself within {limit:?}; last page:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the ENT saw of the browser's request.
fn assert_ent_saw_the_browser(v: &serde_json::Value) {
    assert_eq!(v["server"], "ent");
    assert_eq!(v["method"], "GET");
    let al = v["headers"]["accept-language"].as_str().unwrap_or("");
    assert!(al.starts_with("fr"), "the browser asked for French: {al:?}");
    let cookie = v["headers"]["cookie"].as_str().unwrap_or("");
    assert!(
        cookie.contains("ecluse_ent="),
        "the browser came with its ticket: {cookie:?}"
    );
}

/// One student's visit: the ENT is full (a reqwest student holds the only place), the
/// browser opens `PAGE` and gets the French queue page; the other student logs out and
/// the page, left alone, takes the browser to `PAGE`. Each visit has its own ecluse (a
/// browser cannot leave cleanly: after `/logout` it fetches `/favicon.ico` without a
/// cookie, which is admitted and takes the place again).
async fn visit(driver: &Driver, javascript: bool, limit: Duration, shots: [&str; 2]) {
    let origin = EchoOrigin::start("ent").await;
    let e = start_ecluse(origin.addr);
    let inside = fill_the_room(&e).await;
    let b = driver.browser(javascript).await;
    b.goto(&e.url(PAGE)).await.expect("open the ENT page");
    assert_queue_page(&b, &e).await;
    if javascript {
        // With scripting on, <noscript> is raw text: no fallback paragraph is rendered.
        assert!(
            b.find(Locator::Css("noscript p")).await.is_err(),
            "JavaScript is enabled in this session"
        );
    } else {
        let noscript = text_of(&b, "noscript p").await;
        assert!(
            noscript.contains("toutes les 5 secondes"),
            "JavaScript is disabled, so the fallback text is shown: {noscript:?}"
        );
        let refresh = b
            .find(Locator::Css(r#"meta[http-equiv="refresh"]"#))
            .await
            .expect("meta refresh")
            .attr("content")
            .await
            .expect("content");
        assert_eq!(refresh.as_deref(), Some("5"), "max(poll_interval, 5 s)");
    }
    // The student inside, plus at most the browser's own /favicon.ico (never inside a
    // room); the queued page itself never reached the ENT (its HTML is ours, checked
    // above).
    assert!(
        origin.hits() <= 2,
        "only the student inside reached the ENT ({} hits)",
        origin.hits()
    );
    screenshot(&b, shots[0]).await;
    log_out(&inside, &e).await;
    let (v, took) = wait_landed(&b, PAGE, limit).await;
    assert_ent_saw_the_browser(&v);
    let mode = if javascript {
        "JS poll"
    } else {
        "meta refresh"
    };
    eprintln!("{mode}: landed on {PAGE} {took:?} after the logout");
    screenshot(&b, shots[1]).await;
    b.close().await.expect("close the browser session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_student_waits_then_lands_on_the_ent_with_and_without_javascript() {
    let t0 = Instant::now();
    let driver = Driver::start().await;
    // JavaScript on: the page polls the status URL (every ~1 s) and reloads itself.
    visit(
        &driver,
        true,
        Duration::from_secs(20),
        ["queue-fr.png", "landed-fr.png"],
    )
    .await;
    // JavaScript off: `<noscript><meta http-equiv=refresh content=5>` does it.
    visit(
        &driver,
        false,
        Duration::from_secs(25),
        ["queue-nojs-fr.png", "landed-nojs-fr.png"],
    )
    .await;
    eprintln!(
        "screenshots in {}; total {:?}",
        shot_dir().display(),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Every page ecluse writes, audited with axe-core (WCAG 2.1 A and AA), in French and
// English, phone and desktop widths, light and dark, with and without JavaScript; a
// keyboard walk through each; and "C'est votre tour !" in a background tab.

/// axe-core, installed from npm by `make test` (`scripts/test-tools.sh`).
fn axe_source() -> String {
    let p = std::env::var_os("AXE_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/test-tools/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "axe-core is missing ({}: {e}). Run `make test-tools` (npm install of axe-core), \
             or set AXE_CORE_JS to an axe.min.js",
            p.display()
        )
    })
}

/// A port nothing listens on (bound then closed): the origin of the 502 page.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn rfc3339_in(secs: i64) -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second() + secs)
        .expect("time")
        .to_string()
}

fn start_pages_ecluse(origin: SocketAddr) -> Ecluse {
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
pages:
  time_zone: Europe/Paris
  brand: {{ name: "Collège Jean Moulin", help_url: /aide }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 10m, secret_file: keys }}
  exam: {{ active_users: 100, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 10m, secret_file: keys, event: {{ opens_at: "{far}", prequeue: 30m }} }}
  draw: {{ active_users: 100, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 10m, secret_file: keys, method: random, event: {{ opens_at: "{soon}", prequeue: 30m }} }}
  moving: {{ active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 10m, session_idle_timeout: 2s, ticket_burst: 1000, secret_file: keys }}
degradation:
  levels: [{{ name: normal }}]
  force_features: {{ visio: false }}
  features: {{ visio: {{ name_fr: "la classe virtuelle", name_en: "the virtual classroom" }} }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
  down: {{ servers: ["{closed}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: visio, match: {{ path_prefix: /visio/ }}, origin: ent, feature: visio }}
  - name: limited
    match: {{ path_prefix: /limited/ }}
    origin: ent
    rate_limits: [{{ key: route, rate: 1/h, burst: 1 }}]
  - {{ name: down, match: {{ path_prefix: /down/ }}, origin: down }}
  - {{ name: exam, match: {{ path_prefix: /exam/ }}, origin: ent, waiting_room: exam }}
  - {{ name: draw, match: {{ path_prefix: /draw/ }}, origin: ent, waiting_room: draw }}
  - {{ name: moving, match: {{ path_prefix: /moving/ }}, origin: ent, waiting_room: moving }}
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#,
        far = rfc3339_in(3 * 86_400),
        soon = rfc3339_in(600),
        closed = closed_port(),
    );
    Ecluse::start_with(&yaml, &[("keys", KEY.as_bytes())], |_| {})
}

/// (name, path, expected status): every page ecluse writes that a browser can reach.
/// `shed` (503, origin at capacity) and 504 share the error template audited here
/// through 429 and 502 (same layout, same words structure).
const PAGES: [(&str, &str, u16); 8] = [
    ("queue", PAGE, 200),
    ("queue-range", "/moving/devoir", 200),
    ("prequeue", "/draw/devoir", 200),
    ("not-open-yet", "/exam/sujet", 200),
    ("rate-limited", "/limited/recherche", 429),
    ("feature-off", "/visio/salle", 503),
    ("origin-error", "/down/cours", 502),
    ("bad-request", "/a%00b", 400),
];

/// The rendered page's violations of WCAG 2.1 A/AA as axe-core reports them. `b` must
/// run scripts (axe is asynchronous: a page without scripting never fires its timers).
async fn axe(b: &Client, axe_js: &str, javascript: bool) -> Vec<String> {
    b.execute(&format!("{axe_js}\n;return true;"), vec![])
        .await
        .expect("inject axe-core");
    // Without JavaScript the queue, "not open yet" and 429 pages refresh with
    // `<meta http-equiv=refresh>` (inside <noscript>, so a scripting browser never
    // sees it): the only way a page without scripts can follow a live queue, which
    // WCAG 2.2.1 allows as a real-time event. `meta-refresh` is off in that case
    // only; the delay is checked apart (at least 5 s).
    let rules = if javascript {
        "{}"
    } else {
        "{ 'meta-refresh': { enabled: false } }"
    };
    let script = format!(
        r#"const done = arguments[arguments.length - 1];
axe.run(document, {{ runOnly: {{ type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }}, rules: {rules}, resultTypes: ['violations'] }})
  .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ') + ' — ' + n.failureSummary.replace(/\s+/g, ' ')).join(' | '))))
  .catch(e => done(['axe failed: ' + e]));"#
    );
    let v = b.execute_async(&script, vec![]).await.expect("run axe");
    serde_json::from_value(v).expect("a list of violations")
}

/// The page as a browser without JavaScript built it (`src`, the live DOM of the
/// no-JS session), written into `twin` (a scripting session at the same address, size,
/// language and colour scheme) so that axe can run: `<noscript>` unwrapped as the
/// no-JS parser does, scripts removed, the refresh neutralised while axe runs.
async fn load_as_without_javascript(twin: &Client, url: &str, src: &str) {
    twin.goto(url).await.expect("open in the twin");
    let html = src
        .replace("<noscript>", "")
        .replace("</noscript>", "")
        .replace(
            "http-equiv=\"refresh\"",
            "http-equiv=\"x-refresh-checked-apart\"",
        );
    // Drop every <script>…</script>.
    let mut out = String::with_capacity(html.len());
    let mut rest = html.as_str();
    while let Some(i) = rest.find("<script") {
        out.push_str(&rest[..i]);
        rest = match rest[i..].find("</script>") {
            Some(j) => &rest[i + j + "</script>".len()..],
            None => "",
        };
    }
    out.push_str(rest);
    twin.execute(
        "document.open(); document.write(arguments[0]); document.close(); return document.readyState;",
        vec![serde_json::Value::String(out)],
    )
    .await
    .expect("write the no-JS page");
}

async fn js_value(b: &Client, script: &str) -> serde_json::Value {
    b.execute(script, vec![]).await.expect("script")
}

/// Tab through the page: each stop shows a visible focus indicator, and every
/// focusable element is reached (nothing traps the focus, nothing is skipped).
async fn keyboard_walk(b: &Client, name: &str) {
    let count = js_value(
        b,
        r#"return [...document.querySelectorAll('a[href], button, summary, input, select, textarea, [tabindex]:not([tabindex="-1"])')].filter(e => e.offsetParent !== null).length;"#,
    )
    .await
    .as_u64()
    .expect("a count");
    js_value(
        b,
        "document.activeElement && document.activeElement.blur(); window.focus(); return 0;",
    )
    .await;
    let body = b.find(Locator::Css("body")).await.expect("body");
    let mut seen = Vec::new();
    for _ in 0..count + 1 {
        body.send_keys("\u{E004}").await.expect("Tab");
        let v = js_value(
            b,
            r#"const e = document.activeElement; if (!e || e === document.body) return null;
const s = getComputedStyle(e);
return { id: e.tagName + '#' + (e.id || '') + ':' + (e.textContent || '').trim().slice(0, 30),
         visible: (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none' };"#,
        )
        .await;
        if v.is_null() {
            continue;
        }
        assert_eq!(
            v["visible"], true,
            "{name}: the focused element {} shows no focus indicator",
            v["id"]
        );
        let id = v["id"].as_str().unwrap_or("").to_string();
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    assert_eq!(
        seen.len() as u64,
        count,
        "{name}: Tab reached {seen:?}, the page has {count} focusable elements (trapped or skipped)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_passes_axe_in_both_languages_widths_schemes_with_and_without_javascript() {
    let t0 = Instant::now();
    let axe_js = axe_source();
    let origin = EchoOrigin::start("ent").await;
    let e = start_pages_ecluse(origin.addr);
    let _inside = fill_the_room(&e).await;
    // A queue on the move, measured over a few seconds only: the pupil who got the
    // `moving` room's one place never comes back (the session idles out), nor do those
    // queued behind (each turn goes unclaimed for 7 s, then to the next). Its wait is a
    // range.
    let r = client()
        .get(e.url("/moving/devoir"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    // Enough tickets that the browsers' own, behind them, are not reached before the
    // test ends (one every 7 s: 35 minutes).
    for _ in 0..300 {
        client()
            .get(e.url("/moving/devoir"))
            .send()
            .await
            .expect("GET");
    }
    let watcher = cookie_client();
    watcher
        .get(e.url("/moving/devoir"))
        .send()
        .await
        .expect("GET");
    eventually(
        "the moving queue's wait as a range",
        Duration::from_secs(90),
        async || {
            let Ok(r) = watcher
                .get(e.url("/.ecluse/queue/status?room=moving"))
                .send()
                .await
            else {
                return false;
            };
            let s: serde_json::Value = r.json().await.unwrap_or_default();
            matches!((s["eta_low_seconds"].as_u64(), s["eta_high_seconds"].as_u64()), (Some(l), Some(h)) if l < h)
        },
    )
    .await;
    // Each page answers with its status (reqwest, French).
    let c = cookie_client();
    for (name, path, status) in PAGES {
        let r = c
            .get(e.url(path))
            .header("accept", "text/html")
            .send()
            .await
            .expect("GET");
        // The first request on the limited route passes; the next ones are the 429.
        let r = if status == 429 && r.status() == 200 {
            c.get(e.url(path))
                .header("accept", "text/html")
                .send()
                .await
                .expect("GET")
        } else {
            r
        };
        assert_eq!(r.status().as_u16(), status, "{name} at {path}");
        let html = r.text().await.expect("body");
        assert!(
            html.contains("Collège Jean Moulin"),
            "{name}: the brand from `pages.brand`"
        );
        assert!(
            html.contains("href=\"&#x2f;aide\""),
            "{name}: the help link"
        );
        if name == "queue-range" {
            assert!(
                html.contains("id=\"q-eta-v\">entre ") || html.contains("id=\"q-eta-v\">moins de "),
                "the wait as a range:\n{html}"
            );
        }
    }
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/pages");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start().await;
    let mut violations = Vec::new();
    let mut audits = 0;
    for javascript in [true, false] {
        for dark in [false, true] {
            for (lang, languages) in [("fr", "fr-FR,fr"), ("en", "en-GB,en")] {
                let b = driver.browser_with(javascript, dark, languages).await;
                let twin = if javascript {
                    None
                } else {
                    Some(driver.browser_with(true, dark, languages).await)
                };
                for (width, height, device) in [(390u32, 844u32, "phone"), (1280, 900, "desktop")] {
                    b.set_window_size(width, height).await.expect("window size");
                    if let Some(t) = &twin {
                        t.set_window_size(width, height).await.expect("window size");
                    }
                    for (name, path, _) in PAGES {
                        b.goto(&e.url(path)).await.expect("open the page");
                        let html_lang = js_value(&b, "return document.documentElement.lang;").await;
                        assert_eq!(html_lang, lang, "{name}: a page in {lang}");
                        let is_dark = js_value(
                            &b,
                            "return matchMedia('(prefers-color-scheme: dark)').matches;",
                        )
                        .await;
                        assert_eq!(is_dark, dark, "the browser's colour scheme");
                        let scripts_ran = js_value(
                            &b,
                            "return !!document.querySelector('noscript') && document.querySelector('noscript').children.length === 0;",
                        )
                        .await;
                        if name == "queue" {
                            assert_eq!(
                                scripts_ran, javascript,
                                "JavaScript {javascript} in this session"
                            );
                        }
                        if name == "queue-range" {
                            let shown = text_of(&b, "#q-eta-v").await;
                            let words: [&str; 2] = if lang == "fr" {
                                ["entre ", "moins de "]
                            } else {
                                ["between ", "less than "]
                            };
                            assert!(
                                words.iter().any(|w| shown.starts_with(w)),
                                "the wait as a range in {lang}: {shown:?}"
                            );
                        }
                        let audited = match &twin {
                            None => &b,
                            Some(t) => {
                                let src = b.source().await.expect("the no-JS DOM");
                                load_as_without_javascript(t, &e.url(path), &src).await;
                                t
                            }
                        };
                        for v in axe(audited, &axe_js, javascript).await {
                            violations.push(format!(
                                "{name} [{lang}, {device}, {}, {}]: {v}",
                                if dark { "dark" } else { "light" },
                                if javascript { "JS" } else { "no JS" }
                            ));
                        }
                        audits += 1;
                        if !javascript {
                            // The no-JS refresh is never faster than every 5 s.
                            let delay = js_value(&b, r#"const m = document.querySelector('meta[http-equiv="refresh"]'); return m ? parseInt(m.content, 10) : null;"#).await;
                            if let Some(d) = delay.as_u64() {
                                assert!(d >= 5, "{name}: refresh every {d} s");
                            }
                        }
                        if javascript
                            && ((lang == "fr" && device == "phone" && !dark)
                                || (lang == "en" && device == "desktop" && dark))
                        {
                            let png = b.screenshot().await.expect("screenshot");
                            let file = format!(
                                "{name}-{lang}-{device}-{}.png",
                                if dark { "dark" } else { "light" }
                            );
                            std::fs::write(shots.join(file), png).expect("write screenshot");
                        }
                        if javascript && !dark && lang == "fr" && device == "desktop" {
                            keyboard_walk(&b, name).await;
                        }
                    }
                }
                b.close().await.expect("close the browser session");
            }
        }
    }
    eprintln!(
        "{audits} axe audits in {:?}; screenshots in {}",
        t0.elapsed(),
        shots.display()
    );
    assert_eq!(audits, 2 * 2 * 2 * 2 * PAGES.len());
    assert!(
        violations.is_empty(),
        "WCAG 2.1 A/AA violations:\n{}",
        violations.join("\n")
    );
}

/// The turn comes while the queue tab is in the background: the tab's title says so,
/// then the page goes on to where the pupil was going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn its_your_turn_in_a_background_tab_changes_the_title_then_lands() {
    let driver = Driver::start().await;
    let origin = EchoOrigin::start("ent").await;
    let e = start_ecluse(origin.addr);
    let inside = fill_the_room(&e).await;
    let b = driver.browser(true).await;
    b.goto(&e.url(PAGE)).await.expect("open the ENT page");
    assert_queue_page(&b, &e).await;
    // Hide the page (what a switched tab or app reports) and record every title it
    // takes in sessionStorage, which outlives the navigation to the ENT page (same
    // origin, same tab).
    js_value(
        &b,
        r#"Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
document.dispatchEvent(new Event('visibilitychange'));
sessionStorage.setItem('titles', JSON.stringify([document.title]));
new MutationObserver(() => {
  const t = JSON.parse(sessionStorage.getItem('titles') || '[]'); t.push(document.title);
  sessionStorage.setItem('titles', JSON.stringify(t));
}).observe(document.querySelector('title'), { childList: true, characterData: true, subtree: true });
return document.visibilityState;"#,
    )
    .await;
    log_out(&inside, &e).await;
    let (v, took) = wait_landed(&b, PAGE, Duration::from_secs(20)).await;
    assert_ent_saw_the_browser(&v);
    let titles = js_value(&b, "return sessionStorage.getItem('titles');").await;
    let titles: Vec<String> =
        serde_json::from_str(titles.as_str().expect("titles recorded")).expect("json");
    assert!(
        titles.iter().any(|t| t == "C'est votre tour !"),
        "the hidden tab's title announced the turn: {titles:?}"
    );
    eprintln!("hidden tab: titles {titles:?}, landed {took:?} after the logout");
    b.close().await.expect("close the browser session");
}

// ---------------------------------------------------------------------------------------
// A phone that sleeps: the queue page frozen through Chromium's page-lifecycle controls
// (what a mobile browser does to a background tab: timers and polls stop), kept frozen
// past `abandon_timeout` while another pupil is let in on its turn, then woken.

/// Abandon timeout of the freeze test's room: the page stays frozen longer than this.
const ABANDON: Duration = Duration::from_secs(4);

fn start_sleep_ecluse(origin: SocketAddr, return_grace: &str) -> Ecluse {
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: {}s, return_grace: {return_grace}, secret_file: keys }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#,
        ABANDON.as_secs()
    );
    Ecluse::start_with(&yaml, &[("keys", KEY.as_bytes())], |_| {})
}

/// A Chrome DevTools Protocol command on the browser's page, through chromedriver's
/// `goog/cdp/execute` endpoint (it does not run anything in the page, so it answers
/// while the page is frozen).
async fn cdp(driver: &Driver, b: &Client, cmd: &str, params: serde_json::Value) {
    let sid = b
        .session_id()
        .await
        .expect("session id")
        .expect("a session");
    let r = client()
        .post(format!("{}/session/{sid}/goog/cdp/execute", driver.url))
        .json(&serde_json::json!({ "cmd": cmd, "params": params }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let ok = r.status().is_success();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert!(ok, "{cmd} refused by chromedriver: {v}");
}

/// A pupil outside the browser who keeps polling the status (every 250 ms, as its page
/// would), until admitted; `state` holds the last state seen.
fn keep_polling(
    c: reqwest::Client,
    url: String,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    tokio::task::JoinHandle<()>,
) {
    let state = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let s = state.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(r) = c.get(&url).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let st = v["state"].as_str().unwrap_or("").to_string();
                    let done = st == "admitted";
                    *s.lock().unwrap_or_else(|p| p.into_inner()) = st;
                    if done {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (state, task)
}

/// Whether the page shows "your place has expired".
async fn lost_shown(b: &Client) -> bool {
    match b.find(Locator::Css("#q-lost")).await {
        Ok(el) => el.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

fn state_of(s: &std::sync::Mutex<String>) -> String {
    s.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The browser's queue page is frozen while its turn comes and goes to the next pupil,
/// past `abandon_timeout`; it is woken. Returns the ecluse, the browser, the pupil let
/// in meanwhile and the state of the pupil who was behind the browser.
async fn sleep_through_the_turn(
    driver: &Driver,
    e: &Ecluse,
) -> (
    Client,
    reqwest::Client,
    std::sync::Arc<std::sync::Mutex<String>>,
    tokio::task::JoinHandle<()>,
) {
    let inside = fill_the_room(e).await;
    let b = driver.browser(true).await;
    b.goto(&e.url(PAGE)).await.expect("open the ENT page");
    assert_queue_page(&b, e).await;
    // Two pupils queue behind the browser and keep polling.
    let status_url = e.url("/.ecluse/queue/status?room=ent");
    let next = cookie_client();
    let later = cookie_client();
    for c in [&next, &later] {
        let r = c.get(e.url("/")).send().await.expect("GET /");
        assert_eq!(ticket_state(&r), Some(TicketState::Waiting));
    }
    let (next_state, _next_task) = keep_polling(next.clone(), status_url.clone());
    let (later_state, later_task) = keep_polling(later.clone(), status_url);
    // The page has polled at least once (its "updated at" time moved on).
    let first = text_of(&b, "#q-upd").await;
    eventually("the page polls", DEADLINE, async || {
        text_of(&b, "#q-upd").await != first
    })
    .await;
    let before = text_of(&b, "#q-upd").await;
    cdp(
        driver,
        &b,
        "Page.setWebLifecycleState",
        serde_json::json!({ "state": "frozen" }),
    )
    .await;
    let frozen = Instant::now();
    // The browser's turn comes while it is frozen: its grant lapses unclaimed and the
    // next pupil is let in (which only happens if the page really stopped polling).
    log_out(&inside, e).await;
    eventually("the next pupil gets in meanwhile", DEADLINE, async || {
        state_of(&next_state) == "admitted"
    })
    .await;
    assert_eq!(state_of(&later_state), "waiting");
    assert!(
        frozen.elapsed() > ABANDON,
        "frozen for {:?}, past abandon_timeout",
        frozen.elapsed()
    );
    cdp(
        driver,
        &b,
        "Page.setWebLifecycleState",
        serde_json::json!({ "state": "active" }),
    )
    .await;
    eprintln!("page frozen for {:?}", frozen.elapsed());
    // Awake: the page polls again by itself (and shows the answer: a new time, or the
    // place lost).
    eventually("the page polls again once woken", DEADLINE, async || {
        text_of(&b, "#q-upd").await != before || lost_shown(&b).await
    })
    .await;
    (b, next, later_state, later_task)
}

/// Within the return grace, the woken page gets the next free place, ahead of the pupil
/// who was behind it, and lands on the page it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_page_woken_within_the_return_grace_gets_the_next_place() {
    let driver = Driver::start().await;
    let origin = EchoOrigin::start("ent").await;
    let e = start_sleep_ecluse(origin.addr, "15m");
    let (b, next, later, _task) = sleep_through_the_turn(&driver, &e).await;
    assert!(!lost_shown(&b).await, "the place is kept");
    assert_eq!(text_of(&b, "#q-pos-v").await, "1", "first in line again");
    // The pupil let in meanwhile leaves: the free place is the browser's.
    log_out(&next, &e).await;
    let (v, took) = wait_landed(&b, PAGE, Duration::from_secs(30)).await;
    assert_ent_saw_the_browser(&v);
    assert_eq!(state_of(&later), "waiting", "the pupil behind still waits");
    eprintln!("woken page landed {took:?} after the place freed");
    b.close().await.expect("close the browser session");
}

/// Without a return grace (`return_grace: 0s`) the same sleep loses the place: the woken
/// page says so, and the free place goes to the pupil who was behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_page_without_return_grace_loses_its_place() {
    let driver = Driver::start().await;
    let origin = EchoOrigin::start("ent").await;
    let e = start_sleep_ecluse(origin.addr, "0s");
    let (b, next, later, _task) = sleep_through_the_turn(&driver, &e).await;
    eventually("the page says the place is lost", DEADLINE, async || {
        lost_shown(&b).await
    })
    .await;
    log_out(&next, &e).await;
    eventually("the pupil behind gets the place", DEADLINE, async || {
        state_of(&later) == "admitted"
    })
    .await;
    let src = b.source().await.expect("source");
    assert!(
        !src.contains("\"server\":\"ent\""),
        "the browser did not get in"
    );
    b.close().await.expect("close the browser session");
}

// ---------------------------------------------------------------------------------------
// The 429 page tries again by itself after Retry-After, with and without JavaScript.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_429_page_tries_again_by_itself_with_and_without_javascript() {
    let driver = Driver::start().await;
    let origin = EchoOrigin::start("ent").await;
    // One request every 5 s on the route, for everyone together.
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - name: limited
    match: {{ path_prefix: /limited/ }}
    origin: ent
    rate_limits: [{{ key: route, rate: 12/m, burst: 1 }}]
  - {{ name: ent, origin: ent }}
"#,
        origin.addr
    );
    let e = Ecluse::start(&yaml);
    let path = "/limited/recherche";
    for javascript in [true, false] {
        // Someone else takes the route's request: the browser's is refused for ~5 s.
        eventually("the route's request taken", DEADLINE, async || {
            client()
                .get(e.url(path))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        let b = driver.browser(javascript).await;
        b.goto(&e.url(path)).await.expect("open the page");
        assert_eq!(
            text_of(&b, "h1").await,
            "Une petite pause",
            "the 429 page (JavaScript {javascript})"
        );
        let (v, took) = wait_landed(&b, path, Duration::from_secs(30)).await;
        assert_eq!(v["server"], "ent");
        eprintln!("429 page, JavaScript {javascript}: landed {took:?} later by itself");
        b.close().await.expect("close the browser session");
    }
}

// ---------------------------------------------------------------------------------------
// The admin listener's status page (issue #26).

const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The status page with a full room (one inside, one queued), visio switched off and an
/// origin with a dead server passes axe (WCAG 2.1 A/AA) on a phone and a desktop, light
/// and dark, with and without JavaScript, and the keyboard reaches every control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_passes_axe_with_a_full_room_a_feature_off_and_a_server_down() {
    let axe_js = axe_source();
    let origin = EchoOrigin::start("ent").await;
    let dead = closed_port();
    let e = status_page_policy(origin.addr, dead, ADMIN_TOKEN, KEY);
    let _inside = fill_the_room(&e).await;
    let queued = cookie_client();
    let r = queued.get(e.url("/")).send().await.expect("queued");
    assert!(r.text().await.expect("page").contains("id=\"q\""));
    for _ in 0..2 {
        let _ = client().get(e.url("/search/x")).send().await;
    }
    let r = client()
        .post(e.admin_url("/admin/features/visio"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "on": false }))
        .send()
        .await
        .expect("visio off");
    assert_eq!(r.status(), 200);
    // A server down and two samples, so each chart has a line.
    let url = e.admin_url("/status");
    eventually("a server down and the charts drawn", DEADLINE, async || {
        let Ok(r) = client().get(&url).send().await else {
            return false;
        };
        let html = r.text().await.unwrap_or_default();
        html.contains("down (health check failing)") && html.matches("<polyline").count() >= 4
    })
    .await;

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/pages");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let driver = Driver::start().await;
    let held = format!("{url}#pause");
    let mut violations = Vec::new();
    let mut audits = 0;
    for javascript in [true, false] {
        for dark in [false, true] {
            let b = driver.browser_with(javascript, dark, "en-GB,en").await;
            let twin = if javascript {
                None
            } else {
                Some(driver.browser_with(true, dark, "en-GB,en").await)
            };
            for (width, height, device) in [(390u32, 844u32, "phone"), (1280, 900, "desktop")] {
                b.set_window_size(width, height).await.expect("window size");
                if let Some(t) = &twin {
                    t.set_window_size(width, height).await.expect("window size");
                }
                b.goto(&held).await.expect("open the status page");
                let text = text_of(&b, "main").await;
                for section in [
                    "Waiting rooms",
                    "Degradation",
                    "Origins",
                    "Cache",
                    "Rate limits",
                ] {
                    assert!(text.contains(section), "{section} on the page:\n{text}");
                }
                let audited = match &twin {
                    None => &b,
                    Some(t) => {
                        let src = b.source().await.expect("the no-JS DOM");
                        load_as_without_javascript(t, &held, &src).await;
                        t
                    }
                };
                for v in axe(audited, &axe_js, javascript).await {
                    violations.push(format!(
                        "status [{device}, {}, {}]: {v}",
                        if dark { "dark" } else { "light" },
                        if javascript { "JS" } else { "no JS" }
                    ));
                }
                audits += 1;
                if !javascript {
                    let delay = js_value(&b, r#"const m = document.querySelector('meta[http-equiv="refresh"]'); return m ? parseInt(m.content, 10) : null;"#).await;
                    assert!(delay.as_u64().is_some_and(|d| d >= 5), "refresh {delay}");
                }
                if javascript {
                    let png = b.screenshot().await.expect("screenshot");
                    let file = format!(
                        "status-{device}-{}.png",
                        if dark { "dark" } else { "light" }
                    );
                    std::fs::write(shots.join(file), png).expect("write screenshot");
                    if !dark && device == "desktop" {
                        keyboard_walk(&b, "status").await;
                    }
                }
            }
            b.close().await.expect("close the browser session");
        }
    }
    assert_eq!(audits, 8);
    assert!(
        violations.is_empty(),
        "WCAG 2.1 A/AA violations:\n{}",
        violations.join("\n")
    );
}
