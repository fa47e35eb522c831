//! Assembling the process: pingora server, proxy listeners, the admin listener and the
//! background tasks (health checks, config file watch, SIGHUP), and running until a signal.
//!
//! Signals (pingora's): SIGTERM drains gracefully (readiness goes 503, listeners stay open
//! for `grace_period`, then in-flight requests get `shutdown_timeout`), SIGINT stops fast,
//! SIGQUIT hands the listening sockets to a new process started with `--upgrade`.
//! SIGHUP (ours) reloads the config.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::app::App;
use crate::proxy::EcluseProxy;

/// What `run` needs besides the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take the listening sockets over from a running ecluse (zero-downtime upgrade).
    pub upgrade: bool,
    /// Replace the admin listen address (demo, tests).
    pub admin_listen: Option<SocketAddr>,
    /// Replace the proxy listen addresses (demo, tests).
    pub listen: Option<Vec<SocketAddr>>,
}

/// Pingora binds its listeners inside its own runtime and does not report the port it
/// got, so a configured port 0 is resolved here first. Releasing a probe socket and
/// letting pingora bind later would leave a window in which another process (a test's
/// origin…) could take the port. Instead the probe socket stays bound, never listening,
/// with SO_REUSEPORT, and pingora binds the same port with SO_REUSEPORT too: nobody else
/// can get it, and only pingora's socket accepts. Explicit ports are bound by pingora
/// alone, without SO_REUSEPORT, so two ecluse started on one port fail loudly.
fn resolve_port_zero(addr: SocketAddr) -> std::io::Result<(SocketAddr, Option<socket2::Socket>)> {
    if addr.port() != 0 {
        return Ok((addr, None));
    }
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    // SO_REUSEPORT only after the bind: with it set before, Linux may pick for port 0 a
    // port another process already listens on with SO_REUSEPORT (same user), and the
    // two would then share its connections. Set afterwards, the port is a free one and
    // pingora's listener can still join this socket on it.
    s.bind(&addr.into())?;
    s.set_reuse_port(true)?;
    let bound = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
    Ok((bound, Some(s)))
}

/// Sockets held to reserve resolved port-0 addresses for the life of the process.
static HELD: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());

fn tcp_options(held: bool) -> pingora::listeners::TcpSocketOptions {
    let mut o = pingora::listeners::TcpSocketOptions::default();
    if held {
        o.so_reuseport = Some(true);
    }
    o
}

