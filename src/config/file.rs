//! The configuration as ops write it: serde structs that mirror the YAML one to one.
//!
//! Nothing here is used on the request path: `runtime.rs` turns these into validated types.
//! Doc comments become descriptions in the generated JSON Schema (`config/ecluse.schema.json`),
//! which editors show on hover, so they are written for ops.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A duration written with its unit (`250ms`, `30s`, `10m`, `1h`, `1d`). Kept as text
/// here; `runtime` parses it so that a bad value is reported with the others.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DurationText(pub String);

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d)$",
            "description": "A duration with its unit: 250ms, 30s, 10m, 1h, 1d.",
            "x-ecluse-expected": "a duration like `30s`"
        })
    }
}

/// A drain grace: a duration (`30s`, `0s` for at once) or `never`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DrainText(pub String);

impl JsonSchema for DrainText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Drain".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^(never|[0-9]+(\\.[0-9]+)?(ms|s|m|min|h|d))$",
            "description": "A grace with its unit (30s, 0s for at once), or `never`.",
            "x-ecluse-expected": "a duration like `30s`, or `never`"
        })
    }
}

/// A byte size with its unit (`512KiB`, `64MiB`, `2GiB`; `KB`/`MB`/`GB` are powers of
/// ten). Kept as text here; `runtime` parses it so that a bad value is reported with the others.
/// A bare number of bytes (`500`) is accepted too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeText(pub String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size like `64MiB`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for SizeText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["string", "integer"],
            "minimum": 0,
            "pattern": "^[0-9]+ *(B|KB|kB|MB|GB|KiB|MiB|GiB)?$",
            "description": "A byte size: 512KiB, 64MiB, 2GiB (KB/MB/GB are powers of ten).",
            "x-ecluse-expected": "a size like `64MiB`"
        })
    }
}

/// An ecluse policy file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Plain-HTTP listen addresses of the proxy (HTTP/1.1, and HTTP/2 cleartext by prior
    /// knowledge): `"IP:PORT"`, or `{ address: "IP:PORT", proxy_protocol: true,
    /// proxy_protocol_from: [CIDR…] }` behind an L4 load balancer. Port 0 picks a free
    /// port (tests). Changing it needs a restart.
    pub listen: Vec<ListenFile>,
    /// Optional TLS listener (rustls). HTTP/2 is negotiated by ALPN.
    #[serde(default)]
    pub tls: Option<TlsFile>,
    /// The admin listener: metrics, health, state and the mutating `/admin/*` endpoints.
    #[serde(default)]
    pub admin: Option<AdminFile>,
    /// Process-wide settings.
    #[serde(default)]
    pub server: Option<ServerFile>,
    /// Where the one-JSON-line-per-request access log goes.
    #[serde(default)]
    pub access_log: Option<AccessLogFile>,
    /// The upstream ENT servers, by name. Routes refer to these names.
    pub origins: BTreeMap<String, OriginFile>,
    /// Waiting rooms, by name. Routes join one with `waiting_room: NAME`.
    #[serde(default)]
    pub waiting_rooms: BTreeMap<String, WaitingRoomFile>,
    /// Load levels that switch heavy features off, automatically or by hand.
    #[serde(default)]
    pub degradation: Option<DegradationFile>,
    /// Groups of users treated apart (staff, exam candidates…), tried in order: a
    /// request belongs to the first class it matches. Rate limits can exempt a class.
    #[serde(default)]
    pub priority_classes: Vec<PriorityClassFile>,
    /// Cache storage shared by every route with a `cache:` policy: a bounded memory tier
    /// and an optional disk tier that survives restarts. Changing it needs a restart.
    #[serde(default)]
    pub cache: Option<CacheStorageFile>,
    /// Routes, tried in order: the first whose `match` fits the request wins.
    pub routes: Vec<RouteFile>,
    /// Fleet mode: several ecluse nodes share state through Redis. Absent: one node, all
    /// state in process. Changing it needs a restart.
    #[serde(default)]
    pub cluster: Option<ClusterFile>,
    /// The pages ecluse writes itself (queue, "not open yet", errors): time zone,
    /// branding, and templates replacing the built-in ones. See `docs/policy.md`.
    #[serde(default)]
    pub pages: Option<PagesFile>,
}

/// The pages ecluse writes itself.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagesFile {
    /// IANA time zone of the times pages show (`Europe/Paris`, `America/Cayenne`,
    /// `Indian/Reunion`). Default `Europe/Paris`. JSON answers carry RFC 3339 with this
    /// zone's offset.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Name, logo, colours and help link shown on every page.
    #[serde(default)]
    pub brand: Option<BrandFile>,
    /// minijinja template files replacing built-in pages, by page (paths relative to the
    /// policy file). Reloaded with the policy; each is rendered once with sample values
    /// at load, so a broken one is refused by `ecluse check`.
    #[serde(default)]
    pub templates: Option<PageTemplatesFile>,
}

/// Branding shared by every page.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrandFile {
    /// The workspace's name, at the top of every page and in the tab title (default
    /// `ENT`). A room's `brand` overrides it on its queue pages.
    #[serde(default)]
    pub name: Option<String>,
    /// Logo image (`https://…` or a path on this site such as `/static/logo.svg`),
    /// shown instead of the name; its alternative text is the name. Serve it from a
    /// path outside the waiting room (`inside_paths`).
    #[serde(default)]
    pub logo_url: Option<String>,
    /// A help page linked at the bottom of every page (`https://…` or `/path`).
    #[serde(default)]
    pub help_url: Option<String>,
    /// Colour of links, the position and buttons on light backgrounds (`#rrggbb`);
    /// must reach a 4.5:1 contrast on them (WCAG AA). Default `#1d4f91`.
    #[serde(default)]
    pub accent: Option<String>,
    /// The same colour in dark mode; must reach 4.5:1 on dark backgrounds. Default `#8fb8ff`.
    #[serde(default)]
    pub accent_dark: Option<String>,
}

