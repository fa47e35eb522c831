//! The queue page's status polls answered below pingora's HTTP layer, on the connection:
//! `conn_guard/` hands over the bytes of a request head; here they are parsed
//! (`status_poll_head`: a whole plain poll that passes the same hygiene checks, else
//! pingora's path) and answered (`EcluseProxy::fast_status`) with the same answer and
//! access-log line as the pingora path (`queue_page.rs`), without its per-request cost.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::ctx::client_ip;
use super::queue_page::{first, status_answer, PollRequest, StatusPoll};
use super::EcluseProxy;
use crate::access_log::Entry;
use crate::clock::{rfc3339, unix_ms};
use crate::config::runtime::Clients;
use crate::policy::classes::visible_ascii;

static X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The status polls answered below pingora, counted without looking the label up each time.
fn connection_polls() -> &'static prometheus::IntCounter {
    static C: std::sync::OnceLock<prometheus::IntCounter> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        crate::metrics::get()
            .status_polls
            .with_label_values(&["connection"])
    })
}

impl EcluseProxy {
    /// A status poll answered below pingora's HTTP layer (`conn_guard/`), in one-node mode:
    /// the whole HTTP/1.1 response and its access-log line, exactly as the normal path
    /// would make them. `None`: take the normal path (fleet mode, unknown room).
    pub(crate) fn fast_status(
        &self,
        req: &impl PollRequest,
        peer_ip: Option<IpAddr>,
        started: (Instant, SystemTime),
    ) -> Option<Vec<u8>> {
        if self.app.fleet.is_some() {
            return None;
        }
        let config = self.app.config();
        let secure = self.tls
            || (peer_ip.is_some_and(|ip| config.server.is_trusted(ip))
                && first(req, &X_FORWARDED_PROTO)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"https")));
        // One clock reading for the whole answer (nothing here waits).
        let now = unix_ms(started.1);
        let (room, params, poll) = self.status_poll(req, &config, now / 1000)?;
        let standing = match &poll {
            StatusPoll::Waiting(t) => Some(room.shared.lock().poll(
                &params,
                usize::from(t.class),
                t.number,
                now,
            )),
            _ => None,
        };
        let (state, position, set) = status_answer(&room, poll, standing, secure, now / 1000);
        let (_, mut status, _) = self.status_of(req, &room, &params, state, position, now);
        let trusted = peer_ip.is_some_and(|ip| config.server.is_trusted(ip));
        let request_id = crate::policy::request_id::decide(
            trusted,
            req.values(&http::HeaderName::from_static(
                crate::policy::request_id::HEADER,
            )),
        );
        status.request_id = request_id.clone();
        let mut body = Vec::with_capacity(256);
        if serde_json::to_writer(&mut body, &status).is_err() {
            body.clear();
        }
        let mut out = Vec::with_capacity(body.len() + 256 + set.as_ref().map_or(0, String::len));
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ",
        );
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\ncache-control: no-store\r\nx-request-id: ");
        // `policy::request_id` keeps or makes header-safe ASCII only.
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(c) = set {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // What pingora adds to every response it writes (same clock, same format).
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(pingora::protocols::http::date::get_cached_date().as_bytes());
        out.extend_from_slice(b"\r\nConnection: keep-alive\r\n\r\n");
        out.extend_from_slice(&body);
        connection_polls().inc();
        if self.app.access_log.enabled() {
            let client = client_ip(&config, peer_ip, first(req, &X_FORWARDED_FOR));
            let host = first(req, &http::header::HOST)
                .and_then(visible_ascii)
                .unwrap_or("");
            let redact = config.access_log.redact_query.as_slice();
            let entry = Entry {
                time: rfc3339(started.1),
                request_id: &request_id,
                client_ip: client.map(|i| i.to_string()).unwrap_or_default(),
                method: req.method().as_str(),
                path: req.path(),
                query: req
                    .query()
                    .map(|q| crate::access_log::redact_query(q, redact)),
                host,
                user_agent: first(req, &http::header::USER_AGENT)
                    .and_then(visible_ascii)
                    .map(|u| u.get(..256).unwrap_or(u)),
                status: 200,
                route: None,
                upstream: None,
                duration_ms: (started.0.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                bytes_sent: body.len(),
                attempts: 0,
                decision: None,
                rate_limit: None,
                queue: Some("status"),
                cache: None,
                level: self.level_name(&config),
                error: None,
            };
            self.app.access_log.log(&entry);
        }
        Some(out)
    }
}

