//! `ecluse demo`: the simulated ENT origin and ecluse in front of it, on the embedded
//! `config/demo.yaml`, printing the URLs to open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::admin::connectable;
use crate::demo::surge::DemoSurge;
use crate::demo::{DemoOrigin, OriginOptions};
use crate::server::{Bound, RunOptions};

/// The demo policy, embedded so that `ecluse demo` works from any directory.
pub const DEMO_YAML: &str = include_str!("../../config/demo.yaml");

/// Start the simulated ENT on its own runtime thread, write the demo policy pointing at
/// it, and hand over to `run` (which blocks until a signal).
pub fn demo(
    port: u16,
    admin_port: u16,
    origin_port: u16,
    surge: bool,
    run: impl FnOnce(PathBuf, RunOptions, &dyn Fn(&Bound) -> Vec<String>) -> ExitCode,
) -> ExitCode {
    // A fresh ticket key for this demo run (never a key from the repository). Set before
    // any thread starts: the environment is process-wide.
    if std::env::var_os("ECLUSE_TICKET_KEYS").is_none() {
        let secret: [u8; 32] = rand::random();
        std::env::set_var(
            "ECLUSE_TICKET_KEYS",
            format!("demo:{}", hex::encode(secret)),
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let origin_listen = SocketAddr::from(([127, 0, 0, 1], origin_port));
    let spawned = std::thread::Builder::new()
        .name("ecluse-demo-origin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                match DemoOrigin::start(origin_listen, OriginOptions::default()).await {
                    Ok(o) => {
                        let rt = tokio::runtime::Handle::current();
                        let _ = tx.send(Ok((o.addr(), rt)));
                        // Serve for the life of the process.
                        std::future::pending::<()>().await;
                        drop(o);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        });
    if let Err(e) = spawned {
        eprintln!("ecluse demo: cannot start the simulated ENT: {e}");
        return ExitCode::from(1);
    }
    let (origin, origin_rt) = match rx.recv() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            eprintln!("ecluse demo: cannot start the simulated ENT on {origin_listen}: {e}");
            return ExitCode::from(1);
        }
        Err(_) => {
            eprintln!("ecluse demo: the simulated ENT did not start");
            return ExitCode::from(1);
        }
    };
    let dir = std::env::temp_dir().join(format!("ecluse-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("ecluse demo: cannot create {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    let path = dir.join("demo.yaml");
    // Each demo keeps its waiting-room snapshot to itself: a demo started after another
    // must not inherit its queue.
    let yaml = DEMO_YAML
        .replace("127.0.0.1:8000", &origin.to_string())
        .replacen(
            "server:\n",
            &format!(
                "server:\n  state_dir: \"{}\"\n",
                dir.join("state").display()
            ),
            1,
        );
    if let Err(e) = std::fs::write(&path, yaml) {
        eprintln!("ecluse demo: cannot write {}: {e}", path.display());
        return ExitCode::from(1);
    }
    let opts = RunOptions {
        upgrade: false,
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], admin_port))),
        listen: Some(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
    };
    let policy = path.display().to_string();
    // The status page's "Start a surge" button, and `--surge` once the proxy listens.
    let demo_surge = DemoSurge::new(origin_rt);
    crate::admin::status::register_surge(std::sync::Arc::new(demo_surge.clone()));
    let banner = move |b: &Bound| -> Vec<String> {
        let mut lines = vec![format!(
            "ecluse demo: a simulated ENT with ecluse in front of it (policy: {policy}). Open:"
        )];
        if let Some(p) = b.proxy.first() {
            lines.push(format!(
                "http://{}/  the ENT through ecluse",
                connectable(*p)
            ));
        }
        lines.push(format!(
            "http://{}/status  ecluse status page (live; a button starts a surge)",
            b.admin
        ));
        lines.push(format!("http://{}/metrics  Prometheus metrics", b.admin));
        lines.push(format!(
            "http://{}/admin/state  ecluse state (JSON)",
            b.admin
        ));
        lines.push(format!(
            "http://{origin}/  the simulated ENT, direct (to compare)"
        ));
        lines.push("Stop with Ctrl-C.".to_string());
        if let Some(p) = b.proxy.first() {
            demo_surge.set_target(connectable(*p));
            if surge {
                if let Err(e) = demo_surge.start() {
                    lines.push(format!("ecluse demo: no surge: {e}"));
                }
            }
        }
        lines
    };
    run(path, opts, &banner)
}
