//! Step 2 of the request path, the rate limits (cheapest rejection first), and the
//! priority class of a request, which limits exempt and the origin limit sheds last.

use std::sync::Arc;

use pingora::prelude::*;
use pingora_http::RequestHeader;

use super::ctx::policy_path;
use super::{Ctx, EcluseProxy};
use crate::config::runtime::{LimitKey, Route, RouteLimit};
use crate::pages::Problem;
use crate::policy::classes::{classify, cookie, RequestFacts};
use crate::policy::rate_limit::{aggregate_ip, Verdict};

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
    pub(super) fn class_label(&self, session: &Session, ctx: &mut Ctx) -> &'static str {
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

    pub(super) fn class_of(&self, session: &Session, ctx: &mut Ctx) -> Option<usize> {
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
    pub(super) async fn rate_limit(
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
