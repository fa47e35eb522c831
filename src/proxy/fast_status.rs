//! The queue page's status polls answered below pingora's HTTP layer, on the connection
//! (`conn_guard.rs` hands over the parsed head): the same answer and access-log line as
//! the pingora path (`queue_page.rs`), without its per-request cost.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::queue_page::{first, status_answer, PollRequest, StatusPoll};
use super::request::client_ip;
use super::EcluseProxy;
use crate::access_log::Entry;
use crate::clock::{rfc3339, unix_ms};
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
    /// A status poll answered below pingora's HTTP layer (`conn_guard.rs`), in one-node mode:
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
