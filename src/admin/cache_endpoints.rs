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
use crate::policy::cache_rules::{normalize_query, QueryMode};
use crate::policy::path::{self as canon, canonical_prefix, canonical_target};

/// Header carrying the per-process warm token (`App::warm_token`).
pub const WARM_HEADER: &str = "x-ecluse-warm";
/// On a warm request (token checked), the scheme to key the object under: the scheme of
/// the URL students use, whatever listener the warm request came through.
pub const WARM_SCHEME_HEADER: &str = "x-ecluse-warm-scheme";
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

/// A URL split for the cache: scheme and host when absolute, and the path and query.
struct Target {
    scheme: Option<&'static str>,
    host: Option<String>,
    path_and_query: String,
}

fn scheme_word(s: &str) -> Option<&'static str> {
    if s.eq_ignore_ascii_case("https") {
        Some("https")
    } else if s.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

/// `host` in the one spelling of `policy::host` for `scheme` (as it is as written, lower
/// case, when it is no host: the proxy then refuses the warm request, and a purge matches
/// nothing).
fn spell_host(host: &str, scheme: &str) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    crate::policy::host::parse(host.as_bytes())
        .map(|a| a.spelled(default))
        .unwrap_or_else(|_| host.to_ascii_lowercase())
}

/// Split `https://host/path?q` or `/path?q`.
fn split_url(u: &str) -> Result<Target, String> {
    let uri: http::Uri = u
        .parse()
        .map_err(|_| format!("`{u}` is not a URL or a path"))?;
    let scheme = match uri.scheme_str() {
        None => None,
        Some(s) => {
            Some(scheme_word(s).ok_or_else(|| format!("`{u}`: the scheme is http or https"))?)
        }
    };
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    if !pq.starts_with('/') {
        return Err(format!("`{u}`: the path must start with `/`"));
    }
    Ok(Target {
        scheme,
        // Spelled like a request's host in the cache key (`proxy::cache_phase::
        // request_host`): lower case, no root dot, no default port, another port kept (a
        // warm of `https://ent.fr:8443/x` stores what students of that port get; a purge
        // covers every port anyway).
        host: uri
            .authority()
            .map(|a| spell_host(a.as_str(), scheme.unwrap_or("http"))),
        path_and_query: pq,
    })
}