struct Control {
    app: Arc<App>,
    admin: Mutex<Option<StdListener>>,
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        let app = self.app.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        // Admin listener.
        if let Some(std_l) = self.admin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            match tokio::net::TcpListener::from_std(std_l) {
                Ok(l) => {
                    tokio::spawn(crate::admin::serve(app.clone(), l, stop_rx.clone()));
                }
                Err(e) => log::error!("admin listener unusable: {e}"),
            }
        }
        // Active health checks.
        tokio::spawn(crate::upstream::health::run(app.clone(), stop_rx.clone()));
        if app.fleet.is_some() {
            tokio::spawn(crate::cluster::run(app.clone(), stop_rx.clone()));
        }
        // Waiting rooms: admission ticks every 250 ms, snapshots every 2 s.
        {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let mut n: u64 = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let cfg = app.config();
                    let now = crate::rooms::now_ms();
                    // Fleet mode: the shared rooms tick in the fleet sync; the local room
                    // takes over (with its share of capacity) only while Redis is away.
                    match &app.fleet {
                        Some(f) if f.conn().is_some() => {}
                        Some(f) => {
                            let share = f.fallback_share();
                            for room in &cfg.rooms {
                                room.tick_share(now, share);
                                f.room(&room.name).mark_diverged();
                            }
                        }
                        None => {
                            for room in &cfg.rooms {
                                room.tick(now);
                            }
                        }
                    }
                    n += 1;
                    if n % 8 == 0 && !cfg.rooms.is_empty() {
                        let a = app.clone();
                        let dir = cfg.server.state_dir.clone();
                        let _ =
                            tokio::task::spawn_blocking(move || a.registry.rooms.snapshot(&dir))
                                .await;
                    }
                }
            });
        }
        // Degradation: measure, step the level, every 500 ms.
        {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = tick.tick() => crate::degrade::evaluate(&app.config(), &app.registry.degrade),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        // Adaptive concurrency limits, every 100 ms.
        {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => crate::degrade::adapt_limits(&app.config()),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        // Feature drains: close what is open on a switched-off feature after its grace.
        {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => crate::drain::tick(&app),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        // Forget idle rate-limit keys.
        {
            let app = app.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => crate::app::sweep_limiters(&app.config()),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        // Reload on SIGHUP.
        tokio::spawn(sighup_reloader(app.clone(), stop_rx.clone()));
        // Reload on file change.
        tokio::spawn(watch_file(app.clone(), stop_rx.clone()));
        // Draining: /readyz turns 503 as soon as a graceful stop begins.
        if let Some(mut phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let app = app.clone();
            tokio::spawn(async move {
                while let Ok(phase) = phases.recv().await {
                    let stopping = matches!(
                        phase,
                        ExecutionPhase::GracefulTerminate
                            | ExecutionPhase::GracefulUpgradeTransferringFds
                            | ExecutionPhase::ShutdownStarted
                    );
                    if stopping && !app.draining.swap(true, Ordering::Relaxed) {
                        log::info!("draining: /readyz now answers 503");
                    }
                }
            });
        }
        let mut shutdown = shutdown;
        let _ = shutdown.changed().await;
        // Graceful stop: readiness turns 503 at once. The admin listener, health checks and
        // reload triggers keep running until the runtime is torn down at exit, so ops can
        // still watch the drain.
        app.draining.store(true, Ordering::Relaxed);
        // Save the rooms now: a restart must not send everyone to the back.
        let dir = app.config().server.state_dir.clone();
        app.registry.rooms.snapshot(&dir);
        drop(stop_rx);
        std::future::pending::<()>().await;
        drop(stop_tx);
    }
}

async fn sighup_reloader(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        log::error!("cannot listen for SIGHUP; use POST /admin/reload");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = stop.changed() => return,
        }
        let a = app.clone();
        let _ = tokio::task::spawn_blocking(move || a.reload("SIGHUP")).await;
    }
}

/// Poll the config file's metadata (size, mtime, inode) every 500 ms. Editors save by
/// writing a new file and renaming it, and Kubernetes swaps symlinked directories: a
/// stat of the path sees all of these, where inotify watches on the old inode miss some.
async fn watch_file(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    fn stamp(p: &Path) -> Option<(u64, std::time::SystemTime, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).ok()?;
        Some((m.len(), m.modified().ok()?, m.ino()))
    }
    let path: PathBuf = app.config_path.clone();
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !app.config().server.watch_config {
            last = stamp(&path);
            continue;
        }
        let now = stamp(&path);
        if now.is_some() && now != last {
            last = now;
            let a = app.clone();
            let _ = tokio::task::spawn_blocking(move || a.reload("file changed")).await;
        }
    }
}

