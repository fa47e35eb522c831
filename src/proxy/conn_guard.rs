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

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
use super::EcluseProxy;
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

/// Make `client` the connection's peer address for everything above (pingora's
/// `client_addr`, hence the rate limits, the access log and forwarding headers): a new
/// socket digest on the same socket, its local address kept.
fn set_peer(stream: &mut Stream, client: SocketAddr) {
    use std::os::unix::io::AsRawFd;
    let Some(fd) = stream
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()
        .map(|s| s.as_raw_fd())
    else {
        log::error!("PROXY protocol: accepted stream is not a TCP stream");
        return;
    };
    let old = stream.get_socket_digest();
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest
        .peer_addr
        .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
            client,
        )));
    if let Some(local) = old.as_ref().and_then(|d| d.local_addr().cloned()) {
        let _ = digest.local_addr.set(Some(local));
    }
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
                    Ok(Some(client)) => {
                        set_peer(&mut stream, client);
                        ip = Some(canonical(client.ip()));
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

impl Guarded {
    /// The first request head is due by `deadline` (counted from the accept, so a TLS
    /// handshake spends from the same allowance).
    fn head_by(self, deadline: Instant) -> Guarded {
        if let Phase::Head { deadline: d } = &mut self.lock().phase {
            *d = deadline;
        }
        self
    }

    /// Holds the connection's place under the caps until it closes.
    fn holding(mut self, slot: Slot) -> Guarded {
        self.slot = Some(slot);
        self
    }

    fn new(inner: Stream, limits: Clients, h2: bool) -> Guarded {
        let phase = if h2 {
            Phase::Free
        } else {
            Phase::Head {
                deadline: Instant::now() + limits.header_timeout,
            }
        };
        Guarded {
            slot: None,
            inner,
            limits,
            state: Mutex::new(PhaseState {
                phase,
                body_bytes: 0,
                body_waited: Duration::ZERO,
                pending_since: None,
                handed: 0,
                dirty: false,
                drain: None,
                await_origin: None,
                origin_timed_out: false,
                tunnel: None,
            }),
            peeked: Vec::new(),
            peeked_pos: 0,
            sleep: None,
            fast: None,
            out: Vec::new(),
            out_pos: 0,
            closing: None,
            read_waker: None,
            tunneling: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PhaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request head has been parsed; `body` when a request body follows; `head_len`
    /// the head's length in bytes, when known.
    pub fn head_done(&self, body: bool, head_len: Option<usize>) {
        // pingora read past this head (a pipelined request, or a body): what it holds is
        // not ours to see, so nothing more is answered below it on this connection.
        let mut s = self.lock();
        if body || head_len.is_none_or(|l| s.handed != l) {
            s.dirty = true;
        }
        s.phase = if body && self.limits.body_min_rate > 0 {
            Phase::Body
        } else {
            Phase::Free
        };
        s.body_bytes = 0;
        s.body_waited = Duration::ZERO;
        s.pending_since = None;
    }

    /// The request body has been read to its end.
    pub fn body_done(&self) {
        self.lock().phase = Phase::Free;
    }

    /// The response is finished: the next byte starts the next request head.
    pub fn request_done(&self) {
        let mut s = self.lock();
        s.phase = Phase::Idle;
        s.handed = 0;
        s.drain = None;
        s.await_origin = None;
        s.tunnel = None;
        self.tunneling.store(false, Ordering::Relaxed);
    }

    /// The current request belongs to a feature's drain: closed when it reaches it.
    pub fn watch_drain(&self, session: Arc<crate::drain::Session>) {
        self.lock().drain = Some(session);
    }

    /// An upgrade request went to the origin: its answer is due by `deadline`.
    pub fn await_origin(&self, deadline: Instant) {
        let mut s = self.lock();
        s.await_origin = Some(deadline);
        s.origin_timed_out = false;
    }

    /// The wait for an upgrade answer ran out (answer 504, not "client gone").
    pub fn origin_timed_out(&self) -> bool {
        self.lock().origin_timed_out
    }

    /// The origin answered. With `Some(..)`, the connection is upgraded: it is closed
    /// when idle for `idle` either way or at `until`; `websocket` when it speaks
    /// WebSocket (closes then carry a close frame).
    pub fn response_started(&self, tunnel: Option<(Duration, Option<Instant>, bool)>) {
        let mut s = self.lock();
        s.await_origin = None;
        if let Some((idle, until, websocket)) = tunnel {
            self.tunneling.store(true, Ordering::Relaxed);
            s.tunnel = Some(Tunnel {
                idle,
                until,
                last: Instant::now(),
                ws: websocket.then(|| {
                    (
                        super::tunnel::Frames::after_http_head(),
                        super::tunnel::Frames::new(),
                    )
                }),
                body_only: false,
            });
        }
    }

    /// A refused upgrade's response: cut when nothing is written to the client for
    /// `idle` (what the origin's read timeout would have done).
    pub fn body_idle(&self, idle: Duration) {
        self.tunneling.store(true, Ordering::Relaxed);
        self.lock().tunnel = Some(Tunnel {
            idle,
            until: None,
            last: Instant::now(),
            ws: None,
            body_only: true,
        });
    }

    /// The body waiting time allowed so far: the grace, plus what the bytes received
    /// would have taken at the minimum rate.
    fn body_allowance(&self, s: &PhaseState) -> Duration {
        self.limits.body_grace
            + Duration::from_secs_f64(s.body_bytes as f64 / self.limits.body_min_rate as f64)
    }

    /// After a read that returned `n` bytes: move the phase on and check the limits.
    fn after_read(&self, n: usize, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.handed += n;
        let now = Instant::now();
        if let Some(t) = s.tunnel.as_mut() {
            if n > 0 {
                t.last = now;
                if let Some((_, from_client)) = t.ws.as_mut() {
                    from_client.feed(bytes);
                }
            }
        }
        match s.phase {
            Phase::Idle | Phase::Kept { .. } if n > 0 => {
                s.phase = Phase::Head {
                    deadline: now + self.limits.header_timeout,
                };
                Ok(())
            }
            Phase::Head { deadline } if now >= deadline => Err(timed_out("header")),
            Phase::Body => {
                if let Some(since) = s.pending_since.take() {
                    s.body_waited += now - since;
                }
                s.body_bytes += n as u64;
                if s.body_waited > self.body_allowance(&s) {
                    Err(timed_out("body"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The read is pending: when must it give up?
    fn pending_deadline(&self) -> Option<Instant> {
        let mut s = self.lock();
        match s.phase {
            Phase::Head { deadline } => Some(deadline),
            Phase::Kept { until } => Some(until),
            Phase::Body => {
                let now = Instant::now();
                let since = *s.pending_since.get_or_insert(now);
                let left = self.body_allowance(&s).saturating_sub(s.body_waited);
                Some(since + left)
            }
            _ => None,
        }
    }
}

fn timed_out(phase: &'static str) -> io::Error {
    crate::metrics::get()
        .client_timeouts
        .with_label_values(&[phase])
        .inc();
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("client too slow sending the request {phase}"),
    )
}

impl Guarded {
    /// `bytes`, just read at the start of a request, are one whole status poll this
    /// connection may answer itself: the response to write. pingora never sees them.
    fn answer_here(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let (proxy, ip) = self.fast.as_ref()?;
        // Not a status poll (most requests): nothing to lock or parse.
        if !bytes.starts_with(STATUS_START) {
            return None;
        }
        let now = Instant::now();
        {
            let s = self.lock();
            let fresh = match s.phase {
                Phase::Idle => true,
                Phase::Kept { until } => now < until,
                Phase::Head { deadline } => now < deadline,
                _ => false,
            };
            if s.dirty || s.handed > 0 || !fresh {
                return None;
            }
        }
        let started = (now, std::time::SystemTime::now());
        let mut fields = [httparse::EMPTY_HEADER; MAX_POLL_FIELDS];
        let req = status_poll_head(bytes, &self.limits, &mut fields)?;
        let resp = proxy.fast_status(&req, *ip, started)?;
        // Answered: the next byte starts the next request's head, within the keep-alive
        // timeout.
        self.lock().phase = Phase::Kept {
            until: Instant::now() + self.limits.keepalive_timeout,
        };
        Some(resp)
    }

    /// Writes what [`Self::answer_here`] made; `Ready(Ok)` once all of it is out.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.out_pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !self.out.is_empty() {
            // TLS: push the record out now, not with pingora's next write.
            match Pin::new(&mut self.inner).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            self.out.clear();
            self.out_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// Polls answered in one `poll_read` before giving the thread back to other tasks.
const ANSWERS_PER_POLL: u32 = 16;

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.poll_close(cx, buf) {
            return r;
        }
        let mut answered = 0u32;
        loop {
            match this.poll_answer(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            if answered == ANSWERS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.peeked_pos < this.peeked.len() {
                break;
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    if n > 0 {
                        if let Some(resp) = this.answer_here(&buf.filled()[before..]) {
                            buf.set_filled(before);
                            this.out = resp;
                            answered += 1;
                            continue;
                        }
                    }
                    return Poll::Ready(this.after_read(n, &buf.filled()[before..]));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return this.poll_pending(cx),
            }
        }
        // Bytes read ahead by the HTTP/2 preface sniff go first, to pingora.
        let rest = &this.peeked[this.peeked_pos..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        let r = this.after_read(n, &this.peeked[this.peeked_pos..this.peeked_pos + n]);
        this.peeked_pos += n;
        if this.peeked_pos == this.peeked.len() {
            this.peeked = Vec::new();
            this.peeked_pos = 0;
        }
        Poll::Ready(r)
    }
}

impl Guarded {
    /// Deadlines beyond the request phase's: an upgrade answer, a tunnel's idle time and
    /// lifetime, a close waiting for a frame to end.
    fn other_deadline(&self) -> Option<Instant> {
        let s = self.lock();
        let tunnel = s
            .tunnel
            .as_ref()
            .map(|t| t.until.map_or(t.last + t.idle, |u| u.min(t.last + t.idle)));
        if let Some(c) = self.closing.as_ref() {
            return Some(c.hard);
        }
        [s.await_origin, tunnel].into_iter().flatten().min()
    }

    /// Start closing when a drain, a tunnel's idle time or lifetime says so, and move a
    /// close on. `Some` is the read's result; `None`: read as usual.
    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Option<Poll<io::Result<()>>> {
        if self.closing.is_none() {
            let now = Instant::now();
            let mut s = self.lock();
            let drained = s
                .drain
                .as_ref()
                .and_then(|d| d.closing().map(str::to_string));
            let (start, ws) = match (&drained, s.tunnel.as_ref()) {
                (Some(reason), t) => (
                    Some((super::tunnel::TRY_AGAIN_LATER, reason.clone(), "drain")),
                    t.is_some_and(|t| t.ws.is_some()),
                ),
                (None, Some(t)) => {
                    let why = if t.until.is_some_and(|u| now >= u) {
                        Some("tunnel_lifetime")
                    } else if now >= t.last + t.idle {
                        Some(if t.body_only {
                            "origin_read"
                        } else {
                            "tunnel_idle"
                        })
                    } else {
                        None
                    };
                    (
                        why.map(|w| (super::tunnel::GOING_AWAY, w.replace('_', " "), w)),
                        t.ws.is_some(),
                    )
                }
                (None, None) => (None, false),
            };
            if start.is_none() && s.await_origin.is_some_and(|d| now >= d) {
                s.await_origin = None;
                s.origin_timed_out = true;
                return Some(Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "origin too slow answering an upgrade request",
                ))));
            }
            drop(s);
            let (code, reason, why) = start?;
            if why != "drain" && why != "origin_read" {
                crate::metrics::get()
                    .client_timeouts
                    .with_label_values(&[why])
                    .inc();
            }
            log::info!("closing a connection: {why} ({reason})");
            self.closing = Some(Closing {
                code,
                reason,
                step: CloseStep::Boundary,
                hard: now + CLOSE_WAIT,
                ws,
            });
        }
        let c = self.closing.as_mut()?;
        if !c.ws {
            // Nothing to say in-band: cut the connection.
            return Some(Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("closed by ecluse: {}", c.reason),
            ))));
        }
        loop {
            let c = self.closing.as_mut()?;
            match c.step {
                CloseStep::Boundary => {
                    let at_boundary = {
                        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        s.tunnel
                            .as_ref()
                            .and_then(|t| t.ws.as_ref())
                            .is_some_and(|(to_client, _)| to_client.at_boundary())
                    };
                    if at_boundary {
                        self.out = super::tunnel::close_frame(c.code, &c.reason, None);
                        self.out_pos = 0;
                        c.step = CloseStep::Flushing;
                    } else if Instant::now() >= c.hard {
                        // The origin's frame never ended: cut without a close frame.
                        c.step = CloseStep::Eof;
                    } else {
                        self.read_waker = Some(cx.waker().clone());
                        return Some(self.poll_pending(cx));
                    }
                }
                CloseStep::Flushing => match self.poll_answer(cx) {
                    Poll::Ready(Ok(())) => c_step(&mut self.closing, CloseStep::ToOrigin),
                    Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                    Poll::Pending => return Some(Poll::Pending),
                },
                CloseStep::ToOrigin => {
                    c.step = CloseStep::Eof;
                    let at_boundary = {
                        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        s.tunnel
                            .as_ref()
                            .and_then(|t| t.ws.as_ref())
                            .is_some_and(|(_, from_client)| from_client.at_boundary())
                    };
                    // The origin hears the close too, as if from the client (masked), so
                    // its side ends cleanly rather than on a bare TCP close.
                    let f = super::tunnel::close_frame(
                        super::tunnel::GOING_AWAY,
                        "",
                        Some(rand::random::<[u8; 4]>()),
                    );
                    if at_boundary && buf.remaining() >= f.len() {
                        buf.put_slice(&f);
                        return Some(Poll::Ready(Ok(())));
                    }
                }
                CloseStep::Eof => return Some(Poll::Ready(Ok(()))),
            }
        }
    }

    /// The client's bytes are not there yet: wait, but not past the phase's deadline.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(d) = self.lock().drain.as_ref() {
            d.register(cx.waker());
        }
        let phase_deadline = self.pending_deadline();
        let other = self.other_deadline();
        let Some(deadline) = [phase_deadline, other].into_iter().flatten().min() else {
            self.sleep = None;
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        // The timer is kept from one wait to the next. One due before the deadline stays
        // as it is: when it fires it is moved on to the deadline then in force, so a
        // kept-alive connection re-arms it about once per timeout, not once per request.
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() > deadline {
            sleep.as_mut().reset(deadline);
        }
        let mut fired = sleep.as_mut().poll(cx).is_ready();
        if fired && sleep.deadline() < deadline {
            sleep.as_mut().reset(deadline);
            fired = sleep.as_mut().poll(cx).is_ready();
        }
        if fired {
            self.sleep = None;
            if other.is_some_and(|o| o <= Instant::now()) {
                // A tunnel's or a close's deadline: poll again, `poll_close` acts on it.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if phase_deadline.is_none_or(|d| d > Instant::now()) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let phase = match self.lock().phase {
                // Idle past the keep-alive timeout: the end of the stream, for pingora.
                Phase::Kept { .. } => return Poll::Ready(Ok(())),
                Phase::Body => "body",
                _ => "header",
            };
            return Poll::Ready(Err(timed_out(phase)));
        }
        Poll::Pending
    }
}

/// Move a close to its next step.
fn c_step(c: &mut Option<Closing>, step: CloseStep) {
    if let Some(c) = c.as_mut() {
        c.step = step;
    }
}

impl Guarded {
    /// A write on an upgraded connection: keep its activity and framing; while closing,
    /// let the frame in progress end, put the close frame after it, and drop the rest
    /// (the connection is closing: nothing after a close frame may be sent).
    fn poll_write_tunnel(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(c) = self.closing.as_mut() {
            match c.step {
                CloseStep::Boundary if c.ws => {
                    let n = {
                        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        s.tunnel
                            .as_ref()
                            .and_then(|t| t.ws.as_ref())
                            .map_or(0, |(to_client, _)| to_client.until_boundary(buf))
                    };
                    if n == 0 {
                        // At a boundary: the close frame goes now, the pending read
                        // carries the close on.
                        self.out = super::tunnel::close_frame(c.code, &c.reason, None);
                        self.out_pos = 0;
                        c.step = CloseStep::Flushing;
                        if let Some(w) = self.read_waker.take() {
                            w.wake();
                        }
                    } else {
                        return self.write_through(cx, &buf[..n]);
                    }
                }
                CloseStep::Boundary => return self.write_through(cx, buf),
                _ => {}
            }
            return match self.poll_answer(cx) {
                Poll::Ready(Ok(())) => {
                    c_step(&mut self.closing, CloseStep::ToOrigin);
                    if let Some(w) = self.read_waker.take() {
                        w.wake();
                    }
                    Poll::Ready(Ok(buf.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        self.write_through(cx, buf)
    }

    fn write_through(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = s.tunnel.as_mut() {
                    t.last = Instant::now();
                    if let Some((to_client, _)) = t.ws.as_mut() {
                        to_client.feed(&buf[..n]);
                    }
                }
            }
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.tunneling.load(Ordering::Relaxed) || me.closing.is_some() {
            return me.poll_write_tunnel(cx, buf);
        }
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        // A closing connection no longer counts: whoever sees it closed can connect again.
        me.slot = None;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.tunneling.load(Ordering::Relaxed) || me.closing.is_some() {
            // One slice at a time: the framing is followed byte by byte.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return me.poll_write_tunnel(cx, first);
        }
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.slot = None;
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.set_socket_digest(socket_digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    /// pingora's HTTP/2 prior-knowledge sniff. Reads only as far as the bytes agree with
    /// the preface (so a short HTTP/1 head is not held back waiting for 24 bytes), within
    /// the head deadline; what was read is replayed to the HTTP/1 parser.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let deadline = match self.lock().phase {
            Phase::Head { deadline } => deadline,
            _ => Instant::now() + self.limits.header_timeout,
        };
        let want = buf.len().min(H2_PREFACE.len());
        let mut chunk = [0u8; 24];
        while self.peeked.len() < want && H2_PREFACE.starts_with(&self.peeked) {
            let need = want - self.peeked.len();
            let read = tokio::time::timeout_at(
                tokio::time::Instant::from_std(deadline),
                self.inner.read(&mut chunk[..need]),
            )
            .await;
            match read {
                Err(_) => return Err(timed_out("header")),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => self.peeked.extend_from_slice(&chunk[..n]),
            }
        }
        if self.peeked.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending anything",
            ));
        }
        let n = self.peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&self.peeked[..n]);
        buf[n..].fill(0);
        if self.peeked.as_slice() == H2_PREFACE {
            // HTTP/2: streams multiplex on this connection; the h2 layer paces them.
            self.lock().phase = Phase::Free;
        }
        Ok(true)
    }
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
