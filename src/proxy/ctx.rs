//! The request context (`Ctx`): what one request carries through every phase, the two
//! readings of the request every phase shares (a header's bytes, the policy path), and who
//! the client is (`client_ip`, also read on the status fast path).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use pingora_cache::key::HashBinary;
use pingora_http::RequestHeader;

use crate::cache::auth::{Version, VersionHasher};
use crate::config::runtime::{Origin, Route};
use crate::config::Config;
use crate::policy::ticket::Ticket;
use crate::upstream::{InflightGuard, OriginPermit};
use crate::waiting_room::Room;

/// Per-request state, alive for every phase of one request.
pub struct Ctx {
    /// This request's id (`policy::request_id`), decided first in `request_filter`.
    pub(super) request_id: String,
    /// The origin server of the last attempt, kept for the log when the connection to it
    /// failed (the in-flight guard is given back then).
    pub(super) upstream_addr: Option<SocketAddr>,
    pub(super) start: Instant,
    pub(super) wall_start: SystemTime,
    pub(super) config: Option<Arc<Config>>,
    pub(super) route: Option<Arc<Route>>,
    pub(super) client_ip: Option<IpAddr>,
    pub(super) peer_ip: Option<IpAddr>,
    /// Slot against the origin's `max_inflight`; released when the context drops.
    pub(super) permit: Option<OriginPermit>,
    /// The server of the current attempt, counted in its in-flight until dropped.
    pub(super) server: Option<InflightGuard>,
    /// Bitmask of the server indices already tried for this request.
    pub(super) tried: u64,
    /// Index of the server of the current attempt.
    pub(super) last_idx: Option<usize>,
    pub(super) attempts: u32,
    pub(super) has_body: bool,
    pub(super) upstream_start: Option<Instant>,
    /// What ecluse answered by itself, for the log.
    pub(super) decision: Option<&'static str>,
    /// The failure already counted for passive health, so `logging` doesn't count it twice.
    pub(super) failure_recorded: bool,
    /// Priority class index, once computed (`None` = not computed yet).
    pub(super) class: Option<Option<usize>>,
    /// `RateLimit-Policy` and `RateLimit` values for admitted responses, when the route
    /// asks for them.
    pub(super) rl_headers: Option<(String, String)>,
    /// The rate-limit result for the log: `limited`, `dry_run_limited`, or none.
    pub(super) rl_result: Option<&'static str>,
    /// A waiting-room cookie to set on the response.
    pub(super) set_cookie: Option<String>,
    /// The admitted session this request belongs to (room, activity bucket), so the
    /// origin can end it with a response header.
    pub(super) room_session: Option<(Arc<Room>, u64, Ticket)>,
    /// What the waiting room did, for the log: `inside`, `admitted`, `direct`, `queued`.
    pub(super) room_decision: Option<&'static str>,
    /// Whether cookies set for this request carry `Secure`.
    pub(super) room_secure: bool,
    /// The request carries credentials (`Authorization`, a cookie other than ecluse's).
    pub(super) credentialed: bool,
    /// Why a cacheable route did not use the cache for this request (`Cache-Status`).
    pub(super) cache_bypass: Option<&'static str>,
    /// The origin's response was admitted to the cache.
    pub(super) cache_storable: bool,
    /// `Set-Cookie` values of this request's own origin response (a 304 during
    /// revalidation): a response built from the cache carries these and no other.
    pub(super) upstream_set_cookies: Vec<http::HeaderValue>,
    /// A cache-warming request from our own admin API (`admin::cache_endpoints::warm`).
    pub(super) warming: bool,
    /// A stale copy served as fresh because the level says `serve_stale`.
    pub(super) forced_stale: bool,
    /// On a `revalidate` route: this request's object and credentials, hashed
    /// (`cache::auth`), to remember what the origin said to them.
    pub(super) auth_grant: Option<crate::cache::auth::Grant>,
    /// The origin's 5xx a stale copy stood in for (stale-if-error), for `Cache-Status`.
    pub(super) stale_error_status: Option<u16>,
    /// The lookup found a stored copy (fresh or not), for `Cache-Status`.
    pub(super) stored_found: bool,
    /// The client and URL keys of the degradation signals (`policy::signals`), once
    /// computed for a request that goes to the origin.
    pub(super) signal_keys: Option<(u8, u8)>,
    /// The origin's status and when its response head arrived (the latency signal is
    /// the time to it: how long the client takes to read the body is not the ENT's).
    pub(super) upstream_head: Option<(u16, Instant)>,
    /// The whole request body, read before the origin slot (a buffering route).
    pub(super) spooled: Option<Bytes>,
    /// A streaming route's body limit (0: none) and the body bytes passed on so far.
    pub(super) body_limit: u64,
    pub(super) body_seen: u64,
    /// This exchange's place in its feature's drain (feature routes, no request body).
    pub(super) drain: Option<Arc<crate::drain::Session>>,
    /// On a `revalidate` route: the stored version looked up, what was asked of the
    /// origin, and the version it is answering (`cache::auth`).
    pub(super) binding: Binding,
    /// The path every policy decision compares (`policy::path::policy_path`: case folded,
    /// front controller dropped…), when it differs from the canonical URI path.
    pub(super) policy_path: Option<String>,
}

