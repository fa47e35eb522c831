//! The top-level [`FileConfig`]: one field per section of the policy file.

use super::access_log::AccessLogFile;
use super::admin::AdminFile;
use super::cache::CacheStorageFile;
use super::classes::PriorityClassFile;
use super::cluster::ClusterFile;
use super::degradation::DegradationFile;
use super::listen::{ListenFile, TlsFile};
use super::origins::OriginFile;
use super::pages::PagesFile;
use super::rooms::WaitingRoomFile;
use super::routes::RouteFile;
use super::server::ServerFile;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

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