/// The path and query of `path_and_query` as the cache key holds them: the path in its
/// canonical form (the same normalization every request gets, so purging `/files/%61.pdf`
/// removes the stored `/files/a.pdf`) and the query normalized by the `query` mode of the
/// route that serves it (sorted by default), so purging `?b=2&a=1` removes the stored
/// `?a=1&b=2`. `Err`: a path no request can have (it would be refused with 400).
fn key_path_and_query(
    app: &App,
    host: Option<&str>,
    path_and_query: &str,
) -> Result<String, String> {
    let config = app.config();
    let canonical = canonical_target(path_and_query.as_bytes(), &config.server.paths)
        .map_err(|e| format!("`{path_and_query}`: {e}"))?;
    let canon::Target::Path {
        path_and_query: pq, ..
    } = canonical
    else {
        return Err(format!("`{path_and_query}` is not a path"));
    };
    let pq = String::from_utf8_lossy(&pq).into_owned();
    let (path, query) = match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq.as_str(), None),
    };
    let mode = config
        .router
        .find(
            crate::policy::route::host_without_port(host.unwrap_or("")),
            path.as_bytes(),
            &http::Method::GET,
        )
        .and_then(|r| r.cache.as_ref().map(|c| c.query))
        .unwrap_or(QueryMode::Sort);
    let q = normalize_query(query, mode);
    Ok(if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    })
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
        // Spelled like a request's host in the cache key: lower case, no port, no root
        // dot (`ENT.fr.:443` purges what `ent.fr` stored).
        (Ok(u), Ok(p), Ok(h)) => (
            u,
            p,
            h.map(|h| crate::policy::route::host_without_port(h).to_ascii_lowercase()),
        ),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return *r,
    };
    let (scope, kind) = match (url, prefix) {
        (Some(u), None) => match split_url(u).and_then(|t| {
            let pq = key_path_and_query(app, t.host.as_deref().or(host.as_deref()), &t.path_and_query)?;
            Ok((t, pq))
        }) {
            Ok((t, path_and_query)) => (
                PurgeScope::Url {
                    path_and_query,
                    host: t.host.or(host),
                },
                "url",
            ),
            Err(m) => return error(StatusCode::BAD_REQUEST, "bad_url", m),
        },
        // A prefix is normalized like every request path, so `/%66iles/` purges what
        // `/files/` stored, and `/files/../` is `/`.
        (None, Some(p)) if p.starts_with('/') => {
            match canonical_prefix(p, &app.config().server.paths) {
                Ok(path_prefix) => (PurgeScope::Prefix { host, path_prefix }, "prefix"),
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_prefix", format!("`{p}`: {e}")),
            }
        }
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
    let (plain, tls, pin) = listeners(app);
    // Relative URLs: the `scheme` given, else https when ecluse terminates TLS itself.
    let default_scheme = match str_field(&v, "scheme") {
        Ok(None) if tls.is_empty() => "http",
        Ok(None) => "https",
        Ok(Some(s)) => match scheme_word(s) {
            Some(w) => w,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_value",
                    "`scheme` is \"http\" or \"https\" (the scheme students use: it is part of the cache key)",
                )
            }
        },
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
            Ok(t) => match t.host.or_else(|| host.clone()) {
                Some(h) => {
                    let scheme = t.scheme.unwrap_or(default_scheme);
                    targets.push((scheme, spell_host(&h, scheme), t.path_and_query))
                }
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
    // The proxy only believes a warm request that arrives from loopback: a plain listener
    // reachable there, else a TLS one (trusting exactly the certificate it was started
    // with), else the first plain listener.
    let local = |a: &&SocketAddr| a.ip().is_loopback() || a.ip().is_unspecified();
    let via = match (plain.iter().find(local), tls.iter().find(local), pin) {
        (Some(a), _, _) => Via::Plain(*a),
        (None, Some(a), Some(ders)) => match tls_connector(&ders) {
            Ok(c) => Via::Tls(*a, c),
            Err(m) => return error(StatusCode::INTERNAL_SERVER_ERROR, "tls", m),
        },
        _ if !plain.is_empty() => Via::Plain(plain[0]),
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the proxy listener is not bound yet",
            )
        }
    };
    let token = app.warm_token.clone();
    let extra = std::sync::Arc::new(extra);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(WARM_CONCURRENCY));
    let mut tasks = Vec::new();
    let via = std::sync::Arc::new(via);
    for (scheme, h, pq) in targets {
        let (token, extra, sem, via) = (token.clone(), extra.clone(), sem.clone(), via.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = fetch(&via, scheme, &h, &pq, &token, &extra).await;
            (scheme, h, pq, r)
        }));
    }
    let mut results = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let Ok((scheme, h, pq, r)) = t.await else {
            failed += 1;
            continue;
        };
        match r {
            Ok((status, cs, bytes)) => {
                if !(200..300).contains(&status) {
                    failed += 1;
                }
                results.push(json!({ "scheme": scheme, "host": h, "url": pq, "status": status, "cache_status": cs, "bytes": bytes }))
            }
            Err(e) => {
                failed += 1;
                results.push(json!({ "scheme": scheme, "host": h, "url": pq, "error": e }))
            }
        }
    }
    json_resp(
        StatusCode::OK,
        json!({ "warmed": results.len() - failed.min(results.len()), "failed": failed, "results": results }),
    )
}

