//! `cluster`: fleet mode over Redis (Sentinel, fail mode).

use super::text::DurationText;
use schemars::JsonSchema;
use serde::Deserialize;

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
