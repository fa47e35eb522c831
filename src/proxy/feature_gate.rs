//! Step 3 of the request path, the degradation gate: a route whose feature the level in
//! force switched off answers 503 now, before any other work (and before a byte of an
//! upload is read). The decision is `degrade`'s; this writes the answer.

use std::sync::Arc;

use pingora::prelude::*;
use pingora_http::ResponseHeader;

use super::ctx::header;
use super::{Ctx, EcluseProxy};
use crate::config::runtime::Route;
use crate::pages;

impl EcluseProxy {
    /// Returns true when the request was answered (its feature is off).
    pub(super) async fn feature_gate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Arc<Route>,
    ) -> Result<bool> {
        if let Some(feature) = &route.feature {
            let state = &self.app.degrade;
            if state.is_disabled(feature) {
                let class = self.class_label(session, ctx);
                crate::metrics::get()
                    .shed
                    .with_label_values(&[&route.origin.name, "feature_off", class])
                    .inc();
                let cfg = ctx.config.clone();
                let msg = cfg
                    .as_ref()
                    .and_then(|c| c.degradation.as_ref())
                    .map(|d| d.message(feature));
                let req = session.req_header();
                let lang = pages::negotiate_lang(header(req, "accept-language"));
                let json = pages::wants_json(header(req, "accept"));
                let fr = lang == pages::Lang::Fr;
                let (text, name, retry) = match &msg {
                    Some(m) => (
                        if fr { m.fr.clone() } else { m.en.clone() },
                        if fr {
                            m.name_fr.clone()
                        } else {
                            m.name_en.clone()
                        },
                        m.retry_after.as_secs().max(1),
                    ),
                    None => (crate::policy::degrade::default_message(None, fr), None, 300),
                };
                let set = cfg
                    .as_ref()
                    .map(|c| c.pages.clone())
                    .unwrap_or_else(pages::Pages::builtin);
                let page = pages::feature_off_page(
                    &set,
                    lang,
                    json,
                    feature,
                    name.as_deref(),
                    &text,
                    retry,
                    (!ctx.request_id.is_empty()).then_some(ctx.request_id.as_str()),
                );
                ctx.decision = Some("feature_off");
                let mut resp = ResponseHeader::build(503, Some(5))?;
                resp.insert_header("content-type", page.content_type)?;
                resp.insert_header("content-length", page.body.len().to_string())?;
                resp.insert_header("cache-control", "no-store")?;
                resp.insert_header("retry-after", retry.to_string())?;
                if let Some(cs) = self.local_cache_status(session, ctx, 503) {
                    resp.insert_header("cache-status", cs)?;
                }
                if ctx.has_body {
                    session.set_keepalive(None);
                }
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(page.body), true).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}
