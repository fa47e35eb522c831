//! Step 6 of the request path and its failures: the origin slot (`max_inflight`, the
//! adaptive limit, who is shed first), the server picked in rotation and its timeouts,
//! retries (`fail_to_connect`, `error_while_proxy`), passive health, and the answer when
//! the exchange fails (`fail_to_proxy`).

use std::time::{Duration, Instant};

use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora_error::{ErrorSource, ErrorType};

use super::ctx::policy_path;
use super::{conn_guard, Ctx, EcluseProxy};
use crate::clock::now_ms;
use crate::config::runtime::Origin;
use crate::pages::Problem;
use crate::policy::rate_limit::aggregate_ip;
use crate::upstream::{self, InflightGuard, OriginPermit};

/// The client and URL keys of this request for the degradation signals, computed once.
pub(super) fn signal_keys(session: &Session, ctx: &mut Ctx) -> (u8, u8) {
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
pub(super) fn passive_failure(session: &Session, ctx: &mut Ctx, origin: &Origin) {
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

impl EcluseProxy {
    pub(super) async fn take_origin_slot(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
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

    pub(super) async fn pick_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Box<HttpPeer>> {
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

    pub(super) fn connect_failed(
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

    pub(super) fn proxy_error(
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

    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
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
}