/// How every status poll starts.
pub(super) const STATUS_START: &[u8] = b"GET /.ecluse/queue/status";

/// Field lines a status poll answered here may have (more: pingora's path).
pub(super) const MAX_POLL_FIELDS: usize = 64;

/// A status poll's head as parsed here: what the hygiene checks and the answer read of it,
/// without building pingora's header (a header map, its allocations).
pub(crate) struct PollHead<'a> {
    /// The request-target as received.
    target: &'a str,
    /// The target less any fragment, as pingora's header holds it (`uri.path()`,
    /// `uri.query()`).
    uri: http::uri::PathAndQuery,
    fields: &'a [httparse::Header<'a>],
}

impl super::hygiene::Head for PollHead<'_> {
    fn method(&self) -> &http::Method {
        static GET: http::Method = http::Method::GET;
        &GET
    }
    fn version(&self) -> http::Version {
        http::Version::HTTP_11
    }
    fn raw_target(&self) -> &[u8] {
        self.target.as_bytes()
    }
    fn values<'s>(&'s self, name: &http::HeaderName) -> impl Iterator<Item = &'s [u8]> {
        self.fields
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name.as_str()))
            .map(|f| f.value)
    }
    fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|f| (f.name, f.value))
    }
    fn field_count(&self) -> usize {
        self.fields.len()
    }
}

