//! What the cache may store and serve, and under which key. Pure decisions over headers;
//! the storage is `crate::cache`, the phases are in `crate::proxy`.
//!
//! Private content is the risk: assignment files sit behind the ENT login, and a copy
//! fetched with one student's credentials must never reach another student unless the
//! route says how (`CacheMode`). Credentials are an `Authorization` header or any cookie
//! other than ecluse's own waiting-room cookies.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheMeta, NoCacheReason, RespCacheable, VarianceBuilder};
use pingora_http::{RequestHeader, ResponseHeader};

/// Who may be served a stored response (see `RouteCacheFile::mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Public,
    Shared,
    Revalidate,
}

impl CacheMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Public => "public",
            CacheMode::Shared => "shared",
            CacheMode::Revalidate => "revalidate",
        }
    }
}

/// How the query string enters the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryMode {
    Sort,
    Keep,
    Ignore,
}

/// A route's validated cache policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCache {
    pub mode: CacheMode,
    pub ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub max_object_bytes: u64,
    pub query: QueryMode,
    /// `revalidate` only: a stored copy's strong `ETag` may be sent for credentials the
    /// origin never gave that copy (their 304 is believed), see `docs/policy.md`.
    pub trust_strong_etags: bool,
}

/// The storage settings, fixed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStorage {
    pub memory_bytes: u64,
    pub disk: Option<(PathBuf, u64)>,
    pub max_object_bytes: u64,
    pub lock_timeout: Duration,
}

impl Default for CacheStorage {
    fn default() -> Self {
        CacheStorage {
            memory_bytes: 256 << 20,
            disk: None,
            max_object_bytes: 64 << 20,
            lock_timeout: Duration::from_secs(10),
        }
    }
}

/// Whether the request carries credentials: `Authorization`, or any `Cookie` content
/// that is not exactly ecluse's own cookies (`own` = waiting-room cookie names, which say
/// nothing about the user's rights on the origin). Read conservatively
/// (`policy::cookies`): whatever a lenient backend could read as a cookie of its own makes
/// the request credentialed.
pub fn has_credentials(req: &RequestHeader, own: &[&str]) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION)
        || !super::cookies::only_own(
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| v.as_bytes()),
            own,
        )
}

/// The request's credentials, item by item: each `Authorization` value, then what
/// `policy::cookies::credential_items` finds in the `Cookie` lines. Empty exactly for an
/// anonymous request. What `crate::cache::auth` hashes to remember who the origin
/// authorized.
pub fn credential_items<'a>(req: &'a RequestHeader, own: &[&str]) -> Vec<&'a [u8]> {
    let mut items: Vec<&[u8]> = req
        .headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    items.extend(super::cookies::credential_items(
        req.headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.as_bytes()),
        own,
    ));
    items
}

/// The query as it enters the key: sorted parameters (empty ones dropped) by default.
pub fn normalize_query(query: Option<&str>, mode: QueryMode) -> Cow<'_, str> {
    let q = match query {
        None | Some("") => return Cow::Borrowed(""),
        Some(q) => q,
    };
    match mode {
        QueryMode::Ignore => Cow::Borrowed(""),
        QueryMode::Keep => Cow::Borrowed(q),
        QueryMode::Sort => {
            let mut parts: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            if parts.windows(2).all(|w| w[0] <= w[1]) && parts.len() == q.split('&').count() {
                return Cow::Borrowed(q);
            }
            parts.sort_unstable();
            Cow::Owned(parts.join("&"))
        }
    }
}

