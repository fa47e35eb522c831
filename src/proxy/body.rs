//! Request bodies: the route's size limit, and buffering before the origin slot.
//!
//! Without buffering, pingora streams a body to the origin as it arrives, so a slow upload
//! holds one of the origin's `max_inflight` slots (and an ENT worker) for as long as the
//! client takes: a few clients trickling uploads at just above `body_min_rate` starve
//! everyone else. nginx reads the whole body first (`proxy_request_buffering on`); so does
//! ecluse on every route unless `request_buffering: false`.
//!
//! How, with pingora 0.9 as published: the body is read in `request_filter` (after the
//! cheap refusals: rate limit, switched-off feature, waiting room), through pingora's own
//! framing (`read_request_body`: Content-Length, chunked, HTTP/2 DATA), into a
//! [`Spool`] (memory, then an unnamed temporary file; its memory, disk and per-client
//! budgets are claimed as bytes arrive, see `body_spool`). Only then does
//! `proxy_upstream_filter` take the slot. pingora has no API to hand a body read early back
//! to its forwarding loop: the loop sends only what is still unread, plus, on entry, its
//! *retry buffer* (`get_retry_buffer`, the bytes read since `enable_retry_buffering`,
//! capped at 64 KiB and useless once it overflows). So:
//!
//! - a body with a length (`Content-Length`, HTTP/1 or HTTP/2) is read with retry
//!   buffering switched on only for its last 64 KiB. pingora then finds a complete retry
//!   buffer, enters its send path with it, and calls `request_body_filter` once, with
//!   `end_of_stream`: there the tail is replaced by the whole spooled body (checked to end
//!   with that tail), sent in one write. A failed *connect* replays the same bytes (nothing
//!   reached the origin); anything later is never replayed (`error_while_proxy`).
//! - a body without a length (chunked, or HTTP/2 without `Content-Length`) is read with
//!   retry buffering on from the start. Up to 64 KiB it is forwarded like the above; past
//!   that pingora could not send it, so it is refused with `411 Length Required` before a
//!   byte reaches the origin (browsers and the ENT apps always send a length; streaming
//!   clients belong on a `request_buffering: false` route).
//!
//! The origin receives the buffered body with a `Content-Length` (chunked framing and
//! `Expect` are dropped), as nginx sends it. Size limits hold on both kinds of route: a
//! `Content-Length` over the limit is answered `413` before anything is read; a body that
//! crosses it while arriving is answered `413` on a buffering route (the origin sees
//! nothing), and on a streaming route the exchange is cut mid-body, so the origin sees an
//! aborted request, never a truncated body passed as complete.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::prelude::*;
use pingora_error::ErrorType;
use pingora_http::RequestHeader;

use super::{Ctx, EcluseProxy};
use crate::body_spool::{Spool, SpoolError};
use crate::config::runtime::Route;
use crate::pages::Problem;

/// pingora's retry buffer (`BODY_BUF_LIMIT` in pingora-core): the most it replays.
pub(super) const REPLAY_WINDOW: u64 = 64 * 1024;

