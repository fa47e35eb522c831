//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`, the status page `/status`
//! (open), `/admin/state` and the mutating `/admin/*` endpoints (bearer token when
//! `admin.token_file` is set; see `OPEN_ENDPOINTS`), and the status page's buttons
//! (`POST /status/action`, the token in the form: [`status`]).
//!
//! It runs on its own small server (hyper), apart from the proxy listeners, so that ops
//! can still see and steer ecluse when the proxy side is saturated.

mod browser_guard;
mod cache_endpoints;
pub mod status;

pub use cache_endpoints::{WARM_HEADER, WARM_SCHEME_HEADER};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::app::App;

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn text_resp(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Resp {
    json_resp(status, json!({ "error": code, "message": message.into() }))
}

/// Whether a request to a guarded endpoint (`access`) may proceed: with a token configured, a constant-time
/// check of `Authorization: Bearer …`; without one, only a client on this machine
/// (`peer` on loopback) unless ops opted out with `insecure_open_admin_network`. The
/// config refuses a tokenless non-loopback listener already (`config::runtime::
/// admin_exposure`); this is the same rule per connection, so that no path around the
/// check at load (a listener given on the command line, a reload) opens the API.
fn authorized(app: &App, req: &Request<Incoming>, peer: Option<SocketAddr>) -> bool {
    let cfg = app.config();
    let Some(token) = cfg.admin.token.as_ref() else {
        // Without a token, a loopback peer may be a browser steered by another site:
        // its cross-site posts and rebound host names are refused (`browser_guard`).
        let on_this_machine = browser_guard::loopback_host(req.headers())
            && peer.is_some_and(|p| crate::config::runtime::is_loopback(p.ip()));
        return browser_guard::same_origin(req.headers())
            && (cfg.admin.insecure_open_network || on_this_machine);
    };
    let Some(given) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    use subtle::ConstantTimeEq;
    // Comparing lengths first leaks only the length, which the token file's owner chose.
    given.len() == token.0.len() && bool::from(given.ct_eq(&token.0))
}

/// Serve the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(status::sample(app.clone(), shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(app, req, Some(peer)).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Resp> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is limited to 64 KiB",
            )
        })?
        .to_bytes();
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Who may call an admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone who reaches the listener: load balancers and Prometheus hold no token.
    Open,
    /// The token when one is configured; without one, loopback peers only (`authorized`).
    Guarded,
    /// The status page's forms: guarded like the rest, but a browser's form cannot send
    /// a header, so the token may come in the body; `status::action` checks it before
    /// doing anything.
    Form,
}

/// The endpoints anyone reaching the listener may call, in one table (`GET` only; any
/// other method gets a 405 there). Every other path, `/admin/state` included and any
/// endpoint added later, is [`Access::Guarded`]: a new endpoint is closed unless it is
/// written here, and the check runs before any dispatch, so an unknown or oddly spelled
/// path (`/admin//state`, `/metrics/../admin/state`) is refused like a known one.
/// `/status` shows what `/metrics` already tells (names from the config and numbers,
/// never an address, a token or a ticket), and `/` only redirects to it.
const OPEN_ENDPOINTS: [&str; 5] = ["/metrics", "/healthz", "/readyz", "/status", "/"];

/// The one path whose token may come in a form's body.
const FORM_ENDPOINT: &str = "/status/action";

fn access(path: &str) -> Access {
    if OPEN_ENDPOINTS.contains(&path) {
        Access::Open
    } else if path == FORM_ENDPOINT {
        Access::Form
    } else {
        Access::Guarded
    }
}

fn unauthorized() -> Resp {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint needs `Authorization: Bearer <token>` (admin.token_file)",
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"ecluse-admin\""),
    );
    r
}

