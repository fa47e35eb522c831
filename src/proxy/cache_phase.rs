//! The cache phases of the proxy (step 5 of the request path): which requests use the
//! cache, their key, the `Cache-Status` header, and invalidation after a successful
//! unsafe request. The rules themselves are in `policy::cache_rules`.

use std::time::SystemTime;

use pingora::prelude::*;
use pingora_cache::key::CacheHashKey;
use pingora_cache::key::HashBinary;
use pingora_cache::{
    CacheKey, CacheMeta, CachePhase, ForcedFreshness, HitHandler, NoCacheReason, RespCacheable,
};
use pingora_error::{ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};

use super::ctx::header;
use super::{Ctx, EcluseProxy};
use crate::cache::auth::{self, VersionHasher};
use crate::cache::{store, PurgeScope};
use crate::policy::cache_rules::{credential_items, has_credentials, normalize_query, CacheMode};
use crate::policy::route::host_without_port;

/// The request's host as the cache key holds it: its one spelling (`hygiene::spell_host`
/// has rewritten it, lower-case, no root dot, no default port), so a port this deployment
/// allows besides the default (`server.public_ports`, a listener's) is in the key: the ENT
/// receives that port and may write it into links, so its pages are not another port's.
/// Purges by host cover every port (`Store::purge`).
pub(super) fn request_host(req: &RequestHeader) -> String {
    req.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn strong_etag(h: &http::HeaderMap) -> Option<Vec<u8>> {
    let e = h.get(http::header::ETAG)?.as_bytes();
    (!e.starts_with(b"W/")).then(|| e.to_vec())
}

/// ecluse's own cookie names (waiting rooms): not credentials for the origin.
fn own_cookies(ctx: &Ctx) -> Vec<&str> {
    ctx.config
        .as_ref()
        .map(|c| c.rooms.iter().map(|r| r.cookie_name.as_str()).collect())
        .unwrap_or_default()
}

/// Whether the answer came from the cache without any origin exchange for this request:
/// a fresh hit (including one that waited for another request's fetch, or a stale copy a
/// `serve_stale` level passes as fresh) or stale-while-revalidate. Not a revalidation
/// (304), not stale-if-error (the origin was asked and failed).
pub(super) fn fetch_saved(phase: CachePhase) -> bool {
    matches!(phase, CachePhase::Hit | CachePhase::StaleUpdating)
}

/// What the cache did for this request, as one word for metrics and the log.
pub(super) fn result_word(phase: CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        CachePhase::Expired => "expired",
        CachePhase::Miss => "miss",
        _ => "bypass",
    }
}

fn reason_word(r: NoCacheReason) -> &'static str {
    match r {
        NoCacheReason::NeverEnabled => "not-enabled",
        NoCacheReason::OriginNotCache => "origin-not-cacheable",
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::StorageError | NoCacheReason::InternalError => "cache-error",
        NoCacheReason::UpstreamError => "upstream-error",
        NoCacheReason::CacheLockTimeout | NoCacheReason::CacheLockRetryLimit => "lock-timeout",
        NoCacheReason::Custom(s) => s,
        _ => "other",
    }
}

impl EcluseProxy {
    /// A request from our own admin API warming the cache: from loopback, with this
    /// process's secret token (compared in constant time).
    pub(super) fn is_warm_request(&self, session: &Session, ctx: &Ctx) -> bool {
        use subtle::ConstantTimeEq;
        if !ctx.peer_ip.is_some_and(|ip| ip.is_loopback()) {
            return false;
        }
        header(session.req_header(), crate::admin::WARM_HEADER)
            .is_some_and(|v| bool::from(v.ct_eq(self.app.warm_token.as_bytes())))
    }

