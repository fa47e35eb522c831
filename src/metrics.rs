//! Every metric ecluse exports. Handles are created once here (or once per route/origin at
//! config load, see `config::runtime`), never looked up by label on the request path.
//! All names start with `ecluse_`; labels are bounded: route, origin and server names come
//! from the config, status is a class (`2xx`), never a raw path, IP or user id.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::sync::OnceLock;

pub struct Metrics {
    pub registry: Registry,
    /// Requests answered, by route and status class.
    pub requests: IntCounterVec,
    /// Time from the request head to the end of the response, by route.
    pub request_duration: HistogramVec,
    /// Requests in flight to each origin.
    pub origin_inflight: IntGaugeVec,
    /// Failed exchanges with an origin, by kind (`connect`, `timeout`, `read`, `5xx`, …).
    pub origin_errors: IntCounterVec,
    /// Requests sent again to an origin after a safe-to-retry failure.
    pub origin_retries: IntCounterVec,
    /// Requests refused before reaching an origin, by reason.
    pub origin_rejected: IntCounterVec,
    /// 1 when a server is in rotation (healthy and not ejected), else 0.
    pub origin_server_up: IntGaugeVec,
    /// Always 1, without labels: every instance exports it (dashboards list instances
    /// by it). Which config runs is in `config_hash` and `config_version`: numbers, so a
    /// reload changes a value instead of adding a series.
    pub config_info: IntGauge,
    /// The running config's hash (its first 13 hex digits, 52 bits: exact in a float).
    pub config_hash: Gauge,
    /// The running config's version (1 at start, +1 per successful reload).
    pub config_version: IntGauge,
    /// Reload attempts by result (`ok`, `error`, `unchanged`).
    pub config_reloads: IntCounterVec,
    /// Unix time of the last successful config load.
    pub config_last_reload_success: Gauge,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
    /// Rate-limit decisions by route, limit and result.
    pub ratelimit_decisions: IntCounterVec,
    /// Keys currently remembered per limit.
    pub ratelimit_keys: IntGaugeVec,
    /// Keys forgotten at the `max_keys` cap to make room for new ones.
    pub ratelimit_evictions: IntCounterVec,
    pub room_waiting: IntGaugeVec,
    pub room_active: IntGaugeVec,
    pub room_capacity: IntGaugeVec,
    pub room_frontier: IntGaugeVec,
    /// `active_users: auto`: the capacity the room sized itself to.
    pub room_auto_capacity: IntGaugeVec,
    /// `new_users_per_minute: auto`: the pace the room sized itself to.
    pub room_auto_pace: IntGaugeVec,
    /// Changes of the automatic numbers by reason (a fixed set).
    pub room_auto_changes: IntCounterVec,
    pub room_estimated_wait: prometheus::GaugeVec,
    pub room_admitted: IntCounterVec,
    pub room_abandoned: IntCounterVec,
    pub room_issued: IntCounterVec,
    pub room_direct: IntCounterVec,
    pub room_rejected_tickets: IntCounterVec,
    pub degradation_level: IntGauge,
    pub degradation_level_info: IntGaugeVec,
    pub feature_enabled: IntGaugeVec,
    /// Connections closed because their feature was switched off (after its `drain`).
    pub feature_drained: IntCounterVec,
    pub degradation_changes: IntCounterVec,
    pub feature_changes: IntCounterVec,
    pub shed: IntCounterVec,
    pub origin_concurrency_limit: IntGaugeVec,
    /// The configured hard maximum of requests in flight (`max_inflight`).
    pub origin_max_inflight: IntGaugeVec,
    pub origin_latency_p95: prometheus::GaugeVec,
    pub origin_error_ratio: prometheus::GaugeVec,
    pub origin_inflight_ratio: prometheus::GaugeVec,
    /// Client keys left out of an origin's signals as outliers (one client steering).
    pub origin_signal_outliers: prometheus::GaugeVec,
    /// Client requests currently being processed by the proxy.
    pub inflight_requests: IntGauge,
    /// Client connections open on the proxy listeners.
    pub client_connections: IntGauge,
    /// Client connections refused at the connection caps, by reason.
    pub client_connections_refused: IntCounterVec,
    /// Client connections closed for being too slow, by phase (`header`, `body`).
    pub client_timeouts: IntCounterVec,
    /// Queue-status polls answered, by layer (`connection`: below pingora; `http`).
    pub status_polls: IntCounterVec,
    /// Request bodies by outcome (`memory`, `disk`, `streamed`, `too_large`,
    /// `length_required`, `no_space`).
    pub request_bodies: IntCounterVec,
    /// Bytes of request bodies buffered on disk now.
    pub request_body_disk_bytes: IntGauge,
    pub request_body_memory_bytes: IntGauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone())).expect("unique metric name");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("unique metric name");
    g
}

