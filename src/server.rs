//! Assembling the process: pingora server, proxy listeners, the admin listener and the
//! background tasks (health checks, config file watch, SIGHUP), and running until a signal.
//!
//! Signals, as nginx's (a table in docs/operations.md): SIGTERM drains gracefully (readiness goes
//! 503, listeners stay open for `grace_period`, then in-flight requests get
//! `shutdown_timeout`), SIGINT stops fast, SIGQUIT hands the listening sockets to a new
//! process started with `--upgrade`; SIGHUP reloads the policy and reopens the logs,
//! SIGUSR1 reopens the logs, SIGUSR2 and SIGWINCH are logged and ignored.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use tokio::time::MissedTickBehavior;

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
                    let now = crate::clock::now_ms();
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
                            // `auto` rooms size themselves once a second, before the tick
                            // that reads the new numbers (fleet mode refuses `auto`).
                            if n % 4 == 0 {
                                crate::sizing::size_all(&cfg, now);
                            }
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
        every(
            &app,
            &stop_rx,
            Duration::from_millis(500),
            MissedTickBehavior::Burst,
            |app| crate::degrade::evaluate(&app.config(), &app.degrade),
        );
        // Adaptive concurrency limits, every 100 ms.
        every(
            &app,
            &stop_rx,
            Duration::from_millis(100),
            MissedTickBehavior::Delay,
            |app| crate::degrade::adapt_limits(&app.config()),
        );
        // Feature drains: close what is open on a switched-off feature after its grace.
        every(
            &app,
            &stop_rx,
            Duration::from_millis(100),
            MissedTickBehavior::Delay,
            |app| crate::drain::tick(app),
        );
        // Forget idle rate-limit keys.
        every(
            &app,
            &stop_rx,
            Duration::from_secs(5),
            MissedTickBehavior::Burst,
            |app| crate::app::sweep_limiters(&app.config()),
        );
        // HUP, USR1, USR2, WINCH.
        tokio::spawn(signals(app.clone(), stop_rx.clone()));
        // Reload on a change of the policy file or of a certificate.
        tokio::spawn(crate::watch::run(app.clone(), stop_rx.clone()));
        // Draining: /readyz turns 503 as soon as a graceful stop begins.
        if let Some(mut phases) = self.phases.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let app = app.clone();
            tokio::spawn(async move {
                while let Ok(phase) = phases.recv().await {
                    if matches!(phase, ExecutionPhase::Running) {
                        tokio::spawn(notify_ready(app.clone()));
                    }
                    let stopping = matches!(
                        phase,
                        ExecutionPhase::GracefulTerminate
                            | ExecutionPhase::GracefulUpgradeTransferringFds
                            | ExecutionPhase::ShutdownStarted
                    );
                    if stopping {
                        begin_drain(&app);
                    }
                }
            });
        }
        let mut shutdown = shutdown;
        let _ = shutdown.changed().await;
        // Graceful stop: readiness turns 503 at once. The admin listener, health checks and
        // reload triggers keep running until the runtime is torn down at exit, so ops can
        // still watch the drain.
        begin_drain(&app);
        // Save the rooms now: a restart must not send everyone to the back.
        let dir = app.config().server.state_dir.clone();
        app.registry.rooms.snapshot(&dir);
        drop(stop_rx);
        std::future::pending::<()>().await;
        drop(stop_tx);
    }
}

/// Run `f` every `period` on the runtime until `stop` changes. `missed`: what happens to
/// ticks a busy runtime missed (run back to back, or the schedule delayed).
fn every(
    app: &Arc<App>,
    stop: &tokio::sync::watch::Receiver<bool>,
    period: Duration,
    missed: MissedTickBehavior,
    f: impl Fn(&Arc<App>) + Send + 'static,
) {
    let app = app.clone();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(missed);
        loop {
            tokio::select! {
                _ = tick.tick() => f(&app),
                _ = stop.changed() => return,
            }
        }
    });
}

