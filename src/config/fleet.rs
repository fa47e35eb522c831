//! Fleet mode's settings (`cluster:` in the file), validated: plain data that the fleet
//! sync in `crate::cluster` is started with.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    LocalShare,
    LocalFull,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// One Redis or a Cluster node (empty with `sentinel`).
    pub redis_url: String,
    /// `redis_url` is a node of a Redis Cluster.
    pub redis_cluster: bool,
    /// The master is found through Sentinel (and followed across its failovers).
    pub sentinel: Option<SentinelSettings>,
    /// PEM certificate authority for TLS to Redis (`None`: the system's roots).
    pub tls_ca: Option<Vec<u8>>,
    pub prefix: String,
    pub node_id: String,
    pub timeout: Duration,
    pub sync_interval: Duration,
    pub fail_mode: FailMode,
    /// Fleet size assumed until Redis has answered once.
    pub expected_nodes: u32,
}

/// Where the Sentinels are and which master they watch.
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelSettings {
    /// Sentinel URLs (`redis://host:26379/`, auth and TLS of the Sentinels themselves).
    pub addresses: Vec<String>,
    pub master_name: String,
    /// ACL user and password on the master (and its replicas).
    pub username: Option<String>,
    pub password: Option<Redacted>,
    /// The master speaks TLS.
    pub tls: bool,
    pub db: i64,
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl ClusterSettings {
    /// A node unheard of for this long counts as gone.
    pub fn node_ttl(&self) -> Duration {
        (self.sync_interval * 8).max(Duration::from_secs(2))
    }
}