/// The body's announced length: its `Content-Length`, unless `Transfer-Encoding` frames
/// it (the hygiene checks refuse requests carrying both, and malformed lengths).
pub(super) fn announced_length(req: &RequestHeader) -> Option<u64> {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let v = req.headers.get(http::header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// Whether the client waits for `100 Continue` before sending its body (HTTP/1.1).
fn expects_continue(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn count(outcome: &str) {
    crate::metrics::get()
        .request_bodies
        .with_label_values(&[outcome])
        .inc();
}

impl EcluseProxy {
    /// Apply the route's body limit and, on a buffering route, receive the whole body.
    /// Returns true when the request was answered here (413, 411, 503).
    pub(super) async fn receive_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<bool> {
        let limit = route.max_body_size;
        let announced = announced_length(session.req_header());
        if limit > 0 && announced.is_some_and(|n| n > limit) {
            count("too_large");
            self.respond_problem(session, ctx, Problem::PayloadTooLarge, None, &[])
                .await?;
            return Ok(true);
        }
        if !route.buffer_body {
            count("streamed");
            ctx.body_limit = limit;
            return Ok(false);
        }
        let Some(config) = ctx.config.clone() else {
            return Ok(false);
        };
        let rb = &config.server.request_bodies;
        // Nothing is claimed or allocated yet: the budgets are drawn as bytes arrive (a
        // `Content-Length` costs the client nothing to announce).
        let client = ctx
            .client_ip
            .map(|ip| crate::policy::rate_limit::aggregate_ip(ip, 32, 64))
            .unwrap_or([0u8; 17]);
        let mut spool = Spool::new(rb, client);
        if expects_continue(session.req_header()) {
            session.as_mut().write_continue_response().await?;
        }
        // Retry buffering (see the module comment) for the last 64 KiB of a known length,
        // for all of an unknown one.
        let mut replay = false;
        if announced.is_none_or(|n| n <= REPLAY_WINDOW) {
            session.as_mut().enable_retry_buffering();
            replay = true;
        }
        // The client is held to `body_min_rate` after `body_grace` here too (HTTP/2 has no
        // connection guard): every moment of this loop is spent waiting for its bytes.
        let clients = &config.server.clients;
        let started = Instant::now();
        loop {
            if !replay && announced.is_some_and(|n| n.saturating_sub(spool.len()) <= REPLAY_WINDOW)
            {
                session.as_mut().enable_retry_buffering();
                replay = true;
            }
            let read = session.as_mut().read_request_body();
            let chunk = if clients.body_min_rate > 0 {
                let allowance = clients.body_grace
                    + Duration::from_secs_f64(spool.len() as f64 / clients.body_min_rate as f64);
                match tokio::time::timeout_at((started + allowance).into(), read).await {
                    // The client's framing or connection failed: its fault (400, or no
                    // answer to a client gone), as when pingora reads while proxying.
                    Ok(r) => r.map_err(|e| e.into_down())?,
                    Err(_) => {
                        crate::metrics::get()
                            .client_timeouts
                            .with_label_values(&["body"])
                            .inc();
                        session.set_keepalive(None);
                        return Error::e_explain(
                            ErrorType::ReadTimedout,
                            "request body slower than body_min_rate",
                        )
                        .map_err(|e| e.into_down());
                    }
                }
            } else {
                read.await.map_err(|e| e.into_down())?
            };
            let Some(chunk) = chunk else { break };
            let total = spool.len() + chunk.len() as u64;
            if limit > 0 && total > limit {
                count("too_large");
                self.respond_problem(session, ctx, Problem::PayloadTooLarge, None, &[])
                    .await?;
                return Ok(true);
            }
            if announced.is_none() && total > REPLAY_WINDOW {
                count("length_required");
                self.respond_problem(session, ctx, Problem::LengthRequired, None, &[])
                    .await?;
                return Ok(true);
            }
            if let Err(e) = spool.push(&chunk) {
                return self.spool_failed(session, ctx, e).await.map(|_| true);
            }
        }
        if let Some(guard) = super::conn_guard::guard_of(session) {
            guard.body_done();
        }
        // pingora must find the body's tail in its retry buffer, or it would send nothing.
        if !spool.is_empty() && session.as_ref().get_retry_buffer().is_none() {
            log::error!("request body of {} bytes has no replay tail", spool.len());
            self.respond_problem(session, ctx, Problem::Internal, None, &[])
                .await?;
            return Ok(true);
        }
        count(if spool.on_disk() { "disk" } else { "memory" });
        match spool.finish() {
            Ok(b) => ctx.spooled = Some(b),
            Err(e) => return self.spool_failed(session, ctx, e).await.map(|_| true),
        }
        Ok(false)
    }

    /// Answer a body that cannot be buffered: `503` with `Retry-After` (the budgets free
    /// up as other uploads end); the connection closes (the rest of the body is unread).
    async fn spool_failed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        e: SpoolError,
    ) -> Result<()> {
        let problem = match &e {
            SpoolError::NoSpace { .. } => {
                count("no_space");
                Problem::NoBodySpace
            }
            SpoolError::ClientCap { .. } => {
                count("client_cap");
                Problem::ClientBodyCap
            }
            _ => {
                count("error");
                log::error!("cannot buffer a request body: {e}");
                Problem::NoBodySpace
            }
        };
        self.respond_problem(session, ctx, problem, Some(5), &[])
            .await
    }
}

/// `request_body_filter` for a buffered body: pingora's one call (its retry-buffer tail,
/// `end_of_stream`) becomes the whole body. Anything else means pingora read body bytes
/// from the client after the whole body was read: refused, never forwarded twice.
pub(super) fn replay(spooled: &Bytes, data: &mut Option<Bytes>, end_of_stream: bool) -> Result<()> {
    let tail_fits = data.as_ref().is_none_or(|t| spooled.ends_with(t));
    if !end_of_stream || !tail_fits {
        return Error::e_explain(
            ErrorType::InternalError,
            "buffered request body: unexpected body bytes from the client",
        );
    }
    *data = if spooled.is_empty() {
        None
    } else {
        Some(spooled.clone())
    };
    Ok(())
}

/// `request_body_filter` on a streaming route: count, and cut the exchange once the body
/// crosses `limit` (the origin sees an aborted request, not a complete one).
pub(super) fn count_streamed(ctx: &mut Ctx, data: &Option<Bytes>) -> Result<()> {
    ctx.body_seen += data.as_ref().map_or(0, |d| d.len() as u64);
    if ctx.body_limit > 0 && ctx.body_seen > ctx.body_limit {
        count("too_large");
        return Error::e_explain(
            ErrorType::HTTPStatus(413),
            format!("request body over max_body_size ({} bytes)", ctx.body_limit),
        );
    }
    Ok(())
}

/// What the origin is told of a buffered body: its exact length, no chunking, no `Expect`.
pub(super) fn frame_upstream(req: &mut RequestHeader, spooled: &Bytes) -> Result<()> {
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::EXPECT);
    req.insert_header(http::header::CONTENT_LENGTH, spooled.len().to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/up", None).expect("req");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    #[test]
    fn the_length_is_announced_only_without_transfer_encoding() {
        assert_eq!(
            announced_length(&req(&[("content-length", "12")])),
            Some(12)
        );
        assert_eq!(
            announced_length(&req(&[
                ("content-length", "12"),
                ("transfer-encoding", "chunked")
            ])),
            None
        );
        assert_eq!(announced_length(&req(&[("content-length", "x")])), None);
        assert_eq!(announced_length(&req(&[])), None);
    }

    #[test]
    fn a_replay_is_the_whole_body_once_and_only_at_the_end() {
        let body = Bytes::from_static(b"0123456789");
        let mut d = Some(Bytes::from_static(b"789"));
        replay(&body, &mut d, true).expect("tail");
        assert_eq!(d.as_deref(), Some(&b"0123456789"[..]));
        // Body bytes from the client after the whole body: refused.
        let mut d = Some(Bytes::from_static(b"789"));
        assert!(replay(&body, &mut d, false).is_err());
        // A tail that is not ours: refused.
        let mut d = Some(Bytes::from_static(b"xyz"));
        assert!(replay(&body, &mut d, true).is_err());
        let mut d = None;
        replay(&Bytes::new(), &mut d, true).expect("empty");
        assert!(d.is_none());
    }
}
