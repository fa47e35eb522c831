//! `routes`: the compiled route table (matcher, origin, limits, room, cache, bodies).

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use super::cache::build_route_cache;
use super::context::{opt_duration, valid_name, BuildContext, Problems};
use super::limits::{build_limit, RouteLimit};
use super::origins::Origin;
use super::paths::{check_prefix, paths_of, policy_key_of};
use crate::config::file::{FileConfig, RouteFile};
use crate::config::tree::Seg;
use crate::config::units::parse_size;
use crate::path;
use crate::policy::cache_rules::{CacheStorage, RouteCache};
use crate::policy::classes::PriorityClass;
use crate::policy::route::{HostPattern, Matcher, Routable, Router};
use crate::waiting_room::Room;

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub index: usize,
    pub matcher: Matcher,
    pub origin: Arc<Origin>,
    pub metrics: RouteMetrics,
    pub limits: Vec<RouteLimit>,
    /// Send `RateLimit` headers on admitted responses too.
    pub rate_limit_headers: bool,
    pub room: Option<Arc<Room>>,
    pub feature: Option<String>,
    pub cache: Option<RouteCache>,
    /// Largest request body, in bytes; 0 = no limit.
    pub max_body_size: u64,
    /// Read the whole body before taking an origin slot (`request_buffering`).
    pub buffer_body: bool,
    /// The whole exchange (`total_timeout` of the route, else of the origin), when set.
    pub total_limit: Option<Duration>,
}

impl Routable for Route {
    fn matcher(&self) -> &Matcher {
        &self.matcher
    }
}

