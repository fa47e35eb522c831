//! The validated, ready-to-serve configuration. Built from [`FileConfig`] off the request
//! path; the hot path only sees these types (no strings to parse, no serde types).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use prometheus::{Histogram, IntCounter};

use super::file::{
    BalanceFile, FileConfig, ForceFeatureFile, ForceLevelFile, LimitKeyFile, LimitModeFile,
    OriginFile, PriorityClassFile, RateLimitFile, RouteFile,
};
use super::tree::{SNode, Seg};
use super::units::{parse_duration, parse_size};
use super::Diagnostic;
use crate::clock::parse_rfc3339_ms;
use crate::path;
use crate::policy::cache_rules::{CacheMode, CacheStorage, QueryMode, RouteCache};
use crate::policy::classes::PriorityClass;
use crate::policy::concurrency::Adaptive;
use crate::policy::rate_limit::{KeyedLimiter, Rate};
use crate::policy::route::{HostPattern, Matcher, Routable, Router};
use crate::policy::ticket::Keyring;
use crate::policy::waiting_room::{ClassPolicy, Method, RoomParams};
use crate::upstream::{self, Balance, OriginShared, ServerState};
use crate::waiting_room::{Room, RoomMetrics};

/// Most servers an origin may list (retries track tried servers in a 64-bit mask).
pub const MAX_SERVERS_PER_ORIGIN: usize = 64;

#[derive(Debug)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// First 16 hex digits of the SHA-256 of the file's bytes.
    pub hash: String,
    /// Bumped on every successful (re)load of this process.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub listen: Vec<SocketAddr>,
    /// For each of `listen`: the load balancers whose PROXY protocol header it reads.
    pub listen_proxy_protocol: Vec<Option<Vec<IpNet>>>,
    pub tls: Option<Tls>,
    pub admin: Admin,
    pub server: Server,
    pub access_log: AccessLog,
    pub origins: Vec<Arc<Origin>>,
    pub router: Router<Route>,
    /// Priority classes in file order (the first that matches wins).
    pub classes: Vec<PriorityClass>,
    pub rooms: Vec<Arc<Room>>,
    pub degradation: Option<crate::policy::degrade::Degradation>,
    /// Cache storage settings (applied at start; a reload that changes them is refused
    /// to take effect until restart, and says so).
    pub cache: CacheStorage,
    /// Fleet mode (Redis), when configured.
    pub cluster: Option<crate::config::fleet::ClusterSettings>,
    /// The pages ecluse writes itself (`pages`): templates, branding, time zone.
    pub pages: Arc<crate::pages::Pages>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// Which listeners read a PROXY protocol header before the handshake, and from whom
    /// (one entry per `listen` address).
    pub listen_proxy_protocol: Vec<Option<Vec<IpNet>>>,
    /// Loaded and checked; published for new handshakes by a successful (re)load.
    pub certs: Arc<crate::tls::CertSet>,
    pub http2: bool,
}

pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token for mutating endpoints, read from `token_file`.
    pub token: Option<Secret>,
    /// `insecure_open_admin_network`: a non-loopback listener may run without a token.
    pub insecure_open_network: bool,
}

/// Whether `ip` only ever reaches this machine: `127.0.0.0/8`, `::1`, and their
/// IPv4-mapped form `::ffff:127.x.y.z`. The wildcard addresses (`0.0.0.0`, `[::]`) and
/// the deprecated IPv4-compatible `::127.0.0.1` (a real IPv6 address) are not.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why an admin listener on `listen` may not run with these settings: without a token,
/// mutating endpoints (pause a room, force a level, purge the cache) answer whoever
/// reaches the listener, so they are allowed only on loopback, unless ops opted out.
pub fn admin_exposure(listen: SocketAddr, has_token: bool, insecure_open: bool) -> Option<String> {
    if has_token || insecure_open || is_loopback(listen.ip()) {
        return None;
    }
    Some(format!(
        "the admin listener `{listen}` is not a loopback address and `admin.token_file` is not set: anyone who reaches it could pause the waiting room, force a degradation level or purge the cache. Set `token_file` (a long random token, e.g. `openssl rand -hex 32`), listen on `127.0.0.1`, or, on a management network nobody else reaches, set `insecure_open_admin_network: true`"
    ))
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure_open_network", &self.insecure_open_network)
            .finish()
    }
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.public_ports`: the ports a request's host may name besides the scheme's
    /// default and the listeners' (`policy::host::Ports`).
    pub public_ports: Vec<u16>,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub upgrade_sock: PathBuf,
    /// The upgrade socket is the instance's default one (its directory is ecluse's to
    /// create and check); an explicit one lives where ops put it.
    pub upgrade_sock_default: bool,
    pub upstream_keepalive_pool: usize,
    pub watch_config: bool,
    pub state_dir: PathBuf,
    pub clients: Clients,
    /// Forwarding headers: what is removed, what ecluse writes (`policy::forwarding`).
    pub forwarding: crate::policy::forwarding::Forwarding,
    pub request_bodies: RequestBodies,
    /// How request paths are normalized (`server.paths`).
    pub paths: crate::policy::path::PathPolicy,
    /// `server.paths.front_controllers`, in the form `policy::path::policy_path` compares.
    pub front_controllers: Vec<String>,
}

/// How request bodies are received (`server.request_bodies`), read by `proxy::body`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestBodies {
    /// Default limit of a route's bodies, in bytes; 0 = none.
    pub max_body_size: u64,
    /// Bytes of one body kept in memory before it goes to a temporary file.
    pub memory_buffer: usize,
    /// Where the temporary files are made.
    pub temp_dir: PathBuf,
    /// Bytes all buffered bodies may hold on disk together.
    pub max_disk: u64,
    /// Bytes all buffered bodies may hold in memory together; past it bodies go to disk.
    pub max_memory: u64,
    /// Bytes one client address (IPv6 by /64) may hold in memory and on disk together,
    /// over all its bodies.
    pub max_per_client: u64,
}

impl RequestBodies {
    /// The default `max_per_client`: a quarter of the two budgets, so that one address
    /// never holds more than a quarter of what every upload shares, and never less than
    /// `largest_body` (the largest body a buffering route accepts), so that the default
    /// never makes a route's own limit unreachable.
    pub fn default_per_client(max_memory: u64, max_disk: u64, largest_body: u64) -> u64 {
        (max_memory.saturating_add(max_disk) / 4).max(largest_body)
    }
}

impl Default for RequestBodies {
    fn default() -> RequestBodies {
        RequestBodies {
            max_body_size: 1 << 20,
            memory_buffer: 128 << 10,
            temp_dir: std::env::temp_dir().join("ecluse-bodies"),
            max_disk: 1 << 30,
            max_memory: 64 << 20,
            max_per_client: RequestBodies::default_per_client(64 << 20, 1 << 30, 1 << 20),
        }
    }
}

/// Limits on one client (`server.clients`), read by `proxy::conn_guard` when a connection opens
/// and by `proxy::hygiene` on every request head.
#[derive(Debug, Clone, PartialEq)]
pub struct Clients {
    pub header_timeout: Duration,
    /// Bytes per second; 0 = off.
    pub body_min_rate: u64,
    pub body_grace: Duration,
    pub keepalive_timeout: Duration,
    /// Each write to the client (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// Bytes per second a client must read a response at; 0 = off.
    pub send_min_rate: u64,
    /// 0 = no cap.
    pub max_connections: u32,
    /// 0 = no cap.
    pub max_connections_per_ip: u32,
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for Clients {
    fn default() -> Clients {
        Clients {
            header_timeout: Duration::from_secs(10),
            body_min_rate: 500,
            body_grace: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            send_min_rate: 0,
            max_connections: 20_000,
            max_connections_per_ip: 0,
            max_request_line: 8 << 10,
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

impl Server {
    /// Whether `ip` is one of our own load balancers, whose `X-Forwarded-For` we believe.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub target: AccessLogTarget,
    /// Query parameter names (lowercase) whose values the log hides.
    pub redact_query: Vec<String>,
}

/// Query parameters hidden by default (`access_log.redact_query` replaces the list):
/// credentials that travel in URLs in an ENT's world (CAS `ticket`, OAuth/OIDC `code`
/// and tokens, SAML messages, session ids in URLs, passwords of old forms, signed-URL
/// signatures).
pub const DEFAULT_REDACT: &[&str] = &[
    "ticket",
    "code",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "auth",
    "session",
    "sessionid",
    "jsessionid",
    "phpsessid",
    "sid",
    "samlresponse",
    "samlrequest",
    "signature",
    "sig",
];

#[derive(Debug)]
pub struct HealthCheck {
    pub enabled: bool,
    /// `None`: TCP connect only.
    pub path: Option<String>,
    pub expect_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug)]
pub struct Origin {
    pub name: String,
    pub servers: Vec<Arc<ServerState>>,
    pub shared: Arc<OriginShared>,
    pub max_inflight: Option<u32>,
    /// Wait for a slot allowed to admitted sessions and priority classes.
    pub queue_timeout: Duration,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Each read from a server (nginx `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// Each write to a server (nginx `proxy_send_timeout`).
    pub write_timeout: Duration,
    /// The longest a priority-class upload waits for a slot: the configured
    /// `total_timeout`, or 60 s.
    pub total_timeout: Duration,
    /// The whole exchange, only when ops set `total_timeout` (a route's own overrides it).
    pub total_limit: Option<Duration>,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// The longest life of an upgraded connection, when set.
    pub tunnel_max_lifetime: Option<Duration>,
    pub idle_timeout: Duration,
    pub tls: bool,
    pub sni: String,
    /// TLS to the servers (proxied requests and health checks alike), when `tls` is on.
    pub tls_client: Option<Arc<crate::tls::OriginTls>>,
    pub retries: u32,
    pub health: HealthCheck,
    pub passive_max_failures: u32,
    pub passive_ejection: Duration,
    pub metrics: OriginMetrics,
    pub adaptive: Option<Adaptive>,
}

/// Per-origin metric handles, resolved once at load.
#[derive(Debug)]
pub struct OriginMetrics {
    pub err_connect: IntCounter,
    pub err_timeout: IntCounter,
    pub err_read: IntCounter,
    pub err_status_5xx: IntCounter,
    pub err_other: IntCounter,
    pub retries: IntCounter,
    pub rejected_max_inflight: IntCounter,
    pub rejected_no_server: IntCounter,
}

impl OriginMetrics {
    fn new(origin: &str) -> OriginMetrics {
        let m = crate::metrics::get();
        let e = |k: &str| m.origin_errors.with_label_values(&[origin, k]);
        OriginMetrics {
            err_connect: e("connect"),
            err_timeout: e("timeout"),
            err_read: e("read"),
            err_status_5xx: e("5xx"),
            err_other: e("other"),
            retries: m.origin_retries.with_label_values(&[origin]),
            rejected_max_inflight: m
                .origin_rejected
                .with_label_values(&[origin, "max_inflight"]),
            rejected_no_server: m.origin_rejected.with_label_values(&[origin, "no_server"]),
        }
    }
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub index: usize,
    pub matcher: Matcher,
    pub origin: Arc<Origin>,
    pub metrics: RouteMetrics,
    pub limits: Vec<RouteLimit>,
    /// Send `RateLimit` headers on admitted responses too.
    pub rate_limit_headers: bool,
    pub room: Option<Arc<Room>>,
    pub feature: Option<String>,
    pub cache: Option<RouteCache>,
    /// Largest request body, in bytes; 0 = no limit.
    pub max_body_size: u64,
    /// Read the whole body before taking an origin slot (`request_buffering`).
    pub buffer_body: bool,
    /// The whole exchange (`total_timeout` of the route, else of the origin), when set.
    pub total_limit: Option<Duration>,
}

impl Routable for Route {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// What a limit counts by, resolved.
#[derive(Debug, Clone)]
pub enum LimitKey {
    ClientIp,
    Cookie(String),
    Header(http::HeaderName),
    /// Believed only from trusted proxies.
    User(http::HeaderName),
    Route,
}

/// One rate limit of a route, ready to decide.
pub struct RouteLimit {
    pub name: String,
    pub key: LimitKey,
    pub dry_run: bool,
    pub exempt_cidrs: Vec<IpNet>,
    /// Indices into `Config::classes`.
    pub exempt_classes: Vec<usize>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub limiter: Arc<KeyedLimiter>,
    /// The definition, to keep buckets across reloads only when it is unchanged.
    pub fingerprint: String,
    pub metrics: LimitMetrics,
}

impl std::fmt::Debug for RouteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimit")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// Per-limit metric handles, resolved once at load.
pub struct LimitMetrics {
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub dry_run_limited: IntCounter,
    pub exempt: IntCounter,
    pub keys: prometheus::IntGauge,
    pub evictions: IntCounter,
}

impl LimitMetrics {
    fn new(route: &str, limit: &str) -> LimitMetrics {
        let m = crate::metrics::get();
        let d = |r: &str| m.ratelimit_decisions.with_label_values(&[route, limit, r]);
        LimitMetrics {
            allowed: d("allowed"),
            limited: d("limited"),
            dry_run_limited: d("dry_run_limited"),
            exempt: d("exempt"),
            keys: m.ratelimit_keys.with_label_values(&[route, limit]),
            evictions: m.ratelimit_evictions.with_label_values(&[route, limit]),
        }
    }
}

/// Per-route metric handles, resolved once at load.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Indexed by [`crate::metrics::status_class`].
    pub by_class: [IntCounter; 6],
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let m = crate::metrics::get();
        let c = |i: usize| {
            m.requests
                .with_label_values(&[route, crate::metrics::STATUS_CLASSES[i]])
        };
        RouteMetrics {
            by_class: [c(0), c(1), c(2), c(3), c(4), c(5)],
            duration: m.request_duration.with_label_values(&[route]),
        }
    }
}