/// Template files replacing built-in pages. Each may `{% extends "layout" %}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageTemplatesFile {
    /// The frame of every page (head, colours, header, footer with the help link and
    /// the request id).
    #[serde(default)]
    pub layout: Option<String>,
    /// The queue page (a room's `template_file` overrides it for that room).
    #[serde(default)]
    pub queue: Option<String>,
    /// Before a scheduled opening's pre-queue window.
    #[serde(default)]
    pub not_open_yet: Option<String>,
    /// 429, rate limited.
    #[serde(default)]
    pub rate_limited: Option<String>,
    /// 503, a feature switched off.
    #[serde(default)]
    pub feature_off: Option<String>,
    /// 503, load shed (origin at capacity, uploads buffer full).
    #[serde(default)]
    pub shed: Option<String>,
    /// 502 and 504, the origin failed or was too slow.
    #[serde(default)]
    pub origin_error: Option<String>,
    /// 400, a malformed request.
    #[serde(default)]
    pub bad_request: Option<String>,
    /// Other errors (404, 411, 413, 500).
    #[serde(default)]
    pub error: Option<String>,
}

impl PageTemplatesFile {
    /// (page name, file) for each template given.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("layout", &self.layout),
            ("queue", &self.queue),
            ("not_open_yet", &self.not_open_yet),
            ("rate_limited", &self.rate_limited),
            ("feature_off", &self.feature_off),
            ("shed", &self.shed),
            ("origin_error", &self.origin_error),
            ("bad_request", &self.bad_request),
            ("error", &self.error),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

/// What a node does with shared limits while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailModeFile {
    /// Each node enforces its share of every global limit (limit ÷ nodes last seen
    /// alive): the fleet never admits more than configured (default).
    LocalShare,
    /// Each node enforces the whole limit: nothing is refused that one node would have
    /// let through, at the price of up to N × the limit fleet-wide.
    LocalFull,
}

/// Fleet mode settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Redis URL: `redis://[:password@]host:6379/db`, or `rediss://…` for TLS (the
    /// certificate is checked against `tls_ca_file`, else the system's roots). Give
    /// `redis` or `sentinel`, not both.
    #[serde(default)]
    pub redis: Option<String>,
    /// Find the master through Redis Sentinel and follow its failovers, instead of one
    /// fixed `redis` address. See docs/operations.md (fleet).
    #[serde(default)]
    pub sentinel: Option<SentinelFile>,
    /// PEM file of the certificate authority that signed the Redis servers' (and
    /// Sentinels') TLS certificates, for `rediss://` and `sentinel.tls`. Default: the
    /// system's roots. Relative to the policy file.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// Prefix of every key. The fleet's own keys are written `{PREFIX}:…` (one Redis
    /// Cluster hash tag, one slot); each waiting room's keys are written
    /// `{PREFIX:room:NAME}:…`, a hash tag of their own, so rooms spread over a Cluster's
    /// masters. Default `ecluse`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// This node's name in the fleet (default: host name and process id).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Longest wait for one Redis exchange before the node falls back. Default `200ms`.
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// How often a node exchanges its counts and learns the fleet's state. Default
    /// `250ms`. A node unheard of for 8 intervals (at least 2 s) counts as gone.
    #[serde(default)]
    pub sync_interval: Option<DurationText>,
    /// `local_share` (default) or `local_full`: limits while Redis is unreachable.
    #[serde(default)]
    pub fail_mode: Option<FailModeFile>,
    /// How many nodes the fleet has, for a node that starts while Redis is unreachable
    /// and so has never seen the others: its local share is 1/`expected_nodes` of each
    /// global limit until Redis answers. Afterwards the nodes seen alive count. Default 1
    /// (such a node enforces the whole limit alone).
    #[serde(default)]
    pub expected_nodes: Option<u32>,
    /// `true` when `redis` is a node of a Redis Cluster: the client learns the cluster's
    /// slots from it and follows `MOVED` / `ASK` redirections (the fleet's own keys are in
    /// one slot; each waiting room has a slot of its own). Default `false` (one Redis).
    #[serde(default)]
    pub redis_cluster: bool,
}

/// Redis Sentinel: where the Sentinels are and which master they watch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentinelFile {
    /// The Sentinels, as URLs: `redis://host:26379/` (`redis://:password@…` when the
    /// Sentinels require a password; `rediss://…` when they speak TLS). At least one; give
    /// them all (a node asks the next one when one does not answer).
    pub addresses: Vec<String>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME …`).
    pub master_name: String,
    /// User name on the master (Redis ACL). Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the master's password (`requirepass` / ACL). Default:
    /// none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The master and its replicas speak TLS (checked against `tls_ca_file`). Default
    /// `false`.
    #[serde(default)]
    pub tls: bool,
    /// Database number on the master. Default 0.
    #[serde(default)]
    pub db: Option<i64>,
}

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

/// TLS termination. Certificates are read at every load: a reload (SIGHUP,
/// `POST /admin/reload`, or a change of the policy file or of a certificate or key file
/// when `watch_config` is on)
/// presents renewed ones to new connections; open connections keep theirs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// TLS listen addresses, e.g. `["0.0.0.0:443"]`, or `{ address: "IP:PORT",
    /// proxy_protocol: true, proxy_protocol_from: [CIDR…] }` behind an L4 load balancer
    /// (the PROXY header comes before the TLS handshake). Changing them needs a restart.
    pub listen: Vec<ListenFile>,
    /// PEM certificate chain (leaf first): the default certificate, presented when no
    /// other one carries the name the client asks for (SNI).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// More certificates, chosen by the name the client asks for (SNI) among each
    /// certificate's DNS names (`*.example.org` covers one label). Without `cert_file`,
    /// the first one is the default.
    #[serde(default)]
    pub certificates: Vec<CertificateFile>,
    /// Offer HTTP/2 by ALPN (default true). Changing it needs a restart.
    #[serde(default)]
    pub http2: Option<bool>,
}

