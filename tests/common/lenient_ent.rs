//! An origin that behaves like the common ENT backends an attacker would aim through
//! ecluse, on 127.0.0.1 port 0 (issue #17). Lenient in every way real backends are:
//!
//! - **paths**: percent-decodes everything (`%2F` too), turns `\` into `/`, merges
//!   repeated slashes and removes dot segments before routing, as most frameworks do;
//! - **cookies**: splits the `Cookie` header on `;`, `,` and whitespace, as Python's
//!   and aiohttp's lenient parsers do; `session=NAME` identifies the pupil NAME;
//! - **forwarding headers**: honours `X-Original-URL` / `X-Rewrite-URL` (the path it
//!   routes on), `X-Forwarded-Host`, `Forwarded: host=`, `X-Forwarded-Port`,
//!   `X-Forwarded-Prefix` and `X-Real-IP` (echoed in the body, so a response can be
//!   personalised by a header);
//! - **per-pupil bodies at one URL**: `/private/...` answers each pupil their own body
//!   (`"<path> for NAME"`, with an ETag of that body, and 304 to a matching
//!   `If-None-Match`), and answers anonymous requests with a **200 login page**, as many
//!   ENTs do;
//! - **fails on command**: `set_failing(true)` makes every answer a 503; any path under
//!   `/fail/` always answers 500 (a URL that fails for everyone), and any path under
//!   `/busy/` always 503 (a URL the ENT refuses when pressed, a heavy export).
//! - **case-insensitive on command**: `set_case_insensitive(true)` folds the path to lower
//!   case before routing, as IIS and other Windows-hosted backends do (`/VISIO` is
//!   `/visio`).
//! - **more backend habits on command** (`set_habits`): Tomcat's `;params` stripped from
//!   each segment before decoding (`/visio;x=1/room` is `/visio/room`), Windows' trailing
//!   dots, spaces and NTFS streams ignored in each segment (`/visio./room`,
//!   `/visio%20/room`, `/visio::$INDEX_ALLOCATION/room`), and a PHP
//!   front controller routing by PATH_INFO (`/index.php/visio/room` is `/visio/room`).
//! - **Windows' other names on command**: `set_windows_lookalikes(true)` reads fullwidth
//!   characters as their ASCII letter (`／` U+FF0F is `/`, `ｖ` is `v`, as NFKC and
//!   best-fit do) and an 8.3 short name segment (`VISIO~1`, `VIS~2.X`) as the first of
//!   its directories (`visio`, `exam`, `files`, `private`) it abbreviates, as NTFS does.
//! - **slow on command**: `/slow/MS/...` answers after MS milliseconds (at most 30 s; a
//!   heavy search); `set_delay(d)` makes every answer wait `d` first (the ENT is slow);
//!   `set_holding(true)` holds every answer (once recorded in `seen()`) until
//!   `set_holding(false)`: a request kept in flight for as long as a test needs;
//!   `set_servers(Some((n, service)))` models an ENT of `n` servers answering one request
//!   at a time each: latency rises with the load past `n` (a server dies: a smaller `n`).
//! - **one body for every pupil** at `/class/...` (`"<path> for the class"`, login page
//!   for anonymous), like an exam paper every logged-in pupil may read;
//! - **validators on command** (`set_validators`): a strong ETag of the body (default), a
//!   weak one, none at all, or only a `Last-Modified` of the page's template, answered 304
//!   by date to any `If-Modified-Since` (whoever asks: the habit that makes a date say
//!   nothing about one pupil's body); `set_edition` changes every private body (a
//!   re-upload); `set_careless_304(true)` answers 304 (with the asker's own ETag) to
//!   any `If-None-Match` at `/private/`, whatever tag it names (a broken cache layer);
//!   `set_lazy_304(true)` answers 304 **without an ETag** to an `If-None-Match` naming
//!   any tag it has served at that `/private/` URL, to whoever asks (a lazy ENT: it
//!   checks the tag, not the credentials), with per-pupil strong ETags.
//! - **content negotiation on command**: `set_vary(Some("accept-language"))` adds
//!   `Vary: accept-language` to `/private/` and `/class/` answers and ends each body with
//!   ` [VALUE]`, the request's value of that header (another body, another ETag).
//!
//! Everything else answers 200 with a JSON echo: `{"path", "raw", "user", "host",
//! "real_ip", "port", "prefix", "method", "body_len"}` and `Cache-Control` from
//! `set_cache_control` (default `public, max-age=60`). Every request is recorded
//! (`seen()`), with the raw request target as it arrived and the path the backend routed,
//! and its body's length, SHA-256 and whether it arrived complete (framing honoured to its
//! end) or aborted.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request as the lenient backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request target exactly as received (path and query).
    pub raw: String,
    /// The path the backend routed on (after its own normalization and rewrite headers).
    pub path: String,
    /// The pupil the lenient cookie parser found, if any.
    pub user: Option<String>,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// Hex SHA-256 of the body received (of what arrived, when it was aborted).
    pub body_sha256: String,
    /// The body arrived whole; false when the connection broke before its framing ended.
    pub body_complete: bool,
}