    /// On our own warm request (token checked): the scheme of the URL being warmed, so
    /// the object is keyed as students will ask for it, whatever listener it came through.
    pub(super) fn warm_scheme(&self, session: &Session, ctx: &Ctx) -> Option<&'static str> {
        if !ctx.warming {
            return None;
        }
        match header(session.req_header(), crate::admin::WARM_SCHEME_HEADER) {
            Some(p) if p.eq_ignore_ascii_case(b"https") => Some("https"),
            Some(p) if p.eq_ignore_ascii_case(b"http") => Some("http"),
            _ => None,
        }
    }

    /// Scheme of the request as the client sent it (for the key): the listener's, or the
    /// `X-Forwarded-Proto` of a trusted proxy (or, warming, the warmed URL's).
    fn scheme(&self, session: &Session, ctx: &Ctx) -> &'static str {
        if let Some(s) = self.warm_scheme(session, ctx) {
            return s;
        }
        if self.tls {
            return "https";
        }
        let trusted = match (ctx.peer_ip, ctx.config.as_ref()) {
            (Some(ip), Some(c)) => c.server.is_trusted(ip),
            _ => false,
        };
        match header(session.req_header(), "x-forwarded-proto") {
            Some(p) if trusted && p.eq_ignore_ascii_case(b"https") => "https",
            _ => "http",
        }
    }

    /// Turn the cache on for this request when its route caches and the request may use
    /// it. Called by pingora after `request_filter`.
    pub(super) fn enable_cache(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(route) = ctx.route.clone() else {
            return;
        };
        let Some(policy) = route.cache.as_ref() else {
            return;
        };
        let Some(cache) = self.app.cache.get() else {
            return;
        };
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            ctx.cache_bypass = Some("method");
            return;
        }
        // A trusted proxy's identity headers (an SSO gateway's `X-Remote-User`…) name a
        // user as surely as a cookie does (policy::forwarding; from anyone else they are
        // gone by now).
        ctx.credentialed = has_credentials(session.req_header(), &own_cookies(ctx))
            || ctx.config.as_ref().is_some_and(|c| {
                !c.server
                    .forwarding
                    .identity_items(&session.req_header().headers)
                    .is_empty()
            });
        if ctx.credentialed && policy.mode == CacheMode::Public {
            ctx.cache_bypass = Some("credentials");
            return;
        }
        session.cache.enable(
            cache.store.storage(),
            None,
            None,
            Some(cache.lock),
            Some(cache.lock_options()),
        );
        session
            .cache
            .set_max_file_size_bytes(policy.max_object_bytes.min(usize::MAX as u64) as usize);
        if ctx.has_body {
            // A GET with a body: on a hit the body is never read, so the connection
            // closes after the response rather than read it as the next request.
            session.set_keepalive(None);
        }
    }

    pub(super) fn cache_key(&self, session: &Session, ctx: &mut Ctx) -> CacheKey {
        let req = session.req_header();
        let policy = ctx.route.as_ref().and_then(|r| r.cache.as_ref());
        let revalidate = policy.is_some_and(|c| c.mode == CacheMode::Revalidate);
        let query_mode = policy
            .map(|c| c.query)
            .unwrap_or(crate::policy::cache_rules::QueryMode::Sort);
        let q = normalize_query(req.uri.query(), query_mode);
        let path_and_query = if q.is_empty() {
            req.uri.path().to_string()
        } else {
            format!("{}?{q}", req.uri.path())
        };
        let primary = store::primary_key(
            self.scheme(session, ctx),
            &request_host(req),
            &path_and_query,
        );
        let key = CacheKey::new(primary, "");
        if let (Some(cache), true) = (self.app.cache.get(), revalidate) {
            let mut creds = credential_items(req, &own_cookies(ctx));
            if let Some(c) = ctx.config.as_ref() {
                creds.extend(c.server.forwarding.identity_items(&req.headers));
            }
            ctx.auth_grant = Some(cache.authorizations.grant_for(&key.primary_bin(), &creds));
            ctx.binding.primary = Some(key.primary_bin());
            ctx.binding.url = key.primary_key_str().unwrap_or("").to_string();
        }
        key
    }

    fn stale_window(ctx: &Ctx) -> std::time::Duration {
        ctx.route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .map(|c| c.stale_if_error)
            .unwrap_or_default()
    }

    fn object_id(ctx: &Ctx, variance: Option<&HashBinary>) -> Option<auth::ObjectId> {
        let p = ctx.binding.primary.as_ref()?;
        Some(auth::object_id(p, variance.map(|v| &v[..])))
    }

    /// A stored copy was found on a `revalidate` route: note its version. Returns whether
    /// the object answers each credential its own body (then the copy is not used).
    pub(super) fn bind_stored_copy(
        &self,
        session: &Session,
        meta: &CacheMeta,
        ctx: &mut Ctx,
    ) -> bool {
        ctx.binding.stored = meta
            .headers()
            .get(auth::VERSION_HEADER)
            .and_then(|v| auth::parse_version_header(v.as_bytes()));
        ctx.binding.stored_strong_etag = strong_etag(meta.headers());
        let variance = session.cache.cache_key().variance_bin();
        ctx.binding.variance = variance;
        let Some(cache) = self.app.cache.get() else {
            return false;
        };
        Self::object_id(ctx, variance.as_ref()).is_some_and(|o| cache.variants.is_personal(&o))
    }

    /// After pingora added the stored copy's validators to the origin request (on a
    /// `revalidate` route): keep them only where the origin's 304 will name the stored
    /// version **for these credentials**. Many ENTs answer `If-None-Match` by the tag
    /// alone, without looking at who asks (or derive the tag from the URL), so a 304 to a
    /// stored copy's validators says nothing about a pupil the origin never gave that
    /// copy. Validators therefore go only:
    /// - with credentials whose latest answer from the origin was this very version (the
    ///   304 then only says "still yours"); a strong `ETag` alone, when there is one (a
    ///   lenient origin answering `If-Modified-Since` by its template's date would keep a
    ///   re-uploaded body from them);
    /// - on a route with `trust_strong_etags`, the strong `ETag` alone, for anyone: ops
    ///   vouch that this ENT checks the asker's credentials before it says 304.
    ///
    /// Anyone else is asked without any validator (the client's own went already), and
    /// the full answer's bytes say which version it is.
    pub(super) fn revalidate_conditionals(
        &self,
        session: &Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return;
        };
        if policy.mode != CacheMode::Revalidate || session.cache.maybe_cache_meta().is_none() {
            return;
        }
        let trust = policy.trust_strong_etags;
        let personal = Self::object_id(ctx, ctx.binding.variance.as_ref())
            .zip(self.app.cache.get())
            .is_some_and(|(o, c)| c.variants.is_personal(&o));
        let granted = match (ctx.auth_grant, self.app.cache.get(), ctx.binding.stored) {
            (Some(g), Some(c), Some((stored, _))) => c.authorizations.current(&g) == Some(stored),
            _ => false,
        };
        let strong = ctx.binding.stored_strong_etag.is_some();
        let keep = ctx.binding.stored.is_some() && !personal && (granted || (trust && strong));
        if keep && strong {
            req.remove_header(&http::header::IF_MODIFIED_SINCE);
        }
        if !keep {
            req.remove_header(&http::header::IF_NONE_MATCH);
            req.remove_header(&http::header::IF_MODIFIED_SINCE);
        }
        ctx.binding.conditional_sent = req.headers.contains_key(http::header::IF_NONE_MATCH)
            || req.headers.contains_key(http::header::IF_MODIFIED_SINCE);
    }

    /// Whether the client may be told 304 (its own `If-None-Match` / `If-Modified-Since`
    /// matched) for the response about to go out, on a `revalidate` route. A 304 says
    /// "your validator names this response": when the response is the stored copy (a
    /// revalidation, a stale-if-error), it may be said only to credentials the origin
    /// gave that very version, or a pupil could learn that a tag matches another
    /// pupil's stored file (an oracle, even without the body). An answer fresh from the
    /// origin to these credentials is theirs to compare with.
    pub(super) fn may_answer_not_modified(&self, session: &Session, ctx: &Ctx) -> bool {
        let revalidate = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .is_some_and(|c| c.mode == CacheMode::Revalidate);
        if !revalidate || !session.cache.enabled() {
            return true;
        }
        let from_store = matches!(
            session.cache.phase(),
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        if !from_store {
            return true;
        }
        let (Some(g), Some(cache), Some(meta)) = (
            ctx.auth_grant,
            self.app.cache.get(),
            session.cache.maybe_cache_meta(),
        ) else {
            return false;
        };
        let stored = meta
            .headers()
            .get(auth::VERSION_HEADER)
            .and_then(|v| auth::parse_version_header(v.as_bytes()));
        stored.is_some_and(|(v, _)| cache.authorizations.current(&g) == Some(v))
    }

    /// The origin's answer head arrived, on a `revalidate` route: its version becomes
    /// these credentials' latest (`cache::auth`). A trusted 304 names the stored version;
    /// any other non-5xx answer withdraws the earlier version now and names its own once
    /// its body is complete ([`Self::record_answered_version`]). A 5xx changes nothing
    /// (the origin cannot say yes or no).
    pub(super) fn record_authorization(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        resp: &mut ResponseHeader,
    ) {
        // Only ecluse writes this header (a response naming its own version could be
        // served to credentials given another one).
        resp.remove_header(auth::VERSION_HEADER);
        let (Some(g), Some(cache)) = (ctx.auth_grant, self.app.cache.get()) else {
            return;
        };
        let status = resp.status.as_u16();
        let window = Self::stale_window(ctx);
        if status >= 500 {
            return;
        }
        if status == 304 && session.cache.maybe_cache_meta().is_some() {
            ctx.binding.revalidating_304 = true;
            let etag_ok = match (
                resp.headers.get(http::header::ETAG),
                &ctx.binding.stored_strong_etag,
            ) {
                (None, _) => true,
                (Some(e), Some(stored)) => e.as_bytes() == stored.as_slice(),
                (Some(e), None) => session
                    .cache
                    .maybe_cache_meta()
                    .and_then(|m| m.headers().get(http::header::ETAG))
                    .is_some_and(|s| s == e),
            };
            match ctx.binding.stored {
                Some((v, _)) if ctx.binding.conditional_sent && etag_ok => {
                    cache.authorizations.allow(g, v, window, true)
                }
                _ => {
                    ctx.binding.untrusted_304 = true;
                    cache.authorizations.revoke(&g);
                }
            }
            return;
        }
        cache.authorizations.revoke(&g);
        ctx.binding.hasher = Some(VersionHasher::new(status));
        ctx.binding.answer_status = status;
        ctx.binding.answer_strong_etag = strong_etag(&resp.headers);
    }

    /// A piece of the origin's answer body on a `revalidate` route: hashed; once complete,
    /// its version is these credentials' latest, and a 200 tells whether the object's body
    /// differs by credential (then it is no longer stored: `cache::auth::Variants`).
    pub(super) fn record_answered_version(
        &self,
        _session: &Session,
        body: Option<&[u8]>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) {
        let Some(h) = ctx.binding.hasher.as_mut() else {
            return;
        };
        if let Some(b) = body {
            h.update(b);
        }
        if !end_of_stream {
            return;
        }
        let Some(h) = ctx.binding.hasher.take() else {
            return;
        };
        let version = h.finish();
        let (Some(g), Some(cache)) = (ctx.auth_grant, self.app.cache.get()) else {
            return;
        };
        // Kept only for the version that is (or is becoming) the stored copy's: any other
        // serves nothing, and forgetting it means the same (`cache::auth`).
        let current = ctx.cache_storable
            || ctx
                .binding
                .stored
                .is_some_and(|(stored, _)| stored == version);
        cache
            .authorizations
            .allow(g, version, Self::stale_window(ctx), current);
        if !ctx.credentialed || ctx.binding.answer_status != 200 {
            return;
        }
        let clash = match (&ctx.binding.answer_strong_etag, &ctx.binding.stored) {
            (Some(e), Some((stored, _))) => {
                ctx.binding.stored_strong_etag.as_ref() == Some(e) && *stored != version
            }
            _ => false,
        };
        let Some(o) = Self::object_id(ctx, ctx.binding.variance.as_ref()) else {
            return;
        };
        if cache.variants.observe(o, version, clash) {
            // Not to be shared: drop what is stored (lookups already skip it).
            cache.store.drop_url(&ctx.binding.url);
        }
    }

    /// On a `revalidate` route, what may be stored beyond `policy::cache_rules`'s rules:
    /// - nothing of an object whose body differs by credential;
    /// - nothing after a 304 that does not name the stored version;
    /// - an anonymous answer never replaces a copy made for credentials (an ENT's login
    ///   page would push a pupils' file out on every anonymous request);
    /// - what is stored carries its version (filled in by the store once the body is
    ///   complete), and whether it answered an anonymous request.
    pub(super) fn revalidate_cacheable(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        c: RespCacheable,
    ) -> RespCacheable {
        let uncacheable = |why| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
        let RespCacheable::Cacheable(mut meta) = c else {
            return c;
        };
        if ctx.binding.untrusted_304 {
            return uncacheable("untrusted-304");
        }
        let variance = crate::policy::cache_rules::variance(&meta, session.req_header());
        let personal = Self::object_id(ctx, variance.as_ref())
            .zip(self.app.cache.get())
            .is_some_and(|(o, c)| c.variants.is_personal(&o));
        if personal {
            return uncacheable("per-credential");
        }
        if ctx.binding.revalidating_304 {
            // The stored copy's own header (and version) came back merged: keep it.
            return RespCacheable::Cacheable(meta);
        }
        if !ctx.credentialed && ctx.binding.stored.is_some_and(|(_, anon)| !anon) {
            return uncacheable("anonymous");
        }
        let pending = if ctx.credentialed {
            "pending"
        } else {
            "pending;anon"
        };
        if meta
            .response_header_mut()
            .insert_header(auth::VERSION_HEADER, pending)
            .is_err()
        {
            return uncacheable("version");
        }
        RespCacheable::Cacheable(meta)
    }

    /// Whether a stored copy may stand in for the origin's answer that failed, for this
    /// request on a `revalidate` route: only if the origin's latest answer to these very
    /// credentials, within the `stale_if_error` window, was this very version (same
    /// status and bytes), and the object is not one whose body differs by credential.
    pub(super) fn authorized_recently(&self, session: &Session, ctx: &Ctx) -> bool {
        let (Some(g), Some(cache)) = (ctx.auth_grant, self.app.cache.get()) else {
            return false;
        };
        let Some(meta) = session.cache.maybe_cache_meta() else {
            return false;
        };
        let Some((stored, _)) = meta
            .headers()
            .get(auth::VERSION_HEADER)
            .and_then(|v| auth::parse_version_header(v.as_bytes()))
        else {
            return false;
        };
        let variance = session.cache.cache_key().variance_bin();
        if Self::object_id(ctx, variance.as_ref()).is_some_and(|o| cache.variants.is_personal(&o)) {
            return false;
        }
        // The stored copy's own window (the origin's `stale-if-error`, else the route's).
        let window = std::time::Duration::from_secs(u64::from(meta.stale_if_error_sec()));
        cache.authorizations.allowed_within(&g, &stored, window)
    }

    /// Whether the stored copy this request looked up has been purged since (the purge's
    /// tombstone covers its URL and creation time).
    pub(super) fn purged_while_in_flight(&self, session: &Session) -> bool {
        let (Some(cache), Some(meta), Some(key)) = (
            self.app.cache.get(),
            session.cache.maybe_cache_meta(),
            session.cache.maybe_cache_key(),
        ) else {
            return false;
        };
        key.primary_key_str()
            .is_some_and(|url| cache.store.purged_since(url, meta.created()))
    }

    /// RFC 9211 `Cache-Status` for a response of a cacheable route.
    pub(super) fn cache_status(&self, session: &Session, ctx: &Ctx, status: u16) -> String {
        let phase = session.cache.phase();
        let stored = if ctx.cache_storable { "; stored" } else { "" };
        match phase {
            CachePhase::Hit if ctx.forced_stale => "ecluse; hit; detail=stale".into(),
            CachePhase::Hit => {
                let ttl = session
                    .cache
                    .maybe_cache_meta()
                    .and_then(|m| m.fresh_until().duration_since(SystemTime::now()).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format!("ecluse; hit; ttl={ttl}")
            }
            // Served stale without asking the origin (stale-while-revalidate: a refresh
            // runs in the background).
            CachePhase::StaleUpdating => "ecluse; hit; detail=stale".into(),
            // Stale-if-error: the request was forwarded (so not a `hit`, RFC 9211 §2.1),
            // the origin failed, and the stored copy stands in for its answer.
            CachePhase::Stale => match ctx.stale_error_status {
                Some(s) => format!("ecluse; fwd=stale; fwd-status={s}; detail=stale-if-error"),
                None => "ecluse; fwd=stale; detail=stale-if-error".into(),
            },
            // Forwarded as a conditional request; the origin's 304 freshened the stored
            // copy (`stored`), or did not (uncacheable 304).
            CachePhase::Revalidated => "ecluse; fwd=stale; fwd-status=304; stored".into(),
            CachePhase::RevalidatedNoCache(_) => "ecluse; fwd=stale; fwd-status=304".into(),
            CachePhase::Expired => format!("ecluse; fwd=stale; fwd-status={status}{stored}"),
            CachePhase::Miss => format!("ecluse; fwd=uri-miss; fwd-status={status}{stored}"),
            // The origin failed and nothing stored could stand in: none was found, or the
            // one found was past its stale-if-error window (or not this user's to have).
            CachePhase::Disabled(NoCacheReason::UpstreamError) if ctx.stored_found => {
                "ecluse; fwd=stale; detail=origin-error".into()
            }
            CachePhase::Disabled(NoCacheReason::UpstreamError) => {
                "ecluse; fwd=miss; detail=origin-error".into()
            }
            CachePhase::Disabled(r) if ctx.cache_bypass.is_none() => {
                format!("ecluse; fwd=bypass; detail={}", reason_word(r))
            }
            _ => format!(
                "ecluse; fwd=bypass; detail={}",
                ctx.cache_bypass.unwrap_or("bypass")
            ),
        }
    }

    /// `Cache-Status` for a response ecluse writes itself (rate limited, queued, feature
    /// off, origin busy, gateway errors) on a cacheable route.
    pub(super) fn local_cache_status(
        &self,
        session: &Session,
        ctx: &Ctx,
        status: u16,
    ) -> Option<String> {
        ctx.route.as_ref()?.cache.as_ref()?;
        Some(match session.cache.phase() {
            CachePhase::Disabled(NoCacheReason::NeverEnabled)
            | CachePhase::Uninit
            | CachePhase::CacheKey
                if ctx.cache_bypass.is_none() =>
            {
                "ecluse; fwd=bypass; detail=answered-by-ecluse".to_string()
            }
            _ => self.cache_status(session, ctx, status),
        })
    }

    /// After an unsafe request (`POST`, `PUT`, `DELETE`…) succeeded on a cacheable route,
    /// drop the stored copies of its URL and of the `Location` / `Content-Location` it
    /// names on the same host (RFC 9111 §4.4): a teacher's re-upload is seen at once by
    /// the next student.
    pub(super) fn invalidate_after_write(
        &self,
        session: &Session,
        ctx: &Ctx,
        resp: &ResponseHeader,
    ) {
        let method = &session.req_header().method;
        if method.is_safe() || !(200..400).contains(&resp.status.as_u16()) {
            return;
        }
        let Some(route) = ctx.route.as_ref() else {
            return;
        };
        let Some(policy) = route.cache.as_ref() else {
            return;
        };
        let req = session.req_header();
        let host = request_host(req);
        let mut targets = vec![{
            let q = normalize_query(req.uri.query(), policy.query);
            if q.is_empty() {
                req.uri.path().to_string()
            } else {
                format!("{}?{q}", req.uri.path())
            }
        }];
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = v.parse::<http::Uri>() else {
                continue;
            };
            let same_host = uri
                .host()
                .is_none_or(|h| h.eq_ignore_ascii_case(host_without_port(&host)));
            // The path in the canonical form keys are made of (`/files/%61.pdf` is the
            // stored `/files/a.pdf`); one without a canonical form was never stored.
            let config = self.app.config();
            let path = match crate::policy::path::canonical_path(
                uri.path().as_bytes(),
                &config.server.paths,
            ) {
                Ok(p) if same_host => String::from_utf8_lossy(&p).into_owned(),
                _ => continue,
            };
            // Normalized like the key, or a reordered query would miss the copy.
            let q = normalize_query(uri.query(), policy.query);
            targets.push(if q.is_empty() {
                path
            } else {
                format!("{path}?{q}")
            });
        }
        for t in targets {
            self.app.purge(
                &PurgeScope::Url {
                    host: Some(host.clone()),
                    path_and_query: t,
                },
                "invalidation",
            );
        }
    }
}

