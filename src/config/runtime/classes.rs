//! `priority_classes`: who skips the queue and the limits.

use super::context::{parse_cidr, valid_name, Problems, CIDR_HINT};
use super::paths::{check_prefix, policy_key_of};
use crate::config::file::PriorityClassFile;
use crate::config::tree::Seg;
use crate::path;
use crate::policy::classes::PriorityClass;

pub(super) fn build_classes(
    p: &mut Problems,
    classes: &[PriorityClassFile],
    paths: &crate::policy::path::PathPolicy,
) -> Vec<PriorityClass> {
    let mut out: Vec<PriorityClass> = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let at = |extra: Vec<Seg>| {
            let mut v = path!["priority_classes", i];
            v.extend(extra);
            v
        };
        if !valid_name(&c.name) {
            p.at(
                at(path!["name"]),
                format!("`{}`: class names use letters, digits, `_` and `-`", c.name),
            );
        }
        if out.iter().any(|o| o.name == c.name) {
            p.at(
                at(path!["name"]),
                format!("class `{}` is defined twice", c.name),
            );
        }
        let mut cidrs = Vec::new();
        for (k, s) in c.cidrs.iter().enumerate() {
            match parse_cidr(s) {
                Some(n) => cidrs.push(n),
                None => p.at(
                    at(path!["cidrs", k]),
                    format!("`{s}` is not a CIDR: {CIDR_HINT}"),
                ),
            }
        }
        let mut headers = Vec::new();
        for (name, values) in &c.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push((h, values.iter().map(|v| v.to_ascii_lowercase()).collect())),
                Err(_) => p.at_key(
                    at(path!["headers", name.as_str()]),
                    format!("`{name}` is not a header name"),
                ),
            }
        }
        for (k, pp) in c.path_prefixes.iter().enumerate() {
            check_prefix(p, at(path!["path_prefixes", k]), pp, paths);
        }
        if c.cidrs.is_empty()
            && c.headers.is_empty()
            && c.cookies.is_empty()
            && c.path_prefixes.is_empty()
        {
            p.at(at(path!["name"]), format!("class `{}` has no condition (cidrs, headers, cookies or path_prefixes): nobody would belong to it", c.name));
        }
        out.push(PriorityClass {
            name: c.name.clone(),
            cidrs,
            headers,
            cookies: c
                .cookies
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            // Compared with the request's policy path (case folded…).
            path_prefixes: c.path_prefixes.iter().map(|pp| policy_key_of(pp)).collect(),
        });
    }
    out
}