/// Per-route metric handles, resolved once at load.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Indexed by [`crate::metrics::status_class`].
    pub by_class: [IntCounter; 6],
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> RouteMetrics {
        let m = crate::metrics::get();
        let c = |i: usize| {
            m.requests
                .with_label_values(&[route, crate::metrics::STATUS_CLASSES[i]])
        };
        RouteMetrics {
            by_class: [c(0), c(1), c(2), c(3), c(4), c(5)],
            duration: m.request_duration.with_label_values(&[route]),
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site; each input is a distinct part of the file
pub(super) fn build_routes(
    p: &mut Problems,
    routes: &[RouteFile],
    origins: &[Arc<Origin>],
    file: &FileConfig,
    classes: &[PriorityClass],
    rooms: &[Arc<Room>],
    cache: &CacheStorage,
    ctx: &BuildContext,
    default_body_size: u64,
) -> Router<Route> {
    let mut built: Vec<Route> = Vec::new();
    if routes.is_empty() {
        p.at(path!["routes"], "needs at least one route");
    }
    for (i, r) in routes.iter().enumerate() {
        let base = path!["routes", i];
        let at = |extra: Vec<Seg>| {
            let mut v = base.clone();
            v.extend(extra);
            v
        };
        if !valid_name(&r.name) {
            p.at(
                at(path!["name"]),
                format!("`{}`: route names use letters, digits, `_` and `-` (they become metric labels)", r.name),
            );
        }
        if let Some(j) = routes[..i].iter().position(|o| o.name == r.name) {
            p.at(
                at(path!["name"]),
                format!("route name `{}` is already used by routes[{j}]", r.name),
            );
        }
        let origin = origins.iter().find(|o| o.name == r.origin).cloned();
        if origin.is_none() && !file.origins.contains_key(&r.origin) {
            let hint = crate::config::schema_check::did_you_mean(
                &r.origin,
                file.origins.keys().map(String::as_str),
            )
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
            p.at(
                at(path!["origin"]),
                format!("origin `{}` is not defined under `origins`{hint}", r.origin),
            );
        }

        let m = &r.matcher;
        let mut hosts: Vec<HostPattern> = Vec::new();
        let mut host_list: Vec<(String, Vec<Seg>)> = Vec::new();
        if let Some(h) = &m.host {
            host_list.push((h.clone(), at(path!["match", "host"])));
        }
        if let Some(hs) = &m.hosts {
            if hs.is_empty() {
                p.at(
                    at(path!["match", "hosts"]),
                    "is empty: remove it to match any host",
                );
            }
            for (k, h) in hs.iter().enumerate() {
                host_list.push((h.clone(), at(path!["match", "hosts", k])));
            }
        }
        for (h, hp) in host_list {
            match HostPattern::parse(&h) {
                Ok(pat) => hosts.push(pat),
                Err(e) => p.at(hp, e),
            }
        }
        let prefix = m.path_prefix.clone().unwrap_or_else(|| "/".to_string());
        check_prefix(
            p,
            at(path!["match", "path_prefix"]),
            &prefix,
            &paths_of(file),
        );
        let mut methods = Vec::new();
        if let Some(ms) = &m.methods {
            for (k, name) in ms.iter().enumerate() {
                match http::Method::from_bytes(name.as_bytes()) {
                    Ok(mm) if name.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(mm),
                    _ => p.at(
                        at(path!["match", "methods", k]),
                        format!("`{name}` is not an HTTP method: write it in capitals, like `GET`"),
                    ),
                }
            }
        }
        let matcher = Matcher::new(
            if hosts.is_empty() { None } else { Some(hosts) },
            // Compared with the request's policy path (case folded…): `/Visio/` and
            // `/VISIO/room` meet the same route.
            policy_key_of(&prefix),
            if m.methods.is_some() {
                Some(methods)
            } else {
                None
            },
        );
        // A route that an earlier one always takes first can never match: it is a
        // mistake (usually a `/` catch-all placed too early).
        if let Some(shadow) = built.iter().find(|e| e.matcher.covers(&matcher)) {
            p.at(
                at(path!["match"]),
                format!(
                    "route `{}` can never match: routes[{}] (`{}`) comes first and takes every request it would; move it above",
                    r.name, shadow.index, shadow.name
                ),
            );
        }
        let room = match &r.waiting_room {
            None => None,
            Some(name) => {
                match rooms.iter().find(|x| &x.name == name) {
                    Some(x) => Some(x.clone()),
                    None => {
                        if !file.waiting_rooms.contains_key(name) {
                            let hint = crate::config::schema_check::did_you_mean(
                                name,
                                file.waiting_rooms.keys().map(String::as_str),
                            )
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                            p.at(
                            at(path!["waiting_room"]),
                            format!("waiting room `{name}` is not defined under `waiting_rooms`{hint}"),
                        );
                        }
                        None
                    }
                }
            }
        };
        let mut limits = Vec::new();
        let mut taken = Vec::new();
        for (k, l) in r.rate_limits.iter().enumerate() {
            let lat = |extra: Vec<Seg>| {
                let mut v = at(path!["rate_limits", k]);
                v.extend(extra);
                v
            };
            if let Some(rl) = build_limit(p, &r.name, &lat, l, classes, ctx, &mut taken) {
                limits.push(rl);
            }
        }
        let route_cache = r
            .cache
            .as_ref()
            .map(|c| build_route_cache(p, c, cache, &at));
        let max_body_size = match &r.max_body_size {
            None => default_body_size,
            Some(s) => parse_size(&s.0).unwrap_or_else(|e| {
                p.at(at(path!["max_body_size"]), e);
                default_body_size
            }),
        };
        if let Some(origin) = origin {
            built.push(Route {
                name: r.name.clone(),
                index: i,
                matcher,
                metrics: RouteMetrics::new(&r.name),
                limits,
                rate_limit_headers: r.rate_limit_headers.unwrap_or(false),
                room: room.clone(),
                feature: r.feature.clone(),
                cache: route_cache,
                max_body_size,
                buffer_body: r.request_buffering.unwrap_or(true),
                total_limit: opt_duration(p, &r.total_timeout, at(path!["total_timeout"]))
                    .or(origin.total_limit),
                origin,
            });
        }
    }
    Router::new(built)
}
