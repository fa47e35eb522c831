//! `origins`: servers, timeouts, health checks, TLS to the servers, per-origin metrics.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use super::context::{duration_or, opt_duration, valid_name, BuildContext, Problems};
use crate::config::file::{BalanceFile, OriginFile};
use crate::config::tree::Seg;
use crate::config::units::parse_duration;
use crate::path;
use crate::policy::concurrency::Adaptive;
use crate::upstream::{Balance, OriginShared, ServerState};

/// Most servers an origin may list (retries track tried servers in a 64-bit mask).
pub const MAX_SERVERS_PER_ORIGIN: usize = 64;

#[derive(Debug)]
pub struct HealthCheck {
    pub enabled: bool,
    /// `None`: TCP connect only.
    pub path: Option<String>,
    pub expect_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug)]
pub struct Origin {
    pub name: String,
    pub servers: Vec<Arc<ServerState>>,
    pub shared: Arc<OriginShared>,
    pub max_inflight: Option<u32>,
    /// Wait for a slot allowed to admitted sessions and priority classes.
    pub queue_timeout: Duration,
    pub balance: Balance,
    pub connect_timeout: Duration,
    /// Each read from a server (nginx `proxy_read_timeout`).
    pub read_timeout: Duration,
    /// Each write to a server (nginx `proxy_send_timeout`).
    pub write_timeout: Duration,
    /// The longest a priority-class upload waits for a slot: the configured
    /// `total_timeout`, or 60 s.
    pub total_timeout: Duration,
    /// The whole exchange, only when ops set `total_timeout` (a route's own overrides it).
    pub total_limit: Option<Duration>,
    /// An upgraded connection with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// The longest life of an upgraded connection, when set.
    pub tunnel_max_lifetime: Option<Duration>,
    pub idle_timeout: Duration,
    pub tls: bool,
    pub sni: String,
    /// TLS to the servers (proxied requests and health checks alike), when `tls` is on.
    pub tls_client: Option<Arc<crate::tls::OriginTls>>,
    pub retries: u32,
    pub health: HealthCheck,
    pub passive_max_failures: u32,
    pub passive_ejection: Duration,
    pub metrics: OriginMetrics,
    pub adaptive: Option<Adaptive>,
}

/// Per-origin metric handles, resolved once at load.
#[derive(Debug)]
pub struct OriginMetrics {
    pub err_connect: IntCounter,
    pub err_timeout: IntCounter,
    pub err_read: IntCounter,
    pub err_status_5xx: IntCounter,
    pub err_other: IntCounter,
    pub retries: IntCounter,
    pub rejected_max_inflight: IntCounter,
    pub rejected_no_server: IntCounter,
}

impl OriginMetrics {
    fn new(origin: &str) -> OriginMetrics {
        let m = crate::metrics::get();
        let e = |k: &str| m.origin_errors.with_label_values(&[origin, k]);
        OriginMetrics {
            err_connect: e("connect"),
            err_timeout: e("timeout"),
            err_read: e("read"),
            err_status_5xx: e("5xx"),
            err_other: e("other"),
            retries: m.origin_retries.with_label_values(&[origin]),
            rejected_max_inflight: m
                .origin_rejected
                .with_label_values(&[origin, "max_inflight"]),
            rejected_no_server: m.origin_rejected.with_label_values(&[origin, "no_server"]),
        }
    }
}