/// Signals ops tools send, as nginx answers them: HUP reloads the policy and reopens the
/// log files, USR1 reopens the log files (what a logrotate `postrotate` sends), USR2 and
/// WINCH (nginx's binary upgrade and worker stop) are logged and ignored: their default
/// action would end the process silently. TERM, INT and QUIT are pingora's (see
/// [`run_args`]).
async fn signals(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot listen for {name}: {e}");
            None
        }
    };
    let (Some(mut hup), Some(mut usr1), Some(mut usr2), Some(mut winch)) = (
        listen(SignalKind::hangup(), "SIGHUP (use POST /admin/reload)"),
        listen(SignalKind::user_defined1(), "SIGUSR1"),
        listen(SignalKind::user_defined2(), "SIGUSR2"),
        listen(SignalKind::window_change(), "SIGWINCH"),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => {
                if r.is_none() { return }
                let a = app.clone();
                let _ = tokio::task::spawn_blocking(move || a.reload("SIGHUP")).await;
                app.access_log.reopen();
                log::info!("SIGHUP: policy reloaded, log files reopened");
            }
            r = usr1.recv() => {
                if r.is_none() { return }
                app.access_log.reopen();
                log::info!("SIGUSR1: log files reopened");
            }
            r = usr2.recv() => {
                if r.is_none() { return }
                log::warn!("SIGUSR2 ignored: for a binary upgrade start the new ecluse with --upgrade, then send SIGQUIT to this one");
            }
            r = winch.recv() => {
                if r.is_none() { return }
                log::warn!("SIGWINCH ignored");
            }
            _ = stop.changed() => return,
        }
    }
}

/// The drain begins (once, whichever sign of it comes first): `/readyz` answers 503 and
/// systemd hears STOPPING=1.
fn begin_drain(app: &App) {
    if !app.draining.swap(true, Ordering::Relaxed) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        log::info!("draining: /readyz now answers 503");
    }
}

