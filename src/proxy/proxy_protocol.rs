//! The PROXY protocol (v1 text, v2 binary) on a listener behind an L4 load balancer
//! (HAProxy `send-proxy`/`send-proxy-v2`, cloud NLBs): the balancer's first bytes on each
//! connection say which client it carries, and that address then stands for the
//! connection everywhere (connection caps, rate limits, the access log, forwarding
//! headers) because it replaces the socket's peer address in the connection's digest.
//!
//! Believed only from `proxy_protocol_from`: from there the header is required (a
//! connection without one is closed: the balancer is misconfigured, and guessing would
//! hand every client the balancer's address); from anywhere else nothing is read here, so
//! a client that sends a header itself is read as HTTP and refused as a malformed request
//! (400), its claimed address never used. Parsing is the `ppp` crate's.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (12 bytes).
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (spec: 107 bytes).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: addresses and TLVs (HAProxy sends tens of bytes; the
/// spec allows 64 KiB of TLVs, which ecluse has no use for).
const V2_MAX_BODY: usize = 1024;

/// Why a connection from a trusted balancer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header from the load balancer {0}")]
    Missing(IpAddr),
    #[error("malformed PROXY protocol header from {0}")]
    Malformed(IpAddr),
    #[error("PROXY protocol v2 header from {0} longer than {V2_MAX_BODY} bytes")]
    TooLong(IpAddr),
    #[error("no complete PROXY protocol header from {0} in time")]
    Timeout(IpAddr),
    #[error("reading the PROXY protocol header from {0}: {1}")]
    Io(IpAddr, String),
}

/// What a PROXY header says about the connection it carries: the client's address, and
/// the address the client reached (the balancer's front end). That second one stands for
/// the connection's local address, so the port a client typed in its URL (`Host:
/// ent.fr:8443` through a balancer listening on 8443) is this connection's own port
/// (`proxy::request::host_ports`), not another server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub client: SocketAddr,
    pub reached: SocketAddr,
}

/// What a complete v2 header says: the connection it carries, or `None` when the balancer
/// speaks for itself (v2 `LOCAL`, its health checks; a Unix or unspecified family), where
/// the socket's addresses stay.
pub fn client_of_v2(bytes: &[u8]) -> Result<Option<Carried>, ()> {
    let h = ppp::v2::Header::try_from(bytes).map_err(|_| ())?;
    if h.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(Carried {
            client: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            reached: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        }),
        ppp::v2::Addresses::IPv6(a) => Some(Carried {
            client: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            reached: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        }),
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    })
}

