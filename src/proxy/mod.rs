//! The one `ProxyHttp` implementation. It arranges the phases and calls the policies; the
//! decisions themselves live in `policy/*` and `upstream/*`.
//!
//! Request path, in order:
//! 0. Hygiene (`hygiene.rs`), then the one canonical path (`policy::path`): the URI is
//!    replaced by its canonical form, so every phase below reads it and the ENT receives
//!    it; a target without one is a 400.
//! 1. Match the route: one `ArcSwap` load per request, kept in the context (`Ctx::config`)
//!    so every phase of this request sees the same config, even across a reload.
//! 2. Rate limit (cheapest rejection first) — issue #3.
//! 3. Degradation gate: a switched-off feature answers 503 now — issue #5.
//! 4. Waiting room: queue requests without a valid admission — issue #4.
//! 5. Cache lookup — issue #6.
//! 6. Origin concurrency limit (`max_inflight`, a permit held until the response ends),
//!    then pick a server in rotation (round robin or least connections).
//! 7. `logging`: metrics, one JSON access-log line, release every slot (Drop guards).
//!
//! Retry safety: a failure to *connect* is retried on another server for any method
//! (nothing was sent). A failure on a *reused* pooled connection is retried only for
//! idempotent methods without a request body: a request whose body may have reached the
//! origin is never replayed (an upload arrives once or fails visibly).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::proxy::FailToProxy;
use pingora_cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_error::{ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::access_log::Entry;
use crate::app::App;
use crate::clock::{now_ms, rfc3339, unix_ms};
use crate::config::runtime::{LimitKey, Origin, Route, RouteLimit};
use crate::config::Config;
use crate::pages::queue;
use crate::pages::{self, Problem};
use crate::policy::cache_rules::CacheMode;
use crate::policy::classes::{classify, cookie, cookie_in, visible_ascii, RequestFacts};
use crate::policy::rate_limit::{aggregate_ip, Verdict};
use crate::policy::route::host_without_port;
use crate::policy::ticket::{Ticket, TicketError, TicketState};
use crate::policy::waiting_room::{Arrival, Standing};
use crate::upstream::{self, InflightGuard, OriginPermit};
use crate::waiting_room::Room;

mod body;
mod cache_phase;
pub mod conn_guard;
mod hygiene;
mod proxy_protocol;
mod request_id;
use crate::policy::forwarding;

/// Replace the request-target of `req` by its canonical form (`policy::path`). Leaves
/// `req` untouched when the target is canonical already (the common case) or `*`.
fn canonicalize(
    req: &mut RequestHeader,
    policy: &crate::policy::path::PathPolicy,
) -> std::result::Result<(), crate::policy::path::PathError> {
    use crate::policy::path::{canonical_target, PathError, Target};
    let target = canonical_target(req.raw_path(), policy)?;
    let Target::Path {
        path_and_query,
        authority,
    } = target
    else {
        // `*` only means something to OPTIONS; it matches no route prefix.
        return if req.method == http::Method::OPTIONS {
            Ok(())
        } else {
            Err(PathError::NotAPath)
        };
    };
    let (Cow::Owned(pq), authority) = (path_and_query, authority) else {
        return Ok(());
    };
    let authority = authority.map(<[u8]>::to_vec);
    if req.version == http::Version::HTTP_2 {
        // HTTP/2: `:scheme` and `:authority` live in the URI and stay there. (An HTTP/1
        // absolute-form target has an authority in the URI too: it is made origin-form
        // below.)
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query =
            Some(http::uri::PathAndQuery::try_from(pq).map_err(|_| PathError::NotAPath)?);
        let uri = http::Uri::from_parts(parts).map_err(|_| PathError::NotAPath)?;
        req.set_uri(uri);
    } else {
        // HTTP/1: origin-form from now on. An absolute-form target's authority is the
        // request's host (RFC 9112 §3.2.2); pingora has already refused one that differs
        // from `Host` byte for byte (stricter than the RFC's replacement), and hygiene
        // has checked its syntax. An HTTP/1.0 request without `Host` gets it as `Host`,
        // so the route, the cache key and the ENT read the one host the target names.
        req.set_raw_path(&pq).map_err(|_| PathError::NotAPath)?;
        if let Some(a) = authority {
            let v = http::HeaderValue::from_bytes(&a).map_err(|_| PathError::NotAPath)?;
            req.insert_header(http::header::HOST, v)
                .map_err(|_| PathError::NotAPath)?;
        }
    }
    Ok(())
}
mod tunnel;

/// The ports a request's host may name on this connection (`policy::host::Ports`): the
/// default of the scheme the cache key uses (`https` on a TLS listener or from a trusted
/// proxy that says so), this connection's local port, the listeners', the
/// `X-Forwarded-Port` of a trusted proxy and `public_ports`; any port on ecluse's own warm
/// request.
fn host_ports<'c>(
    config: &'c Config,
    session: &Session,
    tls: bool,
    trusted_peer: bool,
    warm: bool,
    listening: &'c mut Vec<u16>,
) -> crate::policy::host::Ports<'c> {
    let scheme = |name: &str| header(session.req_header(), name);
    let warm_https = warm
        && scheme(crate::admin::WARM_SCHEME_HEADER)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"https"));
    let https = tls
        || warm_https
        || (trusted_peer
            && header(session.req_header(), "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case(b"https")));
    let addrs = if tls {
        config
            .tls
            .as_ref()
            .map(|t| t.listen.as_slice())
            .unwrap_or_default()
    } else {
        config.listen.as_slice()
    };
    listening.extend(addrs.iter().map(|a| a.port()));
    // Behind a trusted proxy, the port it says the client reached (`X-Forwarded-Port`).
    if trusted_peer {
        let said = header(session.req_header(), "x-forwarded-port")
            .and_then(|p| std::str::from_utf8(p).ok()?.trim().parse::<u16>().ok());
        listening.extend(said);
    }
    crate::policy::host::Ports {
        default: if https { 443 } else { 80 },
        local: session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port()),
        listening,
        public: &config.server.public_ports,
        any: warm,
    }
}

/// The path policy decisions compare (routes, rooms, classes, signals): the request's
/// policy path when it differs from its canonical URI path, else that path.
fn policy_path<'a>(ctx: &'a Ctx, req: &'a RequestHeader) -> &'a str {
    ctx.policy_path.as_deref().unwrap_or_else(|| req.uri.path())
}

/// What a status poll's ticket asks.
enum StatusPoll {
    /// An admitted session still alive.
    Admitted,
    /// A waiting ticket still polling: its standing decides.
    Waiting(Ticket),
    /// No usable ticket (none, forged, expired…).
    Lost,
}

/// The status poll's state, position and the cookie to set, from its ticket and (for a
/// waiting ticket) its standing in the room, at `now_s` (unix s).
fn status_answer(
    room: &Room,
    poll: StatusPoll,
    standing: Option<Standing>,
    secure: bool,
    now_s: u64,
) -> (&'static str, Option<u64>, Option<String>) {
    match (poll, standing) {
        (StatusPoll::Admitted, _) => ("admitted", None, None),
        (StatusPoll::Waiting(t), Some(Standing::Admitted { bucket })) => {
            let t2 = Ticket {
                state: TicketState::Admitted,
                seen: now_s,
                bucket,
                ..t
            };
            ("admitted", None, Some(sealed_cookie(room, &t2, secure)))
        }
        (StatusPoll::Waiting(t), Some(Standing::Waiting { position })) => {
            // Polled again within the same second: the cookie would not change.
            let set = (t.seen != now_s).then(|| {
                let t2 = Ticket { seen: now_s, ..t };
                sealed_cookie(room, &t2, secure)
            });
            ("waiting", position, set)
        }
        _ => ("lost", None, None),
    }
}

/// What a status poll's answer reads of its request: pingora's header, or a head parsed
/// below pingora (`conn_guard::PollHead`).
pub(crate) trait PollRequest: hygiene::Head {
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
}

impl PollRequest for RequestHeader {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The first value of field `name` (what `HeaderMap::get` answers).
fn first<'r>(req: &'r impl PollRequest, name: &http::HeaderName) -> Option<&'r [u8]> {
    req.values(name).next()
}

/// The status polls answered below pingora, counted without looking the label up each time.
fn connection_polls() -> &'static prometheus::IntCounter {
    static C: std::sync::OnceLock<prometheus::IntCounter> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        crate::metrics::get()
            .status_polls
            .with_label_values(&["connection"])
    })
}

pub struct EcluseProxy {
    pub app: Arc<App>,
    /// Whether this listener terminates TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
}

/// Per-request state, alive for every phase of one request.
pub struct Ctx {
    /// This request's id (`policy::request_id`), decided first in `request_filter`.
    request_id: String,
    /// The origin server of the last attempt, kept for the log when the connection to it
    /// failed (the in-flight guard is given back then).
    upstream_addr: Option<SocketAddr>,
    start: Instant,
    wall_start: SystemTime,
    config: Option<Arc<Config>>,
    route: Option<Arc<Route>>,
    client_ip: Option<IpAddr>,
    peer_ip: Option<IpAddr>,
    /// Slot against the origin's `max_inflight`; released when the context drops.
    permit: Option<OriginPermit>,
    /// The server of the current attempt, counted in its in-flight until dropped.
    server: Option<InflightGuard>,
    /// Bitmask of the server indices already tried for this request.
    tried: u64,
    /// Index of the server of the current attempt.
    last_idx: Option<usize>,
    attempts: u32,
    has_body: bool,
    upstream_start: Option<Instant>,
    /// What ecluse answered by itself, for the log.
    decision: Option<&'static str>,
    /// The failure already counted for passive health, so `logging` doesn't count it twice.
    failure_recorded: bool,
    /// Priority class index, once computed (`None` = not computed yet).
    class: Option<Option<usize>>,
    /// `RateLimit-Policy` and `RateLimit` values for admitted responses, when the route
    /// asks for them.
    rl_headers: Option<(String, String)>,
    /// The rate-limit result for the log: `limited`, `dry_run_limited`, or none.
    rl_result: Option<&'static str>,
    /// A waiting-room cookie to set on the response.
    set_cookie: Option<String>,
    /// The admitted session this request belongs to (room, activity bucket), so the
    /// origin can end it with a response header.
    room_session: Option<(Arc<Room>, u64, Ticket)>,
    /// What the waiting room did, for the log: `inside`, `admitted`, `direct`, `queued`.
    room_decision: Option<&'static str>,
    /// Whether cookies set for this request carry `Secure`.
    room_secure: bool,
    /// The request carries credentials (`Authorization`, a cookie other than ecluse's).
    credentialed: bool,
    /// Why a cacheable route did not use the cache for this request (`Cache-Status`).
    cache_bypass: Option<&'static str>,
    /// The origin's response was admitted to the cache.
    cache_storable: bool,
    /// `Set-Cookie` values of this request's own origin response (a 304 during
    /// revalidation): a response built from the cache carries these and no other.
    upstream_set_cookies: Vec<http::HeaderValue>,
    /// A cache-warming request from our own admin API (`admin::cache_endpoints::warm`).
    warming: bool,
    /// A stale copy served as fresh because the level says `serve_stale`.
    forced_stale: bool,
    /// On a `revalidate` route: this request's object and credentials, hashed
    /// (`cache::auth`), to remember what the origin said to them.
    auth_grant: Option<crate::cache::auth::Grant>,
    /// The origin's 5xx a stale copy stood in for (stale-if-error), for `Cache-Status`.
    stale_error_status: Option<u16>,
    /// The lookup found a stored copy (fresh or not), for `Cache-Status`.
    stored_found: bool,
    /// The client and URL keys of the degradation signals (`policy::signals`), once
    /// computed for a request that goes to the origin.
    signal_keys: Option<(u8, u8)>,
    /// The origin's status and when its response head arrived (the latency signal is
    /// the time to it: how long the client takes to read the body is not the ENT's).
    upstream_head: Option<(u16, Instant)>,
    /// The whole request body, read before the origin slot (a buffering route).
    spooled: Option<Bytes>,
    /// A streaming route's body limit (0: none) and the body bytes passed on so far.
    body_limit: u64,
    body_seen: u64,
    /// This exchange's place in its feature's drain (feature routes, no request body).
    drain: Option<Arc<crate::drain::Session>>,
    /// On a `revalidate` route: the stored version looked up, what was asked of the
    /// origin, and the version it is answering (`cache::auth`).
    binding: cache_phase::Binding,
    /// The path every policy decision compares (`policy::path::policy_path`: case folded,
    /// front controller dropped…), when it differs from the canonical URI path.
    policy_path: Option<String>,
}

