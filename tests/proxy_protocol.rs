//! Behind an L4 load balancer: a real HAProxy (Debian's) in TCP mode in front of ecluse,
//! speaking the PROXY protocol v2 (`send-proxy-v2`) and v1 (`send-proxy`). Loopback has
//! many addresses: the client connects from 127.0.0.3/127.0.0.4, HAProxy reaches ecluse
//! from 127.0.0.2 (the only address in `proxy_protocol_from`), direct clients come from
//! 127.0.0.1.

mod common;

use common::lenient_ent::LenientEnt;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::{Child, Command};
use std::time::Duration;

const LB: &str = "127.0.0.2";

fn yaml(origin: SocketAddr) -> String {
    format!(
        r#"listen:
  - {{ address: "127.0.0.1:0", proxy_protocol: true, proxy_protocol_from: ["{LB}/32"] }}
admin: {{ listen: "127.0.0.1:0" }}
server: {{ grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ path: access.log }}
origins:
  ent: {{ servers: ["{origin}"], health_check: {{ disabled: true }} }}
routes:
  - name: limited
    match: {{ path_prefix: /limited }}
    origin: ent
    rate_limits: [{{ key: client_ip, rate: 1/m, burst: 1 }}]
  - name: ent
    match: {{ path_prefix: / }}
    origin: ent
"#
    )
}

