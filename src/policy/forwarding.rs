//! The edge owns forwarding headers (issue #17, class 3).
//!
//! A backend that believes `X-Forwarded-Host`, `X-Original-URL` or `X-Real-IP` can be made
//! by any client to personalise a response (absolute links to another host, another
//! path, another client address) that a shared cache then stores for everyone, or to
//! route on a path ecluse's policies never saw. So, before any phase reads the request:
//!
//! - **rewrite headers** (what to serve: `X-Original-URL`, `X-Rewrite-URL`, method
//!   overrides…) are removed from every peer, trusted or not: ecluse decided the route,
//!   limits, room and feature gate on the request line, and the ENT must serve that.
//!   A trusted load balancer vouches for the client's address, not for every header a
//!   client sent through it (most balancers pass `X-Original-URL` untouched).
//! - **forwarding headers** (who the client is and how it connected: `X-Forwarded-*`,
//!   `Forwarded`, `X-Real-IP` and the vendor spellings of the client address) are removed
//!   when the peer is not in `server.trusted_proxies`, kept from a trusted peer; ecluse
//!   then writes its own (`proxy::upstream_request_filter`). Ops add their own names
//!   (`server.forwarding.strip_from_untrusted`, e.g. an SSO gateway's `X-Remote-User`).
//! - **names outside `A-Za-z0-9-`** (`X_Forwarded_Host`, `X.Real.IP`): CGI, WSGI and PHP
//!   read `_` (and PHP `.`) as `-`, so such a name is a second spelling of a header the
//!   edge owns. Dropped by default, like nginx (`underscores_in_headers off`,
//!   `ignore_invalid_headers on`); whatever the setting, a name that is a spelling of an
//!   owned header is treated as that header.
//!
//! Header names are case-insensitive (the `http` crate lowercases them), and every line
//! of a repeated field goes with its name.

use std::collections::HashSet;

/// Removed from every peer: they tell the backend which URL or method to serve instead of
/// the request line's (IIS `X-Original-URL`/`X-Rewrite-URL`, Envoy/Traefik/nginx-ingress
/// originals, Rails/Symfony/Express method overrides). A method override turns a cached
/// `GET` into a `DELETE` at the backend, or a `POST` into something the route's policy
/// never considered.
pub const REWRITE_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-path",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-request-uri",
    "x-request-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
];

/// Removed when the peer is not a trusted proxy, kept from one: the client's address,
/// scheme, host, port and path prefix as seen by a proxy in front (RFC 7239 `Forwarded`,
/// the de-facto `X-Forwarded-*` of nginx/Apache/HAProxy/Traefik, IIS ARR's, the address
/// headers of CDNs and load balancers: Akamai/Cloudflare `True-Client-IP`,
/// `CF-Connecting-IP`, Fastly, Rackspace/Riverbed `X-Cluster-Client-IP`…), and client
/// certificate identities set by TLS terminators (Envoy XFCC, nginx/HAProxy/ARR), which
/// some backends take as an authentication.
pub const FORWARDING_HEADERS: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-protocol",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-by",
    "x-forwarded-client-cert",
    "front-end-https",
    "x-url-scheme",
    "x-scheme",
    "x-arr-ssl",
    "x-arr-clientcert",
    // The request id a load balancer gave the request (`policy::request_id`): from anyone
    // else, every spelling is removed and ecluse writes its own.
    "x-request-id",
    "x-original-host",
    "x-host",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
    "x-ssl-client-verify",
    "ssl-client-verify",
    "x-ssl-client-dn",
    "x-ssl-client-s-dn",
];

/// Forwarding headers that name the user (set by an authenticating proxy: oauth2-proxy,
/// mod_auth_mellon, Shibboleth, an SSO gateway) or carry a client certificate: removed
/// from untrusted peers like the others and, from a trusted one, a credential: the
/// request is then credentialed for the cache like one with a cookie, and these values
/// are part of what a `revalidate` route remembers the origin authorized.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "x-auth-request-access-token",
    "x-remote-user",
    "remote-user",
    "x-forwarded-client-cert",
    "x-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
    "x-arr-clientcert",
    "x-ssl-client-dn",
    "x-ssl-client-s-dn",
];

/// What to do with a header name outside `A-Za-z0-9-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OddNames {
    /// Remove the field (nginx's default).
    Drop,
    /// Answer 400 (Traefik's `underscoreHeadersStrategy: reject`).
    Reject,
    /// Forward it, unless it spells an owned header.
    Keep,
}

/// The validated `server.forwarding` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarding {
    /// Write an RFC 7239 `Forwarded` header for the ENT.
    pub forwarded_header: bool,
    /// Canonical names ([`canonical`]) removed from every peer.
    pub always: HashSet<String>,
    /// Canonical names removed from untrusted peers only.
    pub untrusted: HashSet<String>,
    /// Names whose presence (from a trusted peer) makes a request credentialed: the
    /// built-in [`IDENTITY_HEADERS`] and ops' `strip_from_untrusted`.
    pub identity: Vec<http::HeaderName>,
    pub odd_names: OddNames,
}