/// One certificate of the TLS listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM certificate chain (leaf first).
    pub cert_file: String,
    /// PEM private key of this certificate.
    pub key_file: String,
    /// The `name` label of `ecluse_tls_certificate_expiry_seconds` (default: the
    /// certificate's first DNS name).
    #[serde(default)]
    pub name: Option<String>,
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Address of the admin HTTP listener. Keep it on loopback or a management network.
    /// Default `127.0.0.1:9090`.
    #[serde(default)]
    pub listen: Option<String>,
    /// File holding the bearer token required by mutating `/admin/*` endpoints. Without
    /// it, mutating endpoints answer only on a loopback listener: a listener on any other
    /// address without a token is refused (`check`, `run` and reload).
    #[serde(default)]
    pub token_file: Option<String>,
    /// Let a non-loopback admin listener run without `token_file`: anyone who reaches it
    /// can pause rooms, force levels and purge the cache. Only for a management network
    /// nobody else can reach; logged as a warning at every start. Default false.
    #[serde(default)]
    pub insecure_open_admin_network: Option<bool>,
}

/// Process-wide settings. Changes to `threads` need a restart; the rest reloads live.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads of the proxy (default: 1 per core).
    #[serde(default)]
    pub threads: Option<u32>,
    /// Peers whose `X-Forwarded-For` is believed (your load balancer), as CIDRs. For any
    /// other peer the client IP is the socket's address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Ports clients reach this deployment on besides the scheme's default and ecluse's
    /// own listeners, e.g. `[8443]` for a load balancer on `https://ent.fr:8443`. A
    /// request whose `Host` (or `:authority`) names any other port is answered 421 (see
    /// `docs/policy.md`).
    #[serde(default)]
    pub public_ports: Vec<u16>,
    /// On SIGTERM: how long to keep serving (while `/readyz` says 503 so that the load
    /// balancer moves away) before closing the listeners. Default `5s`.
    #[serde(default)]
    pub grace_period: Option<DurationText>,
    /// On SIGTERM, after the grace period: how long in-flight requests may take to
    /// finish. Default `30s`.
    #[serde(default)]
    pub shutdown_timeout: Option<DurationText>,
    /// Unix socket used to hand the listening sockets to a new ecluse process during a
    /// zero-downtime upgrade (`ecluse run --upgrade`). Default: `upgrade.sock` in
    /// `$RUNTIME_DIRECTORY` under systemd, else in this instance's private directory
    /// (`$TMPDIR/ecluse-<uid>/<policy name>-<hash>/`), never shared with another instance.
    #[serde(default)]
    pub upgrade_sock: Option<String>,
    /// Idle upstream connections kept for reuse, in total. Default 1024.
    #[serde(default)]
    pub upstream_keepalive_pool: Option<u32>,
    /// Where waiting-room state is saved (every 2s and at shutdown) so that a restart
    /// keeps everyone's place. Default: `$STATE_DIRECTORY` under systemd (the package's
    /// `/var/lib/ecluse`), else this instance's private directory
    /// (`$TMPDIR/ecluse-<uid>/<policy name>-<hash>/`, lost at a reboot): set a persistent
    /// directory in production. Created with mode 0700; refused if another user owns it.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// Watch the config file, and the TLS listener's certificate and key files, and
    /// reload when one changes (default true): a certificate renewal needs no HUP. SIGHUP
    /// and `POST /admin/reload` always work. See `docs/policy.md`.
    #[serde(default)]
    pub watch_config: Option<bool>,
    /// Protections against slow, greedy or oversized clients on the proxy listeners
    /// (slowloris, trickled uploads, connection floods, huge heads).
    #[serde(default)]
    pub clients: Option<ClientsFile>,
    /// Which forwarding headers reach the ENT, and what ecluse writes itself
    /// (`X-Forwarded-*`, `X-Real-IP`, optionally RFC 7239 `Forwarded`).
    #[serde(default)]
    pub forwarding: Option<ForwardingFile>,
    /// Request bodies: the default size limit and how bodies are buffered before an
    /// origin slot is taken (like nginx's `client_max_body_size` and
    /// `proxy_request_buffering`).
    #[serde(default)]
    pub request_bodies: Option<RequestBodiesFile>,
    /// How request paths are normalized before any decision (route, limits, rooms,
    /// features, cache, purges) and what the ENT receives.
    #[serde(default)]
    pub paths: Option<PathsFile>,
}

