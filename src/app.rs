//! Process-wide state shared by the proxy, the admin API and background tasks: the live
//! config (one `ArcSwap`), upstream state, the access log, and the reload procedure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::access_log::AccessLogger;
use crate::config::{self, Config, LoadError};

pub struct App {
    config: ArcSwap<Config>,
    pub registry: crate::config::runtime::Retained,
    /// The degradation level and switched-off features (outlives every config).
    pub degrade: crate::degrade::DegradeState,
    pub access_log: AccessLogger,
    pub config_path: PathBuf,
    version: AtomicU64,
    /// Serialises reloads: two triggers at once (file watch + SIGHUP) build one after the other.
    reload_lock: Mutex<()>,
    /// Set on SIGTERM: `/readyz` answers 503 so load balancers move away while we drain.
    pub draining: AtomicBool,
    pub started: Instant,
    /// Set by the readiness probe once the proxy listener accepted a connection.
    pub proxy_ready: AtomicBool,
    /// The proxy addresses actually bound (port 0 resolved), set once at startup.
    pub bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// The TLS listeners among `bound`: cache warming reaches a TLS-only ecluse through
    /// them, trusting exactly the certificates they present (`crate::tls::serving`).
    pub tls_bound: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// The cache store and lock, opened once by `server::build` (storage settings need a
    /// restart to change).
    pub cache: std::sync::OnceLock<crate::cache::Cache>,
    /// Random per-process secret marking the admin API's cache-warming requests to the
    /// proxy (they skip rate limits and the waiting room). Never printed.
    pub warm_token: String,
    /// Fleet mode (`cluster:` in the file), fixed at start.
    pub fleet: Option<Arc<crate::cluster::fleet::Fleet>>,
}

/// What a successful reload changed that only a restart can apply.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadOutcome {
    pub version: u64,
    pub hash: String,
    pub changed: bool,
    /// Settings that changed in the file but keep their old value until a restart.
    pub restart_required: Vec<&'static str>,
}

impl App {
    /// Load the config at startup. Errors here stop the process (there is nothing to keep).
    pub fn new(path: &Path) -> Result<Arc<App>, LoadError> {
        let registry = crate::config::runtime::Retained::default();
        let cfg = config::load_file(path, &registry, 1)?;
        let access_log = AccessLogger::start(cfg.access_log.target.clone());
        publish_metrics(&cfg);
        registry.limiters.publish(live_limiters(&cfg));
        let degrade = crate::degrade::DegradeState::default();
        apply_degradation(&degrade, &cfg);
        let fleet = cfg
            .cluster
            .clone()
            .map(|s| Arc::new(crate::cluster::fleet::Fleet::new(s)));
        if let Some(f) = &fleet {
            // Each route's share as it stands before the first sync, so the series
            // exists from the start (the first sync refines it).
            f.publish_initial_shares(&cfg);
        }
        Ok(Arc::new(App {
            config: ArcSwap::from_pointee(cfg),
            registry,
            degrade,
            access_log,
            config_path: path.to_path_buf(),
            version: AtomicU64::new(1),
            reload_lock: Mutex::new(()),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            proxy_ready: AtomicBool::new(false),
            bound: std::sync::OnceLock::new(),
            tls_bound: std::sync::OnceLock::new(),
            cache: std::sync::OnceLock::new(),
            warm_token: hex::encode(rand::random::<[u8; 16]>()),
            fleet,
        }))
    }

    /// Purge the cache here and, in fleet mode, on every node.
    pub fn purge(&self, scope: &crate::cache::PurgeScope, kind: &str) -> usize {
        let Some(cache) = self.cache.get() else {
            return 0;
        };
        let n = cache.purge(scope, kind);
        if let Some(f) = &self.fleet {
            f.broadcast_purge(scope, kind);
        }
        n
    }