/// Collects problems with the path they concern; positions are resolved from the tree.
pub struct Problems<'t> {
    tree: &'t SNode,
    pub list: Vec<Diagnostic>,
    /// Problems that do not stop the load (see [`Problems::missing_secret`]).
    pub warnings: Vec<Diagnostic>,
    /// `ecluse check --skip-secrets`: a secret that is not there is a warning.
    pub skip_secrets: bool,
}

impl<'t> Problems<'t> {
    pub fn new(tree: &'t SNode) -> Self {
        Problems {
            tree,
            list: Vec::new(),
            warnings: Vec::new(),
            skip_secrets: false,
        }
    }
    /// A secret (ticket keys, admin token, TLS key pair) that cannot be read. An error,
    /// except under `ecluse check --skip-secrets`, where a config repository's CI checks a
    /// policy without production secrets: then a warning, and the caller goes on with a
    /// stand-in (returns `true`). A secret that is there but wrong is always an error.
    pub fn missing_secret(&mut self, path: Vec<Seg>, msg: impl Into<String>) -> bool {
        let pos = self.tree.locate(&path);
        let d = Diagnostic::at(pos, format!("{}: {}", show_path(&path), msg.into()));
        if self.skip_secrets {
            self.warnings.push(Diagnostic {
                message: format!("{} (secrets skipped)", d.message),
                ..d
            });
            true
        } else {
            self.list.push(d);
            false
        }
    }
    /// Something that does not stop the load but deserves a look (reported by
    /// `ecluse check` as a warning).
    pub fn warn_at(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate(&path);
        self.warnings.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
    /// A problem with the value at `path`.
    pub fn at(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate(&path);
        self.list.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
    /// A problem with the key at `path` (its name, not its value).
    pub fn at_key(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate_key(&path);
        self.list.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
}

pub fn show_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// An optional duration: absent is `None`; `0s` or a bad value is a problem.
fn opt_duration(
    p: &mut Problems,
    v: &Option<super::file::DurationText>,
    path: Vec<Seg>,
) -> Option<Duration> {
    v.as_ref()?;
    let d = duration_or(p, v, Duration::ZERO, path);
    (!d.is_zero()).then_some(d)
}
/// The admin token used when `check --skip-secrets` finds none: never served (check does
/// not serve), only there so that the checks that depend on a token being set go on.
fn stand_in_token() -> Secret {
    Secret(vec![b'x'; 32])
}

/// The ticket keys used when `check --skip-secrets` finds none (see [`stand_in_token`]).
fn stand_in_keys(path: Vec<Seg>) -> (String, Vec<Seg>, String) {
    (
        format!("check:{}", "0".repeat(64)),
        path,
        "a stand-in (secrets skipped)".to_string(),
    )
}

fn duration_or(
    p: &mut Problems,
    v: &Option<super::file::DurationText>,
    default: Duration,
    path: Vec<Seg>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(&s.0) {
            Ok(d) if d.is_zero() => {
                p.at(path, "must be longer than 0s");
                default
            }
            Ok(d) => d,
            Err(e) => {
                p.at(path, e);
                default
            }
        },
    }
}

/// A listener's `proxy_protocol_from`, when it reads PROXY protocol headers.
fn build_proxy_protocol(
    p: &mut Problems,
    e: &super::file::ListenEntryFile,
    at: Vec<Seg>,
) -> Option<Vec<IpNet>> {
    let under = |rest: Vec<Seg>| [at.clone(), rest].concat();
    let mut from = Vec::new();
    for (j, c) in e.proxy_protocol_from.iter().enumerate() {
        match parse_cidr(c) {
            Some(n) => from.push(n.trunc()),
            None => p.at(
                under(path!["proxy_protocol_from", j]),
                format!("`{c}` is not a CIDR: write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`"),
            ),
        }
    }
    match e.proxy_protocol {
        Some(true) => {
            if e.proxy_protocol_from.is_empty() {
                p.at(
                    under(path!["proxy_protocol"]),
                    "needs `proxy_protocol_from`: the load balancers' addresses (a PROXY header is believed from them only)",
                );
            }
            Some(from)
        }
        _ => {
            if !e.proxy_protocol_from.is_empty() {
                p.at(
                    under(path!["proxy_protocol_from"]),
                    "has no effect without `proxy_protocol: true`",
                );
            }
            None
        }
    }
}

fn parse_listen(p: &mut Problems, s: &str, path: Vec<Seg>) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            // `localhost:9090`: which addresses a name resolves to is up to the resolver
            // (and may change), so a listener only takes an IP literal.
            let host = s.rsplit_once(':').map(|(h, _)| h).unwrap_or(s);
            let named = !host.is_empty()
                && host.parse::<IpAddr>().is_err()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            let hint = if named {
                format!(" (`{host}` is a host name: write its IP, e.g. `127.0.0.1` for this machine only)")
            } else {
                String::new()
            };
            p.at(
                path,
                format!("`{s}` is not a listen address: write `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`{hint}"),
            );
            None
        }
    }
}

/// Everything the builder needs besides the file.
/// State retained across reloads (upstream health and counters, rate-limit buckets, rooms):
/// the builder attaches it to each new config. One registry per process, in `App`.
#[derive(Default)]
pub struct Retained {
    pub upstream: upstream::Registry,
    pub limiters: crate::policy::rate_limit::LimiterRegistry,
    pub rooms: crate::waiting_room::RoomRegistry,
    /// The admin listener actually bound (set once at start). A reload cannot move it
    /// (restart required), so a reload is checked against it too: it may not drop the
    /// token of a listener that stays on a non-loopback address.
    pub admin_bound: std::sync::OnceLock<SocketAddr>,
}

pub struct BuildContext<'a> {
    pub registry: &'a Retained,
    /// Directory relative paths (token files, certificates) are resolved against.
    pub base_dir: PathBuf,
    /// Resolve host names of servers (false in `ecluse check --offline`-like uses).
    pub resolve: bool,
    /// `ecluse check --skip-secrets`: missing secrets are warnings (see
    /// [`Problems::missing_secret`]).
    pub skip_secrets: bool,
    /// Where `build` leaves its warnings (it returns only the config or the errors).
    pub warnings: std::cell::RefCell<Vec<Diagnostic>>,
}

