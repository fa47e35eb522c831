//! The status page of the admin listener (`GET /status`, `/` redirects to it): what
//! `/admin/state` says, as HTML a phone can read, with charts of the last minutes.
//!
//! - **One source**: the page is drawn from the `/admin/state` document (`super::state`)
//!   and the charts from samples of that same document ([`history`]), so the page and
//!   the API never disagree.
//! - **Open like `/metrics`**, so it shows nothing `/metrics` does not: names from the
//!   config (rooms, routes, origins, servers as ops wrote them, which are their metric
//!   labels; fleet node ids) and numbers; never a resolved address, a health check's
//!   error text, the config's path, a token, a client address or a ticket.
//! - **Buttons are forms** posted to `POST /status/action`, checked like the admin API
//!   (`super::authorized`: the bearer header, or the token typed into the form, or a
//!   tokenless loopback listener such as `ecluse demo`'s) and refused when another site
//!   sent them (`Origin`, `Sec-Fetch-Site`; a tokenless listener also wants a loopback
//!   `Host`, against DNS rebinding). The token is never written into the page.
//! - Refreshes itself: a `<meta http-equiv="refresh">` every [`REFRESH_S`] seconds
//!   without JavaScript, a fetch of the page every 3 s with it.

mod chart;
mod figures;
pub mod history;

pub use figures::from_metrics;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use minijinja::{AutoEscape, Environment, Value as Jv};
use serde_json::{json, Value};

use super::Resp;
use crate::app::App;
use history::{History, Sample};

/// The page's own refresh without JavaScript, in seconds.
pub const REFRESH_S: u64 = 10;
const TEMPLATE: &str = include_str!("../../pages/templates/status.html.j2");
const WINDOW_MS: u64 = history::EVERY.as_millis() as u64 * history::KEEP as u64;

/// The samples: one ring per process, like the metrics registry (the admin listener
/// and its sampler are started once per process).
pub fn history() -> &'static History {
    static H: OnceLock<History> = OnceLock::new();
    H.get_or_init(History::default)
}

/// A load the status page can start with a button: `ecluse demo` registers its
/// simulated surge here (the admin module knows nothing of the demo).
pub trait SurgeButton: Send + Sync {
    /// Start a run; an error says why not (one is already running).
    fn start(&self) -> Result<(), String>;
    /// What the page shows: `{"running": bool, "summary": "…"}`.
    fn state(&self) -> Value;
}

static SURGE: OnceLock<Arc<dyn SurgeButton>> = OnceLock::new();

/// Offer `s` on the status page (once per process; `ecluse demo` only).
pub fn register_surge(s: Arc<dyn SurgeButton>) {
    let _ = SURGE.set(s);
}

/// Sample `/admin/state` every [`history::EVERY`] until `shutdown`.
pub(super) async fn sample(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(history::EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let state = super::state(&app);
        history().push(Sample::from_state(crate::clock::now_ms(), &state));
    }
}

fn env() -> &'static Environment<'static> {
    static E: OnceLock<Environment<'static>> = OnceLock::new();
    E.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        // Both are built in and tested (`the_template_compiles`, tests/status_page.rs); a failure shows as a
        // plain-text error, never a panic.
        if let Err(e) = env.add_template("layout", crate::pages::render::LAYOUT) {
            log::error!("status page: layout template: {e}");
        }
        if let Err(e) = env.add_template("status", TEMPLATE) {
            log::error!("status page: template: {e}");
        }
        env
    })
}

/// Security headers of every status answer: no framing (the buttons cannot be
/// clickjacked), scripts and styles only inline ones of this page, forms only to here.
fn harden(r: &mut Resp) {
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' https:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
}

fn html(status: StatusCode, body: String) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(&mut r);
    r
}

/// `GET /` on the admin listener.
pub(super) fn redirect() -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"")));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static("/status"),
    );
    r
}

/// What a finished action says at the top of the page (`/status?done=…`): a fixed set,
/// so nothing from the query is ever written into the page.
fn notice(query: Option<&str>) -> Option<&'static str> {
    let done = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v.into_owned())?;
    Some(match done.as_str() {
        "pause" => "The room is paused: nobody new gets in until it is resumed.",
        "resume" => "The room admits again.",
        "level" => "The degradation level is set.",
        "feature" => "The feature is set.",
        "surge" => "A surge of simulated pupils has started: watch the room fill and drain.",
        _ => return None,
    })
}