    /// The running config. One atomic load; hold the `Arc` for the whole request so that
    /// a reload never changes the rules under an in-flight request.
    #[inline]
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Re-read the file, validate it, and publish it with one `ArcSwap::store`. On error
    /// the running config stays, the diagnostics are logged, and the failure is counted.
    /// Blocking (file I/O, DNS): call it from a blocking context.
    pub fn reload(&self, trigger: &str) -> Result<ReloadOutcome, LoadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let m = crate::metrics::get();
        let next_version = self.version.load(Ordering::Relaxed) + 1;
        match config::load_file(&self.config_path, &self.registry, next_version) {
            Ok(new) => {
                let old = self.config.load_full();
                // Certificates renewed under the same file names change the material,
                // not the policy file: compared apart.
                if new.hash == old.hash && tls_material_same(&new, &old) {
                    m.config_reloads.with_label_values(&["unchanged"]).inc();
                    log::info!("reload ({trigger}): file unchanged (hash {})", old.hash);
                    return Ok(ReloadOutcome {
                        version: old.version,
                        hash: old.hash.clone(),
                        changed: false,
                        restart_required: vec![],
                    });
                }
                let mut restart_required = Vec::new();
                if new.listen != old.listen
                    || new.listen_proxy_protocol != old.listen_proxy_protocol
                {
                    restart_required.push("listen");
                }
                match (&new.tls, &old.tls) {
                    (Some(n), Some(o)) => {
                        if n.listen != o.listen
                            || n.listen_proxy_protocol != o.listen_proxy_protocol
                        {
                            restart_required.push("tls.listen");
                        }
                        if n.http2 != o.http2 {
                            restart_required.push("tls.http2");
                        }
                    }
                    (None, None) => {}
                    _ => restart_required.push("tls"),
                }
                if new.admin.listen != old.admin.listen {
                    restart_required.push("admin.listen");
                }
                if new.server.threads != old.server.threads {
                    restart_required.push("server.threads");
                }
                if new.server.upgrade_sock != old.server.upgrade_sock {
                    restart_required.push("server.upgrade_sock");
                }
                if new.server.upstream_keepalive_pool != old.server.upstream_keepalive_pool {
                    restart_required.push("server.upstream_keepalive_pool");
                }
                if new.cache != old.cache {
                    restart_required.push("cache");
                }
                if new.cluster != old.cluster {
                    restart_required.push("cluster");
                }
                if !restart_required.is_empty() {
                    log::warn!(
                        "reload ({trigger}): {} changed; the new values apply after a restart",
                        restart_required.join(", ")
                    );
                }
                if let Some(b) = self.registry.admin_bound.get() {
                    if new.admin.token.is_none()
                        && new.admin.insecure_open_network
                        && !crate::config::runtime::is_loopback(b.ip())
                    {
                        log::warn!(
                            "INSECURE: reload ({trigger}): the admin API on {b} has no token (admin.insecure_open_admin_network: true): anyone who reaches this address can pause the waiting room, force a degradation level or purge the cache"
                        );
                    }
                }
                self.access_log.set_target(&new.access_log.target);
                let outcome = ReloadOutcome {
                    version: new.version,
                    hash: new.hash.clone(),
                    changed: true,
                    restart_required,
                };
                // The disk tier's filesystem may have changed since start (the tier itself
                // needs a restart to change): say what a restart would find.
                if let Some((path, size)) = &new.cache.disk {
                    if let Ok(fit) = crate::cache::space::fit(path, *size) {
                        if let Some(msg) = crate::cache::space::describe(path, *size, &fit) {
                            log::warn!("reload ({trigger}): {msg}");
                        }
                    }
                }
                publish_metrics(&new);
                if let Some(c) = self.cache.get() {
                    c.init_series(&new);
                }
                // A reload sets capacity from the file again.
                for room in &new.rooms {
                    *room
                        .shared
                        .overrides
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) =
                        crate::waiting_room::Overrides::default();
                }
                self.registry.limiters.publish(live_limiters(&new));
                apply_degradation(&self.degrade, &new);
                self.version.store(next_version, Ordering::Relaxed);
                if let (Some(t), Some(_)) = (&new.tls, crate::tls::serving()) {
                    // New handshakes present the renewed certificates; open connections
                    // keep the session they negotiated.
                    crate::tls::serve(t.certs.clone());
                }
                self.config.store(Arc::new(new));
                m.config_reloads.with_label_values(&["ok"]).inc();
                log::info!(
                    "reload ({trigger}): config version {} (hash {}) is live",
                    outcome.version,
                    outcome.hash
                );
                Ok(outcome)
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["error"]).inc();
                log::error!(
                    "reload ({trigger}) failed, keeping config version {}:\n{e}",
                    self.version.load(Ordering::Relaxed)
                );
                Err(e)
            }
        }
    }
}