/// An origin's SNI and TLS client side. Refuses what cannot work at the first handshake:
/// verification without a name to check (servers given as IP addresses, or servers with
/// different names and no `sni`), half a client certificate, unreadable or unusable files.
fn origin_tls(
    p: &mut Problems,
    of: &OriginFile,
    ctx: &BuildContext,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
) -> (String, Option<Arc<crate::tls::OriginTls>>) {
    use super::file::OriginTlsFile;
    let hosts: Vec<String> = of
        .servers
        .iter()
        .filter_map(|s| {
            s.rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_ascii_lowercase())
        })
        .collect();
    let default_sni = hosts.first().cloned().unwrap_or_default();
    let settings = match &of.tls {
        None | Some(OriginTlsFile::On(false)) => None,
        Some(OriginTlsFile::On(true)) => Some(super::file::OriginTlsSettingsFile {
            sni: None,
            verify: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }),
        Some(OriginTlsFile::Settings(t)) => Some(t.clone()),
    };
    let Some(t) = settings else {
        if of.sni.is_some() {
            p.at(
                at(path!["sni"]),
                "has no effect without `tls: true`: the servers are spoken to in plain HTTP",
            );
        }
        return (of.sni.clone().unwrap_or(default_sni), None);
    };
    if of.sni.is_some() && t.sni.is_some() {
        p.at(at(path!["sni"]), "set either `sni` or `tls.sni`, not both");
    }
    let explicit = t.sni.clone().or_else(|| of.sni.clone());
    let sni_at = if t.sni.is_some() {
        at(path!["tls", "sni"])
    } else if of.sni.is_some() {
        at(path!["sni"])
    } else {
        at(path!["tls"])
    };
    let verify = t.verify.unwrap_or(true);
    let sni = explicit.clone().unwrap_or_else(|| default_sni.clone());
    if verify && explicit.is_none() {
        if default_sni.parse::<std::net::IpAddr>().is_ok() {
            p.at(
                sni_at.clone(),
                format!(
                    "the servers are IP addresses: set `tls.sni` to the name on the ENT's certificate (the name checked and sent), or `tls.verify: false` on a test bench; `{default_sni}` would be checked against the certificate"
                ),
            );
            return (sni, None);
        }
        if hosts.iter().any(|h| *h != default_sni) {
            p.at(
                sni_at.clone(),
                "the servers have different host names: set `tls.sni` to the name on their certificate",
            );
            return (sni, None);
        }
    }
    if sni.is_empty()
        || sni.len() > 253
        || rustls_pki_types::ServerName::try_from(sni.clone()).is_err()
    {
        p.at(sni_at, format!("`{sni}` is not a host name to send as SNI"));
        return (sni, None);
    }
    let file = |f: &Option<String>| f.as_ref().map(|f| ctx.base_dir.join(f));
    let ca_file = file(&t.ca_file);
    let client = match (file(&t.client_cert), file(&t.client_key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            p.at(
                at(path!["tls", "client_cert"]),
                "needs `client_key`, the private key of this certificate",
            );
            return (sni, None);
        }
        (None, Some(_)) => {
            p.at(
                at(path!["tls", "client_key"]),
                "needs `client_cert`, the certificate of this key",
            );
            return (sni, None);
        }
    };
    if ca_file.is_some() && !verify {
        p.at(
            at(path!["tls", "ca_file"]),
            "is unused with `verify: false` (no certificate is checked)",
        );
    }
    match crate::tls::load_origin_tls(
        &sni,
        verify,
        ca_file.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    ) {
        Ok(t) => (sni, Some(Arc::new(t))),
        Err(e) => {
            // Which key the file came from, for FILE:LINE:COL.
            let key = match &e {
                crate::tls::TlsError::KeyMismatch { .. } | crate::tls::TlsError::BadKey { .. } => {
                    "client_key"
                }
                crate::tls::TlsError::Read { path, .. }
                | crate::tls::TlsError::NoCertificate { path }
                | crate::tls::TlsError::BadCertificate { path, .. }
                | crate::tls::TlsError::NoKey { path }
                | crate::tls::TlsError::Expired { path, .. }
                | crate::tls::TlsError::NotYetValid { path, .. } => {
                    if ca_file
                        .as_ref()
                        .is_some_and(|c| c.display().to_string() == *path)
                    {
                        "ca_file"
                    } else if client
                        .as_ref()
                        .is_some_and(|(_, k)| k.display().to_string() == *path)
                    {
                        "client_key"
                    } else {
                        "client_cert"
                    }
                }
                crate::tls::TlsError::Client(_) => "sni",
            };
            let where_ = if matches!(of.tls, Some(OriginTlsFile::Settings(_))) {
                at(path!["tls", key])
            } else {
                at(path!["tls"])
            };
            if matches!(e, crate::tls::TlsError::Read { .. }) && key != "ca_file" {
                // A client key pair is installed on the server, not kept with the policy.
                p.missing_secret(where_, e.to_string());
            } else {
                p.at(where_, e.to_string());
            }
            (sni, None)
        }
    }
}