impl Default for Forwarding {
    fn default() -> Forwarding {
        Forwarding::new(false, &[], &[], OddNames::Drop)
    }
}

impl Forwarding {
    /// The built-in lists, plus `extra_untrusted` (ops' own names), minus `pass` (names
    /// of the built-in lists ops want forwarded as sent).
    pub fn new(
        forwarded_header: bool,
        extra_untrusted: &[String],
        pass: &[String],
        odd_names: OddNames,
    ) -> Forwarding {
        let pass: HashSet<String> = pass.iter().map(|n| canonical(n)).collect();
        let keep = |n: &&&str| !pass.contains(**n);
        Forwarding {
            forwarded_header,
            always: REWRITE_HEADERS
                .iter()
                .filter(keep)
                .map(|s| s.to_string())
                .collect(),
            untrusted: FORWARDING_HEADERS
                .iter()
                .filter(keep)
                .map(|s| s.to_string())
                .chain(IDENTITY_HEADERS.iter().filter(keep).map(|s| s.to_string()))
                .chain(extra_untrusted.iter().map(|n| canonical(n)))
                .collect(),
            identity: IDENTITY_HEADERS
                .iter()
                .map(|s| s.to_string())
                .chain(extra_untrusted.iter().map(|n| n.to_ascii_lowercase()))
                .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .fold(Vec::new(), |mut v, n| {
                    if !v.contains(&n) {
                        v.push(n);
                    }
                    v
                }),
            odd_names,
        }
    }

    /// Whether `name` (any spelling) is one this module knows, built-in or added.
    pub fn knows(&self, name: &str) -> bool {
        let c = canonical(name);
        REWRITE_HEADERS.contains(&c.as_str())
            || FORWARDING_HEADERS.contains(&c.as_str())
            || IDENTITY_HEADERS.contains(&c.as_str())
            || self.untrusted.contains(&c)
    }

    /// The values of the identity headers the request still carries (only a trusted
    /// peer's survive [`decide`]), in a stable order (the names' order, then the lines').
    pub fn identity_items<'h>(&self, headers: &'h http::HeaderMap) -> Vec<&'h [u8]> {
        self.identity
            .iter()
            .flat_map(|n| headers.get_all(n).iter().map(|v| v.as_bytes()))
            .collect()
    }
}

/// The name as a CGI/WSGI/PHP backend reads it, in HTTP spelling: lowercase, `_` and `.`
/// as `-`.
pub fn canonical(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => char::from(b.to_ascii_lowercase()),
        })
        .collect()
}

/// A name nginx would call invalid: any byte but ASCII letters, digits and `-`.
pub fn is_odd(name: &str) -> bool {
    !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What [`decide`] says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Remove these fields (every line of each), in the order found.
    Remove(Vec<String>),
    /// Answer 400: this name is outside `A-Za-z0-9-` and the policy is `reject`.
    Reject(String),
}

/// Decide which request fields to remove. `names` are the request's field names (any
/// case, repeats allowed); `trusted`: the socket peer is in `server.trusted_proxies`.
pub fn decide<'a>(
    cfg: &Forwarding,
    names: impl IntoIterator<Item = &'a str>,
    trusted: bool,
) -> Verdict {
    let mut remove: Vec<String> = Vec::new();
    for name in names {
        let odd = is_odd(name);
        // The common case (a lowercase `a-z0-9-` name, as the `http` crate stores them)
        // is looked up without allocating.
        let owned = if odd || name.bytes().any(|b| b.is_ascii_uppercase()) {
            let c = canonical(name);
            cfg.always.contains(&c) || (!trusted && cfg.untrusted.contains(&c))
        } else {
            cfg.always.contains(name) || (!trusted && cfg.untrusted.contains(name))
        };
        let drop = owned
            || (odd
                && match cfg.odd_names {
                    OddNames::Drop => true,
                    OddNames::Reject => return Verdict::Reject(name.to_string()),
                    OddNames::Keep => false,
                });
        if drop && !remove.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            remove.push(name.to_string());
        }
    }
    Verdict::Remove(remove)
}

