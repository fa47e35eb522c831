//! The top-level [`Config`] and [`build`], which validates a whole file section by section.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use super::access_log::{AccessLog, AccessLogTarget, DEFAULT_REDACT};
use super::admin::{admin_exposure, stand_in_token, Admin, Secret};
use super::cache::build_cache_storage;
use super::classes::build_classes;
use super::cluster::build_cluster;
use super::context::{duration_or, BuildContext, Problems};
use super::degradation::build_degradation;
use super::listen::{build_proxy_protocol, parse_listen, Tls};
use super::origins::{build_origin, Origin};
use super::pages::build_pages;
use super::paths::{build_front_controllers, build_paths};
use super::rooms::build_rooms;
use super::routes::{build_routes, Route};
use super::server::{
    build_clients, build_forwarding, build_request_bodies, per_client_for_routes, Server,
};
use crate::config::file::FileConfig;
use crate::config::tree::{SNode, Seg};
use crate::config::units::parse_duration;
use crate::config::Diagnostic;
use crate::path;
use crate::policy::cache_rules::CacheStorage;
use crate::policy::classes::PriorityClass;
use crate::policy::route::Router;
use crate::waiting_room::Room;

#[derive(Debug)]
pub struct Config {
    /// Where it was read from.
    pub path: PathBuf,
    /// First 16 hex digits of the SHA-256 of the file's bytes.
    pub hash: String,
    /// Bumped on every successful (re)load of this process.
    pub version: u64,
    pub loaded_at: SystemTime,
    pub listen: Vec<SocketAddr>,
    /// For each of `listen`: the load balancers whose PROXY protocol header it reads.
    pub listen_proxy_protocol: Vec<Option<Vec<IpNet>>>,
    pub tls: Option<Tls>,
    pub admin: Admin,
    pub server: Server,
    pub access_log: AccessLog,
    pub origins: Vec<Arc<Origin>>,
    pub router: Router<Route>,
    /// Priority classes in file order (the first that matches wins).
    pub classes: Vec<PriorityClass>,
    pub rooms: Vec<Arc<Room>>,
    pub degradation: Option<crate::policy::degrade::Degradation>,
    /// Cache storage settings (applied at start; a reload that changes them is refused
    /// to take effect until restart, and says so).
    pub cache: CacheStorage,
    /// Fleet mode (Redis), when configured.
    pub cluster: Option<crate::config::fleet::ClusterSettings>,
    /// The pages ecluse writes itself (`pages`): templates, branding, time zone.
    pub pages: Arc<crate::pages::Pages>,
}