impl Ctx {
    fn origin(&self) -> Option<&Arc<Origin>> {
        self.route.as_ref().map(|r| &r.origin)
    }
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

fn socket_ip(addr: Option<&PSocketAddr>) -> Option<IpAddr> {
    addr.and_then(|a| a.as_inet())
        .map(|a: &SocketAddr| match a.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        })
}

/// The client and URL keys of this request for the degradation signals, computed once.
fn signal_keys(session: &Session, ctx: &mut Ctx) -> (u8, u8) {
    if let Some(keys) = ctx.signal_keys {
        return keys;
    }
    let k = upstream::keys();
    let client = ctx
        .client_ip
        .map(|ip| aggregate_ip(ip, 32, 64))
        .unwrap_or([0u8; 17]);
    // The policy path (canonical, case folded…): the query is left out (`signals`), and
    // case or controller spellings of one URL are one URL.
    let path = policy_path(ctx, session.req_header());
    let keys = (k.client(&client), k.url(path.as_bytes()));
    ctx.signal_keys = Some(keys);
    keys
}

/// Passive health: the exchange with `ctx.server` failed after the request was sent (a
/// 502-504, a time-out, a broken connection), which the request itself may have caused.
/// A client the signals already leave out counts for nothing; otherwise the failure is
/// counted under its client key, so that one client alone never ejects a server others
/// are served by (`ServerState::record_failure`).
fn passive_failure(session: &Session, ctx: &mut Ctx, origin: &Origin) {
    ctx.failure_recorded = true;
    let client = signal_keys(session, ctx).0;
    if origin.shared.is_outlier_client(client) {
        return;
    }
    if let Some(g) = ctx.server.as_ref() {
        g.server().record_failure(
            origin.passive_max_failures,
            origin.passive_ejection,
            Some(client),
            || origin.shared.active_clients(now_ms()),
        );
    }
}

/// How an exchange with the origin ended, for the signals: the failure if any, and when
/// it was known (the response head, or the end). `None`: nothing to say about the ENT
/// (the client went away before the origin answered).
fn origin_outcome(
    head: Option<(u16, Instant)>,
    e: Option<&Error>,
) -> Option<(Option<crate::policy::signals::Failure>, Instant)> {
    use crate::policy::signals::Failure;
    // An error the client caused (it went away, it stopped sending) is not the ENT's.
    let ent_error = e.filter(|e| e.esource() != &ErrorSource::Downstream);
    match head {
        // The head came: its status says, unless the origin broke the body afterwards.
        Some((status, at)) => {
            let failure = Failure::of_status(status).or(ent_error.map(|_| Failure::Overload));
            Some((failure, at))
        }
        None => ent_error.map(|_| (Some(Failure::Overload), Instant::now())),
    }
}

/// The client's address: the socket peer, or, when the peer is one of our trusted
/// proxies, the right-most address in `X-Forwarded-For` that is not itself trusted
/// (everything left of it could have been written by the client).
fn client_ip(config: &Config, peer: Option<IpAddr>, xff: Option<&[u8]>) -> Option<IpAddr> {
    let peer = peer?;
    if !config.server.is_trusted(peer) {
        return Some(peer);
    }
    let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Some(peer);
    };
    let mut leftmost = None;
    for part in xff.rsplit(',').take(32) {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop believing it here.
            return Some(leftmost.unwrap_or(peer));
        };
        if !config.server.is_trusted(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    Some(leftmost.unwrap_or(peer))
}

/// The `User-Agent` as logged: visible ASCII and spaces, at most 256 bytes (JSON escaping
/// keeps the line one line whatever it holds; the cap keeps it short).
fn log_user_agent(v: Option<&http::HeaderValue>) -> Option<&str> {
    let s = v?.to_str().ok()?;
    let mut end = s.len().min(256);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Some(&s[..end])
}

fn request_has_body(session: &mut Session) -> bool {
    let req = session.req_header();
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    if let Some(cl) = req.headers.get(http::header::CONTENT_LENGTH) {
        return cl.as_bytes() != b"0";
    }
    if session.is_http2() {
        return !session.as_mut().is_body_empty();
    }
    false
}

