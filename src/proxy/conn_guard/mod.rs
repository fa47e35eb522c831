//! Connection-level protections, below HTTP: slow and greedy clients.
//!
//! pingora applies one read timeout per `read()` (60 s), so a client that trickles its
//! request head one byte at a time (slowloris), or an upload at a few bytes per second,
//! holds a connection forever; and it has no cap on connections. [`Edge`] wraps pingora's
//! HTTP service and every accepted stream in a [`Guarded`] stream that enforces:
//!
//! - **a total deadline for the request head** (`server.clients.header_timeout`), counted
//!   from the connection's opening, or from the first byte of the next request on a
//!   kept-alive connection. This includes pingora's HTTP/2 prior-knowledge sniff, which
//!   otherwise waits without any timeout for 24 bytes (a request head shorter than that,
//!   `GET / HTTP/1.0` + CRLFs, is answered instead of hanging: the sniff stops at the first
//!   byte that differs from the HTTP/2 preface);
//! - **a minimum average body rate** (`body_min_rate` after `body_grace`), measured only
//!   over the time ecluse is actually waiting for the client's bytes: time spent waiting
//!   for the origin or for a concurrency permit is not the client's fault;
//! - **a cap on open connections**, overall and per client IP (the socket's). One over the
//!   cap is answered a bare `503` with `Retry-After` and closed before anything is read.
//!
//! The proxy phases tell the stream where the request is through [`phase`]:
//! `request_filter` calls [`Guarded::head_done`], the end of the request body
//! [`Guarded::body_done`], `logging` [`Guarded::request_done`]. HTTP/2 connections are left
//! to the HTTP/2 layer after the preface (streams multiplex; h2 flow control paces them).
//!
//! On the TLS listener the handshake happens here too, not in pingora's listener (which
//! gives it 60 s, outside any cap): the connection takes its place under the caps at
//! accept (one over the cap is closed before the handshake, without an answer: it cannot
//! be read without one), and the handshake counts against the head deadline.
//!
//! Files: this one holds the listener side ([`Edge`], the caps, the TLS handshake) and the
//! guarded stream's state; `stream.rs` its phases, deadlines and read path (a queue-status
//! poll handed to `fast_status.rs`); `closing.rs` how it closes a connection (the answer or
//! close frame first) and passes an upgraded connection's bytes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::Stream;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::fast_status::{status_poll_head, MAX_POLL_FIELDS, STATUS_START};
use super::{tunnel, EcluseProxy};

mod closing;
mod stream;
use crate::app::App;
use crate::config::runtime::Clients;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Length: 0\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";

/// pingora's HTTP service behind the connection guards.
pub struct Edge {
    proxy: Arc<HttpProxy<EcluseProxy>>,
    /// The same proxy logic, for the status polls answered below pingora.
    fast: Arc<EcluseProxy>,
    app: Arc<App>,
    conns: Arc<ConnCount>,
    /// The TLS listener's certificate and ALPN: handshakes are made here.
    tls: Option<pingora::listeners::tls::Acceptor>,
    /// The load balancers whose PROXY protocol header this listener reads
    /// (`proxy_protocol_from`), when the listener has `proxy_protocol: true`.
    proxy_protocol: Option<Arc<Vec<ipnet::IpNet>>>,
}

impl Edge {
    pub fn new(proxy: HttpProxy<EcluseProxy>, app: Arc<App>) -> Edge {
        Edge {
            proxy: Arc::new(proxy),
            fast: Arc::new(EcluseProxy {
                app: app.clone(),
                tls: false,
            }),
            app,
            conns: conn_count(),
            tls: None,
            proxy_protocol: None,
        }
    }

    /// A listener behind L4 load balancers: connections from `from` start with a PROXY
    /// protocol header (`proxy_protocol.rs`).
    pub fn with_proxy_protocol(mut self, from: Vec<ipnet::IpNet>) -> Edge {
        self.proxy_protocol = Some(Arc::new(from));
        self
    }

    /// The TLS listener: every accepted connection is handshaken with `acceptor`.
    pub fn with_tls(mut self, acceptor: pingora::listeners::tls::Acceptor) -> Edge {
        self.tls = Some(acceptor);
        self.fast = Arc::new(EcluseProxy {
            app: self.app.clone(),
            tls: true,
        });
        self
    }
}

