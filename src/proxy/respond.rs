//! The responses ecluse writes itself on the pingora path: problem pages (429, 503, 502…)
//! and its own 200s (queue pages, status), never cached, never kept by intermediaries.

use bytes::Bytes;
use pingora::prelude::*;
use pingora_http::ResponseHeader;

use super::ctx::header;
use super::{Ctx, EcluseProxy};
use crate::pages::{self, Problem};

impl EcluseProxy {
    /// Write a response made by ecluse itself (error pages). Keeps the client connection
    /// only when no request body is left unread on it.
    pub(super) async fn respond_problem(
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

    /// A 200 made by ecluse (queue pages): never cached, never kept by intermediaries.
    pub(super) async fn respond_raw(
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
