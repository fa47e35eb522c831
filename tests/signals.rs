//! Signals as nginx answers them (issue #19): USR1 reopens the log files, HUP reloads and
//! reopens them, USR2 and WINCH never end the process, TERM logs the drain's start and end.

mod common;

use std::time::Duration;

use common::*;

fn yaml(origin: std::net::SocketAddr) -> String {
    format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\naccess_log: {{ path: access.log }}\norigins:\n  ent: {{ servers: [\"{origin}\"] }}\nroutes:\n  - {{ name: ent, origin: ent }}\n"
    )
}

fn lines_with(path: &std::path::Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn get_ok(c: &reqwest::Client, url: String) {
    let r = c.get(url).send().await.expect("request");
    assert_eq!(r.status(), 200);
}

/// Rotate as logrotate does with `create` + a signal: rename the file, signal, and every
/// line after the signal lands in the new file, none in the renamed one.
async fn rotation_with(sig: i32, what: &str) {
    let o = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&yaml(o.addr));
    let dir = e.config.parent().expect("dir").to_path_buf();
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let c = client();
    for _ in 0..5 {
        get_ok(&c, e.url("/before")).await;
    }
    eventually("lines in access.log", DEADLINE, async || {
        lines_with(&log, "/before") == 5
    })
    .await;
    std::fs::rename(&log, &rotated).expect("rotate");
    e.signal(sig);
    eventually("the reopen is logged", DEADLINE, async || {
        e.stderr_text().contains(what)
    })
    .await;
    for _ in 0..7 {
        get_ok(&c, e.url("/after")).await;
    }
    eventually("new lines in the new access.log", DEADLINE, async || {
        lines_with(&log, "/after") == 7
    })
    .await;
    assert_eq!(
        lines_with(&rotated, "/after"),
        0,
        "no line after the signal in the rotated file"
    );
    assert_eq!(lines_with(&rotated, "/before"), 5, "no line lost before it");
    assert_eq!(lines_with(&log, "/before"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr1_reopens_the_access_log() {
    rotation_with(libc::SIGUSR1, "SIGUSR1: log files reopened").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hup_reloads_and_reopens_the_access_log() {
    rotation_with(libc::SIGHUP, "SIGHUP: policy reloaded, log files reopened").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr2_and_winch_never_end_the_process() {
    let o = EchoOrigin::start("ent").await;
    let mut e = Ecluse::start(&yaml(o.addr));
    e.signal(libc::SIGUSR2);
    e.signal(libc::SIGWINCH);
    eventually("both are logged as ignored", DEADLINE, async || {
        let t = e.stderr_text();
        t.contains("SIGUSR2 ignored") && t.contains("SIGWINCH ignored")
    })
    .await;
    assert!(e.child.try_wait().expect("wait").is_none(), "still running");
    get_ok(&client(), e.url("/still")).await;
    e.signal(libc::SIGTERM);
    e.wait_exit(Duration::from_secs(20))
        .expect("exits after draining");
    let t = e.stderr_text();
    assert!(t.contains("SIGTERM: draining"), "{t}");
    assert!(
        t.contains("stopped: every connection drained or closed"),
        "{t}"
    );
}