/// Same for a v1 line (CRLF included); `UNKNOWN` is `None`.
pub fn client_of_v1(line: &[u8]) -> Result<Option<Carried>, ()> {
    let h = ppp::v1::Header::try_from(line).map_err(|_| ())?;
    Ok(match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(Carried {
            client: SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            reached: SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        }),
        ppp::v1::Addresses::Tcp6(a) => Some(Carried {
            client: SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            reached: SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        }),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// Read the header a trusted balancer (`peer`) sends first, and not one byte more (what
/// follows is the client's, read by the HTTP layer or the TLS handshake), by `deadline`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Option<Carried>, ProxyHeaderError> {
    let read = async {
        let mut head = [0u8; 16];
        stream.read_exact(&mut head[..12]).await?;
        if &head[..12] == V2_SIG {
            stream.read_exact(&mut head[12..16]).await?;
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            if len > V2_MAX_BODY {
                return Ok(Err(ProxyHeaderError::TooLong(peer)));
            }
            let mut whole = Vec::with_capacity(16 + len);
            whole.extend_from_slice(&head);
            whole.resize(16 + len, 0);
            stream.read_exact(&mut whole[16..]).await?;
            return Ok(client_of_v2(&whole).map_err(|_| ProxyHeaderError::Malformed(peer)));
        }
        if !head.starts_with(b"PROXY ") {
            return Ok(Err(ProxyHeaderError::Missing(peer)));
        }
        // v1: byte by byte up to the LF, so nothing of the request is consumed (the line
        // is short and only a legacy balancer sends it).
        let mut line = head[..12].to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Ok(Err(ProxyHeaderError::Malformed(peer)));
            }
            let mut b = [0u8; 1];
            stream.read_exact(&mut b).await?;
            line.push(b[0]);
        }
        Ok(client_of_v1(&line).map_err(|_| ProxyHeaderError::Malformed(peer)))
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Err(_) => Err(ProxyHeaderError::Timeout(peer)),
        Ok(Err::<_, io::Error>(e)) => Err(ProxyHeaderError::Io(peer, e.to_string())),
        Ok(Ok(r)) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer() -> IpAddr {
        "10.0.0.1".parse().expect("ip")
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let (r, rest) = read_carried(bytes).await;
        (r.map(|c| c.map(|c| c.client)), rest)
    }

    async fn read_carried(bytes: &[u8]) -> (Result<Option<Carried>, ProxyHeaderError>, Vec<u8>) {
        let mut s = bytes;
        let r = read_header(&mut s, peer(), Instant::now() + Duration::from_secs(5)).await;
        (r, s.to_vec())
    }

    /// The address the client reached (the balancer's front end) comes with the client's:
    /// it stands for the connection's local address.
    #[tokio::test]
    async fn both_versions_say_which_front_end_the_client_reached() {
        let (r, _) = read_carried(b"PROXY TCP4 192.0.2.7 10.0.0.2 51234 8443\r\n").await;
        assert_eq!(
            r.expect("v1").expect("carried").reached,
            "10.0.0.2:8443".parse::<SocketAddr>().expect("addr")
        );
        let h = v2(
            1,
            0x11,
            &[192, 0, 2, 9, 10, 0, 0, 2, 0x10, 0x92, 0x20, 0xfb],
        );
        let (r, _) = read_carried(&h).await;
        assert_eq!(
            r.expect("v2").expect("carried").reached,
            "10.0.0.2:8443".parse::<SocketAddr>().expect("addr")
        );
    }

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[tokio::test]
    async fn v1_gives_the_client_and_leaves_the_request() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 10.0.0.2 51234 80\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r, Ok(Some("192.0.2.7:51234".parse().expect("addr"))));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n").await;
        assert_eq!(r, Ok(Some("[2001:db8::7]:4000".parse().expect("addr"))));
        let (r, rest) = read(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(r, Ok(None));
        assert_eq!(rest, b"GET");
    }

    #[tokio::test]
    async fn v2_gives_the_client_and_leaves_the_request() {
        // PROXY, TCP over IPv4: 192.0.2.9:4242 -> 10.0.0.2:80.
        let mut h = v2(1, 0x11, &[192, 0, 2, 9, 10, 0, 0, 2, 0x10, 0x92, 0, 80]);
        h.extend_from_slice(b"GET /");
        let (r, rest) = read(&h).await;
        assert_eq!(r, Ok(Some("192.0.2.9:4242".parse().expect("addr"))));
        assert_eq!(rest, b"GET /");
        // LOCAL (the balancer's own health check): the socket's address stays.
        let (r, _) = read(&v2(0, 0x00, &[])).await;
        assert_eq!(r, Ok(None));
    }

    #[tokio::test]
    async fn missing_malformed_or_huge_headers_are_refused() {
        let (r, _) = read(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(r, Err(ProxyHeaderError::Missing(peer())));
        let (r, _) = read(b"PROXY TCP4 999.0.2.7 10.0.0.2 1 80\r\n").await;
        assert_eq!(r, Err(ProxyHeaderError::Malformed(peer())));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (r, _) = read(long.as_bytes()).await;
        assert_eq!(r, Err(ProxyHeaderError::Malformed(peer())));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (r, _) = read(&huge).await;
        assert_eq!(r, Err(ProxyHeaderError::TooLong(peer())));
        // Version 1 in a v2 frame, an unknown command, a truncated header.
        let (r, _) = read(&[V2_SIG.as_slice(), &[0x11, 0x11, 0, 0]].concat()).await;
        assert_eq!(r, Err(ProxyHeaderError::Malformed(peer())));
        let (r, _) = read(&[V2_SIG.as_slice(), &[0x2f, 0x11, 0, 0]].concat()).await;
        assert_eq!(r, Err(ProxyHeaderError::Malformed(peer())));
        let (r, _) = read(&V2_SIG[..8]).await;
        assert!(matches!(r, Err(ProxyHeaderError::Io(..))), "{r:?}");
    }
}
