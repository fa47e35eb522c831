//! A minimal browser for the surge replay: one HTTP/1.1 keep-alive connection at a time
//! (like a browser tab talking to one site), from its own loopback source address (so
//! per-client limits see one student per address, as on the real Internet), with a cookie
//! jar and no redirect following (the journey follows them itself).
//!
//! Built on hyper's connection API rather than a pooled client so that the source address,
//! the connection's life and every retry are explicit: a request is sent again by itself
//! only when it was a `GET` on a reused connection that the server had already closed
//! (what every browser does); anything else is reported to the student.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// A response, body read completely.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Bytes,
}

/// Why no response came back.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Build(#[from] http::Error),
}

pub struct Browser {
    target: SocketAddr,
    local: IpAddr,
    host: String,
    timeout: Duration,
    jar: Vec<(String, String)>,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// Requests sent on the current connection.
    used: u32,
}

impl Browser {
    pub fn new(target: SocketAddr, local: IpAddr, timeout: Duration) -> Browser {
        Browser {
            target,
            local,
            host: target.to_string(),
            timeout,
            jar: Vec::new(),
            conn: None,
            used: 0,
        }
    }

    /// Forget the connection (a browser closes idle connections; the server would too).
    pub fn close(&mut self) {
        self.conn = None;
    }

    /// The cookies held, as (name, value).
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.jar.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    async fn connect(&mut self) -> Result<(), Fail> {
        let sock = TcpSocket::new_v4().map_err(Fail::Connect)?;
        sock.bind(SocketAddr::new(self.local, 0))
            .map_err(Fail::Connect)?;
        let stream = sock.connect(self.target).await.map_err(Fail::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.conn = Some(sender);
        self.used = 0;
        Ok(())
    }

    fn build(
        &self,
        method: &Method,
        path: &str,
        accept: &str,
        content_type: Option<&str>,
        body: &Bytes,
    ) -> Result<Request<Full<Bytes>>, Fail> {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::ACCEPT, accept)
            .header(http::header::ACCEPT_LANGUAGE, "fr-FR,fr;q=0.9")
            .header(http::header::USER_AGENT, "ecluse-surge");
        if !self.jar.is_empty() {
            let c = self
                .jar
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            b = b.header(http::header::COOKIE, c);
        }
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        Ok(b.body(Full::new(body.clone()))?)
    }

    /// Sends one request and reads the whole response, within the browser's timeout.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        accept: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Resp, Fail> {
        let timeout = self.timeout;
        match tokio::time::timeout(
            timeout,
            self.send_inner(&method, path, accept, content_type, body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                // The connection may still deliver the late answer: never reuse it.
                self.conn = None;
                Err(Fail::Timeout(timeout))
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: &Method,
        path: &str,
        accept: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Resp, Fail> {
        let mut fresh_retry_allowed = *method == Method::GET;
        loop {
            let alive = match self.conn.as_mut() {
                Some(c) => !c.is_closed() && c.ready().await.is_ok(),
                None => false,
            };
            let reused = if alive {
                true
            } else {
                self.connect().await?;
                false
            };
            let req = self.build(method, path, accept, content_type, &body)?;
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            self.used += 1;
            let result = conn.send_request(req).await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    self.conn = None;
                    // A kept-alive connection the server closed meanwhile: browsers send
                    // a GET again on a new connection, never an upload.
                    if reused
                        && fresh_retry_allowed
                        && (e.is_canceled() || e.is_incomplete_message())
                    {
                        fresh_retry_allowed = false;
                        continue;
                    }
                    return Err(e.into());
                }
            };
            let (parts, body) = resp.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    self.conn = None;
                    return Err(e.into());
                }
            };
            if parts
                .headers
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
            {
                self.conn = None;
            }
            for v in parts.headers.get_all(http::header::SET_COOKIE) {
                self.store_cookie(v);
            }
            return Ok(Resp {
                status: parts.status.as_u16(),
                body,
            });
        }
    }

    fn store_cookie(&mut self, v: &HeaderValue) {
        let Ok(s) = v.to_str() else { return };
        let mut parts = s.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let expired = parts.any(|a| {
            let a = a.trim().to_ascii_lowercase();
            a == "max-age=0" || a.starts_with("max-age=-")
        });
        self.jar.retain(|(n, _)| n != name);
        if !expired {
            self.jar.push((name.to_string(), value.to_string()));
        }
    }
}