async fn handle(app: Arc<App>, req: Request<Incoming>, peer: Option<SocketAddr>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Room state, node ids and origin addresses are for ops, not for whoever reaches the
    // listener: everything but the open table needs what the mutating endpoints need.
    if access(&path) == Access::Guarded && !authorized(&app, &req, peer) {
        return unauthorized();
    }
    match (method.clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            if let Some(c) = app.cache.get() {
                c.refresh_metrics();
            }
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::get().render())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (Method::GET, "/healthz") => text_resp(StatusCode::OK, "ok\n"),
        (Method::GET, "/readyz") => readyz(&app).await,
        (Method::GET, "/status") => status::page(&app, req.uri().query()),
        (Method::GET, "/") => status::redirect(),
        (Method::POST, FORM_ENDPOINT) => status::action(app.clone(), req, peer).await,
        (Method::GET, "/admin/state") => json_resp(StatusCode::OK, state(&app)),
        (Method::POST, p) if p.starts_with("/admin/") => match p {
            "/admin/reload" => {
                if let Err(r) = read_json(req).await {
                    return r;
                }
                let a = app.clone();
                match tokio::task::spawn_blocking(move || a.reload("admin API")).await {
                    Ok(Ok(outcome)) => json_resp(
                        StatusCode::OK,
                        json!({ "result": if outcome.changed { "reloaded" } else { "unchanged" }, "version": outcome.version, "hash": outcome.hash, "restart_required": outcome.restart_required }),
                    ),
                    Ok(Err(e)) => json_resp(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({ "error": "invalid_config", "message": "the new file was rejected; the running config is unchanged", "diagnostics": e.lines() }),
                    ),
                    Err(_) => error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "reload task failed",
                    ),
                }
            }
            p if p.starts_with("/admin/rooms/") => room_admin(&app, p, req).await,
            "/admin/level" => level_admin(&app, req).await,
            "/admin/cache/purge" => cache_endpoints::purge(&app, req).await,
            "/admin/cache/warm" => cache_endpoints::warm(&app, req).await,
            p if p.starts_with("/admin/features/") => feature_admin(&app, p, req).await,
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no admin endpoint {p}"),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/admin/state" | "/status" | "/") => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
            r
        }
        (_, p) if p.starts_with("/admin/") => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "mutating admin endpoints take POST",
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            r
        }
        (_, FORM_ENDPOINT) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the status page's forms take POST",
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            r
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint {path}"),
        ),
    }
}

fn parse_for(v: &serde_json::Value) -> Result<Option<Duration>, Box<Resp>> {
    match v.get("for") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => crate::config::units::parse_duration(s)
            .map(Some)
            .map_err(|e| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    "bad_value",
                    format!("`for`: {e}"),
                ))
            }),
        Some(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_value",
            "`for` is a duration like \"30m\"",
        ))),
    }
}

/// `POST /admin/level` with `{"level": "busy", "for": "30m"}`; `{"level": null}` returns
/// to automatic.
async fn level_admin(app: &App, req: Request<Incoming>) -> Resp {
    match read_json(req).await {
        Ok(v) => level_apply(app, &v),
        Err(r) => r,
    }
}

/// What `POST /admin/level` does with its body (also the status page's level form).
fn level_apply(app: &App, v: &serde_json::Value) -> Resp {
    let cfg = app.config();
    let Some(d) = &cfg.degradation else {
        return error(
            StatusCode::CONFLICT,
            "no_degradation",
            "the config declares no `degradation` levels",
        );
    };
    let for_ = match parse_for(v) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let level = match v.get("level") {
        Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(name)) => {
            match d.levels.iter().position(|l| &l.name == name) {
                Some(i) => Some(i),
                None => {
                    let names: Vec<&str> = d.levels.iter().map(|l| l.name.as_str()).collect();
                    return error(
                        StatusCode::BAD_REQUEST,
                        "no_such_level",
                        format!("no level `{name}`; levels: {}", names.join(", ")),
                    );
                }
            }
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_value",
                "give `{\"level\": \"NAME\"}` or `{\"level\": null}`",
            )
        }
    };
    app.degrade.force(d, level, for_);
    if let Some(f) = &app.fleet {
        let until = for_.map(|x| crate::clock::now_ms() + x.as_millis() as u64);
        f.publish_level(
            level.and_then(|i| d.levels.get(i)).map(|l| l.name.clone()),
            until,
        );
    }
    let now = crate::clock::now_ms();
    let l = app.degrade.lock().level(now);
    json_resp(
        StatusCode::OK,
        json!({ "level": d.levels.get(l).map(|x| x.name.clone()), "forced": level.is_some(), "for_seconds": for_.map(|f| f.as_secs()) }),
    )
}