/// Validate `file` and build the runtime config. Every problem found is returned, each
/// located in `tree`; nothing is half-applied.
pub fn build(
    file: &FileConfig,
    tree: &SNode,
    ctx: &BuildContext,
    meta: (PathBuf, String, u64),
) -> Result<Config, Vec<Diagnostic>> {
    let mut p = Problems::new(tree);
    p.skip_secrets = ctx.skip_secrets;

    let mut listen = Vec::new();
    if file.listen.is_empty() {
        p.at(
            path!["listen"],
            "needs at least one address, like `0.0.0.0:8080`",
        );
    }
    let mut listen_proxy_protocol = Vec::new();
    for (i, l) in file.listen.iter().enumerate() {
        let (addr, at) = match l {
            super::file::ListenFile::Address(a) => (a, path!["listen", i]),
            super::file::ListenFile::Full(e) => (&e.address, path!["listen", i, "address"]),
        };
        let pp = match l {
            super::file::ListenFile::Full(e) => build_proxy_protocol(&mut p, e, path!["listen", i]),
            super::file::ListenFile::Address(_) => None,
        };
        if let Some(a) = parse_listen(&mut p, addr, at) {
            listen.push(a);
            listen_proxy_protocol.push(pp);
        }
    }

    let tls = file.tls.as_ref().map(|t| {
        let mut addrs = Vec::new();
        let mut listen_proxy_protocol = Vec::new();
        for (i, l) in t.listen.iter().enumerate() {
            let (addr, at, pp) = match l {
                super::file::ListenFile::Address(a) => (a, path!["tls", "listen", i], None),
                super::file::ListenFile::Full(e) => (
                    &e.address,
                    path!["tls", "listen", i, "address"],
                    build_proxy_protocol(&mut p, e, path!["tls", "listen", i]),
                ),
            };
            if let Some(a) = parse_listen(&mut p, addr, at) {
                addrs.push(a);
                listen_proxy_protocol.push(pp);
            }
        }
        // (cert_file, key_file, name, where in the file)
        let mut pairs: Vec<(String, String, Option<String>, Vec<Seg>)> = Vec::new();
        match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => pairs.push((c.clone(), k.clone(), None, path!["tls"])),
            (None, None) => {}
            (Some(_), None) => {
                p.at(path!["tls", "cert_file"], "needs `key_file`, its private key");
            }
            (None, Some(_)) => {
                p.at(path!["tls", "key_file"], "needs `cert_file`, its certificate");
            }
        }
        for (i, c) in t.certificates.iter().enumerate() {
            pairs.push((
                c.cert_file.clone(),
                c.key_file.clone(),
                c.name.clone(),
                path!["tls", "certificates", i],
            ));
        }
        if pairs.is_empty() && t.cert_file.is_none() && t.key_file.is_none() {
            p.at(
                path!["tls"],
                "needs a certificate: `cert_file` and `key_file`, or `certificates`",
            );
        }
        let mut certs = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (c, k, name, at) in pairs {
            if let Some(n) = &name {
                if n.is_empty() || n.len() > 128 || n.chars().any(|ch| ch.is_control()) {
                    p.at(
                        [at.clone(), path!["name"]].concat(),
                        "must be 1 to 128 printable characters (a metric label)",
                    );
                }
            }
            let cert_file = ctx.base_dir.join(&c);
            let key_file = ctx.base_dir.join(&k);
            match crate::tls::load_server_cert(&cert_file, &key_file, name.as_deref()) {
                Ok(cert) => {
                    if let Some(prev) = names.insert(cert.name.clone(), certs.len()) {
                        p.at(
                            at,
                            format!(
                                "two certificates are named `{}` (the metric label; certificate {} has it too): give one a `name:`",
                                cert.name, prev
                            ),
                        );
                    }
                    certs.push(cert);
                }
                Err(e) => {
                    use crate::tls::TlsError as E;
                    let key = match &e {
                        E::Read { path, .. } | E::NoKey { path }
                            if *path == key_file.display().to_string() =>
                        {
                            "key_file"
                        }
                        E::KeyMismatch { .. } | E::BadKey { .. } => "key_file",
                        _ => "cert_file",
                    };
                    // An unreadable certificate stops its loading before the key is read:
                    // say about the key too, so one run lists every missing file.
                    if key == "cert_file" && matches!(e, E::Read { .. }) {
                        if let Err(ke) = std::fs::File::open(&key_file) {
                            p.missing_secret(
                                [at.clone(), vec![Seg::Key("key_file".into())]].concat(),
                                format!("cannot read `{}`: {ke}", key_file.display()),
                            );
                        }
                    }
                    let at = [at, vec![Seg::Key(key.into())]].concat();
                    if matches!(e, E::Read { .. }) {
                        // The certificate and its key are installed on the server (by the
                        // certificate tooling), not kept with the policy: secrets for `check`.
                        p.missing_secret(at, e.to_string());
                    } else {
                        p.at(at, e.to_string());
                    }
                }
            }
        }
        Tls {
            listen: addrs,
            listen_proxy_protocol,
            certs: Arc::new(crate::tls::CertSet::new(certs)),
            http2: t.http2.unwrap_or(true),
        }
    });

    let admin_file = file.admin.clone().unwrap_or(super::file::AdminFile {
        listen: None,
        token_file: None,
        insecure_open_admin_network: None,
    });
    let admin_listen = match &admin_file.listen {
        Some(s) => parse_listen(&mut p, s, path!["admin", "listen"]),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
    }
    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let token = admin_file.token_file.as_ref().and_then(|f| {
        let full = ctx.base_dir.join(f);
        let problem = match std::fs::read(&full) {
            Ok(bytes) => {
                let t = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if t.is_empty() {
                    format!("`{}` is empty: put a long random token in it (e.g. `openssl rand -hex 32 > {}`)", full.display(), full.display())
                } else if t.iter().any(|b| !(0x21..0x7f).contains(b)) {
                    format!("the token in `{}` holds spaces, line breaks or non-ASCII bytes: a bearer token is one word of visible ASCII (e.g. `openssl rand -hex 32`)", full.display())
                } else if t.len() < 16 {
                    format!("the token in `{}` is shorter than 16 characters: use a long random token", full.display())
                } else {
                    return Some(Secret(t));
                }
            }
            Err(e) => {
                // Under `check --skip-secrets` a missing file is a warning and a stand-in.
                return p
                    .missing_secret(
                        path!["admin", "token_file"],
                        format!("cannot read `{}`: {e}", full.display()),
                    )
                    .then(stand_in_token);
            }
        };
        p.at(path!["admin", "token_file"], problem);
        None
    });
    let insecure_open_network = admin_file.insecure_open_admin_network.unwrap_or(false);
    // A token file that could not be read is reported above; a missing one here.
    if admin_file.token_file.is_none() {
        if let Some(msg) = admin_exposure(admin_listen, false, insecure_open_network) {
            p.at(path!["admin", "listen"], msg);
        } else if let Some(running) = ctx.registry.admin_bound.get() {
            if let Some(msg) = admin_exposure(*running, false, insecure_open_network) {
                p.at(
                    path!["admin"],
                    format!("this process still listens on `{running}` (a new `admin.listen` applies after a restart): {msg}"),
                );
            }
        }
    }

    let sf = file.server.clone().unwrap_or_default();
    let threads = match sf.threads {
        Some(0) => {
            p.at(path!["server", "threads"], "must be at least 1");
            1
        }
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let mut trusted_proxies = Vec::new();
    for (i, c) in sf.trusted_proxies.iter().enumerate() {
        let parsed = c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => p.at(
                path!["server", "trusted_proxies", i],
                format!("`{c}` is not a CIDR: write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`"),
            ),
        }
    }
    let mut public_ports = Vec::new();
    for (i, &port) in sf.public_ports.iter().enumerate() {
        if port == 0 {
            p.at(
                path!["server", "public_ports", i],
                "`0` is no port a client reaches: write the port of your load balancer, like `8443`",
            );
        } else if !public_ports.contains(&port) {
            public_ports.push(port);
        }
    }
    let mut server = Server {
        threads,
        trusted_proxies,
        public_ports,
        grace_period: match &sf.grace_period {
            Some(s) => match parse_duration(&s.0) {
                Ok(d) => d,
                Err(e) => {
                    p.at(path!["server", "grace_period"], e);
                    Duration::from_secs(5)
                }
            },
            None => Duration::from_secs(5),
        },
        shutdown_timeout: duration_or(
            &mut p,
            &sf.shutdown_timeout,
            Duration::from_secs(30),
            path!["server", "shutdown_timeout"],
        ),
        upgrade_sock: match &sf.upgrade_sock {
            Some(s) => ctx.base_dir.join(s),
            None => crate::instance::default_upgrade_sock(&meta.0),
        },
        upgrade_sock_default: sf.upgrade_sock.is_none(),
        upstream_keepalive_pool: sf.upstream_keepalive_pool.unwrap_or(1024) as usize,
        watch_config: sf.watch_config.unwrap_or(true),
        state_dir: sf
            .state_dir
            .as_ref()
            .map(|d| ctx.base_dir.join(d))
            .unwrap_or_else(|| crate::instance::default_state_dir(&meta.0)),
        clients: build_clients(&mut p, sf.clients.as_ref()),
        forwarding: build_forwarding(&mut p, sf.forwarding.as_ref()),
        request_bodies: build_request_bodies(&mut p, sf.request_bodies.as_ref(), ctx),
        paths: build_paths(sf.paths.as_ref()),
        front_controllers: build_front_controllers(&mut p, sf.paths.as_ref()),
    };
    // Rooms restore their snapshot on first use: tell the registry where they are.
    ctx.registry.rooms.set_state_dir(server.state_dir.clone());

    let redact_query = match file
        .access_log
        .as_ref()
        .and_then(|a| a.redact_query.as_ref())
    {
        None => DEFAULT_REDACT.iter().map(|n| n.to_string()).collect(),
        Some(names) => {
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                    p.at(
                        path!["access_log", "redact_query", i],
                        format!("`{n}`: a parameter name is 1 to 64 visible ASCII characters"),
                    );
                }
            }
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        }
    };
    let access_log = match &file.access_log {
        None => AccessLog {
            target: AccessLogTarget::Stdout,
            redact_query,
        },
        Some(a) if a.enabled == Some(false) => AccessLog {
            target: AccessLogTarget::Off,
            redact_query,
        },
        Some(a) => AccessLog {
            target: match a.path.as_deref() {
                None | Some("stdout") | Some("-") => AccessLogTarget::Stdout,
                Some(f) => AccessLogTarget::File(ctx.base_dir.join(f)),
            },
            redact_query,
        },
    };

    let mut origins: Vec<Arc<Origin>> = Vec::new();
    if file.origins.is_empty() {
        p.at(path!["origins"], "needs at least one origin");
    }
    for (name, of) in &file.origins {
        if let Some(o) = build_origin(&mut p, name, of, ctx) {
            origins.push(Arc::new(o));
        }
    }

    let cache = build_cache_storage(&mut p, file, ctx);
    let cluster = build_cluster(&mut p, file, &meta.0, &ctx.base_dir);
    let classes = build_classes(&mut p, &file.priority_classes, &server.paths);
    let pages = build_pages(&mut p, file, ctx);
    let rooms = build_rooms(&mut p, file, &classes, ctx, &pages);
    let router = build_routes(
        &mut p,
        &file.routes,
        &origins,
        file,
        &classes,
        &rooms,
        &cache,
        ctx,
        server.request_bodies.max_body_size,
    );
    per_client_for_routes(
        &mut p,
        &mut server.request_bodies,
        sf.request_bodies.as_ref(),
        router.routes(),
    );
    let degradation = build_degradation(&mut p, file);

    ctx.warnings
        .borrow_mut()
        .extend(std::mem::take(&mut p.warnings));
    if !p.list.is_empty() {
        return Err(p.list);
    }
    let (path, hash, version) = meta;
    Ok(Config {
        path,
        hash,
        version,
        loaded_at: SystemTime::now(),
        listen,
        listen_proxy_protocol,
        tls,
        admin: Admin {
            listen: admin_listen,
            token,
            insecure_open_network,
        },
        server,
        access_log,
        origins,
        router,
        classes,
        rooms,
        degradation,
        cache,
        cluster,
        pages: Arc::new(pages),
    })
}

/// `pages`: time zone, branding, template files. Each template file is read, compiled
/// and rendered with sample values; a problem is reported at the file's key. On any
/// problem the built-in pages stand in (the config is refused anyway).
fn build_pages(p: &mut Problems, file: &FileConfig, ctx: &BuildContext) -> crate::pages::Pages {
    use crate::pages::render::{check_accent, check_url};
    use crate::pages::{time::Zone, Brand, PageKind, Pages};
    let f = file.pages.clone().unwrap_or_default();
    let zone = match f.time_zone.as_deref() {
        None => Zone::default_zone(),
        Some(name) => match Zone::named(name.trim()) {
            Ok(z) => z,
            Err(e) => {
                p.at(path!["pages", "time_zone"], e);
                Zone::default_zone()
            }
        },
    };
    let mut brand = Brand::default();
    if let Some(b) = &f.brand {
        if let Some(n) = &b.name {
            if n.trim().is_empty() || n.chars().count() > 80 {
                p.at(
                    path!["pages", "brand", "name"],
                    "a name of 1 to 80 characters",
                );
            } else {
                brand.name = n.trim().to_string();
            }
        }
        for (key, value, slot) in [
            ("logo_url", &b.logo_url, &mut brand.logo_url),
            ("help_url", &b.help_url, &mut brand.help_url),
        ] {
            if let Some(v) = value {
                match check_url(v.trim()) {
                    Ok(u) => *slot = Some(u),
                    Err(e) => p.at(path!["pages", "brand", key], e),
                }
            }
        }
        for (key, value, dark) in [
            ("accent", &b.accent, false),
            ("accent_dark", &b.accent_dark, true),
        ] {
            if let Some(v) = value {
                match check_accent(v, dark) {
                    Ok(c) if dark => brand.accent_dark = c,
                    Ok(c) => brand.accent = c,
                    Err(e) => p.at(path!["pages", "brand", key], e),
                }
            }
        }
    }
    let mut overrides = Vec::new();
    let mut files = Vec::new();
    for (name, rel) in f
        .templates
        .as_ref()
        .map(|t| t.entries())
        .unwrap_or_default()
    {
        let full = ctx.base_dir.join(rel);
        match (PageKind::from_name(name), std::fs::read_to_string(&full)) {
            (Some(kind), Ok(src)) => {
                overrides.push((kind, src));
                files.push((name, full));
            }
            (_, Err(e)) => p.at(
                path!["pages", "templates", name],
                format!("cannot read `{}`: {e}", full.display()),
            ),
            (None, Ok(_)) => {}
        }
    }
    match Pages::build(&overrides, brand.clone(), zone.clone()) {
        Ok(pages) => pages,
        Err(e) => {
            // Blame the file of the page that failed, or the layout (every page
            // extends it) when the page itself is built in.
            let (key, shown) = match files.iter().find(|(n, _)| *n == e.kind) {
                Some((n, full)) => (*n, full.display().to_string()),
                None => match files.iter().find(|(n, _)| *n == "layout") {
                    Some((n, full)) => (*n, full.display().to_string()),
                    None => (e.kind, String::from("built-in")),
                },
            };
            p.at(
                path!["pages", "templates", key],
                format!("template `{shown}` (page `{}`): {}", e.kind, e.message),
            );
            Pages::build(&[], brand, zone).unwrap_or_else(|_| (*Pages::builtin()).clone())
        }
    }
}

/// The default `node_id`: the host name and a short hash of the policy file's absolute
/// path. Stable across restarts (it is a metric label: a pid would add series at every
/// restart), and two instances on one host with their own policy files differ.
fn default_node_id(policy_path: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && valid_name(&h.replace('.', "_")))
        .unwrap_or_else(|| "node".to_string());
    let abs = std::fs::canonicalize(policy_path).unwrap_or_else(|_| policy_path.to_path_buf());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(abs.as_os_str().as_encoded_bytes());
    format!("{host}-{}", hex::encode(&digest[..3]))
}