impl Ctx {
    pub(super) fn origin(&self) -> Option<&Arc<Origin>> {
        self.route.as_ref().map(|r| &r.origin)
    }

    /// A fresh context (`ProxyHttp::new_ctx`).
    pub(super) fn new() -> Ctx {
        Ctx {
            request_id: String::new(),
            upstream_addr: None,
            start: Instant::now(),
            wall_start: SystemTime::now(),
            config: None,
            route: None,
            client_ip: None,
            peer_ip: None,
            permit: None,
            server: None,
            tried: 0,
            last_idx: None,
            attempts: 0,
            has_body: false,
            upstream_start: None,
            decision: None,
            failure_recorded: false,
            class: None,
            rl_headers: None,
            rl_result: None,
            set_cookie: None,
            room_session: None,
            room_decision: None,
            room_secure: false,
            credentialed: false,
            cache_bypass: None,
            cache_storable: false,
            upstream_set_cookies: Vec::new(),
            warming: false,
            forced_stale: false,
            auth_grant: None,
            stale_error_status: None,
            stored_found: false,
            signal_keys: None,
            upstream_head: None,
            spooled: None,
            body_limit: 0,
            body_seen: 0,
            drain: None,
            binding: Binding::default(),
            policy_path: None,
        }
    }
}

/// What a request on a `revalidate` route knows about the version it may get (see
/// `cache::auth`): the stored copy it looked up, what it asked the origin, and the version
/// the origin is answering it.
#[derive(Default)]
pub(super) struct Binding {
    /// The object's primary key hash and URL form.
    pub(super) primary: Option<HashBinary>,
    pub(super) url: String,
    /// The variance of this request's variant, when the response varies.
    pub(super) variance: Option<HashBinary>,
    /// The stored copy looked up: its version and whether it answered an anonymous
    /// request (`None`: no copy, or one without a complete version).
    pub(super) stored: Option<(Version, bool)>,
    /// The stored copy's strong `ETag`, if it has one.
    pub(super) stored_strong_etag: Option<Vec<u8>>,
    /// Validators went to the origin (so a 304 names the stored version).
    pub(super) conditional_sent: bool,
    /// The origin answered 304 to this revalidation.
    pub(super) revalidating_304: bool,
    /// ...and that 304 does not say which bytes: the stored body is not served.
    pub(super) untrusted_304: bool,
    /// The origin's answer being hashed into its version, with its strong `ETag`.
    pub(super) hasher: Option<VersionHasher>,
    pub(super) answer_status: u16,
    pub(super) answer_strong_etag: Option<Vec<u8>>,
}

/// The path policy decisions compare (routes, rooms, classes, signals): the request's
/// policy path when it differs from its canonical URI path, else that path.
pub(super) fn policy_path<'a>(ctx: &'a Ctx, req: &'a RequestHeader) -> &'a str {
    ctx.policy_path.as_deref().unwrap_or_else(|| req.uri.path())
}

pub(super) fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers.get(name).map(|v| v.as_bytes())
}

/// The client's address: the socket peer, or, when the peer is one of our trusted
/// proxies, the right-most address in `X-Forwarded-For` that is not itself trusted
/// (everything left of it could have been written by the client).
pub(super) fn client_ip(
    config: &Config,
    peer: Option<IpAddr>,
    xff: Option<&[u8]>,
) -> Option<IpAddr> {
    let peer = peer?;
    if !config.server.is_trusted(peer) {
        return Some(peer);
    }
    let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Some(peer);
    };
    let mut leftmost = None;
    for part in xff.rsplit(',').take(32) {
        let Ok(ip) = part.trim().parse::<IpAddr>() else {
            // Garbage in the chain: stop believing it here.
            return Some(leftmost.unwrap_or(peer));
        };
        if !config.server.is_trusted(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    Some(leftmost.unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check_text;
    use crate::config::runtime::Retained;
    use std::path::Path;

    fn cfg(trusted: &str) -> Config {
        let y = format!(
            "listen: [\"127.0.0.1:0\"]\nserver: {{ trusted_proxies: [{trusted}] }}\norigins:\n  o: {{ servers: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ name: r, origin: o }}\n"
        );
        check_text(&y, Path::new("t.yaml"), &Retained::default(), 1).expect("valid")
    }

    #[test]
    fn client_ip_from_socket_unless_trusted() {
        let c = cfg("\"10.0.0.0/8\"");
        let lb: IpAddr = "10.1.2.3".parse().expect("ip");
        let stranger: IpAddr = "198.51.100.7".parse().expect("ip");
        // Untrusted peer: its XFF is ignored.
        assert_eq!(
            client_ip(&c, Some(stranger), Some(b"1.2.3.4")),
            Some(stranger)
        );
        // Trusted peer: right-most untrusted hop is the client.
        assert_eq!(
            client_ip(&c, Some(lb), Some(b"6.6.6.6, 203.0.113.9, 10.9.9.9")),
            Some("203.0.113.9".parse().expect("ip"))
        );
        // Garbage in the chain stops at the last good hop.
        assert_eq!(
            client_ip(&c, Some(lb), Some(b"nonsense, 10.9.9.9")),
            Some("10.9.9.9".parse().expect("ip"))
        );
        assert_eq!(client_ip(&c, Some(lb), None), Some(lb));
    }
}
