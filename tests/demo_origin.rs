//! Integration tests of the simulated ENT origin (`ecluse::demo`): real sockets on
//! 127.0.0.1 port 0, a real HTTP client. Nothing here sleeps to wait for behaviour; the
//! only time-based waits are the origin's own simulated service times and timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use ecluse::demo::{file_body, file_len, DemoOrigin, Fault, OriginOptions};
use reqwest::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    LOCATION, RETRY_AFTER, SET_COOKIE,
};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Fast options: tests exercise behaviour, not the latency model (except the overload
/// test, which sets its own).
fn fast_opts() -> OriginOptions {
    OriginOptions {
        base_latency: Duration::from_millis(1),
        latency_per_inflight: Duration::ZERO,
        visio_cpu: Duration::from_millis(2),
        files: 3,
        ..OriginOptions::with_capacity(64)
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(opts: OriginOptions) -> DemoOrigin {
    DemoOrigin::start(any_port(), opts)
        .await
        .expect("origin binds 127.0.0.1:0")
}

/// A client that keeps cookies, does not follow redirects (so tests can see the 303) and
/// ignores any proxy configured in the environment.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client builds")
}

async fn login(origin: &DemoOrigin, c: &reqwest::Client) -> String {
    let resp = c
        .post(origin.url("/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("user=eleve.dupont&password=secret")
        .send()
        .await
        .expect("login request");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/");
    let cookie = resp.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii cookie")
        .to_owned();
    let value = cookie
        .strip_prefix("ENTSESSION=")
        .and_then(|rest| rest.strip_suffix("; Path=/; HttpOnly"))
        .unwrap_or_else(|| panic!("unexpected Set-Cookie {cookie:?}"));
    assert_eq!(value.len(), 32, "128-bit hex session id");
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
    value.to_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test]
async fn login_then_file_fetch_and_conditional_get() {
    let origin = start(fast_opts()).await;
    let c = client();
    login(&origin, &c).await;
    assert_eq!(origin.stats().sessions_issued(), 1);

    let url = origin.url("/files/assignments/1.pdf");
    let resp = c.get(&url).send().await.expect("file request");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[ETAG], "\"a1-v1\"");
    assert_eq!(h[CONTENT_TYPE], "application/pdf");
    assert_eq!(h[CACHE_CONTROL], "private, max-age=60");
    let last_modified = h[LAST_MODIFIED].to_str().expect("ascii date").to_owned();
    httpdate::parse_http_date(&last_modified).expect("Last-Modified is an HTTP date");
    let body = resp.bytes().await.expect("file body");
    assert!(body.starts_with(b"%PDF-1.4"));
    assert_eq!(body.len(), file_len(1));
    assert_eq!(body, file_body(1, 1));
    assert_eq!(origin.stats().file_fetches(1), 1);

    // Revalidation by ETag: 304, no body, no new full fetch.
    let resp = c
        .get(&url)
        .header(IF_NONE_MATCH, "\"a1-v1\"")
        .send()
        .await
        .expect("conditional request");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[ETAG], "\"a1-v1\"");
    assert!(resp.bytes().await.expect("empty body").is_empty());

    // Revalidation by date.
    let resp = c
        .get(&url)
        .header(IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .expect("conditional request");
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(origin.stats().file_fetches(1), 1);

    // A non-matching validator gets the full file again.
    let resp = c
        .get(&url)
        .header(IF_NONE_MATCH, "\"a1-v0\"")
        .send()
        .await
        .expect("conditional request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").len(), file_len(1));
    assert_eq!(origin.stats().file_fetches(1), 2);
    assert_eq!(origin.stats().responses_with_status(304), 2);
    origin.shutdown().await;
}

#[tokio::test]
async fn files_need_a_known_session() {
    let origin = start(fast_opts()).await;
    let c = client();
    let url = origin.url("/files/assignments/2.pdf");

    let resp = c.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = c
        .get(&url)
        .header(COOKIE, "ENTSESSION=0123456789abcdef0123456789abcdef")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(origin.stats().file_fetches_total(), 0);

    // With a session, an out-of-range id is a plain 404.
    login(&origin, &c).await;
    let resp = c
        .get(origin.url("/files/assignments/4.pdf"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = c.get(&url).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(origin.stats().file_fetches(2), 1);
    origin.shutdown().await;
}

#[tokio::test]
async fn same_upload_twice_is_counted_twice() {
    let origin = start(fast_opts()).await;
    let c = client();
    let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let expected = sha256_hex(&data);
    for _ in 0..2 {
        let resp = c
            .post(origin.url("/files/upload"))
            .body(data.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), StatusCode::CREATED);
        let v: serde_json::Value = resp.json().await.expect("JSON answer");
        assert_eq!(v["sha256"], expected.as_str());
        assert_eq!(v["len"], data.len());
    }
    let uploads = origin.stats().uploads();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].sha256_hex, expected);
    assert_eq!(uploads[0].len, data.len());
    assert_eq!(uploads[0].count, 2);
    origin.shutdown().await;
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns (status, body).
async fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<u8>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).await.expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().expect("numeric content-length");
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.expect("body");
    (status, body)
}

