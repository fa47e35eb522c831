//! `routes[].rate_limits`: each limit's key, exemptions, limiter and metrics.

use std::sync::Arc;

use ipnet::IpNet;
use prometheus::IntCounter;

use super::context::{parse_cidr, valid_name, BuildContext, Problems, CIDR_HINT};
use crate::config::file::{LimitKeyFile, LimitModeFile, RateLimitFile};
use crate::config::tree::Seg;
use crate::path;
use crate::policy::classes::PriorityClass;
use crate::policy::rate_limit::{KeyedLimiter, Rate};

/// What a limit counts by, resolved.
#[derive(Debug, Clone)]
pub enum LimitKey {
    ClientIp,
    Cookie(String),
    Header(http::HeaderName),
    /// Believed only from trusted proxies.
    User(http::HeaderName),
    Route,
}

/// One rate limit of a route, ready to decide.
pub struct RouteLimit {
    pub name: String,
    pub key: LimitKey,
    pub dry_run: bool,
    pub exempt_cidrs: Vec<IpNet>,
    /// Indices into `Config::classes`.
    pub exempt_classes: Vec<usize>,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub limiter: Arc<KeyedLimiter>,
    /// The definition, to keep buckets across reloads only when it is unchanged.
    pub fingerprint: String,
    pub metrics: LimitMetrics,
}

impl std::fmt::Debug for RouteLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimit")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// Per-limit metric handles, resolved once at load.
pub struct LimitMetrics {
    pub allowed: IntCounter,
    pub limited: IntCounter,
    pub dry_run_limited: IntCounter,
    pub exempt: IntCounter,
    pub keys: prometheus::IntGauge,
    pub evictions: IntCounter,
}

impl LimitMetrics {
    fn new(route: &str, limit: &str) -> LimitMetrics {
        let m = crate::metrics::get();
        let d = |r: &str| m.ratelimit_decisions.with_label_values(&[route, limit, r]);
        LimitMetrics {
            allowed: d("allowed"),
            limited: d("limited"),
            dry_run_limited: d("dry_run_limited"),
            exempt: d("exempt"),
            keys: m.ratelimit_keys.with_label_values(&[route, limit]),
            evictions: m.ratelimit_evictions.with_label_values(&[route, limit]),
        }
    }
}