/// Addresses the process serves, once resolved (port 0 replaced by the real port).
#[derive(Debug, Clone)]
pub struct Bound {
    pub proxy: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

/// Build the pingora server for `app` and bind what must be bound now.
pub fn build(app: Arc<App>, opts: &RunOptions) -> anyhow_like::Result<(Server, Bound)> {
    let cfg = app.config();
    if app.cache.get().is_none() {
        let cache = crate::cache::Cache::open(&cfg.cache)?;
        cache.init_series(&cfg);
        let _ = app.cache.set(cache);
    }
    let mut conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.as_secs().max(1)),
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        upstream_keepalive_pool_size: cfg.server.upstream_keepalive_pool,
        ..ServerConf::default()
    };
    conf.pid_file = std::env::temp_dir()
        .join(format!("ecluse-{}.pid", std::process::id()))
        .display()
        .to_string();
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let phases = server.watch_execution_phase();
    server.bootstrap();

    let listen: Vec<SocketAddr> = opts.listen.clone().unwrap_or_else(|| cfg.listen.clone());
    let mut proxy_addrs = Vec::new();
    let mut proxy_held = Vec::new();
    for a in &listen {
        let (addr, held) = resolve_port_zero(*a).map_err(|e| format!("cannot bind {a}: {e}"))?;
        proxy_addrs.push(addr);
        proxy_held.push(held.is_some());
        if let Some(h) = held {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(h);
        }
    }
    // pingora's HTTP service behind the connection guards (proxy::conn): head deadline,
    // body rate, connection caps.
    let mut proxy = pingora::proxy::http_proxy(
        &server.configuration,
        EcluseProxy {
            app: app.clone(),
            tls: false,
        },
    );
    let mut o = pingora::apps::HttpServerOptions::default();
    o.h2c = true;
    o.h2_idle_timeout = Some(cfg.server.clients.keepalive_timeout);
    proxy.server_options = Some(o);
    let mut svc = pingora::services::listening::Service::new(
        "ecluse proxy".to_string(),
        crate::proxy::conn::Edge::new(proxy, app.clone()),
    );
    for (a, held) in proxy_addrs.iter().zip(&proxy_held) {
        svc.add_tcp_with_settings(&a.to_string(), tcp_options(*held));
    }
    server.add_service(svc);

    let mut tls_addrs = Vec::new();
    if let Some(t) = &cfg.tls {
        let mut proxy = pingora::proxy::http_proxy(
            &server.configuration,
            EcluseProxy {
                app: app.clone(),
                tls: true,
            },
        );
        let mut o = pingora::apps::HttpServerOptions::default();
        o.h2_idle_timeout = Some(cfg.server.clients.keepalive_timeout);
        proxy.server_options = Some(o);
        let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
            &t.cert_file.display().to_string(),
            &t.key_file.display().to_string(),
        )
        .map_err(|e| format!("TLS certificate or key unusable: {e}"))?;
        if t.http2 {
            settings.enable_h2();
        }
        // Plain TCP listeners: the Edge makes the handshake itself, under the connection
        // caps and the head deadline (pingora's listener would give it 60 s, uncounted).
        let mut tsvc = pingora::services::listening::Service::new(
            "ecluse tls proxy".to_string(),
            crate::proxy::conn::Edge::new(proxy, app.clone()).with_tls(settings.build()),
        );
        for a in &t.listen {
            let (a, held) = resolve_port_zero(*a).map_err(|e| format!("cannot bind {a}: {e}"))?;
            let opts = tcp_options(held.is_some());
            if let Some(h) = held {
                HELD.lock().unwrap_or_else(|p| p.into_inner()).push(h);
            }
            tsvc.add_tcp_with_settings(&a.to_string(), opts);
            tls_addrs.push(a);
        }
        server.add_service(tsvc);
    }

    let admin_addr = opts.admin_listen.unwrap_or(cfg.admin.listen);
    let admin = StdListener::bind(admin_addr)
        .map_err(|e| format!("cannot bind the admin listener {admin_addr}: {e}"))?;
    admin
        .set_nonblocking(true)
        .map_err(|e| format!("admin listener: {e}"))?;
    let admin_bound = admin.local_addr().map_err(|e| e.to_string())?;
    server.add_service(background_service(
        "ecluse control",
        Control {
            app: app.clone(),
            admin: Mutex::new(Some(admin)),
            phases: Mutex::new(Some(phases)),
        },
    ));
    let mut all = proxy_addrs.clone();
    all.extend(tls_addrs.iter().copied());
    let _ = app.bound.set(all);
    let tls_cert = cfg.tls.as_ref().and_then(|t| {
        pingora::tls::load_certs_and_key_files(
            &t.cert_file.display().to_string(),
            &t.key_file.display().to_string(),
        )
        .ok()
        .flatten()
        .and_then(|(certs, _)| certs.first().map(|c| c.to_vec()))
    });
    let _ = app.tls_bound.set((tls_addrs.clone(), tls_cert));
    Ok((
        server,
        Bound {
            proxy: proxy_addrs,
            tls: tls_addrs,
            admin: admin_bound,
        },
    ))
}

/// Tiny string-error result, enough for startup failures shown to ops.
pub mod anyhow_like {
    pub type Result<T> = std::result::Result<T, String>;
}