/// Sends `GET /healthz` then an upload on the same keep-alive connection; returns the
/// second exchange's outcome: `Some(status)` or `None` if the connection was closed
/// without a single byte of response.
async fn two_requests_on_one_connection(origin: &DemoOrigin, upload: &[u8]) -> Option<u16> {
    let stream = TcpStream::connect(origin.addr()).await.expect("connect");
    let mut r = BufReader::new(stream);
    r.get_mut()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ent\r\n\r\n")
        .await
        .expect("write first request");
    let (status, body) = read_response(&mut r).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));

    let head = format!(
        "POST /files/upload HTTP/1.1\r\nHost: ent\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    );
    r.get_mut()
        .write_all(head.as_bytes())
        .await
        .expect("write head");
    r.get_mut().write_all(upload).await.expect("write body");
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), r.read(&mut first))
        .await
        .expect("server answers or closes within 5 s")
        // A reset also means "closed without a response".
        .unwrap_or(0);
    if n == 0 {
        return None;
    }
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut line = Vec::new();
        let _ = r.read_until(b'\n', &mut line).await;
        rest = line;
    })
    .await;
    let line = [&first[..], &rest[..]].concat();
    let line = String::from_utf8_lossy(&line);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn drop_reused_requests_closes_second_request_and_records_upload_once() {
    let origin = start(fast_opts()).await;
    let body = b"devoir de maths de Lea".repeat(1000);
    let sha = sha256_hex(&body);

    // Control: without the fault the second request on the connection is answered.
    assert_eq!(
        two_requests_on_one_connection(&origin, &body).await,
        Some(201)
    );
    assert_eq!(origin.stats().upload_count(&sha), 1);

    origin.set_fault(Fault::DropReusedRequests);
    assert_eq!(origin.fault(), Fault::DropReusedRequests);
    // The first request is served (checked inside); the second is read then dropped.
    assert_eq!(two_requests_on_one_connection(&origin, &body).await, None);
    // The body was received exactly once more, before the connection was closed.
    assert_eq!(origin.stats().upload_count(&sha), 2);
    assert_eq!(origin.stats().dropped(), 1);

    // A fresh connection's first request is still served normally.
    let resp = client()
        .post(origin.url("/files/upload"))
        .body(body.clone())
        .send()
        .await
        .expect("upload on a fresh connection");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(origin.stats().upload_count(&sha), 3);
    origin.shutdown().await;
}