/// The variance of a stored response for this request: one hash over the values of the
/// request headers its `Vary` names. `None` when the response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = Vec::new();
    for v in meta.headers().get_all(http::header::VARY) {
        let Ok(s) = v.to_str() else { continue };
        for n in s.split(',') {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    if names.is_empty() {
        return None;
    }
    let mut b = VarianceBuilder::new();
    for n in names {
        let value: Vec<u8> = req
            .headers
            .get_all(n.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b","[..]);
        b.add_owned_name_value(n, value);
    }
    b.finalize()
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1 "heuristically
/// cacheable"), minus the ones ENT files never need.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 300 | 301 | 308 | 404 | 410)
}

/// Decide whether a response may be stored, and for how long it is fresh.
///
/// - `no-store`, `Vary: *`, a partial response, an uncacheable status, or (in
///   `public`/`shared` modes) a `Set-Cookie` without `public`: not stored.
/// - `private`: stored only in `revalidate` mode, where no copy is ever served without
///   the origin's say-so for that user.
/// - A credentialed request (`shared` mode) is stored only when the origin says
///   `public` or `s-maxage` (RFC 9111 §3.5).
/// - Freshness: `s-maxage`/`max-age`, else `Expires`, else the route's `ttl`; capped by
///   `max_ttl`; `no-cache` makes it stale at once (revalidated on every use). In
///   `revalidate` mode a response without freshness is still stored, stale at once.
/// - `Set-Cookie` never enters a stored copy: a cookie belongs to the one user it was
///   sent to.
pub fn response_cacheable(
    policy: &RouteCache,
    resp: &ResponseHeader,
    credentialed: bool,
    now: SystemTime,
) -> RespCacheable {
    let status = resp.status.as_u16();
    let cc = CacheControl::from_resp_headers(resp);
    let uncacheable = |why: &'static str| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
    if !heuristically_cacheable(status) && !matches!(status, 200..=299) || status == 206 {
        return uncacheable("status");
    }
    if cc.as_ref().is_some_and(|c| c.no_store()) {
        return uncacheable("no-store");
    }
    let varies_on_all = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|n| n.trim_ascii() == b"*")
    });
    if varies_on_all {
        return uncacheable("vary-star");
    }
    let revalidate = policy.mode == CacheMode::Revalidate;
    let has_set_cookie = resp.headers.contains_key(http::header::SET_COOKIE);
    let says_public = cc
        .as_ref()
        .is_some_and(|c| c.public() || c.has_key("s-maxage"));
    if !revalidate {
        // A response setting a cookie may be about its one user: stored (without the
        // cookie) only when the origin says it is for everyone.
        if has_set_cookie && !says_public {
            return uncacheable("set-cookie");
        }
        if cc.as_ref().is_some_and(|c| c.private()) {
            return uncacheable("private");
        }
        if credentialed && !(policy.mode == CacheMode::Shared && says_public) {
            return uncacheable("credentials");
        }
    }

    let declared = cc
        .as_ref()
        .and_then(|c| c.fresh_duration())
        .map(|d| now + d)
        .or_else(|| pingora_cache::filters::calculate_expires_header_time(resp));
    let stale_at_once = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
    let no_cache = cc
        .as_ref()
        .is_some_and(|c| c.has_key("no-cache") || c.must_revalidate() && declared.is_none());
    let mut fresh_until = match declared {
        Some(t) => t,
        None => match policy.ttl {
            Some(ttl) if heuristically_cacheable(status) => now + ttl,
            _ if revalidate => stale_at_once,
            _ => return uncacheable("no-freshness"),
        },
    };
    if let Some(max) = policy.max_ttl {
        fresh_until = fresh_until.min(now + max);
    }
    if no_cache {
        fresh_until = stale_at_once;
    }
    let strict = cc
        .as_ref()
        .is_some_and(|c| c.must_revalidate() || c.proxy_revalidate());
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let swr = cc
        .as_ref()
        .and_then(|c| c.stale_while_revalidate().ok().flatten())
        .unwrap_or(secs(policy.stale_while_revalidate));
    let sie = cc
        .as_ref()
        .and_then(|c| c.stale_if_error().ok().flatten())
        .unwrap_or(secs(policy.stale_if_error));
    let (swr, sie) = if strict { (0, 0) } else { (swr, sie) };
    let mut stored = resp.clone();
    stored.remove_header(&http::header::SET_COOKIE);
    if let Some(c) = &cc {
        c.strip_private_headers(&mut stored);
    }
    RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: CacheMode) -> RouteCache {
        RouteCache {
            mode,
            ttl: None,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(3600),
            max_object_bytes: 1 << 20,
            query: QueryMode::Sort,
            trust_strong_etags: false,
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/f", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(c: RespCacheable, now: SystemTime) -> Option<i64> {
        match c {
            RespCacheable::Cacheable(m) => Some(match m.fresh_until().duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64) - 1,
            }),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn credentials_ignore_ecluse_cookies() {
        let own = ["ecluse_room_ent"];
        assert!(!has_credentials(&req(&[]), &own));
        assert!(!has_credentials(
            &req(&[("cookie", "ecluse_room_ent=abc")]),
            &own
        ));
        assert!(has_credentials(
            &req(&[("cookie", "ecluse_room_ent=abc; JSESSIONID=42")]),
            &own
        ));
        assert!(has_credentials(
            &req(&[("authorization", "Bearer x")]),
            &own
        ));
        assert!(!has_credentials(&req(&[("cookie", " ; ")]), &own));
    }

    #[test]
    fn credential_items_are_what_has_credentials_counts() {
        let own = ["ecluse_room_ent"];
        assert!(credential_items(&req(&[("cookie", "ecluse_room_ent=abc; ;")]), &own).is_empty());
        let r = req(&[
            ("authorization", "Bearer x"),
            ("cookie", "ecluse_room_ent=abc; JSESSIONID=42 ; lang=fr"),
        ]);
        assert_eq!(
            credential_items(&r, &own),
            vec![&b"Bearer x"[..], b"JSESSIONID=42", b"lang=fr"]
        );
    }

    #[test]
    fn query_normalisation() {
        assert_eq!(normalize_query(Some("b=2&a=1"), QueryMode::Sort), "a=1&b=2");
        assert_eq!(
            normalize_query(Some("a=1&&b=2&"), QueryMode::Sort),
            "a=1&b=2"
        );
        assert_eq!(normalize_query(Some("a=1&b=2"), QueryMode::Sort), "a=1&b=2");
        assert_eq!(normalize_query(Some("b=2&a=1"), QueryMode::Keep), "b=2&a=1");
        assert_eq!(normalize_query(Some("b=2"), QueryMode::Ignore), "");
        assert_eq!(normalize_query(None, QueryMode::Sort), "");
    }

    #[test]
    fn freshness_from_origin_then_ttl_capped_by_max_ttl() {
        let now = SystemTime::now();
        let p = policy(CacheMode::Public);
        let c = response_cacheable(
            &p,
            &resp(200, &[("cache-control", "max-age=60")]),
            false,
            now,
        );
        assert_eq!(fresh_secs(c, now), Some(60));
        // Nothing said, no ttl: not stored.
        assert_eq!(
            fresh_secs(response_cacheable(&p, &resp(200, &[]), false, now), now),
            None
        );
        let mut p2 = p.clone();
        p2.ttl = Some(Duration::from_secs(600));
        assert_eq!(
            fresh_secs(response_cacheable(&p2, &resp(200, &[]), false, now), now),
            Some(600)
        );
        p2.max_ttl = Some(Duration::from_secs(30));
        let c = response_cacheable(
            &p2,
            &resp(200, &[("cache-control", "max-age=3600")]),
            false,
            now,
        );
        assert_eq!(fresh_secs(c, now), Some(30));
        // no-cache: stored, stale at once.
        let c = response_cacheable(
            &p2,
            &resp(200, &[("cache-control", "no-cache")]),
            false,
            now,
        );
        assert!(fresh_secs(c, now).unwrap() < 0);
    }

    #[test]
    fn refusals() {
        let now = SystemTime::now();
        let mut p = policy(CacheMode::Public);
        p.ttl = Some(Duration::from_secs(60));
        for (status, h) in [
            (200, ("cache-control", "no-store")),
            (200, ("cache-control", "private, max-age=60")),
            (200, ("set-cookie", "s=1")),
            (200, ("vary", "Accept, *")),
            (206, ("content-range", "bytes 0-1/2")),
            (500, ("cache-control", "max-age=60")),
        ] {
            assert!(
                !response_cacheable(&p, &resp(status, &[h]), false, now).is_cacheable(),
                "{status} {h:?}"
            );
        }
    }

    #[test]
    fn credentialed_requests_need_shared_and_public() {
        let now = SystemTime::now();
        let r = resp(200, &[("cache-control", "max-age=60")]);
        let rp = resp(200, &[("cache-control", "public, max-age=60")]);
        assert!(!response_cacheable(&policy(CacheMode::Public), &rp, true, now).is_cacheable());
        assert!(!response_cacheable(&policy(CacheMode::Shared), &r, true, now).is_cacheable());
        assert!(response_cacheable(&policy(CacheMode::Shared), &rp, true, now).is_cacheable());
    }

    #[test]
    fn revalidate_stores_private_without_cookies() {
        let now = SystemTime::now();
        let r = resp(
            200,
            &[
                ("cache-control", "private"),
                ("set-cookie", "sess=alice"),
                ("etag", "\"v1\""),
            ],
        );
        match response_cacheable(&policy(CacheMode::Revalidate), &r, true, now) {
            RespCacheable::Cacheable(m) => {
                assert!(!m.headers().contains_key("set-cookie"));
                assert!(!m.is_fresh(now));
                assert_eq!(m.headers()["etag"], "\"v1\"");
            }
            RespCacheable::Uncacheable(r) => panic!("{r:?}"),
        }
    }

    #[test]
    fn stale_windows_from_origin_or_route_and_must_revalidate() {
        let now = SystemTime::now();
        let p = policy(CacheMode::Public);
        let m = response_cacheable(
            &p,
            &resp(200, &[("cache-control", "max-age=1")]),
            false,
            now,
        )
        .unwrap_meta();
        assert_eq!(m.stale_if_error_sec(), 3600);
        let m = response_cacheable(
            &p,
            &resp(200, &[("cache-control", "max-age=1, stale-if-error=5")]),
            false,
            now,
        )
        .unwrap_meta();
        assert_eq!(m.stale_if_error_sec(), 5);
        let m = response_cacheable(
            &p,
            &resp(200, &[("cache-control", "max-age=1, must-revalidate")]),
            false,
            now,
        )
        .unwrap_meta();
        assert_eq!(m.stale_if_error_sec(), 0);
    }

    #[test]
    fn variance_follows_vary() {
        let now = SystemTime::now();
        let p = policy(CacheMode::Public);
        let m = response_cacheable(
            &p,
            &resp(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            ),
            false,
            now,
        )
        .unwrap_meta();
        let fr = variance(&m, &req(&[("accept-language", "fr")]));
        let en = variance(&m, &req(&[("accept-language", "en")]));
        assert!(fr.is_some());
        assert_ne!(fr, en);
        assert_eq!(fr, variance(&m, &req(&[("accept-language", "fr")])));
        let plain = response_cacheable(
            &p,
            &resp(200, &[("cache-control", "max-age=60")]),
            false,
            now,
        )
        .unwrap_meta();
        assert_eq!(variance(&plain, &req(&[("accept-language", "fr")])), None);
    }
}