fn build_cluster(
    p: &mut Problems,
    file: &FileConfig,
    policy_path: &std::path::Path,
    base_dir: &std::path::Path,
) -> Option<crate::config::fleet::ClusterSettings> {
    use super::file::FailModeFile;
    let c = file.cluster.as_ref()?;
    // A Redis URL the client accepts, TLS included; never the crate's `#insecure` (no
    // certificate check), which it is built without anyway: refused here, clearly.
    let check_url = |p: &mut Problems, url: &str, at: Vec<Seg>, example: &str| {
        if url.contains('#') {
            p.at(
                at,
                format!("`{url}`: no `#…` fragment (`#insecure` would skip the certificate check, which ecluse never does): use `tls_ca_file` for a private authority"),
            );
        } else if let Err(e) = redis::Client::open(url) {
            p.at(
                at,
                format!("`{url}` is not a Redis URL ({e}): write it like `{example}`"),
            );
        }
    };
    if let Some(url) = &c.redis {
        check_url(
            p,
            url,
            path!["cluster", "redis"],
            "redis://10.0.0.9:6379/ (or rediss://… for TLS)",
        );
    }
    match (&c.redis, &c.sentinel) {
        (Some(_), None) => {}
        (None, None) => p.at(
            path!["cluster"],
            "needs `redis` (one Redis or a Cluster node) or `sentinel` (Sentinels and a master name)",
        ),
        (Some(_), Some(_)) => p.at(
            path!["cluster", "sentinel"],
            "give `redis` or `sentinel`, not both: with Sentinel the master's address comes from the Sentinels",
        ),
        (None, Some(_)) => {}
    }
    let sentinel = c.sentinel.as_ref().map(|sf| {
        if sf.addresses.is_empty() {
            p.at(
                path!["cluster", "sentinel", "addresses"],
                "list the Sentinels, like `[\"redis://10.0.0.1:26379/\", \"redis://10.0.0.2:26379/\", \"redis://10.0.0.3:26379/\"]`",
            );
        }
        for (i, a) in sf.addresses.iter().enumerate() {
            check_url(
                p,
                a,
                path!["cluster", "sentinel", "addresses", i],
                "redis://10.0.0.1:26379/",
            );
        }
        let tls = |a: &String| a.starts_with("rediss://");
        if sf.addresses.iter().any(tls) && !sf.addresses.iter().all(tls) {
            p.at(
                path!["cluster", "sentinel", "addresses"],
                "the Sentinels speak TLS or they do not: write every address `rediss://…`, or none",
            );
        }
        if sf.master_name.is_empty()
            || sf.master_name.len() > 128
            || !sf.master_name.bytes().all(|b| b.is_ascii_graphic())
        {
            p.at(
                path!["cluster", "sentinel", "master_name"],
                format!(
                    "`{}`: the name the Sentinels monitor (`sentinel monitor NAME …`), one word",
                    sf.master_name
                ),
            );
        }
        if c.redis_cluster {
            p.at(
                path!["cluster", "redis_cluster"],
                "a Redis Cluster fails over by itself: `redis_cluster` and `sentinel` do not go together",
            );
        }
        let password = sf.password_env.as_ref().and_then(|var| match std::env::var(var) {
            Ok(v) => Some(v),
            Err(_) => {
                let _ = p.missing_secret(
                    path!["cluster", "sentinel", "password_env"],
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        });
        crate::config::fleet::SentinelSettings {
            addresses: sf.addresses.clone(),
            master_name: sf.master_name.clone(),
            username: sf.username.clone(),
            password: password.map(crate::config::fleet::Redacted),
            tls: sf.tls,
            db: sf.db.unwrap_or(0),
        }
    });
    let tls_ca = c.tls_ca_file.as_ref().and_then(|f| {
        let full = base_dir.join(f);
        match std::fs::read(&full) {
            Ok(pem) => {
                let certs: Vec<_> = <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    p.at(
                        path!["cluster", "tls_ca_file"],
                        format!("`{}` holds no PEM certificate", full.display()),
                    );
                    None
                } else {
                    Some(pem)
                }
            }
            Err(e) => {
                p.at(
                    path!["cluster", "tls_ca_file"],
                    format!("cannot read `{}`: {e}", full.display()),
                );
                None
            }
        }
    });
    let prefix = c.key_prefix.clone().unwrap_or_else(|| "ecluse".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
    {
        p.at(
            path!["cluster", "key_prefix"],
            format!("`{prefix}`: use letters, digits, `_`, `-`, `:` and `.` (no braces: ecluse adds the hash tag)"),
        );
    }
    let node_id = c
        .node_id
        .clone()
        .unwrap_or_else(|| default_node_id(policy_path));
    if !valid_name(&node_id.replace('.', "_")) {
        p.at(
            path!["cluster", "node_id"],
            format!(
                "`{node_id}`: use letters, digits, `_`, `-` and `.` (it becomes a metric label)"
            ),
        );
    }
    let sync_interval = duration_or(
        p,
        &c.sync_interval,
        Duration::from_millis(250),
        path!["cluster", "sync_interval"],
    );
    if sync_interval < Duration::from_millis(50) || sync_interval > Duration::from_secs(10) {
        p.at(
            path!["cluster", "sync_interval"],
            "must be between 50ms and 10s",
        );
    }
    Some(crate::config::fleet::ClusterSettings {
        redis_url: c.redis.clone().unwrap_or_default(),
        redis_cluster: c.redis_cluster,
        sentinel,
        tls_ca,
        prefix,
        node_id,
        timeout: duration_or(
            p,
            &c.timeout,
            Duration::from_millis(200),
            path!["cluster", "timeout"],
        ),
        sync_interval,
        fail_mode: match c.fail_mode {
            None | Some(FailModeFile::LocalShare) => crate::config::fleet::FailMode::LocalShare,
            Some(FailModeFile::LocalFull) => crate::config::fleet::FailMode::LocalFull,
        },
        expected_nodes: match c.expected_nodes {
            None => 1,
            Some(n @ 1..=1000) => n,
            Some(_) => {
                p.at(
                    path!["cluster", "expected_nodes"],
                    "must be between 1 and 1000",
                );
                1
            }
        },
    })
}

fn build_forwarding(
    p: &mut Problems,
    f: Option<&super::file::ForwardingFile>,
) -> crate::policy::forwarding::Forwarding {
    use super::file::OddNamesFile;
    use crate::policy::forwarding::{Forwarding, OddNames};
    let Some(f) = f else {
        return Forwarding::default();
    };
    let valid = |n: &str| !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok();
    for (i, n) in f.strip_from_untrusted.iter().enumerate() {
        if !valid(n) {
            p.at(
                path!["server", "forwarding", "strip_from_untrusted", i],
                format!("`{n}` is not a header name"),
            );
        }
    }
    let builtin = Forwarding::default();
    for (i, n) in f.pass_through.iter().enumerate() {
        let c = crate::policy::forwarding::canonical(n);
        if !builtin.always.contains(&c) && !builtin.untrusted.contains(&c) {
            p.at(
                path!["server", "forwarding", "pass_through", i],
                format!("`{n}` is not one of the headers ecluse removes (see docs/policy.md, \"Forwarding headers\"): nothing to pass through"),
            );
        }
    }
    Forwarding::new(
        f.forwarded_header.unwrap_or(false),
        &f.strip_from_untrusted,
        &f.pass_through,
        match f.odd_header_names.unwrap_or_default() {
            OddNamesFile::Drop => OddNames::Drop,
            OddNamesFile::Reject => OddNames::Reject,
            OddNamesFile::Keep => OddNames::Keep,
        },
    )
}
fn build_request_bodies(
    p: &mut Problems,
    f: Option<&super::file::RequestBodiesFile>,
    ctx: &BuildContext,
) -> RequestBodies {
    let d = RequestBodies::default();
    let Some(f) = f else {
        return d;
    };
    let at = |k: &'static str| path!["server", "request_bodies", k];
    let max_body_size = match &f.max_body_size {
        None => d.max_body_size,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("max_body_size"), e);
            d.max_body_size
        }),
    };
    let memory_buffer = size_or(
        p,
        &f.memory_buffer,
        d.memory_buffer as u64,
        at("memory_buffer"),
    );
    let memory_buffer = if memory_buffer > 64 << 20 {
        p.at(
            at("memory_buffer"),
            "must be at most 64MiB: every body being received may hold this much memory",
        );
        d.memory_buffer
    } else {
        memory_buffer as usize
    };
    let max_disk = size_or(p, &f.max_disk, d.max_disk, at("max_disk"));
    let temp_dir = match f.temp_dir.as_deref() {
        None => d.temp_dir,
        Some("") => {
            p.at(
                at("temp_dir"),
                "is empty: remove it to use the system temp directory",
            );
            d.temp_dir
        }
        Some(dir) => ctx.base_dir.join(dir),
    };
    let max_memory = match &f.max_memory {
        None => d.max_memory,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("max_memory"), e);
            d.max_memory
        }),
    };
    // Set below from the routes when absent (`per_client_for_routes`).
    let max_per_client = size_or(p, &f.max_per_client, 0, at("max_per_client"));
    RequestBodies {
        max_body_size,
        memory_buffer,
        temp_dir,
        max_disk,
        max_memory,
        max_per_client,
    }
}

/// Settle `max_per_client` once the routes are known: the default when ops left it out;
/// when they set it, a buffering route whose `max_body_size` is larger is a problem (such
/// an upload could never be received whole).
fn per_client_for_routes(
    p: &mut Problems,
    rb: &mut RequestBodies,
    file: Option<&super::file::RequestBodiesFile>,
    routes: &[Arc<Route>],
) {
    let largest = routes
        .iter()
        .filter(|r| r.buffer_body)
        .map(|r| r.max_body_size)
        .max()
        .unwrap_or(0);
    if file.is_none_or(|f| f.max_per_client.is_none()) {
        rb.max_per_client = RequestBodies::default_per_client(rb.max_memory, rb.max_disk, largest);
        return;
    }
    if rb.max_per_client == 0 {
        return; // already reported by `size_or`
    }
    for r in routes.iter().filter(|r| r.buffer_body) {
        if r.max_body_size > rb.max_per_client {
            p.at(
                path!["server", "request_bodies", "max_per_client"],
                format!(
                    "is {} bytes, smaller than route `{}`'s max_body_size ({} bytes): such an upload could never be received; raise max_per_client or lower the route's limit",
                    rb.max_per_client, r.name, r.max_body_size
                ),
            );
        }
    }
}

/// The path policy of `file` (defaults where absent).
fn paths_of(file: &FileConfig) -> crate::policy::path::PathPolicy {
    build_paths(file.server.as_ref().and_then(|s| s.paths.as_ref()))
}

/// `server.paths` → the normalization policy (every value has a default).
fn build_paths(f: Option<&super::file::PathsFile>) -> crate::policy::path::PathPolicy {
    use super::file::{EscapedSlashesFile as E, PathParamsFile as P};
    use crate::policy::path::{EscapedSlashes, PathParams, PathPolicy};
    let d = PathPolicy::default();
    let Some(f) = f else { return d };
    PathPolicy {
        case_insensitive: f.case_insensitive.unwrap_or(d.case_insensitive),
        merge_slashes: f.merge_slashes.unwrap_or(d.merge_slashes),
        escaped_slashes: match f.escaped_slashes {
            None => d.escaped_slashes,
            Some(E::Reject) => EscapedSlashes::Reject,
            Some(E::Keep) => EscapedSlashes::Keep,
            Some(E::Decode) => EscapedSlashes::Decode,
        },
        path_params: match f.path_params {
            None => d.path_params,
            Some(P::Reject) => PathParams::Reject,
            Some(P::Strip) => PathParams::Strip,
            Some(P::Keep) => PathParams::Keep,
        },
    }
}

/// `server.paths.front_controllers`: canonical paths of a script (`/index.php`), stored
/// in the folded form requests' policy paths are compared in.
fn build_front_controllers(p: &mut Problems, f: Option<&super::file::PathsFile>) -> Vec<String> {
    let Some(f) = f else { return Vec::new() };
    let paths = build_paths(Some(f));
    let mut out = Vec::new();
    for (k, fc) in f.front_controllers.iter().flatten().enumerate() {
        let at = path!["server", "paths", "front_controllers", k];
        if fc == "/" || fc.ends_with('/') {
            p.at(
                at,
                format!("`{fc}` must name a script, like `/index.php` (no trailing `/`)"),
            );
            continue;
        }
        if check_prefix(p, at, fc, &paths) {
            out.push(policy_key_of(fc));
        }
    }
    out
}

/// A prefix `check_prefix` accepted, in the form policy decisions compare
/// (`policy::path::policy_prefix`: case folded, trailing dots and spaces dropped).
fn policy_key_of(prefix: &str) -> String {
    crate::policy::path::policy_prefix(prefix).unwrap_or_else(|_| prefix.to_string())
}

/// A path prefix from the config (route `path_prefix`, `inside_paths`, a class's
/// `path_prefixes`) must be written in the canonical form requests are compared in:
/// otherwise it silently never matches (`/%76isio`) or matches something else (`/a/../b`).
fn check_prefix(
    p: &mut Problems,
    at: Vec<Seg>,
    prefix: &str,
    paths: &crate::policy::path::PathPolicy,
) -> bool {
    if !prefix.starts_with('/') {
        p.at(at, format!("`{prefix}` must start with `/`"));
        return false;
    }
    match crate::policy::path::canonical_prefix(prefix, paths) {
        Ok(c) if c == prefix => match crate::policy::path::policy_prefix(&c) {
            Ok(_) => true,
            Err(e) => {
                p.at(at, format!("`{prefix}` cannot match any request: {e}"));
                false
            }
        },
        Ok(c) => {
            p.at(
                at,
                format!("`{prefix}` is not in canonical form (requests are compared after normalization): write `{c}`"),
            );
            false
        }
        Err(e) => {
            p.at(at, format!("`{prefix}` cannot match any request: {e}"));
            false
        }
    }
}

fn build_clients(p: &mut Problems, f: Option<&super::file::ClientsFile>) -> Clients {
    let d = Clients::default();
    let Some(f) = f else {
        return d;
    };
    let at = |k: &'static str| path!["server", "clients", k];
    let send_min_rate = match &f.send_min_rate {
        None => d.send_min_rate,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("send_min_rate"), e);
            d.send_min_rate
        }),
    };
    if f.send_timeout.is_some() && send_min_rate > 0 {
        // pingora bounds each write by one or the other, never both: the timeout would
        // be silently ignored.
        p.at(
            at("send_min_rate"),
            "set either `send_timeout` or `send_min_rate`: a minimum rate replaces the send timeout",
        );
    }
    let body_min_rate = match &f.body_min_rate {
        None => d.body_min_rate,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("body_min_rate"), e);
            d.body_min_rate
        }),
    };
    let bounded = |p: &mut Problems, v: u64, max: u64, k: &'static str, max_text: &str| -> usize {
        if v > max {
            p.at(
                at(k),
                format!("must be at most {max_text}: pingora answers a bare 400 to larger request heads before ecluse sees them"),
            );
            max as usize
        } else {
            v as usize
        }
    };
    let max_header_bytes = size_or(
        p,
        &f.max_header_bytes,
        d.max_header_bytes as u64,
        at("max_header_bytes"),
    );
    let max_header_bytes = bounded(p, max_header_bytes, 1 << 20, "max_header_bytes", "1MiB");
    let max_headers = match f.max_headers {
        Some(0) => {
            p.at(at("max_headers"), "must be at least 1");
            d.max_headers as u64
        }
        Some(n) => n as u64,
        None => d.max_headers as u64,
    };
    let max_headers = bounded(p, max_headers, 256, "max_headers", "256");
    let max_request_line = size_or(
        p,
        &f.max_request_line,
        d.max_request_line as u64,
        at("max_request_line"),
    );
    let max_request_line = if max_request_line < 64 {
        p.at(at("max_request_line"), "must be at least 64 bytes");
        d.max_request_line
    } else {
        max_request_line as usize
    };
    Clients {
        header_timeout: duration_or(p, &f.header_timeout, d.header_timeout, at("header_timeout")),
        body_min_rate,
        body_grace: duration_or(p, &f.body_grace, d.body_grace, at("body_grace")),
        keepalive_timeout: duration_or(
            p,
            &f.keepalive_timeout,
            d.keepalive_timeout,
            at("keepalive_timeout"),
        ),
        send_timeout: duration_or(p, &f.send_timeout, d.send_timeout, at("send_timeout")),
        send_min_rate,
        max_connections: f.max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: f.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        max_request_line,
        max_header_bytes,
        max_headers,
    }
}