/// The proxy listeners: plain ones, TLS ones, and the certificate the TLS ones present.
fn listeners(app: &App) -> (Vec<SocketAddr>, Vec<SocketAddr>, Option<Vec<Vec<u8>>>) {
    let all = app.bound.get().cloned().unwrap_or_default();
    let tls = app.tls_bound.get().cloned().unwrap_or_default();
    // The certificates presented now (a reload may have renewed them).
    let pin = crate::tls::serving()
        .map(|set| {
            set.certs
                .iter()
                .map(|c| c.leaf_der().to_vec())
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty());
    let plain = all.into_iter().filter(|a| !tls.contains(a)).collect();
    (plain, tls, pin)
}

/// How warm requests reach our own proxy.
enum Via {
    Plain(SocketAddr),
    Tls(SocketAddr, pingora::tls::TlsConnector),
}

/// Trusts exactly our certificates: the warm request carries this process's token and
/// goes only to the listener that presents one of them.
#[derive(Debug)]
struct Pinned {
    ders: Vec<Vec<u8>>,
    /// Checks the handshake signatures (proof that the peer holds the key).
    signatures: std::sync::Arc<pingora::tls::WebPkiServerVerifier>,
}

impl pingora::tls::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &pingora::tls::CertificateDer<'_>,
        _intermediates: &[pingora::tls::CertificateDer<'_>],
        _server_name: &pingora::tls::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: pingora::tls::UnixTime,
    ) -> Result<pingora::tls::ServerCertVerified, pingora::tls::RusTlsError> {
        if self
            .ders
            .iter()
            .any(|d| end_entity.as_ref() == d.as_slice())
        {
            Ok(pingora::tls::ServerCertVerified::assertion())
        } else {
            Err(pingora::tls::RusTlsError::InvalidCertificate(
                pingora::tls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pingora::tls::CertificateDer<'_>,
        dss: &pingora::tls::DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pingora::tls::CertificateDer<'_>,
        dss: &pingora::tls::DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, pingora::tls::RusTlsError> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<pingora::tls::SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

fn tls_connector(ders: &[Vec<u8>]) -> Result<pingora::tls::TlsConnector, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = pingora::tls::RootCertStore::empty();
    for der in ders {
        roots
            .add(pingora::tls::CertificateDer::from(der.clone()))
            .map_err(|e| format!("our own TLS certificate is unusable: {e}"))?;
    }
    let signatures = pingora::tls::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .map_err(|e| format!("TLS verifier: {e}"))?;
    let config = pingora::tls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Pinned {
            ders: ders.to_vec(),
            signatures,
        }))
        .with_no_client_auth();
    Ok(pingora::tls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// One `GET` through our own proxy listener; returns (status, Cache-Status, body bytes).
async fn fetch(
    via: &Via,
    scheme: &'static str,
    host: &str,
    path_and_query: &str,
    token: &str,
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> Result<(u16, Option<String>, u64), String> {
    let work = async {
        let mut sender = match via {
            Via::Plain(addr) => {
                let addr = crate::admin::connectable(*addr);
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                handshake(stream).await?
            }
            Via::Tls(addr, connector) => {
                let addr = crate::admin::connectable(*addr);
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                // The name only fills SNI: the certificate is pinned, not matched by name.
                let name = crate::policy::route::host_without_port(host)
                    .trim_matches(['[', ']'])
                    .to_string();
                let name = pingora::tls::ServerName::try_from(name)
                    .unwrap_or_else(|_| pingora::tls::ServerName::IpAddress(addr.ip().into()));
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                handshake(tls).await?
            }
        };
        let mut b = Request::get(path_and_query)
            .header(http::header::HOST, host)
            .header(WARM_HEADER, token)
            .header(WARM_SCHEME_HEADER, scheme);
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

/// An HTTP/1.1 client connection over `io`, driven in the background.
async fn handshake<T>(
    io: T,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot TLS server presenting `cert`, answering one request with 200 and
    /// reporting the request head it read.
    async fn tls_server(
        cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        pingora::tls::install_default_crypto_provider();
        let chain = vec![cert.cert.der().clone()];
        let key =
            pingora::tls::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
        let config = pingora::tls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = pingora::tls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            let Ok(mut t) = acceptor.accept(s).await else {
                return String::new();
            };
            let mut buf = vec![0u8; 4096];
            let n = t.read(&mut buf).await.unwrap_or(0);
            let _ = t
                .write_all(b"HTTP/1.1 200 OK\r\ncache-status: ok\r\ncontent-length: 2\r\n\r\nhi")
                .await;
            let _ = t.flush().await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn warming_through_tls_trusts_only_our_own_certificate() {
        let ours = rcgen::generate_simple_self_signed(vec!["ent.example".into()]).expect("cert");
        let (addr, head) = tls_server(&ours).await;
        let via = Via::Tls(
            addr,
            tls_connector(&[ours.cert.der().to_vec()]).expect("connector"),
        );
        let r = fetch(&via, "https", "ent.example", "/f?a=1", "tok", &[]).await;
        assert_eq!(r, Ok((200, Some("ok".to_string()), 2)));
        let head = head.await.expect("server");
        assert!(head.starts_with("GET /f?a=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("x-ecluse-warm: tok\r\n"), "{head}");
        assert!(head.contains("x-ecluse-warm-scheme: https\r\n"), "{head}");
        // A listener presenting any other certificate is not talked to.
        let other = rcgen::generate_simple_self_signed(vec!["ent.example".into()]).expect("cert");
        let (addr, head) = tls_server(&other).await;
        let via = Via::Tls(
            addr,
            tls_connector(&[ours.cert.der().to_vec()]).expect("connector"),
        );
        let r = fetch(&via, "https", "ent.example", "/f", "tok", &[]).await;
        assert!(
            r.as_ref().is_err_and(|e| e.contains("TLS handshake")),
            "{r:?}"
        );
        assert_eq!(head.await.expect("server"), "", "no request was sent");
    }
}
