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
    pub redis_url: String,
    /// `redis_url` is a node of a Redis Cluster.
    pub redis_cluster: bool,
    pub prefix: String,
    pub node_id: String,
    pub timeout: Duration,
    pub sync_interval: Duration,
    pub fail_mode: FailMode,
    /// Fleet size assumed until Redis has answered once.
    pub expected_nodes: u32,
}

impl ClusterSettings {
    /// A node unheard of for this long counts as gone.
    pub fn node_ttl(&self) -> Duration {
        (self.sync_interval * 8).max(Duration::from_secs(2))
    }
}