impl EcluseProxy {
    /// Write a response made by ecluse itself (error pages). Keeps the client connection
    /// only when no request body is left unread on it.
    async fn respond_problem(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        problem: Problem,
        retry_after: Option<u64>,
        extra: &[(&'static str, String)],
    ) -> Result<()> {
        let req = session.req_header();
        let lang = pages::negotiate_lang(header(req, "accept-language"));
        let json = pages::wants_json(header(req, "accept"));
        let set = ctx
            .config
            .as_ref()
            .map(|c| c.pages.clone())
            .unwrap_or_else(pages::Pages::builtin);
        // `request_id`: the footer prints it once requests carry one (the edge's request
        // ids); `None` leaves the line out.
        let page = pages::problem_page(
            &set,
            problem,
            lang,
            json,
            retry_after,
            (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
        );
        let mut resp = ResponseHeader::build(problem.status(), Some(5))?;
        resp.insert_header("content-type", page.content_type)?;
        resp.insert_header("content-length", page.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        if let Some(cs) = self.local_cache_status(session, ctx, problem.status()) {
            resp.insert_header("cache-status", cs)?;
        }
        if let Some(s) = retry_after {
            resp.insert_header("retry-after", s.to_string())?;
        }
        for (k, v) in extra {
            resp.insert_header(*k, v.as_str())?;
        }
        // A session admitted or moved by this request keeps its cookie even when the
        // answer is ours (origin busy, 502…): otherwise its next request counts it twice.
        if let Some(c) = ctx.set_cookie.take() {
            resp.append_header("set-cookie", c)?;
        }
        if ctx.has_body && ctx.spooled.is_none() {
            // The body was never read (or not all of it): the connection cannot carry
            // another request.
            session.set_keepalive(None);
        }
        ctx.decision = Some(problem.code());
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(page.body), true).await?;
        Ok(())
    }
}

/// `"name";q=Q;w=W` (a `RateLimit-Policy` item).
fn policy_item(name: &str, v: &Verdict) -> String {
    format!(
        "\"{name}\";q={};w={}",
        v.quota,
        v.window.as_secs_f64().ceil().max(1.0) as u64
    )
}

/// `"name";r=R;t=T` (a `RateLimit` item).
fn limit_item(name: &str, v: &Verdict) -> String {
    format!(
        "\"{name}\";r={};t={}",
        v.remaining,
        v.reset.as_secs_f64().ceil() as u64
    )
}

impl EcluseProxy {
    /// The hash of the key this request is counted under for limit `l`.
    fn limit_key(&self, l: &RouteLimit, req: &RequestHeader, ctx: &Ctx) -> u64 {
        let ip_key = || {
            let agg = ctx
                .client_ip
                .map(|ip| aggregate_ip(ip, l.ipv4_prefix, l.ipv6_prefix))
                .unwrap_or([0u8; 17]);
            l.limiter.key_hash_tagged(b'i', &agg)
        };
        match &l.key {
            LimitKey::ClientIp => ip_key(),
            LimitKey::Route => l.limiter.key_hash_tagged(b'r', b""),
            LimitKey::Cookie(name) => match cookie(&req.headers, name) {
                Some(v) if !v.is_empty() => l.limiter.key_hash_tagged(b'c', v.as_bytes()),
                _ => ip_key(),
            },
            LimitKey::Header(h) => match req.headers.get(h) {
                Some(v) if !v.is_empty() => l.limiter.key_hash_tagged(b'h', v.as_bytes()),
                _ => ip_key(),
            },
            LimitKey::User(h) => {
                let trusted = match (ctx.peer_ip, ctx.config.as_ref()) {
                    (Some(ip), Some(c)) => c.server.is_trusted(ip),
                    _ => false,
                };
                match req.headers.get(h) {
                    Some(v) if trusted && !v.is_empty() => {
                        l.limiter.key_hash_tagged(b'u', v.as_bytes())
                    }
                    _ => ip_key(),
                }
            }
        }
    }

    /// The priority label for shed metrics: the class name, `admitted` for an admitted
    /// waiting-room session, else `none` (bounded: names come from the config).
    fn class_label(&self, session: &Session, ctx: &mut Ctx) -> &'static str {
        if let Some(i) = self.class_of(session, ctx) {
            if let Some(cfg) = &ctx.config {
                if let Some(c) = cfg.classes.get(i) {
                    // Class names live as long as the config; intern them for the label.
                    return crate::metrics::intern(&c.name);
                }
            }
        }
        if ctx.room_session.is_some() {
            "admitted"
        } else {
            "none"
        }
    }

    fn class_of(&self, session: &Session, ctx: &mut Ctx) -> Option<usize> {
        if let Some(c) = ctx.class {
            return c;
        }
        let c = match ctx.config.as_ref() {
            Some(cfg) if !cfg.classes.is_empty() => {
                let req = session.req_header();
                classify(
                    &cfg.classes,
                    &RequestFacts {
                        client_ip: ctx.client_ip,
                        trusted: ctx.peer_ip.is_some_and(|ip| cfg.server.is_trusted(ip)),
                        path: policy_path(ctx, req),
                        headers: &req.headers,
                    },
                )
            }
            _ => None,
        };
        ctx.class = Some(c);
        c
    }

    /// Check every limit of the route, then charge them all only if none refuses.
    /// Returns true when the request was answered (429).
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Arc<Route>,
    ) -> Result<bool> {
        // The degradation level in force may tighten every limit.
        // In fleet mode, this node enforces its share of the fleet-wide limit.
        let factor = self.app.degrade.rate_factor()
            * self
                .app
                .fleet
                .as_ref()
                .map_or(1.0, |f| f.share(&route.name));
        let mut passed: Vec<(&RouteLimit, u64)> = Vec::with_capacity(route.limits.len());
        let mut refused: Option<(&RouteLimit, Verdict)> = None;
        for l in &route.limits {
            let exempt_ip = ctx
                .client_ip
                .is_some_and(|ip| l.exempt_cidrs.iter().any(|n| n.contains(&ip)));
            let exempt = exempt_ip
                || (!l.exempt_classes.is_empty()
                    && self
                        .class_of(session, ctx)
                        .is_some_and(|c| l.exempt_classes.contains(&c)));
            if exempt {
                l.metrics.exempt.inc();
                continue;
            }
            let key = self.limit_key(l, session.req_header(), ctx);
            let v = l.limiter.peek(key, factor);
            if v.allowed {
                passed.push((l, key));
            } else if l.dry_run {
                l.metrics.dry_run_limited.inc();
                ctx.rl_result = Some("dry_run_limited");
            } else {
                refused = Some((l, v));
                break;
            }
        }
        if let Some((l, v)) = refused {
            l.metrics.limited.inc();
            ctx.rl_result = Some("limited");
            let retry = v.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let headers = [
                ("ratelimit-policy", policy_item(&l.name, &v)),
                ("ratelimit", limit_item(&l.name, &v)),
            ];
            self.respond_problem(session, ctx, Problem::RateLimited, Some(retry), &headers)
                .await?;
            return Ok(true);
        }
        let mut policies = Vec::new();
        let mut limits = Vec::new();
        for (l, key) in passed {
            let v = l.limiter.commit(key, factor);
            l.metrics.allowed.inc();
            if route.rate_limit_headers && !l.dry_run {
                policies.push(policy_item(&l.name, &v));
                limits.push(limit_item(&l.name, &v));
            }
        }
        if !policies.is_empty() {
            ctx.rl_headers = Some((policies.join(", "), limits.join(", ")));
        }
        Ok(false)
    }
}

/// The JSON status URL polled by the queue page.
pub const STATUS_PATH: &str = "/.ecluse/queue/status";

fn cookie_header(room: &Room, value: &str, secure: bool) -> String {
    cookie_with(room, secure, |out| out.push_str(value))
}

/// [`cookie_header`] for ticket `t`, sealed straight into it.
fn sealed_cookie(room: &Room, t: &Ticket, secure: bool) -> String {
    cookie_with(room, secure, |out| room.keys.seal_into(t, out))
}

/// `NAME=VALUE; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax[; Secure]`, `value` writing
/// the value.
fn cookie_with(room: &Room, secure: bool, value: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(room.cookie_name.len() + 256);
    out.push_str(&room.cookie_name);
    out.push('=');
    value(&mut out);
    out.push_str("; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax");
    if secure {
        out.push_str("; Secure");
    }
    out
}

impl EcluseProxy {
    fn secure(&self, session: &Session, ctx: &Ctx) -> bool {
        if self.tls {
            return true;
        }
        let trusted = match (ctx.peer_ip, ctx.config.as_ref()) {
            (Some(ip), Some(c)) => c.server.is_trusted(ip),
            _ => false,
        };
        trusted
            && header(session.req_header(), "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case(b"https"))
    }

    /// Queue or admit a request on a route guarded by `room`. Returns true when the
    /// request was answered here (queue page or status).
    /// Fleet mode with Redis answering: the shared room and a connection to reach it.
    fn fleet_room(
        &self,
        room: &Room,
    ) -> Option<(
        Arc<crate::cluster::fleet_room::FleetRoom>,
        crate::cluster::redis_conn::RedisConn,
    )> {
        let f = self.app.fleet.as_ref()?;
        let conn = f.conn()?;
        Some((f.room(&room.name), conn))
    }

    /// Fleet mode with Redis unreachable: the shared room, for what this node does alone
    /// to reach the fleet once Redis is back.
    fn fleet_room_alone(&self, room: &Room) -> Option<Arc<crate::cluster::fleet_room::FleetRoom>> {
        let f = self.app.fleet.as_ref()?;
        f.conn().is_none().then(|| f.room(&room.name))
    }

    /// The room's params for this node (its share while fleet mode is in fallback).
    fn room_params(&self, room: &Room) -> crate::policy::waiting_room::RoomParams {
        room.effective_share(self.app.fleet.as_ref().and_then(|f| f.fallback_share()))
    }

    /// A waiting ticket polls: through the shared room in fleet mode (falling back to
    /// the local one if Redis fails now), else the local room.
    async fn poll_room(
        &self,
        room: &Room,
        params: &crate::policy::waiting_room::RoomParams,
        class: u8,
        number: u64,
        now: u64,
    ) -> Standing {
        if let Some((fr, mut conn)) = self.fleet_room(room) {
            match fr
                .poll(&mut conn, params, usize::from(class), number, now)
                .await
            {
                Ok((s, asked)) => {
                    if asked {
                        if let Some(f) = &self.app.fleet {
                            f.count_commands(1);
                        }
                    }
                    return s;
                }
                Err(e) => {
                    if let Some(f) = &self.app.fleet {
                        f.call_failed(&e);
                    }
                }
            }
        }
        // Redis may have failed just now: the node's own room decides, with this node's
        // share (the params were read while Redis answered: with the whole room, they
        // would let in the fleet's capacity on this node alone).
        let alone = self.room_params(room);
        let params = if self.fleet_room_alone(room).is_some() {
            &alone
        } else {
            params
        };
        let standing = room
            .shared
            .lock()
            .poll(params, usize::from(class), number, now);
        if let Some(fr) = self.fleet_room_alone(room) {
            fr.mark_diverged();
            if let Standing::Admitted { bucket } = standing {
                fr.record_outage_admission(bucket, Some((class, number)));
            }
        }
        standing
    }

    async fn waiting_room(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Arc<Room>,
    ) -> Result<bool> {
        if !room.is_inside(policy_path(ctx, session.req_header())) {
            return Ok(false);
        }
        let now = now_ms();
        let now_s = now / 1000;
        let params = self.room_params(room);
        let secure = self.secure(session, ctx);
        ctx.room_secure = secure;
        let ticket = match cookie(&session.req_header().headers, &room.cookie_name) {
            None => None,
            Some(v) => match room.keys.open(v, &room.name) {
                Ok(t) => Some(t),
                Err(TicketError::OtherRoom(_)) => {
                    room.metrics.rejected_other_room.inc();
                    None
                }
                Err(_) => {
                    room.metrics.rejected_forged.inc();
                    None
                }
            },
        };
        if let Some(t) = ticket {
            match t.state {
                TicketState::Admitted
                    if now_s.saturating_sub(t.seen) <= params.idle_timeout.as_secs() =>
                {
                    let touched = match self.fleet_room(room) {
                        Some((fr, _)) => fr.touch(&params, t.class, t.number, t.bucket, now),
                        None => {
                            // Redis away: the move also waits for the fleet's count.
                            let fleet_ok = self.fleet_room_alone(room).is_none_or(|fr| {
                                fr.mark_diverged();
                                fr.touch(&params, t.class, t.number, t.bucket, now)
                                    .is_some()
                            });
                            let local = room
                                .shared
                                .lock()
                                .touch(&params, t.class, t.number, t.bucket, now);
                            local.filter(|_| fleet_ok)
                        }
                    };
                    let Some(bucket) = touched else {
                        // Ended, or a stale copy: queue fresh like any newcomer.
                        room.metrics.rejected_expired.inc();
                        return self
                            .newcomer(session, ctx, room, &params, now, secure)
                            .await;
                    };
                    let t2 = Ticket {
                        seen: if bucket != t.bucket { now_s } else { t.seen },
                        bucket,
                        ..t
                    };
                    if bucket != t.bucket {
                        ctx.set_cookie = Some(cookie_header(room, &room.keys.seal(&t2), secure));
                    }
                    ctx.room_session = Some((room.clone(), bucket, t2));
                    ctx.room_decision = Some("inside");
                    return Ok(false);
                }
                TicketState::Waiting
                    if now_s.saturating_sub(t.seen)
                        <= params.waiting_ticket_lifetime().as_secs() =>
                {
                    let standing = self.poll_room(room, &params, t.class, t.number, now).await;
                    match standing {
                        Standing::Admitted { bucket } => {
                            let t2 = Ticket {
                                state: TicketState::Admitted,
                                seen: now_s,
                                bucket,
                                ..t
                            };
                            ctx.set_cookie =
                                Some(cookie_header(room, &room.keys.seal(&t2), secure));
                            ctx.room_session = Some((room.clone(), bucket, t2));
                            ctx.room_decision = Some("admitted");
                            return Ok(false);
                        }
                        Standing::Waiting { position } => {
                            let t2 = Ticket { seen: now_s, ..t };
                            let c = cookie_header(room, &room.keys.seal(&t2), secure);
                            ctx.room_decision = Some("queued");
                            self.respond_queue(session, ctx, room, "waiting", position, Some(c))
                                .await?;
                            return Ok(true);
                        }
                        Standing::Used => room.metrics.rejected_reused.inc(),
                    }
                }
                _ => room.metrics.rejected_expired.inc(),
            }
        }
        self.newcomer(session, ctx, room, &params, now, secure)
            .await
    }

    /// A request without a usable ticket: admit at once when there is room and nobody
    /// waits, else hand out a place at the back of the queue.
    async fn newcomer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Arc<Room>,
        params: &crate::policy::waiting_room::RoomParams,
        now: u64,
        secure: bool,
    ) -> Result<bool> {
        let now_s = now / 1000;
        let params = params.clone();
        let class = self
            .class_of(session, ctx)
            .and_then(|c| room.class_map.get(c).copied())
            .unwrap_or(0);
        let fleet = self.fleet_room(room);
        let would_queue = match &fleet {
            Some((fr, _)) => fr.would_queue(&params, usize::from(class), now),
            None => room
                .shared
                .lock()
                .would_queue(&params, usize::from(class), now),
        };
        if would_queue {
            // Bots that drop cookies get a new ticket on every request: cap the tickets
            // handed to one address (NAT-friendly default), without one the page
            // just reloads until a place can be given.
            let agg = ctx
                .client_ip
                .map(|ip| aggregate_ip(ip, 32, 64))
                .unwrap_or([0u8; 17]);
            let key = room.ticket_limiter.key_hash_tagged(b't', &agg);
            if !room.ticket_limiter.check(key, 1.0).allowed {
                ctx.room_decision = Some("ticket_refused");
                self.respond_queue(session, ctx, room, "waiting", None, None)
                    .await?;
                return Ok(true);
            }
        }
        let mut fleet_position = None;
        let mut arrival = None;
        if let Some((fr, mut conn)) = fleet {
            if let Some(f) = &self.app.fleet {
                f.count_commands(1);
            }
            match fr.arrive(&mut conn, &params, usize::from(class), now).await {
                Ok(crate::cluster::fleet_room::Arrived::Admit { number, bucket }) => {
                    arrival = Some(Arrival::Admit { number, bucket })
                }
                Ok(crate::cluster::fleet_room::Arrived::Queue { number, position }) => {
                    fleet_position = Some(position);
                    arrival = Some(Arrival::Queue { number });
                }
                Ok(crate::cluster::fleet_room::Arrived::Closed) => arrival = Some(Arrival::Closed),
                Err(e) => {
                    if let Some(f) = &self.app.fleet {
                        f.call_failed(&e);
                    }
                }
            }
        }
        let arrival = match arrival {
            Some(a) => a,
            None => {
                // Redis may have failed just now: number as the node alone does (its
                // share, its own numbers), not with the params read while it answered
                // (every node would hand out the same next numbers).
                let params = self.room_params(room);
                let a = room.arrive_local(&params, usize::from(class), now);
                if let Some(fr) = self.fleet_room_alone(room) {
                    fr.mark_diverged();
                    if let Arrival::Admit { number, .. } | Arrival::Queue { number } = a {
                        fr.note_alone(usize::from(class), number);
                    }
                    if let Arrival::Admit { bucket, .. } = a {
                        fr.record_outage_admission(bucket, None);
                    }
                }
                a
            }
        };
        match arrival {
            Arrival::Admit { number, bucket } => {
                let t = Ticket {
                    room: room.name.clone(),
                    class,
                    state: TicketState::Admitted,
                    number,
                    issued: now_s,
                    seen: now_s,
                    bucket,
                };
                ctx.set_cookie = Some(cookie_header(room, &room.keys.seal(&t), secure));
                ctx.room_session = Some((room.clone(), bucket, t));
                ctx.room_decision = Some("direct");
                Ok(false)
            }
            Arrival::Queue { number } => {
                let t = Ticket {
                    room: room.name.clone(),
                    class,
                    state: TicketState::Waiting,
                    number,
                    issued: now_s,
                    seen: now_s,
                    bucket: 0,
                };
                let position = fleet_position.unwrap_or_else(|| {
                    let s = room.shared.lock();
                    s.effective_number(&params, usize::from(class), number)
                        .map(|n| {
                            n.saturating_sub(
                                s.queues
                                    .get(usize::from(class))
                                    .map(|q| q.frontier)
                                    .unwrap_or(0),
                            )
                            .max(1)
                        })
                });
                let c = cookie_header(room, &room.keys.seal(&t), secure);
                ctx.room_decision = Some("queued");
                self.respond_queue(session, ctx, room, "waiting", position, Some(c))
                    .await?;
                Ok(true)
            }
            Arrival::Closed => {
                ctx.room_decision = Some("closed");
                self.respond_queue(session, ctx, room, "closed", None, None)
                    .await?;
                Ok(true)
            }
        }
    }

