//! The request phase (`request_filter`), steps 0 to 4 of the request path: hygiene, the
//! edge's forwarding headers, the one canonical path and host, the status URL, the route,
//! then each step in its own file (limits, feature gate, room, request body).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::{client_ip, header, policy_path};
use super::queue_page::STATUS_PATH;
use super::{conn_guard, hygiene, request_id, Ctx, EcluseProxy};
use crate::config::Config;
use crate::pages::{self, Problem};
use crate::policy::forwarding;
use crate::policy::route::host_without_port;

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
) -> crate::policy::host::Ports<'c> {
    let req = session.req_header();
    let says_https =
        |name: &str| header(req, name).is_some_and(|p| p.eq_ignore_ascii_case(b"https"));
    let https = tls
        || (warm && says_https(crate::admin::WARM_SCHEME_HEADER))
        || (trusted_peer && says_https("x-forwarded-proto"));
    let listening = if tls {
        config
            .tls
            .as_ref()
            .map(|t| t.listen.as_slice())
            .unwrap_or_default()
    } else {
        config.listen.as_slice()
    };
    // Behind a trusted proxy, the port it says the client reached (`X-Forwarded-Port`).
    let forwarded = trusted_peer
        .then(|| header(req, "x-forwarded-port"))
        .flatten()
        .and_then(|p| std::str::from_utf8(p).ok()?.trim().parse::<u16>().ok());
    crate::policy::host::Ports {
        default: if https { 443 } else { 80 },
        local: session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.port()),
        listening,
        forwarded,
        public: &config.server.public_ports,
        any: warm,
    }
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
    pub(super) async fn admit_request(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
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
        let warm = self.is_warm_request(session, ctx);
        let ports = host_ports(&config, session, self.tls, trusted_peer, warm);
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
        // fast path below pingora, fast_status.rs, only takes the exact canonical spelling, so
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
        if self.feature_gate(session, ctx, &route).await? {
            return Ok(true);
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
}