fn size_or(
    p: &mut Problems,
    v: &Option<super::file::SizeText>,
    default: u64,
    path: Vec<Seg>,
) -> u64 {
    match v {
        None => default,
        Some(s) => match parse_size(&s.0) {
            Ok(0) => {
                p.at(path, "must be larger than 0");
                default
            }
            Ok(n) => n,
            Err(e) => {
                p.at(path, e);
                default
            }
        },
    }
}

fn build_cache_storage(p: &mut Problems, file: &FileConfig, ctx: &BuildContext) -> CacheStorage {
    let d = CacheStorage::default();
    let Some(c) = &file.cache else {
        return d;
    };
    let memory_bytes = size_or(p, &c.memory, d.memory_bytes, path!["cache", "memory"]);
    if memory_bytes < 1 << 20 {
        p.at(path!["cache", "memory"], "must be at least 1MiB");
    }
    // Without a disk tier an object must fit in memory (a quarter of it by default, so
    // one file cannot flush everything else).
    let default_max = if c.disk.is_some() {
        d.max_object_bytes
    } else {
        d.max_object_bytes.min(memory_bytes / 4)
    };
    let max_object_bytes = size_or(
        p,
        &c.max_object_size,
        default_max,
        path!["cache", "max_object_size"],
    );
    if c.disk.is_none() && max_object_bytes > memory_bytes {
        p.at(
            path!["cache", "max_object_size"],
            "is larger than the memory tier (`cache.memory`) and there is no disk tier: such an object could never be stored",
        );
    }
    let disk = c.disk.as_ref().map(|disk| {
        let bytes = size_or(
            p,
            &Some(disk.size.clone()),
            0,
            path!["cache", "disk", "size"],
        );
        let floor = (4 * max_object_bytes).max(64 << 20);
        if bytes < floor {
            p.at(
                path!["cache", "disk", "size"],
                format!(
                    "must be at least {} MiB (4 × max_object_size, and 64MiB)",
                    floor >> 20
                ),
            );
        }
        let dir = ctx.base_dir.join(&disk.path);
        // Against the filesystem of this machine: a warning only, since `check` often
        // runs elsewhere (a config repository's CI); `ecluse run` refuses a tier larger
        // than its whole filesystem and warns when free space is short.
        if bytes >= floor {
            if let Ok(fit) = crate::cache::space::fit(&dir, bytes) {
                if let Some(msg) = crate::cache::space::describe(&dir, bytes, &fit) {
                    let msg = match fit {
                        crate::cache::space::Fit::Short { .. } => msg,
                        _ => format!("{msg} (`ecluse run` refuses to start on this machine)"),
                    };
                    p.warn_at(path!["cache", "disk", "size"], msg);
                }
            }
        }
        (dir, bytes)
    });
    CacheStorage {
        memory_bytes,
        disk,
        max_object_bytes,
        lock_timeout: duration_or(
            p,
            &c.lock_timeout,
            d.lock_timeout,
            path!["cache", "lock_timeout"],
        ),
    }
}

fn build_route_cache(
    p: &mut Problems,
    c: &super::file::RouteCacheFile,
    storage: &CacheStorage,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> RouteCache {
    use super::file::{CacheModeFile, CacheQueryFile};
    let opt = |p: &mut Problems, v: &Option<super::file::DurationText>, key: &str| {
        v.as_ref()
            .map(|_| duration_or(p, v, Duration::ZERO, at(path!["cache", key])))
    };
    let ttl = opt(p, &c.ttl, "ttl");
    let max_ttl = opt(p, &c.max_ttl, "max_ttl");
    if let (Some(t), Some(m)) = (ttl, max_ttl) {
        if t > m {
            p.at(
                at(path!["cache", "ttl"]),
                "is longer than `max_ttl`, which caps every freshness",
            );
        }
    }
    let max_object_bytes = size_or(
        p,
        &c.max_object_size,
        storage.max_object_bytes,
        at(path!["cache", "max_object_size"]),
    );
    if max_object_bytes > storage.max_object_bytes {
        p.at(
            at(path!["cache", "max_object_size"]),
            format!(
                "is larger than the storage's `cache.max_object_size` ({} bytes)",
                storage.max_object_bytes
            ),
        );
    }
    let mode = match c.mode {
        None | Some(CacheModeFile::Public) => CacheMode::Public,
        Some(CacheModeFile::Shared) => CacheMode::Shared,
        Some(CacheModeFile::Revalidate) => CacheMode::Revalidate,
    };
    let trust_strong_etags = c.trust_strong_etags.unwrap_or(false);
    if trust_strong_etags && mode != CacheMode::Revalidate {
        p.at(
            at(path!["cache", "trust_strong_etags"]),
            "only applies to `mode: revalidate` (other modes never send a stored copy's \
             validators on behalf of credentials)",
        );
    }
    RouteCache {
        mode,
        ttl,
        max_ttl,
        stale_while_revalidate: opt(p, &c.stale_while_revalidate, "stale_while_revalidate")
            .unwrap_or(Duration::ZERO),
        stale_if_error: opt(p, &c.stale_if_error, "stale_if_error").unwrap_or(Duration::ZERO),
        max_object_bytes,
        query: match c.query {
            None | Some(CacheQueryFile::Sort) => QueryMode::Sort,
            Some(CacheQueryFile::Keep) => QueryMode::Keep,
            Some(CacheQueryFile::Ignore) => QueryMode::Ignore,
        },
        trust_strong_etags,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An origin's SNI and TLS client side. Refuses what cannot work at the first handshake:
/// verification without a name to check (servers given as IP addresses, or servers with
/// different names and no `sni`), half a client certificate, unreadable or unusable files.
fn origin_tls(
    p: &mut Problems,
    of: &OriginFile,
    ctx: &BuildContext,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> (String, Option<Arc<crate::tls::OriginTls>>) {
    use super::file::OriginTlsFile;
    let hosts: Vec<String> = of
        .servers
        .iter()
        .filter_map(|s| {
            s.rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .collect();
    let default_sni = hosts.first().cloned().unwrap_or_default();
    let settings = match &of.tls {
        None | Some(OriginTlsFile::On(false)) => None,
        Some(OriginTlsFile::On(true)) => Some(super::file::OriginTlsSettingsFile {
            sni: None,
            verify: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }),
        Some(OriginTlsFile::Settings(t)) => Some(t.clone()),
    };
    let Some(t) = settings else {
        if of.sni.is_some() {
            p.at(
                at(path!["sni"]),
                "has no effect without `tls: true`: the servers are spoken to in plain HTTP",
            );
        }
        return (of.sni.clone().unwrap_or(default_sni), None);
    };
    if of.sni.is_some() && t.sni.is_some() {
        p.at(at(path!["sni"]), "set either `sni` or `tls.sni`, not both");
    }
    let explicit = t.sni.clone().or_else(|| of.sni.clone());
    let sni_at = if t.sni.is_some() {
        at(path!["tls", "sni"])
    } else if of.sni.is_some() {
        at(path!["sni"])
    } else {
        at(path!["tls"])
    };
    let verify = t.verify.unwrap_or(true);
    let sni = explicit.clone().unwrap_or_else(|| default_sni.clone());
    if verify && explicit.is_none() {
        if default_sni.parse::<std::net::IpAddr>().is_ok() {
            p.at(
                sni_at.clone(),
                format!(
                    "the servers are IP addresses: set `tls.sni` to the name on the ENT's certificate (the name checked and sent), or `tls.verify: false` on a test bench; `{default_sni}` would be checked against the certificate"
                ),
            );
            return (sni, None);
        }
        if hosts.iter().any(|h| *h != default_sni) {
            p.at(
                sni_at.clone(),
                "the servers have different host names: set `tls.sni` to the name on their certificate",
            );
            return (sni, None);
        }
    }
    if sni.is_empty()
        || sni.len() > 253
        || rustls_pki_types::ServerName::try_from(sni.clone()).is_err()
    {
        p.at(sni_at, format!("`{sni}` is not a host name to send as SNI"));
        return (sni, None);
    }
    let file = |f: &Option<String>| f.as_ref().map(|f| ctx.base_dir.join(f));
    let ca_file = file(&t.ca_file);
    let client = match (file(&t.client_cert), file(&t.client_key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            p.at(
                at(path!["tls", "client_cert"]),
                "needs `client_key`, the private key of this certificate",
            );
            return (sni, None);
        }
        (None, Some(_)) => {
            p.at(
                at(path!["tls", "client_key"]),
                "needs `client_cert`, the certificate of this key",
            );
            return (sni, None);
        }
    };
    if ca_file.is_some() && !verify {
        p.at(
            at(path!["tls", "ca_file"]),
            "is unused with `verify: false` (no certificate is checked)",
        );
    }
    match crate::tls::load_origin_tls(
        &sni,
        verify,
        ca_file.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    ) {
        Ok(t) => (sni, Some(Arc::new(t))),
        Err(e) => {
            // Which key the file came from, for FILE:LINE:COL.
            let key = match &e {
                crate::tls::TlsError::KeyMismatch { .. } | crate::tls::TlsError::BadKey { .. } => {
                    "client_key"
                }
                crate::tls::TlsError::Read { path, .. }
                | crate::tls::TlsError::NoCertificate { path }
                | crate::tls::TlsError::BadCertificate { path, .. }
                | crate::tls::TlsError::NoKey { path }
                | crate::tls::TlsError::Expired { path, .. }
                | crate::tls::TlsError::NotYetValid { path, .. } => {
                    if ca_file
                        .as_ref()
                        .is_some_and(|c| c.display().to_string() == *path)
                    {
                        "ca_file"
                    } else if client
                        .as_ref()
                        .is_some_and(|(_, k)| k.display().to_string() == *path)
                    {
                        "client_key"
                    } else {
                        "client_cert"
                    }
                }
                crate::tls::TlsError::Client(_) => "sni",
            };
            let where_ = if matches!(of.tls, Some(OriginTlsFile::Settings(_))) {
                at(path!["tls", key])
            } else {
                at(path!["tls"])
            };
            if matches!(e, crate::tls::TlsError::Read { .. }) && key != "ca_file" {
                // A client key pair is installed on the server, not kept with the policy.
                p.missing_secret(where_, e.to_string());
            } else {
                p.at(where_, e.to_string());
            }
            (sni, None)
        }
    }
}

fn build_origin(
    p: &mut Problems,
    name: &str,
    of: &OriginFile,
    ctx: &BuildContext,
) -> Option<Origin> {
    let base = path!["origins", name];
    let at = |extra: Vec<Seg>| {
        let mut v = base.clone();
        v.extend(extra);
        v
    };
    if !valid_name(name) {
        p.at_key(
            base.clone(),
            "origin names use letters, digits, `_` and `-` (they become metric labels)",
        );
    }
    if of.servers.is_empty() {
        p.at(at(path!["servers"]), "needs at least one `host:port`");
    }
    if of.servers.len() > MAX_SERVERS_PER_ORIGIN {
        p.at(
            at(path!["servers"]),
            format!("at most {MAX_SERVERS_PER_ORIGIN} servers per origin"),
        );
    }
    let shared = ctx.registry.upstream.origin(name);
    let mut servers = Vec::new();
    for (i, s) in of.servers.iter().enumerate() {
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) if ctx.resolve => match s.to_socket_addrs() {
                Ok(mut it) => match it.next() {
                    Some(a) => Some(a),
                    None => {
                        p.at(
                            at(path!["servers", i]),
                            format!("`{s}` resolves to no address"),
                        );
                        None
                    }
                },
                Err(e) => {
                    p.at(
                        at(path!["servers", i]),
                        format!("`{s}` is not `host:port` or does not resolve: {e}"),
                    );
                    None
                }
            },
            Err(_) => {
                if s.rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .is_none()
                {
                    p.at(at(path!["servers", i]), format!("`{s}` is not `host:port`"));
                }
                None
            }
        };
        if let Some(a) = addr {
            if servers.iter().any(|x: &Arc<ServerState>| x.addr == a) {
                p.at(at(path!["servers", i]), format!("`{s}` is listed twice"));
                continue;
            }
            servers.push(ctx.registry.upstream.server(name, s, a));
        }
    }
    if of.max_inflight == Some(0) {
        p.at(at(path!["max_inflight"]), "must be at least 1");
    }
    let hc = of.health_check.clone();
    let health = HealthCheck {
        enabled: !hc.as_ref().and_then(|h| h.disabled).unwrap_or(false),
        path: hc.as_ref().and_then(|h| h.path.clone()),
        expect_status: hc.as_ref().and_then(|h| h.expect_status).unwrap_or(200),
        interval: duration_or(
            p,
            &hc.as_ref().and_then(|h| h.interval.clone()),
            Duration::from_secs(5),
            at(path!["health_check", "interval"]),
        ),
        timeout: duration_or(
            p,
            &hc.as_ref().and_then(|h| h.timeout.clone()),
            Duration::from_secs(2),
            at(path!["health_check", "timeout"]),
        ),
        healthy_threshold: hc
            .as_ref()
            .and_then(|h| h.healthy_threshold)
            .unwrap_or(2)
            .max(1),
        unhealthy_threshold: hc
            .as_ref()
            .and_then(|h| h.unhealthy_threshold)
            .unwrap_or(3)
            .max(1),
    };
    if let Some(path) = &health.path {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            p.at(
                at(path!["health_check", "path"]),
                format!("`{path}` must be an absolute path like `/healthz`"),
            );
        }
    }
    if !(100..=599).contains(&health.expect_status) {
        p.at(
            at(path!["health_check", "expect_status"]),
            "must be an HTTP status between 100 and 599",
        );
    }
    let (sni, tls_client) = origin_tls(p, of, ctx, &at);
    let connect_timeout = duration_or(
        p,
        &of.connect_timeout,
        Duration::from_secs(2),
        at(path!["connect_timeout"]),
    );
    let read_timeout = duration_or(
        p,
        &of.read_timeout,
        Duration::from_secs(30),
        at(path!["read_timeout"]),
    );
    let total_limit = opt_duration(p, &of.total_timeout, at(path!["total_timeout"]));
    let tunnel_idle_timeout = duration_or(
        p,
        &of.tunnel_idle_timeout,
        Duration::from_secs(300),
        at(path!["tunnel_idle_timeout"]),
    );
    Some(Origin {
        name: name.to_string(),
        servers,
        shared,
        max_inflight: of.max_inflight,
        queue_timeout: match &of.queue_timeout {
            None => Duration::from_secs(2),
            Some(t) => parse_duration(&t.0).unwrap_or_else(|e| {
                p.at(at(path!["queue_timeout"]), e);
                Duration::from_secs(2)
            }),
        },
        balance: match of.balance.unwrap_or_default() {
            BalanceFile::RoundRobin => Balance::RoundRobin,
            BalanceFile::LeastConnections => Balance::LeastConnections,
        },
        connect_timeout,
        read_timeout,
        write_timeout: duration_or(
            p,
            &of.write_timeout,
            read_timeout,
            at(path!["write_timeout"]),
        ),
        total_timeout: total_limit.unwrap_or(Duration::from_secs(60)),
        total_limit,
        tunnel_idle_timeout,
        tunnel_max_lifetime: opt_duration(
            p,
            &of.tunnel_max_lifetime,
            at(path!["tunnel_max_lifetime"]),
        ),
        idle_timeout: duration_or(
            p,
            &of.idle_timeout,
            Duration::from_secs(60),
            at(path!["idle_timeout"]),
        ),
        tls: tls_client.is_some(),
        sni,
        tls_client,
        retries: of.retries.unwrap_or(2),
        health,
        passive_max_failures: of
            .passive
            .as_ref()
            .and_then(|x| x.max_failures)
            .unwrap_or(5),
        passive_ejection: duration_or(
            p,
            &of.passive.as_ref().and_then(|x| x.ejection_time.clone()),
            Duration::from_secs(30),
            at(path!["passive", "ejection_time"]),
        ),
        metrics: OriginMetrics::new(name),
        adaptive: match &of.adaptive_concurrency {
            None => None,
            Some(a) => {
                if of.max_inflight.is_none() {
                    p.at(
                        at(path!["adaptive_concurrency"]),
                        "needs `max_inflight`: the hard maximum the adaptive limit stays under",
                    );
                }
                let tolerance = a.tolerance.unwrap_or(2.0);
                if !(tolerance > 1.0 && tolerance < 100.0) {
                    p.at(
                        at(path!["adaptive_concurrency", "tolerance"]),
                        "must be more than 1 (e.g. 2.0)",
                    );
                }
                let target_p50_ms = a.target_p50.as_ref().map(|t| {
                    duration_or(
                        p,
                        &Some(t.clone()),
                        Duration::from_millis(300),
                        at(path!["adaptive_concurrency", "target_p50"]),
                    )
                    .as_secs_f64()
                        * 1000.0
                });
                Some(Adaptive {
                    min: a.min.unwrap_or(4).max(1) as usize,
                    max: of.max_inflight.unwrap_or(1) as usize,
                    tolerance,
                    target_p50_ms,
                })
            }
        },
    })
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
        .map(|n| n.trunc())
}

const CIDR_HINT: &str = "write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`";

fn build_classes(
    p: &mut Problems,
    classes: &[PriorityClassFile],
    paths: &crate::policy::path::PathPolicy,
) -> Vec<PriorityClass> {
    let mut out: Vec<PriorityClass> = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["priority_classes", i];
            v.extend(extra);
            v
        };
        if !valid_name(&c.name) {
            p.at(
                at(path!["name"]),
                format!("`{}`: class names use letters, digits, `_` and `-`", c.name),
            );
        }
        if out.iter().any(|o| o.name == c.name) {
            p.at(
                at(path!["name"]),
                format!("class `{}` is defined twice", c.name),
            );
        }
        let mut cidrs = Vec::new();
        for (k, s) in c.cidrs.iter().enumerate() {
            match parse_cidr(s) {
                Some(n) => cidrs.push(n),
                None => p.at(
                    at(path!["cidrs", k]),
                    format!("`{s}` is not a CIDR: {CIDR_HINT}"),
                ),
            }
        }
        let mut headers = Vec::new();
        for (name, values) in &c.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push((h, values.iter().map(|v| v.to_ascii_lowercase()).collect())),
                Err(_) => p.at_key(
                    at(path!["headers", name.as_str()]),
                    format!("`{name}` is not a header name"),
                ),
            }
        }
        for (k, pp) in c.path_prefixes.iter().enumerate() {
            check_prefix(p, at(path!["path_prefixes", k]), pp, paths);
        }
        if c.cidrs.is_empty()
            && c.headers.is_empty()
            && c.cookies.is_empty()
            && c.path_prefixes.is_empty()
        {
            p.at(at(path!["name"]), format!("class `{}` has no condition (cidrs, headers, cookies or path_prefixes): nobody would belong to it", c.name));
        }
        out.push(PriorityClass {
            name: c.name.clone(),
            cidrs,
            headers,
            cookies: c
                .cookies
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // Compared with the request's policy path (case folded…).
            path_prefixes: c.path_prefixes.iter().map(|pp| policy_key_of(pp)).collect(),
        });
    }
    out
}

