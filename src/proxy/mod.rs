//! The one `ProxyHttp` implementation. It arranges the phases and calls the policies; the
//! decisions themselves live in `policy/*` and `upstream/*`. Each hook below is one line
//! calling the file of its step; the request context is `ctx.rs`.
//!
//! Request path, in order:
//! 0. Hygiene (`hygiene.rs`), then the one canonical path (`policy::path`): the URI is
//!    replaced by its canonical form, so every phase below reads it and the ENT receives
//!    it; a target without one is a 400 (`request.rs`). Before it, on the connection:
//!    `conn_guard/`, `proxy_protocol.rs`, and plain status polls (`fast_status.rs`).
//! 1. Match the route: one `ArcSwap` load per request, kept in the context (`Ctx::config`)
//!    so every phase of this request sees the same config, even across a reload
//!    (`request.rs`).
//! 2. Rate limit (cheapest rejection first) — issue #3 (`limits.rs`).
//! 3. Degradation gate: a switched-off feature answers 503 now — issue #5
//!    (`feature_gate.rs`).
//! 4. Waiting room: queue requests without a valid admission — issue #4 (`room.rs`, its
//!    pages `queue_page.rs`); then the request body (`body.rs`).
//! 5. Cache lookup — issue #6 (`cache_phase.rs`).
//! 6. Origin concurrency limit (`max_inflight`, a permit held until the response ends),
//!    then pick a server in rotation (round robin or least connections), retries and
//!    failures (`origin.rs`); what the origin receives (`forward.rs`); the response
//!    (`response.rs`).
//! 7. `logging`: metrics, one JSON access-log line, release every slot (Drop guards)
//!    (`logging.rs`). The answers ecluse writes itself: `respond.rs`.
//!
//! Retry safety: a failure to *connect* is retried on another server for any method
//! (nothing was sent). A failure on a *reused* pooled connection is retried only for
//! idempotent methods without a request body: a request whose body may have reached the
//! origin is never replayed (an upload arrives once or fails visibly).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora_cache::{
    CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_http::{RequestHeader, ResponseHeader};

use crate::app::App;
use crate::policy::cache_rules::CacheMode;

mod body;
mod cache_phase;
pub mod conn_guard;
mod ctx;
mod fast_status;
mod feature_gate;
mod forward;
mod hygiene;
mod limits;
mod logging;
mod origin;
mod proxy_protocol;
mod queue_page;
mod request;
mod request_id;
mod respond;
mod response;
mod room;
mod tunnel;

pub use ctx::Ctx;
pub(crate) use queue_page::PollRequest;
pub use queue_page::STATUS_PATH;

pub struct EcluseProxy {
    pub app: Arc<App>,
    /// Whether this listener terminates TLS (for `X-Forwarded-Proto`).
    pub tls: bool,
}

/// The phases in pingora's order; each body is in the file of its step.
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
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.admit_request(session, ctx).await
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
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        self.cache_hit(session, meta, hit_handler, is_fresh, ctx)
            .await
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
        self.serve_stale(session, ctx, error)
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.take_origin_slot(session, ctx).await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.pick_peer(session, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.forward_headers(session, upstream_request, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.response_head(session, upstream_response, ctx).await
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.origin_head(session, upstream_response, ctx).await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.origin_body(session, body, end_of_stream, ctx)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.client_body(session, body, end_of_stream, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(session, peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        self.proxy_error(peer, session, e, ctx, client_reused)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        self.answer_failure(session, e, ctx).await
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
        self.log_exchange(session, e, ctx).await
    }
}
