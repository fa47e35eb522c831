//! Route matching: host + path prefix (+ methods) → the first route that fits.
//!
//! Matchers are compiled at config load; matching a request allocates nothing and compares
//! bytes only (hosts case-insensitively, paths byte for byte, like nginx prefix locations).
//! The path is the request's canonical path (`policy::path`), computed once before routing,
//! and prefixes are refused at load unless written in that form, so no other spelling of a
//! path can fall through to another route.
//!
//! Lookup does not grow with the policy (a regional ENT fronts hundreds of schools, each
//! with its host name): [`Router`] indexes exact hosts in a hash, wildcard hosts by their
//! suffix in another, and under each host the path prefixes in a byte trie; the answer is
//! the smallest route index among the candidates, which is exactly what the linear scan
//! in file order gives (`find_linear`, kept as the reference the property test compares
//! against).

use std::collections::HashMap;
use std::sync::Arc;

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

    #[inline]
    fn method_ok(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(ms) => ms.iter().any(|m| m == method),
        }
    }

    /// `host` is the Host header (or :authority) without port.
    #[inline]
    pub fn matches(&self, host: &str, path: &[u8], method: &Method) -> bool {
        if !path.starts_with(self.path_prefix.as_bytes()) {
            return false;
        }
        if !self.method_ok(method) {
            return false;
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
    routes: Vec<Arc<Route>>,
    index: HostIndex,
}

impl<Route: Routable> Router<Route> {
    pub fn new(routes: Vec<Route>) -> Router<Route> {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let index = HostIndex::build(routes.iter().map(|r| r.matcher()));
        Router { routes, index }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The first route (in file order) matching the request, if any; through the index,
    /// so the cost depends on the host and path, not on how many routes there are.
    #[inline]
    pub fn find(&self, host: &str, path: &[u8], method: &Method) -> Option<&Arc<Route>> {
        let i = self
            .index
            .first(host, path, &|i| self.routes[i].matcher().method_ok(method))?;
        self.routes.get(i)
    }

    /// The same answer as [`Router::find`] by scanning every route in order: the
    /// definition of "first match wins", for the property test and the benchmark.
    pub fn find_linear(&self, host: &str, path: &[u8], method: &Method) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.matcher().matches(host, path, method))
    }
}

/// The longest host name DNS allows (253) plus a wildcard's leading dot, rounded up: no
/// pattern is longer, so a request host is lowered into a buffer of this size (no
/// allocation) and only its last bytes can meet a suffix.
const HOST_BUF: usize = 256;

/// Route indices by host condition, each with its own path trie.
#[derive(Debug, Default)]
struct HostIndex {
    /// Routes without a host condition.
    any: Option<PathTrie>,
    /// `ent.example.fr`, lower case.
    exact: HashMap<Box<[u8]>, PathTrie>,
    /// `*.example.fr` stored as `.example.fr`, lower case.
    suffix: HashMap<Box<[u8]>, PathTrie>,
    /// The longest suffix: no request host position further from the end can match.
    max_suffix: usize,
}

impl HostIndex {
    fn build<'a>(matchers: impl Iterator<Item = &'a Matcher>) -> HostIndex {
        let mut ix = HostIndex::default();
        for (i, m) in matchers.enumerate() {
            let prefix = m.path_prefix.as_bytes();
            match &m.hosts {
                None => ix
                    .any
                    .get_or_insert_with(PathTrie::default)
                    .insert(prefix, i),
                Some(hs) => {
                    for h in hs {
                        let (map, key) = match h {
                            HostPattern::Exact(e) => (&mut ix.exact, e),
                            HostPattern::Suffix(s) => {
                                ix.max_suffix = ix.max_suffix.max(s.len());
                                (&mut ix.suffix, s)
                            }
                        };
                        let key: Box<[u8]> = key.to_ascii_lowercase().into_bytes().into();
                        map.entry(key).or_default().insert(prefix, i);
                    }
                }
            }
        }
        ix
    }

    /// The smallest route index whose host and path prefix fit and for which
    /// `method_ok` says yes.
    #[inline]
    fn first(&self, host: &str, path: &[u8], method_ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut best = usize::MAX;
        if let Some(t) = &self.any {
            t.first(path, method_ok, &mut best);
        }
        if self.exact.is_empty() && self.suffix.is_empty() {
            return (best != usize::MAX).then_some(best);
        }
        let hb = host.as_bytes();
        let n = hb.len().min(HOST_BUF);
        let skipped = hb.len() - n;
        let mut buf = [0u8; HOST_BUF];
        let low = &mut buf[..n];
        low.copy_from_slice(&hb[skipped..]);
        low.make_ascii_lowercase();
        let low = &*low;
        if skipped == 0 {
            if let Some(t) = self.exact.get(low) {
                t.first(path, method_ok, &mut best);
            }
        }
        if !self.suffix.is_empty() {
            // Every `.` that leaves at least one byte of host before it starts a suffix
            // that may be a pattern (`*.ent.fr` matches `a.ent.fr`, not `.ent.fr`).
            let from = n.saturating_sub(self.max_suffix);
            for (k, &b) in low.iter().enumerate().skip(from) {
                if b == b'.' && skipped + k > 0 {
                    if let Some(t) = self.suffix.get(&low[k..]) {
                        t.first(path, method_ok, &mut best);
                    }
                }
            }
        }
        (best != usize::MAX).then_some(best)
    }
}

