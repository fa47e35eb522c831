//! The response phases: the origin's head (`upstream_response_filter`: signals, passive
//! health), the client's head (`response_filter`: `Cache-Status`, rate-limit headers, the
//! room session ended by the origin, cookies), upgrades into tunnels, and the bounds on
//! the body (total time, a drained feature).

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::prelude::*;
use pingora_cache::CachePhase;
use pingora_error::ErrorType;
use pingora_http::ResponseHeader;

use super::ctx::header;
use super::origin::passive_failure;
use super::{conn_guard, Ctx, EcluseProxy};
use crate::clock::now_ms;

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

impl EcluseProxy {
    pub(super) async fn response_head(
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

    pub(super) async fn origin_head(
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

    pub(super) fn origin_body(
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

    pub(super) fn client_body(
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
}
