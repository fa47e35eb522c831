//! Test harness: the real `ecluse` binary on port 0, real origins on port 0, a real HTTP
//! client. Readiness is polled with a deadline; nothing sleeps to synchronise.
#![allow(dead_code)]

pub mod lenient_ent;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ecluse-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ecluse run` process.
pub struct Ecluse {
    pub child: Child,
    pub proxy: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ecluse")
}

fn parse_addr(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix(prefix)?;
    let rest = rest
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    rest.parse().ok()
}

impl Ecluse {
    /// Write `yaml` to a temp file and start ecluse on it; waits until `/readyz` is 200.
    pub fn start(yaml: &str) -> Ecluse {
        Self::start_with(yaml, &[], |_| {})
    }

    /// Same, with extra files written next to the config first (`(name, contents)`).
    pub fn start_with(yaml: &str, files: &[(&str, &[u8])], prep: impl FnOnce(&Path)) -> Ecluse {
        Self::start_full(yaml, files, prep, &[])
    }

    /// Same, with extra arguments after `run --config FILE` (e.g. `--upgrade`).
    pub fn start_full(
        yaml: &str,
        files: &[(&str, &[u8])],
        prep: impl FnOnce(&Path),
        args: &[&str],
    ) -> Ecluse {
        Self::start_full_env(yaml, files, prep, args, &[])
    }

    /// Same, with environment variables set for the process (after the defaults, so
    /// `TMPDIR` may be replaced).
    pub fn start_full_env(
        yaml: &str,
        files: &[(&str, &[u8])],
        prep: impl FnOnce(&Path),
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Ecluse {
        let dir = TempDir::new("ecluse");
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write file");
        }
        prep(dir.path());
        let config = dir.path().join("ecluse.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info,pingora=warn")
            // Each process gets its own temp dir, so the default `state_dir` (waiting-room
            // snapshots) is never shared between tests running in parallel.
            .env("TMPDIR", dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ecluse");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("stdout");
            let sink = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line.clone());
                    sink.lock().expect("lock").push(line);
                }
            });
            let err = child.stderr.take().expect("stderr");
            let sink = stderr.clone();
            // ECLUSE_TEST_ECHO=1 shows each instance's log as it runs (debugging).
            let echo = std::env::var_os("ECLUSE_TEST_ECHO").is_some();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("ecluse: {line}");
                    }
                    sink.lock().expect("lock").push(line);
                }
            });
        }
        let deadline = Instant::now() + DEADLINE;
        let (mut proxy, mut tls, mut admin) = (None, None, None);
        while admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    proxy = proxy.or_else(|| parse_addr(&line, "listening proxy "));
                    tls = tls.or_else(|| parse_addr(&line, "listening tls "));
                    admin = admin.or_else(|| parse_addr(&line, "listening admin "));
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "ecluse did not print its addresses; stderr:\n{}",
                        stderr.lock().expect("lock").join("\n")
                    );
                }
            }
        }
        let e = Ecluse {
            child,
            proxy: proxy.expect("proxy address printed"),
            tls,
            admin: admin.expect("admin"),
            config,
            stdout,
            stderr,
            _dir: dir,
        };
        e.wait_ready();
        e
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok((200, _)) = raw_get(self.admin, "/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ecluse never became ready; stderr:\n{}",
                self.stderr.lock().expect("lock").join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    #[allow(unsafe_code)] // kill(2); the crate denies unsafe code (Cargo.toml [lints])
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A metric's value from `/metrics` (sum over series matching all `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = raw_get(self.admin, "/metrics").expect("metrics");
        metric_value(&body, name, labels)
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    pub fn write_config(&self, yaml: &str) {
        // Write then rename, like an editor does, so the watcher never sees half a file.
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }
}

impl Drop for Ecluse {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGINT);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        {
            if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += v;
            }
        }
    }
    sum
}

/// A minimal blocking HTTP/1.1 GET (for readiness polling without a runtime).
pub fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    raw_request(addr, "GET", path, &[], b"")
}

pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// An origin that answers every request with its own name and the request's headers as
/// JSON (`{"server": name, "path": …, "headers": {…}}`), on 127.0.0.1 port 0.
pub struct EchoOrigin {
    pub addr: SocketAddr,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl EchoOrigin {
    pub async fn start(name: &'static str) -> EchoOrigin {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = tokio::select! {
                    a = l.accept() => match a { Ok(x) => x, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let h = h.clone();
                        async move {
                            h.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let mut headers = serde_json::Map::new();
                            for (k, v) in req.headers() {
                                headers.insert(
                                    k.as_str().to_string(),
                                    serde_json::Value::String(
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    ),
                                );
                            }
                            let path = req.uri().path().to_string();
                            let method = req.method().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let v = serde_json::json!({"server": name, "path": path, "method": method, "headers": headers, "body_len": body.len()});
                            // `/logout` ends the waiting-room session, like an ENT would.
                            let end = if path == "/logout" { "1" } else { "" };
                            let mut b = hyper::Response::builder();
                            if !end.is_empty() {
                                b = b.header("x-ecluse-end-session", end);
                            }
                            Ok::<_, std::convert::Infallible>(
                                b.header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(v.to_string())))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        EchoOrigin {
            addr,
            hits,
            stop: Some(tx),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 where nothing listens (bound then released).
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A plain reqwest client that does not pool (each test controls its own connections).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Poll `f` until it returns true, with a deadline.
pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real `redis-server` on a free loopback port, nothing saved to disk.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    /// Run as a Redis Cluster node.
    cluster: bool,
    /// More `redis-server` arguments (TLS, `--replicaof`).
    extra: Vec<String>,
}

fn redis_bin() -> &'static str {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("`redis-server` is missing: install Debian's `redis-server` (`scripts/need.sh redis-server`, which `make test` runs)");
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_as(false)
    }

    /// With more `redis-server` arguments (TLS, `--replicaof`).
    pub fn start_with(extra: &[String]) -> Redis {
        Redis::start_full(false, extra)
    }

    fn start_as(cluster: bool) -> Redis {
        Redis::start_full(cluster, &[])
    }

    fn start_full(cluster: bool, extra: &[String]) -> Redis {
        let dir = TempDir::new("redis");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            let mut r = Redis {
                child: None,
                port,
                dir: TempDir(dir.path().to_path_buf()),
                cluster,
                extra: extra.to_vec(),
            };
            if r.spawn() {
                std::mem::forget(dir);
                return r;
            }
            r.child.take().map(|mut c| c.kill());
        }
        panic!("redis-server did not start on a free loopback port");
    }

    /// Start (or restart) on the same port; true once it answers PING.
    pub fn spawn(&mut self) -> bool {
        let child = Command::new(redis_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(if self.cluster {
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"][..]
            } else {
                &[][..]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if ping(self.port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stop answering without losing anything (SIGSTOP: a hung Redis, a partition), or
    /// go on again (SIGCONT).
    pub fn freeze(&self, frozen: bool) {
        let c = self.child.as_ref().expect("redis-server running");
        let ok = Command::new("kill")
            .arg(if frozen { "-STOP" } else { "-CONT" })
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -STOP/-CONT redis-server");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (Debian's redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster: three masters on free loopback ports, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_as(true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = redis_cli(nodes[0].port, &args);
        assert!(out.contains("[OK]"), "redis-cli --cluster create: {out}");
        let deadline = Instant::now() + DEADLINE;
        for n in &nodes {
            while !redis_cli(n.port, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the Redis Cluster did not form");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// A node that does not hold `key`'s slot: a client given this node must follow a
    /// `MOVED` redirection to reach the key.
    pub fn port_not_holding(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .map(|n| n.port)
            .find(|p| redis_cli(*p, &["get", key]).contains("MOVED"))
            .expect("some node redirects")
    }
}

/// A free port on 127.0.0.1 (bound then released), for servers that take a port number.
pub fn free_port() -> u16 {
    dead_port().port()
}

/// A certificate authority made for one test, and server certificates it signs.
pub struct TestCa {
    pub cert_pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        TestCa {
            cert_pem: cert.pem(),
            params,
            key,
        }
    }

    /// (certificate, key) in PEM for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Redis with Sentinel on loopback: a master, one replica, three Sentinels watching the
/// master under the name `ent` (quorum 2, a master silent for 1 s is down).
pub struct SentinelSet {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<(u16, Proc)>,
    _dir: TempDir,
}

impl SentinelSet {
    /// `tls`: extra arguments for the master and the replica, and (when it is `Some`)
    /// the replica also talks TLS to its master.
    pub fn start(tls: &[String]) -> SentinelSet {
        let master = Redis::start_with(tls);
        let mut replica_args = tls.to_vec();
        replica_args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master.port.to_string(),
        ]);
        let replica = Redis::start_with(&replica_args);
        let deadline = Instant::now() + DEADLINE;
        while !redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        let dir = TempDir::new("sentinel");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("s{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor ent 127.0.0.1 {} 2\nsentinel down-after-milliseconds ent 1000\nsentinel failover-timeout ent 10000\nsentinel parallel-syncs ent 1\n",
                    dir.path().display(),
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new(redis_bin())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            sentinels.push((port, Proc(child)));
        }
        // Every Sentinel knows the two others and the replica (a failover needs a
        // majority of them to agree).
        for (port, _) in &sentinels {
            loop {
                let m = redis_cli(*port, &["sentinel", "master", "ent"]);
                let field = |name: &str| {
                    let mut it = m.lines();
                    while let Some(l) = it.next() {
                        if l.trim() == name {
                            return it.next().unwrap_or("").trim().to_string();
                        }
                    }
                    String::new()
                };
                if field("num-other-sentinels") == "2" && field("num-slaves") == "1" {
                    break;
                }
                assert!(
                    Instant::now() < deadline + Duration::from_secs(20),
                    "the Sentinels did not find each other: {m}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        SentinelSet {
            master,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    /// The master's port as the Sentinels name it now.
    pub fn master_port(&self) -> Option<u16> {
        let out = redis_cli(
            self.sentinels[0].0,
            &["sentinel", "get-master-addr-by-name", "ent"],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Read until the server closes (EOF or reset) or `limit` passes; what came back, and
/// when the connection closed (None: still open at `limit`).
pub async fn read_until_closed(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> (Vec<u8>, Option<Instant>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tokio::io::AsyncReadExt::read(s, &mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let t = String::from_utf8_lossy(raw);
    t.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A policy with one route to `origin` and `clients` as `server.clients` (flow YAML).
pub fn clients_yaml(origin: SocketAddr, clients: &str) -> String {
    format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
server:
  threads: 2
  grace_period: 0s
  shutdown_timeout: 2s
  clients: {{ {clients} }}
access_log: {{ enabled: false }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent }}
"#
    )
}

/// A self-signed certificate for `localhost`, for the TLS listener tests.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

impl SelfSigned {
    pub fn localhost() -> SelfSigned {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        SelfSigned {
            cert_pem: c.cert.pem(),
            key_pem: c.signing_key.serialize_pem(),
        }
    }

    /// `cert.pem` and `key.pem`, for [`Ecluse::start_with`].
    pub fn files(&self) -> [(&'static str, &[u8]); 2] {
        [
            ("cert.pem", self.cert_pem.as_bytes()),
            ("key.pem", self.key_pem.as_bytes()),
        ]
    }

    /// An HTTPS client that trusts this certificate and finds `localhost` at `tls`.
    pub fn client(&self, tls: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("pem"),
            )
            .resolve("localhost", tls)
            .build()
            .expect("client")
    }
}

/// ecluse with every section of the admin status page in use (issue #26): a room of one,
/// a feature that can go off, an origin with a dead server beside a live one, a cached
/// route and a rate-limited one; `token` and the ticket `keys` written beside the policy.
/// Shared by the status page's own tests and its accessibility audit.
pub fn status_page_policy(
    origin: std::net::SocketAddr,
    dead: std::net::SocketAddr,
    token: &str,
    keys: &str,
) -> Ecluse {
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0", token_file: admin.token }}
server: {{ state_dir: state, grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ enabled: false }}
waiting_rooms:
  ent: {{ active_users: 1, new_users_per_minute: 600, poll_interval: 1s, abandon_timeout: 10m, secret_file: keys }}
degradation:
  levels:
    - name: normal
    - {{ name: busy, disable: [visio], enter: {{ error_rate: 0.9 }}, exit: {{ error_rate: 0.5 }} }}
cache: {{ memory: 1MiB }}
origins:
  ent: {{ servers: ["{origin}"], max_inflight: 40, health_check: {{ disabled: true }} }}
  files:
    servers: ["{origin}", "{dead}"]
    health_check: {{ path: /, interval: 200ms, unhealthy_threshold: 1 }}
routes:
  - {{ name: visio, match: {{ path_prefix: /visio/ }}, origin: ent, feature: visio }}
  - {{ name: files, match: {{ path_prefix: /files/ }}, origin: files, cache: {{ mode: public }} }}
  - name: search
    match: {{ path_prefix: /search/ }}
    origin: ent
    rate_limits: [{{ key: route, rate: 1/h, burst: 1 }}]
  - {{ name: ent, origin: ent, waiting_room: ent }}
"#
    );
    Ecluse::start_with(
        &yaml,
        &[("keys", keys.as_bytes()), ("admin.token", token.as_bytes())],
        |_| {},
    )
}

/// `ecluse check` on a policy file holding `text`, which must be refused: its stderr
/// (every `FILE:LINE:COL: message` and the count of problems).
pub fn check_refuses(text: &str) -> String {
    let dir = TempDir::new("check-refuses");
    let file = dir.path().join("ecluse.yaml");
    std::fs::write(&file, text).expect("write");
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&file)
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "check accepted the file: {err}");
    err
}

/// Start Debian's HAProxy on the config file `cfg`, its two front ends bound by the test
/// (on port 0, so never a fixed port) and handed over as `fd@3` and `fd@4`. The caller
/// keeps nothing open: HAProxy holds the sockets once this returns.
#[allow(unsafe_code)] // pre_exec (dup2 between fork and exec); the crate denies unsafe code
pub fn spawn_haproxy(
    cfg: &std::path::Path,
    fds: [std::os::unix::io::RawFd; 2],
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let bin = ["/usr/sbin/haproxy", "haproxy"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("haproxy installed (make test installs it: scripts/need.sh haproxy)");
    let mut cmd = Command::new(bin);
    cmd.arg("-db")
        .arg("-f")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let [first, second] = fds;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Copies above 3 and 4 first, so neither dup2 overwrites the other's
            // source; dup2's copies do not close on exec.
            let (a, b) = (
                libc::fcntl(first, libc::F_DUPFD, 10),
                libc::fcntl(second, libc::F_DUPFD, 10),
            );
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn haproxy")
}