/// The edge owns forwarding headers. From a peer outside `trusted_proxies`, every
/// forwarding header (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `True-Client-IP`…) is
/// removed and ecluse writes its own; from a trusted proxy they are kept and extended.
/// Rewrite headers (`X-Original-URL`, `X-Rewrite-URL`, method overrides…) are removed
/// from every peer.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardingFile {
    /// Also write an RFC 7239 `Forwarded` header (`for=…;host=…;proto=…`, IPv6 as
    /// `for="[2001:db8::1]"`), appended to a trusted proxy's. Default false.
    #[serde(default)]
    pub forwarded_header: Option<bool>,
    /// More header names removed from untrusted peers (kept from trusted proxies), e.g.
    /// the `X-Remote-User` your SSO gateway sets. Any case; `_` spellings included.
    #[serde(default)]
    pub strip_from_untrusted: Vec<String>,
    /// Names of the built-in lists to forward as the client sent them (say why in a
    /// comment: each one lets a client speak for the edge), e.g. `X-HTTP-Method-Override`
    /// for an old mobile app.
    #[serde(default)]
    pub pass_through: Vec<String>,
    /// Header names with a character other than letters, digits and `-`
    /// (`X_Forwarded_Host`, `X.Real.IP`): CGI, WSGI and PHP backends read them as their
    /// `-` spelling. `drop` (default, like nginx), `reject` (400) or `keep` (a spelling of
    /// a header the edge owns is removed all the same).
    #[serde(default)]
    pub odd_header_names: Option<OddNamesFile>,
}

/// `server.forwarding.odd_header_names`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OddNamesFile {
    /// Remove the field before anything reads it.
    #[default]
    Drop,
    /// Answer `400 Bad Request`.
    Reject,
    /// Forward it (unless it spells a header the edge owns).
    Keep,
}

/// How request bodies are received. On a buffering route (the default) the whole body is
/// read before the request takes one of the origin's `max_inflight` slots: first in
/// memory, then in an unnamed temporary file.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBodiesFile {
    /// Largest request body a route accepts unless it sets its own `max_body_size`; a
    /// larger one is answered `413`. `0`: no limit. Default `1MiB` (nginx's
    /// `client_max_body_size`).
    #[serde(default)]
    pub max_body_size: Option<SizeText>,
    /// Bytes of one body kept in memory; past this the body goes to a temporary file.
    /// Default `128KiB`, at most `64MiB`.
    #[serde(default)]
    pub memory_buffer: Option<SizeText>,
    /// Directory of the temporary files (created private, mode 0700, if missing; one
    /// that others can read is refused). Files have no name: they vanish when the request
    /// ends, however it ends. Default `ecluse-bodies` in the system temp directory.
    #[serde(default)]
    pub temp_dir: Option<String>,
    /// Disk all buffered bodies may use together, claimed as bytes arrive (never from a
    /// `Content-Length`); a body that finds neither memory nor disk left is answered `503`
    /// with `Retry-After`. Default `1GiB`.
    #[serde(default)]
    pub max_disk: Option<SizeText>,
    /// Memory all buffered bodies may use together; when it is used up, bodies go to
    /// disk. A body's buffer grows with the bytes that arrived, up to `memory_buffer`.
    /// `0`: every body to disk. Default `64MiB`.
    #[serde(default)]
    pub max_memory: Option<SizeText>,
    /// What one client address (IPv6 grouped by /64) may hold in memory and on disk
    /// together, over all its bodies at once; past it that client's upload is answered
    /// `503` with `Retry-After`, nobody else's. Default: a quarter of `max_memory` +
    /// `max_disk`, at least the largest buffering route's `max_body_size`. A school
    /// behind one address shares it: see docs/policy.md.
    #[serde(default)]
    pub max_per_client: Option<SizeText>,
}

/// The one canonical path (docs/policy.md, "One canonical path"). Every decision reads it, and it
/// is what the ENT receives.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathsFile {
    /// Merge repeated slashes (`//visio` is `/visio`), as most backends do. Default
    /// true; turn it off only for an ENT that treats `//` as different from `/`.
    #[serde(default)]
    pub merge_slashes: Option<bool>,
    /// `%2F`, `%5C` and a raw `\` in a path: `reject` (400, default), `keep` (kept
    /// encoded, for an ENT that reads them as data) or `decode` (read as `/`).
    #[serde(default)]
    pub escaped_slashes: Option<EscapedSlashesFile>,
    /// A `;` in a path (`/visio;jsessionid=1`): `reject` (400, default), `strip` (removed
    /// from each segment, as Java servlet containers do, before routing and forwarding)
    /// or `keep` (an ordinary character, for an ENT that never strips them).
    #[serde(default)]
    pub path_params: Option<PathParamsFile>,
    /// The ENT reads paths case-insensitively (IIS, Windows-hosted or case-insensitive
    /// routers): the path is lower-cased before the cache key, purges and forwarding, so
    /// the ENT receives `/visio/room` for `/VISIO/Room` and the cache keeps one copy.
    /// Default false: the case is kept (a case-sensitive ENT's `/Files/a` and `/files/a`
    /// are two resources, cached apart). Route prefixes, `inside_paths` and class
    /// `path_prefixes` match case-insensitively either way.
    #[serde(default)]
    pub case_insensitive: Option<bool>,
    /// Front controllers the ENT routes by PATH_INFO (`["/index.php"]`): for every policy
    /// decision, `/index.php/visio/room` is `/visio/room`. Written as canonical paths
    /// without a trailing `/`. Default none.
    #[serde(default)]
    pub front_controllers: Option<Vec<String>>,
}

/// What `%2F`, `%5C` and `\` in a path become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesFile {
    /// 400 Bad Request (default).
    Reject,
    /// Kept encoded (`\` becomes `%5C`); unsafe in front of an ENT that decodes them.
    Keep,
    /// Decoded into `/` before slashes are merged and dot segments removed.
    Decode,
}

/// What a `;` in a path becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathParamsFile {
    /// 400 Bad Request (default).
    Reject,
    /// `;…` removed from each segment (Tomcat's reading).
    Strip,
    /// An ordinary character.
    Keep,
}

