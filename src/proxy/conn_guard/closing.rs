//! How the guard closes a connection (a deadline passed, a drained feature, shutdown):
//! the answer or close frame it writes first, and the bytes of an upgraded connection
//! (tunnel) passing both ways until then.

use super::stream::timed_out;
use super::*;

impl Guarded {
    /// Deadlines beyond the request phase's: an upgrade answer, a tunnel's idle time and
    /// lifetime, a close waiting for a frame to end.
    pub(super) fn other_deadline(&self) -> Option<Instant> {
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
    pub(super) fn poll_close(
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
    pub(super) fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
pub(super) fn c_step(c: &mut Option<Closing>, step: CloseStep) {
    if let Some(c) = c.as_mut() {
        c.step = step;
    }
}

impl Guarded {
    /// A write on an upgraded connection: keep its activity and framing; while closing,
    /// let the frame in progress end, put the close frame after it, and drop the rest
    /// (the connection is closing: nothing after a close frame may be sent).
    pub(super) fn poll_write_tunnel(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

    pub(super) fn write_through(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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
