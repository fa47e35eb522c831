//! `origins`: servers, balancing, timeouts, TLS, adaptive concurrency, health checks.

use super::text::DurationText;
use schemars::JsonSchema;
use serde::Deserialize;

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
