//! `server`: process settings, client limits (`server.clients`), forwarding headers and
//! request bodies.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::context::{duration_or, size_or, BuildContext, Problems};
use super::routes::Route;
use crate::config::units::parse_size;
use crate::path;

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// `server.public_ports`: the ports a request's host may name besides the scheme's
    /// default and the listeners' (`policy::host::Ports`).
    pub public_ports: Vec<u16>,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub upgrade_sock: PathBuf,
    /// The upgrade socket is the instance's default one (its directory is ecluse's to
    /// create and check); an explicit one lives where ops put it.
    pub upgrade_sock_default: bool,
    pub upstream_keepalive_pool: usize,
    pub watch_config: bool,
    pub state_dir: PathBuf,
    pub clients: Clients,
    /// Forwarding headers: what is removed, what ecluse writes (`policy::forwarding`).
    pub forwarding: crate::policy::forwarding::Forwarding,
    pub request_bodies: RequestBodies,
    /// How request paths are normalized (`server.paths`).
    pub paths: crate::policy::path::PathPolicy,
    /// `server.paths.front_controllers`, in the form `policy::path::policy_path` compares.
    pub front_controllers: Vec<String>,
}

/// How request bodies are received (`server.request_bodies`), read by `proxy::body`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestBodies {
    /// Default limit of a route's bodies, in bytes; 0 = none.
    pub max_body_size: u64,
    /// Bytes of one body kept in memory before it goes to a temporary file.
    pub memory_buffer: usize,
    /// Where the temporary files are made.
    pub temp_dir: PathBuf,
    /// Bytes all buffered bodies may hold on disk together.
    pub max_disk: u64,
    /// Bytes all buffered bodies may hold in memory together; past it bodies go to disk.
    pub max_memory: u64,
    /// Bytes one client address (IPv6 by /64) may hold in memory and on disk together,
    /// over all its bodies.
    pub max_per_client: u64,
}

impl RequestBodies {
    /// The default `max_per_client`: a quarter of the two budgets, so that one address
    /// never holds more than a quarter of what every upload shares, and never less than
    /// `largest_body` (the largest body a buffering route accepts), so that the default
    /// never makes a route's own limit unreachable.
    pub fn default_per_client(max_memory: u64, max_disk: u64, largest_body: u64) -> u64 {
        (max_memory.saturating_add(max_disk) / 4).max(largest_body)
    }
}

impl Default for RequestBodies {
    fn default() -> RequestBodies {
        RequestBodies {
            max_body_size: 1 << 20,
            memory_buffer: 128 << 10,
            temp_dir: std::env::temp_dir().join("ecluse-bodies"),
            max_disk: 1 << 30,
            max_memory: 64 << 20,
            max_per_client: RequestBodies::default_per_client(64 << 20, 1 << 30, 1 << 20),
        }
    }
}

/// Limits on one client (`server.clients`), read by `proxy::conn_guard` when a connection opens
/// and by `proxy::hygiene` on every request head.
#[derive(Debug, Clone, PartialEq)]
pub struct Clients {
    pub header_timeout: Duration,
    /// Bytes per second; 0 = off.
    pub body_min_rate: u64,
    pub body_grace: Duration,
    pub keepalive_timeout: Duration,
    /// Each write to the client (nginx `send_timeout`).
    pub send_timeout: Duration,
    /// Bytes per second a client must read a response at; 0 = off.
    pub send_min_rate: u64,
    /// 0 = no cap.
    pub max_connections: u32,
    /// 0 = no cap.
    pub max_connections_per_ip: u32,
    pub max_request_line: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for Clients {
    fn default() -> Clients {
        Clients {
            header_timeout: Duration::from_secs(10),
            body_min_rate: 500,
            body_grace: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            send_min_rate: 0,
            max_connections: 20_000,
            max_connections_per_ip: 0,
            max_request_line: 8 << 10,
            max_header_bytes: 64 << 10,
            max_headers: 100,
        }
    }
}

impl Server {
    /// Whether `ip` is one of our own load balancers, whose `X-Forwarded-For` we believe.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

pub(super) fn build_forwarding(
    p: &mut Problems,
    f: Option<&super::file::ForwardingFile>,
) -> crate::policy::forwarding::Forwarding {
    use super::file::OddNamesFile;
    use crate::policy::forwarding::{Forwarding, OddNames};
    let Some(f) = f else {
        return Forwarding::default();
    };
    let valid = |n: &str| !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok();
    for (i, n) in f.strip_from_untrusted.iter().enumerate() {
        if !valid(n) {
            p.at(
                path!["server", "forwarding", "strip_from_untrusted", i],
                format!("`{n}` is not a header name"),
            );
        }
    }
    let builtin = Forwarding::default();
    for (i, n) in f.pass_through.iter().enumerate() {
        let c = crate::policy::forwarding::canonical(n);
        if !builtin.always.contains(&c) && !builtin.untrusted.contains(&c) {
            p.at(
                path!["server", "forwarding", "pass_through", i],
                format!("`{n}` is not one of the headers ecluse removes (see docs/policy.md, \"Forwarding headers\"): nothing to pass through"),
            );
        }
    }
    Forwarding::new(
        f.forwarded_header.unwrap_or(false),
        &f.strip_from_untrusted,
        &f.pass_through,
        match f.odd_header_names.unwrap_or_default() {
            OddNamesFile::Drop => OddNames::Drop,
            OddNamesFile::Reject => OddNames::Reject,
            OddNamesFile::Keep => OddNames::Keep,
        },
    )
}
pub(super) fn build_request_bodies(
    p: &mut Problems,
    f: Option<&super::file::RequestBodiesFile>,
    ctx: &BuildContext,
) -> RequestBodies {
    let d = RequestBodies::default();
    let Some(f) = f else {
        return d;
    };
    let at = |k: &'static str| path!["server", "request_bodies", k];
    let max_body_size = match &f.max_body_size {
        None => d.max_body_size,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("max_body_size"), e);
            d.max_body_size
        }),
    };
    let memory_buffer = size_or(
        p,
        &f.memory_buffer,
        d.memory_buffer as u64,
        at("memory_buffer"),
    );
    let memory_buffer = if memory_buffer > 64 << 20 {
        p.at(
            at("memory_buffer"),
            "must be at most 64MiB: every body being received may hold this much memory",
        );
        d.memory_buffer
    } else {
        memory_buffer as usize
    };
    let max_disk = size_or(p, &f.max_disk, d.max_disk, at("max_disk"));
    let temp_dir = match f.temp_dir.as_deref() {
        None => d.temp_dir,
        Some("") => {
            p.at(
                at("temp_dir"),
                "is empty: remove it to use the system temp directory",
            );
            d.temp_dir
        }
        Some(dir) => ctx.base_dir.join(dir),
    };
    let max_memory = match &f.max_memory {
        None => d.max_memory,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("max_memory"), e);
            d.max_memory
        }),
    };
    // Set below from the routes when absent (`per_client_for_routes`).
    let max_per_client = size_or(p, &f.max_per_client, 0, at("max_per_client"));
    RequestBodies {
        max_body_size,
        memory_buffer,
        temp_dir,
        max_disk,
        max_memory,
        max_per_client,
    }
}