#[tokio::test]
async fn over_hard_limit_answers_503_or_hangs_then_drops() {
    let origin = start(OriginOptions {
        capacity: 4,
        hard_limit: 8,
        // Long enough that the holders are certainly still in flight while the extra
        // requests arrive; it is the simulated service time, not a synchronisation sleep.
        base_latency: Duration::from_secs(2),
        latency_per_inflight: Duration::ZERO,
        timeout: Duration::from_millis(300),
        files: 1,
        visio_cpu: Duration::ZERO,
    })
    .await;
    let c = client();

    let holders: Vec<_> = (0..8)
        .map(|i| {
            let req = c.get(origin.url(&format!("/pages/cours-{i}")));
            tokio::spawn(async move { req.send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(5), origin.stats().wait_for_inflight(8))
        .await
        .expect("8 requests in flight");

    let extras: Vec<_> = (0..20)
        .map(|_| {
            let req = c.get(origin.url("/"));
            tokio::spawn(async move {
                req.send()
                    .await
                    .map(|r| (r.status(), r.headers().get(RETRY_AFTER).cloned()))
            })
        })
        .collect();
    let mut refused = 0;
    let mut hung = 0;
    for t in extras {
        match t.await.expect("task") {
            Ok((status, retry_after)) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
                refused += 1;
            }
            Err(_) => hung += 1,
        }
    }
    assert_eq!(
        (refused, hung),
        (15, 5),
        "every 4th refusal hangs then drops"
    );

    for t in holders {
        assert_eq!(
            t.await.expect("task").expect("holder answered"),
            StatusCode::OK
        );
    }
    let s = origin.stats();
    assert_eq!(s.rejected(), 20);
    assert_eq!(s.dropped(), 5);
    assert_eq!(s.responses_with_status(503), 15);
    assert!(s.peak_inflight() > 8, "peak {}", s.peak_inflight());
    assert_eq!(s.inflight(), 0, "guards released on every path");
    origin.shutdown().await;
}

#[tokio::test]
async fn bump_file_version_changes_etag_bytes_and_date() {
    let origin = start(fast_opts()).await;
    let c = client();
    login(&origin, &c).await;
    let url = origin.url("/files/assignments/2.pdf");
    let first = c.get(&url).send().await.expect("request");
    assert_eq!(first.headers()[ETAG], "\"a2-v1\"");
    let old_date = first.headers()[LAST_MODIFIED]
        .to_str()
        .expect("ascii")
        .to_owned();
    let old_body = first.bytes().await.expect("body");

    assert_eq!(origin.bump_file_version(2), Some(2));
    assert_eq!(origin.bump_file_version(0), None);
    assert_eq!(origin.bump_file_version(4), None);

    let resp = c
        .get(&url)
        .header(IF_NONE_MATCH, "\"a2-v1\"")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[ETAG], "\"a2-v2\"");
    let new_date = resp.headers()[LAST_MODIFIED]
        .to_str()
        .expect("ascii")
        .to_owned();
    let parse = |d: &str| httpdate::parse_http_date(d).expect("HTTP date");
    assert!(parse(&new_date) > parse(&old_date));
    let new_body = resp.bytes().await.expect("body");
    assert!(new_body.starts_with(b"%PDF-1.4"));
    assert_ne!(new_body, old_body);

    let resp = c
        .get(&url)
        .header(IF_MODIFIED_SINCE, &old_date)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK, "old date no longer current");
    assert_eq!(origin.stats().file_fetches(2), 3);
    origin.shutdown().await;
}

#[tokio::test]
async fn pages_health_control_endpoints_and_shutdown() {
    let origin = start(fast_opts()).await;
    let c = client();

    let resp = c.get(origin.url("/")).send().await.expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    let page = resp.text().await.expect("html");
    assert!(page.contains("Cahier de textes") && page.contains("Messagerie"));
    assert!(page.contains("/files/assignments/") && page.contains("/visio"));
    assert!(
        (2_000..=8_192).contains(&page.len()),
        "{} bytes",
        page.len()
    );

    for (path, status) in [
        ("/pages/messagerie", 200),
        ("/login", 200),
        ("/visio", 200),
        ("/visio/salle-3", 200),
        ("/healthz", 200),
        ("/nope", 404),
        ("/pages", 404),
    ] {
        let resp = c.get(origin.url(path)).send().await.expect("request");
        assert_eq!(resp.status().as_u16(), status, "{path}");
    }

    let fault = |body: &'static str| c.post(origin.url("/__origin/fault")).body(body).send();
    assert_eq!(fault("drop_reused").await.expect("req").status(), 200);
    assert_eq!(origin.fault(), Fault::DropReusedRequests);
    // Control requests are exempt from the fault even on a reused connection.
    assert_eq!(fault("bogus").await.expect("req").status(), 400);
    assert_eq!(fault("none").await.expect("req").status(), 200);
    assert_eq!(origin.fault(), Fault::None);

    let v: serde_json::Value = c
        .get(origin.url("/__origin/stats"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(v["requests_total"], origin.stats().requests_total());
    assert_eq!(v["requests_total"], 8, "control requests are not counted");
    assert_eq!(v["responses"]["4xx"], 2);
    assert_eq!(v["fault"], "none");
    assert_eq!(v["options"]["files"], 3);

    let addr = origin.addr();
    origin.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
