//! The simulated ENT origin: a real HTTP server (HTTP/1.1 with keep-alive, and h2c) that
//! behaves like a school's digital workspace under load.
//!
//! It exists so that `ecluse demo`, the integration tests and the benches can show the
//! proxy protecting something that actually degrades: latency grows with concurrency, and
//! past a hard limit the server answers 503 or hangs like a saturated application server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONNECTION, CONTENT_TYPE, COOKIE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION, RETRY_AFTER, SERVER, SET_COOKIE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::content::{self, FileCatalog};
use super::sessions::{SessionCheck, SessionStore, DEFAULT_MAX_SESSIONS, SESSION_COOKIE};
use super::stats::OriginStats;

/// Largest accepted upload (`POST /files/upload`); bigger bodies get 413.
pub const UPLOAD_LIMIT: usize = 50 * 1024 * 1024;

/// Response header of `/logout` that frees the student's place in ecluse's waiting room
/// (its default `end_session_header`).
pub const END_SESSION_HEADER: &str = "x-ecluse-end-session";

/// Largest accepted login form or control request body.
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Tuning of the simulated server. Start from [`Default`] (or
/// [`OriginOptions::with_capacity`]) and override fields.
#[derive(Debug, Clone)]
pub struct OriginOptions {
    /// Concurrent requests the server handles well. Default 64.
    pub capacity: usize,
    /// Past this many requests in flight the server answers 503 immediately (and every
    /// 4th such request instead hangs for `timeout`, then the connection is closed without
    /// a response, like a saturated server). Default `2 * capacity` (128): when changing
    /// `capacity` with struct-update syntax, set this too, or use `with_capacity`.
    pub hard_limit: usize,
    /// Service time of a request at zero load. Default 5 ms.
    pub base_latency: Duration,
    /// Extra service time per in-flight request above `capacity / 2`, so latency grows
    /// with concurrency. Default 1 ms.
    pub latency_per_inflight: Duration,
    /// How long a hung request waits before its connection is dropped. Default 10 s.
    pub timeout: Duration,
    /// Number of assignment files (`/files/assignments/1.pdf` ..= `{files}.pdf`). Default 20.
    pub files: usize,
    /// CPU time burnt on a blocking thread per `/visio` request. Default 20 ms.
    pub visio_cpu: Duration,
}

impl Default for OriginOptions {
    fn default() -> OriginOptions {
        OriginOptions::with_capacity(64)
    }
}

impl OriginOptions {
    /// Defaults with the given capacity and `hard_limit = 2 * capacity`.
    pub fn with_capacity(capacity: usize) -> OriginOptions {
        OriginOptions {
            capacity,
            hard_limit: capacity.saturating_mul(2),
            base_latency: Duration::from_millis(5),
            latency_per_inflight: Duration::from_millis(1),
            timeout: Duration::from_secs(10),
            files: 20,
            visio_cpu: Duration::from_millis(20),
        }
    }

    /// Simulated service time for a request admitted with `inflight` requests in flight
    /// (itself included): `base_latency + latency_per_inflight * max(0, inflight -
    /// capacity / 2)`, saturating instead of overflowing.
    pub fn service_time(&self, inflight: usize) -> Duration {
        let excess = inflight.saturating_sub(self.capacity / 2);
        let excess = u32::try_from(excess).unwrap_or(u32::MAX);
        self.base_latency
            .saturating_add(self.latency_per_inflight.saturating_mul(excess))
    }
}

/// Fault injected by the origin, switchable at run time ([`DemoOrigin::set_fault`] or
/// `POST /__origin/fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// Any request arriving as the 2nd or later request on the same connection is read
    /// completely (body included; an upload is recorded in the stats as received), then
    /// the connection is closed without a response. The first request on a fresh
    /// connection is served normally. This is what a keep-alive race with a server that
    /// closes idle connections looks like to a proxy: it proves that the proxy retries
    /// idempotent requests on a reused-connection failure and never replays uploads.
    ///
    /// `/__origin/*` control requests are exempt so a bench can always switch it off.
    /// On HTTP/2 the 2nd and later streams are reset instead.
    DropReusedRequests,
}