/// `POST /admin/features/{name}` with `{"on": false, "for": "1h"}`; `{"on": null}`
/// follows the level again.
async fn feature_admin(app: &App, p: &str, req: Request<Incoming>) -> Resp {
    let name = &p["/admin/features/".len()..];
    match read_json(req).await {
        Ok(v) => feature_apply(app, name, &v),
        Err(r) => r,
    }
}

/// What `POST /admin/features/{name}` does with its body (also the status page's forms).
fn feature_apply(app: &App, name: &str, v: &serde_json::Value) -> Resp {
    let cfg = app.config();
    let Some(d) = &cfg.degradation else {
        return error(
            StatusCode::CONFLICT,
            "no_degradation",
            "the config declares no `degradation`",
        );
    };
    if !d.features.iter().any(|f| f == name) {
        return error(
            StatusCode::NOT_FOUND,
            "no_such_feature",
            format!("no route carries feature `{name}`"),
        );
    }
    let on = match v.get("on") {
        Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_value",
                "give `{\"on\": true|false|null}`",
            )
        }
    };
    let for_ = match parse_for(v) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    app.degrade.force_feature(d, name, on, for_);
    if let Some(f) = &app.fleet {
        let until = for_.map(|x| crate::clock::now_ms() + x.as_millis() as u64);
        f.publish_feature(name, on, until);
    }
    json_resp(
        StatusCode::OK,
        json!({ "feature": name, "on": !app.degrade.is_disabled(name) }),
    )
}

/// `POST /admin/rooms/{name}/pause`, `.../resume`, and `POST /admin/rooms/{name}` with
/// `{"active_users": N, "new_users_per_minute": M}` (in force until the next reload).
async fn room_admin(app: &App, p: &str, req: Request<Incoming>) -> Resp {
    let rest = &p["/admin/rooms/".len()..];
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    let cfg = app.config();
    let Some(room) = cfg.rooms.iter().find(|r| r.name == name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "no_such_room",
            format!("no waiting room `{name}`"),
        );
    };
    match action {
        "pause" | "resume" => room_pause(app, &room, action == "pause").await,
        "" => {
            let v = match read_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            let get = |k: &str| -> Result<Option<u32>, Box<Resp>> {
                match v.get(k) {
                    None | Some(serde_json::Value::Null) => Ok(None),
                    Some(x) => x
                        .as_u64()
                        .filter(|n| *n >= 1 && *n <= u64::from(u32::MAX))
                        .map(|n| Some(n as u32))
                        .ok_or_else(|| {
                            Box::new(error(
                                StatusCode::BAD_REQUEST,
                                "bad_value",
                                format!("`{k}` must be a whole number of at least 1"),
                            ))
                        }),
                }
            };
            let (a, n) = match (get("active_users"), get("new_users_per_minute")) {
                (Ok(a), Ok(n)) => (a, n),
                (Err(r), _) | (_, Err(r)) => return *r,
            };
            if a.is_none() && n.is_none() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_value",
                    "give `active_users` and/or `new_users_per_minute`",
                );
            }
            {
                let mut o = room
                    .shared
                    .overrides
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if a.is_some() {
                    o.active_users = a;
                }
                if n.is_some() {
                    o.new_users_per_minute = n;
                }
            }
            let p = room.effective();
            log::warn!(
                "room {name}: capacity set by the admin API to {} active, {}/min",
                p.active_users,
                p.new_users_per_minute
            );
            json_resp(
                StatusCode::OK,
                json!({ "room": name, "active_users": p.active_users, "new_users_per_minute": p.new_users_per_minute, "until": "next reload" }),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no admin endpoint {p}"),
        ),
    }
}

/// Pause or resume a room's admission (here and, in fleet mode, in Redis): `POST
/// /admin/rooms/{name}/pause|resume` and the status page's buttons.
async fn room_pause(app: &App, room: &crate::waiting_room::Room, paused: bool) -> Resp {
    let name = room.name.as_str();
    room.shared.lock().paused = paused;
    if let Some(f) = &app.fleet {
        let Some(mut conn) = f.conn() else {
            return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis_unreachable",
                    "fleet mode: Redis is unreachable, the shared room cannot be paused or resumed (this node's local room was)",
                );
        };
        if let Err(e) = f.room(name).set_paused(&mut conn, paused).await {
            f.call_failed(&e);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "redis_unreachable",
                format!("fleet mode: cannot reach Redis: {e}"),
            );
        }
    }
    log::warn!(
        "room {name}: admission {} by the admin API",
        if paused { "paused" } else { "resumed" }
    );
    json_resp(StatusCode::OK, json!({ "room": name, "paused": paused }))
}