/// Limits on what one client may hold or send. A new value applies to connections
/// opened after the reload (sizes: to every request after it).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    /// Total time a client has to send a whole request head, counted from the
    /// connection's opening or from the first byte of the next request on a kept-alive
    /// connection. Trickling a head byte by byte (slowloris) does not extend it. Default
    /// `10s`.
    #[serde(default)]
    pub header_timeout: Option<DurationText>,
    /// Lowest average upload speed accepted for a request body, in bytes per second
    /// (`1KiB` = 1024 bytes/s), measured over the time ecluse waits for the client, after
    /// `body_grace`. `0` switches the check off. Default `500` (a very poor mobile link
    /// still passes).
    #[serde(default)]
    pub body_min_rate: Option<SizeText>,
    /// Waiting time a body may take before `body_min_rate` applies. Default `20s`.
    #[serde(default)]
    pub body_grace: Option<DurationText>,
    /// How long an idle kept-alive connection stays open waiting for the next request.
    /// Default `60s`.
    #[serde(default)]
    pub keepalive_timeout: Option<DurationText>,
    /// Longest wait for each write to the client (nginx `send_timeout`): a client that
    /// reads nothing of a response for this long is cut (logged, counted in
    /// `ecluse_client_timeouts_total{phase="send"}`). A download of any length goes on
    /// as long as the client keeps reading. Default `60s`.
    #[serde(default)]
    pub send_timeout: Option<DurationText>,
    /// Lowest speed a client must read a response at, in bytes per second, each write
    /// taking at most its size at this rate (at least 1 s); replaces `send_timeout` when
    /// set. `0` (default): off, only `send_timeout` applies.
    #[serde(default)]
    pub send_min_rate: Option<SizeText>,
    /// Open client connections accepted at once, over all proxy listeners; one more is
    /// answered `503` and closed. `0`: no cap. Default `20000` (keep the process's open
    /// file limit above it).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Open connections accepted at once from one client IP address (the socket's: behind
    /// a load balancer this is the balancer, so leave it off there). A whole school can sit
    /// behind one NAT address, so size it for that. `0`: no cap (default).
    #[serde(default)]
    pub max_connections_per_ip: Option<u32>,
    /// Longest request line (`GET /path?query HTTP/1.1`); a longer one is answered `414`.
    /// Default `8KiB`.
    #[serde(default)]
    pub max_request_line: Option<SizeText>,
    /// Largest header section (all field lines); a larger one is answered `431`. At most
    /// `1MiB`. Default `64KiB`.
    #[serde(default)]
    pub max_header_bytes: Option<SizeText>,
    /// Most header fields in one request; more are answered `431`. At most 256.
    /// Default 100.
    #[serde(default)]
    pub max_headers: Option<u32>,
}

/// Access log: one JSON object per line and per request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// Write the access log (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `stdout` (default) or a file path (appended to).
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameters whose values are written as `REDACTED` in the log's `query`
    /// field (names compared without case, after percent-decoding, `name[]` included).
    /// Replaces the default list (CAS `ticket`, OAuth `code`/`token`s, `password`,
    /// `session`…, see docs/policy.md); `[]` logs queries whole.
    #[serde(default)]
    pub redact_query: Option<Vec<String>>,
}

/// How the next server of an origin is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalanceFile {
    /// Each healthy server in turn.
    #[default]
    RoundRobin,
    /// The healthy server with the fewest requests in flight (ties in turn).
    LeastConnections,
}

/// A named group of upstream servers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginFile {
    /// `host:port` of each server (IP literals or names resolved at load).
    pub servers: Vec<String>,
    /// Hard maximum of requests in flight to this origin, all servers together: past it
    /// ecluse answers 503 at once instead of piling more onto a saturated ENT.
    #[serde(default)]
    pub max_inflight: Option<u32>,
    /// How long a request of an admitted waiting-room session or of a priority class
    /// waits for a free slot under the limit before its 503 (a short wait at a saturated
    /// ENT beats an error page for someone who already queued). Anonymous requests never
    /// wait; a priority-class request with a body (an upload) waits up to `total_timeout`
    /// instead. Default `2s`; `0s` refuses at once.
    #[serde(default)]
    pub queue_timeout: Option<DurationText>,
    /// Server selection (default `round_robin`).
    #[serde(default)]
    pub balance: Option<BalanceFile>,
    /// Time to establish a TCP (and TLS) connection. Default `2s`.
    #[serde(default)]
    pub connect_timeout: Option<DurationText>,
    /// Longest wait for each read from the server (headers or a body chunk). Default `30s`.
    #[serde(default)]
    pub read_timeout: Option<DurationText>,
    /// Longest wait for each write to the server (a request head or a body chunk).
    /// Default: `read_timeout`.
    #[serde(default)]
    pub write_timeout: Option<DurationText>,
    /// Longest time for the whole exchange with the origin, a response that keeps making
    /// progress included (a route's own `total_timeout` overrides it). Default: none, as
    /// nginx: `read_timeout` already ends an exchange that stops making progress. Never
    /// applied to upgraded connections (WebSocket), which have `tunnel_idle_timeout`.
    #[serde(default)]
    pub total_timeout: Option<DurationText>,
    /// An upgraded connection (WebSocket) through this origin is closed when no byte has
    /// passed either way for this long. Default `5m`.
    #[serde(default)]
    pub tunnel_idle_timeout: Option<DurationText>,
    /// Longest life of an upgraded connection, traffic or not. Default: none.
    #[serde(default)]
    pub tunnel_max_lifetime: Option<DurationText>,
    /// How long an idle pooled connection to this origin is kept. Default `60s`.
    #[serde(default)]
    pub idle_timeout: Option<DurationText>,
    /// Connect to the servers over TLS: `true`, or the settings
    /// `{ sni, verify, ca_file, client_cert, client_key }`. Proxied requests and active
    /// health checks use the same settings.
    #[serde(default)]
    pub tls: Option<OriginTlsFile>,
    /// SNI and certificate name when `tls` is on (default: the servers' host name). Same
    /// as `tls.sni`; set one of them.
    #[serde(default)]
    pub sni: Option<String>,
    /// Attempts on another server after a failure that is safe to retry. Default 2.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Active health checks (default: a TCP connect every 5s).
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    /// Passive ejection: a server failing this many times in a row is taken out of
    /// rotation for `ejection_time`.
    #[serde(default)]
    pub passive: Option<PassiveFile>,
    /// Adaptive concurrency: keep the origin near its best throughput under
    /// `max_inflight` (which it needs), refusing the excess at once with a 503.
    #[serde(default)]
    pub adaptive_concurrency: Option<AdaptiveFile>,
}

