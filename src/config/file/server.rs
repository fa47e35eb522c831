//! `server`: process settings, forwarding headers, request bodies, paths, client limits.

use super::text::{DurationText, SizeText};
use schemars::JsonSchema;
use serde::Deserialize;

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