impl EcluseProxy {
    pub(super) async fn cache_hit(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        ctx.stored_found = true;
        let revalidate = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .is_some_and(|c| c.mode == CacheMode::Revalidate);
        if !revalidate {
            // A survival level keeps serving what is stored, however old, and spares the
            // origin the refetch.
            if !is_fresh && self.app.degrade.serve_stale() {
                ctx.forced_stale = true;
                return Ok(Some(ForcedFreshness::ForceFresh));
            }
            return Ok(None);
        }
        // Authorize-then-serve: every request asks the origin with its own credentials.
        // No cache lock: one student's revalidation must not stand in for another's.
        session.cache.set_cache_lock(None, None);
        if self.bind_stored_copy(session, meta, ctx) {
            // Its body differs by credential: the stored copy is nobody's to share.
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        if is_fresh {
            Ok(Some(ForcedFreshness::ForceExpiredServeStale {
                expired_at: None,
            }))
        } else {
            Ok(None)
        }
    }

    pub(super) fn serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        let mode = ctx
            .route
            .as_ref()
            .and_then(|r| r.cache.as_ref())
            .map(|c| c.mode);
        match error {
            // stale-while-revalidate: never in revalidate mode (no copy without the
            // origin's say-so for this user).
            None => mode != Some(CacheMode::Revalidate),
            Some(e) => {
                let origin_failed = e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), ErrorType::HTTPStatus(s) if *s >= 500);
                // In revalidate mode the origin cannot say yes or no now: the stored
                // copy goes only to credentials it authorized for this object within the
                // stale_if_error window (`cache::auth`). Anyone else gets the error.
                // A copy looked up before a purge that came while the origin worked is
                // what ops removed: never served after it.
                let purged = self.purged_while_in_flight(session);
                let serve = origin_failed
                    && !purged
                    && (mode != Some(CacheMode::Revalidate)
                        || self.authorized_recently(session, ctx));
                match (serve, e.etype()) {
                    (true, ErrorType::HTTPStatus(s)) => ctx.stale_error_status = Some(*s),
                    // The exchange with the origin broke: pingora will not reuse this
                    // client's connection after the stale answer, so the answer must say
                    // so (`Connection: close`), or the client's next request on it meets
                    // a reset.
                    (true, _) => session.set_keepalive(None),
                    _ => {}
                }
                serve
            }
        }
    }
}