/// Settle `max_per_client` once the routes are known: the default when ops left it out;
/// when they set it, a buffering route whose `max_body_size` is larger is a problem (such
/// an upload could never be received whole).
pub(super) fn per_client_for_routes(
    p: &mut Problems,
    rb: &mut RequestBodies,
    file: Option<&super::file::RequestBodiesFile>,
    routes: &[Arc<Route>],
) {
    let largest = routes
        .iter()
        .filter(|r| r.buffer_body)
        .map(|r| r.max_body_size)
        .max()
        .unwrap_or(0);
    if file.is_none_or(|f| f.max_per_client.is_none()) {
        rb.max_per_client = RequestBodies::default_per_client(rb.max_memory, rb.max_disk, largest);
        return;
    }
    if rb.max_per_client == 0 {
        return; // already reported by `size_or`
    }
    for r in routes.iter().filter(|r| r.buffer_body) {
        if r.max_body_size > rb.max_per_client {
            p.at(
                path!["server", "request_bodies", "max_per_client"],
                format!(
                    "is {} bytes, smaller than route `{}`'s max_body_size ({} bytes): such an upload could never be received; raise max_per_client or lower the route's limit",
                    rb.max_per_client, r.name, r.max_body_size
                ),
            );
        }
    }
}

pub(super) fn build_clients(p: &mut Problems, f: Option<&super::file::ClientsFile>) -> Clients {
    let d = Clients::default();
    let Some(f) = f else {
        return d;
    };
    let at = |k: &'static str| path!["server", "clients", k];
    let send_min_rate = match &f.send_min_rate {
        None => d.send_min_rate,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("send_min_rate"), e);
            d.send_min_rate
        }),
    };
    if f.send_timeout.is_some() && send_min_rate > 0 {
        // pingora bounds each write by one or the other, never both: the timeout would
        // be silently ignored.
        p.at(
            at("send_min_rate"),
            "set either `send_timeout` or `send_min_rate`: a minimum rate replaces the send timeout",
        );
    }
    let body_min_rate = match &f.body_min_rate {
        None => d.body_min_rate,
        Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
            p.at(at("body_min_rate"), e);
            d.body_min_rate
        }),
    };
    let bounded = |p: &mut Problems, v: u64, max: u64, k: &'static str, max_text: &str| -> usize {
        if v > max {
            p.at(
                at(k),
                format!("must be at most {max_text}: pingora answers a bare 400 to larger request heads before ecluse sees them"),
            );
            max as usize
        } else {
            v as usize
        }
    };
    let max_header_bytes = size_or(
        p,
        &f.max_header_bytes,
        d.max_header_bytes as u64,
        at("max_header_bytes"),
    );
    let max_header_bytes = bounded(p, max_header_bytes, 1 << 20, "max_header_bytes", "1MiB");
    let max_headers = match f.max_headers {
        Some(0) => {
            p.at(at("max_headers"), "must be at least 1");
            d.max_headers as u64
        }
        Some(n) => n as u64,
        None => d.max_headers as u64,
    };
    let max_headers = bounded(p, max_headers, 256, "max_headers", "256");
    let max_request_line = size_or(
        p,
        &f.max_request_line,
        d.max_request_line as u64,
        at("max_request_line"),
    );
    let max_request_line = if max_request_line < 64 {
        p.at(at("max_request_line"), "must be at least 64 bytes");
        d.max_request_line
    } else {
        max_request_line as usize
    };
    Clients {
        header_timeout: duration_or(p, &f.header_timeout, d.header_timeout, at("header_timeout")),
        body_min_rate,
        body_grace: duration_or(p, &f.body_grace, d.body_grace, at("body_grace")),
        keepalive_timeout: duration_or(
            p,
            &f.keepalive_timeout,
            d.keepalive_timeout,
            at("keepalive_timeout"),
        ),
        send_timeout: duration_or(p, &f.send_timeout, d.send_timeout, at("send_timeout")),
        send_min_rate,
        max_connections: f.max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: f.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        max_request_line,
        max_header_bytes,
        max_headers,
    }
}