/// Set once pingora listens for TERM/INT/QUIT (see [`LoggedSignals`]).
static SHUTDOWN_SIGNALS_ARMED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Tell systemd (`Type=notify`) that ecluse is ready, once the policy is loaded (it is:
/// the server runs), the shutdown signals are handled (a TERM right after READY drains)
/// and every proxy listener accepts connections: pingora binds them in
/// its service runtimes, so each is tried until it answers (up to 10 s). Without
/// `NOTIFY_SOCKET` (not under systemd) this does nothing.
async fn notify_ready(app: Arc<App>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let addrs: Vec<SocketAddr> = app.bound.get().cloned().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // pingora starts listening for the shutdown signals just after it announces Running.
    while !SHUTDOWN_SIGNALS_ARMED.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for a in addrs {
        let target = crate::admin::connectable(a);
        while tokio::net::TcpStream::connect(target).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                log::error!(
                    "listener {a} still not accepting after 10 s; telling systemd ready anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let status = format!("serving policy version {}", app.config().version);
    match sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]) {
        Ok(()) => log::info!("told systemd: ready"),
        Err(e) => log::error!("cannot tell systemd that ecluse is ready: {e}"),
    }
}

/// pingora's shutdown signals, with a log line for each: SIGTERM drains (readiness 503,
/// `grace_period`, then `shutdown_timeout` for requests in flight), SIGINT stops fast
/// (Ctrl-C; the rooms are still saved), SIGQUIT hands the sockets to `--upgrade`.
struct LoggedSignals {
    app: Arc<App>,
    grace: Duration,
    shutdown: Duration,
}

#[async_trait]
impl pingora::server::ShutdownSignalWatch for LoggedSignals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for TERM/INT/QUIT: stop ecluse with SIGKILL");
            return std::future::pending().await;
        };
        // From here a TERM drains instead of killing the process: only now may systemd
        // hear that ecluse is ready (it may stop the unit the moment after).
        SHUTDOWN_SIGNALS_ARMED.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = quit.recv() => {
                log::info!("SIGQUIT: handing the listening sockets to the new process, then draining");
                // Here, not in a task: with a short grace the runtimes may stop before
                // any task hears of the drain.
                begin_drain(&self.app);
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                log::info!(
                    "SIGTERM: draining: /readyz answers 503, new connections accepted for {}s, then {}s for requests in flight",
                    self.grace.as_secs(),
                    self.shutdown.as_secs()
                );
                begin_drain(&self.app);
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping now (SIGTERM drains)");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// How `server.run` waits for its shutdown signal (see [`LoggedSignals`]).
pub fn run_args(app: &Arc<App>) -> pingora::server::RunArgs {
    let cfg = app.config();
    pingora::server::RunArgs {
        shutdown_signal: Box::new(LoggedSignals {
            app: app.clone(),
            grace: cfg.server.grace_period,
            shutdown: cfg.server.shutdown_timeout,
        }),
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
    // This instance's own places: never another instance's, never planted by another user.
    crate::instance::ensure_private_dir(&cfg.server.state_dir)
        .map_err(|e| format!("state_dir {e}"))?;
    if cfg.server.upgrade_sock_default {
        if let Some(dir) = cfg.server.upgrade_sock.parent() {
            crate::instance::ensure_private_dir(dir).map_err(|e| format!("upgrade socket {e}"))?;
        }
    }
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
    // pingora's HTTP service behind the connection guards (proxy::conn_guard): head deadline,
    // body rate, connection caps.
    // The plain-HTTP proxy (h2c allowed), one per listening service.
    let conf = server.configuration.clone();
    let plain_proxy = || {
        let mut proxy = pingora::proxy::http_proxy(
            &conf,
            EcluseProxy {
                app: app.clone(),
                tls: false,
            },
        );
        let mut o = pingora::apps::HttpServerOptions::default();
        o.h2c = true;
        o.h2_idle_timeout = Some(cfg.server.clients.keepalive_timeout);
        proxy.server_options = Some(o);
        proxy
    };
    let proxy = plain_proxy();
    // Which PROXY protocol each listener reads (none when the addresses come from the
    // command line).
    let pp: Vec<Option<Vec<ipnet::IpNet>>> = match &opts.listen {
        Some(_) => vec![None; proxy_addrs.len()],
        None => cfg.listen_proxy_protocol.clone(),
    };
    let mut svc = pingora::services::listening::Service::new(
        "ecluse proxy".to_string(),
        crate::proxy::conn_guard::Edge::new(proxy, app.clone()),
    );
    for ((a, held), pp) in proxy_addrs.iter().zip(&proxy_held).zip(&pp) {
        if pp.is_none() {
            svc.add_tcp_with_settings(&a.to_string(), tcp_options(*held));
        }
    }
    if pp.iter().any(Option::is_none) {
        server.add_service(svc);
    }
    // A listener behind load balancers gets its own service: the PROXY header is read
    // by its Edge, before the connection caps and the HTTP layer.
    for ((a, held), from) in proxy_addrs.iter().zip(&proxy_held).zip(&pp) {
        let Some(from) = from else { continue };
        let proxy = plain_proxy();
        let mut svc = pingora::services::listening::Service::new(
            format!("ecluse proxy {a} (PROXY protocol)"),
            crate::proxy::conn_guard::Edge::new(proxy, app.clone())
                .with_proxy_protocol(from.clone()),
        );
        svc.add_tcp_with_settings(&a.to_string(), tcp_options(*held));
        server.add_service(svc);
    }

    let mut tls_addrs = Vec::new();
    if let Some(t) = &cfg.tls {
        let tls_proxy = || {
            let mut proxy = pingora::proxy::http_proxy(
                &conf,
                EcluseProxy {
                    app: app.clone(),
                    tls: true,
                },
            );
            let mut o = pingora::apps::HttpServerOptions::default();
            o.h2_idle_timeout = Some(cfg.server.clients.keepalive_timeout);
            proxy.server_options = Some(o);
            proxy
        };
        if t.certs.certs.is_empty() {
            return Err("tls: no usable certificate".to_string());
        }
        // The certificate is chosen at each handshake (by SNI) from the set the last good
        // load published: a reload swaps it for new connections without a restart.
        crate::tls::serve(t.certs.clone());
        pingora::tls::install_default_crypto_provider();
        let mut sc = rustls::ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS12,
            &rustls::version::TLS13,
        ])
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(crate::tls::Resolver));
        if t.http2 {
            // What pingora's `enable_h2` sets: HTTP/2 preferred, HTTP/1.1 allowed.
            sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let sc = Arc::new(sc);
        let acceptor = || pingora::listeners::tls::Acceptor::from_server_config(sc.clone());
        // Plain TCP listeners: the Edge makes the handshake itself, under the connection
        // caps and the head deadline (pingora's listener would give it 60 s, uncounted).
        let mut tsvc = pingora::services::listening::Service::new(
            "ecluse tls proxy".to_string(),
            crate::proxy::conn_guard::Edge::new(tls_proxy(), app.clone()).with_tls(acceptor()),
        );
        let mut plain_tls = false;
        for (a, pp) in t.listen.iter().zip(&t.listen_proxy_protocol) {
            let (a, held) = resolve_port_zero(*a).map_err(|e| format!("cannot bind {a}: {e}"))?;
            let opts = tcp_options(held.is_some());
            if let Some(h) = held {
                HELD.lock().unwrap_or_else(|p| p.into_inner()).push(h);
            }
            match pp {
                None => {
                    tsvc.add_tcp_with_settings(&a.to_string(), opts);
                    plain_tls = true;
                }
                // Behind an L4 balancer: its PROXY header comes first, then the client's
                // ClientHello; the Edge reads the one, then makes the handshake.
                Some(from) => {
                    let mut svc = pingora::services::listening::Service::new(
                        format!("ecluse tls proxy {a} (PROXY protocol)"),
                        crate::proxy::conn_guard::Edge::new(tls_proxy(), app.clone())
                            .with_tls(acceptor())
                            .with_proxy_protocol(from.clone()),
                    );
                    svc.add_tcp_with_settings(&a.to_string(), opts);
                    server.add_service(svc);
                }
            }
            tls_addrs.push(a);
        }
        if plain_tls {
            server.add_service(tsvc);
        }
    }

    let admin_addr = opts.admin_listen.unwrap_or(cfg.admin.listen);
    // The same rule `ecluse check` applies to the file, for the address actually used.
    if let Some(msg) = crate::config::runtime::admin_exposure(
        admin_addr,
        cfg.admin.token.is_some(),
        cfg.admin.insecure_open_network,
    ) {
        return Err(msg);
    }
    if cfg.admin.token.is_none()
        && !crate::config::runtime::is_loopback(admin_addr.ip())
        && cfg.admin.insecure_open_network
    {
        log::warn!(
            "INSECURE: the admin API on {admin_addr} has no token (admin.insecure_open_admin_network: true): anyone who reaches this address can pause the waiting room, force a degradation level or purge the cache"
        );
    }
    let admin = StdListener::bind(admin_addr)
        .map_err(|e| format!("cannot bind the admin listener {admin_addr}: {e}"))?;
    admin
        .set_nonblocking(true)
        .map_err(|e| format!("admin listener: {e}"))?;
    let admin_bound = admin.local_addr().map_err(|e| e.to_string())?;
    // Reloads are checked against the listener that stays (config::runtime::build).
    let _ = app.registry.admin_bound.set(admin_bound);
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
    let _ = app.tls_bound.set(tls_addrs.clone());
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