/// One RFC 7239 value: a token as is, anything else (an IPv6 address, `host:port`) as a
/// quoted-string with `"` and `\` escaped.
pub fn forwarded_value(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The RFC 7239 node name of an address: IPv4 as is, IPv6 in brackets (then quoted by
/// [`forwarded_value`]).
pub fn forwarded_node(ip: Option<std::net::IpAddr>) -> String {
    match ip {
        Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Some(v4) => v4.to_string(),
        None => "unknown".to_string(),
    }
}

/// One `Forwarded` element: `for=…;host=…;proto=…` (RFC 7239 §4), each value quoted when
/// it must be. `host` is left out when empty or not visible ASCII.
pub fn forwarded_element(for_: &str, host: &str, proto: &str) -> String {
    let mut e = format!("for={}", forwarded_value(for_));
    if !host.is_empty() && host.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        e.push_str(";host=");
        e.push_str(&forwarded_value(host));
    }
    e.push_str(";proto=");
    e.push_str(&forwarded_value(proto));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn removed(cfg: &Forwarding, names: &[&str], trusted: bool) -> Vec<String> {
        match decide(cfg, names.iter().copied(), trusted) {
            Verdict::Remove(v) => v,
            Verdict::Reject(n) => panic!("rejected {n}"),
        }
    }

    #[test]
    fn untrusted_peers_lose_every_forwarding_and_rewrite_header() {
        let cfg = Forwarding::default();
        for n in FORWARDING_HEADERS
            .iter()
            .chain(REWRITE_HEADERS)
            .chain(IDENTITY_HEADERS)
        {
            assert_eq!(removed(&cfg, &[n], false), vec![n.to_string()], "{n}");
            // Any case, any CGI spelling.
            let upper = n.to_ascii_uppercase();
            assert_eq!(removed(&cfg, &[&upper], false), vec![upper.clone()]);
            let under = n.replace('-', "_");
            let cfg_keep = Forwarding::new(false, &[], &[], OddNames::Keep);
            if under != *n {
                assert_eq!(removed(&cfg_keep, &[&under], false), vec![under.clone()]);
                let dots = n.replace('-', ".");
                assert_eq!(removed(&cfg_keep, &[&dots], false), vec![dots.clone()]);
            }
        }
        assert!(removed(
            &cfg,
            &["host", "cookie", "accept", "x-requested-with"],
            false
        )
        .is_empty());
    }

    #[test]
    fn trusted_peers_keep_forwarding_headers_but_never_rewrites() {
        let cfg = Forwarding::default();
        assert!(removed(&cfg, &["x-forwarded-host", "forwarded", "x-real-ip"], true).is_empty());
        assert_eq!(
            removed(
                &cfg,
                &["x-original-url", "X_Rewrite_URL", "x-http-method-override"],
                true
            ),
            vec!["x-original-url", "X_Rewrite_URL", "x-http-method-override"]
        );
    }

    #[test]
    fn odd_names_follow_the_policy() {
        let drop = Forwarding::default();
        assert_eq!(
            removed(&drop, &["x_custom", "x.custom", "x~c", "x-custom"], true),
            vec!["x_custom", "x.custom", "x~c"]
        );
        let reject = Forwarding::new(false, &[], &[], OddNames::Reject);
        assert_eq!(
            decide(&reject, ["accept", "x_custom"], false),
            Verdict::Reject("x_custom".into())
        );
        let keep = Forwarding::new(false, &[], &[], OddNames::Keep);
        assert!(removed(&keep, &["x_custom"], false).is_empty());
        // A trusted peer's spelling of a forwarding header is that header: kept.
        assert!(removed(&keep, &["x_forwarded_host"], true).is_empty());
    }

    #[test]
    fn ops_lists_add_and_pass() {
        let cfg = Forwarding::new(
            true,
            &["X-Remote-User".into()],
            &["X-HTTP-Method-Override".into()],
            OddNames::Keep,
        );
        assert_eq!(
            removed(&cfg, &["x-remote-user", "X_REMOTE_USER"], false),
            vec!["x-remote-user", "X_REMOTE_USER"]
        );
        assert!(removed(&cfg, &["x-remote-user"], true).is_empty());
        assert!(removed(&cfg, &["x-http-method-override"], false).is_empty());
        let mut h = http::HeaderMap::new();
        h.insert("x-remote-user", "teacher1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        assert_eq!(cfg.identity_items(&h), vec![&b"teacher1"[..]]);
        h.remove("x-remote-user");
        h.insert("x-forwarded-user", "t2".parse().unwrap());
        assert_eq!(Forwarding::default().identity_items(&h), vec![&b"t2"[..]]);
        assert!(cfg.knows("x_remote_user"));
    }

    #[test]
    fn repeated_lines_are_named_once() {
        let cfg = Forwarding::default();
        assert_eq!(
            removed(&cfg, &["x-real-ip", "x-real-ip", "X-Real-IP"], false),
            vec!["x-real-ip"]
        );
    }

    #[test]
    fn forwarded_values_are_quoted_when_they_must_be() {
        assert_eq!(forwarded_value("192.0.2.1"), "192.0.2.1");
        assert_eq!(
            forwarded_value(&forwarded_node(Some("2001:db8::1".parse().unwrap()))),
            "\"[2001:db8::1]\""
        );
        assert_eq!(forwarded_value("ent.example:8443"), "\"ent.example:8443\"");
        assert_eq!(forwarded_value("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(forwarded_value(""), "\"\"");
        assert_eq!(
            forwarded_element("[::1]", "ent.example", "https"),
            "for=\"[::1]\";host=ent.example;proto=https"
        );
        assert_eq!(
            forwarded_element("unknown", "", "http"),
            "for=unknown;proto=http"
        );
    }
}