/// Reasons of `ecluse_client_connections_refused_total` (`proxy::conn_guard`).
pub const CONNECTIONS_REFUSED_REASONS: [&str; 3] = [
    "max_connections",
    "max_connections_per_ip",
    "proxy_protocol",
];

/// Phases of `ecluse_client_timeouts_total`.
pub const CLIENT_TIMEOUT_PHASES: [&str; 6] = [
    "handshake",
    "header",
    "body",
    "send",
    "tunnel_idle",
    "tunnel_lifetime",
];

/// The process's own figures (open and maximum file descriptors, resident and virtual
/// memory, CPU seconds, start time, threads) as `ecluse_process_*`, read from /proc at
/// each scrape by the prometheus crate's collector. Linux only, like the collector.
fn process_metrics(r: &Registry) {
    #[cfg(target_os = "linux")]
    {
        // `for_self` has no namespace: the same collector, under ours (every metric name
        // starts with `ecluse_`).
        let pid = std::process::id() as i32;
        let pc = prometheus::process_collector::ProcessCollector::new(pid, "ecluse");
        if let Err(e) = r.register(Box::new(pc)) {
            log::error!("process metrics unavailable: {e}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = r;
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        // Computed at each scrape from the certificates being served (crate::tls).
        r.register(Box::new(crate::tls::ExpiryCollector::new()))
            .expect("static metric definition");
        let requests = counter_vec(
            &r,
            "ecluse_requests_total",
            "Requests answered by ecluse, by route and status class.",
            &["route", "status_class"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "ecluse_request_duration_seconds",
                "Time from the request head to the end of the response, by route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("static metric definition");
        r.register(Box::new(request_duration.clone()))
            .expect("unique metric name");
        let origin_inflight = gauge_vec(
            &r,
            "ecluse_origin_inflight",
            "Requests in flight to each origin.",
            &["origin"],
        );
        let origin_errors = counter_vec(
            &r,
            "ecluse_origin_errors_total",
            "Failed exchanges with an origin, by kind.",
            &["origin", "kind"],
        );
        let origin_retries = counter_vec(
            &r,
            "ecluse_origin_retries_total",
            "Requests sent again after a failure that was safe to retry.",
            &["origin"],
        );
        let origin_rejected = counter_vec(
            &r,
            "ecluse_origin_rejected_total",
            "Requests answered by ecluse without reaching the origin, by reason.",
            &["origin", "reason"],
        );
        let origin_server_up = gauge_vec(
            &r,
            "ecluse_origin_server_up",
            "1 when the server is in rotation (healthy, not ejected), else 0.",
            &["origin", "server"],
        );
        let config_info = IntGauge::new(
            "ecluse_config_info",
            "Always 1: this instance runs (ecluse_config_hash and ecluse_config_version say which config).",
        )
        .expect("static metric definition");
        r.register(Box::new(config_info.clone()))
            .expect("unique metric name");
        config_info.set(1);
        let config_hash = Gauge::new(
            "ecluse_config_hash",
            "The running config's hash: its first 13 hex digits (GET /admin/state shows all 16) read as a number.",
        )
        .expect("static metric definition");
        r.register(Box::new(config_hash.clone()))
            .expect("unique metric name");
        let config_version = IntGauge::new(
            "ecluse_config_version",
            "The running config's version: 1 at start, one more per successful reload.",
        )
        .expect("static metric definition");
        r.register(Box::new(config_version.clone()))
            .expect("unique metric name");
        process_metrics(&r);
        let build_info = gauge_vec(
            &r,
            "ecluse_build_info",
            "Always 1; labels carry the version and the git commit ecluse was built from.",
            &["version", "commit"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("ECLUSE_COMMIT")])
            .set(1);
        let config_reloads = counter_vec(
            &r,
            "ecluse_config_reloads_total",
            "Config load attempts after startup, by result.",
            &["result"],
        );
        let config_last_reload_success = Gauge::new(
            "ecluse_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )
        .expect("static metric definition");
        r.register(Box::new(config_last_reload_success.clone()))
            .expect("unique metric name");
        let access_log_dropped = IntCounter::new(
            "ecluse_access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        )
        .expect("static metric definition");
        r.register(Box::new(access_log_dropped.clone()))
            .expect("unique metric name");
        let inflight_requests = IntGauge::new(
            "ecluse_inflight_requests",
            "Client requests being processed by the proxy.",
        )
        .expect("static metric definition");
        r.register(Box::new(inflight_requests.clone()))
            .expect("unique metric name");
        let client_connections = IntGauge::new(
            "ecluse_client_connections",
            "Client connections open on the proxy listeners.",
        )
        .expect("static metric definition");
        r.register(Box::new(client_connections.clone()))
            .expect("unique metric name");
        let client_connections_refused = counter_vec(
            &r,
            "ecluse_client_connections_refused_total",
            "Client connections refused at a connection cap (max_connections, max_connections_per_ip).",
            &["reason"],
        );
        let client_timeouts = counter_vec(
            &r,
            "ecluse_client_timeouts_total",
            "Client connections closed for being too slow, by phase (handshake: TLS handshake past the head deadline; header: head deadline; body: minimum body rate; send: reading the response slower than send_timeout/send_min_rate allow; tunnel_idle: an upgraded connection idle past tunnel_idle_timeout; tunnel_lifetime: past tunnel_max_lifetime).",
            &["phase"],
        );
        let status_polls = counter_vec(
            &r,
            "ecluse_queue_status_polls_total",
            "Queue-status polls answered, by layer: connection (a whole poll on a kept-alive HTTP/1.1 connection, answered before pingora's HTTP layer) or http (every other poll).",
            &["layer"],
        );
        // Every label value these take exists at 0 from the start (documented as such):
        // an alert on `increase(...)` sees the first event, a dashboard sees 0, not nothing.
        for reason in CONNECTIONS_REFUSED_REASONS {
            client_connections_refused.with_label_values(&[reason]);
        }
        for phase in CLIENT_TIMEOUT_PHASES {
            client_timeouts.with_label_values(&[phase]);
        }
        for layer in ["connection", "http"] {
            status_polls.with_label_values(&[layer]);
        }
        let request_bodies = counter_vec(
            &r,
            "ecluse_request_bodies_total",
            "Request bodies by outcome: memory or disk (buffered whole before the origin slot), streamed (request_buffering off), too_large (413), length_required (411: no length and more than pingora can replay), no_space (503: neither max_memory nor max_disk had room), client_cap (503: the client's address held max_per_client already), error (503: the temporary file could not be written).",
            &["outcome"],
        );
        // Every outcome is a series from the start, at 0: alerts on a rate see the first one.
        for o in REQUEST_BODY_OUTCOMES {
            request_bodies.with_label_values(&[o]);
        }
        let request_body_disk_bytes = IntGauge::new(
            "ecluse_request_body_disk_bytes",
            "Bytes of request bodies buffered on disk now, claimed as they arrive (bounded by server.request_bodies.max_disk).",
        )
        .expect("static metric definition");
        r.register(Box::new(request_body_disk_bytes.clone()))
            .expect("unique metric name");
        let request_body_memory_bytes = IntGauge::new(
            "ecluse_request_body_memory_bytes",
            "Bytes of memory held by request bodies being buffered or sent now (buffer capacity; bounded by server.request_bodies.max_memory).",
        )
        .expect("static metric definition");
        r.register(Box::new(request_body_memory_bytes.clone()))
            .expect("unique metric name");
        let ratelimit_decisions = counter_vec(
            &r,
            "ecluse_ratelimit_decisions_total",
            "Rate-limit decisions by route, limit and result (allowed, limited, dry_run_limited, exempt).",
            &["route", "limit", "result"],
        );
        let ratelimit_keys = gauge_vec(
            &r,
            "ecluse_ratelimit_keys",
            "Distinct keys currently remembered by a rate limit.",
            &["route", "limit"],
        );
        let ratelimit_evictions = counter_vec(
            &r,
            "ecluse_ratelimit_evictions_total",
            "Keys forgotten at the max_keys cap to make room for new ones.",
            &["route", "limit"],
        );
        let room_waiting = gauge_vec(
            &r,
            "ecluse_room_waiting",
            "Tickets waiting in the room (including holders who may have left).",
            &["room"],
        );
        let room_active = gauge_vec(
            &r,
            "ecluse_room_active_users",
            "Admitted sessions active within the idle timeout.",
            &["room"],
        );
        let room_capacity = gauge_vec(
            &r,
            "ecluse_room_capacity_users",
            "The room's active_users capacity in force.",
            &["room"],
        );
        let room_auto_capacity = gauge_vec(
            &r,
            "ecluse_room_auto_capacity",
            "Sessions inside at once the room sized itself to from the guarded origin (active_users: auto).",
            &["room"],
        );
        let room_auto_pace = gauge_vec(
            &r,
            "ecluse_room_auto_pace",
            "Admissions per minute the room sized itself to from the guarded origin (new_users_per_minute: auto).",
            &["room"],
        );
        let room_auto_changes = counter_vec(
            &r,
            "ecluse_room_auto_changes_total",
            "Changes of a room's automatic capacity and pace, by reason (start, latency, errors, saturated, headroom, recovered, bounds).",
            &["room", "reason"],
        );
        let room_frontier = gauge_vec(
            &r,
            "ecluse_room_frontier",
            "Admission frontier of the default queue (tickets at or below it may enter).",
            &["room"],
        );
        let room_estimated_wait = prometheus::GaugeVec::new(
            Opts::new(
                "ecluse_room_estimated_wait_seconds",
                "Estimated wait of the last ticket in the room (-1 while unknown).",
            ),
            &["room"],
        )
        .expect("static metric definition");
        r.register(Box::new(room_estimated_wait.clone()))
            .expect("unique metric name");
        let room_admitted = counter_vec(
            &r,
            "ecluse_room_admitted_total",
            "Tickets admitted (frontier advances and direct admissions).",
            &["room"],
        );
        let room_abandoned = counter_vec(
            &r,
            "ecluse_room_abandoned_total",
            "Admissions never claimed: the ticket holder had left.",
            &["room"],
        );
        let room_issued = counter_vec(
            &r,
            "ecluse_room_issued_total",
            "Tickets handed out to queued students.",
            &["room"],
        );
        let room_direct = counter_vec(
            &r,
            "ecluse_room_direct_total",
            "Sessions let in without queueing (spare capacity or bypass class).",
            &["room"],
        );
        let room_rejected_tickets = counter_vec(
            &r,
            "ecluse_room_rejected_tickets_total",
            "Room cookies refused, by room and reason (forged: altered, unknown key or unreadable; other_room; expired: past its timeout or a session that ended; reused: a copy of a ticket already used to get in).",
            &["room", "reason"],
        );
        let degradation_level = IntGauge::new(
            "ecluse_degradation_level",
            "Index of the degradation level in force (0 = the first, normal).",
        )
        .expect("static metric definition");
        r.register(Box::new(degradation_level.clone()))
            .expect("unique metric name");
        let degradation_level_info = gauge_vec(
            &r,
            "ecluse_degradation_level_info",
            "1 for the level in force, 0 for the others.",
            &["level"],
        );
        let feature_enabled = gauge_vec(
            &r,
            "ecluse_feature_enabled",
            "1 when the feature is on, 0 when switched off.",
            &["feature"],
        );
        let feature_drained = counter_vec(
            &r,
            "ecluse_feature_drained_connections_total",
            "Open connections (WebSocket tunnels, long responses, requests in flight) closed because their feature was switched off, after its drain grace.",
            &["feature"],
        );
        let degradation_changes = counter_vec(
            &r,
            "ecluse_degradation_changes_total",
            "Level changes, automatic or forced.",
            &["from", "to", "cause"],
        );
        let feature_changes = counter_vec(
            &r,
            "ecluse_feature_changes_total",
            "Features forced on or off by ops.",
            &["feature", "cause"],
        );
        let shed = counter_vec(&r, "ecluse_shed_requests_total", "Requests refused to protect an origin, by reason (feature_off, concurrency) and priority class.", &["origin", "reason", "class"]);
        let origin_concurrency_limit = gauge_vec(
            &r,
            "ecluse_origin_concurrency_limit",
            "Adaptive concurrency limit of the origin.",
            &["origin"],
        );
        let origin_max_inflight = gauge_vec(
            &r,
            "ecluse_origin_max_inflight",
            "Configured hard maximum of requests in flight to the origin (max_inflight).",
            &["origin"],
        );
        let gv = |name: &str, help: &str| {
            let g = prometheus::GaugeVec::new(Opts::new(name, help), &["origin"])
                .expect("static metric definition");
            r.register(Box::new(g.clone())).expect("unique metric name");
            g
        };
        let origin_latency_p95 = gv(
            "ecluse_origin_latency_p95_seconds",
            "95th percentile latency of the origin over the last 10 s (degradation signal).",
        );
        let origin_error_ratio = gv(
            "ecluse_origin_error_ratio",
            "Share of failed exchanges with the origin over the last 10 s (degradation signal).",
        );
        let origin_inflight_ratio = gv(
            "ecluse_origin_inflight_ratio",
            "In-flight requests over max_inflight (degradation signal).",
        );
        let origin_signal_outliers = gv(
            "ecluse_origin_signal_outliers",
            "Client keys (hashed addresses) left out of the origin's degradation signals for failing, being slow or holding requests far beyond the rest of the traffic.",
        );
        Metrics {
            registry: r,
            degradation_level,
            degradation_level_info,
            feature_enabled,
            feature_drained,
            degradation_changes,
            feature_changes,
            shed,
            origin_concurrency_limit,
            origin_max_inflight,
            origin_latency_p95,
            origin_error_ratio,
            origin_inflight_ratio,
            origin_signal_outliers,
            room_waiting,
            room_active,
            room_capacity,
            room_auto_capacity,
            room_auto_pace,
            room_auto_changes,
            room_frontier,
            room_estimated_wait,
            room_admitted,
            room_abandoned,
            room_issued,
            room_direct,
            room_rejected_tickets,
            ratelimit_decisions,
            ratelimit_keys,
            ratelimit_evictions,
            requests,
            request_duration,
            origin_inflight,
            origin_errors,
            origin_retries,
            origin_rejected,
            origin_server_up,
            config_info,
            config_hash,
            config_version,
            config_reloads,
            config_last_reload_success,
            access_log_dropped,
            inflight_requests,
            client_connections,
            client_connections_refused,
            client_timeouts,
            status_polls,
            request_bodies,
            request_body_disk_bytes,
            request_body_memory_bytes,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// A `'static` copy of a label value from the config (class names), leaked once per
/// distinct value: bounded by the names ops write.
pub fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        OnceLock::new();
    let mut set = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(v) = set.get(s) {
        return v;
    }
    let v: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(v);
    v
}

/// The process-wide metrics, created on first use.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// The status-class label value for a status code (`0` when no response was sent).
pub fn status_class(code: u16) -> usize {
    match code {
        100..=199 => 1,
        200..=299 => 2,
        300..=399 => 3,
        400..=499 => 4,
        500..=599 => 5,
        _ => 0,
    }
}

/// The `outcome` values of `ecluse_request_bodies_total`.
pub const REQUEST_BODY_OUTCOMES: [&str; 8] = [
    "memory",
    "disk",
    "streamed",
    "too_large",
    "length_required",
    "no_space",
    "client_cap",
    "error",
];

/// Label values matching [`status_class`] indices.
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];
