//! `admin`: the admin listener and its token.

use schemars::JsonSchema;
use serde::Deserialize;

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
