//! The guarded stream itself: where the connection's current request is (the proxy phases
//! tell it), the deadlines that follow, the read path (a status poll answered here, the
//! HTTP/2 sniff), and every other trait of the inner stream passed through.

use super::*;

impl Guarded {
    /// The first request head is due by `deadline` (counted from the accept, so a TLS
    /// handshake spends from the same allowance).
    pub(super) fn head_by(self, deadline: Instant) -> Guarded {
        if let Phase::Head { deadline: d } = &mut self.lock().phase {
            *d = deadline;
        }
        self
    }

    /// Holds the connection's place under the caps until it closes.
    pub(super) fn holding(mut self, slot: Slot) -> Guarded {
        self.slot = Some(slot);
        self
    }

    pub(super) fn new(inner: Stream, limits: Clients, h2: bool) -> Guarded {
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

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, PhaseState> {
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
    pub(super) fn body_allowance(&self, s: &PhaseState) -> Duration {
        self.limits.body_grace
            + Duration::from_secs_f64(s.body_bytes as f64 / self.limits.body_min_rate as f64)
    }

    /// After a read that returned `n` bytes: move the phase on and check the limits.
    pub(super) fn after_read(&self, n: usize, bytes: &[u8]) -> io::Result<()> {
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
    pub(super) fn pending_deadline(&self) -> Option<Instant> {
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

pub(super) fn timed_out(phase: &'static str) -> io::Error {
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
    pub(super) fn answer_here(&self, bytes: &[u8]) -> Option<Vec<u8>> {
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
    pub(super) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
pub(super) const ANSWERS_PER_POLL: u32 = 16;

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