    /// The status of this client's ticket, as JSON (polled by the queue page).
    async fn queue_status(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        config: &Config,
    ) -> Result<()> {
        let secure = self.secure(session, ctx);
        let Some((room, params, poll)) =
            self.status_poll(session.req_header(), config, now_ms() / 1000)
        else {
            self.respond_problem(session, ctx, Problem::NoRoute, None, &[])
                .await?;
            return Ok(());
        };
        let standing = match &poll {
            StatusPoll::Waiting(t) => Some(
                self.poll_room(&room, &params, t.class, t.number, now_ms())
                    .await,
            ),
            _ => None,
        };
        let (state, position, set) = status_answer(&room, poll, standing, secure, now_ms() / 1000);
        ctx.room_decision = Some("status");
        crate::metrics::get()
            .status_polls
            .with_label_values(&["http"])
            .inc();
        self.respond_queue_json(session, ctx, &room, state, position, set)
            .await
    }

    /// The degradation level in force, by name (when levels are declared).
    fn level_name<'c>(&self, config: &'c Config) -> Option<&'c str> {
        let i = self
            .app
            .degrade
            .level
            .load(std::sync::atomic::Ordering::Relaxed);
        config
            .degradation
            .as_ref()
            .and_then(|d| d.levels.get(i))
            .map(|l| l.name.as_str())
    }

    /// A status poll at `now_s` (unix s): which room, its params for this node, and what
    /// its ticket asks (`None`: no such room).
    fn status_poll(
        &self,
        req: &impl PollRequest,
        config: &Config,
        now_s: u64,
    ) -> Option<(
        Arc<Room>,
        crate::policy::waiting_room::RoomParams,
        StatusPoll,
    )> {
        let q = req.query().unwrap_or("");
        let name = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("room="))
            .unwrap_or("");
        let room = config.rooms.iter().find(|r| r.name == name).cloned()?;
        let params = self.room_params(&room);
        let ticket = cookie_in(req.values(&http::header::COOKIE), &room.cookie_name)
            .and_then(|v| room.keys.open(v, &room.name).ok());
        let poll = match ticket {
            Some(t)
                if t.state == TicketState::Admitted
                    && now_s.saturating_sub(t.seen) <= params.idle_timeout.as_secs() =>
            {
                StatusPoll::Admitted
            }
            Some(t)
                if t.state == TicketState::Waiting
                    && now_s.saturating_sub(t.seen)
                        <= params.waiting_ticket_lifetime().as_secs() =>
            {
                StatusPoll::Waiting(t)
            }
            _ => StatusPoll::Lost,
        };
        Some((room, params, poll))
    }

    /// A status poll answered below pingora's HTTP layer (`conn_guard.rs`), in one-node mode:
    /// the whole HTTP/1.1 response and its access-log line, exactly as the normal path
    /// would make them. `None`: take the normal path (fleet mode, unknown room).
    pub(crate) fn fast_status(
        &self,
        req: &impl PollRequest,
        peer_ip: Option<IpAddr>,
        started: (Instant, SystemTime),
    ) -> Option<Vec<u8>> {
        if self.app.fleet.is_some() {
            return None;
        }
        let config = self.app.config();
        let secure = self.tls
            || (peer_ip.is_some_and(|ip| config.server.is_trusted(ip))
                && first(req, &X_FORWARDED_PROTO)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"https")));
        // One clock reading for the whole answer (nothing here waits).
        let now = unix_ms(started.1);
        let (room, params, poll) = self.status_poll(req, &config, now / 1000)?;
        let standing = match &poll {
            StatusPoll::Waiting(t) => Some(room.shared.lock().poll(
                &params,
                usize::from(t.class),
                t.number,
                now,
            )),
            _ => None,
        };
        let (state, position, set) = status_answer(&room, poll, standing, secure, now / 1000);
        let (_, mut status, _) = self.status_of(req, &room, &params, state, position, now);
        let trusted = peer_ip.is_some_and(|ip| config.server.is_trusted(ip));
        let request_id = crate::policy::request_id::decide(
            trusted,
            req.values(&http::HeaderName::from_static(
                crate::policy::request_id::HEADER,
            )),
        );
        status.request_id = request_id.clone();
        let mut body = Vec::with_capacity(256);
        if serde_json::to_writer(&mut body, &status).is_err() {
            body.clear();
        }
        let mut out = Vec::with_capacity(body.len() + 256 + set.as_ref().map_or(0, String::len));
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ",
        );
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\ncache-control: no-store\r\nx-request-id: ");
        // `policy::request_id` keeps or makes header-safe ASCII only.
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(c) = set {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // What pingora adds to every response it writes (same clock, same format).
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        out.extend_from_slice(b"\r\nConnection: keep-alive\r\n\r\n");
        out.extend_from_slice(&body);
        connection_polls().inc();
        if self.app.access_log.enabled() {
            let client = client_ip(&config, peer_ip, first(req, &X_FORWARDED_FOR));
            let host = first(req, &http::header::HOST)
                .and_then(visible_ascii)
                .unwrap_or("");
            let redact = config.access_log.redact_query.as_slice();
            let entry = Entry {
                time: rfc3339(started.1),
                request_id: &request_id,
                client_ip: client.map(|i| i.to_string()).unwrap_or_default(),
                method: req.method().as_str(),
                path: req.path(),
                query: req
                    .query()
                    .map(|q| crate::access_log::redact_query(q, redact)),
                host,
                user_agent: first(req, &http::header::USER_AGENT)
                    .and_then(visible_ascii)
                    .map(|u| u.get(..256).unwrap_or(u)),
                status: 200,
                route: None,
                upstream: None,
                duration_ms: (started.0.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                bytes_sent: body.len(),
                attempts: 0,
                decision: None,
                rate_limit: None,
                queue: Some("status"),
                cache: None,
                level: self.level_name(&config),
                error: None,
            };
            self.app.access_log.log(&entry);
        }
        Some(out)
    }

    /// The JSON status at `now` (unix ms); `params` the room's, for its poll interval and
    /// opening.
    fn status_of<'r>(
        &self,
        req: &impl PollRequest,
        room: &'r Room,
        params: &crate::policy::waiting_room::RoomParams,
        state: &'static str,
        position: Option<u64>,
        now: u64,
    ) -> (pages::Lang, queue::Status<'r>, u64) {
        let lang = pages::negotiate_lang(first(req, &http::header::ACCEPT_LANGUAGE));
        let (wait, paused) = match self.fleet_room(room) {
            Some((fr, _)) => (position.and_then(|p| fr.wait(params, p, now)), fr.paused()),
            None => {
                let s = room.shared.lock();
                (position.and_then(|p| s.wait(params, p, now)), s.paused)
            }
        };
        let eta = wait.map(|w| w.estimate);
        // ±20% jitter so that a crowd that arrived together does not poll together.
        let base = params.poll_interval.as_millis() as u64;
        let jitter = (base / 5).max(1);
        let mut poll_after = base - jitter + rand::random::<u64>() % (2 * jitter);
        // Near the front: ask again about when the turn should come (at least 1 s apart),
        // so an admission is not left unclaimed for most of a poll interval while it
        // holds a place in the room.
        if let Some(eta) = eta.filter(|e| (e.as_millis() as u64) < poll_after) {
            // (`clamp` panics when its floor is above its ceiling: a poll interval under
            // a second keeps its own pace.)
            poll_after = (eta.as_millis() as u64 + 250).clamp(1000.min(poll_after), poll_after);
        }
        let zone = &room.pages.zone;
        let opens = params.opens_at.filter(|t| *t > now);
        let status = queue::Status {
            room: &room.name,
            state,
            position,
            position_text: queue::position_text(lang, position),
            eta_seconds: eta.map(|d| d.as_secs()),
            eta_low_seconds: wait.map(|w| w.low.as_secs()),
            eta_high_seconds: wait.map(|w| w.high.as_secs_f64().ceil() as u64),
            eta_text: queue::wait_text(lang, wait),
            updated_at: zone.rfc3339(now),
            updated_at_text: zone.clock(now),
            poll_after_ms: poll_after,
            pace_adaptive: room.auto.is_some_and(|a| a.pace || a.capacity),
            paused,
            opens_at: opens.map(|t| zone.rfc3339(t)),
            opens_at_text: opens.map(|t| zone.when(t, now, lang)),
            request_id: String::new(),
        };
        (lang, status, base)
    }

    async fn respond_queue_json(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Room,
        state: &'static str,
        position: Option<u64>,
        set_cookie: Option<String>,
    ) -> Result<()> {
        let (_, mut status, _) = self.status_of(
            session.req_header(),
            room,
            &room.effective(),
            state,
            position,
            now_ms(),
        );
        status.request_id = ctx.request_id.clone();
        let body = Bytes::from(serde_json::to_vec(&status).unwrap_or_default());
        self.respond_raw(session, ctx, 200, "application/json", body, set_cookie)
            .await
    }

    async fn respond_queue(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        room: &Room,
        state: &'static str,
        position: Option<u64>,
        set_cookie: Option<String>,
    ) -> Result<()> {
        if pages::wants_json(header(session.req_header(), "accept")) {
            return self
                .respond_queue_json(session, ctx, room, state, position, set_cookie)
                .await;
        }
        let params = room.effective();
        let now = now_ms();
        let (lang, status, poll_ms) =
            self.status_of(session.req_header(), room, &params, state, position, now);
        let before_opening = params.opens_at.filter(|t| *t > now);
        let draw = params.method == crate::policy::waiting_room::Method::Random;
        let html = match before_opening {
            // Before the pre-queue window: nobody holds a place, so no position.
            Some(opens) if state == "closed" => {
                let window = opens.saturating_sub(params.prequeue.as_millis() as u64);
                let view = queue::NotOpenView {
                    lang,
                    opens_at: room.pages.zone.when(opens, now, lang),
                    window_at: room.pages.zone.when(window, now, lang),
                    // Back when the window opens; at most every 5 minutes meanwhile
                    // (a changed opening time is seen), at least 5 s apart.
                    reload_in: (window.saturating_sub(now) / 1000).clamp(5, 300),
                    draw,
                };
                room.pages.render_not_open(
                    &view,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                )
            }
            _ => {
                let view = queue::QueueView {
                    lang,
                    position,
                    position_text: status.position_text,
                    eta_text: status.eta_text,
                    updated_at: status.updated_at_text,
                    poll_ms,
                    refresh_s: (poll_ms / 1000).max(5),
                    status_url: format!("{STATUS_PATH}?room={}", room.name),
                    room: room.name.clone(),
                    paused: status.paused,
                    opens_at: status.opens_at_text.unwrap_or_default(),
                    phase: if before_opening.is_some() {
                        "prequeue"
                    } else {
                        "waiting"
                    },
                    draw,
                    sound: room.turn_sound,
                };
                room.pages.render_queue(
                    &view,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                )
            }
        };
        let body = Bytes::from(html);
        self.respond_raw(
            session,
            ctx,
            200,
            "text/html; charset=utf-8",
            body,
            set_cookie,
        )
        .await
    }

    /// A 200 made by ecluse (queue pages): never cached, never kept by intermediaries.
    async fn respond_raw(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        content_type: &'static str,
        body: Bytes,
        set_cookie: Option<String>,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(5))?;
        resp.insert_header("content-type", content_type)?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        if let Some(cs) = self.local_cache_status(session, ctx, status) {
            resp.insert_header("cache-status", cs)?;
        }
        if let Some(c) = set_cookie {
            resp.insert_header("set-cookie", c)?;
        }
        if ctx.has_body && ctx.spooled.is_none() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