/// The TLS handshake of an accepted TCP connection, given until `deadline`.
async fn tls_accept(
    acceptor: &pingora::listeners::tls::Acceptor,
    stream: Stream,
    deadline: Instant,
) -> Option<Stream> {
    let l4 = match stream
        .into_any()
        .downcast::<pingora::protocols::l4::stream::Stream>()
    {
        Ok(l4) => l4,
        Err(_) => {
            log::error!("TLS listener: accepted stream is not a TCP stream");
            return None;
        }
    };
    let handshake = pingora::protocols::tls::server::handshake(acceptor, *l4);
    match tokio::time::timeout_at(deadline.into(), handshake).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            log::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            crate::metrics::get()
                .client_timeouts
                .with_label_values(&["handshake"])
                .inc();
            None
        }
    }
}

/// Make the carried client the connection's peer address for everything above (pingora's
/// `client_addr`, hence the rate limits, the access log and forwarding headers), and the
/// front end it reached the local address: a new socket digest on the same socket.
fn set_peer(stream: &mut Stream, carried: super::proxy_protocol::Carried) {
    use std::os::unix::io::AsRawFd;
    let Some(fd) = stream
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()
        .map(|s| s.as_raw_fd())
    else {
        log::error!("PROXY protocol: accepted stream is not a TCP stream");
        return;
    };
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest
        .peer_addr
        .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
            carried.client,
        )));
    // The front end the client reached stands for the local address: the port in the
    // client's `Host` is checked against it (`proxy::request::host_ports`).
    let _ = digest
        .local_addr
        .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
            carried.reached,
        )));
    stream.set_socket_digest(digest);
}

/// One count for every proxy listener (plain and TLS services share the cap).
fn conn_count() -> Arc<ConnCount> {
    static C: std::sync::OnceLock<Arc<ConnCount>> = std::sync::OnceLock::new();
    C.get_or_init(|| Arc::new(ConnCount::default())).clone()
}

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = self.app.config().server.clients.clone();
        let mut ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(canonical);
        if let (Some(from), Some(peer)) = (&self.proxy_protocol, ip) {
            if from.iter().any(|n| n.contains(&peer)) {
                let deadline = Instant::now() + limits.header_timeout;
                match super::proxy_protocol::read_header(&mut stream, peer, deadline).await {
                    Ok(Some(carried)) => {
                        set_peer(&mut stream, carried);
                        ip = Some(canonical(carried.client.ip()));
                    }
                    // The balancer's own connection (LOCAL, UNKNOWN): its address stays.
                    Ok(None) => {}
                    Err(e) => {
                        log::info!("connection refused: {e}");
                        crate::metrics::get()
                            .client_connections_refused
                            .with_label_values(&["proxy_protocol"])
                            .inc();
                        Shutdown::shutdown(&mut *stream).await;
                        return None;
                    }
                }
            }
        }
        let slot =
            match self
                .conns
                .acquire(ip, limits.max_connections, limits.max_connections_per_ip)
            {
                Ok(slot) => slot,
                Err(reason) => {
                    crate::metrics::get()
                        .client_connections_refused
                        .with_label_values(&[reason])
                        .inc();
                    if self.tls.is_some() {
                        // Nothing readable can be said before a handshake.
                        Shutdown::shutdown(&mut *stream).await;
                        return None;
                    }
                    // Best effort, never waiting on a client that does not read.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(REFUSED).await?;
                        stream.flush().await
                    })
                    .await;
                    Shutdown::shutdown(&mut *stream).await;
                    return None;
                }
            };
        let head_deadline = Instant::now() + limits.header_timeout;
        let stream = match &self.tls {
            // The slot is given back (dropped) with a failed handshake.
            Some(acceptor) => tls_accept(acceptor, stream, head_deadline).await?,
            None => stream,
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut guarded = Guarded::new(stream, limits, h2)
            .holding(slot)
            .head_by(head_deadline);
        if !h2 {
            guarded.fast = Some((self.fast.clone(), ip));
        }
        let guarded: Stream = Box::new(guarded);
        // pingora's HTTP app loops over kept-alive requests itself and always answers None.
        let _ = self.proxy.process_new(guarded, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await
    }
}

