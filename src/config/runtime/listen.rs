//! `listen` and `tls.listen`: listener addresses, PROXY protocol sources, the TLS listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::context::{parse_cidr, Problems};
use crate::config::tree::Seg;
use crate::path;

#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// Which listeners read a PROXY protocol header before the handshake, and from whom
    /// (one entry per `listen` address).
    pub listen_proxy_protocol: Vec<Option<Vec<IpNet>>>,
    /// Loaded and checked; published for new handshakes by a successful (re)load.
    pub certs: Arc<crate::tls::CertSet>,
    pub http2: bool,
}

/// A listener's `proxy_protocol_from`, when it reads PROXY protocol headers.
pub(super) fn build_proxy_protocol(
    p: &mut Problems,
    e: &super::file::ListenEntryFile,
    at: Vec<Seg>,
) -> Option<Vec<IpNet>> {
    let under = |rest: Vec<Seg>| [at.clone(), rest].concat();
    let mut from = Vec::new();
    for (j, c) in e.proxy_protocol_from.iter().enumerate() {
        match parse_cidr(c) {
            Some(n) => from.push(n.trunc()),
            None => p.at(
                under(path!["proxy_protocol_from", j]),
                format!("`{c}` is not a CIDR: write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`"),
            ),
        }
    }
    match e.proxy_protocol {
        Some(true) => {
            if e.proxy_protocol_from.is_empty() {
                p.at(
                    under(path!["proxy_protocol"]),
                    "needs `proxy_protocol_from`: the load balancers' addresses (a PROXY header is believed from them only)",
                );
            }
            Some(from)
        }
        _ => {
            if !e.proxy_protocol_from.is_empty() {
                p.at(
                    under(path!["proxy_protocol_from"]),
                    "has no effect without `proxy_protocol: true`",
                );
            }
            None
        }
    }
}

pub(super) fn parse_listen(p: &mut Problems, s: &str, path: Vec<Seg>) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            // `localhost:9090`: which addresses a name resolves to is up to the resolver
            // (and may change), so a listener only takes an IP literal.
            let host = s.rsplit_once(':').map(|(h, _)| h).unwrap_or(s);
            let named = !host.is_empty()
                && host.parse::<IpAddr>().is_err()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            let hint = if named {
                format!(" (`{host}` is a host name: write its IP, e.g. `127.0.0.1` for this machine only)")
            } else {
                String::new()
            };
            p.at(
                path,
                format!("`{s}` is not a listen address: write `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`{hint}"),
            );
            None
        }
    }
}