/// `GET /status`.
pub(super) fn page(app: &App, query: Option<&str>) -> Resp {
    let state = super::state(app);
    let cfg = app.config();
    let view = view(app, &cfg, &state, notice(query));
    let rendered = env()
        .get_template("status")
        .and_then(|t| t.render(Jv::from_serialize(&view)));
    match rendered {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => {
            log::error!("status page: {e:#}");
            super::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the status page failed to render; /admin/state has the same figures",
            )
        }
    }
}

fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn wait_text(secs: Option<u64>) -> String {
    match secs {
        None => "—".into(),
        Some(s) if s < 90 => format!("{s} s"),
        Some(s) => format!("{} min", s.div_ceil(60)),
    }
}

fn time_text(unix_ms: Option<u64>) -> Option<String> {
    unix_ms.map(|ms| {
        crate::clock::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
    })
}

/// The template's values, from the state document (and the config for what levels
/// switch off, which the document does not repeat).
fn view(
    app: &App,
    cfg: &crate::config::Config,
    state: &Value,
    notice: Option<&'static str>,
) -> Value {
    let now = crate::clock::now_ms();
    let samples = history().snapshot();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let u = |v: &Value| v.as_u64().unwrap_or(0);

    let rooms: Vec<Value> = list(&state["rooms"])
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or_default();
            let pts = |f: fn(&history::RoomPoint) -> f64| -> Vec<(u64, f64)> {
                samples
                    .iter()
                    .filter_map(|s| {
                        s.rooms
                            .iter()
                            .find(|p| p.name == name)
                            .map(|p| (s.at_ms, f(p)))
                    })
                    .collect()
            };
            let capacity = u(&r["capacity"]["active_users"]);
            json!({
                "name": name,
                "paused": r["paused"].as_bool().unwrap_or(false),
                "waiting": u(&r["waiting"]),
                "inside": u(&r["active_users"]),
                "capacity": capacity,
                "pace": u(&r["capacity"]["new_users_per_minute"]),
                "rate": r["admission_rate_per_second"].as_f64().unwrap_or(0.0),
                "wait": wait_text(r["estimated_wait_seconds"].as_u64()),
                "admitted": u(&r["counters"]["admitted"]),
                "chart": chart::draw(
                    "Pupils waiting and inside",
                    &[("waiting", pts(|p| p.waiting)), ("inside", pts(|p| p.inside))],
                    Some(capacity as f64),
                    now,
                    WINDOW_MS,
                ),
            })
        })
        .collect();

    let signals = list(&state["signals"]);
    let origins: Vec<Value> = list(&state["origins"])
        .iter()
        .map(|o| {
            let name = o["name"].as_str().unwrap_or_default();
            let sig = signals
                .iter()
                .find(|s| s["origin"].as_str() == Some(name))
                .cloned()
                .unwrap_or(Value::Null);
            let pts = |f: fn(&history::OriginPoint) -> f64| -> Vec<(u64, f64)> {
                samples
                    .iter()
                    .filter_map(|s| {
                        s.origins
                            .iter()
                            .find(|p| p.name == name)
                            .map(|p| (s.at_ms, f(p)))
                    })
                    .collect()
            };
            let max = u(&o["max_inflight"]);
            let servers: Vec<Value> = list(&o["servers"])
                .iter()
                .map(|s| {
                    let state = if s["ejected"].as_bool() == Some(true) {
                        "ejected (failing requests)"
                    } else if s["healthy"].as_bool() == Some(false) {
                        "down (health check failing)"
                    } else {
                        "up"
                    };
                    json!({
                        "name": s["server"],
                        "state": state,
                        "up": state == "up",
                        "inflight": u(&s["inflight"]),
                    })
                })
                .collect();
            let p95 = sig["p95_latency_ms"].as_f64();
            json!({
                "name": name,
                "inflight": u(&o["inflight"]),
                "max_inflight": max,
                "limit": sig["concurrency_limit"].as_u64(),
                "p95": p95.map(|p| format!("{p:.0} ms")).unwrap_or_else(|| "—".into()),
                "errors": sig["error_rate"].as_f64().map(|e| format!("{:.1} %", e * 100.0)).unwrap_or_else(|| "—".into()),
                "servers": servers,
                "chart_inflight": chart::draw("Requests in flight", &[("in flight", pts(|p| p.inflight))], (max > 0).then_some(max as f64), now, WINDOW_MS),
                "chart_p95": chart::draw("p95 latency in ms", &[("p95 ms", pts(|p| p.p95_ms))], None, now, WINDOW_MS),
            })
        })
        .collect();

    let degradation = cfg.degradation.as_ref().map(|d| {
        let deg = &state["degradation"];
        let level = deg["level"].as_str().unwrap_or_default().to_string();
        let forced = &deg["forced"];
        let forced_features = list(&deg["forced_features"]);
        let features: Vec<Value> = d
            .features
            .iter()
            .map(|f| {
                let on = deg["features"][f].as_bool().unwrap_or(true);
                let forced = forced_features
                    .iter()
                    .find(|x| x["feature"].as_str() == Some(f.as_str()));
                let why = match forced {
                    Some(x) => format!(
                        "forced {} by an operator{}",
                        if x["on"].as_bool() == Some(true) {
                            "on"
                        } else {
                            "off"
                        },
                        time_text(x["until_unix_ms"].as_u64())
                            .map(|t| format!(" until {t}"))
                            .unwrap_or_default()
                    ),
                    None if !on => format!("level {level} switches it off"),
                    None => format!("on at level {level}"),
                };
                json!({ "name": f, "on": on, "why": why })
            })
            .collect();
        let points: Vec<(u64, f64)> = samples
            .iter()
            .filter_map(|s| s.level.map(|l| (s.at_ms, l)))
            .collect();
        json!({
            "level": level,
            "automatic": deg["automatic_level"],
            "forced": forced["level"].as_str().map(|l| json!({
                "level": l,
                "until": time_text(forced["until_unix_ms"].as_u64()),
            })),
            "levels": d.levels.iter().map(|l| l.name.clone()).collect::<Vec<_>>(),
            "features": features,
            "chart": chart::draw(
                "Degradation level (0 is normal)",
                &[("level", points)],
                Some(d.levels.len().saturating_sub(1) as f64),
                now,
                WINDOW_MS,
            ),
        })
    });

    let cache = state["cache"].as_object().map(|c| {
        let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        json!({
            "hit_ratio": c.get("hit_ratio").and_then(Value::as_f64).map(|r| format!("{:.0} %", r * 100.0)).unwrap_or_else(|| "—".into()),
            "memory": format!("{} of {}", bytes_text(n("memory_bytes")), bytes_text(n("memory_capacity_bytes"))),
            "disk": (n("disk_capacity_bytes") > 0).then(|| format!("{} of {}", bytes_text(n("disk_bytes")), bytes_text(n("disk_capacity_bytes")))),
            "requests": c.get("requests").cloned().unwrap_or(Value::Null),
        })
    });

    let fleet = state["cluster"].as_object().map(|c| {
        json!({
            "redis_up": c.get("redis_up").and_then(Value::as_bool).unwrap_or(false),
            "live_nodes": c.get("live_nodes").and_then(Value::as_u64).unwrap_or(0),
            "node_id": c.get("node_id"),
            "nodes": c.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default().iter().map(|n| json!({
                "id": n["id"],
                "level": n["level"],
                "seen": format!("{:.0} s ago", n["seen_ms_ago"].as_f64().unwrap_or(0.0) / 1000.0),
            })).collect::<Vec<_>>(),
        })
    });

    let surge = SURGE.get().map(|s| s.state());
    json!({
        "lang": "en",
        "brand": cfg.pages.brand,
        "ui": { "help": "Help", "request_id": "", "home": "" },
        "t": { "title": "ecluse status" },
        "refresh_s": REFRESH_S,
        "notice": notice,
        "generated_at": crate::clock::rfc3339(std::time::SystemTime::now()),
        "uptime": wait_text(Some(app.started.elapsed().as_secs())),
        "config_version": state["config"]["version"],
        "draining": state["draining"],
        "rooms": rooms,
        "origins": origins,
        "degradation": degradation,
        "cache": cache,
        "rate_limits": state["rate_limits"],
        "fleet": fleet,
        "token_needed": cfg.admin.token.is_some(),
        "surge": surge,
        "window_minutes": WINDOW_MS / 60_000,
    })
}