/// Open connections, overall and per client IP.
#[derive(Default)]
struct ConnCount {
    total: AtomicU32,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// A connection's place in [`ConnCount`], given back on drop.
struct Slot {
    count: Arc<ConnCount>,
    ip: Option<IpAddr>,
}

impl ConnCount {
    fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: u32,
        max_per_ip: u32,
    ) -> Result<Slot, &'static str> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        if max > 0 && total > max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err("max_connections");
        }
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if max_per_ip > 0 && *n >= max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err("max_connections_per_ip");
            }
            *n += 1;
        }
        crate::metrics::get().client_connections.inc();
        Ok(Slot {
            count: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut map = self.count.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        crate::metrics::get().client_connections.dec();
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Where the connection's current request is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Between requests: pingora's keep-alive timeout applies; the first byte starts a head.
    Idle,
    /// Between requests after a status poll answered here, which pingora never saw: the
    /// keep-alive timeout is ours to apply (the connection closes quietly at `until`).
    Kept { until: Instant },
    /// Reading a request head, which must be complete by `deadline`.
    Head { deadline: Instant },
    /// Reading a request body: at least `min_rate` bytes/s over the waiting time.
    Body,
    /// Nothing to enforce here (body done, no body, HTTP/2).
    Free,
}

#[derive(Debug)]
struct PhaseState {
    phase: Phase,
    /// Body bytes read in this phase.
    body_bytes: u64,
    /// Time spent waiting for body bytes, excluding the wait in progress.
    body_waited: Duration,
    /// When the wait in progress started (a read returned `Pending`).
    pending_since: Option<Instant>,
    /// Bytes handed to pingora since the current request started (0: none yet, so a
    /// status poll arriving whole may be answered below pingora).
    handed: usize,
    /// pingora may hold bytes of a next request (pipelining, or a request body): no
    /// request is answered below it any more on this connection.
    dirty: bool,
    /// The current request's place in its feature's drain (`crate::drain`).
    drain: Option<Arc<crate::drain::Session>>,
    /// An upgrade request waits for the origin's answer until then (the origin's
    /// `connect_timeout` + `read_timeout`: pingora's own read timeout is off for upgrade
    /// requests, whose upgraded connection has `tunnel_idle_timeout` instead).
    await_origin: Option<Instant>,
    /// That wait ran out (the proxy answers 504).
    origin_timed_out: bool,
    /// The connection was upgraded (`101`).
    tunnel: Option<Tunnel>,
}

/// An upgraded connection: bytes pass both ways until one side closes, it stays idle
/// past `idle`, reaches `until`, or its feature is drained.
#[derive(Debug)]
struct Tunnel {
    idle: Duration,
    until: Option<Instant>,
    /// The last byte either way.
    last: Instant,
    /// WebSocket frame boundaries, to the client and from it (`None`: another protocol).
    ws: Option<(super::tunnel::Frames, super::tunnel::Frames)>,
    /// Not an upgraded connection: a refused upgrade's response body, held to the
    /// origin's read timeout between chunks (closing it is the origin's timeout).
    body_only: bool,
}

/// Why and how far a connection is being closed by ecluse.
#[derive(Debug)]
struct Closing {
    code: u16,
    reason: String,
    step: CloseStep,
    /// Past this, the connection is cut whatever the framing.
    hard: Instant,
    ws: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CloseStep {
    /// Waiting for the origin's frame in progress to the client to end.
    Boundary,
    /// The close frame to the client is being written (`out`).
    Flushing,
    /// Next: a close frame to the origin (as if from the client), then the end.
    ToOrigin,
    /// The end of the stream, for pingora.
    Eof,
}

/// Longest wait for a frame in progress to end before the close frame goes out.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A client stream that enforces the head deadline and the body rate. Every other trait
/// is the inner stream's.
pub struct Guarded {
    /// The connection's place under the caps, given back as soon as the connection closes
    /// (declared before `inner`: dropped first, before the socket is closed).
    slot: Option<Slot>,
    inner: Stream,
    limits: Clients,
    state: Mutex<PhaseState>,
    /// Bytes read ahead by the HTTP/2 preface sniff, served before the inner stream.
    peeked: Vec<u8>,
    peeked_pos: usize,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Queue-status polls are answered here, below pingora (HTTP/1 only): the proxy
    /// logic and the client's socket address.
    fast: Option<(Arc<EcluseProxy>, Option<IpAddr>)>,
    /// A response made here, still being written.
    out: Vec<u8>,
    out_pos: usize,
    /// A close in progress (drain, tunnel idle or lifetime).
    closing: Option<Closing>,
    /// The task of the pending read, woken when a write moves a close on.
    read_waker: Option<std::task::Waker>,
    /// The connection is upgraded: reads and writes keep its activity and framing.
    tunneling: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The guard of the connection a request came on (HTTP/1 only).
pub fn guard_of(session: &pingora::proxy::Session) -> Option<&Guarded> {
    let h1 = session.as_http1()?;
    let io: &dyn pingora::protocols::IO = &**h1.stream();
    io.as_any().downcast_ref::<Guarded>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_caps_count_overall_and_per_ip_and_give_back_on_drop() {
        let c = Arc::new(ConnCount::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = c.acquire(Some(a), 3, 2).unwrap();
        let s2 = c.acquire(Some(a), 3, 2).unwrap();
        assert_eq!(
            c.acquire(Some(a), 3, 2).err(),
            Some("max_connections_per_ip")
        );
        let s3 = c.acquire(Some(b), 3, 2).unwrap();
        assert_eq!(c.acquire(Some(b), 3, 2).err(), Some("max_connections"));
        assert_eq!(c.total.load(Ordering::Relaxed), 3);
        drop(s1);
        let s4 = c.acquire(Some(a), 3, 2).unwrap();
        drop((s2, s3, s4));
        assert_eq!(c.total.load(Ordering::Relaxed), 0);
        assert!(c.per_ip.lock().unwrap().is_empty(), "no entry left behind");
        // 0 means no cap.
        let many: Vec<_> = (0..100)
            .map(|_| c.acquire(Some(a), 0, 0).unwrap())
            .collect();
        assert_eq!(c.total.load(Ordering::Relaxed), 100);
        drop(many);
        assert!(c.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn body_allowance_grows_with_the_bytes_received() {
        let limits = Clients {
            body_min_rate: 1000,
            body_grace: Duration::from_secs(2),
            ..Clients::default()
        };
        let g = Guarded::new(Box::new(tokio::io::duplex(64).0), limits, false);
        let mut s = g.lock();
        s.body_bytes = 0;
        assert_eq!(g.body_allowance(&s), Duration::from_secs(2));
        s.body_bytes = 5000;
        assert_eq!(g.body_allowance(&s), Duration::from_secs(7));
    }

    fn short(header_ms: u64) -> Clients {
        Clients {
            header_timeout: Duration::from_millis(header_ms),
            body_min_rate: 1000,
            body_grace: Duration::from_millis(200),
            ..Clients::default()
        }
    }

    #[tokio::test]
    async fn a_trickled_head_fails_at_the_deadline_and_a_quick_one_passes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(Box::new(server), short(150), false);
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let err = loop {
            match g.read(&mut buf).await {
                Ok(0) => panic!("EOF before the deadline"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(140));
        writer.abort();

        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(Box::new(server), short(150), false);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 18);
        // Head parsed, no body: nothing is enforced until the next request starts.
        g.head_done(false, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        g.request_done();
        client.write_all(b"G").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_slow_body_fails_and_time_not_spent_waiting_for_it_is_not_counted() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut g = Guarded::new(Box::new(server), short(1000), false);
        g.head_done(true, None);
        // ecluse is busy elsewhere (waiting for the origin) for longer than the grace:
        // the client is not blamed, its bytes are already there.
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(&[b'x'; 500]).await.unwrap();
        let mut buf = [0u8; 1024];
        assert_eq!(g.read(&mut buf).await.unwrap(), 500);
        // Now the client stalls: the allowance is 200 ms + 500 B / 1000 B/s = 700 ms of
        // waiting, and the next read fails once it is used up.
        let start = Instant::now();
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(650) && waited < Duration::from_millis(1500),
            "{waited:?}"
        );
        // With the body done, a stall is no longer the body's.
        let (_client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(Box::new(server), short(1000), false);
        g.head_done(true, None);
        g.body_done();
        let r = tokio::time::timeout(Duration::from_millis(500), g.read(&mut buf)).await;
        assert!(
            r.is_err(),
            "a read after the body may wait as long as it likes"
        );
    }

    #[tokio::test]
    async fn the_h2_sniff_stops_at_the_first_differing_byte_and_replays_it() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(Box::new(server), short(5000), false);
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut sniff = [0u8; 24];
        assert!(g.try_peek(&mut sniff).await.unwrap());
        assert_ne!(&sniff[..], H2_PREFACE);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 18 {
            let n = g.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&got, b"GET / HTTP/1.0\r\n\r\n");

        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(Box::new(server), short(5000), false);
        client.write_all(H2_PREFACE).await.unwrap();
        assert!(g.try_peek(&mut sniff).await.unwrap());
        assert_eq!(&sniff[..], H2_PREFACE);
        assert_eq!(g.lock().phase, Phase::Free);

        let (_client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(Box::new(server), short(100), false);
        let err = g.try_peek(&mut sniff).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