/// The `auto` sizing of a room, when `active_users` or `new_users_per_minute` is `auto`;
/// its bounds checked. Refused in fleet mode: each node measures only its own share of
/// the origin's traffic, and the shared room takes one capacity (see
/// `docs/room-sizing.md`).
fn build_room_auto(
    p: &mut Problems,
    file: &FileConfig,
    w: &super::file::WaitingRoomFile,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> Option<crate::waiting_room::RoomAuto> {
    use super::file::CountOrAuto;
    use crate::policy::room_sizing::Bounds;
    let capacity = matches!(w.active_users, CountOrAuto::Auto(_));
    let pace = matches!(w.new_users_per_minute, CountOrAuto::Auto(_));
    if !capacity && !pace {
        if w.auto.is_some() {
            p.at(
                at(path!["auto"]),
                "bounds of `auto` numbers, but neither `active_users` nor `new_users_per_minute` is `auto`",
            );
        }
        return None;
    }
    if file.cluster.is_some() {
        let key = if capacity {
            "active_users"
        } else {
            "new_users_per_minute"
        };
        p.at(
            at(path![key]),
            "`auto` is not available in fleet mode (`cluster`): each node measures only its share of the origin; give fixed numbers",
        );
        return None;
    }
    let a = w.auto.clone().unwrap_or_default();
    let mut bounds =
        |lo: Option<u32>, hi: Option<u32>, lo_key: &'static str, hi_key: &'static str| {
            let min = lo.unwrap_or(crate::waiting_room::AUTO_MIN);
            let max = hi.unwrap_or(crate::waiting_room::AUTO_MAX);
            if min == 0 {
                p.at(at(path!["auto", lo_key]), "must be at least 1");
            }
            if max < min.max(1) {
                p.at(
                    at(path!["auto", hi_key]),
                    format!("must be at least `{lo_key}` ({min})"),
                );
            }
            Bounds {
                min: min.max(1),
                max: max.max(min).max(1),
            }
        };
    let cap = bounds(
        a.min_active_users,
        a.max_active_users,
        "min_active_users",
        "max_active_users",
    );
    let pc = bounds(
        a.min_new_users_per_minute,
        a.max_new_users_per_minute,
        "min_new_users_per_minute",
        "max_new_users_per_minute",
    );
    // Bounds of a number that is fixed say nothing: a mistake worth telling.
    for (auto_on, keys, name) in [
        (
            capacity,
            [&a.min_active_users, &a.max_active_users],
            "active_users",
        ),
        (
            pace,
            [&a.min_new_users_per_minute, &a.max_new_users_per_minute],
            "new_users_per_minute",
        ),
    ] {
        if !auto_on && keys.iter().any(|k| k.is_some()) {
            p.at(
                at(path!["auto"]),
                format!("bounds for `{name}`, which is a fixed number, not `auto`"),
            );
        }
    }
    Some(crate::waiting_room::RoomAuto {
        capacity,
        pace,
        bounds: crate::waiting_room::AutoBounds {
            capacity: cap,
            pace: pc,
        },
    })
}

fn build_rooms(
    p: &mut Problems,
    file: &FileConfig,
    classes: &[PriorityClass],
    ctx: &BuildContext,
    pages: &crate::pages::Pages,
) -> Vec<Arc<Room>> {
    let mut out = Vec::new();
    for (name, w) in &file.waiting_rooms {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["waiting_rooms", name.as_str()];
            v.extend(extra);
            v
        };
        let before = p.list.len();
        if !valid_name(name) {
            p.at_key(at(vec![]), "room names use letters, digits, `_` and `-`");
        }
        use super::file::CountOrAuto;
        if w.active_users == CountOrAuto::Count(0) {
            p.at(at(path!["active_users"]), "must be at least 1 (or `auto`)");
        }
        if w.new_users_per_minute == CountOrAuto::Count(0) {
            p.at(
                at(path!["new_users_per_minute"]),
                "must be at least 1 (or `auto`)",
            );
        }
        let auto = build_room_auto(p, file, w, &at);
        // Keys: from a file or an environment variable, never inline.
        let keys_text = match (&w.secret_file, &w.secret_env) {
            (Some(_), Some(_)) => {
                p.at(
                    at(path!["secret_env"]),
                    "give `secret_file` or `secret_env`, not both",
                );
                None
            }
            (None, None) => {
                p.at(
                    at(vec![]),
                    "needs `secret_file` (or `secret_env`): the keys that sign students' places",
                );
                None
            }
            (Some(f), None) => {
                let full = ctx.base_dir.join(f);
                match std::fs::read_to_string(&full) {
                    Ok(t) => Some((t, path!["secret_file"], full.display().to_string())),
                    Err(e) => p
                        .missing_secret(
                            at(path!["secret_file"]),
                            format!("cannot read `{}`: {e}", full.display()),
                        )
                        .then(|| stand_in_keys(path!["secret_file"])),
                }
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(t) => Some((t, path!["secret_env"], format!("${var}"))),
                Err(_) => p
                    .missing_secret(
                        at(path!["secret_env"]),
                        format!("environment variable `{var}` is not set"),
                    )
                    .then(|| stand_in_keys(path!["secret_env"])),
            },
        };
        let keys = keys_text.and_then(|(text, kpath, from)| match Keyring::parse(&text) {
            Ok(k) => Some(k),
            Err(e) => {
                p.at(at(kpath), format!("keys in {from}: {e}"));
                None
            }
        });
        let d = |p: &mut Problems, v: &Option<super::file::DurationText>, def: u64, key: &str| {
            duration_or(p, v, Duration::from_secs(def), at(path![key]))
        };
        let idle = d(p, &w.session_idle_timeout, 1200, "session_idle_timeout");
        let abandon = d(p, &w.abandon_timeout, 120, "abandon_timeout");
        // `0s` is allowed here: it turns the return grace off (a ticket is lost at
        // `abandon_timeout`, as before the grace existed).
        let return_grace = match &w.return_grace {
            None => Duration::from_secs(900),
            Some(t) => parse_duration(&t.0).unwrap_or_else(|e| {
                p.at(at(path!["return_grace"]), e);
                Duration::from_secs(900)
            }),
        };
        let poll = d(p, &w.poll_interval, 10, "poll_interval");
        if poll * 2 > abandon {
            p.at(
                at(path!["abandon_timeout"]),
                format!("must be at least twice `poll_interval` ({poll:?}), or students lose their place between two polls"),
            );
        }
        let mut room_classes = vec![ClassPolicy::Default];
        let mut class_map = vec![0u8; classes.len()];
        for (cname, c) in &w.classes {
            let cat = at(path!["classes", cname.as_str()]);
            let policy = match (c.bypass, c.share) {
                (Some(true), None) => Some(ClassPolicy::Bypass),
                (None | Some(false), Some(s)) if s > 0.0 && s < 1.0 => Some(ClassPolicy::Share(s)),
                (None | Some(false), Some(s)) => {
                    p.at(
                        cat.clone(),
                        format!("share {s} must be between 0 and 1 (e.g. 0.2)"),
                    );
                    None
                }
                _ => {
                    p.at(cat.clone(), "give either `bypass: true` or `share: 0.2`");
                    None
                }
            };
            match classes.iter().position(|x| &x.name == cname) {
                Some(i) => {
                    if let Some(pol) = policy {
                        room_classes.push(pol);
                        class_map[i] = (room_classes.len() - 1) as u8;
                    }
                }
                None => {
                    let hint = crate::config::schema_check::did_you_mean(
                        cname,
                        classes.iter().map(|x| x.name.as_str()),
                    )
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                    p.at_key(cat, format!("priority class `{cname}` is not defined under `priority_classes`{hint}"));
                }
            }
        }
        let total_share: f64 = room_classes
            .iter()
            .map(|c| {
                if let ClassPolicy::Share(s) = c {
                    *s
                } else {
                    0.0
                }
            })
            .sum();
        if total_share >= 1.0 {
            p.at(
                at(path!["classes"]),
                "the shares add up to 1 or more: the default queue would never move",
            );
        }
        let (opens_at, prequeue) = match &w.event {
            None => (None, Duration::ZERO),
            Some(ev) => {
                // With its time zone (`+01:00` or `Z`): a bare 08:00 is ambiguous.
                let t = match parse_rfc3339_ms(&ev.opens_at) {
                    Ok(ms) => Some(ms),
                    Err(e) => {
                        p.at(at(path!["event", "opens_at"]), e);
                        None
                    }
                };
                let pq = duration_or(
                    p,
                    &ev.prequeue,
                    Duration::from_secs(1800),
                    at(path!["event", "prequeue"]),
                );
                (t, pq)
            }
        };
        let mut inside = Vec::new();
        let paths = paths_of(file);
        for (k, ip) in w.inside_paths.iter().flatten().enumerate() {
            if check_prefix(p, at(path!["inside_paths", k]), ip, &paths) {
                // Compared with the request's policy path (case folded…).
                inside.push(policy_key_of(ip));
            }
        }
        let ticket_rate = match Rate::parse(w.ticket_rate.as_deref().unwrap_or("60/min")) {
            Ok(r) => Some(r),
            Err(e) => {
                p.at(at(path!["ticket_rate"]), e);
                None
            }
        };
        let ticket_burst = std::num::NonZeroU32::new(w.ticket_burst.unwrap_or(120));
        if ticket_burst.is_none() {
            p.at(at(path!["ticket_burst"]), "must be at least 1");
        }
        // The room's pages: its own queue template and name over the config's.
        let queue_source = match &w.template_file {
            None => Some(None),
            Some(f) => {
                let full = ctx.base_dir.join(f);
                match std::fs::read_to_string(&full) {
                    Ok(t) => Some(Some(t)),
                    Err(e) => {
                        p.at(
                            at(path!["template_file"]),
                            format!("cannot read `{}`: {e}", full.display()),
                        );
                        None
                    }
                }
            }
        };
        let template =
            queue_source.and_then(
                |src| match pages.for_room(src.as_deref(), w.brand.as_deref()) {
                    Ok(room_pages) => Some(Arc::new(room_pages)),
                    Err(e) => {
                        let file = w.template_file.as_deref().unwrap_or("");
                        p.at(
                            at(path!["template_file"]),
                            format!(
                                "template `{}`: {}",
                                ctx.base_dir.join(file).display(),
                                e.message
                            ),
                        );
                        None
                    }
                },
            );
        let end_header = match http::HeaderName::from_bytes(
            w.end_session_header
                .as_deref()
                .unwrap_or("x-ecluse-end-session")
                .as_bytes(),
        ) {
            Ok(h) => Some(h),
            Err(_) => {
                p.at(at(path!["end_session_header"]), "is not a header name");
                None
            }
        };
        if p.list.len() > before {
            continue;
        }
        let (Some(keys), Some(ticket_rate), Some(ticket_burst), Some(end_header), Some(template)) =
            (keys, ticket_rate, ticket_burst, end_header, template)
        else {
            continue;
        };
        // An automatic number starts at its lower bound (the sizer moves it from there).
        let fixed_or_min = |n: CountOrAuto, min: u32| match n {
            CountOrAuto::Count(n) => n,
            CountOrAuto::Auto(_) => min,
        };
        let params = RoomParams {
            active_users: fixed_or_min(
                w.active_users,
                auto.as_ref().map_or(1, |a| a.bounds.capacity.min),
            ),
            new_users_per_minute: fixed_or_min(
                w.new_users_per_minute,
                auto.as_ref().map_or(1, |a| a.bounds.pace.min),
            ),
            idle_timeout: idle,
            abandon_timeout: abandon,
            return_grace,
            poll_interval: poll,
            classes: room_classes,
            method: match w.method.unwrap_or_default() {
                super::file::QueueMethodFile::Fifo => Method::Fifo,
                super::file::QueueMethodFile::Random => Method::Random,
            },
            opens_at,
            prequeue,
            fleet: None,
            shuffle_key: keys.derive_u64(&format!("prequeue|{name}|{}", opens_at.unwrap_or(0))),
        };
        let identity = keys.fingerprints(&format!("room-identity|{name}"));
        let shared = ctx.registry.rooms.get(name, &params, &identity);
        let fp = format!("{ticket_rate:?}|{ticket_burst}");
        let ticket_limiter =
            ctx.registry
                .limiters
                .get_or_new(&format!("room:{name}"), "tickets", &fp, || {
                    KeyedLimiter::new(
                        ticket_rate,
                        ticket_burst,
                        100_000,
                        governor::clock::QuantaClock::default(),
                    )
                });
        if let Some(a) = &auto {
            crate::waiting_room::touch_auto_series(name, a);
        }
        out.push(Arc::new(Room {
            name: name.clone(),
            cookie_name: format!("ecluse_{name}"),
            params,
            keys,
            shared,
            inside,
            class_map,
            ticket_limiter,
            ticket_fingerprint: fp,
            pages: template,
            turn_sound: w.turn_sound.unwrap_or(false),
            end_header,
            metrics: RoomMetrics::new(name),
            auto,
        }));
    }
    out
}