/// `tls:` of an origin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OriginTlsFile {
    /// `true`: TLS with the defaults (verify against the system's authorities);
    /// `false`: plain TCP.
    On(bool),
    /// TLS with these settings.
    Settings(OriginTlsSettingsFile),
}

/// TLS settings of an origin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginTlsSettingsFile {
    /// The name sent as SNI and checked on the servers' certificate (default: the servers'
    /// host name). Needed with `verify` when servers are given as IP addresses.
    #[serde(default)]
    pub sni: Option<String>,
    /// Check the servers' certificate chain and name (default true). `false` accepts any
    /// certificate: for a test bench only.
    #[serde(default)]
    pub verify: Option<bool>,
    /// PEM file of the authorities trusted for these servers, instead of the system's
    /// (an ENT behind an internal CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate presented to the servers (mutual TLS); needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
}

/// Adaptive concurrency limit (TCP Vegas on latency, with a slow start and a probe of the
/// unloaded latency; see docs/policy.md, "Degradation").
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveFile {
    /// Lowest limit (default 4).
    #[serde(default)]
    pub min: Option<u32>,
    /// Congestion when the recent p50 latency exceeds this many times the unloaded one
    /// (default 2.0).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// Congestion as well when the recent p50 latency exceeds this (e.g. `300ms`), for
    /// an ENT whose acceptable latency is known better than its unloaded one.
    #[serde(default)]
    pub target_p50: Option<DurationText>,
}

/// Active health check of each server of an origin.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// HTTP path to GET; without it the check is a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    /// Expected status (default 200).
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// Time between checks. Default `5s`.
    #[serde(default)]
    pub interval: Option<DurationText>,
    /// Time limit of one check. Default `2s`.
    #[serde(default)]
    pub timeout: Option<DurationText>,
    /// Consecutive successes to mark a server healthy again. Default 2.
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures to mark a server unhealthy. Default 3.
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Turn active checks off (default false).
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Passive ejection settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveFile {
    /// Consecutive failures (connect errors, timeouts, 502/503/504) before ejection. Default 5.
    #[serde(default)]
    pub max_failures: Option<u32>,
    /// How long an ejected server stays out. Default `30s`.
    #[serde(default)]
    pub ejection_time: Option<DurationText>,
}

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

/// Thresholds on the signals ecluse measures (worst origin). Any given one counts.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsFile {
    /// Requests in flight to an origin over its limit (`max_inflight`), 0 to 1.
    #[serde(default)]
    pub inflight_ratio: Option<f64>,
    /// 95th percentile latency of an origin over the last 10 s.
    #[serde(default)]
    pub p95_latency: Option<DurationText>,
    /// Share of failed exchanges with an origin over the last 10 s (5xx, errors,
    /// time-outs), 0 to 1.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Students waiting in the waiting rooms, all together.
    #[serde(default)]
    pub queue_depth: Option<u64>,
}

/// One load level.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LevelFile {
    pub name: String,
    /// Features switched off at this level.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Go up to this level when any of these is reached (not for the first level).
    #[serde(default)]
    pub enter: Option<ThresholdsFile>,
    /// Come back down from this level when all of these are back under (defaults to the
    /// enter thresholds; set them lower so that the level does not flap).
    #[serde(default)]
    pub exit: Option<ThresholdsFile>,
    /// Factor on waiting-room capacity at this level (0 to 1, default 1).
    #[serde(default)]
    pub room_capacity_factor: Option<f64>,
    /// Factor on rate limits at this level (0 to 1, default 1).
    #[serde(default)]
    pub rate_limit_factor: Option<f64>,
    /// Serve stored cache copies whatever their age, without asking the origin, while
    /// this level is on (routes in `revalidate` mode excepted: they always ask).
    #[serde(default)]
    pub serve_stale: Option<bool>,
    /// Least time at this level before moving again, up or down (default: the
    /// degradation's `hold`). E.g. a longer hold on `critical` keeps it on through the
    /// lulls of a surge.
    #[serde(default)]
    pub hold: Option<DurationText>,
}

/// The message shown when a feature is switched off.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureFile {
    /// The feature's name as pupils know it, in French (`la visio`), shown on its 503
    /// page. Absent: the page says "ce service" (the internal name never shows).
    #[serde(default)]
    pub name_fr: Option<String>,
    /// The same in English (`video calls`).
    #[serde(default)]
    pub name_en: Option<String>,
    /// Message in French.
    #[serde(default)]
    pub message_fr: Option<String>,
    /// Message in English.
    #[serde(default)]
    pub message_en: Option<String>,
    /// `Retry-After` of the 503 (default `5m`).
    #[serde(default)]
    pub retry_after: Option<DurationText>,
    /// When the feature is switched off, what is already open on its routes (WebSocket
    /// tunnels, long downloads and streams, requests in flight; never uploads) is closed
    /// after this grace: a WebSocket gets a close frame `1013 Try Again Later` with the
    /// message as its reason. `0s` closes at once; `never` leaves them running. Switching
    /// the feature back on during the grace keeps them. Default `30s`.
    #[serde(default)]
    pub drain: Option<DrainText>,
}