impl super::PollRequest for PollHead<'_> {
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// A whole `GET /.ecluse/queue/status` head over HTTP/1.1, nothing after it, that passes
/// the same hygiene checks as every request, keeps the connection alive and has no body.
/// Anything else (`None`) goes to pingora as usual.
pub(super) fn status_poll_head<'a>(
    bytes: &'a [u8],
    limits: &Clients,
    fields: &'a mut [httparse::Header<'a>],
) -> Option<PollHead<'a>> {
    if !bytes.starts_with(STATUS_START) || !bytes.ends_with(b"\r\n\r\n") {
        return None;
    }
    let mut parsed = httparse::Request::new(fields);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        _ => return None,
    }
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = parsed;
    if version != Some(1) || method != Some("GET") {
        return None;
    }
    for f in headers.iter() {
        let name = f.name.as_bytes();
        if [
            &b"content-length"[..],
            b"transfer-encoding",
            b"expect",
            b"upgrade",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            return None;
        }
        if name.eq_ignore_ascii_case(b"connection")
            && f.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            return None;
        }
    }
    // The target as pingora's header reads it: less any fragment, through the same URI
    // parser (a target it refuses goes to pingora, which refuses it).
    let target = path?;
    let uri = target.split('#').next().unwrap_or_default();
    let uri = http::uri::PathAndQuery::try_from(uri).ok()?;
    if uri.path() != super::STATUS_PATH {
        return None;
    }
    let req = PollHead {
        target,
        uri,
        fields: headers,
    };
    let lim = super::hygiene::Limits {
        max_request_line: limits.max_request_line,
        max_header_bytes: limits.max_header_bytes,
        max_headers: limits.max_headers,
    };
    super::hygiene::check_request(&req, Some(bytes), &lim).ok()?;
    Some(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `status_poll_head` decided when it built pingora's header: the reference
    /// the head parsed here must agree with.
    fn poll_head_via_pingora(
        bytes: &[u8],
        limits: &Clients,
    ) -> Option<pingora_http::RequestHeader> {
        if !bytes.starts_with(STATUS_START) || !bytes.ends_with(b"\r\n\r\n") {
            return None;
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut fields);
        match parsed.parse(bytes) {
            Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
            _ => return None,
        }
        if parsed.version != Some(1) || parsed.method != Some("GET") {
            return None;
        }
        let mut req = pingora_http::RequestHeader::build(
            "GET",
            parsed.path?.as_bytes(),
            Some(parsed.headers.len()),
        )
        .ok()?;
        for f in parsed.headers.iter() {
            let name = f.name.to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "expect" | "upgrade"
            ) {
                return None;
            }
            if name == "connection"
                && f.value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                return None;
            }
            req.append_header(name, f.value).ok()?;
        }
        if req.uri.path() != super::super::STATUS_PATH {
            return None;
        }
        let lim = super::super::hygiene::Limits {
            max_request_line: limits.max_request_line,
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
        };
        super::super::hygiene::check_request(&req, Some(bytes), &lim).ok()?;
        Some(req)
    }

    #[test]
    fn a_poll_head_parsed_here_is_taken_exactly_when_pingoras_header_was() {
        use super::super::hygiene::Head;
        use super::super::PollRequest;
        let limits = Clients {
            max_headers: 4,
            max_header_bytes: 200,
            max_request_line: 80,
            ..Clients::default()
        };
        let c = "Cookie: ecluse_ent=abc.def\r\n";
        let heads: Vec<String> = [
            format!("GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\n{c}\r\n"),
            "GET /.ecluse/queue/status HTTP/1.1\r\nhost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent#frag HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status#?room=ent HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/statusx?room=ent HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status/?room=ent HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=\"e{n}t\" HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=e%20nt&x=1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            // Hygiene: Host missing, twice, bare LF, controls, obs-fold, limits.
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nHOST: y\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\nA: b\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\x01c\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\x7fc\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\tc \u{e9}\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA : b\r\n\r\n".into(),
            format!("GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\r\nB: c\r\n{c}\r\n"),
            format!("GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: b\r\nB: c\r\nD: e\r\n{c}\r\n"),
            format!("GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nA: {}\r\n\r\n", "b".repeat(200)),
            format!("GET /.ecluse/queue/status?room={} HTTP/1.1\r\nHost: x\r\n\r\n", "e".repeat(45)),
            // Framing and connection fields: pingora's path.
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.0\r\nHost: x\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n".into(),
            "GET /.ecluse/queue/status?room=ent HTTP/1.1\r\nHost: x\r\n".into(),
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        ]
        .into();
        let mut taken = Vec::new();
        for (i, head) in heads.iter().enumerate() {
            let bytes = head.as_bytes();
            let want = poll_head_via_pingora(bytes, &limits);
            let mut fields = [httparse::EMPTY_HEADER; MAX_POLL_FIELDS];
            let got = status_poll_head(bytes, &limits, &mut fields);
            assert_eq!(got.is_some(), want.is_some(), "{head:?}");
            let (Some(got), Some(want)) = (got, want) else {
                continue;
            };
            taken.push(i);
            assert_eq!(got.path(), want.path(), "{head:?}");
            assert_eq!(got.query(), want.query(), "{head:?}");
            assert_eq!(got.method(), &want.method);
            assert_eq!(got.version(), want.version);
            for name in ["host", "cookie", "a", "accept-language", "x-forwarded-for"] {
                let name = http::HeaderName::from_static(name);
                let g: Vec<&[u8]> = got.values(&name).collect();
                let w: Vec<&[u8]> = want.values(&name).collect();
                assert_eq!(g, w, "{head:?} {name}");
            }
        }
        // Both ways take the plain polls (with a query, a fragment, obs-text in a field,
        // keep-alive) and nothing the hygiene rules or the framing send to pingora.
        assert_eq!(taken, [0, 1, 2, 3, 7, 13, 16, 25], "{heads:#?}");
    }
}