/// HAProxy with two TCP frontends (v2 and v1) on listening sockets made here on port 0
/// and handed over as fds 3 and 4 (`bind fd@N`): no fixed port, nothing to wait for.
struct Haproxy {
    child: Child,
    v2: SocketAddr,
    v1: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(ecluse: SocketAddr) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let l2 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let l1 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (v2, v1) = (
            l2.local_addr().expect("addr"),
            l1.local_addr().expect("addr"),
        );
        let cfg = format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
frontend v2\n  bind fd@3\n  default_backend v2\n\
frontend v1\n  bind fd@4\n  default_backend v1\n\
backend v2\n  server ecluse {ecluse} source {LB} send-proxy-v2\n\
backend v1\n  server ecluse {ecluse} source {LB} send-proxy\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write cfg");
        let (f2, f1) = (l2.as_raw_fd(), l1.as_raw_fd());
        let child = spawn_haproxy(&path, [f2, f1]);
        // The sockets live on in HAProxy.
        drop((l2, l1));
        Haproxy {
            child,
            v2,
            v1,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client on its own loopback address.
/// Clients write the balancer's port in `Host` (`127.0.0.1:FRONT`): ops declare it as a
/// public port (#17: any other port is 421), here once HAProxy has its ports.
async fn declare_balancer_ports(e: &Ecluse, yaml: &str, lb: &Haproxy) {
    let declared = format!(
        "server: {{ public_ports: [{}, {}], grace_period",
        lb.v2.port(),
        lb.v1.port()
    );
    assert!(yaml.contains("server: { grace_period"), "{yaml}");
    e.write_config(&yaml.replacen("server: { grace_period", &declared, 1));
    let r = reqwest::Client::new()
        .post(e.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

fn log_lines(e: &Ecluse) -> Vec<serde_json::Value> {
    let path = e.config.parent().expect("dir").join("access.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn logged_client(e: &Ecluse, path: &str) -> String {
    let mut found = String::new();
    eventually("the access log line", Duration::from_secs(10), async || {
        found = log_lines(e)
            .into_iter()
            .rev()
            .find(|l| l["path"] == path)
            .and_then(|l| l["client_ip"].as_str().map(str::to_string))
            .unwrap_or_default();
        !found.is_empty()
    })
    .await;
    found
}

fn header_seen(ent: &LenientEnt, path: &str, name: &str) -> Option<String> {
    ent.seen()
        .into_iter()
        .rev()
        .find(|s| s.path == path)?
        .headers
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_client_address_is_the_real_one_everywhere() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr));
    let lb = Haproxy::start(e.proxy);
    declare_balancer_ports(&e, &yaml(ent.addr), &lb).await;
    for (front, version) in [(lb.v2, "v2"), (lb.v1, "v1")] {
        let path = format!("/page/{version}");
        let r = client_from("127.0.0.3")
            .get(format!("http://{front}{path}"))
            .send()
            .await
            .expect("through haproxy");
        assert_eq!(r.status(), 200, "{version}");
        assert_eq!(
            header_seen(&ent, &path, "x-forwarded-for").as_deref(),
            Some("127.0.0.3"),
            "{version}: the ENT sees the client, not the balancer"
        );
        assert_eq!(
            header_seen(&ent, &path, "x-real-ip").as_deref(),
            Some("127.0.0.3")
        );
        assert_eq!(logged_client(&e, &path).await, "127.0.0.3", "{version}");
    }
    // Rate limits key on the client: two clients behind the one balancer each get their
    // own allowance, and the second request of one of them is refused.
    for ip in ["127.0.0.4", "127.0.0.5"] {
        let r = client_from(ip)
            .get(format!("http://{}/limited/x", lb.v2))
            .send()
            .await
            .expect("first");
        assert_eq!(r.status(), 200, "{ip}'s first request");
    }
    let r = client_from("127.0.0.4")
        .get(format!("http://{}/limited/x", lb.v2))
        .send()
        .await
        .expect("second");
    assert_eq!(r.status(), 429);
}

/// Write `bytes` from `from`, return what came back until the connection closed.
fn exchange(from: &str, to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(
        &format!("{from}:0")
            .parse::<SocketAddr>()
            .expect("addr")
            .into(),
    )
    .expect("bind");
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_is_believed_from_the_balancer_only() {
    let ent = LenientEnt::start().await;
    let e = Ecluse::start(&yaml(ent.addr));
    // A direct client claiming another address: read as HTTP, a malformed request.
    for claim in [
        b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\n".to_vec(),
        [
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".as_slice(),
            &[6, 6, 6, 6, 127, 0, 0, 1, 4, 210, 0, 80],
        ]
        .concat(),
    ] {
        let mut req = claim.clone();
        req.extend_from_slice(b"GET /claimed HTTP/1.1\r\nHost: ent\r\nConnection: close\r\n\r\n");
        let answer = exchange("127.0.0.1", e.proxy, &req);
        assert_eq!(
            status_of(&answer),
            Some(400),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(ent.seen().iter().all(|s| s.path != "/claimed"));
    assert!(log_lines(&e).iter().all(|l| l["client_ip"] != "6.6.6.6"));
    // A direct client without a header is served as itself.
    let answer = exchange(
        "127.0.0.1",
        e.proxy,
        b"GET /direct HTTP/1.1\r\nHost: ent\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), Some(200));
    assert_eq!(logged_client(&e, "/direct").await, "127.0.0.1");
    // The balancer's address without a header: closed without an answer (guessing would
    // give every client behind it the balancer's address).
    let answer = exchange(
        LB,
        e.proxy,
        b"GET /nolb HTTP/1.1\r\nHost: ent\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert!(ent.seen().iter().all(|s| s.path != "/nolb"));
    assert!(
        e.metric(
            "ecluse_client_connections_refused_total",
            &[("reason", "proxy_protocol")]
        ) >= 1.0
    );
}

#[test]
fn check_refuses_a_proxy_protocol_listener_without_its_balancers() {
    let dir = TempDir::new("pp-check");
    let path = dir.path().join("e.yaml");
    std::fs::write(
        &path,
        "listen:\n  - { address: \"127.0.0.1:0\", proxy_protocol: true }\n  - { address: \"127.0.0.1:0\", proxy_protocol_from: [\"10.0.0.0/8\"] }\n  - { address: \"127.0.0.1:0\", proxy_protocol: true, proxy_protocol_from: [\"10.0.0.300/8\"] }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: ent, origin: ent }\n",
    )
    .expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&path)
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(":2:") && err.contains("proxy_protocol_from"),
        "{err}"
    );
    assert!(err.contains(":3:") && err.contains("no effect"), "{err}");
    assert!(err.contains(":4:") && err.contains("10.0.0.300/8"), "{err}");
}

struct Pem {
    cert: String,
    key: String,
}

fn cert_for(name: &str) -> Pem {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
    Pem {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

fn der(pem: &Pem) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

/// An HTTPS request from `from` to `to` asking for `sni` (the host name is resolved to
/// `to`): the status and the leaf certificate presented.
async fn https_from(
    from: &str,
    to: SocketAddr,
    sni: &str,
    path: &str,
) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let c = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().expect("ip"))
        .resolve(sni, to)
        .danger_accept_invalid_certs(true)
        .tls_info(true)
        .http1_only()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let r = c
        .get(format!("https://{sni}:{}{path}", to.port()))
        .send()
        .await?;
    let leaf = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    Ok((r.status().as_u16(), leaf))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_tls_listener_sees_the_client_and_still_picks_by_sni() {
    let ent = LenientEnt::start().await;
    let (a, b) = (cert_for("a.test"), cert_for("b.test"));
    let yaml = format!(
        r#"listen: ["127.0.0.1:0"]
tls:
  listen:
    - {{ address: "127.0.0.1:0", proxy_protocol: true, proxy_protocol_from: ["{LB}/32"] }}
  http2: false
  certificates:
    - {{ cert_file: a.crt, key_file: a.key }}
    - {{ cert_file: b.crt, key_file: b.key }}
admin: {{ listen: "127.0.0.1:0" }}
server: {{ grace_period: 0s, shutdown_timeout: 2s }}
access_log: {{ path: access.log }}
origins:
  ent: {{ servers: ["{}"], health_check: {{ disabled: true }} }}
routes:
  - {{ name: ent, match: {{ path_prefix: / }}, origin: ent }}
"#,
        ent.addr
    );
    let e = Ecluse::start_with(
        &yaml,
        &[
            ("a.crt", a.cert.as_bytes()),
            ("a.key", a.key.as_bytes()),
            ("b.crt", b.cert.as_bytes()),
            ("b.key", b.key.as_bytes()),
        ],
        |_| {},
    );
    let tls = e.tls.expect("tls listener");
    // HAProxy in TCP mode passes the TLS bytes through, after its PROXY header.
    let lb = Haproxy::start(tls);
    declare_balancer_ports(&e, &yaml, &lb).await;
    for (front, version) in [(lb.v2, "v2"), (lb.v1, "v1")] {
        for (sni, pem) in [("a.test", &a), ("b.test", &b)] {
            let path = format!("/tls/{version}/{sni}");
            let (status, leaf) = https_from("127.0.0.3", front, sni, &path)
                .await
                .expect("through haproxy");
            assert_eq!(status, 200, "{version} {sni}");
            assert_eq!(leaf, der(pem), "{version}: the certificate for {sni}");
            assert_eq!(
                header_seen(&ent, &path, "x-forwarded-for").as_deref(),
                Some("127.0.0.3"),
                "{version}: the ENT sees the client, not the balancer"
            );
            assert_eq!(logged_client(&e, &path).await, "127.0.0.3", "{version}");
        }
    }
    // A direct client (not a balancer) is served as itself, by SNI too.
    let (status, leaf) = https_from("127.0.0.1", tls, "b.test", "/tls/direct")
        .await
        .expect("direct");
    assert_eq!((status, leaf), (200, der(&b)));
    assert_eq!(logged_client(&e, "/tls/direct").await, "127.0.0.1");
    // A direct client sending a PROXY header of its own: read as the TLS handshake,
    // which it is not; nothing is served and its claimed address is never used.
    for claim in [
        b"PROXY TCP4 6.6.6.6 127.0.0.1 1234 443\r\n".to_vec(),
        [
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".as_slice(),
            &[6, 6, 6, 6, 127, 0, 0, 1, 4, 210, 1, 187],
        ]
        .concat(),
    ] {
        let mut req = claim.clone();
        req.extend_from_slice(b"GET /claimed HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let answer = exchange("127.0.0.1", tls, &req);
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert!(ent.seen().iter().all(|s| s.path != "/claimed"));
    assert!(log_lines(&e).iter().all(|l| l["client_ip"] != "6.6.6.6"));
    // The balancer's address without a header (a TLS ClientHello straight away): closed.
    let refused = e.metric(
        "ecluse_client_connections_refused_total",
        &[("reason", "proxy_protocol")],
    );
    assert!(https_from(LB, tls, "a.test", "/tls/nolb").await.is_err());
    assert!(ent.seen().iter().all(|s| s.path != "/tls/nolb"));
    assert!(
        e.metric(
            "ecluse_client_connections_refused_total",
            &[("reason", "proxy_protocol")]
        ) > refused
    );
}

#[test]
fn check_refuses_a_tls_proxy_protocol_listener_without_its_balancers() {
    let dir = TempDir::new("pp-tls-check");
    let a = cert_for("a.test");
    std::fs::write(dir.path().join("a.crt"), &a.cert).expect("write");
    std::fs::write(dir.path().join("a.key"), &a.key).expect("write");
    let path = dir.path().join("e.yaml");
    std::fs::write(
        &path,
        "listen: [\"127.0.0.1:0\"]\ntls:\n  cert_file: a.crt\n  key_file: a.key\n  listen:\n    - { address: \"127.0.0.1:0\", proxy_protocol: true }\n    - { address: \"127.0.0.1:0\", proxy_protocol_from: [\"10.0.0.0/8\"] }\n    - { address: \"127.0.0.1:0\", proxy_protocol: true, proxy_protocol_from: [\"10.0.0.300/8\"] }\n    - { address: \"127.0.0.1:0\", proxy_protocol: true, proxy_protocol_from: [\"10.0.0.0/8\"] }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: ent, origin: ent }\n",
    )
    .expect("write");
    let check = |p: &std::path::Path| {
        let out = Command::new(bin())
            .arg("check")
            .arg(p)
            .output()
            .expect("check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = check(&path);
    assert!(!ok, "{err}");
    assert!(
        err.contains("e.yaml:6:") && err.contains("proxy_protocol_from"),
        "{err}"
    );
    assert!(
        err.contains("e.yaml:7:") && err.contains("no effect"),
        "{err}"
    );
    assert!(
        err.contains("e.yaml:8:") && err.contains("10.0.0.300/8"),
        "{err}"
    );
    assert!(
        !err.contains("e.yaml:9:"),
        "the complete entry is fine: {err}"
    );
    // The same listener, complete, passes.
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "listen: [\"127.0.0.1:0\"]\ntls:\n  cert_file: a.crt\n  key_file: a.key\n  listen:\n    - \"127.0.0.1:0\"\n    - { address: \"127.0.0.1:0\", proxy_protocol: true, proxy_protocol_from: [\"10.0.0.0/8\"] }\norigins:\n  ent: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: ent, origin: ent }\n",
    )
    .expect("write");
    let (ok, err) = check(&good);
    assert!(ok, "{err}");
}