impl EcluseProxy {
    /// The origin answered: a `101` to an upgrade request makes the connection a
    /// tunnel, with its own timeouts (the request ones no longer apply).
    fn maybe_tunnel(&self, session: &mut Session, resp: &ResponseHeader, ctx: &mut Ctx) {
        let upgraded = resp.status.as_u16() == 101 && session.is_upgrade_req();
        let origin = ctx.origin().filter(|_| upgraded);
        let tunnel = origin.map(|o| {
            let ws = header(session.req_header(), "upgrade")
                .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"));
            (
                o.tunnel_idle_timeout,
                o.tunnel_max_lifetime.map(|l| Instant::now() + l),
                ws,
            )
        });
        let guard = conn_guard::guard_of(session);
        let guarded = guard.is_some();
        if let Some(g) = guard {
            g.response_started(tunnel);
            if !upgraded && session.is_upgrade_req() {
                // Refused upgrade: pingora's per-read timeout is off for this request
                // (see `upstream_peer`), so the guard holds the response body to the
                // origin's `read_timeout` between two chunks instead.
                if let Some(o) = ctx.origin() {
                    g.body_idle(o.read_timeout);
                }
            }
        }
        if let Some((idle, _, _)) = tunnel {
            // A tunnel is a connection, not a request being processed: its origin slot
            // (`max_inflight`, the adaptive limit) is given back at the `101`.
            ctx.permit = None;
            // The guard counts idleness both ways; without one, each read is bounded.
            session.set_read_timeout(if guarded { None } else { Some(idle) });
            session.set_min_send_rate(None);
            session.set_write_timeout(Some(idle));
        }
    }
}

