//! What the origin receives (`upstream_request_filter`): the edge's own forwarding
//! headers (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`), a buffered body's framing, and the
//! cache's conditional request.

use std::net::IpAddr;

use pingora::prelude::*;
use pingora_http::RequestHeader;

use super::ctx::header;
use super::{body, Ctx, EcluseProxy};
use crate::policy::forwarding;

impl EcluseProxy {
    pub(super) async fn forward_headers(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let trusted_peer = match (ctx.peer_ip, ctx.config.as_ref()) {
            (Some(ip), Some(c)) => c.server.is_trusted(ip),
            _ => false,
        };
        let peer = ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let req = session.req_header();
        // Every forwarding header an untrusted peer sent is gone already (request_filter);
        // what is left came from a trusted proxy and is extended.
        let xff_in = header(req, "x-forwarded-for").filter(|_| trusted_peer);
        // From an untrusted peer, an incoming X-Forwarded-For is the client's own words:
        // replace it. From our load balancer, extend the chain.
        let xff = match xff_in {
            Some(prev) if !prev.is_empty() => {
                format!("{}, {peer}", String::from_utf8_lossy(prev))
            }
            _ => peer.clone(),
        };
        upstream_request.insert_header("x-forwarded-for", xff)?;
        let proto_in = header(req, "x-forwarded-proto")
            .filter(|_| trusted_peer)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let warm = self.warm_scheme(session, ctx);
        let hop_proto = warm.unwrap_or(if self.tls { "https" } else { "http" });
        let proto = match warm {
            // Warming: the origin sees the scheme students will use.
            Some(s) => s.to_string(),
            None => proto_in.unwrap_or_else(|| hop_proto.to_string()),
        };
        let https = proto == "https";
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        // The client's address as every ecluse policy saw it (behind a trusted proxy:
        // the right-most untrusted address of its X-Forwarded-For).
        if let Some(ip) = ctx.client_ip {
            upstream_request.insert_header("x-real-ip", ip.to_string())?;
        }
        // The Host the client asked for (HTTP/2: the authority), and the port it reached.
        let host = req
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| header(req, "host"))
            .filter(|h| !h.is_empty() && h.iter().all(|b| (0x21..0x7f).contains(b)))
            .map(|h| String::from_utf8_lossy(h).into_owned());
        if !(trusted_peer && req.headers.contains_key("x-forwarded-host")) {
            match &host {
                Some(h) => upstream_request.insert_header("x-forwarded-host", h.as_str())?,
                None => {
                    upstream_request.remove_header("x-forwarded-host");
                }
            }
        }
        if !(trusted_peer && req.headers.contains_key("x-forwarded-port")) {
            // The port of the host the client named (its default when it names none), not
            // the listener's: what the ENT reads here must follow the cache key, or a client
            // on another listener would get its port written into a shared page.
            let port = host
                .as_deref()
                .map(|h| crate::policy::host::port_of(h.as_bytes(), https))
                .or_else(|| {
                    session
                        .server_addr()
                        .and_then(|a| a.as_inet())
                        .map(|a| a.port())
                });
            if let Some(port) = port {
                upstream_request.insert_header("x-forwarded-port", port.to_string())?;
            }
        }
        let fwd = ctx.config.as_ref().map(|c| &c.server.forwarding);
        if fwd.is_some_and(|f| f.forwarded_header) {
            let ours = forwarding::forwarded_element(
                &forwarding::forwarded_node(ctx.peer_ip),
                host.as_deref().unwrap_or(""),
                hop_proto,
            );
            let incoming = header(req, "forwarded")
                .filter(|v| trusted_peer && !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let value = match (incoming, xff_in) {
                (Some(prev), _) => format!("{prev}, {ours}"),
                // A trusted proxy that speaks only X-Forwarded-For: its chain, hop by hop.
                (None, Some(chain)) if !chain.is_empty() => {
                    let mut v: Vec<String> = String::from_utf8_lossy(chain)
                        .split(',')
                        .take(32)
                        .map(|a| {
                            let node = a.trim().parse::<IpAddr>().ok();
                            format!(
                                "for={}",
                                forwarding::forwarded_value(&forwarding::forwarded_node(node))
                            )
                        })
                        .collect();
                    v.push(ours);
                    v.join(", ")
                }
                _ => ours,
            };
            upstream_request.insert_header("forwarded", value)?;
        }
        if let Some(whole) = &ctx.spooled {
            body::frame_upstream(upstream_request, whole)?;
        }
        upstream_request.remove_header(crate::admin::WARM_HEADER);
        upstream_request.remove_header(crate::admin::WARM_SCHEME_HEADER);
        if session.cache.enabled() {
            // Fetch the whole object (HEAD becomes GET, client ranges and conditions are
            // ours to answer) and, when a stored copy exists, ask with its validators.
            pingora_cache::filters::upstream::request_filter(
                upstream_request,
                session.cache.maybe_cache_meta(),
            );
            // On a `revalidate` route, validators only where the origin's 304 says which
            // bytes this user may have.
            self.revalidate_conditionals(session, upstream_request, ctx);
        }
        Ok(())
    }
}