/// Ready when the config is loaded, every proxy listener (plain and TLS) accepts
/// connections, and we are not draining for shutdown.
async fn readyz(app: &App) -> Resp {
    if app.draining.load(Ordering::Relaxed) {
        return text_resp(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if !app.proxy_ready.load(Ordering::Relaxed) {
        // Each listener is its own pingora service, started on its own: the TLS one can
        // come up after the plain one.
        let bound = app.bound.get().map(|v| v.as_slice()).unwrap_or(&[]);
        let mut ok = !bound.is_empty();
        for addr in bound {
            if !serves(connectable(*addr)).await {
                ok = false;
                break;
            }
        }
        if !ok {
            return text_resp(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
        }
        app.proxy_ready.store(true, Ordering::Relaxed);
    }
    text_resp(StatusCode::OK, "ready\n")
}

/// Whether the proxy behind `addr` takes connections: a probe connects, says nothing
/// and waits for the proxy to close it. A completed TCP handshake only proves the kernel's
/// backlog; the close proves the proxy accepted, counted and released the probe, so the
/// probe is gone from the connection count (and caps) once readiness says yes.
async fn serves(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(1), async {
        let mut probe = tokio::net::TcpStream::connect(addr).await.ok()?;
        probe.shutdown().await.ok()?;
        let mut buf = [0u8; 512];
        loop {
            match probe.read(&mut buf).await {
                Ok(0) | Err(_) => return Some(()),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .flatten()
    .is_some()
}

/// A wildcard listen address is reached through loopback.
pub fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    }
}

fn state(app: &App) -> serde_json::Value {
    let cfg = app.config();
    let loaded = crate::clock::unix_secs_f64(cfg.loaded_at);
    let origins: Vec<_> = cfg
        .origins
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "balance": format!("{:?}", o.balance).to_lowercase(),
                "max_inflight": o.max_inflight,
                "inflight": o.shared.inflight.load(Ordering::Relaxed),
                "servers": o.servers.iter().map(|s| json!({
                    "server": s.name,
                    "address": s.addr.to_string(),
                    "healthy": s.healthy(),
                    "ejected": s.ejected(),
                    "in_rotation": s.in_rotation(),
                    "inflight": s.inflight(),
                    "check_error": s.check_error(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let routes: Vec<_> = cfg
        .router
        .routes()
        .iter()
        .map(|r| json!({ "name": r.name, "origin": r.origin.name, "path_prefix": r.matcher.path_prefix() }))
        .collect();
    let rooms: Vec<_> = cfg
        .rooms
        .iter()
        .map(|r| {
            let p = r.effective();
            let s = r.shared.lock();
            json!({
                "name": r.name,
                "paused": s.paused,
                "opened": s.opened,
                "active_users": s.active(),
                "pending_admissions": s.pending(),
                "waiting": s.waiting(),
                "capacity": { "active_users": p.active_users, "new_users_per_minute": p.new_users_per_minute },
                "auto": r.auto.map(|a| {
                    let view = r.shared.auto_view();
                    json!({
                        "active_users": a.capacity,
                        "new_users_per_minute": a.pace,
                        "bounds": {
                            "active_users": [a.bounds.capacity.min, a.bounds.capacity.max],
                            "new_users_per_minute": [a.bounds.pace.min, a.bounds.pace.max],
                        },
                        "capacity": view.as_ref().map(|v| v.0),
                        "pace_per_minute": view.as_ref().map(|v| v.1),
                        "last_change": view.and_then(|v| v.2).map(|c| json!({
                            "reason": c.reason.as_str(),
                            "capacity": [c.capacity_from, c.capacity_to],
                            "pace_per_minute": [c.pace_from, c.pace_to],
                            "detail": c.detail,
                            "at": crate::clock::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(c.at_ms)),
                        })),
                    })
                }),
                "admission_rate_per_second": (s.rate * 100.0).round() / 100.0,
                "estimated_wait_seconds": s.eta(s.waiting().max(1)).map(|d| d.as_secs()),
                "queues": s.queues.iter().map(|q| json!({ "issued": q.next, "frontier": q.frontier, "waiting": q.waiting() })).collect::<Vec<_>>(),
                "counters": {
                    "issued": s.counters.issued,
                    "admitted": s.counters.admitted,
                    "direct": s.counters.direct,
                    "abandoned": s.counters.abandoned,
                    "ended": s.counters.ended,
                },
            })
        })
        .collect();
    let now = crate::clock::now_ms();
    let degradation = cfg.degradation.as_ref().map(|d| {
        let g = app.degrade.lock();
        let level = g.level(now);
        let name = |i: usize| d.levels.get(i).map(|l| l.name.clone());
        json!({
            "level": name(level),
            "level_index": level,
            "automatic_level": name(g.auto_level()),
            "forced": g.forced(now).map(|(l, until)| json!({ "level": name(l), "until_unix_ms": until })),
            "features": d.features.iter().map(|f| (f.clone(), json!(g.feature_on(&d.levels, f, now)))).collect::<serde_json::Map<_, _>>(),
            "forced_features": g.feature_overrides(now).into_iter().map(|(f, on, until)| json!({ "feature": f, "on": on, "until_unix_ms": until })).collect::<Vec<_>>(),
            // What is open on each feature's routes, and the drain under way once it is off.
            "drains": crate::drain::registry().state(std::time::Instant::now(), &d.features, |f| d.message(f).drain),
        })
    });
    let signals: Vec<_> = cfg
        .origins
        .iter()
        .map(|o| {
            let (s, m, held) = o.shared.measure(now, o.max_inflight);
            json!({
                "origin": o.name,
                "inflight_ratio": s.inflight_ratio,
                "p95_latency_ms": s.p95_ms,
                "error_rate": s.error_rate,
                "concurrency_limit": o.shared.current_limit(o.max_inflight),
                // What single clients and URLs brought beyond the rest, left out above.
                "left_out": {
                    "exchanges": m.count,
                    "raw_p95_latency_ms": m.raw_quantile_ms,
                    "raw_error_rate": m.raw_error_rate,
                    "client_keys": m.client_outliers.count_ones(),
                    "url_keys": m.url_outliers.count_ones(),
                    "inflight": held,
                },
            })
        })
        .collect();
    if let Some(c) = app.cache.get() {
        c.refresh_metrics();
    }
    let (cache, rate_limits) = status::from_metrics(app.cache.get().is_some());
    json!({
        "degradation": degradation,
        "cluster": app.fleet.as_ref().map(|f| f.state()),
        // Read from the counters `/metrics` exports (the only record of them).
        "cache": cache,
        "rate_limits": rate_limits,
        "signals": signals,
        "rooms": rooms,
        "config": {
            "path": cfg.path.display().to_string(),
            "hash": cfg.hash,
            "version": cfg.version,
            "loaded_at": crate::clock::rfc3339(cfg.loaded_at),
            "loaded_at_unix": loaded,
        },
        "uptime_seconds": app.started.elapsed().as_secs(),
        "draining": app.draining.load(Ordering::Relaxed),
        "listen": app.bound.get().cloned().unwrap_or_default().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "routes": routes,
        "origins": origins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_probes_and_metrics_are_open() {
        for p in OPEN_ENDPOINTS {
            assert_eq!(access(p), Access::Open, "{p}");
        }
        for p in [
            "/admin/state",
            "/admin/reload",
            "/admin/level",
            "/admin/cache/purge",
            "/admin/cache/warm",
            "/admin/rooms/ent/pause",
            "/admin/features/visio",
            "/admin/anything-added-later",
            "/admin//state",
            "/metrics/../admin/state",
            "/metrics/",
            "/Metrics",
            "/status/",
            "/status/action/",
            "/Status",
            "/status/../admin/state",
            "",
        ] {
            assert_eq!(access(p), Access::Guarded, "{p}");
        }
        assert_eq!(access("/status/action"), Access::Form);
    }
}