/// Which validators `/private/` and `/class/` answers carry (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validators {
    StrongEtag,
    WeakEtag,
    None,
    TemplateDate,
}

const TEMPLATE_DATE: &str = "Mon, 30 Nov 2026 07:00:00 GMT";

struct State {
    careless_304: AtomicBool,
    lazy_304: AtomicBool,
    /// Every ETag served at each `/private/` path (see `set_lazy_304`).
    issued: Mutex<std::collections::HashMap<String, Vec<String>>>,
    validators: Mutex<Validators>,
    edition: Mutex<String>,
    failing: AtomicBool,
    case_insensitive: AtomicBool,
    windows_lookalikes: AtomicBool,
    habits: Mutex<Habits>,
    /// Every answer waits this long first (ms).
    delay_ms: std::sync::atomic::AtomicU64,
    cache_control: Mutex<String>,
    /// While true, answers wait (see `set_holding`).
    holding: tokio::sync::watch::Sender<bool>,
    /// The header `/private/` and `/class/` bodies vary by (see `set_vary`).
    vary: Mutex<Option<String>>,
    seen: Mutex<Vec<Seen>>,
    /// A capacity model (see `set_servers`): the slots and each answer's service time.
    servers: Mutex<Option<(Arc<tokio::sync::Semaphore>, u64)>>,
}

/// More path habits of real backends (all off by default; see `set_habits`).
#[derive(Clone, Debug, Default)]
pub struct Habits {
    /// Tomcat: `;…` removed from each raw segment before decoding.
    pub strip_path_params: bool,
    /// Windows (IIS): trailing `.` and ` ` and an NTFS stream (`::$DATA`) of each
    /// decoded segment ignored.
    pub windows_names: bool,
    /// PHP: a path under this script (`/index.php`) is routed by what follows it.
    pub front_controller: Option<String>,
}

