//! Running ecluse as a service (issue #19): systemd readiness through a real
//! `NOTIFY_SOCKET`, the shipped logrotate file run by the real `logrotate` against a
//! running ecluse, and the Debian package built by cargo-deb, checked with `dpkg-deb`,
//! `lintian` and `systemd-analyze verify`. `make test` installs the tools (scripts/need.sh).

// kill(2) and pre_exec on the processes under test; the crate denies unsafe code.
#![allow(unsafe_code)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} is not installed: `make test` installs it (scripts/need.sh)");
}

#[test]
fn readiness_is_notified_once_every_listener_accepts() {
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let origin = dead_port();
    let config = dir.path().join("ecluse.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\nserver: {{ grace_period: 0s, shutdown_timeout: 1s }}\naccess_log: {{ enabled: false }}\norigins:\n  ent: {{ servers: [\"{origin}\"], health_check: {{ disabled: true }} }}\nroutes:\n  - {{ name: ent, origin: ent }}\n"
        ),
    )
    .expect("config");
    let mut child = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("TMPDIR", dir.path())
        .env("RUST_LOG", "info,pingora=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file"))
        .spawn()
        .expect("spawn");
    // The addresses are printed before the server starts, so they are known before
    // READY=1 can arrive.
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut proxies: Vec<SocketAddr> = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(rest) = line.strip_prefix("listening proxy http://") {
            proxies.push(rest.trim_end_matches('/').parse().expect("addr"));
        }
        if line.starts_with("listening admin") {
            break;
        }
    }
    assert_eq!(proxies.len(), 2);
    let mut buf = [0u8; 512];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the deadline");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("STATUS=serving policy version"), "{msg}");
    // Ready means ready: every listener accepts right now.
    for p in &proxies {
        std::net::TcpStream::connect_timeout(p, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("READY=1 sent but {p} refuses: {e}"));
    }
    // A drain says STOPPING=1 before it starts.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let stderr = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no STOPPING=1 ({e}); stderr:\n{}", stderr()));
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("STOPPING=1"), "{msg}; stderr:\n{}", stderr());
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lines_with(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_logrotate_file_rotates_a_running_ecluse_without_losing_a_line() {
    let logrotate = tool("logrotate");
    let o = EchoOrigin::start("ent").await;
    let e = Ecluse::start(&format!(
        "listen: [\"127.0.0.1:0\"]\nadmin: {{ listen: \"127.0.0.1:0\" }}\naccess_log: {{ path: logs/access.log }}\norigins:\n  ent: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ name: ent, origin: ent }}\n",
        o.addr
    )
    .replace("logs/access.log", "access.log"));
    let dir = e.config.parent().expect("dir").to_path_buf();
    let log = dir.join("access.log");
    // The shipped file, with this test's directory for /var/log/ecluse, no change of
    // owner (the test is not the ecluse user), and the signal sent to this process
    // rather than through systemctl.
    let shipped = std::fs::read_to_string(root().join("pkg/ecluse.logrotate")).expect("shipped");
    assert!(
        !shipped.lines().any(|l| l.trim() == "copytruncate"),
        "never copytruncate: lines written during the copy are lost"
    );
    let conf = shipped
        .replace("/var/log/ecluse", &dir.display().to_string())
        .replace("create 0640 ecluse adm", "create 0640")
        .replace(
            "systemctl kill --signal=USR1 --kill-whom=main ecluse.service",
            &format!("kill -USR1 {}", e.child.id()),
        );
    let conf_path = dir.join("logrotate.conf");
    std::fs::write(&conf_path, conf).expect("conf");
    let c = client();
    // Requests keep flowing while logrotate runs.
    let url = e.url("/during");
    let flow = tokio::spawn(async move {
        let c = client();
        let mut n = 0;
        for _ in 0..60 {
            if let Ok(r) = c.get(url.clone()).send().await {
                if r.status() == 200 {
                    n += 1;
                }
            }
        }
        n
    });
    for _ in 0..5 {
        assert_eq!(
            c.get(e.url("/before")).send().await.expect("r").status(),
            200
        );
    }
    eventually("before lines logged", DEADLINE, async || {
        lines_with(&log, "/before") == 5
    })
    .await;
    let st = Command::new(&logrotate)
        .arg("-f")
        .arg("-s")
        .arg(dir.join("logrotate.state"))
        .arg(&conf_path)
        .status()
        .expect("logrotate");
    assert!(st.success(), "logrotate failed");
    eventually("the reopen is logged", DEADLINE, async || {
        e.stderr_text().contains("SIGUSR1: log files reopened")
    })
    .await;
    let during = flow.await.expect("flow");
    for _ in 0..7 {
        assert_eq!(
            c.get(e.url("/after")).send().await.expect("r").status(),
            200
        );
    }
    let rotated = dir.join("access.log.1");
    eventually("after lines in the new file", DEADLINE, async || {
        lines_with(&log, "/after") == 7
    })
    .await;
    assert_eq!(
        lines_with(&rotated, "/after"),
        0,
        "nothing after the signal in the old file"
    );
    assert_eq!(lines_with(&rotated, "/before"), 5);
    eventually("no line lost", DEADLINE, async || {
        lines_with(&rotated, "/during") + lines_with(&log, "/during") == during
    })
    .await;
}

/// Build the package from the binary the tests use (one build for tests and package:
/// `make deb` builds the optimised one) and check it as Debian would.
#[test]
fn the_debian_package_installs_a_hardened_service() {
    let dir = TempDir::new("deb");
    let deb = dir.path().join("ecluse.deb");
    let bin_dir = Path::new(bin()).parent().expect("bin dir");
    let profile = bin_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let profile = if profile == "debug" { "dev" } else { profile };
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "deb",
            "--no-build",
            "--fast",
            "--profile",
            profile,
            "--output",
        ])
        .arg(&deb)
        .output()
        .expect("cargo deb (make test installs cargo-deb)");
    assert!(
        out.status.success(),
        "cargo deb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dpkg = |args: &[&str]| {
        let o = Command::new(tool("dpkg-deb"))
            .arg(args[0])
            .arg(&deb)
            .args(&args[1..])
            .output()
            .expect("dpkg-deb");
        assert!(
            o.status.success(),
            "dpkg-deb {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let contents = dpkg(&["-c"]);
    for f in [
        "./usr/bin/ecluse",
        "./etc/ecluse/ecluse.yaml",
        "./etc/logrotate.d/ecluse",
        "ecluse.service",
        "./usr/share/doc/ecluse/ecluse.yaml",
    ] {
        assert!(
            contents.contains(f),
            "{f} missing from the package:\n{contents}"
        );
    }
    let conffiles = dpkg(&["-I", "conffiles"]);
    assert!(conffiles.contains("/etc/ecluse/ecluse.yaml"), "{conffiles}");
    let postinst = dpkg(&["-I", "postinst"]);
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper"),
        "the unit is enabled:\n{postinst}"
    );
    // Maintainer scripts are valid POSIX shell.
    for s in ["postinst", "postrm"] {
        let st = Command::new("sh")
            .arg("-n")
            .arg(root().join("pkg/debian").join(s))
            .status()
            .expect("sh");
        assert!(st.success(), "{s} is not valid sh");
    }
    // Lintian: no error (warnings are printed for the record).
    let l = Command::new(tool("lintian"))
        .args(["--tag-display-limit", "0", "--fail-on", "error"])
        .arg(&deb)
        .output()
        .expect("lintian");
    assert!(
        l.status.success(),
        "lintian errors:\n{}{}",
        String::from_utf8_lossy(&l.stdout),
        String::from_utf8_lossy(&l.stderr)
    );
    // The unit as installed: systemd-analyze verify on an extracted root.
    let root_dir = dir.path().join("root");
    let st = Command::new(tool("dpkg-deb"))
        .arg("-x")
        .arg(&deb)
        .arg(&root_dir)
        .status()
        .expect("extract");
    assert!(st.success());
    let unit = [
        "lib/systemd/system/ecluse.service",
        "usr/lib/systemd/system/ecluse.service",
    ]
    .iter()
    .map(|p| root_dir.join(p))
    .find(|p| p.exists())
    .expect("unit in the package");
    let text = std::fs::read_to_string(&unit).expect("unit");
    for want in [
        "Type=notify",
        "User=ecluse",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=ecluse",
        "RuntimeDirectory=ecluse",
    ] {
        assert!(text.contains(want), "{want} missing from the unit");
    }
    // Verify the unit against this machine's systemd, with the packaged binary in place
    // of /usr/bin/ecluse.
    let verify_dir = dir.path().join("verify");
    std::fs::create_dir_all(&verify_dir).expect("dir");
    let packaged_bin = root_dir.join("usr/bin/ecluse");
    let local = text.replace("/usr/bin/ecluse", &packaged_bin.display().to_string());
    let local_unit = verify_dir.join("ecluse.service");
    std::fs::write(&local_unit, local).expect("unit copy");
    let v = Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&local_unit)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&v.stderr).to_string();
    // Warnings about the machine itself (no running systemd in a container) are not the
    // unit's; anything naming the unit file is.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ecluse.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {err}");
    // The packaged policy is valid once its secrets exist.
    let policy = std::fs::read_to_string(root_dir.join("etc/ecluse/ecluse.yaml")).expect("policy");
    let secrets = dir.path().join("etc");
    std::fs::create_dir_all(&secrets).expect("dir");
    std::fs::write(
        secrets.join("ticket.key"),
        "k1:0123456789abcdef0123456789abcdef0123456789\n",
    )
    .expect("key");
    std::fs::write(
        secrets.join("admin.token"),
        "0123456789abcdef0123456789abcdef",
    )
    .expect("token");
    let policy = policy.replace("/etc/ecluse/", &format!("{}/", secrets.display()));
    let p = dir.path().join("ecluse.yaml");
    std::fs::write(&p, policy).expect("policy");
    let c = Command::new(bin())
        .arg("check")
        .arg(&p)
        .output()
        .expect("check");
    assert!(
        c.status.success(),
        "the packaged policy: {}",
        String::from_utf8_lossy(&c.stderr)
    );
}