/// Degradation: levels, hold time, feature messages.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DegradationFile {
    /// Levels in order, lightest first (the first is the normal state).
    pub levels: Vec<LevelFile>,
    /// Least time at a level before moving again (default `30s`); a level's own `hold`
    /// overrides it.
    #[serde(default)]
    pub hold: Option<DurationText>,
    /// Force a level from the file (ops can also force from the admin API): its name
    /// (`force_level: critical`), or with an expiry
    /// (`force_level: { level: critical, until: "2026-12-01T18:00:00+01:00" }`).
    /// Removing it from the file returns to automatic.
    #[serde(default)]
    pub force_level: Option<ForceLevelFile>,
    /// Force features on (`true`) or off (`false`) whatever the level, e.g.
    /// `{ visio: false }` or `{ visio: { on: false, until: "2026-12-01T18:00:00+01:00" } }`.
    /// Removing one from the file lets it follow the level again.
    #[serde(default)]
    pub force_features: BTreeMap<String, ForceFeatureFile>,
    /// Messages per feature.
    #[serde(default)]
    pub features: BTreeMap<String, FeatureFile>,
}

/// One listener (plain HTTP in `listen`, TLS in `tls.listen`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ListenFile {
    /// `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`.
    Address(String),
    /// An address with options.
    Full(ListenEntryFile),
}

/// A listener with options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenEntryFile {
    /// `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`.
    pub address: String,
    /// Connections from `proxy_protocol_from` start with a PROXY protocol header (v1 or
    /// v2, HAProxy `send-proxy`/`send-proxy-v2`, cloud NLBs) naming the client: its
    /// address is then the client's everywhere (limits, log, forwarding headers). A
    /// connection from there without a header is closed. Default false.
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    /// The load balancers' addresses (CIDRs) whose PROXY header is believed; required
    /// with `proxy_protocol: true`. Other peers are served as direct clients, and a
    /// PROXY header from them is a malformed request (400).
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
}

/// A level forced from the file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ForceLevelFile {
    /// The level's name: forced as long as the file says so.
    Name(String),
    /// The level, with an optional expiry.
    Until(ForcedLevelFile),
}

/// A level forced from the file, with an optional expiry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForcedLevelFile {
    /// The level's name.
    pub level: String,
    /// Back to automatic at this time, RFC 3339 (`2026-12-01T18:00:00+01:00`). An
    /// absolute time means the same after a reload or a restart; a time already past
    /// forces nothing.
    #[serde(default)]
    pub until: Option<String>,
}

/// A feature forced on or off from the file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ForceFeatureFile {
    /// `true`: on whatever the level; `false`: off whatever the level.
    On(bool),
    /// On or off, with an optional expiry.
    Until(ForcedFeatureFile),
}

/// A feature forced from the file, with an optional expiry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForcedFeatureFile {
    /// `true`: on whatever the level; `false`: off whatever the level.
    pub on: bool,
    /// Back to following the level at this time, RFC 3339 (`2026-12-01T18:00:00+01:00`).
    #[serde(default)]
    pub until: Option<String>,
}

/// Queue order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueMethodFile {
    /// First come, first served.
    #[default]
    Fifo,
    /// Students who arrive before a scheduled opening are shuffled at the opening (a
    /// fair lottery, so refreshing at 07:59:59 gains nothing); later arrivals are FIFO.
    Random,
}

/// How a priority class goes through a room.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomClassFile {
    /// Never queued (still counted as active users).
    #[serde(default)]
    pub bypass: Option<bool>,
    /// Share of each admission round reserved for this class while it has people
    /// waiting, between 0 and 1 (e.g. 0.2).
    #[serde(default)]
    pub share: Option<f64>,
}

/// A scheduled opening (a mock exam at 08:00).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventFile {
    /// When admission starts, RFC 3339 (`2026-03-16T08:00:00+01:00`).
    pub opens_at: String,
    /// How long before the opening places are handed out (default `30m`). Earlier
    /// visitors see when it opens, without a place.
    #[serde(default)]
    pub prequeue: Option<DurationText>,
}

/// A fixed number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CountOrAuto {
    /// A fixed number.
    Count(u32),
    /// `auto`: from what the guarded origin measures.
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AutoWord {
    Auto,
}

/// Bounds of a room sized automatically (`active_users: auto`, `new_users_per_minute:
/// auto`): the room starts at the lower bounds and never leaves them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomAutoFile {
    /// Fewest sessions inside the room lets in, whatever the origin says (default 10).
    #[serde(default)]
    pub min_active_users: Option<u32>,
    /// Most sessions inside (default 1000000).
    #[serde(default)]
    pub max_active_users: Option<u32>,
    /// Slowest pace of admissions per minute (default 10).
    #[serde(default)]
    pub min_new_users_per_minute: Option<u32>,
    /// Fastest pace of admissions per minute (default 1000000).
    #[serde(default)]
    pub max_new_users_per_minute: Option<u32>,
}