fn thresholds(
    p: &mut Problems,
    t: &super::file::ThresholdsFile,
    at: Vec<Seg>,
) -> crate::policy::degrade::Thresholds {
    let ratio = |p: &mut Problems, v: Option<f64>, key: &str| {
        if let Some(x) = v {
            if !(0.0..=10.0).contains(&x) {
                let mut a = at.clone();
                a.push(Seg::from(key));
                p.at(a, format!("{x} is out of range: a ratio between 0 and 1"));
            }
        }
        v
    };
    crate::policy::degrade::Thresholds {
        inflight_ratio: ratio(p, t.inflight_ratio, "inflight_ratio"),
        error_rate: ratio(p, t.error_rate, "error_rate"),
        p95_ms: t.p95_latency.as_ref().map(|d| {
            let mut a = at.clone();
            a.push(Seg::from("p95_latency"));
            duration_or(p, &Some(d.clone()), Duration::from_secs(1), a).as_secs_f64() * 1000.0
        }),
        queue_depth: t.queue_depth.map(|q| q as f64),
    }
}

fn build_degradation(
    p: &mut Problems,
    file: &FileConfig,
) -> Option<crate::policy::degrade::Degradation> {
    let route_features: Vec<&String> = file
        .routes
        .iter()
        .filter_map(|r| r.feature.as_ref())
        .collect();
    for (i, r) in file.routes.iter().enumerate() {
        if let Some(f) = &r.feature {
            if !valid_name(f) {
                p.at(
                    path!["routes", i, "feature"],
                    format!("`{f}`: feature names use letters, digits, `_` and `-`"),
                );
            }
        }
    }
    let d = file.degradation.as_ref()?;
    let mut levels = Vec::new();
    if d.levels.is_empty() {
        p.at(
            path!["degradation", "levels"],
            "needs at least the normal level, e.g. `- { name: normal }`",
        );
    }
    let mut features: Vec<String> = route_features.iter().map(|s| s.to_string()).collect();
    for (i, l) in d.levels.iter().enumerate() {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["degradation", "levels", i];
            v.extend(extra);
            v
        };
        if d.levels[..i].iter().any(|o| o.name == l.name) {
            p.at(
                at(path!["name"]),
                format!("level `{}` is declared twice", l.name),
            );
        }
        for (k, f) in l.disable.iter().enumerate() {
            if !route_features.contains(&f) {
                let hint = crate::config::schema_check::did_you_mean(
                    f,
                    route_features.iter().map(|s| s.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at(path!["disable", k]),
                    format!("feature `{f}` is carried by no route{hint}"),
                );
            }
            if !features.contains(f) {
                features.push(f.clone());
            }
        }
        if i == 0 && l.enter.is_some() {
            p.at(
                at(path!["enter"]),
                "the first level is the normal state: it has no enter thresholds",
            );
        }
        let enter = l
            .enter
            .as_ref()
            .map(|t| thresholds(p, t, at(path!["enter"])))
            .unwrap_or_default();
        let exit = l
            .exit
            .as_ref()
            .map(|t| thresholds(p, t, at(path!["exit"])))
            .unwrap_or(enter);
        if i > 0 && enter.is_empty() {
            // A level without enter thresholds can only be forced: allowed, and said.
            log::debug!(
                "level {} has no enter thresholds: it is reached only when forced",
                l.name
            );
        }
        let factor = |p: &mut Problems, v: Option<f64>, key: &str| match v {
            None => 1.0,
            Some(x) if x > 0.0 && x <= 1.0 => x,
            Some(x) => {
                p.at(
                    at(path![key]),
                    format!("{x} must be more than 0 and at most 1"),
                );
                1.0
            }
        };
        levels.push(crate::policy::degrade::Level {
            name: l.name.clone(),
            disable: l.disable.clone(),
            room_factor: factor(p, l.room_capacity_factor, "room_capacity_factor"),
            rate_factor: factor(p, l.rate_limit_factor, "rate_limit_factor"),
            serve_stale: l.serve_stale.unwrap_or(false),
            hold: l.hold.as_ref().map(|h| {
                duration_or(
                    p,
                    &Some(h.clone()),
                    Duration::from_secs(30),
                    at(path!["hold"]),
                )
            }),
            enter,
            exit,
        });
    }
    let until = |p: &mut Problems, t: &Option<String>, at: Vec<Seg>| -> Option<u64> {
        let t = t.as_ref()?;
        match parse_rfc3339_ms(t) {
            Ok(ms) => Some(ms),
            Err(e) => {
                p.at(at, e);
                None
            }
        }
    };
    let force_level = d.force_level.as_ref().and_then(|f| {
        let (name, at, until_ms) = match f {
            ForceLevelFile::Name(n) => (n, path!["degradation", "force_level"], None),
            ForceLevelFile::Until(t) => (
                &t.level,
                path!["degradation", "force_level", "level"],
                until(p, &t.until, path!["degradation", "force_level", "until"]),
            ),
        };
        match levels.iter().position(|l| &l.name == name) {
            Some(i) => Some((i, until_ms)),
            None => {
                let hint = crate::config::schema_check::did_you_mean(
                    name,
                    levels.iter().map(|l| l.name.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at,
                    format!("level `{name}` is not declared under `levels`{hint}"),
                );
                None
            }
        }
    });
    let mut force_features = Vec::new();
    for (f, ff) in &d.force_features {
        let at = path!["degradation", "force_features", f.as_str()];
        let (on, until_ms) = match ff {
            ForceFeatureFile::On(on) => (*on, None),
            ForceFeatureFile::Until(t) => (
                t.on,
                until(p, &t.until, {
                    let mut a = at.clone();
                    a.push(Seg::from("until"));
                    a
                }),
            ),
        };
        if !features.contains(f) {
            let hint =
                crate::config::schema_check::did_you_mean(f, features.iter().map(|s| s.as_str()))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
            p.at_key(at, format!("feature `{f}` is carried by no route{hint}"));
            continue;
        }
        force_features.push((f.clone(), on, until_ms));
    }
    let mut messages = HashMap::new();
    for (f, m) in &d.features {
        if !features.contains(f) {
            p.at_key(
                path!["degradation", "features", f.as_str()],
                format!("feature `{f}` is carried by no route"),
            );
        }
        messages.insert(
            f.clone(),
            crate::policy::degrade::FeatureMessage {
                name_fr: m.name_fr.clone(),
                name_en: m.name_en.clone(),
                fr: m.message_fr.clone().unwrap_or_else(|| {
                    crate::policy::degrade::default_message(m.name_fr.as_deref(), true)
                }),
                en: m.message_en.clone().unwrap_or_else(|| {
                    crate::policy::degrade::default_message(m.name_en.as_deref(), false)
                }),
                retry_after: duration_or(
                    p,
                    &m.retry_after,
                    Duration::from_secs(300),
                    path!["degradation", "features", f.as_str(), "retry_after"],
                ),
                drain: match &m.drain {
                    None => crate::policy::degrade::DEFAULT_DRAIN,
                    Some(t) if t.0.trim() == "never" => None,
                    Some(t) => match parse_duration(&t.0) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            p.at(
                                path!["degradation", "features", f.as_str(), "drain"],
                                format!("{e}, or `never`"),
                            );
                            crate::policy::degrade::DEFAULT_DRAIN
                        }
                    },
                },
            },
        );
    }
    Some(crate::policy::degrade::Degradation {
        levels,
        hold: duration_or(
            p,
            &d.hold,
            Duration::from_secs(30),
            path!["degradation", "hold"],
        ),
        force_level,
        force_features,
        messages,
        features,
    })
}

