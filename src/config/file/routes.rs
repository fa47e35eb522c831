//! `routes`: what a route matches and what applies to it.

use super::cache::RouteCacheFile;
use super::limits::RateLimitFile;
use super::text::{DurationText, SizeText};
use schemars::JsonSchema;
use serde::Deserialize;

/// One route: which requests, and where they go.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Name used in metrics, logs and the admin API. Unique.
    pub name: String,
    /// Which requests this route takes. An empty match takes everything.
    #[serde(rename = "match", default)]
    pub matcher: MatchFile,
    /// The origin (a key of `origins`) that serves this route.
    pub origin: String,
    /// Rate limits, all checked before any is charged: a request refused by one limit
    /// uses no token of the others.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitFile>,
    /// Add the `RateLimit` / `RateLimit-Policy` headers to admitted responses too (they
    /// are always on 429 responses). Default false.
    #[serde(default)]
    pub rate_limit_headers: Option<bool>,
    /// The waiting room (a key of `waiting_rooms`) guarding this route.
    #[serde(default)]
    pub waiting_room: Option<String>,
    /// The feature this route belongs to (`visio`, `chat`…): degradation levels switch
    /// features off.
    #[serde(default)]
    pub feature: Option<String>,
    /// Longest time for a whole exchange on this route, overriding the origin's
    /// `total_timeout` (e.g. `10s` on a search that must answer fast). Never applied to
    /// upgraded connections. Default: the origin's (none unless set).
    #[serde(default)]
    pub total_timeout: Option<DurationText>,
    /// Cache responses of this route (`GET`/`HEAD`), following the origin's
    /// `Cache-Control`, `Expires`, `ETag` and `Last-Modified`.
    #[serde(default)]
    pub cache: Option<RouteCacheFile>,
    /// Largest request body on this route (`50MB` for teachers' uploads); a larger one is
    /// answered `413` and never reaches the origin. `0`: no limit. Default:
    /// `server.request_bodies.max_body_size`.
    #[serde(default)]
    pub max_body_size: Option<SizeText>,
    /// Read the whole request body before taking an origin slot (default true, like
    /// nginx's `proxy_request_buffering on`). `false` streams the body to the origin as it
    /// arrives, holding a slot meanwhile: only for routes that need streaming uploads.
    #[serde(default)]
    pub request_buffering: Option<bool>,
}

/// Request matching. All given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    /// Host names (the `Host` header without port). `*.example.fr` matches any subdomain.
    /// Absent: any host.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// One host name; shorthand for `hosts: [name]`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, compared byte for byte (like nginx `location /prefix`). Default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// HTTP methods, e.g. `[GET, HEAD]`. Absent: any method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}