fn key_kind_name(k: LimitKeyFile) -> &'static str {
    match k {
        LimitKeyFile::ClientIp => "client_ip",
        LimitKeyFile::Cookie => "cookie",
        LimitKeyFile::Header => "header",
        LimitKeyFile::User => "user",
        LimitKeyFile::Route => "route",
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_limit(
    p: &mut Problems,
    route: &str,
    at: &dyn Fn(Vec<Seg>) -> Vec<Seg>,
    l: &RateLimitFile,
    classes: &[PriorityClass],
    ctx: &BuildContext,
    taken: &mut Vec<String>,
) -> Option<RouteLimit> {
    let name = l
        .name
        .clone()
        .unwrap_or_else(|| key_kind_name(l.key).to_string());
    if !valid_name(&name) {
        p.at(
            at(path!["name"]),
            format!("`{name}`: limit names use letters, digits, `_` and `-`"),
        );
    }
    if taken.contains(&name) {
        p.at(
            at(path!["name"]),
            format!("two limits of this route are named `{name}`: give them distinct `name`s"),
        );
    }
    taken.push(name.clone());
    let header_name = |p: &mut Problems, default: Option<&str>| -> Option<http::HeaderName> {
        match l.header.as_deref().or(default) {
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    p.at(at(path!["header"]), format!("`{h}` is not a header name"));
                    None
                }
            },
            None => {
                p.at(at(path!["key"]), "`key: header` needs `header: NAME`");
                None
            }
        }
    };
    let key = match l.key {
        LimitKeyFile::ClientIp => LimitKey::ClientIp,
        LimitKeyFile::Route => LimitKey::Route,
        LimitKeyFile::Cookie => match &l.cookie {
            Some(c)
                if !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';') =>
            {
                LimitKey::Cookie(c.clone())
            }
            Some(c) => {
                p.at(at(path!["cookie"]), format!("`{c}` is not a cookie name"));
                LimitKey::ClientIp
            }
            None => {
                p.at(at(path!["key"]), "`key: cookie` needs `cookie: NAME`");
                LimitKey::ClientIp
            }
        },
        LimitKeyFile::Header => header_name(p, None)
            .map(LimitKey::Header)
            .unwrap_or(LimitKey::ClientIp),
        LimitKeyFile::User => header_name(p, Some("x-remote-user"))
            .map(LimitKey::User)
            .unwrap_or(LimitKey::ClientIp),
    };
    if l.cookie.is_some() && l.key != LimitKeyFile::Cookie {
        p.at(
            at(path!["cookie"]),
            "`cookie` only applies to `key: cookie`",
        );
    }
    if l.header.is_some() && !matches!(l.key, LimitKeyFile::Header | LimitKeyFile::User) {
        p.at(
            at(path!["header"]),
            "`header` only applies to `key: header` or `key: user`",
        );
    }
    let rate = match Rate::parse(&l.rate) {
        Ok(r) => Some(r),
        Err(e) => {
            p.at(at(path!["rate"]), e);
            None
        }
    };
    let burst = match l.burst {
        Some(0) => {
            p.at(
                at(path!["burst"]),
                "must be at least 1 (a burst of 0 would refuse everything)",
            );
            None
        }
        Some(b) => std::num::NonZeroU32::new(b),
        None => rate.and_then(|r| std::num::NonZeroU32::new(r.per_second().ceil().max(1.0) as u32)),
    };
    let ipv6_prefix = l.ipv6_prefix.unwrap_or(64);
    if ipv6_prefix > 128 {
        p.at(at(path!["ipv6_prefix"]), "must be between 0 and 128");
    }
    let ipv4_prefix = l.ipv4_prefix.unwrap_or(32);
    if ipv4_prefix > 32 {
        p.at(at(path!["ipv4_prefix"]), "must be between 0 and 32");
    }
    let max_keys = l.max_keys.unwrap_or(100_000) as usize;
    if max_keys < 16 {
        p.at(at(path!["max_keys"]), "must be at least 16");
    }
    let ex = l.exempt.clone().unwrap_or_default();
    let mut exempt_cidrs = Vec::new();
    for (k, s) in ex.cidrs.iter().enumerate() {
        match parse_cidr(s) {
            Some(n) => exempt_cidrs.push(n),
            None => p.at(
                at(path!["exempt", "cidrs", k]),
                format!("`{s}` is not a CIDR: {CIDR_HINT}"),
            ),
        }
    }
    let mut exempt_classes = Vec::new();
    for (k, c) in ex.classes.iter().enumerate() {
        match classes.iter().position(|x| &x.name == c) {
            Some(i) => exempt_classes.push(i),
            None => {
                let hint = crate::config::schema_check::did_you_mean(
                    c,
                    classes.iter().map(|x| x.name.as_str()),
                )
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
                p.at(
                    at(path!["exempt", "classes", k]),
                    format!("priority class `{c}` is not defined under `priority_classes`{hint}"),
                );
            }
        }
    }
    let (rate, burst) = (rate?, burst?);
    let fingerprint = format!(
        "{:?}|{}|{}|{}|{}|{}",
        key, l.rate, burst, ipv4_prefix, ipv6_prefix, max_keys
    );
    let limiter = ctx
        .registry
        .limiters
        .get_or_new(route, &name, &fingerprint, || {
            KeyedLimiter::new(
                rate,
                burst,
                max_keys.max(16),
                governor::clock::QuantaClock::default(),
            )
        });
    Some(RouteLimit {
        metrics: LimitMetrics::new(route, &name),
        name,
        key,
        dry_run: l.mode.unwrap_or_default() == LimitModeFile::DryRun,
        exempt_cidrs,
        exempt_classes,
        ipv4_prefix: ipv4_prefix.min(32),
        ipv6_prefix: ipv6_prefix.min(128),
        limiter,
        fingerprint,
    })
}