pub(super) fn build_origin(
    p: &mut Problems,
    name: &str,
    of: &OriginFile,
    ctx: &BuildContext,
) -> Option<Origin> {
    let base = path!["origins", name];
    let at = |extra: Vec<Seg>| {
        let mut v = base.clone();
        v.extend(extra);
        v
    };
    if !valid_name(name) {
        p.at_key(
            base.clone(),
            "origin names use letters, digits, `_` and `-` (they become metric labels)",
        );
    }
    if of.servers.is_empty() {
        p.at(at(path!["servers"]), "needs at least one `host:port`");
    }
    if of.servers.len() > MAX_SERVERS_PER_ORIGIN {
        p.at(
            at(path!["servers"]),
            format!("at most {MAX_SERVERS_PER_ORIGIN} servers per origin"),
        );
    }
    let shared = ctx.registry.upstream.origin(name);
    let mut servers = Vec::new();
    for (i, s) in of.servers.iter().enumerate() {
        let addr = match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) if ctx.resolve => match s.to_socket_addrs() {
                Ok(mut it) => match it.next() {
                    Some(a) => Some(a),
                    None => {
                        p.at(
                            at(path!["servers", i]),
                            format!("`{s}` resolves to no address"),
                        );
                        None
                    }
                },
                Err(e) => {
                    p.at(
                        at(path!["servers", i]),
                        format!("`{s}` is not `host:port` or does not resolve: {e}"),
                    );
                    None
                }
            },
            Err(_) => {
                if s.rsplit_once(':')
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .is_none()
                {
                    p.at(at(path!["servers", i]), format!("`{s}` is not `host:port`"));
                }
                None
            }
        };
        if let Some(a) = addr {
            if servers.iter().any(|x: &Arc<ServerState>| x.addr == a) {
                p.at(at(path!["servers", i]), format!("`{s}` is listed twice"));
                continue;
            }
            servers.push(ctx.registry.upstream.server(name, s, a));
        }
    }
    if of.max_inflight == Some(0) {
        p.at(at(path!["max_inflight"]), "must be at least 1");
    }
    let hc = of.health_check.clone();
    let health = HealthCheck {
        enabled: !hc.as_ref().and_then(|h| h.disabled).unwrap_or(false),
        path: hc.as_ref().and_then(|h| h.path.clone()),
        expect_status: hc.as_ref().and_then(|h| h.expect_status).unwrap_or(200),
        interval: duration_or(
            p,
            &hc.as_ref().and_then(|h| h.interval.clone()),
            Duration::from_secs(5),
            at(path!["health_check", "interval"]),
        ),
        timeout: duration_or(
            p,
            &hc.as_ref().and_then(|h| h.timeout.clone()),
            Duration::from_secs(2),
            at(path!["health_check", "timeout"]),
        ),
        healthy_threshold: hc
            .as_ref()
            .and_then(|h| h.healthy_threshold)
            .unwrap_or(2)
            .max(1),
        unhealthy_threshold: hc
            .as_ref()
            .and_then(|h| h.unhealthy_threshold)
            .unwrap_or(3)
            .max(1),
    };
    if let Some(path) = &health.path {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            p.at(
                at(path!["health_check", "path"]),
                format!("`{path}` must be an absolute path like `/healthz`"),
            );
        }
    }
    if !(100..=599).contains(&health.expect_status) {
        p.at(
            at(path!["health_check", "expect_status"]),
            "must be an HTTP status between 100 and 599",
        );
    }
    let (sni, tls_client) = origin_tls(p, of, ctx, &at);
    let connect_timeout = duration_or(
        p,
        &of.connect_timeout,
        Duration::from_secs(2),
        at(path!["connect_timeout"]),
    );
    let read_timeout = duration_or(
        p,
        &of.read_timeout,
        Duration::from_secs(30),
        at(path!["read_timeout"]),
    );
    let total_limit = opt_duration(p, &of.total_timeout, at(path!["total_timeout"]));
    let tunnel_idle_timeout = duration_or(
        p,
        &of.tunnel_idle_timeout,
        Duration::from_secs(300),
        at(path!["tunnel_idle_timeout"]),
    );
    Some(Origin {
        name: name.to_string(),
        servers,
        shared,
        max_inflight: of.max_inflight,
        queue_timeout: match &of.queue_timeout {
            None => Duration::from_secs(2),
            Some(t) => parse_duration(&t.0).unwrap_or_else(|e| {
                p.at(at(path!["queue_timeout"]), e);
                Duration::from_secs(2)
            }),
        },
        balance: match of.balance.unwrap_or_default() {
            BalanceFile::RoundRobin => Balance::RoundRobin,
            BalanceFile::LeastConnections => Balance::LeastConnections,
        },
        connect_timeout,
        read_timeout,
        write_timeout: duration_or(
            p,
            &of.write_timeout,
            read_timeout,
            at(path!["write_timeout"]),
        ),
        total_timeout: total_limit.unwrap_or(Duration::from_secs(60)),
        total_limit,
        tunnel_idle_timeout,
        tunnel_max_lifetime: opt_duration(
            p,
            &of.tunnel_max_lifetime,
            at(path!["tunnel_max_lifetime"]),
        ),
        idle_timeout: duration_or(
            p,
            &of.idle_timeout,
            Duration::from_secs(60),
            at(path!["idle_timeout"]),
        ),
        tls: tls_client.is_some(),
        sni,
        tls_client,
        retries: of.retries.unwrap_or(2),
        health,
        passive_max_failures: of
            .passive
            .as_ref()
            .and_then(|x| x.max_failures)
            .unwrap_or(5),
        passive_ejection: duration_or(
            p,
            &of.passive.as_ref().and_then(|x| x.ejection_time.clone()),
            Duration::from_secs(30),
            at(path!["passive", "ejection_time"]),
        ),
        metrics: OriginMetrics::new(name),
        adaptive: match &of.adaptive_concurrency {
            None => None,
            Some(a) => {
                if of.max_inflight.is_none() {
                    p.at(
                        at(path!["adaptive_concurrency"]),
                        "needs `max_inflight`: the hard maximum the adaptive limit stays under",
                    );
                }
                let tolerance = a.tolerance.unwrap_or(2.0);
                if !(tolerance > 1.0 && tolerance < 100.0) {
                    p.at(
                        at(path!["adaptive_concurrency", "tolerance"]),
                        "must be more than 1 (e.g. 2.0)",
                    );
                }
                let target_p50_ms = a.target_p50.as_ref().map(|t| {
                    duration_or(
                        p,
                        &Some(t.clone()),
                        Duration::from_millis(300),
                        at(path!["adaptive_concurrency", "target_p50"]),
                    )
                    .as_secs_f64()
                        * 1000.0
                });
                Some(Adaptive {
                    min: a.min.unwrap_or(4).max(1) as usize,
                    max: of.max_inflight.unwrap_or(1) as usize,
                    tolerance,
                    target_p50_ms,
                })
            }
        },
    })
}
