//! `cache` (storage) and `routes[].cache` (each route's rules).

use super::text::{DurationText, SizeText};
use schemars::JsonSchema;
use serde::Deserialize;

/// Cache storage (pingora-cache over a foyer memory + disk store).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheStorageFile {
    /// Memory tier size. Past it, the least useful objects are evicted. Default `256MiB`.
    #[serde(default)]
    pub memory: Option<SizeText>,
    /// Optional disk tier: objects are written there as they are stored, and found again
    /// after a restart.
    #[serde(default)]
    pub disk: Option<CacheDiskFile>,
    /// Largest response stored, for every route (a route may lower it). Bigger
    /// responses pass through uncached. Default `64MiB` (without a disk tier, at most a
    /// quarter of `memory`).
    #[serde(default)]
    pub max_object_size: Option<SizeText>,
    /// How long concurrent misses for one object wait for the single origin fetch
    /// before going to the origin themselves. Default `10s`.
    #[serde(default)]
    pub lock_timeout: Option<DurationText>,
}

/// The disk tier of the cache.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheDiskFile {
    /// Directory of the cache files (created if missing; relative to the config file).
    pub path: String,
    /// Disk space the tier may use, e.g. `10GiB`. At least 4 × the largest object.
    /// Larger than the whole filesystem holding `path`: refused at start; more than its
    /// free space: a warning, and the tier turns itself off while the filesystem is short
    /// of space (docs/operations.md, "A cache disk that fills up").
    pub size: SizeText,
}

/// Who may be served a stored response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheModeFile {
    /// Requests without credentials (no `Authorization`, no cookie but ecluse's own)
    /// share the cache; credentialed requests bypass it.
    Public,
    /// Like `public`, and a credentialed request may be served from (and fill) the cache
    /// when the origin marks the response `Cache-Control: public`.
    Shared,
    /// Authorize-then-serve: every request goes to the origin as a conditional request
    /// with its own credentials; `304` serves the stored body, `401`/`403` pass through,
    /// `200` replaces the stored copy. For files behind the ENT login. When the origin
    /// fails, a stored copy goes only to credentials it authorized for that file within
    /// `stale_if_error`.
    Revalidate,
}

/// How the query string enters the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheQueryFile {
    /// Parameters sorted, so `?a=1&b=2` and `?b=2&a=1` are one object (default).
    Sort,
    /// The query exactly as sent.
    Keep,
    /// The query is left out of the key (the origin must ignore it too).
    Ignore,
}

/// A route's cache policy. Only `GET` and `HEAD` are served from the cache.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheFile {
    /// `public` (default), `shared` or `revalidate`: who may be served a stored copy.
    #[serde(default)]
    pub mode: Option<CacheModeFile>,
    /// Freshness when the origin gives none (no `Cache-Control: max-age`, no `Expires`).
    /// Absent: such responses are not stored (except in `revalidate` mode, where they are
    /// stored and always revalidated).
    #[serde(default)]
    pub ttl: Option<DurationText>,
    /// Upper bound on the freshness the origin asks for: a re-uploaded file reaches
    /// students at most this late.
    #[serde(default)]
    pub max_ttl: Option<DurationText>,
    /// Once stale, keep serving the old copy this long while one request refreshes it in
    /// the background (unless the origin's `stale-while-revalidate` says otherwise).
    #[serde(default)]
    pub stale_while_revalidate: Option<DurationText>,
    /// Once stale, serve the old copy this long when the origin fails (error, timeout,
    /// 5xx) (unless the origin's `stale-if-error` says otherwise). In `revalidate` mode,
    /// only to credentials the origin authorized for that file within this window.
    #[serde(default)]
    pub stale_if_error: Option<DurationText>,
    /// Largest response stored for this route (at most the storage's).
    #[serde(default)]
    pub max_object_size: Option<SizeText>,
    /// `sort` (default), `keep` or `ignore`: how the query string enters the key.
    #[serde(default)]
    pub query: Option<CacheQueryFile>,
    /// `revalidate` mode only (default false): send the stored copy's strong `ETag` on
    /// behalf of credentials the origin never gave that copy, and serve it on the
    /// origin's 304. Only for an ENT known to check the asker's credentials before it
    /// answers a conditional request: many answer 304 by the tag alone, and then one
    /// pupil's stored file reaches another. Off, such credentials are asked without
    /// validators. See `docs/policy.md`.
    #[serde(default)]
    pub trust_strong_etags: Option<bool>,
}
