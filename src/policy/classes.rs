//! Priority classes (staff, exam candidates…): which class a request belongs to.

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct PriorityClass {
    pub name: String,
    pub cidrs: Vec<IpNet>,
    /// Header → accepted values, lower-cased.
    pub headers: Vec<(HeaderName, Vec<String>)>,
    pub cookies: Vec<(String, Vec<String>)>,
    pub path_prefixes: Vec<String>,
}

/// The request facts a class is decided on.
pub struct RequestFacts<'a> {
    pub client_ip: Option<IpAddr>,
    /// The peer is one of our trusted proxies: only then are header conditions believed
    /// (anyone can send `X-ENT-Role: enseignant`).
    pub trusted: bool,
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl PriorityClass {
    pub fn matches(&self, r: &RequestFacts) -> bool {
        if let Some(ip) = r.client_ip {
            if self.cidrs.iter().any(|n| n.contains(&ip)) {
                return true;
            }
        }
        if self
            .path_prefixes
            .iter()
            .any(|p| r.path.starts_with(p.as_str()))
        {
            return true;
        }
        for (name, values) in self.headers.iter().filter(|_| r.trusted) {
            for v in r.headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    if values
                        .iter()
                        .any(|want| v.trim().eq_ignore_ascii_case(want))
                    {
                        return true;
                    }
                }
            }
        }
        for (name, values) in &self.cookies {
            if let Some(v) = cookie(r.headers, name) {
                if values.iter().any(|want| v == want) {
                    return true;
                }
            }
        }
        false
    }
}

/// Index of the first class the request belongs to.
pub fn classify(classes: &[PriorityClass], r: &RequestFacts) -> Option<usize> {
    classes.iter().position(|c| c.matches(r))
}

/// The value of cookie `name` in the request's `Cookie` headers (first occurrence).
/// Malformed pairs are skipped, never an error.
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    cookie_in(
        headers
            .get_all(http::header::COOKIE)
            .into_iter()
            .map(|h| h.as_bytes()),
        name,
    )
}

/// [`cookie`] in the `Cookie` field values `values` (`policy::cookies::value_of`: a
/// value that is not visible ASCII is skipped, a malformed piece never yields a value).
pub fn cookie_in<'h>(values: impl IntoIterator<Item = &'h [u8]>, name: &str) -> Option<&'h str> {
    super::cookies::value_of(values, name)
}

/// A field value as text when it is visible ASCII and tabs only (what
/// `HeaderValue::to_str` accepts).
pub fn visible_ascii(v: &[u8]) -> Option<&str> {
    if v.iter().all(|&b| (32..127).contains(&b) || b == b'\t') {
        std::str::from_utf8(v).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn cookies() {
        let h = headers(&[
            ("cookie", "a=1; ENTSESSION=abc ; b=\"q\""),
            ("cookie", "c=3"),
        ]);
        assert_eq!(cookie(&h, "ENTSESSION"), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("q"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "zz"), None);
        let h = headers(&[("cookie", ";;=;==; x")]);
        assert_eq!(cookie(&h, "x"), None);
        // A value `HeaderValue::to_str` refuses (obs-text) is skipped, as it always was.
        let mut h = http::HeaderMap::new();
        for v in [&b"t=\xe9t\xe9; a=1"[..], b"a=2"] {
            let v = http::HeaderValue::from_bytes(v).expect("value");
            assert_eq!(visible_ascii(v.as_bytes()).is_some(), v.to_str().is_ok());
            h.append(http::header::COOKIE, v);
        }
        assert_eq!(cookie(&h, "a"), Some("2"));
        assert_eq!(visible_ascii(b"a\tb c~"), Some("a\tb c~"));
        assert_eq!(visible_ascii(b"a\x7f"), None);
    }

    #[test]
    fn classes_in_order() {
        let staff = PriorityClass {
            name: "staff".into(),
            cidrs: vec!["10.1.0.0/16".parse().expect("net")],
            headers: vec![(
                HeaderName::from_static("x-ent-role"),
                vec!["enseignant".into()],
            )],
            cookies: vec![],
            path_prefixes: vec![],
        };
        let exam = PriorityClass {
            name: "exam".into(),
            cidrs: vec![],
            headers: vec![],
            cookies: vec![("exam".into(), vec!["bac2026".into()])],
            path_prefixes: vec!["/examens/".into()],
        };
        let classes = vec![staff, exam];
        let h = headers(&[("x-ent-role", "Enseignant")]);
        let f = RequestFacts {
            client_ip: None,
            trusted: true,
            path: "/",
            headers: &h,
        };
        assert_eq!(classify(&classes, &f), Some(0));
        let f = RequestFacts {
            client_ip: None,
            trusted: false,
            path: "/",
            headers: &h,
        };
        assert_eq!(
            classify(&classes, &f),
            None,
            "headers only from trusted proxies"
        );
        let h = headers(&[("cookie", "exam=bac2026")]);
        let f = RequestFacts {
            client_ip: None,
            trusted: false,
            path: "/",
            headers: &h,
        };
        assert_eq!(classify(&classes, &f), Some(1));
        let h = headers(&[]);
        let f = RequestFacts {
            client_ip: Some("10.1.2.3".parse().expect("ip")),
            trusted: false,
            path: "/examens/x",
            headers: &h,
        };
        assert_eq!(classify(&classes, &f), Some(0), "first class wins");
        let f = RequestFacts {
            client_ip: Some("192.0.2.1".parse().expect("ip")),
            trusted: false,
            path: "/",
            headers: &h,
        };
        assert_eq!(classify(&classes, &f), None);
    }
}
