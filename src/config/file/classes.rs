//! `priority_classes`: who a class is and what it may skip.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

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