fn key_kind_name(k: LimitKeyFile) -> &'static str {
    match k {
        LimitKeyFile::ClientIp => "client_ip",
        LimitKeyFile::Cookie => "cookie",
        LimitKeyFile::Header => "header",
        LimitKeyFile::User => "user",
        LimitKeyFile::Route => "route",
    }
}

#[allow(clippy::too_many_arguments)]
fn build_limit(
    p: &mut Problems,
    route: &str,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
    l: &RateLimitFile,
    classes: &[PriorityClass],
    ctx: &BuildContext,
    taken: &mut Vec<String>,
) -> Option<RouteLimit> {
    let name = l
        .name
        .clone()
        .unwrap_or_else(|| key_kind_name(l.key).to_string());
    if !valid_name(&name) {
        p.at(
            at(path!["name"]),
            format!("`{name}`: limit names use letters, digits, `_` and `-`"),
        );
    }
    if taken.contains(&name) {
        p.at(
            at(path!["name"]),
            format!("two limits of this route are named `{name}`: give them distinct `name`s"),
        );
    }
    taken.push(name.clone());
    let header_name = |p: &mut Problems, default: Option<&str>| -> Option<http::HeaderName> {
        match l.header.as_deref().or(default) {
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    p.at(at(path!["header"]), format!("`{h}` is not a header name"));
                    None
                }
            },
            None => {
                p.at(at(path!["key"]), "`key: header` needs `header: NAME`");
                None
            }
        }
    };
    let key = match l.key {
        LimitKeyFile::ClientIp => LimitKey::ClientIp,
        LimitKeyFile::Route => LimitKey::Route,
        LimitKeyFile::Cookie => match &l.cookie {
            Some(c)
                if !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';') =>
            {
                LimitKey::Cookie(c.clone())
            }
            Some(c) => {
                p.at(at(path!["cookie"]), format!("`{c}` is not a cookie name"));
                LimitKey::ClientIp
            }
            None => {
                p.at(at(path!["key"]), "`key: cookie` needs `cookie: NAME`");
                LimitKey::ClientIp
            }
        },
        LimitKeyFile::Header => header_name(p, None)
            .map(LimitKey::Header)
            .unwrap_or(LimitKey::ClientIp),
        LimitKeyFile::User => header_name(p, Some("x-remote-user"))
            .map(LimitKey::User)
            .unwrap_or(LimitKey::ClientIp),
    };
    if l.cookie.is_some() && l.key != LimitKeyFile::Cookie {
        p.at(
            at(path!["cookie"]),
            "`cookie` only applies to `key: cookie`",
        );
    }
    if l.header.is_some() && !matches!(l.key, LimitKeyFile::Header | LimitKeyFile::User) {
        p.at(
            at(path!["header"]),
            "`header` only applies to `key: header` or `key: user`",
        );
    }
    let rate = match Rate::parse(&l.rate) {
        Ok(r) => Some(r),
        Err(e) => {
            p.at(at(path!["rate"]), e);
            None
        }
    };
    let burst = match l.burst {
        Some(0) => {
            p.at(
                at(path!["burst"]),
                "must be at least 1 (a burst of 0 would refuse everything)",
            );
            None
        }
        Some(b) => std::num::NonZeroU32::new(b),
        None => rate.and_then(|r| std::num::NonZeroU32::new(r.per_second().ceil().max(1.0) as u32)),
    };
    let ipv6_prefix = l.ipv6_prefix.unwrap_or(64);
    if ipv6_prefix > 128 {
        p.at(at(path!["ipv6_prefix"]), "must be between 0 and 128");
    }
    let ipv4_prefix = l.ipv4_prefix.unwrap_or(32);
    if ipv4_prefix > 32 {
        p.at(at(path!["ipv4_prefix"]), "must be between 0 and 32");
    }
    let max_keys = l.max_keys.unwrap_or(100_000) as usize;
    if max_keys < 16 {
        p.at(at(path!["max_keys"]), "must be at least 16");
    }
    let ex = l.exempt.clone().unwrap_or_default();
    let mut exempt_cidrs = Vec::new();
    for (k, s) in ex.cidrs.iter().enumerate() {
        match parse_cidr(s) {
            Some(n) => exempt_cidrs.push(n),
            None => p.at(
                at(path!["exempt", "cidrs", k]),
                format!("`{s}` is not a CIDR: {CIDR_HINT}"),
            ),
        }
    }
    let mut exempt_classes = Vec::new();
    for (k, c) in ex.classes.iter().enumerate() {
        match classes.iter().position(|x| &x.name == c) {
            Some(i) => exempt_classes.push(i),
            None => {
                let hint = crate::config::schema_check::did_you_mean(
                    c,
                    classes.iter().map(|x| x.name.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at(path!["exempt", "classes", k]),
                    format!("priority class `{c}` is not defined under `priority_classes`{hint}"),
                );
            }
        }
    }
    let (rate, burst) = (rate?, burst?);
    let fingerprint = format!(
        "{:?}|{}|{}|{}|{}|{}",
        key, l.rate, burst, ipv4_prefix, ipv6_prefix, max_keys
    );
    let limiter = ctx
        .registry
        .limiters
        .get_or_new(route, &name, &fingerprint, || {
            KeyedLimiter::new(
                rate,
                burst,
                max_keys.max(16),
                governor::clock::QuantaClock::default(),
            )
        });
    Some(RouteLimit {
        metrics: LimitMetrics::new(route, &name),
        name,
        key,
        dry_run: l.mode.unwrap_or_default() == LimitModeFile::DryRun,
        exempt_cidrs,
        exempt_classes,
        ipv4_prefix: ipv4_prefix.min(32),
        ipv6_prefix: ipv6_prefix.min(128),
        limiter,
        fingerprint,
    })
}

#[allow(clippy::too_many_arguments)] // one call site; each input is a distinct part of the file
fn build_routes(
    p: &mut Problems,
    routes: &[RouteFile],
    origins: &[Arc<Origin>],
    file: &FileConfig,
    classes: &[PriorityClass],
    rooms: &[Arc<Room>],
    cache: &CacheStorage,
    ctx: &BuildContext,
    default_body_size: u64,
) -> Router<Route> {
    let mut built: Vec<Route> = Vec::new();
    if routes.is_empty() {
        p.at(path!["routes"], "needs at least one route");
    }
    for (i, r) in routes.iter().enumerate() {
        let base = path!["routes", i];
        let at = |extra: Vec<Seg>| {
            let mut v = base.clone();
            v.extend(extra);
            v
        };
        if !valid_name(&r.name) {
            p.at(
                at(path!["name"]),
                format!("`{}`: route names use letters, digits, `_` and `-` (they become metric labels)", r.name),
            );
        }
        if let Some(j) = routes[..i].iter().position(|o| o.name == r.name) {
            p.at(
                at(path!["name"]),
                format!("route name `{}` is already used by routes[{j}]", r.name),
            );
        }
        let origin = origins.iter().find(|o| o.name == r.origin).cloned();
        if origin.is_none() && !file.origins.contains_key(&r.origin) {
            let hint = crate::config::schema_check::did_you_mean(
                &r.origin,
                file.origins.keys().map(String::as_str),
            )
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
            p.at(
                at(path!["origin"]),
                format!("origin `{}` is not defined under `origins`{hint}", r.origin),
            );
        }

        let m = &r.matcher;
        let mut hosts: Vec<HostPattern> = Vec::new();
        let mut host_list: Vec<(String, Vec<Seg>)> = Vec::new();
        if let Some(h) = &m.host {
            host_list.push((h.clone(), at(path!["match", "host"])));
        }
        if let Some(hs) = &m.hosts {
            if hs.is_empty() {
                p.at(
                    at(path!["match", "hosts"]),
                    "is empty: remove it to match any host",
                );
            }
            for (k, h) in hs.iter().enumerate() {
                host_list.push((h.clone(), at(path!["match", "hosts", k])));
            }
        }
        for (h, hp) in host_list {
            match HostPattern::parse(&h) {
                Ok(pat) => hosts.push(pat),
                Err(e) => p.at(hp, e),
            }
        }
        let prefix = m.path_prefix.clone().unwrap_or_else(|| "/".to_string());
        check_prefix(
            p,
            at(path!["match", "path_prefix"]),
            &prefix,
            &paths_of(file),
        );
        let mut methods = Vec::new();
        if let Some(ms) = &m.methods {
            for (k, name) in ms.iter().enumerate() {
                match http::Method::from_bytes(name.as_bytes()) {
                    Ok(mm) if name.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(mm),
                    _ => p.at(
                        at(path!["match", "methods", k]),
                        format!("`{name}` is not an HTTP method: write it in capitals, like `GET`"),
                    ),
                }
            }
        }
        let matcher = Matcher::new(
            if hosts.is_empty() { None } else { Some(hosts) },
            // Compared with the request's policy path (case folded…): `/Visio/` and
            // `/VISIO/room` meet the same route.
            policy_key_of(&prefix),
            if m.methods.is_some() {
                Some(methods)
            } else {
                None
            },
        );
        // A route that an earlier one always takes first can never match: it is a
        // mistake (usually a `/` catch-all placed too early).
        if let Some(shadow) = built.iter().find(|e| e.matcher.covers(&matcher)) {
            p.at(
                at(path!["match"]),
                format!(
                    "route `{}` can never match: routes[{}] (`{}`) comes first and takes every request it would; move it above",
                    r.name, shadow.index, shadow.name
                ),
            );
        }
        let room = match &r.waiting_room {
            None => None,
            Some(name) => {
                match rooms.iter().find(|x| &x.name == name) {
                    Some(x) => Some(x.clone()),
                    None => {
                        if !file.waiting_rooms.contains_key(name) {
                            let hint = crate::config::schema_check::did_you_mean(
                                name,
                                file.waiting_rooms.keys().map(String::as_str),
                            )
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                            p.at(
                            at(path!["waiting_room"]),
                            format!("waiting room `{name}` is not defined under `waiting_rooms`{hint}"),
                        );
                        }
                        None
                    }
                }
            }
        };
        let mut limits = Vec::new();
        let mut taken = Vec::new();
        for (k, l) in r.rate_limits.iter().enumerate() {
            let lat = |extra: Vec<Seg>| {
                let mut v = at(path!["rate_limits", k]);
                v.extend(extra);
                v
            };
            if let Some(rl) = build_limit(p, &r.name, &lat, l, classes, ctx, &mut taken) {
                limits.push(rl);
            }
        }
        let route_cache = r
            .cache
            .as_ref()
            .map(|c| build_route_cache(p, c, cache, &at));
        let max_body_size = match &r.max_body_size {
            None => default_body_size,
            Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
                p.at(at(path!["max_body_size"]), e);
                default_body_size
            }),
        };
        if let Some(origin) = origin {
            built.push(Route {
                name: r.name.clone(),
                index: i,
                matcher,
                metrics: RouteMetrics::new(&r.name),
                limits,
                rate_limit_headers: r.rate_limit_headers.unwrap_or(false),
                room: room.clone(),
                feature: r.feature.clone(),
                cache: route_cache,
                max_body_size,
                buffer_body: r.request_buffering.unwrap_or(true),
                total_limit: opt_duration(p, &r.total_timeout, at(path!["total_timeout"]))
                    .or(origin.total_limit),
                origin,
            });
        }
    }
    Router::new(built)
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_node_id_is_stable_across_restarts() {
        let p = std::path::Path::new("/etc/ecluse/ecluse.yaml");
        let a = super::default_node_id(p);
        assert_eq!(
            a,
            super::default_node_id(p),
            "same host, same policy: same id"
        );
        assert!(
            !a.ends_with(&format!("-{}", std::process::id())),
            "no pid in {a}"
        );
        assert_ne!(
            a,
            super::default_node_id(std::path::Path::new("/etc/ecluse/other.yaml")),
            "two instances with their own policies on one host differ"
        );
        assert!(
            super::valid_name(&a.replace('.', "_")),
            "{a} is a valid label"
        );
    }
}
