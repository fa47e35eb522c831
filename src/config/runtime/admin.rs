//! `admin`: the admin listener, its bearer token, and when a listener may run without one.

use std::net::{IpAddr, SocketAddr};

pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token for mutating endpoints, read from `token_file`.
    pub token: Option<Secret>,
    /// `insecure_open_admin_network`: a non-loopback listener may run without a token.
    pub insecure_open_network: bool,
}

/// Whether `ip` only ever reaches this machine: `127.0.0.0/8`, `::1`, and their
/// IPv4-mapped form `::ffff:127.x.y.z`. The wildcard addresses (`0.0.0.0`, `[::]`) and
/// the deprecated IPv4-compatible `::127.0.0.1` (a real IPv6 address) are not.
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why an admin listener on `listen` may not run with these settings: without a token,
/// mutating endpoints (pause a room, force a level, purge the cache) answer whoever
/// reaches the listener, so they are allowed only on loopback, unless ops opted out.
pub fn admin_exposure(listen: SocketAddr, has_token: bool, insecure_open: bool) -> Option<String> {
    if has_token || insecure_open || is_loopback(listen.ip()) {
        return None;
    }
    Some(format!(
        "the admin listener `{listen}` is not a loopback address and `admin.token_file` is not set: anyone who reaches it could pause the waiting room, force a degradation level or purge the cache. Set `token_file` (a long random token, e.g. `openssl rand -hex 32`), listen on `127.0.0.1`, or, on a management network nobody else reaches, set `insecure_open_admin_network: true`"
    ))
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("insecure_open_network", &self.insecure_open_network)
            .finish()
    }
}

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The admin token used when `check --skip-secrets` finds none: never served (check does
/// not serve), only there so that the checks that depend on a token being set go on.
pub(super) fn stand_in_token() -> Secret {
    Secret(vec![b'x'; 32])
}
