//! The fleet's connection to Redis: one Redis through the redis crate's connection
//! manager, a Redis Cluster through its cluster client (which learns the slots and
//! follows `MOVED` / `ASK` redirections), or a master found through Sentinel and found
//! again after each failover. All reconnect by themselves; every call is bounded by the
//! fleet's `timeout`. `rediss://` (and `sentinel.tls`) use rustls, checked against
//! `tls_ca_file` or the system's roots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    TlsCertificates, TlsMode, Value,
};

use crate::config::fleet::{ClusterSettings, SentinelSettings};

#[derive(Clone)]
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(SentinelConn),
}

fn certs(s: &ClusterSettings) -> Option<TlsCertificates> {
    s.tls_ca.as_ref().map(|ca| TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.clone()),
    })
}

/// The rustls provider must be chosen before the first TLS client (two are linked in:
/// the one pingora installs is the process's).
fn tls_ready(url_or_tls: bool) {
    if url_or_tls {
        pingora::tls::install_default_crypto_provider();
    }
}

fn client(url: &str, s: &ClusterSettings) -> RedisResult<redis::Client> {
    tls_ready(url.starts_with("rediss://"));
    match certs(s) {
        Some(c) if url.starts_with("rediss://") => redis::Client::build_with_tls(url, c),
        _ => redis::Client::open(url),
    }
}

impl RedisConn {
    /// One Redis (a connection manager that connects on first use: the node starts even
    /// while Redis is unreachable), or the Sentinel-watched master (found at first use).
    pub fn new(s: &ClusterSettings) -> RedisResult<RedisConn> {
        if let Some(sent) = &s.sentinel {
            return Ok(RedisConn::Sentinel(SentinelConn::new(s, sent)?));
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.timeout))
            .set_response_timeout(Some(s.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisConn::Single(
            redis::aio::ConnectionManager::new_lazy_with_config(client(&s.redis_url, s)?, cfg)?,
        ))
    }

    /// The handle for calls made on the request path (never asks the Sentinels).
    pub fn for_requests(&self) -> RedisConn {
        match self {
            RedisConn::Sentinel(c) => RedisConn::Sentinel(SentinelConn {
                shared: c.shared.clone(),
                discover: false,
            }),
            other => other.clone(),
        }
    }

    /// Masters this connection has used so far: it changes when Sentinel fails over
    /// (always 0 without Sentinel).
    pub fn masters(&self) -> u64 {
        match self {
            RedisConn::Sentinel(c) => c.shared.masters.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// A Redis Cluster, from one of its nodes: connects now (the caller tries again at
    /// its next exchange when the cluster cannot be reached).
    pub async fn cluster(s: &ClusterSettings) -> RedisResult<RedisConn> {
        tls_ready(s.redis_url.starts_with("rediss://"));
        let mut b = redis::cluster::ClusterClientBuilder::new(vec![s.redis_url.as_str()])
            .connection_timeout(s.timeout)
            .response_timeout(s.timeout)
            .retries(1);
        if let Some(c) = certs(s) {
            b = b.certs(c);
        }
        Ok(RedisConn::Cluster(b.build()?.get_async_connection().await?))
    }
}

/// The master a set of Sentinels watches. The connection is dropped when it fails in a
/// way a failover explains (connection lost or refused, timeout, `READONLY`: the old
/// master came back as a replica); the next call asks the Sentinels again, which check
/// the master they name with `ROLE` before it is used.
///
/// Only the sync loop's handle asks the Sentinels: the request path's handle fails while
/// there is no master connection, so that nothing reaches a new master before this
/// node's first exchange with it (which gives it the numbers this node handed out).
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<SentinelShared>,
    discover: bool,
}

struct SentinelShared {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    /// The master's address last connected to (logged when a failover moves it).
    master: Mutex<Option<String>>,
    /// Masters connected to so far (1 for the first): a change means a failover.
    masters: AtomicU64,
    timeout: Duration,
}

fn timed_out(what: &'static str) -> RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what).into()
}

impl SentinelConn {
    fn new(s: &ClusterSettings, sent: &SentinelSettings) -> RedisResult<SentinelConn> {
        let mut addrs = Vec::new();
        let mut auth: (Option<String>, Option<String>) = (None, None);
        let mut sentinel_tls = false;
        for a in &sent.addresses {
            let info = a.as_str().into_connection_info()?;
            if auth.1.is_none() {
                if let Some(p) = info.redis_settings().password() {
                    auth = (
                        info.redis_settings().username().map(str::to_string),
                        Some(p.to_string()),
                    );
                }
            }
            sentinel_tls |= matches!(info.addr(), ConnectionAddr::TcpTls { .. });
            addrs.push(info.addr().clone());
        }
        tls_ready(sentinel_tls || sent.tls);
        let mut b =
            SentinelClientBuilder::new(addrs, &sent.master_name, SentinelServerType::Master)?
                .set_client_to_redis_db(sent.db);
        if let Some(u) = &sent.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &sent.password {
            b = b.set_client_to_redis_password(&p.0);
        }
        if sent.tls {
            b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
            if let Some(c) = certs(s) {
                b = b.set_client_to_redis_certificates(c);
            }
        }
        if let Some(u) = auth.0 {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = auth.1 {
            b = b.set_client_to_sentinel_password(p);
        }
        if sentinel_tls {
            if let Some(c) = certs(s) {
                b = b.set_client_to_sentinel_certificates(c);
            }
        }
        Ok(SentinelConn {
            shared: Arc::new(SentinelShared {
                client: tokio::sync::Mutex::new(b.build()?),
                current: Mutex::new(None),
                master: Mutex::new(None),
                masters: AtomicU64::new(0),
                timeout: s.timeout,
            }),
            discover: true,
        })
    }

    /// The master's connection: the current one, or a new one to the master the
    /// Sentinels name now (one caller asks them; the others wait for its answer).
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        let sh = &self.shared;
        if let Some(c) = sh.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        if !self.discover {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "no master connection (the sync loop asks the Sentinels)",
            )));
        }
        let limit = sh.timeout * 2;
        let mut client = tokio::time::timeout(limit, sh.client.lock())
            .await
            .map_err(|_| timed_out("waiting for the Sentinel lookup"))?;
        if let Some(c) = sh.current.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(sh.timeout))
            .set_response_timeout(Some(sh.timeout));
        let found = async {
            let c = client.async_get_client().await?;
            let addr = c.get_connection_info().addr().to_string();
            let conn = c.get_multiplexed_async_connection_with_config(&cfg).await?;
            Ok::<_, RedisError>((addr, conn))
        };
        let (addr, conn) = tokio::time::timeout(limit, found)
            .await
            .map_err(|_| timed_out("asking the Sentinels for the master"))??;
        let mut m = sh.master.lock().unwrap_or_else(|p| p.into_inner());
        match m.as_deref() {
            None => {
                log::info!("cluster: Sentinel names {addr} as the master");
                sh.masters.fetch_add(1, Ordering::Relaxed);
            }
            Some(old) if old != addr => {
                log::warn!("cluster: Sentinel failover: the master moved from {old} to {addr}");
                sh.masters.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        *m = Some(addr);
        *sh.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Drop the connection after a failure a failover explains.
    fn failed<T>(&self, r: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &r {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
                || e.is_unrecoverable_error()
                || e.code() == Some("READONLY")
            {
                *self
                    .shared
                    .current
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        r
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = async {
                let mut c = self.connection().await?;
                c.req_packed_command(cmd).await
            }
            .await;
            self.failed(r)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = async {
                let mut c = self.connection().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }
            .await;
            self.failed(r)
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}
