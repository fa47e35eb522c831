//! The cache's disk tier on a filesystem that is too small or fills up (issue #19): a real
//! tmpfs mounted by the test, the real ecluse binary, a real origin (`LenientEnt`).
//!
//! Mounting needs root (CI runs as root on Debian); where it is impossible the tests say
//! so on stderr and pass without checking anything.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lenient_ent::LenientEnt;
use common::*;

/// A tmpfs of a given size, unmounted (lazily: a process may still hold a file) on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str, tag: &str) -> Option<Tmpfs> {
        let dir = TempDir::new(tag);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a {size} tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn config(origin: std::net::SocketAddr, cache_dir: &Path) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server: {{ threads: 2, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: 200, health_check: {{ disabled: true }} }}
cache: {{ memory: 8MiB, max_object_size: 1MiB, disk: {{ path: "{}", size: 64MiB }} }}
routes:
  - name: files
    match: {{ path_prefix: /files/ }}
    origin: ent
    cache: {{ ttl: 10m }}
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#,
        cache_dir.display()
    )
}

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn fetch(e: &Ecluse, path: &str) -> String {
    let r = client().get(e.url(path)).send().await.expect("request");
    assert_eq!(r.status(), 200, "{path}");
    let status = cache_status(&r);
    let body = r.text().await.expect("body");
    assert!(body.contains(path), "{path}: {body}");
    status
}

/// Fill the filesystem of `dir` until it says no more (ENOSPC).
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last partial page too.
    let _ = f.write_all(&chunk[..4096]);
    path
}

#[test]
fn start_refuses_a_disk_tier_larger_than_its_filesystem_and_check_warns() {
    let Some(fs) = Tmpfs::mount("2m", "disk-small") else {
        return;
    };
    let dir = TempDir::new("disk-small-cfg");
    let cfg = dir.path().join("ecluse.yaml");
    let cache = fs.path().join("cache");
    std::fs::write(&cfg, config("127.0.0.1:9".parse().unwrap(), &cache)).unwrap();

    // `check` (often run on another machine) warns and passes.
    let out = Command::new(bin())
        .arg("check")
        .arg(&cfg)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("larger than the whole filesystem"),
        "{err}"
    );
    assert!(err.contains("ecluse.yaml:"), "located: {err}");

    // `run` refuses, with the reason, and without creating anything there.
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ecluse");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ecluse started on a filesystem that cannot hold its disk tier");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("larger than the whole filesystem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!cache.exists(), "nothing created on the small volume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_the_tier_off_and_it_comes_back_when_space_returns() {
    let Some(fs) = Tmpfs::mount("80m", "disk-full") else {
        return;
    };
    let ent = LenientEnt::start().await;
    let cache = fs.path().join("cache");
    let e = Ecluse::start(&config(ent.addr, &cache));
    let enabled = || e.metric("ecluse_cache_disk_enabled", &[]);
    assert_eq!(enabled(), 1.0, "the tier is on with room to spare");
    assert_eq!(e.metric("ecluse_cache_disk_write_errors_total", &[]), 0.0);
    assert!(e.metric("ecluse_cache_disk_free_bytes", &[]) > 40.0 * 1048576.0);

    assert!(fetch(&e, "/files/before.pdf").await.contains("miss"));
    assert!(fetch(&e, "/files/before.pdf")
        .await
        .starts_with("ecluse; hit"));
    let written = e.metric("ecluse_cache_disk_written_bytes_total", &[]);
    assert!(written > 0.0, "the object went to disk");

    // Another process fills the volume.
    let filler = fill(fs.path());
    eventually(
        "the disk tier turns off",
        Duration::from_secs(20),
        async || enabled() == 0.0,
    )
    .await;

    // Pupils are still served: hits from memory, misses from the origin (once).
    assert!(fetch(&e, "/files/before.pdf")
        .await
        .starts_with("ecluse; hit"));
    for i in 0..20 {
        let path = format!("/files/during-{i}.pdf");
        assert!(fetch(&e, &path).await.contains("miss"), "{path}");
        assert!(fetch(&e, &path).await.starts_with("ecluse; hit"), "{path}");
        assert_eq!(ent.hits_on(&path), 1, "{path}");
    }
    assert_eq!(
        e.metric("ecluse_cache_disk_written_bytes_total", &[]),
        written,
        "nothing more written to a full disk"
    );
    // The bytes on disk are what the volume really holds.
    let on_disk = e.metric("ecluse_cache_bytes", &[("tier", "disk")]);
    assert!(
        on_disk > 0.0 && on_disk < 2.0 * 1048576.0,
        "disk tier holds {on_disk} bytes"
    );

    // Space returns: the tier comes back by itself and writes again.
    std::fs::remove_file(&filler).unwrap();
    eventually(
        "the disk tier comes back",
        Duration::from_secs(20),
        async || enabled() == 1.0,
    )
    .await;
    assert!(fetch(&e, "/files/after.pdf").await.contains("miss"));
    eventually(
        "the new object reaches the disk",
        Duration::from_secs(20),
        async || e.metric("ecluse_cache_disk_written_bytes_total", &[]) > written,
    )
    .await;

    let log = e.stderr_text();
    assert_eq!(
        log.matches("the disk tier is OFF").count(),
        1,
        "one log line when it turns off: {log}"
    );
    assert!(log.contains("the disk tier is back on"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(e.metric("ecluse_cache_disk_write_errors_total", &[]), 0.0);
    drop(e);
}
