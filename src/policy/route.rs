//! Route matching: host + path prefix (+ methods) → the first route that fits.
//!
//! Matchers are compiled at config load; matching a request allocates nothing and compares
//! bytes only (hosts case-insensitively, paths byte for byte, like nginx prefix locations).
//! The path is the request's canonical path (`policy::path`), computed once before routing,
//! and prefixes are refused at load unless written in that form, so no other spelling of a
//! path can fall through to another route.

use http::Method;

/// A host condition: `ent.example.fr` (exact) or `*.example.fr` (any subdomain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// Stored with its leading dot: `.example.fr`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.trim().to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if let Some(rest) = lower.strip_prefix("*.") {
            if valid(rest) {
                return Ok(HostPattern::Suffix(format!(".{rest}")));
            }
        } else if valid(&lower) {
            return Ok(HostPattern::Exact(lower));
        }
        Err(format!(
            "`{s}` is not a host name: write it like `ent.example.fr` or `*.example.fr` (no port, no scheme)"
        ))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(sfx) => {
                host.len() > sfx.len()
                    && host.as_bytes()[host.len() - sfx.len()..]
                        .eq_ignore_ascii_case(sfx.as_bytes())
            }
        }
    }

    /// Every host `other` matches, `self` matches too.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Suffix(s), HostPattern::Exact(b)) => self.matches(b) && b.len() > s.len(),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Matcher {
    hosts: Option<Vec<HostPattern>>,
    path_prefix: String,
    methods: Option<Vec<Method>>,
}

impl Matcher {
    pub fn new(
        hosts: Option<Vec<HostPattern>>,
        path_prefix: String,
        methods: Option<Vec<Method>>,
    ) -> Matcher {
        Matcher {
            hosts,
            path_prefix,
            methods,
        }
    }

    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }

    /// `host` is the Host header (or :authority) without port.
    #[inline]
    pub fn matches(&self, host: &str, path: &[u8], method: &Method) -> bool {
        if !path.starts_with(self.path_prefix.as_bytes()) {
            return false;
        }
        if let Some(ms) = &self.methods {
            if !ms.iter().any(|m| m == method) {
                return false;
            }
        }
        if let Some(hs) = &self.hosts {
            if !hs.iter().any(|h| h.matches(host)) {
                return false;
            }
        }
        true
    }

    /// Every request `other` matches, `self` matches as well (so `other`, placed after
    /// `self`, is unreachable).
    pub fn covers(&self, other: &Matcher) -> bool {
        if !other.path_prefix.starts_with(&self.path_prefix) {
            return false;
        }
        let methods_ok = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let hosts_ok = match (&self.hosts, &other.hosts) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|hb| a.iter().any(|ha| ha.covers(hb))),
        };
        methods_ok && hosts_ok
    }
}

/// A route as the router sees it: whatever carries a [`Matcher`] (the compiled route of
/// `config::runtime`; the router needs nothing else of it).
pub trait Routable {
    fn matcher(&self) -> &Matcher;
}

/// Routes in file order; the first match wins.
#[derive(Debug)]
pub struct Router<Route> {
    routes: Vec<std::sync::Arc<Route>>,
}

impl<Route: Routable> Router<Route> {
    pub fn new(routes: Vec<Route>) -> Router<Route> {
        Router {
            routes: routes.into_iter().map(std::sync::Arc::new).collect(),
        }
    }

    pub fn routes(&self) -> &[std::sync::Arc<Route>] {
        &self.routes
    }

    /// The first route matching the request, if any.
    #[inline]
    pub fn find(&self, host: &str, path: &[u8], method: &Method) -> Option<&std::sync::Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.matcher().matches(host, path, method))
    }
}

/// The host part of a Host header value: strips the port and IPv6 brackets' port, and
/// the trailing dot of a fully qualified name.
#[inline]
pub fn host_without_port(h: &str) -> &str {
    if h.starts_with('[') {
        // [::1]:8080 → [::1]
        return match h.find(']') {
            Some(i) => &h[..=i],
            None => h,
        };
    }
    let h = match h.rfind(':') {
        Some(i) if h[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &h[..i],
        _ => h,
    };
    // `ent.fr.` (the fully qualified spelling, with the root label) is `ent.fr` to DNS
    // and to every vhost: without this a host-based route is dodged by one dot.
    h.strip_suffix('.').unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: Option<&[&str]>, prefix: &str, methods: Option<&[&str]>) -> Matcher {
        Matcher::new(
            hosts.map(|hs| {
                hs.iter()
                    .map(|h| HostPattern::parse(h).expect("host"))
                    .collect()
            }),
            prefix.to_string(),
            methods.map(|ms| {
                ms.iter()
                    .map(|x| Method::from_bytes(x.as_bytes()).expect("m"))
                    .collect()
            }),
        )
    }

    #[test]
    fn matching() {
        let a = m(Some(&["*.ent.fr"]), "/files/", Some(&["GET", "HEAD"]));
        assert!(a.matches("lycee.ent.fr", b"/files/a.pdf", &Method::GET));
        assert!(a.matches("LYCEE.ENT.FR", b"/files/a.pdf", &Method::HEAD));
        assert!(!a.matches("ent.fr", b"/files/a.pdf", &Method::GET));
        assert!(!a.matches("lycee.ent.fr", b"/file", &Method::GET));
        assert!(!a.matches("lycee.ent.fr", b"/files/a", &Method::POST));
        let any = m(None, "/", None);
        assert!(any.matches("", b"/", &Method::DELETE));
    }

    #[test]
    fn shadowing() {
        let all = m(None, "/", None);
        let files = m(None, "/files/", None);
        assert!(all.covers(&files));
        assert!(!files.covers(&all));
        let get_only = m(None, "/", Some(&["GET"]));
        assert!(!get_only.covers(&files), "files takes POST too");
        assert!(get_only.covers(&m(None, "/x", Some(&["GET"]))));
        let host = m(Some(&["a.fr"]), "/", None);
        assert!(!host.covers(&files));
        assert!(m(Some(&["*.fr"]), "/", None).covers(&m(Some(&["a.fr", "*.b.fr"]), "/x", None)));
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_without_port("ent.fr:8080"), "ent.fr");
        assert_eq!(host_without_port("ent.fr"), "ent.fr");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("ent.fr."), "ent.fr");
        assert_eq!(host_without_port("ENT.FR.:443"), "ENT.FR");
        let visio = m(Some(&["visio.ent.fr"]), "/", None);
        for h in ["visio.ent.fr.", "VISIO.ENT.FR.:443", "Visio.Ent.Fr:80"] {
            assert!(
                visio.matches(host_without_port(h), b"/", &Method::GET),
                "{h}"
            );
        }
        assert!(HostPattern::parse("http://x").is_err());
        assert!(HostPattern::parse("x.fr:80").is_err());
    }
}
