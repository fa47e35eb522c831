//! The route matcher: on any request (Host header, raw path bytes, method) and any set of
//! matchers, matching never panics, agrees with a plain model of the documented rules, and
//! the shadowing check the loader uses (`covers`) is sound: if `a` covers `b`, every
//! request `b` matches, `a` matches too.
//!
//! Input, one item per line (a readable format the mutator can work on):
//!
//! ```text
//! METHOD HOST-HEADER PATH
//! PREFIX [h:HOST-PATTERN]... [m:METHOD]...     (one matcher per line, up to 8)
//! ```
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ecluse::config::runtime::Retained;
use ecluse::config::{check_text, Config};
use ecluse::policy::route::{host_without_port, HostPattern, Matcher};
use http::Method;
use libfuzzer_sys::fuzz_target;

/// A matcher as written, kept next to the compiled one for the model.
struct Spec {
    hosts: Option<Vec<String>>,
    prefix: Vec<u8>,
    methods: Option<Vec<Method>>,
}

/// The documented rules, written independently of `Matcher::matches`.
fn model(s: &Spec, host: &str, path: &[u8], method: &Method) -> bool {
    let host_ok = |pattern: &str| {
        let p = pattern.trim().to_ascii_lowercase();
        let h = host.to_ascii_lowercase();
        match p.strip_prefix("*.") {
            // A subdomain: something, a dot, then the rest.
            Some(rest) => h.len() > rest.len() + 1 && h.ends_with(&format!(".{rest}")),
            None => h == p,
        }
    };
    path.starts_with(&s.prefix)
        && s.methods.as_ref().is_none_or(|ms| ms.contains(method))
        && s.hosts
            .as_ref()
            .is_none_or(|hs| hs.iter().any(|p| host_ok(p)))
}

fn parse_matcher(line: &str) -> Option<(Spec, Matcher)> {
    let mut words = line.split(' ');
    let prefix = words.next()?.to_string();
    let (mut hosts, mut methods) = (Vec::new(), Vec::new());
    let (mut hpat, mut ms) = (Vec::new(), Vec::new());
    for w in words {
        if let Some(h) = w.strip_prefix("h:") {
            // The loader refuses a matcher with a bad host; so do we.
            hpat.push(HostPattern::parse(h).ok()?);
            hosts.push(h.to_string());
        } else if let Some(m) = w.strip_prefix("m:") {
            let m = Method::from_bytes(m.as_bytes()).ok()?;
            methods.push(m.clone());
            ms.push(m);
        }
    }
    let spec = Spec {
        hosts: (!hosts.is_empty()).then_some(hosts),
        prefix: prefix.clone().into_bytes(),
        methods: (!methods.is_empty()).then_some(methods),
    };
    let m = Matcher::new(
        (!hpat.is_empty()).then_some(hpat),
        prefix,
        (!ms.is_empty()).then_some(ms),
    );
    Some((spec, m))
}

const POLICY: &str = r#"listen: ["127.0.0.1:0"]
origins:
  ent: { servers: ["127.0.0.1:9"], max_inflight: 10 }
routes:
  - name: admin
    match: { host: Admin.ENT.fr, path_prefix: / }
    origin: ent
  - name: files
    match: { hosts: ["*.ent.fr"], path_prefix: /files/, methods: [GET, HEAD] }
    origin: ent
  - name: ent
    match: { path_prefix: / }
    origin: ent
"#;

/// A router as the loader builds it, and what it must answer.
fn loaded() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        check_text(
            POLICY,
            Path::new("/nonexistent/fuzz.yaml"),
            &Retained::default(),
            1,
        )
        .expect("the fuzz policy is valid")
    })
}

fn expected_route(host: &str, path: &[u8], method: &Method) -> Option<&'static str> {
    // Every route wants a path under `/`: `*` (OPTIONS) or a bare authority match nothing.
    if !path.starts_with(b"/") {
        return None;
    }
    let h = host.to_ascii_lowercase();
    Some(if h == "admin.ent.fr" {
        "admin"
    } else if path.starts_with(b"/files/")
        && (method == Method::GET || method == Method::HEAD)
        && h.len() > ".ent.fr".len()
        && h.ends_with(".ent.fr")
    {
        "files"
    } else {
        "ent"
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let Some(request) = lines.next() else { return };
    let mut parts = request.splitn(3, ' ');
    let (Some(method), Some(host_header), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let host = host_without_port(host_header);
    assert!(
        host_header.starts_with(host),
        "host_without_port invents bytes"
    );
    let path = path.as_bytes();

    // The loaded router.
    let found = loaded()
        .router
        .find(host, path, &method)
        .map(|r| r.name.as_str());
    assert_eq!(
        found,
        expected_route(host, path, &method),
        "{host:?} {path:?} {method}"
    );

    // Matchers from the input.
    let matchers: Vec<(Spec, Matcher)> = lines.take(8).filter_map(parse_matcher).collect();
    let hits: Vec<bool> = matchers
        .iter()
        .map(|(spec, m)| {
            let got = m.matches(host, path, &method);
            assert_eq!(
                got,
                model(spec, host, path, &method),
                "matcher {m:?} on {host:?} {path:?} {method}"
            );
            got
        })
        .collect();
    for (i, (_, a)) in matchers.iter().enumerate() {
        for (j, (_, b)) in matchers.iter().enumerate() {
            if hits[j] && a.covers(b) {
                assert!(
                    hits[i],
                    "{a:?} covers {b:?}, yet only the second matches {host:?} {path:?} {method}"
                );
            }
        }
    }
});