/// Validate `file` and build the runtime config. Every problem found is returned, each
/// located in `tree`; nothing is half-applied.
pub fn build(
    file: &FileConfig,
    tree: &SNode,
    ctx: &BuildContext,
    meta: (PathBuf, String, u64),
) -> Result<Config, Vec<Diagnostic>> {
    let mut p = Problems::new(tree);
    p.skip_secrets = ctx.skip_secrets;

    let mut listen = Vec::new();
    if file.listen.is_empty() {
        p.at(
            path!["listen"],
            "needs at least one address, like `0.0.0.0:8080`",
        );
    }
    let mut listen_proxy_protocol = Vec::new();
    for (i, l) in file.listen.iter().enumerate() {
        let (addr, at) = match l {
            super::file::ListenFile::Address(a) => (a, path!["listen", i]),
            super::file::ListenFile::Full(e) => (&e.address, path!["listen", i, "address"]),
        };
        let pp = match l {
            super::file::ListenFile::Full(e) => build_proxy_protocol(&mut p, e, path!["listen", i]),
            super::file::ListenFile::Address(_) => None,
        };
        if let Some(a) = parse_listen(&mut p, addr, at) {
            listen.push(a);
            listen_proxy_protocol.push(pp);
        }
    }

    let tls = file.tls.as_ref().map(|t| {
        let mut addrs = Vec::new();
        let mut listen_proxy_protocol = Vec::new();
        for (i, l) in t.listen.iter().enumerate() {
            let (addr, at, pp) = match l {
                super::file::ListenFile::Address(a) => (a, path!["tls", "listen", i], None),
                super::file::ListenFile::Full(e) => (
                    &e.address,
                    path!["tls", "listen", i, "address"],
                    build_proxy_protocol(&mut p, e, path!["tls", "listen", i]),
                ),
            };
            if let Some(a) = parse_listen(&mut p, addr, at) {
                addrs.push(a);
                listen_proxy_protocol.push(pp);
            }
        }
        // (cert_file, key_file, name, where in the file)
        let mut pairs: Vec<(String, String, Option<String>, Vec<Seg>)> = Vec::new();
        match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => pairs.push((c.clone(), k.clone(), None, path!["tls"])),
            (None, None) => {}
            (Some(_), None) => {
                p.at(path!["tls", "cert_file"], "needs `key_file`, its private key");
            }
            (None, Some(_)) => {
                p.at(path!["tls", "key_file"], "needs `cert_file`, its certificate");
            }
        }
        for (i, c) in t.certificates.iter().enumerate() {
            pairs.push((
                c.cert_file.clone(),
                c.key_file.clone(),
                c.name.clone(),
                path!["tls", "certificates", i],
            ));
        }
        if pairs.is_empty() && t.cert_file.is_none() && t.key_file.is_none() {
            p.at(
                path!["tls"],
                "needs a certificate: `cert_file` and `key_file`, or `certificates`",
            );
        }
        let mut certs = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (c, k, name, at) in pairs {
            if let Some(n) = &name {
                if n.is_empty() || n.len() > 128 || n.chars().any(|ch| ch.is_control()) {
                    p.at(
                        [at.clone(), path!["name"]].concat(),
                        "must be 1 to 128 printable characters (a metric label)",
                    );
                }
            }
            let cert_file = ctx.base_dir.join(&c);
            let key_file = ctx.base_dir.join(&k);
            match crate::tls::load_server_cert(&cert_file, &key_file, name.as_deref()) {
                Ok(cert) => {
                    if let Some(prev) = names.insert(cert.name.clone(), certs.len()) {
                        p.at(
                            at,
                            format!(
                                "two certificates are named `{}` (the metric label; certificate {} has it too): give one a `name:`",
                                cert.name, prev
                            ),
                        );
                    }
                    certs.push(cert);
                }
                Err(e) => {
                    use crate::tls::TlsError as E;
                    let key = match &e {
                        E::Read { path, .. } | E::NoKey { path }
                            if *path == key_file.display().to_string() =>
                        {
                            "key_file"
                        }
                        E::KeyMismatch { .. } | E::BadKey { .. } => "key_file",
                        _ => "cert_file",
                    };
                    // An unreadable certificate stops its loading before the key is read:
                    // say about the key too, so one run lists every missing file.
                    if key == "cert_file" && matches!(e, E::Read { .. }) {
                        if let Err(ke) = std::fs::File::open(&key_file) {
                            p.missing_secret(
                                [at.clone(), vec![Seg::Key("key_file".into())]].concat(),
                                format!("cannot read `{}`: {ke}", key_file.display()),
                            );
                        }
                    }
                    let at = [at, vec![Seg::Key(key.into())]].concat();
                    if matches!(e, E::Read { .. }) {
                        // The certificate and its key are installed on the server (by the
                        // certificate tooling), not kept with the policy: secrets for `check`.
                        p.missing_secret(at, e.to_string());
                    } else {
                        p.at(at, e.to_string());
                    }
                }
            }
        }
        Tls {
            listen: addrs,
            listen_proxy_protocol,
            certs: Arc::new(crate::tls::CertSet::new(certs)),
            http2: t.http2.unwrap_or(true),
        }
    });

    let admin_file = file.admin.clone().unwrap_or(super::file::AdminFile {
        listen: None,
        token_file: None,
        insecure_open_admin_network: None,
    });
    let admin_listen = match &admin_file.listen {
        Some(s) => parse_listen(&mut p, s, path!["admin", "listen"]),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
    }
    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let token = admin_file.token_file.as_ref().and_then(|f| {
        let full = ctx.base_dir.join(f);
        let problem = match std::fs::read(&full) {
            Ok(bytes) => {
                let t = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if t.is_empty() {
                    format!("`{}` is empty: put a long random token in it (e.g. `openssl rand -hex 32 > {}`)", full.display(), full.display())
                } else if t.iter().any(|b| !(0x21..0x7f).contains(b)) {
                    format!("the token in `{}` holds spaces, line breaks or non-ASCII bytes: a bearer token is one word of visible ASCII (e.g. `openssl rand -hex 32`)", full.display())
                } else if t.len() < 16 {
                    format!("the token in `{}` is shorter than 16 characters: use a long random token", full.display())
                } else {
                    return Some(Secret(t));
                }
            }
            Err(e) => {
                // Under `check --skip-secrets` a missing file is a warning and a stand-in.
                return p
                    .missing_secret(
                        path!["admin", "token_file"],
                        format!("cannot read `{}`: {e}", full.display()),
                    )
                    .then(stand_in_token);
            }
        };
        p.at(path!["admin", "token_file"], problem);
        None
    });
    let insecure_open_network = admin_file.insecure_open_admin_network.unwrap_or(false);
    // A token file that could not be read is reported above; a missing one here.
    if admin_file.token_file.is_none() {
        if let Some(msg) = admin_exposure(admin_listen, false, insecure_open_network) {
            p.at(path!["admin", "listen"], msg);
        } else if let Some(running) = ctx.registry.admin_bound.get() {
            if let Some(msg) = admin_exposure(*running, false, insecure_open_network) {
                p.at(
                    path!["admin"],
                    format!("this process still listens on `{running}` (a new `admin.listen` applies after a restart): {msg}"),
                );
            }
        }
    }

    let sf = file.server.clone().unwrap_or_default();
    let threads = match sf.threads {
        Some(0) => {
            p.at(path!["server", "threads"], "must be at least 1");
            1
        }
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let mut trusted_proxies = Vec::new();
    for (i, c) in sf.trusted_proxies.iter().enumerate() {
        let parsed = c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => p.at(
                path!["server", "trusted_proxies", i],
                format!("`{c}` is not a CIDR: write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`"),
            ),
        }
    }
    let mut public_ports = Vec::new();
    for (i, &port) in sf.public_ports.iter().enumerate() {
        if port == 0 {
            p.at(
                path!["server", "public_ports", i],
                "`0` is no port a client reaches: write the port of your load balancer, like `8443`",
            );
        } else if !public_ports.contains(&port) {
            public_ports.push(port);
        }
    }
    let mut server = Server {
        threads,
        trusted_proxies,
        public_ports,
        grace_period: match &sf.grace_period {
            Some(s) => match parse_duration(&s.0) {
                Ok(d) => d,
                Err(e) => {
                    p.at(path!["server", "grace_period"], e);
                    Duration::from_secs(5)
                }
            },
            None => Duration::from_secs(5),
        },
        shutdown_timeout: duration_or(
            &mut p,
            &sf.shutdown_timeout,
            Duration::from_secs(30),
            path!["server", "shutdown_timeout"],
        ),
        upgrade_sock: match &sf.upgrade_sock {
            Some(s) => ctx.base_dir.join(s),
            None => crate::instance::default_upgrade_sock(&meta.0),
        },
        upgrade_sock_default: sf.upgrade_sock.is_none(),
        upstream_keepalive_pool: sf.upstream_keepalive_pool.unwrap_or(1024) as usize,
        watch_config: sf.watch_config.unwrap_or(true),
        state_dir: sf
            .state_dir
            .as_ref()
            .map(|d| ctx.base_dir.join(d))
            .unwrap_or_else(|| crate::instance::default_state_dir(&meta.0)),
        clients: build_clients(&mut p, sf.clients.as_ref()),
        forwarding: build_forwarding(&mut p, sf.forwarding.as_ref()),
        request_bodies: build_request_bodies(&mut p, sf.request_bodies.as_ref(), ctx),
        paths: build_paths(sf.paths.as_ref()),
        front_controllers: build_front_controllers(&mut p, sf.paths.as_ref()),
    };
    // Rooms restore their snapshot on first use: tell the registry where they are.
    ctx.registry.rooms.set_state_dir(server.state_dir.clone());

    let redact_query = match file
        .access_log
        .as_ref()
        .and_then(|a| a.redact_query.as_ref())
    {
        None => DEFAULT_REDACT.iter().map(|n| n.to_string()).collect(),
        Some(names) => {
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                    p.at(
                        path!["access_log", "redact_query", i],
                        format!("`{n}`: a parameter name is 1 to 64 visible ASCII characters"),
                    );
                }
            }
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        }
    };
    let access_log = match &file.access_log {
        None => AccessLog {
            target: AccessLogTarget::Stdout,
            redact_query,
        },
        Some(a) if a.enabled == Some(false) => AccessLog {
            target: AccessLogTarget::Off,
            redact_query,
        },
        Some(a) => AccessLog {
            target: match a.path.as_deref() {
                None | Some("stdout") | Some("-") => AccessLogTarget::Stdout,
                Some(f) => AccessLogTarget::File(ctx.base_dir.join(f)),
            },
            redact_query,
        },
    };

    let mut origins: Vec<Arc<Origin>> = Vec::new();
    if file.origins.is_empty() {
        p.at(path!["origins"], "needs at least one origin");
    }
    for (name, of) in &file.origins {
        if let Some(o) = build_origin(&mut p, name, of, ctx) {
            origins.push(Arc::new(o));
        }
    }

    let cache = build_cache_storage(&mut p, file, ctx);
    let cluster = build_cluster(&mut p, file, &meta.0, &ctx.base_dir);
    let classes = build_classes(&mut p, &file.priority_classes, &server.paths);
    let pages = build_pages(&mut p, file, ctx);
    let rooms = build_rooms(&mut p, file, &classes, ctx, &pages);
    let router = build_routes(
        &mut p,
        &file.routes,
        &origins,
        file,
        &classes,
        &rooms,
        &cache,
        ctx,
        server.request_bodies.max_body_size,
    );
    per_client_for_routes(
        &mut p,
        &mut server.request_bodies,
        sf.request_bodies.as_ref(),
        router.routes(),
    );
    let degradation = build_degradation(&mut p, file);

    ctx.warnings
        .borrow_mut()
        .extend(std::mem::take(&mut p.warnings));
    if !p.list.is_empty() {
        return Err(p.list);
    }
    let (path, hash, version) = meta;
    Ok(Config {
        path,
        hash,
        version,
        loaded_at: SystemTime::now(),
        listen,
        listen_proxy_protocol,
        tls,
        admin: Admin {
            listen: admin_listen,
            token,
            insecure_open_network,
        },
        server,
        access_log,
        origins,
        router,
        classes,
        rooms,
        degradation,
        cache,
        cluster,
        pages: Arc::new(pages),
    })
}