pub struct LenientEnt {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The backend's path normalization: percent-decode every byte, `\` → `/`, merge
/// slashes, resolve `.` and `..` (never above the root).
pub fn lenient_normalize(raw_path: &str) -> String {
    let b = raw_path.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if s.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

/// The lenient cookie reader: splits on `;`, `,` and whitespace; the last `session=`
/// wins.
pub fn lenient_user(cookie: &str) -> Option<String> {
    cookie
        .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .filter_map(|kv| kv.trim().strip_prefix("session="))
        .rfind(|v| !v.is_empty())
        .map(str::to_string)
}

fn etag_of(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

impl LenientEnt {
    pub async fn start() -> LenientEnt {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State {
            careless_304: AtomicBool::new(false),
            lazy_304: AtomicBool::new(false),
            issued: Mutex::new(std::collections::HashMap::new()),
            validators: Mutex::new(Validators::StrongEtag),
            edition: Mutex::new(String::new()),
            failing: AtomicBool::new(false),
            case_insensitive: AtomicBool::new(false),
            windows_lookalikes: AtomicBool::new(false),
            habits: Mutex::new(Habits::default()),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
            cache_control: Mutex::new("public, max-age=60".to_string()),
            holding: tokio::sync::watch::channel(false).0,
            vary: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            servers: Mutex::new(None),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    a = l.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        LenientEnt {
            addr,
            state,
            stop: Some(tx),
        }
    }

    /// Every answer a 503 while `true` (the ENT is down).
    pub fn set_failing(&self, on: bool) {
        self.state.failing.store(on, Ordering::SeqCst);
    }

    /// While `true`, paths are folded to lower case before routing (and in `seen()`).
    /// Tomcat, Windows and PHP path habits (see [`Habits`]).
    pub fn set_habits(&self, h: Habits) {
        *self.state.habits.lock().expect("lock") = h;
    }

    pub fn set_case_insensitive(&self, on: bool) {
        self.state.case_insensitive.store(on, Ordering::SeqCst);
    }

    /// Fullwidth characters and 8.3 short names read as the names they stand for (see
    /// the module's doc).
    pub fn set_windows_lookalikes(&self, on: bool) {
        self.state.windows_lookalikes.store(on, Ordering::SeqCst);
    }

    /// Every later answer waits `d` before it is sent (the ENT is slow for everyone).
    pub fn set_delay(&self, d: std::time::Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// `Some((n, service))`: a capacity model, an ENT of `n` servers each answering one
    /// request at a time in `service`; more requests wait their turn, so the latency
    /// rises with the load past `n` in flight (`n` smaller: a server died). `None`: off.
    pub fn set_servers(&self, model: Option<(usize, std::time::Duration)>) {
        *self.state.servers.lock().expect("lock") = model.map(|(n, d)| {
            (
                Arc::new(tokio::sync::Semaphore::new(n.max(1))),
                d.as_millis() as u64,
            )
        });
    }

    /// While `on`, every answer waits (after it is recorded in `seen()`) until this is
    /// called with `false`.
    pub fn set_holding(&self, on: bool) {
        self.state.holding.send_replace(on);
    }

    /// `Some(name)`: later `/private/` and `/class/` answers carry `Vary: name` and their
    /// bodies end with ` [VALUE]`, the request's value of `name`.
    pub fn set_vary(&self, name: Option<&str>) {
        *self.state.vary.lock().expect("lock") = name.map(str::to_string);
    }

    /// Which validators later `/private/` and `/class/` answers carry.
    pub fn set_validators(&self, v: Validators) {
        *self.state.validators.lock().expect("lock") = v;
    }

    /// Answer 304 to any `If-None-Match` at `/private/`, whatever it names.
    pub fn set_careless_304(&self, on: bool) {
        self.state.careless_304.store(on, Ordering::SeqCst);
    }

    /// Answer 304 (without ETag) to an `If-None-Match` naming any tag served at that
    /// `/private/` URL so far, whoever asks.
    pub fn set_lazy_304(&self, on: bool) {
        self.state.lazy_304.store(on, Ordering::SeqCst);
    }

    /// A suffix of every later `/private/` and `/class/` body (a new edition: a re-upload).
    pub fn set_edition(&self, e: &str) {
        *self.state.edition.lock().expect("lock") = e.to_string();
    }

    /// The `Cache-Control` of later 200 answers (per-pupil ones included).
    pub fn set_cache_control(&self, v: &str) {
        *self.state.cache_control.lock().expect("lock") = v.to_string();
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// How many requests the backend routed to `path` (after its normalization).
    pub fn hits_on(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for LenientEnt {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(
    st: &State,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let raw = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let routed = h("x-original-url")
        .or_else(|| h("x-rewrite-url"))
        .unwrap_or_else(|| req.uri().path().to_string());
    let routed = routed.split('?').next().unwrap_or("").to_string();
    let habits = st.habits.lock().expect("lock").clone();
    let routed = if habits.strip_path_params {
        routed
            .split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
    } else {
        routed
    };
    let mut path = lenient_normalize(&routed);
    if habits.windows_names {
        path = path
            .split('/')
            .map(|seg| match seg.find(':').filter(|_| seg.contains(":$")) {
                Some(i) => &seg[..i],
                None => seg,
            })
            .map(|seg| seg.trim_end_matches(['.', ' ']))
            .collect::<Vec<_>>()
            .join("/");
    }
    if st.windows_lookalikes.load(Ordering::SeqCst) {
        let ascii: String = path
            .chars()
            .map(|c| match c as u32 {
                0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
                _ => c,
            })
            .collect();
        path = lenient_normalize(&ascii)
            .split('/')
            .map(|seg| {
                let base = seg.split('.').next().unwrap_or_default().to_lowercase();
                match base.rsplit_once('~') {
                    Some((prefix, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                        ["visio", "exam", "files", "private"]
                            .into_iter()
                            .find(|d| d.starts_with(prefix))
                            .unwrap_or(seg)
                            .to_string()
                    }
                    _ => seg.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join("/");
    }
    if st.case_insensitive.load(Ordering::SeqCst) {
        path = path.to_lowercase();
    }
    if let Some(fc) = &habits.front_controller {
        while let Some(rest) = path
            .strip_prefix(fc.as_str())
            .filter(|r| r.starts_with('/'))
        {
            path = rest.to_string();
        }
    }
    let cookies: Vec<String> = req
        .headers()
        .get_all("cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let user = lenient_user(&cookies.join("; "));
    let forwarded_host = h("forwarded").and_then(|f| {
        f.split([';', ','])
            .filter_map(|kv| kv.trim().strip_prefix("host="))
            .map(|v| v.trim_matches('"').to_string())
            .next()
    });
    let host = h("x-forwarded-host")
        .or(forwarded_host)
        .or_else(|| h("host"))
        .unwrap_or_default();
    let inm = h("if-none-match");
    let ims = h("if-modified-since");
    let method = req.method().to_string();
    let negotiated = path.starts_with("/private/") || path.starts_with("/class/");
    let vary = st
        .vary
        .lock()
        .expect("lock")
        .clone()
        .filter(|_| negotiated)
        .map(|name| {
            let value = h(&name).unwrap_or_default();
            (name, value)
        });
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (real_ip, port, prefix) = (
        h("x-real-ip"),
        h("x-forwarded-port"),
        h("x-forwarded-prefix"),
    );
    let (body, body_complete) = match req.into_body().collect().await {
        Ok(b) => (b.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    let body_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&body))
    };
    st.seen.lock().expect("lock").push(Seen {
        raw: raw.clone(),
        path: path.clone(),
        user: user.clone(),
        method: method.clone(),
        headers,
        body_len: body.len(),
        body_sha256,
        body_complete,
    });
    let cc = st.cache_control.lock().expect("lock").clone();
    let mut resp = hyper::Response::builder();
    let mut variant = String::new();
    if let Some((name, value)) = &vary {
        variant = format!(" [{value}]");
        resp = resp.header("vary", name.as_str());
    }
    let _ = st.holding.subscribe().wait_for(|held| !*held).await;
    let model = st.servers.lock().expect("lock").clone();
    if let Some((slots, service_ms)) = model {
        let _slot = slots.acquire_owned().await;
        tokio::time::sleep(std::time::Duration::from_millis(service_ms)).await;
    }
    let mut wait = st.delay_ms.load(Ordering::SeqCst);
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|r| r.split('/').next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        wait += ms.min(30_000);
    }
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
    if st.failing.load(Ordering::SeqCst) {
        return resp
            .status(503)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ENT down")))
            .expect("response");
    }
    if path.starts_with("/busy/") {
        return resp
            .status(503)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"too busy for this one")))
            .expect("response");
    }
    if path.starts_with("/fail/") {
        return resp
            .status(500)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"this URL always fails")))
            .expect("response");
    }
    // `/big/<KiB>/...`: a body of that many KiB (at most 4 MiB), the path first.
    if let Some(kib) = path
        .strip_prefix("/big/")
        .and_then(|r| r.split('/').next())
        .and_then(|k| k.parse::<usize>().ok())
    {
        let mut body = format!("{path}\n").into_bytes();
        body.resize((kib.min(4096) * 1024).max(body.len()), b'.');
        return resp
            .status(200)
            .header("content-type", "text/plain")
            .header("cache-control", cc)
            .body(Full::new(Bytes::from(body)))
            .expect("response");
    }
    let validators = *st.validators.lock().expect("lock");
    let edition = format!("{}{variant}", st.edition.lock().expect("lock"));
    if path.starts_with("/class/")
        || (validators != Validators::StrongEtag && path.starts_with("/private/"))
    {
        let text = match &user {
            Some(_) if path.starts_with("/class/") => format!("{path} for the class{edition}"),
            Some(u) => format!("{path} for {u}{edition}"),
            None => "<html><form action=/login>login page</form></html>".to_string(),
        };
        let etag = match validators {
            Validators::StrongEtag => Some(etag_of(&text)),
            Validators::WeakEtag => Some(format!("W/{}", etag_of(&text))),
            Validators::None | Validators::TemplateDate => None,
        };
        let not_modified = match (&etag, validators) {
            (Some(e), _) => inm.as_deref() == Some(e.as_str()),
            (None, Validators::TemplateDate) => ims.as_deref() == Some(TEMPLATE_DATE),
            _ => false,
        };
        let mut b = resp.header("cache-control", cc);
        if let Some(e) = &etag {
            b = b.header("etag", e);
        }
        if validators == Validators::TemplateDate {
            b = b.header("last-modified", TEMPLATE_DATE);
        }
        if not_modified {
            return b
                .status(304)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        return b
            .status(200)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text)))
            .expect("response");
    }
    if path.starts_with("/private/") {
        let text = match &user {
            Some(u) => format!("{path} for {u}{edition}"),
            None => "<html><form action=/login>login page</form></html>".to_string(),
        };
        let etag = etag_of(&text);
        let lazy = st.lazy_304.load(Ordering::SeqCst)
            && inm.as_ref().is_some_and(|t| {
                st.issued
                    .lock()
                    .expect("lock")
                    .get(&path)
                    .is_some_and(|tags| tags.contains(t))
            });
        if lazy {
            return resp
                .status(304)
                .header("cache-control", cc)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        st.issued
            .lock()
            .expect("lock")
            .entry(path.clone())
            .or_default()
            .push(etag.clone());
        let careless = st.careless_304.load(Ordering::SeqCst) && inm.is_some();
        if careless || inm.as_deref() == Some(etag.as_str()) {
            return resp
                .status(304)
                .header("etag", etag)
                .header("cache-control", cc)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        return resp
            .status(200)
            .header("content-type", "text/plain")
            .header("etag", etag)
            .header("cache-control", cc)
            .body(Full::new(Bytes::from(text)))
            .expect("response");
    }
    let v = serde_json::json!({
        "path": path, "raw": raw, "user": user, "host": host, "real_ip": real_ip,
        "port": port, "prefix": prefix, "method": method, "body_len": body.len(),
    });
    resp.status(200)
        .header("content-type", "application/json")
        .header("cache-control", cc)
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("response")
}
