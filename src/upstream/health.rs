//! Active health checks: every `interval`, each server of each origin gets a TCP connect
//! or an HTTP `GET path`; `unhealthy_threshold` failures in a row take it out of rotation,
//! `healthy_threshold` successes bring it back. Runs off the request path, on the current
//! config each round, so reloads change checks without a restart.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::app::App;
use crate::config::runtime::HealthCheck;

use super::ServerState;

/// One check: Ok when the server answered as expected. With `tls`, the check speaks TLS
/// with the origin's settings (SNI, verification, CA, client certificate), so a TCP
/// check also proves the handshake, and a wrong certificate is a failed check.
pub async fn probe(
    addr: SocketAddr,
    check: &HealthCheck,
    host: &str,
    tls: Option<&crate::tls::OriginTls>,
) -> Result<(), String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match tls {
            None => exchange(tcp, check, host).await,
            Some(t) => {
                let connector = pingora::tls::TlsConnector::from(t.probe.clone());
                let s = connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with `{}`: {e}", t.sni))?;
                exchange(s, check, host).await
            }
        }
    };
    match tokio::time::timeout(check.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// The HTTP part of a check (nothing for a TCP check).
async fn exchange<S>(mut s: S, check: &HealthCheck, host: &str) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    {
        let Some(path) = &check.path else {
            return Ok(());
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ecluse-health-check\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let r = s
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("read: {e}"))?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
        let status: u16 = line
            .strip_prefix("HTTP/1.")
            .and_then(|l| l.get(2..5))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "no HTTP status line".to_string())?;
        if status == check.expect_status {
            Ok(())
        } else {
            Err(format!("status {status}, expected {}", check.expect_status))
        }
    }
}

fn apply(server: &ServerState, ok: bool, check: &HealthCheck, why: &str) {
    if ok {
        server.set_check_error(None);
        server.check_fail_streak.store(0, Ordering::Relaxed);
        let n = server.check_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if !server.healthy() && n >= check.healthy_threshold {
            server.set_healthy(true);
        }
    } else {
        server.check_ok_streak.store(0, Ordering::Relaxed);
        let n = server.check_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        server.set_check_error(Some(why));
        if server.healthy() && n >= check.unhealthy_threshold {
            log::warn!("health check of {} failed {n} times: {why}", server.addr);
            server.set_healthy(false);
        }
    }
    server.tick();
}

/// Run health checks until `shutdown` changes.
pub async fn run(app: Arc<App>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut next: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let cfg = app.config();
        let now = Instant::now();
        for origin in &cfg.origins {
            for s in &origin.servers {
                s.tick();
            }
            if !origin.health.enabled {
                // Checks turned off: a server they had marked down comes back.
                for s in &origin.servers {
                    if !s.healthy() {
                        s.set_healthy(true);
                    }
                }
                continue;
            }
            let due = next.get(&origin.name).is_none_or(|t| *t <= now);
            if !due {
                continue;
            }
            next.insert(origin.name.clone(), now + origin.health.interval);
            for server in &origin.servers {
                let server = server.clone();
                let origin = origin.clone();
                tokio::spawn(async move {
                    let host = origin.sni.clone();
                    let r = probe(
                        server.addr,
                        &origin.health,
                        &host,
                        origin.tls_client.as_deref(),
                    )
                    .await;
                    let why = r.as_ref().err().cloned().unwrap_or_default();
                    apply(&server, r.is_ok(), &origin.health, &why);
                });
            }
        }
    }
}
