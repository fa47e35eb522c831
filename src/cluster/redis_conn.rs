//! The fleet's connection to Redis: one Redis (or a master behind a Sentinel-moved
//! address) through the redis crate's connection manager, or a Redis Cluster through its
//! cluster client, which learns the slots and follows `MOVED` / `ASK` redirections.
//! Both reconnect by themselves; every call is bounded by the fleet's `timeout`.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

#[derive(Clone)]
pub enum RedisConn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisConn {
    /// One Redis: a connection manager that connects on first use (the node starts even
    /// while Redis is unreachable).
    pub fn single(url: &str, timeout: Duration) -> redis::RedisResult<RedisConn> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(RedisConn::Single(
            redis::aio::ConnectionManager::new_lazy_with_config(client, cfg)?,
        ))
    }

    /// A Redis Cluster, from one of its nodes: connects now (the caller tries again at
    /// its next exchange when the cluster cannot be reached).
    pub async fn cluster(url: &str, timeout: Duration) -> redis::RedisResult<RedisConn> {
        let client = redis::cluster::ClusterClientBuilder::new(vec![url])
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        Ok(RedisConn::Cluster(client.get_async_connection().await?))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