fn refused(status: StatusCode, why: &str) -> Resp {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Refused · ecluse status</title></head><body><main><h1>Refused</h1><p>{}</p><p><a href=\"/status\">Back to the status page</a></p></main></body></html>",
        why.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    );
    html(status, body)
}

fn done(what: &'static str) -> Resp {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"")));
    *r.status_mut() = StatusCode::SEE_OTHER;
    let loc = format!("/status?done={what}");
    if let Ok(v) = http::HeaderValue::from_str(&loc) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    harden(&mut r);
    r
}

/// The admin API's answer to an action, as the form's answer: a redirect back to the
/// page when it worked, its message when not.
async fn answered(r: Resp, what: &'static str) -> Resp {
    if r.status().is_success() {
        return done(what);
    }
    let status = r.status();
    let body = r.into_body().collect().await.map(|b| b.to_bytes());
    let message = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the action failed".into());
    refused(status, &message)
}

/// `POST /status/action`: a button of the page (`action` = `pause`, `resume`, `level`,
/// `feature`, `surge`), with the token typed into the form when one is configured.
pub(super) async fn action(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Resp {
    if !super::browser_guard::same_origin(req.headers()) {
        return refused(
            StatusCode::FORBIDDEN,
            "this form was sent from another site; use the status page of this listener",
        );
    }
    let cfg = app.config();
    if cfg.admin.token.is_none() && !super::browser_guard::loopback_host(req.headers()) {
        return refused(
            StatusCode::FORBIDDEN,
            "without admin.token_file the buttons answer only when the page is opened by a loopback address (127.0.0.1, localhost)",
        );
    }
    let header_ok = super::authorized(&app, &req, peer);
    let body = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is limited to 16 KiB",
            )
        }
    };
    let mut form = std::collections::HashMap::new();
    for (k, v) in form_urlencoded::parse(&body) {
        form.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let token_ok = match (&cfg.admin.token, form.get("token")) {
        (Some(t), Some(given)) => {
            use subtle::ConstantTimeEq;
            given.len() == t.0.len() && bool::from(given.as_bytes().ct_eq(&t.0))
        }
        _ => false,
    };
    if !(header_ok || token_ok) {
        let mut r = refused(
            StatusCode::UNAUTHORIZED,
            if cfg.admin.token.is_some() {
                "the admin token is missing or wrong: type it into the form's token field"
            } else {
                "without admin.token_file the buttons answer only on loopback"
            },
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"ecluse-admin\""),
        );
        return r;
    }
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    match get("action") {
        a @ ("pause" | "resume") => {
            let Some(room) = cfg.rooms.iter().find(|r| r.name == get("room")).cloned() else {
                return refused(StatusCode::NOT_FOUND, "no such waiting room");
            };
            let r = super::room_pause(&app, &room, a == "pause").await;
            answered(r, if a == "pause" { "pause" } else { "resume" }).await
        }
        "level" => {
            let level = match get("level") {
                "auto" | "" => Value::Null,
                l => json!(l),
            };
            let mut v = json!({ "level": level });
            if !get("for").is_empty() {
                v["for"] = json!(get("for"));
            }
            answered(super::level_apply(&app, &v), "level").await
        }
        "feature" => {
            let on = match get("on") {
                "on" => json!(true),
                "off" => json!(false),
                "auto" => Value::Null,
                _ => return refused(StatusCode::BAD_REQUEST, "`on` is on, off or auto"),
            };
            let mut v = json!({ "on": on });
            if !get("for").is_empty() {
                v["for"] = json!(get("for"));
            }
            answered(super::feature_apply(&app, get("feature"), &v), "feature").await
        }
        "surge" => match SURGE.get() {
            None => refused(
                StatusCode::NOT_FOUND,
                "a surge can be started only in `ecluse demo`",
            ),
            Some(s) => match s.start() {
                Ok(()) => done("surge"),
                Err(e) => refused(StatusCode::CONFLICT, &e),
            },
        },
        _ => refused(StatusCode::BAD_REQUEST, "unknown action"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_come_from_a_fixed_set() {
        assert!(notice(Some("done=pause")).is_some());
        assert_eq!(notice(Some("done=<script>")), None);
        assert_eq!(notice(None), None);
        assert!(bytes_text(3 * 1024 * 1024).starts_with("3.0 MiB"));
        assert_eq!(wait_text(Some(30)), "30 s");
        assert_eq!(wait_text(Some(600)), "10 min");
    }

    #[test]
    fn the_template_compiles() {
        assert!(env().get_template("status").is_ok());
        assert!(env().get_template("layout").is_ok());
    }
}