/// A waiting room: students beyond capacity wait on a queue page, in order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomFile {
    /// Most sessions inside at once (active within `session_idle_timeout`), or `auto`:
    /// sized from the guarded origin's measures (see `docs/room-sizing.md`).
    pub active_users: CountOrAuto,
    /// Most new sessions let in per minute, or `auto`: paced from the guarded origin's
    /// measures.
    pub new_users_per_minute: CountOrAuto,
    /// Bounds of the `auto` numbers (each optional).
    #[serde(default)]
    pub auto: Option<RoomAutoFile>,
    /// File holding the ticket signing keys, one `KID:SECRET` per line, the first signs.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Environment variable holding the keys, same format (instead of `secret_file`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// An admitted session without a request for this long is no longer counted and
    /// must queue again. Default `20m`.
    #[serde(default)]
    pub session_idle_timeout: Option<DurationText>,
    /// A waiting student who stops polling for this long loses the place. Default `2m`.
    #[serde(default)]
    pub abandon_timeout: Option<DurationText>,
    /// A waiting ticket whose turn passed while its holder was away (a phone asleep,
    /// another app in front) is still honoured this long after `abandon_timeout`: back
    /// within it, the pupil gets the next free place, ahead of the line (once). Default
    /// `15m`; `0s` to turn it off.
    #[serde(default)]
    pub return_grace: Option<DurationText>,
    /// How often the queue page asks for news. Default `10s`.
    #[serde(default)]
    pub poll_interval: Option<DurationText>,
    /// `fifo` (default) or `random` (shuffle the pre-queue of an `event`).
    #[serde(default)]
    pub method: Option<QueueMethodFile>,
    /// Path prefixes of the guarded routes that need admission (default: all). Leave the
    /// queue page's own needs (CSS, images, `/healthz`…) outside.
    #[serde(default)]
    pub inside_paths: Option<Vec<String>>,
    /// Priority classes (from `priority_classes`) and how they go through.
    #[serde(default)]
    pub classes: BTreeMap<String, RoomClassFile>,
    /// Scheduled opening.
    #[serde(default)]
    pub event: Option<EventFile>,
    /// New places handed out per client address (default `60/min`, burst 120: a school
    /// behind one NAT still gets its class in; a bot dropping cookies does not fill the
    /// queue).
    #[serde(default)]
    pub ticket_rate: Option<String>,
    #[serde(default)]
    pub ticket_burst: Option<u32>,
    /// A minijinja template replacing the built-in queue page (reloaded with the config).
    #[serde(default)]
    pub template_file: Option<String>,
    /// Name of the workspace shown on this room's queue pages (default: `pages.brand.name`).
    #[serde(default)]
    pub brand: Option<String>,
    /// Play a short chime when the turn comes while the queue tab is in the background
    /// (the tab's title changes either way). Default `false`.
    #[serde(default)]
    pub turn_sound: Option<bool>,
    /// A response header by which the origin ends the session (logout), freeing its place
    /// at once. Default `X-Ecluse-End-Session`.
    #[serde(default)]
    pub end_session_header: Option<String>,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitKeyFile {
    /// The client address (after `trusted_proxies`); IPv6 grouped by `ipv6_prefix`.
    ClientIp,
    /// The value of the cookie named in `cookie` (the client address when absent).
    Cookie,
    /// The value of the header named in `header` (the client address when absent).
    Header,
    /// The authenticated user, from the header named in `header` (default
    /// `X-Remote-User`), believed only from `trusted_proxies` (the client address
    /// otherwise).
    User,
    /// One shared bucket for the whole route.
    Route,
}

/// Enforce a limit, or only count what it would refuse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitModeFile {
    /// Refuse with 429.
    #[default]
    Enforce,
    /// Let everything through, count what would have been refused (tune limits during a
    /// real surge before enforcing them).
    DryRun,
}

/// Who a limit does not apply to.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExemptFile {
    /// Client networks, as CIDRs (the school's own network, monitoring…).
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Priority classes (names from `priority_classes`).
    #[serde(default)]
    pub classes: Vec<String>,
}

/// One rate limit of a route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Name in metrics and in the `RateLimit-Policy` header (default: the key kind).
    #[serde(default)]
    pub name: Option<String>,
    /// What requests are counted by.
    pub key: LimitKeyFile,
    /// Cookie name, for `key: cookie`.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Header name, for `key: header` and `key: user`.
    #[serde(default)]
    pub header: Option<String>,
    /// Sustained rate: `20/s`, `1200/min`, `100/h`.
    pub rate: String,
    /// Requests allowed in a burst above the rate (default: one second's worth of the
    /// rate, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// `enforce` (default) or `dry_run`.
    #[serde(default)]
    pub mode: Option<LimitModeFile>,
    /// Clients the limit does not apply to.
    #[serde(default)]
    pub exempt: Option<ExemptFile>,
    /// IPv6 clients are counted per network of this many bits (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// IPv4 clients are counted per network of this many bits (default 32: each address).
    #[serde(default)]
    pub ipv4_prefix: Option<u8>,
    /// Most distinct keys remembered (default 100000, rounded up to a multiple of 128).
    /// The table takes 16 bytes a key, allocated at load, whatever the traffic. At the
    /// cap, a new key takes the slot of the least-charged of the 8 keys sharing its slot
    /// group (see docs/policy.md, "Rate limits").
    #[serde(default)]
    pub max_keys: Option<u32>,
}

/// A priority class: a request belongs to it when any of its conditions holds.
///
/// Header conditions are believed only from `server.trusted_proxies` (the SSO gateway in
/// front of ecluse, which must strip them from client requests). Cookie and path
/// conditions are the client's to send: never give them `bypass`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityClassFile {
    /// Name used by limits, rooms and metrics (e.g. `staff`).
    pub name: String,
    /// Client networks, as CIDRs.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Header name → accepted values (case-insensitive), e.g. `{ X-ENT-Role: [enseignant] }`.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Cookie name → accepted values.
    #[serde(default)]
    pub cookies: BTreeMap<String, Vec<String>>,
    /// Path prefixes.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
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
