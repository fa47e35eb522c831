//! Step 7 of the request path (`logging`): the signals of the exchange for degradation
//! and the adaptive limit, metrics, one JSON access-log line, and every slot released.

use std::time::Instant;

use pingora::prelude::*;
use pingora_error::{ErrorSource, ErrorType};

use super::origin::signal_keys;
use super::{cache_phase, conn_guard, Ctx, EcluseProxy};
use crate::access_log::Entry;
use crate::clock::{now_ms, rfc3339};
use crate::config::Config;

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

impl EcluseProxy {
    /// The degradation level in force, by name (when levels are declared).
    pub(super) fn level_name<'c>(&self, config: &'c Config) -> Option<&'c str> {
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

    pub(super) async fn log_exchange(
        &self,
        session: &mut Session,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) {
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