#[async_trait]
impl ProxyHttp for EcluseProxy {
    type CTX = Ctx;

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // pingora's default (response compression, off) and the request id header.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(request_id::RequestIdBuilder));
    }

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: String::new(),
            upstream_addr: None,
            start: Instant::now(),
            wall_start: SystemTime::now(),
            config: None,
            route: None,
            client_ip: None,
            peer_ip: None,
            permit: None,
            server: None,
            tried: 0,
            last_idx: None,
            attempts: 0,
            has_body: false,
            upstream_start: None,
            decision: None,
            failure_recorded: false,
            class: None,
            rl_headers: None,
            rl_result: None,
            set_cookie: None,
            room_session: None,
            room_decision: None,
            room_secure: false,
            credentialed: false,
            cache_bypass: None,
            cache_storable: false,
            upstream_set_cookies: Vec::new(),
            warming: false,
            forced_stale: false,
            auth_grant: None,
            stale_error_status: None,
            stored_found: false,
            signal_keys: None,
            upstream_head: None,
            spooled: None,
            body_limit: 0,
            body_seen: 0,
            drain: None,
            binding: cache_phase::Binding::default(),
            policy_path: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // 0. Framing and syntax a downstream parser could read differently from ours:
        // refused before anything else, and the connection closed (what follows the head
        // is unframed).
        let config = self.app.config();
        // The request id first, so every answer from here on carries it (the downstream
        // module adds the header to every response head, `request_id.rs`).
        let trusted_peer =
            socket_ip(session.client_addr()).is_some_and(|ip| config.server.is_trusted(ip));
        ctx.request_id = crate::policy::request_id::decide(
            trusted_peer,
            session
                .req_header()
                .headers
                .get_all(crate::policy::request_id::HEADER)
                .iter()
                .map(|v| v.as_bytes()),
        );
        if let Some(m) = session
            .downstream_modules_ctx
            .get_mut::<request_id::RequestIdHeader>()
        {
            m.set(&ctx.request_id);
        }
        let clients = &config.server.clients;
        let limits = hygiene::Limits {
            max_request_line: clients.max_request_line,
            max_header_bytes: clients.max_header_bytes,
            max_headers: clients.max_headers,
        };
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        if let Err(r) = hygiene::check_request(session.req_header(), raw.as_deref(), &limits) {
            ctx.start = Instant::now();
            session.set_keepalive(None);
            if hygiene::is_host_problem(&r) {
                // The framing is sound: ecluse's own bad-request page (HTML or JSON) says
                // what is wrong; the connection still closes.
                self.respond_problem(
                    session,
                    ctx,
                    Problem::BadRequest,
                    None,
                    &[("connection", "close".to_string())],
                )
                .await?;
                ctx.decision = Some(r.reason);
                return Ok(true);
            }
            ctx.decision = Some(r.reason);
            let mut resp = ResponseHeader::build(r.status, Some(3))?;
            resp.insert_header("content-length", "0")?;
            resp.insert_header("cache-control", "no-store")?;
            resp.insert_header("connection", "close")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        // 0b. The edge owns forwarding headers (policy::forwarding): what a client says
        // about its address, scheme, host or the URL to serve is removed here, before
        // any phase (route, limits, cache key and credentials, Vary) reads the request,
        // so the ENT and the cache see the same request for everyone; ecluse writes its
        // own in `upstream_request_filter`.
        let verdict = forwarding::decide(
            &config.server.forwarding,
            session.req_header().headers.keys().map(|k| k.as_str()),
            trusted_peer,
        );
        match verdict {
            forwarding::Verdict::Remove(names) => {
                let req = session.req_header_mut();
                for n in names {
                    req.remove_header(n.as_str());
                }
                // The ENT gets the id the client sees and the access log records.
                req.insert_header(crate::policy::request_id::HEADER, ctx.request_id.as_str())?;
            }
            forwarding::Verdict::Reject(_) => {
                ctx.start = Instant::now();
                ctx.decision = Some("odd_header_name");
                // A body may follow, unread: never read it as the next request.
                session.set_keepalive(None);
                let mut resp = ResponseHeader::build(400, Some(4))?;
                resp.insert_header("content-length", "0")?;
                resp.insert_header("cache-control", "no-store")?;
                resp.insert_header("connection", "close")?;
                session.write_response_header(Box::new(resp), true).await?;
                return Ok(true);
            }
        }
        // RFC 9112 §9.3.2: pipelined requests are answered in order.
        session.as_mut().set_pipelining_enabled(true);
        ctx.has_body = request_has_body(session);
        // The head is in: from here the client is held to the body rate (if any), and
        // after the response to the keep-alive timeout.
        if let Some(guard) = conn_guard::guard_of(session) {
            guard.head_done(ctx.has_body, raw.as_ref().map(|r| r.len()));
        }
        // Only where the request allows keep-alive (not HTTP/1.0 without it, not `close`).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(clients.keepalive_timeout.as_secs().max(1)));
        }
        // Writes to the client: idle between two writes (nginx `send_timeout`), or a
        // minimum rate; never a total, so a download lasts as long as it progresses.
        if clients.send_min_rate > 0 {
            session.set_min_send_rate(Some(clients.send_min_rate as usize));
        } else {
            session.set_write_timeout(Some(clients.send_timeout));
        }
        crate::metrics::get().inflight_requests.inc();
        ctx.start = Instant::now();
        ctx.peer_ip = socket_ip(session.client_addr());
        ctx.client_ip = client_ip(
            &config,
            ctx.peer_ip,
            header(session.req_header(), "x-forwarded-for"),
        );

        // 0b. One canonical path (src/policy/path.rs), computed once: the request's URI
        // is replaced by it, so every later phase (route, limits, room, feature, cache
        // key, purge on write, access log) reads the same form, and it is what the ENT
        // receives. A target without one is a 400, never passed through.
        if let Err(e) = canonicalize(session.req_header_mut(), &config.server.paths) {
            ctx.config = Some(config.clone());
            self.respond_problem(session, ctx, Problem::BadRequest, None, &[])
                .await?;
            ctx.decision = Some(e.code());
            return Ok(true);
        }
        // One spelling of the host (`policy::host`, syntax checked by hygiene): lower-case,
        // no trailing dot, no default port, so the route, the cache key, the access log and
        // the ENT read one host. Over HTTP/2 a `Host` naming another host than
        // `:authority` is refused (RFC 9113 §8.3.1).
        // A port that is not this deployment's is another server's: 421 (the ENT would
        // write it into links the shared cache serves to everyone).
        let mut listening = Vec::new();
        let warm = self.is_warm_request(session, ctx);
        let ports = host_ports(
            &config,
            session,
            self.tls,
            trusted_peer,
            warm,
            &mut listening,
        );
        if let Err(r) = hygiene::spell_host(session.req_header_mut(), &ports) {
            ctx.config = Some(config.clone());
            let problem = match r.status {
                421 => Problem::Misdirected,
                _ => Problem::BadRequest,
            };
            self.respond_problem(session, ctx, problem, None, &[])
                .await?;
            ctx.decision = Some(r.reason);
            return Ok(true);
        }
        // The form every policy decision compares: case folded, trailing dots and spaces
        // of segments dropped, front controllers skipped (`policy_path`), so a spelling
        // only a lenient ENT reads as a protected path meets that path's policy.
        let path = session.req_header().uri.path();
        match crate::policy::path::policy_path(path.as_bytes(), &config.server.front_controllers) {
            Ok(k) if *k == *path.as_bytes() => {}
            Ok(k) => ctx.policy_path = Some(String::from_utf8_lossy(&k).into_owned()),
            Err(e) => {
                ctx.config = Some(config.clone());
                self.respond_problem(session, ctx, Problem::BadRequest, None, &[])
                    .await?;
                ctx.decision = Some(e.code());
                return Ok(true);
            }
        }

        // The queue page's status URL belongs to ecluse, whatever the routes say. (Its
        // fast path below pingora, conn_guard.rs, only takes the exact canonical spelling, so
        // any other spelling of it arrives here normalized and gets the same answer.)
        if policy_path(ctx, session.req_header()) == STATUS_PATH {
            ctx.config = Some(config.clone());
            self.queue_status(session, ctx, &config).await?;
            return Ok(true);
        }

        // 1. Route.
        let route = {
            let req = session.req_header();
            let host = req
                .uri
                .host()
                .or_else(|| {
                    req.headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .map(host_without_port)
                .unwrap_or("");
            config
                .router
                .find(host, policy_path(ctx, req).as_bytes(), &req.method)
                .cloned()
        };
        ctx.config = Some(config);
        let Some(route) = route else {
            self.respond_problem(session, ctx, Problem::NoRoute, None, &[])
                .await?;
            return Ok(true);
        };
        ctx.route = Some(route.clone());
        ctx.warming = self.is_warm_request(session, ctx);

        // 2. Rate limits: cheapest rejection first, before any origin slot is taken.
        if !route.limits.is_empty() && !ctx.warming && self.rate_limit(session, ctx, &route).await?
        {
            return Ok(true);
        }

        // 3. Degradation gate: a switched-off feature answers 503 now, before any other
        // work (and before a byte of an upload is read).
        if let Some(feature) = &route.feature {
            let state = &self.app.degrade;
            if state.is_disabled(feature) {
                let class = self.class_label(session, ctx);
                crate::metrics::get()
                    .shed
                    .with_label_values(&[&route.origin.name, "feature_off", class])
                    .inc();
                let cfg = ctx.config.clone();
                let msg = cfg
                    .as_ref()
                    .and_then(|c| c.degradation.as_ref())
                    .map(|d| d.message(feature));
                let req = session.req_header();
                let lang = pages::negotiate_lang(header(req, "accept-language"));
                let json = pages::wants_json(header(req, "accept"));
                let fr = lang == pages::Lang::Fr;
                let (text, name, retry) = match &msg {
                    Some(m) => (
                        if fr { m.fr.clone() } else { m.en.clone() },
                        if fr {
                            m.name_fr.clone()
                        } else {
                            m.name_en.clone()
                        },
                        m.retry_after.as_secs().max(1),
                    ),
                    None => (crate::policy::degrade::default_message(None, fr), None, 300),
                };
                let set = cfg
                    .as_ref()
                    .map(|c| c.pages.clone())
                    .unwrap_or_else(pages::Pages::builtin);
                let page = pages::feature_off_page(
                    &set,
                    lang,
                    json,
                    feature,
                    name.as_deref(),
                    &text,
                    retry,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                );
                ctx.decision = Some("feature_off");
                let mut resp = ResponseHeader::build(503, Some(5))?;
                resp.insert_header("content-type", page.content_type)?;
                resp.insert_header("content-length", page.body.len().to_string())?;
                resp.insert_header("cache-control", "no-store")?;
                resp.insert_header("retry-after", retry.to_string())?;
                if let Some(cs) = self.local_cache_status(session, ctx, 503) {
                    resp.insert_header("cache-status", cs)?;
                }
                if ctx.has_body {
                    session.set_keepalive(None);
                }
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(page.body), true).await?;
                return Ok(true);
            }
        }

        // 3b. What the feature's drain closes when it is switched off: everything on its
        // routes but uploads (a drain never cuts what someone is sending).
        if let (Some(feature), false) = (&route.feature, ctx.has_body) {
            let lang = pages::negotiate_lang(header(session.req_header(), "accept-language"));
            let d = crate::drain::registry().open(feature, lang == pages::Lang::Fr);
            if let Some(guard) = conn_guard::guard_of(session) {
                guard.watch_drain(d.clone());
            }
            ctx.drain = Some(d);
        }

        // 4. Waiting room: a request without a valid admission is queued.
        if let Some(room) = route.room.clone().filter(|_| !ctx.warming) {
            if self.waiting_room(session, ctx, &room).await? {
                return Ok(true);
            }
        }

        // 4b. Request body: the route's size limit; on a buffering route the whole body is
        // read now, before any origin slot is taken (`body.rs`), so a slow upload holds
        // memory or disk, never the ENT.
        if ctx.has_body && self.receive_body(session, ctx, &route).await? {
            return Ok(true);
        }

        // 5. Cache lookup happens next (pingora's `request_cache_filter` and friends);
        // 6. the origin permit is taken in `proxy_upstream_filter`, on a miss only.
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        self.enable_cache(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        Ok(self.cache_key(session, ctx))
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.stored_found = true;
        let revalidate = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .is_some_and(|c| c.mode == CacheMode::Revalidate);
        if !revalidate {
            // A survival level keeps serving what is stored, however old, and spares the
            // origin the refetch.
            if !is_fresh && self.app.degrade.serve_stale() {
                ctx.forced_stale = true;
                return Ok(Some(ForcedFreshness::ForceFresh));
            }
            return Ok(None);
        }
        // Authorize-then-serve: every request asks the origin with its own credentials.
        // No cache lock: one student's revalidation must not stand in for another's.
        session.cache.set_cache_lock(None, None);
        if self.bind_stored_copy(session, meta, ctx) {
            // Its body differs by credential: the stored copy is nobody's to share.
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        if is_fresh {
            Ok(Some(ForcedFreshness::ForceExpiredServeStale {
                expired_at: None,
            }))
        } else {
            Ok(None)
        }
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let c = crate::policy::cache_rules::response_cacheable(
            policy,
            resp,
            ctx.credentialed,
            SystemTime::now(),
        );
        let c = if policy.mode == CacheMode::Revalidate {
            self.revalidate_cacheable(session, ctx, c)
        } else {
            c
        };
        ctx.cache_storable = c.is_cacheable();
        Ok(c)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        // The client's own validators are answered here (pingora strips them from the
        // origin request): on a `revalidate` route, never with a 304 about a stored copy
        // these credentials were not given.
        Ok(self.may_answer_not_modified(session, ctx)
            && pingora_core::protocols::http::conditional_filter::not_modified_filter(
                session.req_header(),
                resp,
            ))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora_cache::key::HashBinary> {
        let v = crate::policy::cache_rules::variance(meta, req);
        ctx.binding.variance = v;
        v
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        let mode = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .map(|c| c.mode);
        match error {
            // stale-while-revalidate: never in revalidate mode (no copy without the
            // origin's say-so for this user).
            None => mode != Some(CacheMode::Revalidate),
            Some(e) => {
                let origin_failed = e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500);
                // In revalidate mode the origin cannot say yes or no now: the stored
                // copy goes only to credentials it authorized for this object within the
                // stale_if_error window (`cache::auth`). Anyone else gets the error.
                // A copy looked up before a purge that came while the origin worked is
                // what ops removed: never served after it.
                let purged = self.purged_while_in_flight(session);
                let serve = origin_failed
                    && !purged
                    && (mode != Some(CacheMode::Revalidate)
                        || self.authorized_recently(session, ctx));
                match (serve, e.etype()) {
                    (true, ErrorType::HTTPStatus(s)) => ctx.stale_error_status = Some(*s),
                    // The exchange with the origin broke: pingora will not reuse this
                    // client's connection after the stale answer, so the answer must say
                    // so (`Connection: close`), or the client's next request on it meets
                    // a reset.
                    (true, _) => session.set_keepalive(None),
                    _ => {}
                }
                serve
            }
        }
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // 6. Origin limit: refuse fast rather than queue on a saturated ENT. On a buffering
        // route the body is already here, whole (`body.rs`): the slot is held only while
        // the origin works, never while a client trickles. On a streaming route the body
        // is not read yet: an upload is refused before a byte of it is accepted. Who is
        // refused first, lowest priority first:
        // - anonymous visitors: the adaptive limit, no wait;
        // - admitted waiting-room sessions: a 10% reserve above it, and a wait of up to
        //   `queue_timeout` for a slot;
        // - priority classes (staff): never shed by the adaptive limit, only held to the
        //   hard `max_inflight`; they wait for a slot ahead of everyone else, up to
        //   `queue_timeout`, or for an upload up to the origin's `total_timeout` (their
        //   uploads are not shed; past that wait it is refused: a buffered body is dropped
        //   unsent, a streaming one is still unread). The wait holds no slot and, with the
        //   body buffered, no client bytes either, so the long wait costs the ENT nothing.
        let Some(route) = ctx.route.clone() else {
            return Ok(true);
        };
        let origin = &route.origin;
        let hard = origin.max_inflight.map(|m| m as usize);
        let priority = self.class_of(session, ctx).is_some();
        let admitted = ctx.room_session.is_some();
        let limit = origin.shared.current_limit(origin.max_inflight).map(|l| {
            let hard = hard.unwrap_or(usize::MAX);
            if priority {
                hard
            } else if admitted {
                (l + (l / 10).max(1)).min(hard)
            } else {
                l
            }
        });
        let wait = if priority && ctx.has_body {
            origin.total_timeout.max(origin.queue_timeout)
        } else if priority || admitted {
            origin.queue_timeout
        } else {
            Duration::ZERO
        };
        match OriginPermit::acquire(&origin.shared, limit, wait, priority).await {
            Some(mut p) => {
                p.set_client(signal_keys(session, ctx).0);
                ctx.permit = Some(p);
            }
            None => {
                let class = self.class_label(session, ctx);
                crate::metrics::get()
                    .shed
                    .with_label_values(&[&origin.name, "concurrency", class])
                    .inc();
                origin.metrics.rejected_max_inflight.inc();
                self.respond_problem(session, ctx, Problem::OriginBusy, Some(1), &[])
                    .await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(origin) = ctx.origin().cloned() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer without a route");
        };
        let idx = upstream::select(&origin.shared, &origin.servers, origin.balance, ctx.tried);
        let Some(idx) = idx else {
            origin.metrics.rejected_no_server.inc();
            ctx.decision = Some("no_server");
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("origin {}: no server left to try", origin.name),
            );
        };
        ctx.tried |= 1u64 << idx;
        ctx.last_idx = Some(idx);
        ctx.attempts += 1;
        if ctx.attempts > 1 {
            origin.metrics.retries.inc();
        }
        let server = origin.servers[idx].clone();
        ctx.upstream_addr = Some(server.addr);
        let now = Instant::now();
        let first_start = *ctx.upstream_start.get_or_insert(now);
        let mut peer = HttpPeer::new(server.addr, origin.tls, origin.sni.clone());
        if let Some(t) = &origin.tls_client {
            // The origin's TLS settings, the same the health checks use.
            peer.options.verify_cert = t.verify;
            peer.options.verify_hostname = t.verify;
            peer.options.ca = t.ca.clone();
            peer.client_cert_key = t.client.clone();
        }
        peer.options.connection_timeout = Some(origin.connect_timeout);
        peer.options.idle_timeout = Some(origin.idle_timeout);
        // Timeouts mean what nginx's mean: each read and each write from and to the
        // origin is bounded, the whole exchange only when ops set a total.
        let mut read = origin.read_timeout;
        let mut write = origin.write_timeout;
        let mut connect = origin.connect_timeout;
        if session.is_upgrade_req() {
            // pingora's read timeout would also bound each read of the upgraded
            // connection (a visio whose origin is quiet for 30 s would be cut): it is
            // off, the connection guard bounds the wait for the answer instead, and the
            // upgraded connection has `tunnel_idle_timeout` (either way, counted there).
            if let Some(g) = conn_guard::guard_of(session) {
                g.await_origin(now + origin.connect_timeout + origin.read_timeout);
                peer.options.read_timeout = None;
            } else {
                peer.options.read_timeout = Some(read);
            }
            peer.options.write_timeout = Some(write.max(origin.tunnel_idle_timeout));
        } else {
            if let Some(total) = ctx.route.as_ref().and_then(|r| r.total_limit) {
                // The total bounds every read: the origin can't keep us past it by
                // trickling bytes just under `read_timeout`.
                let remaining = total
                    .saturating_sub(now.duration_since(first_start))
                    .max(Duration::from_millis(1));
                read = read.min(remaining);
                write = write.min(remaining);
                connect = connect.min(remaining);
            }
            peer.options.read_timeout = Some(read);
            peer.options.write_timeout = Some(write);
        }
        peer.options.total_connection_timeout = Some(connect);
        ctx.server = Some(InflightGuard::new(server));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let trusted_peer = match (ctx.peer_ip, ctx.config.as_ref()) {
            (Some(ip), Some(c)) => c.server.is_trusted(ip),
            _ => false,
        };
        let peer = ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let req = session.req_header();
        // Every forwarding header an untrusted peer sent is gone already (request_filter);
        // what is left came from a trusted proxy and is extended.
        let xff_in = header(req, "x-forwarded-for").filter(|_| trusted_peer);
        // From an untrusted peer, an incoming X-Forwarded-For is the client's own words:
        // replace it. From our load balancer, extend the chain.
        let xff = match xff_in {
            Some(prev) if !prev.is_empty() => {
                format!("{}, {peer}", String::from_utf8_lossy(prev))
            }
            _ => peer.clone(),
        };
        upstream_request.insert_header("x-forwarded-for", xff)?;
        let proto_in = header(req, "x-forwarded-proto")
            .filter(|_| trusted_peer)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let warm = self.warm_scheme(session, ctx);
        let hop_proto = warm.unwrap_or(if self.tls { "https" } else { "http" });
        let proto = match warm {
            // Warming: the origin sees the scheme students will use.
            Some(s) => s.to_string(),
            None => proto_in.unwrap_or_else(|| hop_proto.to_string()),
        };
        let https = proto == "https";
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        // The client's address as every ecluse policy saw it (behind a trusted proxy:
        // the right-most untrusted address of its X-Forwarded-For).
        if let Some(ip) = ctx.client_ip {
            upstream_request.insert_header("x-real-ip", ip.to_string())?;
        }
        // The Host the client asked for (HTTP/2: the authority), and the port it reached.
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| header(req, "host"))
            .filter(|h| !h.is_empty() && h.iter().all(|b| (0x21..0x7f).contains(b)))
            .map(|h| String::from_utf8_lossy(h).into_owned());
        if !(trusted_peer && req.headers.contains_key("x-forwarded-host")) {
            match &host {
                Some(h) => upstream_request.insert_header("x-forwarded-host", h.as_str())?,
                None => {
                    upstream_request.remove_header("x-forwarded-host");
                }
            }
        }
        if !(trusted_peer && req.headers.contains_key("x-forwarded-port")) {
            // The port of the host the client named (its default when it names none), not
            // the listener's: what the ENT reads here must follow the cache key, or a client
            // on another listener would get its port written into a shared page.
            let port = host
                .as_deref()
                .map(|h| crate::policy::host::port_of(h.as_bytes(), https))
                .or_else(|| {
                    session
                        .server_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.port())
                });
            if let Some(port) = port {
                upstream_request.insert_header("x-forwarded-port", port.to_string())?;
            }
        }
        let fwd = ctx.config.as_ref().map(|c| &c.server.forwarding);
        if fwd.is_some_and(|f| f.forwarded_header) {
            let ours = forwarding::forwarded_element(
                &forwarding::forwarded_node(ctx.peer_ip),
                host.as_deref().unwrap_or(""),
                hop_proto,
            );
            let incoming = header(req, "forwarded")
                .filter(|v| trusted_peer && !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let value = match (incoming, xff_in) {
                (Some(prev), _) => format!("{prev}, {ours}"),
                // A trusted proxy that speaks only X-Forwarded-For: its chain, hop by hop.
                (None, Some(chain)) if !chain.is_empty() => {
                    let mut v: Vec<String> = String::from_utf8_lossy(chain)
                        .split(',')
                        .take(32)
                        .map(|a| {
                            let node = a.trim().parse::<IpAddr>().ok();
                            format!(
                                "for={}",
                                forwarding::forwarded_value(&forwarding::forwarded_node(node))
                            )
                        })
                        .collect();
                    v.push(ours);
                    v.join(", ")
                }
                _ => ours,
            };
            upstream_request.insert_header("forwarded", value)?;
        }
        if let Some(whole) = &ctx.spooled {
            body::frame_upstream(upstream_request, whole)?;
        }
        upstream_request.remove_header(crate::admin::WARM_HEADER);
        upstream_request.remove_header(crate::admin::WARM_SCHEME_HEADER);
        if session.cache.enabled() {
            // Fetch the whole object (HEAD becomes GET, client ranges and conditions are
            // ours to answer) and, when a stored copy exists, ask with its validators.
            pingora_cache::filters::upstream::request_filter(
                upstream_request,
                session.cache.maybe_cache_meta(),
            );
            // On a `revalidate` route, validators only where the origin's 304 says which
            // bytes this user may have.
            self.revalidate_conditionals(session, upstream_request, ctx);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.maybe_tunnel(session, upstream_response, ctx);
        if ctx.route.as_ref().is_some_and(|r| r.cache.is_some()) {
            // Internal bookkeeping of the stored copy: never for the client.
            upstream_response.remove_header(crate::cache::auth::VERSION_HEADER);
            if ctx.binding.untrusted_304
                && matches!(
                    session.cache.phase(),
                    CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_)
                )
            {
                // The origin answered 304 to a question that does not say which bytes
                // (no validator sent, or another ETag back): the stored body may be
                // someone else's. An error, never a leak.
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    "revalidate: a 304 that does not name the stored version",
                );
            }
            let status = upstream_response.status.as_u16();
            let from_cache = matches!(
                session.cache.phase(),
                CachePhase::Hit
                    | CachePhase::Stale
                    | CachePhase::StaleUpdating
                    | CachePhase::Revalidated
                    | CachePhase::RevalidatedNoCache(_)
            );
            if from_cache {
                // A cookie belongs to the one user it was sent to: a response built from
                // the cache carries only this request's own.
                upstream_response.remove_header(&http::header::SET_COOKIE);
                for c in std::mem::take(&mut ctx.upstream_set_cookies) {
                    upstream_response.append_header(http::header::SET_COOKIE, c)?;
                }
            }
            let cs = self.cache_status(session, ctx, status);
            upstream_response.insert_header("cache-status", cs)?;
            self.invalidate_after_write(session, ctx, upstream_response);
        }
        if let Some((policy, limit)) = ctx.rl_headers.take() {
            upstream_response.insert_header("ratelimit-policy", policy)?;
            upstream_response.insert_header("ratelimit", limit)?;
        }
        // The origin ends the session (logout): free its place and drop the cookie.
        if let Some((room, bucket, _)) = &ctx.room_session {
            if upstream_response.headers.contains_key(&room.end_header) {
                upstream_response.remove_header(&room.end_header);
                let params = room.effective();
                if let Some((_, _, t)) = &ctx.room_session {
                    match self.fleet_room(room) {
                        Some((fr, _)) => fr.end(&params, t.class, t.number, *bucket, now_ms()),
                        None => {
                            if let Some(fr) = self.fleet_room_alone(room) {
                                // Redis is away: the fleet learns of it when it is back.
                                fr.end(&params, t.class, t.number, *bucket, now_ms());
                                fr.mark_diverged();
                            }
                            room.shared
                                .lock()
                                .end(&params, t.class, t.number, *bucket, now_ms())
                        }
                    }
                }
                let secure = ctx.room_secure;
                ctx.set_cookie = Some(format!(
                    "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
                    room.cookie_name,
                    if secure { "; Secure" } else { "" }
                ));
            }
        }
        if let Some(c) = ctx.set_cookie.take() {
            upstream_response.append_header("set-cookie", c)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_head = Some((status, Instant::now()));
        self.record_authorization(session, ctx, upstream_response);
        if session.cache.enabled() {
            ctx.upstream_set_cookies = upstream_response
                .headers
                .get_all(http::header::SET_COOKIE)
                .iter()
                .cloned()
                .collect();
        }
        if let (Some(origin), Some(_)) = (ctx.origin().cloned(), ctx.server.as_ref()) {
            if matches!(status, 502..=504) {
                origin.metrics.err_status_5xx.inc();
                passive_failure(session, ctx, &origin);
            } else if let Some(g) = ctx.server.as_ref() {
                g.server().record_success();
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.record_answered_version(session, body.as_deref(), end_of_stream, ctx);
        // A total only where ops set one, and never on an upgraded connection.
        let total = ctx.route.as_ref().and_then(|r| r.total_limit);
        if let (Some(route), Some(total), Some(t0)) = (&ctx.route, total, ctx.upstream_start) {
            if t0.elapsed() > total && !session.was_upgraded() {
                let origin = &route.origin;
                origin.metrics.err_timeout.inc();
                return Error::e_explain(
                    ErrorType::ReadTimedout,
                    format!(
                        "route {}: total_timeout {total:?} exceeded (origin {})",
                        route.name, origin.name
                    ),
                );
            }
        }
        Ok(None)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // HTTP/1 connections are closed by their guard even when nothing flows (a
        // WebSocket with its close frame, which an error here would pre-empt); this
        // reaches HTTP/2 streams (no guard) at their next chunk.
        if let Some(reason) = ctx
            .drain
            .as_ref()
            .and_then(|d| d.closing())
            .filter(|_| conn_guard::guard_of(session).is_none())
        {
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                format!("feature drained: {reason}"),
            );
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(origin) = ctx.origin().cloned() {
            origin.metrics.err_connect.inc();
            if let Some(g) = ctx.server.take() {
                // Nothing of the request was sent: the server's failure, whoever asked.
                g.server().record_failure(
                    origin.passive_max_failures,
                    origin.passive_ejection,
                    None,
                    || 0,
                );
            }
            // Nothing reached the origin: safe to try another server, whatever the method.
            let more_servers = ctx.tried.count_ones() < origin.servers.len() as u32;
            e.set_retry(ctx.attempts <= origin.retries && more_servers);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let idempotent = session.req_header().method.is_idempotent();
        let budget_left = ctx
            .origin()
            .map(|o| ctx.attempts <= o.retries)
            .unwrap_or(false);
        // Only a stale pooled connection is worth retrying, and only when replaying is
        // harmless: an idempotent method whose request carried no body at all.
        // `ReusedOnly` means "retriable if the connection was a pooled one".
        let retriable = match e.retry {
            pingora_error::RetryType::Decided(b) => b,
            pingora_error::RetryType::ReusedOnly => client_reused,
        };
        let retry = retriable && client_reused && idempotent && !ctx.has_body && budget_left;
        e.set_retry(retry);
        if retry {
            // The server is fine, the pooled connection was stale: the same server may
            // be picked again, on a fresh connection.
            if let Some(i) = ctx.last_idx {
                ctx.tried &= !(1u64 << i);
            }
        }
        if let Some(origin) = ctx.origin() {
            if !retry {
                match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                        origin.metrics.err_timeout.inc()
                    }
                    ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        origin.metrics.err_read.inc()
                    }
                    _ => origin.metrics.err_other.inc(),
                }
            }
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let origin_slow = conn_guard::guard_of(session).is_some_and(|g| g.origin_timed_out());
        if origin_slow {
            if let Some(o) = ctx.origin() {
                o.metrics.err_timeout.inc();
            }
        }
        let problem = match e.etype() {
            _ if origin_slow => Problem::GatewayTimeout,
            ErrorType::HTTPStatus(code) if *code < 500 => {
                // pingora's own 4xx (e.g. a malformed request): plain and short.
                let code = *code;
                if session.response_written().is_none() {
                    let _ = session.respond_error(code).await;
                }
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: false,
                };
            }
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream || ctx.server.is_some() =>
            {
                Problem::GatewayTimeout
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Problem::BadGateway,
                ErrorSource::Downstream => {
                    if matches!(
                        e.etype(),
                        ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
                    ) {
                        // The client is gone: nobody to answer.
                        return FailToProxy {
                            error_code: 0,
                            can_reuse_downstream: false,
                        };
                    }
                    Problem::BadRequest
                }
                _ => {
                    if ctx.decision == Some("no_server") || ctx.server.is_some() {
                        Problem::BadGateway
                    } else {
                        Problem::Internal
                    }
                }
            },
        };
        // Passive health: a connection that broke mid-exchange counts against the server.
        if let (Some(origin), true) = (ctx.origin().cloned(), ctx.server.is_some()) {
            if !ctx.failure_recorded && e.esource() == &ErrorSource::Upstream {
                passive_failure(session, ctx, &origin);
            }
        }
        if session.response_written().is_some() {
            // Headers already went out: the only honest signal left is to cut the
            // connection, so the client sees a truncated response, never a clean one.
            return FailToProxy {
                error_code: problem.status(),
                can_reuse_downstream: false,
            };
        }
        // The connection is not reused after a failure: say so (`Connection: close`), or a
        // client that sends its next request on it meets a reset.
        session.set_keepalive(None);
        if self
            .respond_problem(session, ctx, problem, Some(2), &[])
            .await
            .is_err()
        {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        FailToProxy {
            error_code: problem.status(),
            can_reuse_downstream: false,
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &ctx.spooled {
            Some(whole) => body::replay(whole, body, end_of_stream)?,
            None => body::count_streamed(ctx, body)?,
        }
        if end_of_stream {
            if let Some(guard) = conn_guard::guard_of(session) {
                guard.body_done();
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(guard) = conn_guard::guard_of(session) {
            guard.request_done();
        }
        let m = crate::metrics::get();
        // request_filter counts the request in; a request that failed before it (bad
        // request head) never did.
        if ctx.config.is_some() {
            m.inflight_requests.dec();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx.start.elapsed();
        // A client too slow reading its response (`send_timeout` / `send_min_rate`).
        if let Some(err) = e.filter(|err| {
            err.etype() == &ErrorType::WriteTimedout && err.esource() != &ErrorSource::Upstream
        }) {
            m.client_timeouts.with_label_values(&["send"]).inc();
            log::info!(
                "client {} too slow reading the response of {}: {err}",
                ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                session.req_header().uri.path()
            );
        }
        // Signals for degradation and adaptive concurrency: how the origin answered. An
        // upgraded connection's length is the users', not the origin's latency; a drained
        // one ends by our hand, not the origin's failure.
        let drained = ctx.drain.as_ref().is_some_and(|d| d.closing().is_some());
        if let (Some(route), Some(t0), false) = (
            ctx.route.clone(),
            ctx.upstream_start,
            session.was_upgraded() || drained,
        ) {
            if let Some((failure, at)) = origin_outcome(ctx.upstream_head, e) {
                let (client, url) = signal_keys(session, ctx);
                let x = crate::policy::signals::Exchange {
                    latency_ms: at.saturating_duration_since(t0).as_secs_f64() * 1000.0,
                    failure,
                    client,
                    url,
                };
                route.origin.shared.record(now_ms(), &x);
            }
        }
        let cache_result = match (&ctx.route, self.app.cache.get()) {
            (Some(route), Some(c)) if route.cache.is_some() => {
                let word = if ctx.forced_stale {
                    "stale"
                } else {
                    cache_phase::result_word(session.cache.phase())
                };
                c.metrics
                    .requests
                    .with_label_values(&[&route.name, word])
                    .inc();
                if cache_phase::fetch_saved(session.cache.phase()) {
                    c.metrics
                        .fetches_saved
                        .with_label_values(&[&route.name])
                        .inc();
                }
                Some(word)
            }
            _ => None,
        };
        if let Some(route) = &ctx.route {
            route.metrics.by_class[crate::metrics::status_class(status)].inc();
            route.metrics.duration.observe(elapsed.as_secs_f64());
        }
        if self.app.access_log.enabled() {
            let req = session.req_header();
            let host = req
                .uri
                .host()
                .or_else(|| {
                    req.headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .unwrap_or("");
            if ctx.request_id.is_empty() {
                // pingora refused the head before `request_filter` ran.
                ctx.request_id = crate::policy::request_id::generate();
            }
            let redact = ctx
                .config
                .as_ref()
                .map(|c| c.access_log.redact_query.as_slice())
                .unwrap_or(&[]);
            let entry = Entry {
                time: rfc3339(ctx.wall_start),
                request_id: &ctx.request_id,
                client_ip: ctx.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                method: req.method.as_str(),
                path: req.uri.path(),
                query: req
                    .uri
                    .query()
                    .map(|q| crate::access_log::redact_query(q, redact)),
                host,
                user_agent: log_user_agent(req.headers.get(http::header::USER_AGENT)),
                status,
                route: ctx.route.as_ref().map(|r| r.name.as_str()),
                upstream: ctx
                    .server
                    .as_ref()
                    .map(|g| g.server().addr)
                    .or(ctx.upstream_addr)
                    .map(|a| a.to_string()),
                duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                bytes_sent: session.body_bytes_sent(),
                attempts: ctx.attempts,
                decision: ctx.decision,
                rate_limit: ctx.rl_result,
                queue: ctx.room_decision,
                cache: cache_result,
                level: ctx.config.as_ref().and_then(|c| self.level_name(c)),
                error: e.map(|e| e.to_string()),
            };
            self.app.access_log.log(&entry);
        }
        // Release the server and origin slots now rather than whenever the ctx drops.
        ctx.server = None;
        ctx.permit = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_text;
    use crate::config::runtime::Retained;
    use std::path::Path;

    fn cfg(trusted: &str) -> Config {
        let y = format!(
            "listen: [\"127.0.0.1:0\"]\nserver: {{ trusted_proxies: [{trusted}] }}\norigins:\n  o: {{ servers: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: r, origin: o }}\n"
        );
        check_text(&y, Path::new("t.yaml"), &Retained::default(), 1).expect("valid")
    }

    #[test]
    fn client_ip_from_socket_unless_trusted() {
        let c = cfg("\"10.0.0.0/8\"");
        let lb: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "198.51.100.7".parse().expect("ip");
        // Untrusted peer: its XFF is ignored.
        assert_eq!(
            client_ip(&c, Some(stranger), Some(b"1.2.3.4")),
            Some(stranger)
        );
        // Trusted peer: right-most untrusted hop is the client.
        assert_eq!(
            client_ip(&c, Some(lb), Some(b"6.6.6.6, 203.0.113.9, 10.9.9.9")),
            Some("203.0.113.9".parse().expect("ip"))
        );
        // Garbage in the chain stops at the last good hop.
        assert_eq!(
            client_ip(&c, Some(lb), Some(b"nonsense, 10.9.9.9")),
            Some("10.9.9.9".parse().expect("ip"))
        );
        assert_eq!(client_ip(&c, Some(lb), None), Some(lb));
    }
}
