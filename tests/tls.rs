//! TLS end to end: health checks to a TLS origin with its settings, `ecluse check` on
//! origin TLS that cannot work, listener certificates chosen by SNI and renewed by a
//! reload without dropping open connections.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pem {
    cert: String,
    key: String,
}

fn cert_for(names: &[&str]) -> Pem {
    let c =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("cert");
    Pem {
        cert: c.cert.pem(),
        key: c.signing_key.serialize_pem(),
    }
}

/// A TLS origin on port 0 answering 200 to every request; counts requests.
async fn tls_origin(pem: &Pem) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    pingora::tls::install_default_crypto_provider();
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .map(|c| c.expect("pem"))
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = pingora::tls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, hits)
}

async fn state(e: &Ecluse) -> serde_json::Value {
    client()
        .get(e.admin_url("/admin/state"))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json")
}

fn server_state(st: &serde_json::Value, origin: &str) -> serde_json::Value {
    st["origins"]
        .as_array()
        .and_then(|a| a.iter().find(|o| o["name"] == origin))
        .map(|o| o["servers"][0].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_with_the_origin_settings() {
    let good_pem = cert_for(&["ent.test"]);
    let bad_pem = cert_for(&["ent.test"]); // same name, not signed by the trusted CA
    let (good, good_hits) = tls_origin(&good_pem).await;
    let (bad, _) = tls_origin(&bad_pem).await;
    let hc = "health_check: { path: /health, interval: 100ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 2 }";
    let yaml = format!(
        r#"
listen: ["127.0.0.1:0"]
admin: {{ listen: "127.0.0.1:0" }}
origins:
  good: {{ servers: ["{good}"], tls: {{ sni: ent.test, ca_file: ca.pem }}, {hc} }}
  bad: {{ servers: ["{bad}"], tls: {{ sni: ent.test, ca_file: ca.pem }}, {hc} }}
routes:
  - {{ name: bad, match: {{ path_prefix: /bad }}, origin: bad }}
  - {{ name: all, match: {{ path_prefix: / }}, origin: good }}
"#
    );
    let e = Ecluse::start_with(&yaml, &[("ca.pem", good_pem.cert.as_bytes())], |_| {});
    // The good server's checks reach its HTTP layer through TLS, and it stays healthy.
    eventually("TLS health checks reach the origin", DEADLINE, async || {
        good_hits.load(Ordering::Relaxed) >= 3
    })
    .await;
    let st = state(&e).await;
    let g = server_state(&st, "good");
    assert_eq!(g["healthy"], true, "{g}");
    assert!(g["check_error"].is_null(), "{g}");
    // The server with a certificate from another authority is out, with the reason.
    eventually(
        "the wrong certificate is marked unhealthy",
        DEADLINE,
        async || server_state(&state(&e).await, "bad")["healthy"] == false,
    )
    .await;
    let b = server_state(&state(&e).await, "bad");
    let why = b["check_error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("TLS handshake with `ent.test`") && why.contains("certificate"),
        "{why}"
    );
    // Proxied requests use the same settings.
    let r = client().get(e.url("/x")).send().await.expect("proxied");
    assert_eq!(r.status(), 200);
}

fn check_file(yaml: &str, files: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new("tlscheck");
    for (n, c) in files {
        std::fs::write(dir.path().join(n), c).expect("write");
    }
    let f = dir.path().join("policy.yaml");
    std::fs::write(&f, yaml).expect("write");
    let out = Command::new(bin())
        .arg("check")
        .arg(&f)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&f.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn check_refuses_origin_tls_that_cannot_work() {
    let pem = cert_for(&["ent.test"]);
    let other = cert_for(&["ent.test"]);
    let files = [
        ("c.pem", pem.cert.as_str()),
        ("k.pem", pem.key.as_str()),
        ("other.key", other.key.as_str()),
    ];
    let yaml = |origin: &str| {
        format!(
            "listen: [\"127.0.0.1:0\"]\norigins:\n  ent: {origin}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, origin: ent }}\n"
        )
    };
    let cases = [
        // Verification with an IP and no name to check.
        (
            r#"{ servers: ["10.0.0.5:443"], tls: true }"#,
            "FILE:3:",
            "set `tls.sni`",
        ),
        // Half a client certificate.
        (
            r#"{ servers: ["localhost:443"], tls: { client_cert: c.pem } }"#,
            "FILE:3:",
            "needs `client_key`",
        ),
        // A key that is another certificate's.
        (
            r#"{ servers: ["localhost:443"], tls: { client_cert: c.pem, client_key: other.key } }"#,
            "FILE:3:",
            "does not belong",
        ),
        // An unreadable CA file.
        (
            r#"{ servers: ["localhost:443"], tls: { ca_file: nope.pem } }"#,
            "FILE:3:",
            "cannot read",
        ),
        // Servers with different names and no `sni`.
        (
            r#"{ servers: ["localhost:443", "127.0.0.1:443"], tls: true }"#,
            "FILE:3:",
            "different host names",
        ),
        // Two spellings of the SNI.
        (
            r#"{ servers: ["localhost:443"], sni: localhost, tls: { sni: b.test } }"#,
            "FILE:3:",
            "not both",
        ),
    ];
    for (origin, pos, msg) in cases {
        let (code, err) = check_file(&yaml(origin), &files);
        assert_eq!(code, 1, "{origin}: {err}");
        assert!(err.contains(pos) && err.contains(msg), "{origin}: {err}");
    }
    // What can work is accepted: an IP with a name, verify off, a full client pair.
    for ok in [
        r#"{ servers: ["10.0.0.5:443"], tls: { sni: ent.test } }"#,
        r#"{ servers: ["10.0.0.5:443"], tls: { verify: false } }"#,
        r#"{ servers: ["localhost:443"], tls: { client_cert: c.pem, client_key: k.pem, ca_file: c.pem } }"#,
    ] {
        let (code, err) = check_file(&yaml(ok), &files);
        assert_eq!(code, 0, "{ok}: {err}");
    }
}

/// Connects to `tls` with `sni` and returns the presented leaf certificate (PEM body
/// compared as DER) and the open stream.
async fn handshake(
    tls: SocketAddr,
    sni: &str,
) -> (
    Vec<u8>,
    pingora::tls::ClientTlsStream<tokio::net::TcpStream>,
) {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    pingora::tls::install_default_crypto_provider();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tls).await.expect("connect");
    let s = pingora::tls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(sni.to_string()).expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    let leaf = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a certificate");
    (leaf, s)
}

fn der(pem: &Pem) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.cert.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec()
}

/// One keep-alive request on an open TLS connection; the status code.
async fn get_on(s: &mut pingora::tls::ClientTlsStream<tokio::net::TcpStream>, host: &str) -> u16 {
    let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                break;
            }
        }
        let n = s.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    status_of(&got).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_renew_on_reload_and_a_bad_one_is_refused() {
    let origin = EchoOrigin::start("ent").await;
    let a = cert_for(&["a.test"]);
    let b = cert_for(&["*.b.test"]);
    let yaml = format!(
        r#"
listen: ["127.0.0.1:0"]
tls:
  listen: ["127.0.0.1:0"]
  http2: false
  certificates:
    - {{ cert_file: a.crt, key_file: a.key }}
    - {{ cert_file: b.crt, key_file: b.key, name: b-wildcard }}
admin: {{ listen: "127.0.0.1:0" }}
server: {{ watch_config: false }}
origins:
  ent: {{ servers: ["{}"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, origin: ent }}
"#,
        origin.addr
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
    assert_eq!(handshake(tls, "a.test").await.0, der(&a));
    assert_eq!(handshake(tls, "x.b.test").await.0, der(&b));
    // An unknown name gets the default (first) certificate.
    assert_eq!(handshake(tls, "other.test").await.0, der(&a));
    assert!(
        e.metric(
            "ecluse_tls_certificate_expiry_seconds",
            &[("name", "b-wildcard")]
        ) > 86400.0
    );
    assert!(
        e.metric(
            "ecluse_tls_certificate_expiry_seconds",
            &[("name", "a.test")]
        ) > 86400.0
    );

    // A connection opened before the renewal.
    let (_, mut open) = handshake(tls, "a.test").await;
    assert_eq!(get_on(&mut open, "a.test").await, 200);

    // Renewal: new files under the same names, then SIGHUP.
    let dir = e.config.parent().expect("dir").to_path_buf();
    let a2 = cert_for(&["a.test"]);
    std::fs::write(dir.join("a.crt"), &a2.cert).expect("write");
    std::fs::write(dir.join("a.key"), &a2.key).expect("write");
    e.signal(libc::SIGHUP);
    eventually(
        "new connections see the renewed certificate",
        DEADLINE,
        async || handshake(tls, "a.test").await.0 == der(&a2),
    )
    .await;
    // The connection opened before still works.
    assert_eq!(get_on(&mut open, "a.test").await, 200);

    // A bad renewal (the key of another certificate) is refused; the last good one serves.
    let errors = e.metric("ecluse_config_reloads_total", &[("result", "error")]);
    let a3 = cert_for(&["a.test"]);
    std::fs::write(dir.join("a.crt"), &a3.cert).expect("write");
    std::fs::write(dir.join("a.key"), &b.key).expect("write");
    let r = client()
        .post(e.admin_url("/admin/reload"))
        .send()
        .await
        .expect("reload");
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("does not belong"), "{body}");
    assert_eq!(
        e.metric("ecluse_config_reloads_total", &[("result", "error")]),
        errors + 1.0
    );
    assert_eq!(handshake(tls, "a.test").await.0, der(&a2));
}

/// A certificate for `names` with a given serial number (what the client checks).
fn cert_serial(names: &[&str], serial: u64) -> Pem {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// The serial number of the leaf a client is presented for `sni`.
async fn served_serial(tls: SocketAddr, sni: &str) -> u64 {
    use x509_parser::prelude::FromDer;
    let (leaf, _) = handshake(tls, sni).await;
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(&leaf).expect("x509");
    x.tbs_certificate
        .serial
        .to_u64_digits()
        .first()
        .copied()
        .unwrap_or(0)
}

/// `link` now points at `target`, swapped atomically (a new link renamed over the old),
/// as certbot does in `live/`.
fn swap_link(link: &std::path::Path, target: &str) {
    let tmp = link.with_extension("new-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename link");
}

/// `path` replaced by a new file renamed over it (an editor, most renewal tools).
fn rename_over(path: &std::path::Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_change_and_a_half_written_pair_is_never_served() {
    let origin = EchoOrigin::start("ent").await;
    let a1 = cert_serial(&["a.test"], 101);
    let b1 = cert_serial(&["b.test"], 201);
    // No HUP, no admin call: only the files change (`watch_config` is on by default).
    let yaml = format!(
        r#"
listen: ["127.0.0.1:0"]
tls:
  listen: ["127.0.0.1:0"]
  http2: false
  certificates:
    - {{ cert_file: live/a/fullchain.pem, key_file: live/a/privkey.pem }}
    - {{ cert_file: b.crt, key_file: b.key }}
admin: {{ listen: "127.0.0.1:0" }}
origins:
  ent: {{ servers: ["{}"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, origin: ent }}
"#,
        origin.addr
    );
    let e = Ecluse::start_with(
        &yaml,
        &[("b.crt", b1.cert.as_bytes()), ("b.key", b1.key.as_bytes())],
        |dir| {
            // certbot's layout: live/ holds relative symlinks into archive/.
            std::fs::create_dir_all(dir.join("live/a")).expect("mkdir");
            std::fs::create_dir_all(dir.join("archive/a")).expect("mkdir");
            std::fs::write(dir.join("archive/a/fullchain1.pem"), &a1.cert).expect("write");
            std::fs::write(dir.join("archive/a/privkey1.pem"), &a1.key).expect("write");
            std::os::unix::fs::symlink(
                "../../archive/a/fullchain1.pem",
                dir.join("live/a/fullchain.pem"),
            )
            .expect("link");
            std::os::unix::fs::symlink(
                "../../archive/a/privkey1.pem",
                dir.join("live/a/privkey.pem"),
            )
            .expect("link");
        },
    );
    let tls = e.tls.expect("tls listener");
    let dir = e.config.parent().expect("dir").to_path_buf();
    assert_eq!(served_serial(tls, "a.test").await, 101);
    assert_eq!(served_serial(tls, "b.test").await, 201);

    // certbot renews: new files in archive/, then the symlinks swapped one after the
    // other. Between the two swaps the certificate is new and the key still the old one.
    let a2 = cert_serial(&["a.test"], 102);
    std::fs::write(dir.join("archive/a/fullchain2.pem"), &a2.cert).expect("write");
    std::fs::write(dir.join("archive/a/privkey2.pem"), &a2.key).expect("write");
    let errors = e.metric("ecluse_config_reloads_total", &[("result", "error")]);
    swap_link(
        &dir.join("live/a/fullchain.pem"),
        "../../archive/a/fullchain2.pem",
    );
    // The half-written pair is seen and refused, not served: the old pair keeps serving.
    eventually("the mismatched pair is refused", DEADLINE, async || {
        e.metric("ecluse_config_reloads_total", &[("result", "error")]) > errors
    })
    .await;
    // The log line is written by the logger after the counter moves: wait for it too.
    eventually("the refusal is logged", DEADLINE, async || {
        e.stderr_text().contains("does not belong")
    })
    .await;
    for _ in 0..3 {
        assert_eq!(served_serial(tls, "a.test").await, 101);
    }
    // The key's swap completes the pair: new connections get the renewed certificate.
    swap_link(
        &dir.join("live/a/privkey.pem"),
        "../../archive/a/privkey2.pem",
    );
    eventually("the renewed certificate is served", DEADLINE, async || {
        served_serial(tls, "a.test").await == 102
    })
    .await;
    assert_eq!(served_serial(tls, "b.test").await, 201);
    assert!(
        e.metric(
            "ecluse_tls_certificate_expiry_seconds",
            &[("name", "a.test")]
        ) > 86400.0
    );

    // Another tool renames new files over the old ones (key first this time: the
    // certificate and the old key do not go together either).
    let b2 = cert_serial(&["b.test"], 202);
    rename_over(&dir.join("b.key"), &b2.key);
    rename_over(&dir.join("b.crt"), &b2.cert);
    eventually(
        "the renamed-over certificate is served",
        DEADLINE,
        async || served_serial(tls, "b.test").await == 202,
    )
    .await;
    assert_eq!(served_serial(tls, "a.test").await, 102);
}