impl Fault {
    /// Name used by `POST /__origin/fault` and the stats JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::DropReusedRequests => "drop_reused",
        }
    }

    /// Parses the name used by `POST /__origin/fault` (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Option<Fault> {
        match s.trim() {
            "none" => Some(Fault::None),
            "drop_reused" => Some(Fault::DropReusedRequests),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::DropReusedRequests,
            _ => Fault::None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Fault::None => 0,
            Fault::DropReusedRequests => 1,
        }
    }
}

/// Why the origin ended a request without a normal response. Returned to hyper as the
/// service error, which makes it close the connection (HTTP/1) or reset the stream
/// (HTTP/2) without writing anything: exactly the failure being simulated.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Deliberate drop: fault injection or a hung request reaching its timeout.
    #[error("connection dropped on purpose: {0}")]
    Dropped(&'static str),
    /// The client sent more than `limit` bytes.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The client went away or sent a malformed body.
    #[error("reading request body: {0}")]
    Body(#[from] hyper::Error),
}

/// State shared by every connection of one origin.
#[derive(Debug)]
struct OriginState {
    opts: OriginOptions,
    stats: Arc<OriginStats>,
    sessions: SessionStore,
    files: FileCatalog,
    /// Exam slots after the assignment files (see [`DemoOrigin::start_with_exam_slots`]).
    exam_slots: usize,
    fault: AtomicU8,
    /// Number of requests refused over `hard_limit`, to pick every 4th for a hang.
    over_limit: AtomicU64,
    /// Share of its servers still up, in percent (100: all; 50: half died). Each request
    /// then weighs `100 / percent` requests in flight: half the servers, half the
    /// throughput and half the hard limit (see [`DemoOrigin::set_capacity_percent`]).
    capacity_percent: std::sync::atomic::AtomicU32,
    /// `POST /__origin/reset_peak` calls: a replay's arm starts with one.
    resets: AtomicU64,
}

impl OriginState {
    fn fault(&self) -> Fault {
        Fault::from_u8(self.fault.load(Ordering::Acquire))
    }
}

/// A running simulated ENT. Dropping it (or calling [`shutdown`](Self::shutdown)) stops
/// the server, so keep it alive for as long as it should serve.
#[derive(Debug)]
pub struct DemoOrigin {
    addr: SocketAddr,
    shared: Arc<OriginState>,
    shutdown_tx: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DemoOrigin {
    /// Binds `listen` (port 0 picks a free port), spawns the accept loop on the current
    /// tokio runtime and returns once the socket is listening, so requests sent right
    /// after cannot be refused.
    pub async fn start(listen: SocketAddr, opts: OriginOptions) -> std::io::Result<DemoOrigin> {
        DemoOrigin::start_with_exam_slots(listen, opts, 0).await
    }

    /// [`start`](Self::start), plus `exam_slots` slots after the assignment files (ids
    /// `files + 1 ..= files + exam_slots`) that answer 404 until a teacher uploads a
    /// paper into one with `POST /files/upload?assignment=ID` (the surge replay).
    pub async fn start_with_exam_slots(
        listen: SocketAddr,
        opts: OriginOptions,
        exam_slots: usize,
    ) -> std::io::Result<DemoOrigin> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(OriginState {
            stats: Arc::new(OriginStats::new(opts.files + exam_slots)),
            sessions: SessionStore::new(DEFAULT_MAX_SESSIONS),
            files: FileCatalog::with_exam_slots(opts.files, exam_slots, SystemTime::now()),
            exam_slots,
            fault: AtomicU8::new(Fault::None.to_u8()),
            over_limit: AtomicU64::new(0),
            capacity_percent: std::sync::atomic::AtomicU32::new(100),
            resets: AtomicU64::new(0),
            opts,
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
        log::info!("demo ENT origin listening on http://{addr}");
        Ok(DemoOrigin {
            addr,
            shared,
            shutdown_tx,
            task,
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}{path}`, for clients and printed URLs.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The options the origin was started with.
    pub fn options(&self) -> &OriginOptions {
        &self.shared.opts
    }

    /// Live statistics.
    pub fn stats(&self) -> &Arc<OriginStats> {
        &self.shared.stats
    }

    /// Switches the fault mode; applies to requests whose handling starts afterwards.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.store(fault.to_u8(), Ordering::Release);
    }

    /// Share of the ENT's servers up, in percent (1..=100): `50` is half of them dead,
    /// the surge replay's capacity loss (also `POST /__origin/capacity` with the number).
    pub fn set_capacity_percent(&self, percent: u32) {
        let p = percent.clamp(1, 100);
        self.shared.capacity_percent.store(p, Ordering::Release);
    }

    /// How many times the peak in flight was reset (`POST /__origin/reset_peak`): the
    /// surge replay does it once its calibration is over, as the morning starts.
    pub fn peak_resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Acquire)
    }

    /// The current fault mode.
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// A teacher re-uploads assignment `id`: new ETag (`"a{id}-v{version}"`), new bytes
    /// and a later `Last-Modified`. Returns the new version, or None for an id outside
    /// `1..=files`.
    pub fn bump_file_version(&self, id: usize) -> Option<u64> {
        self.shared.files.bump(id, SystemTime::now())
    }

    /// Stops accepting, closes every open connection (requests in progress are cut) and
    /// waits for the server task to finish.
    pub async fn shutdown(self) {
        // The accept loop also stops if the sender is dropped, so a send error (loop
        // already gone) is harmless.
        let _ = self.shutdown_tx.send(());
        if let Err(e) = self.task.await {
            log::warn!("demo origin task ended abnormally: {e}");
        }
    }
}

/// Accepts connections until shutdown is requested (or the [`DemoOrigin`] is dropped),
/// then aborts every connection task.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<OriginState>,
    mut shutdown_rx: oneshot::Receiver<()>,
) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown_rx => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(builder.clone(), stream, shared.clone()));
                }
                Err(e) => {
                    // Typically EMFILE under a surge: back off briefly instead of spinning
                    // on an error that will repeat until some connection closes.
                    log::warn!("demo origin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow with every connection.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Serves one TCP connection. Each request gets its sequence number on the connection
/// (0 for the first) so [`Fault::DropReusedRequests`] can recognise reused connections.
async fn serve_connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    shared: Arc<OriginState>,
) {
    // Small responses must not wait for Nagle; latency here is simulated, not accidental.
    let _ = stream.set_nodelay(true);
    let seq = Arc::new(AtomicU64::new(0));
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let n = seq.fetch_add(1, Ordering::Relaxed);
        async move { handle(shared, req, n).await }
    });
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("demo origin connection closed: {e}");
    }
}

type Resp = Response<Full<Bytes>>;

/// Entry point of every request: fault injection, routing and status accounting.
async fn handle(
    shared: Arc<OriginState>,
    req: Request<Incoming>,
    seq_on_conn: u64,
) -> Result<Resp, OriginError> {
    let path = req.uri().path().to_owned();
    let control = path.starts_with("/__origin/");
    if !control {
        shared.stats.record_request();
    }
    if seq_on_conn > 0 && !control && shared.fault() == Fault::DropReusedRequests {
        let is_upload = req.method() == Method::POST && path == "/files/upload";
        // Read everything first: the point is that the server *did* receive the request
        // (an upload is stored) and only the response is lost.
        if let Ok((sha, len)) = read_body_hashed(req.into_body(), UPLOAD_LIMIT).await {
            if is_upload {
                shared.stats.record_upload(sha, len);
            }
        }
        shared.stats.record_dropped();
        return Err(OriginError::Dropped(
            "request on a reused connection (fault)",
        ));
    }
    let resp = route(&shared, req, &path).await?;
    if !control {
        shared.stats.record_status(resp.status().as_u16());
    }
    Ok(resp)
}

async fn route(
    shared: &OriginState,
    req: Request<Incoming>,
    path: &str,
) -> Result<Resp, OriginError> {
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match path {
        "/healthz" if get => Ok(text(StatusCode::OK, "ok")),
        "/__origin/stats" if get => Ok(stats_json(shared)),
        "/__origin/fault" if post => set_fault(shared, req).await,
        "/__origin/capacity" if post => set_capacity(shared, req).await,
        "/__origin/reset_peak" if post => {
            shared.stats.reset_peak();
            shared.resets.fetch_add(1, Ordering::AcqRel);
            Ok(text(StatusCode::OK, "ok"))
        }
        "/logout" if get || post => modelled(shared, async { Ok(logout()) }).await,
        "/" if get => modelled(shared, async { Ok(page(path, shared)) }).await,
        p if get && p.starts_with("/pages/") => {
            modelled(shared, async { Ok(page(path, shared)) }).await
        }
        "/login" if get => {
            modelled(shared, async {
                Ok(html(StatusCode::OK, content::login_html()))
            })
            .await
        }
        "/login" if post => modelled(shared, login(shared, req)).await,
        p if get && p.starts_with("/files/assignments/") => {
            modelled(shared, async { Ok(file(shared, &req, path)) }).await
        }
        p if get && (p == "/visio" || p.starts_with("/visio/")) => {
            modelled(shared, visio(shared, path)).await
        }
        "/files/upload" if post => modelled(shared, upload(shared, req)).await,
        _ => Ok(html(
            StatusCode::NOT_FOUND,
            content::error_html(404, "Page introuvable."),
        )),
    }
}

/// Runs `work` under the capacity model: counts the request in flight for its whole life,
/// refuses it past `hard_limit` (503, or every 4th refusal a hang then a dropped
/// connection), else waits the simulated service time and then does the work.
async fn modelled<F>(shared: &OriginState, work: F) -> Result<Resp, OriginError>
where
    F: std::future::Future<Output = Result<Resp, OriginError>>,
{
    let opts = &shared.opts;
    // Held until this future completes or is dropped (client disconnect), so the count
    // is right on every exit path.
    let guard = shared.stats.enter();
    // With servers down, each request in flight weighs on fewer of them.
    let percent = shared
        .capacity_percent
        .load(Ordering::Acquire)
        .clamp(1, 100) as usize;
    let inflight = guard.at_entry().saturating_mul(100) / percent;
    if inflight > opts.hard_limit {
        shared.stats.record_rejected();
        let refusal = shared.over_limit.fetch_add(1, Ordering::Relaxed) + 1;
        if refusal % 4 == 0 {
            // A saturated server accepts the connection then never answers; the guard
            // stays held meanwhile, as the socket and worker really are tied up.
            tokio::time::sleep(opts.timeout).await;
            shared.stats.record_dropped();
            drop(guard);
            return Err(OriginError::Dropped(
                "overloaded: request hung until timeout",
            ));
        }
        let mut resp = html(
            StatusCode::SERVICE_UNAVAILABLE,
            content::error_html(503, "Service momentanément indisponible, réessayez."),
        );
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(resp);
    }
    tokio::time::sleep(opts.service_time(inflight)).await;
    let resp = work.await;
    if resp.as_ref().is_ok_and(|r| r.status().as_u16() < 500) {
        shared.stats.record_served_ok();
    }
    drop(guard);
    resp
}

fn page(path: &str, shared: &OriginState) -> Resp {
    html(StatusCode::OK, content::page_html(path, shared.opts.files))
}

/// `POST /login`: any credentials are accepted (this is a load simulator, not an identity
/// provider); issues a session cookie and redirects to the home page.
async fn login(shared: &OriginState, req: Request<Incoming>) -> Result<Resp, OriginError> {
    if let Err(resp) = read_small_body(req.into_body()).await? {
        return Ok(resp);
    }
    let session = shared.sessions.issue();
    shared.stats.record_session();
    let mut resp = html(
        StatusCode::SEE_OTHER,
        content::error_html(303, "Connexion réussie, redirection vers l'accueil."),
    );
    let h = resp.headers_mut();
    h.insert(LOCATION, HeaderValue::from_static("/"));
    if let Ok(v) = HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly")) {
        h.insert(SET_COOKIE, v);
    }
    Ok(resp)
}

/// `GET` or `POST /logout`: the student leaves. Redirects to the login form and tells a
/// waiting room in front (ecluse's `end_session_header`) that the place is free now.
fn logout() -> Resp {
    let mut resp = html(
        StatusCode::SEE_OTHER,
        content::error_html(303, "Vous êtes déconnecté."),
    );
    let h = resp.headers_mut();
    h.insert(LOCATION, HeaderValue::from_static("/login"));
    h.insert(
        http::header::HeaderName::from_static(END_SESSION_HEADER),
        HeaderValue::from_static("1"),
    );
    h.insert(
        SET_COOKIE,
        HeaderValue::from_static("ENTSESSION=; Path=/; Max-Age=0; HttpOnly"),
    );
    resp
}

/// Parses `/files/assignments/{id}.pdf` where `id` is a canonical decimal number.
fn parse_file_id(path: &str) -> Option<usize> {
    let digits = path
        .strip_prefix("/files/assignments/")?
        .strip_suffix(".pdf")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: usize = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// `GET /files/assignments/{id}.pdf`: private to logged-in users, revalidatable.
fn file(shared: &OriginState, req: &Request<Incoming>, path: &str) -> Resp {
    let not_found = || {
        html(
            StatusCode::NOT_FOUND,
            content::error_html(404, "Document introuvable."),
        )
    };
    let Some(id) = parse_file_id(path) else {
        return not_found();
    };
    let cookies = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    match shared.sessions.check(cookies) {
        SessionCheck::Missing => {
            return html(
                StatusCode::UNAUTHORIZED,
                content::error_html(401, "Connexion requise : veuillez vous identifier."),
            )
        }
        SessionCheck::Unknown => {
            return html(
                StatusCode::FORBIDDEN,
                content::error_html(403, "Session inconnue ou expirée."),
            )
        }
        SessionCheck::Valid => {}
    }
    let Some(meta) = shared.files.get(id, false) else {
        return not_found();
    };
    if not_modified(req.headers(), &meta.etag(), meta.last_modified) {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        file_validators(resp.headers_mut(), &meta);
        return resp;
    }
    // Fetch again with the body: if the file was bumped in between, body and validators
    // still come from the same version.
    let Some(snap) = shared.files.get(id, true) else {
        return not_found();
    };
    if req.method() == Method::GET {
        shared.stats.record_file_fetch(id, snap.version);
    }
    let mut resp = Response::new(Full::new(snap.body.clone().unwrap_or_default()));
    file_validators(resp.headers_mut(), &snap);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/pdf"));
    with_server(resp)
}

fn file_validators(h: &mut HeaderMap, snap: &content::FileSnapshot) {
    if let Ok(v) = HeaderValue::from_str(&snap.etag()) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(snap.last_modified)) {
        h.insert(LAST_MODIFIED, v);
    }
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    h.insert(SERVER, HeaderValue::from_static("ent-demo"));
}

/// RFC 9110 §13.1.2-13.1.3: `If-None-Match` (weak comparison, `*` matches) takes
/// precedence; `If-Modified-Since` is only looked at when it is absent. An unparseable
/// date is ignored, as the RFC requires.
fn not_modified(h: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    let mut inm = h.get_all(IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let opaque = etag.trim_start_matches("W/");
        return inm
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == opaque);
    }
    h.get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| last_modified <= since)
}

/// `GET /visio`: the heavy feature. Burns `visio_cpu` on a blocking thread so it competes
/// for real CPU with everything else, like video-conference signalling on a shared box.
async fn visio(shared: &OriginState, path: &str) -> Result<Resp, OriginError> {
    let cpu = shared.opts.visio_cpu;
    if !cpu.is_zero() {
        if let Err(e) = tokio::task::spawn_blocking(move || burn_cpu(cpu)).await {
            log::warn!("visio CPU task failed: {e}");
        }
    }
    Ok(html(StatusCode::OK, content::visio_html(path)))
}

/// Spins for `d` of wall-clock time doing throwaway arithmetic.
fn burn_cpu(d: Duration) {
    let start = Instant::now();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    while start.elapsed() < d {
        for _ in 0..1_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

/// `POST /files/upload`: reads the body (413 past [`UPLOAD_LIMIT`]), records its SHA-256
/// and answers `201 {"sha256": "...", "len": N}`.
async fn upload(shared: &OriginState, req: Request<Incoming>) -> Result<Resp, OriginError> {
    if declared_len(req.headers()).is_some_and(|n| n > UPLOAD_LIMIT as u64) {
        return Ok(too_large(UPLOAD_LIMIT));
    }
    let publish_to = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("assignment="))
            .map(str::to_owned)
    });
    if let Some(id) = publish_to {
        // An exam paper: keep the bytes, they become the file's new version.
        let Some(id) = id
            .parse::<usize>()
            .ok()
            .filter(|&i| i >= 1 && i <= shared.files.len())
        else {
            return Ok(html(
                StatusCode::NOT_FOUND,
                content::error_html(404, "Devoir introuvable."),
            ));
        };
        let body = match http_body_util::Limited::new(req.into_body(), UPLOAD_LIMIT)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return match e.downcast::<hyper::Error>() {
                    Ok(hyper_err) => Err(OriginError::Body(*hyper_err)),
                    Err(_) => Ok(too_large(UPLOAD_LIMIT)),
                }
            }
        };
        let sha = hex::encode(Sha256::digest(&body));
        let len = body.len();
        shared.stats.record_upload(sha.clone(), len);
        let version = shared.files.publish(id, body, SystemTime::now());
        let body =
            serde_json::json!({ "sha256": sha, "len": len, "assignment": id, "version": version })
                .to_string();
        return Ok(json(StatusCode::CREATED, body));
    }
    match read_body_hashed(req.into_body(), UPLOAD_LIMIT).await {
        Ok((sha, len)) => {
            shared.stats.record_upload(sha.clone(), len);
            let body = serde_json::json!({ "sha256": sha, "len": len }).to_string();
            Ok(json(StatusCode::CREATED, body))
        }
        Err(OriginError::BodyTooLarge { limit }) => Ok(too_large(limit)),
        Err(e) => Err(e),
    }
}

fn declared_len(h: &HeaderMap) -> Option<u64> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: usize) -> Resp {
    let mut resp = html(
        StatusCode::PAYLOAD_TOO_LARGE,
        content::error_html(
            413,
            &format!("Fichier trop volumineux (maximum {limit} octets)."),
        ),
    );
    // The rest of the body is not read; the connection cannot be reused.
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Streams a body into SHA-256 without keeping it, failing past `limit` bytes.
async fn read_body_hashed(
    mut body: Incoming,
    limit: usize,
) -> Result<(String, usize), OriginError> {
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len = len.saturating_add(data.len());
            if len > limit {
                return Err(OriginError::BodyTooLarge { limit });
            }
            hasher.update(&data);
        }
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// Reads a small body (login form, control command). `Ok(Err(resp))` is a 413 to send.
async fn read_small_body(body: Incoming) -> Result<Result<Bytes, Resp>, OriginError> {
    match http_body_util::Limited::new(body, SMALL_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => Ok(Ok(collected.to_bytes())),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(hyper_err) => Err(OriginError::Body(*hyper_err)),
            // The only other error `Limited` produces is "length limit exceeded".
            Err(_) => Ok(Err(too_large(SMALL_BODY_LIMIT))),
        },
    }
}

/// `POST /__origin/fault` with body `none` or `drop_reused`.
async fn set_fault(shared: &OriginState, req: Request<Incoming>) -> Result<Resp, OriginError> {
    let body = match read_small_body(req.into_body()).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    match std::str::from_utf8(&body).ok().and_then(Fault::parse) {
        Some(fault) => {
            shared.fault.store(fault.to_u8(), Ordering::Release);
            log::info!("demo origin fault mode set to {}", fault.as_str());
            Ok(text(StatusCode::OK, fault.as_str()))
        }
        None => Ok(text(
            StatusCode::BAD_REQUEST,
            "expected body `none` or `drop_reused`",
        )),
    }
}

/// `POST /__origin/capacity` with body `1`..=`100`: the share of the servers up.
async fn set_capacity(shared: &OriginState, req: Request<Incoming>) -> Result<Resp, OriginError> {
    let body = match read_small_body(req.into_body()).await? {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    match std::str::from_utf8(&body)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| (1..=100).contains(p))
    {
        Some(p) => {
            shared.capacity_percent.store(p, Ordering::Release);
            log::info!("demo origin capacity set to {p}% of its servers");
            Ok(text(StatusCode::OK, "ok"))
        }
        None => Ok(text(
            StatusCode::BAD_REQUEST,
            "expected a percentage of the servers up, 1 to 100",
        )),
    }
}

/// `GET /__origin/stats`: [`OriginStats::to_json`] plus the fault mode and options, for
/// out-of-process benches.
fn stats_json(shared: &OriginState) -> Resp {
    let mut v = shared.stats.to_json();
    if let Some(obj) = v.as_object_mut() {
        let o = &shared.opts;
        obj.insert("fault".into(), shared.fault().as_str().into());
        obj.insert("sessions_live".into(), shared.sessions.len().into());
        obj.insert(
            "capacity_percent".into(),
            shared.capacity_percent.load(Ordering::Acquire).into(),
        );
        obj.insert(
            "options".into(),
            serde_json::json!({
                "capacity": o.capacity,
                "hard_limit": o.hard_limit,
                "base_latency_ms": o.base_latency.as_secs_f64() * 1e3,
                "latency_per_inflight_ms": o.latency_per_inflight.as_secs_f64() * 1e3,
                "timeout_ms": o.timeout.as_secs_f64() * 1e3,
                "files": o.files,
                "exam_slots": shared.exam_slots,
                "visio_cpu_ms": o.visio_cpu.as_secs_f64() * 1e3,
            }),
        );
    }
    json(StatusCode::OK, v.to_string())
}

fn with_server(mut resp: Resp) -> Resp {
    resp.headers_mut()
        .insert(SERVER, HeaderValue::from_static("ent-demo"));
    resp
}

fn typed(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    with_server(resp)
}

fn html(status: StatusCode, body: String) -> Resp {
    typed(status, "text/html; charset=utf-8", body)
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    typed(status, "text/plain; charset=utf-8", body)
}

fn json(status: StatusCode, body: String) -> Resp {
    typed(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_grows_above_half_capacity_and_saturates() {
        let o = OriginOptions::with_capacity(10);
        assert_eq!(o.hard_limit, 20);
        assert_eq!(o.service_time(1), Duration::from_millis(5));
        assert_eq!(o.service_time(5), Duration::from_millis(5));
        assert_eq!(o.service_time(8), Duration::from_millis(8));
        // Must not panic on absurd values.
        let _ = o.service_time(usize::MAX);
    }

    #[test]
    fn file_ids_are_canonical() {
        assert_eq!(parse_file_id("/files/assignments/1.pdf"), Some(1));
        assert_eq!(parse_file_id("/files/assignments/20.pdf"), Some(20));
        assert_eq!(parse_file_id("/files/assignments/01.pdf"), None);
        assert_eq!(parse_file_id("/files/assignments/+1.pdf"), None);
        assert_eq!(parse_file_id("/files/assignments/.pdf"), None);
        assert_eq!(parse_file_id("/files/assignments/1.pdfx"), None);
        assert_eq!(
            parse_file_id("/files/assignments/99999999999999999999999.pdf"),
            None
        );
    }

    #[test]
    fn conditional_headers() {
        let lm = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"a1-v1\"", lm));
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a1-v1\""),
        );
        assert!(not_modified(&h, "\"a1-v1\"", lm));
        assert!(!not_modified(&h, "\"a1-v2\"", lm));
        // If-None-Match wins over a matching If-Modified-Since.
        h.insert(
            IF_MODIFIED_SINCE,
            HeaderValue::from_str(&httpdate::fmt_http_date(lm)).expect("valid date"),
        );
        assert!(!not_modified(&h, "\"a1-v2\"", lm));
        h.remove(IF_NONE_MATCH);
        assert!(not_modified(&h, "\"a1-v2\"", lm));
        assert!(!not_modified(&h, "\"a1-v2\"", lm + Duration::from_secs(1)));
        h.insert(IF_MODIFIED_SINCE, HeaderValue::from_static("not a date"));
        assert!(!not_modified(&h, "\"a1-v2\"", lm));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"a1-v9\"", lm));
    }

    #[test]
    fn fault_names_round_trip() {
        for f in [Fault::None, Fault::DropReusedRequests] {
            assert_eq!(Fault::parse(f.as_str()), Some(f));
            assert_eq!(Fault::from_u8(f.to_u8()), f);
        }
        assert_eq!(
            Fault::parse(" drop_reused\n"),
            Some(Fault::DropReusedRequests)
        );
        assert_eq!(Fault::parse("boom"), None);
    }
}
