//! Zero-downtime upgrade under load: a new process started with `--upgrade` takes the
//! listening sockets over from the running one (SIGQUIT), and no request fails.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn yaml(listen: &str, origin: std::net::SocketAddr, sock: &std::path::Path) -> String {
    format!(
        r#"listen: ["{listen}"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 1, grace_period: 1s, shutdown_timeout: 5s, upgrade_sock: "{}" }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent }}
"#,
        sock.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_under_load_fails_no_request() {
    let origin = EchoOrigin::start("ent").await;
    let dir = TempDir::new("upgrade");
    let sock = dir.path().join("upgrade.sock");
    let mut old = Ecluse::start(&yaml("127.0.0.1:0", origin.addr, &sock));
    let port = old.proxy.port();

    // Load: a new connection per request, as many as we can, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = old.proxy;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match raw_get(addr, "/x") {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let before = Instant::now();
    while ok.load(Ordering::Relaxed) < 200 {
        assert!(before.elapsed() < DEADLINE, "no load before the upgrade");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The new process waits for the sockets on the upgrade socket…
    let new_yaml = yaml(&format!("127.0.0.1:{port}"), origin.addr, &sock);
    let starting =
        std::thread::spawn(move || Ecluse::start_full(&new_yaml, &[], |_| {}, &["--upgrade"]));
    let deadline = Instant::now() + DEADLINE;
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened the upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // …and the old one hands them over and drains.
    old.signal(libc::SIGQUIT);
    let new = starting.join().expect("new process started");
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process exited"
    );
    let at_exit = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < at_exit + 200 {
        assert!(
            Instant::now() < deadline + DEADLINE,
            "no load after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(new.proxy.port(), port);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
}
