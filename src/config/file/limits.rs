//! `routes[].rate_limits`: keys, modes, exemptions.

use schemars::JsonSchema;
use serde::Deserialize;

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