fn apply_degradation(state: &crate::degrade::DegradeState, cfg: &Config) {
    match &cfg.degradation {
        Some(d) => state.apply_config(d),
        None => state.publish(
            &crate::policy::degrade::Degradation {
                levels: Vec::new(),
                hold: std::time::Duration::from_secs(30),
                force_level: None,
                force_features: Vec::new(),
                messages: Default::default(),
                features: Vec::new(),
            },
            crate::clock::now_ms(),
        ),
    }
}

/// Every rate limiter of a config, for the registry that keeps unchanged buckets.
fn live_limiters(cfg: &Config) -> Vec<crate::policy::rate_limit::LiveLimiter> {
    let mut v: Vec<crate::policy::rate_limit::LiveLimiter> = cfg
        .router
        .routes()
        .iter()
        .flat_map(|r| {
            r.limits.iter().map(move |l| {
                (
                    (r.name.clone(), l.name.clone()),
                    l.fingerprint.clone(),
                    l.limiter.clone(),
                )
            })
        })
        .collect();
    for room in &cfg.rooms {
        v.push((
            (format!("room:{}", room.name), "tickets".to_string()),
            room.ticket_fingerprint.clone(),
            room.ticket_limiter.clone(),
        ));
    }
    v
}

/// Forget idle rate-limit keys and refresh the key-count gauges. Called every few seconds.
pub fn sweep_limiters(cfg: &Config) {
    for r in cfg.router.routes() {
        for l in &r.limits {
            l.limiter.sweep();
            let store = l.limiter.store();
            l.metrics.keys.set(store.len() as i64);
            let ev = store.evictions() as u64;
            let seen = l.metrics.evictions.get();
            if ev > seen {
                l.metrics.evictions.inc_by(ev - seen);
            }
        }
    }
}

/// Whether the TLS files (listener certificates, origins' CA and client certificates)
/// read by two loads are the same bytes.
fn tls_material_same(a: &Config, b: &Config) -> bool {
    let listener = match (&a.tls, &b.tls) {
        (Some(x), Some(y)) => x.certs == y.certs,
        (None, None) => true,
        _ => false,
    };
    let digests = |c: &Config| -> Vec<Option<[u8; 32]>> {
        c.origins
            .iter()
            .map(|o| o.tls_client.as_ref().map(|t| t.digest))
            .collect()
    };
    listener && digests(a) == digests(b)
}

fn publish_metrics(new: &Config) {
    let m = crate::metrics::get();
    m.config_hash.set(hash_number(&new.hash));
    m.config_version.set(new.version as i64);
    let now = crate::clock::unix_secs_f64(SystemTime::now());
    m.config_last_reload_success.set(now);
    init_series(new);
}

/// The config hash as a gauge value: its first 13 hex digits (52 bits, exact in an f64).
fn hash_number(hash: &str) -> f64 {
    let head = hash.get(..13).unwrap_or(hash);
    u64::from_str_radix(head, 16)
        .map(|n| n as f64)
        .unwrap_or(0.0)
}

/// Create every bounded series the config implies at 0, so dashboards and alerts see a
/// value (and `rate`/`increase` see the first event) before anything happened.
fn init_series(cfg: &Config) {
    let m = crate::metrics::get();
    for r in ["ok", "error", "unchanged"] {
        m.config_reloads.with_label_values(&[r]);
    }
    for o in &cfg.origins {
        if let Some(max) = o.max_inflight {
            m.origin_max_inflight
                .with_label_values(&[&o.name])
                .set(max as i64);
            if o.adaptive.is_none() {
                // Without an adaptive limit, the limit in force is the hard maximum.
                m.origin_concurrency_limit
                    .with_label_values(&[&o.name])
                    .set(max as i64);
            }
        }
        for reason in ["feature_off", "concurrency"] {
            m.shed.with_label_values(&[&o.name, reason, "none"]);
        }
    }
    if let Some(d) = &cfg.degradation {
        // Automatic moves go one step at a time.
        for w in d.levels.windows(2) {
            m.degradation_changes
                .with_label_values(&[&w[0].name, &w[1].name, "auto"]);
            m.degradation_changes
                .with_label_values(&[&w[1].name, &w[0].name, "auto"]);
        }
        for f in &d.features {
            m.feature_changes.with_label_values(&[f, "forced"]);
            m.feature_changes.with_label_values(&[f, "expired"]);
        }
    }
}