/// Path prefixes in a byte trie; each node holds the indices (ascending) of the routes
/// whose prefix ends there. Walking the request path visits exactly the prefixes of it,
/// so the work is bounded by the path's length, whatever the number of routes.
#[derive(Debug)]
struct PathTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// (byte, node), sorted by byte.
    children: Vec<(u8, u32)>,
    /// Routes whose prefix ends here, ascending.
    here: Vec<usize>,
}

impl Default for PathTrie {
    fn default() -> Self {
        PathTrie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PathTrie {
    fn insert(&mut self, prefix: &[u8], route: usize) {
        let mut at = 0usize;
        for &b in prefix {
            at = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => self.nodes[at].children[k].1 as usize,
                Err(k) => {
                    let id = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    // A config has far fewer than 2^32 prefix bytes.
                    self.nodes[at].children.insert(k, (b, id as u32));
                    id
                }
            };
        }
        // Routes are inserted in file order, so `here` stays ascending.
        self.nodes[at].here.push(route);
    }

    /// Lowers `best` to the smallest route here whose prefix starts `path` and whose
    /// methods fit.
    #[inline]
    fn first(&self, path: &[u8], method_ok: &dyn Fn(usize) -> bool, best: &mut usize) {
        let mut at = 0usize;
        let mut rest = path;
        loop {
            let node = &self.nodes[at];
            for &i in &node.here {
                if i >= *best {
                    break;
                }
                if method_ok(i) {
                    *best = i;
                    break;
                }
            }
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => at = node.children[k].1 as usize,
                Err(_) => return,
            }
            rest = tail;
        }
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

    /// A route that counts how often the router looks at it.
    struct Counted(Matcher, std::sync::atomic::AtomicUsize);
    impl Routable for Counted {
        fn matcher(&self) -> &Matcher {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            &self.0
        }
    }

    /// 2,000 per-school host routes: finding the last school looks at a handful of
    /// routes (the candidates of its host), not at the 1,999 before it.
    #[test]
    fn lookup_does_not_scan_every_route() {
        let mut routes: Vec<Counted> = (0..2000)
            .map(|i| {
                let host = format!("school{i}.ent.fr");
                Counted(m(Some(&[host.as_str()]), "/", None), Default::default())
            })
            .collect();
        routes.push(Counted(
            m(Some(&["*.ent.fr"]), "/", None),
            Default::default(),
        ));
        routes.push(Counted(m(None, "/", None), Default::default()));
        let router = Router::new(routes);
        let looked = |router: &Router<Counted>| {
            router
                .routes()
                .iter()
                .map(|r| r.1.swap(0, std::sync::atomic::Ordering::Relaxed))
                .sum::<usize>()
        };
        looked(&router);
        let r = router.find("SCHOOL1999.ent.fr", b"/cours", &Method::GET);
        assert_eq!(r.map(|r| r.0.path_prefix()), Some("/"));
        assert!(std::ptr::eq(r.expect("route"), &router.routes()[1999]));
        assert!(looked(&router) <= 3, "looked at too many routes");
        let r = router
            .find("other.ent.fr", b"/", &Method::GET)
            .expect("wildcard");
        assert!(std::ptr::eq(r, &router.routes()[2000]));
        assert!(looked(&router) <= 3, "looked at too many routes");
        let r = router
            .find("ent.fr", b"/", &Method::GET)
            .expect("catch-all");
        assert!(std::ptr::eq(r, &router.routes()[2001]));
        assert!(looked(&router) <= 3, "looked at too many routes");
    }

    struct R(Matcher);
    impl Routable for R {
        fn matcher(&self) -> &Matcher {
            &self.0
        }
    }

    fn pos(router: &Router<R>, r: Option<&Arc<R>>) -> Option<usize> {
        r.map(|r| {
            router
                .routes()
                .iter()
                .position(|x| Arc::ptr_eq(x, r))
                .expect("a route of this router")
        })
    }

    #[test]
    fn index_edge_cases() {
        let router = Router::new(vec![
            R(m(Some(&["*.ent.fr"]), "/visio/", Some(&["POST"]))),
            R(m(Some(&["a.ent.fr", "*.b.fr"]), "/visio/", None)),
            R(m(Some(&["*.ent.fr"]), "/", None)),
            R(m(None, "/visio", Some(&["GET"]))),
            R(m(None, "/", None)),
        ]);
        let long = format!("{}.ent.fr", "x".repeat(400));
        let dots = format!("{}ent.fr", "a.".repeat(300));
        for (host, path, method) in [
            ("a.ent.fr", "/visio/x", "POST"),
            ("a.ent.fr", "/visio/x", "GET"),
            ("A.ENT.FR", "/visio/", "GET"),
            ("ent.fr", "/visio/", "POST"),
            (".ent.fr", "/visio/", "GET"),
            ("x.y.b.fr", "/visio/a", "GET"),
            ("b.fr", "/visio/a", "GET"),
            (long.as_str(), "/visio/", "GET"),
            (dots.as_str(), "/visio/", "POST"),
            ("", "/visio", "GET"),
            ("", "", "GET"),
            ("é.ent.fr", "/", "GET"),
        ] {
            let me = Method::from_bytes(method.as_bytes()).expect("method");
            assert_eq!(
                pos(&router, router.find(host, path.as_bytes(), &me)),
                pos(&router, router.find_linear(host, path.as_bytes(), &me)),
                "{host} {path} {method}"
            );
        }
    }

    mod props {
        use super::*;
        use crate::policy::path::{canonical_path, canonical_prefix, policy_path, policy_prefix};
        use proptest::prelude::*;

        const HOSTS: &[&str] = &[
            "ent.fr",
            "a.ent.fr",
            "b.ent.fr",
            "x.a.ent.fr",
            "*.ent.fr",
            "*.a.ent.fr",
            "*.fr",
            "A.Ent.FR",
            "visio.fr",
        ];
        const REQ_HOSTS: &[&str] = &[
            "",
            "ent.fr",
            "a.ent.fr",
            "A.ENT.FR",
            "b.ent.fr",
            "x.a.ent.fr",
            "y.x.a.ent.fr",
            ".ent.fr",
            "fr",
            "visio.fr",
            "Visio.Fr",
            "ent.fr.evil",
            "aent.fr",
            "[::1]",
        ];
        const PREFIXES: &[&str] = &[
            "/",
            "/a",
            "/a/",
            "/ab",
            "/a/b",
            "/visio/",
            "/Visio/",
            "/index.php/",
            "/a./",
            "/files/x.pdf",
        ];
        const METHODS: &[&str] = &["GET", "POST", "HEAD", "DELETE"];

        fn route() -> impl Strategy<Value = (Option<Vec<usize>>, usize, Option<Vec<usize>>)> {
            (
                prop::option::weighted(0.6, prop::collection::vec(0..HOSTS.len(), 1..3)),
                0..PREFIXES.len(),
                prop::option::weighted(0.3, prop::collection::vec(0..METHODS.len(), 1..3)),
            )
        }

        fn raw_path() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "/",
                    "a",
                    "A",
                    "b",
                    "visio",
                    "VISIO",
                    ".",
                    "..",
                    "%20",
                    "%2F",
                    "%61",
                    "::$DATA",
                    "index.php",
                    "files",
                    "x.pdf",
                    ";x",
                    "//",
                ]),
                0..8,
            )
            .prop_map(|parts| {
                let mut p = b"/".to_vec();
                for x in parts {
                    p.extend_from_slice(x.as_bytes());
                }
                p
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// The index and the scan in file order agree on every request, with route
            /// prefixes and request paths in the form the proxy compares them
            /// (canonical, then policy path: case folded, dots and streams dropped,
            /// front controllers cut), under every `server.paths` policy.
            #[test]
            fn index_agrees_with_linear_scan(
                routes in prop::collection::vec(route(), 1..24),
                reqs in prop::collection::vec(
                    (0..REQ_HOSTS.len(), raw_path(), 0..METHODS.len(), any::<bool>()),
                    1..24,
                ),
                policy_ix in 0..36usize,
            ) {
                let policy = crate::policy::path::PathPolicy::all()
                    .nth(policy_ix)
                    .expect("36 policies");
                let fcs = vec!["/index.php".to_string()];
                let built: Vec<R> = routes
                    .iter()
                    .filter_map(|(hosts, p, ms)| {
                        let c = canonical_prefix(PREFIXES[*p], &policy).ok()?;
                        let key = policy_prefix(&c).ok()?;
                        Some(R(Matcher::new(
                            hosts.as_ref().map(|hs| {
                                hs.iter()
                                    .map(|h| HostPattern::parse(HOSTS[*h]).expect("host"))
                                    .collect()
                            }),
                            key,
                            ms.as_ref().map(|ms| {
                                ms.iter()
                                    .map(|x| Method::from_bytes(METHODS[*x].as_bytes()).expect("m"))
                                    .collect()
                            }),
                        )))
                    })
                    .collect();
                let router = Router::new(built);
                for (h, raw, me, port) in reqs {
                    let Ok(c) = canonical_path(&raw, &policy) else { continue };
                    let Ok(key) = policy_path(&c, &fcs) else { continue };
                    let host = if port {
                        format!("{}:443", REQ_HOSTS[h])
                    } else {
                        REQ_HOSTS[h].to_string()
                    };
                    let host = host_without_port(&host);
                    let me = Method::from_bytes(METHODS[me].as_bytes()).expect("m");
                    prop_assert_eq!(
                        pos(&router, router.find(host, &key, &me)),
                        pos(&router, router.find_linear(host, &key, &me)),
                        "host {:?} path {:?}", host, String::from_utf8_lossy(&key)
                    );
                }
            }
        }
    }
}
