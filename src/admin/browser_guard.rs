//! What a browser may make the admin listener do on behalf of a page it shows. The
//! admin trusts loopback peers when no token is configured, and a browser on the ops
//! machine is such a peer: any web site it opens could post to `127.0.0.1:9090`
//! (a cross-site form or `fetch(…, {mode: 'no-cors'})`), or reach it through a DNS
//! name rebound to 127.0.0.1 and read the answers. Both are refused here, for the
//! status page's forms and for every guarded `/admin/*` endpoint (`super::authorized`).
//! With a token the browser cannot send it across sites (a header needs CORS, which
//! the listener never grants), so the token is the guard there.

/// A request sent by a page of this listener, or by no browser at all, not by another
/// site: `Origin` (sent by browsers on every cross-site POST) names this host, and
/// `Sec-Fetch-Site` does not say cross-site. A client that sends neither (curl) is no
/// browser a page could steer.
pub(super) fn same_origin(h: &http::HeaderMap) -> bool {
    let host = h.get(http::header::HOST).and_then(|v| v.to_str().ok());
    let origin_ok = match h.get(http::header::ORIGIN) {
        None => true,
        Some(o) => match (o.to_str().ok(), host) {
            (Some(o), Some(host)) => {
                o.eq_ignore_ascii_case(&format!("http://{host}"))
                    || o.eq_ignore_ascii_case(&format!("https://{host}"))
            }
            _ => false,
        },
    };
    let site_ok = match h.get("sec-fetch-site").map(|v| v.as_bytes()) {
        None => true,
        Some(v) => v == b"same-origin" || v == b"none",
    };
    origin_ok && site_ok
}

/// `Host` names this machine (an IP on loopback or `localhost`): without a token the
/// admin trusts loopback peers, and a page of another site reaching 127.0.0.1 through
/// a rebound DNS name would otherwise be one.
pub(super) fn loopback_host(h: &http::HeaderMap) -> bool {
    let Some(host) = h.get(http::header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let name = match host.rsplit_once(':') {
        // A bare IPv6 address without brackets has no port.
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => host,
        Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(crate::config::runtime::is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn forms_from_another_site_or_a_rebound_name_are_refused() {
        for host in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "::1",
            "127.3.4.5",
        ] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in [
            "evil.example:9090",
            "127.0.0.1.evil.example",
            "10.0.0.1:9090",
            "localhost.:9090",
            "[::2]:1",
            "0.0.0.0:9090",
        ] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        let own = [("host", "127.0.0.1:9090")];
        assert!(same_origin(&headers(&own)), "curl sends neither");
        assert!(same_origin(&headers(&[
            own[0],
            ("origin", "http://127.0.0.1:9090"),
            ("sec-fetch-site", "same-origin")
        ])));
        for bad in [
            vec![own[0], ("origin", "http://evil.example")],
            vec![own[0], ("origin", "http://127.0.0.1:9091")],
            vec![own[0], ("origin", "null")],
            vec![own[0], ("sec-fetch-site", "cross-site")],
            vec![own[0], ("sec-fetch-site", "same-site")],
            vec![("origin", "http://127.0.0.1:9090")],
        ] {
            assert!(!same_origin(&headers(&bad)), "{bad:?}");
        }
    }
}
