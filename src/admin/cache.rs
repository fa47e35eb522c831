//! `POST /admin/cache/purge` and `POST /admin/cache/warm`.
//!
//! Warming sends real `GET`s through this process's own proxy listener (same routes, same
//! keys, same cache policy as students' requests), marked with a per-process secret header
//! so they skip rate limits and the waiting room. Nothing is stored by a side door.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{error, json_resp, read_json, Resp};
use crate::app::App;
use crate::cache::PurgeScope;

/// Header carrying the per-process warm token (`App::warm_token`).
pub const WARM_HEADER: &str = "x-ecluse-warm";
const MAX_WARM_URLS: usize = 1000;
const WARM_CONCURRENCY: usize = 4;

fn str_field<'a>(v: &'a serde_json::Value, k: &str) -> Result<Option<&'a str>, Box<Resp>> {
    match v.get(k) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_value",
            format!("`{k}` must be a string"),
        ))),
    }
}

/// Split `http://host/path?q` or `/path?q` into (host, path_and_query).
fn split_url(u: &str) -> Result<(Option<String>, String), String> {
    let uri: http::Uri = u
        .parse()
        .map_err(|_| format!("`{u}` is not a URL or a path"))?;
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if !pq.starts_with('/') {
        return Err(format!("`{u}`: the path must start with `/`"));
    }
    Ok((uri.host().map(|h| h.to_ascii_lowercase()), pq))
}

/// `{"prefix": "/files/"}`, `{"url": "/files/a.pdf"}` or `{"url": "https://ent/files/a.pdf"}`,
/// optionally with `"host"` (default: every host).
pub async fn purge(app: &App, req: Request<Incoming>) -> Resp {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(cache) = app.cache.get() else {
        return error(StatusCode::CONFLICT, "no_cache", "the cache is not open");
    };
    let (url, prefix, host) = match (
        str_field(&v, "url"),
        str_field(&v, "prefix"),
        str_field(&v, "host"),
    ) {
        (Ok(u), Ok(p), Ok(h)) => (u, p, h.map(|h| h.to_ascii_lowercase())),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return *r,
    };
    let (scope, kind) = match (url, prefix) {
        (Some(u), None) => match split_url(u) {
            Ok((h, pq)) => (
                PurgeScope::Url {
                    host: h.or(host),
                    path_and_query: pq,
                },
                "url",
            ),
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_url", m),
        },
        (None, Some(p)) if p.starts_with('/') => (
            PurgeScope::Prefix {
                host,
                path_prefix: p.to_string(),
            },
            "prefix",
        ),
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_prefix",
                "`prefix` is a path and starts with `/`",
            )
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_value",
                "give exactly one of `{\"url\": \"/path\"}` or `{\"prefix\": \"/dir/\"}`, optionally with `\"host\"`",
            )
        }
    };
    let _ = cache;
    let removed = app.purge(&scope, kind);
    let (host, target) = match &scope {
        PurgeScope::Url {
            host,
            path_and_query,
        } => (host.clone(), path_and_query.clone()),
        PurgeScope::Prefix { host, path_prefix } => (host.clone(), path_prefix.clone()),
    };
    log::info!(
        "cache purge ({kind}) {}{target}: {removed} stored object(s) removed now, older copies never served again",
        host.as_deref().unwrap_or("*")
    );
    json_resp(
        StatusCode::OK,
        json!({ "purged": kind, "host": host, "target": target, "removed_now": removed }),
    )
}

/// `{"urls": ["/files/exam.pdf", …], "host": "ent.example", "headers": {"authorization": "…"}}`:
/// fetch each through the proxy so it is stored; reports status and `Cache-Status` of each.
pub async fn warm(app: &App, req: Request<Incoming>) -> Resp {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(urls) = v.get("urls").and_then(|u| u.as_array()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_value",
            "give `{\"urls\": [\"/files/exam.pdf\"]}` (optionally `\"host\"` and `\"headers\"`)",
        );
    };
    if urls.is_empty() || urls.len() > MAX_WARM_URLS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_value",
            format!("`urls` holds 1 to {MAX_WARM_URLS} entries"),
        );
    }
    let host = match str_field(&v, "host") {
        Ok(h) => h.map(str::to_string),
        Err(r) => return *r,
    };
    let mut extra: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    if let Some(h) = v.get("headers") {
        let Some(obj) = h.as_object() else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_value",
                "`headers` is an object of name: value",
            );
        };
        for (k, val) in obj {
            let (Ok(name), Some(Ok(value))) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                val.as_str().map(http::HeaderValue::from_str),
            ) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_header",
                    format!("header `{k}` is not a valid name: string value"),
                );
            };
            extra.push((name, value));
        }
    }
    let mut targets = Vec::new();
    for u in urls {
        let Some(s) = u.as_str() else {
            return error(StatusCode::BAD_REQUEST, "bad_value", "`urls` holds strings");
        };
        match split_url(s) {
            Ok((h, pq)) => match h.or_else(|| host.clone()) {
                Some(h) => targets.push((h, pq)),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "no_host",
                        format!("`{s}`: give `\"host\"` (the ENT host name students use: it is part of the cache key) or an absolute URL"),
                    )
                }
            },
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_url", m),
        }
    }
    let Some(addr) = app.bound.get().and_then(|b| b.first().copied()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the proxy listener is not bound yet",
        );
    };
    let token = app.warm_token.clone();
    let extra = std::sync::Arc::new(extra);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(WARM_CONCURRENCY));
    let mut tasks = Vec::new();
    for (h, pq) in targets {
        let (token, extra, sem) = (token.clone(), extra.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = fetch(addr, &h, &pq, &token, &extra).await;
            (h, pq, r)
        }));
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let Ok((h, pq, r)) = t.await else {
            failed += 1;
            continue;
        };
        match r {
            Ok((status, cs, bytes)) => {
                if !(200..300).contains(&status) {
                    failed += 1;
                }
                results.push(json!({ "host": h, "url": pq, "status": status, "cache_status": cs, "bytes": bytes }))
            }
            Err(e) => {
                failed += 1;
                results.push(json!({ "host": h, "url": pq, "error": e }))
            }
        }
    }
    json_resp(
        StatusCode::OK,
        json!({ "warmed": results.len() - failed.min(results.len()), "failed": failed, "results": results }),
    )
}

/// One `GET` through our own proxy listener; returns (status, Cache-Status, body bytes).
async fn fetch(
    addr: SocketAddr,
    host: &str,
    path_and_query: &str,
    token: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<(u16, Option<String>, u64), String> {
    let addr = crate::admin::connectable(addr);
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = Request::get(path_and_query)
            .header(http::header::HOST, host)
            .header(WARM_HEADER, token);
        for (k, v) in extra {
            b = b.header(k, v);
        }
        let req = b
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let cs = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Some(d) = frame.data_ref() {
                bytes += d.len() as u64;
            }
        }
        Ok((status, cs, bytes))
    };
    match tokio::time::timeout(Duration::from_secs(120), work).await {
        Ok(r) => r,
        Err(_) => Err("timed out after 120 s".to_string()),
    }
}
