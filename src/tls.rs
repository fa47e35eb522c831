//! TLS material, loaded and checked once per config load (`ecluse check`, start, reload):
//!
//! - the listener's certificates, chosen by SNI at each handshake from the set published
//!   by the last good load ([`serve`]), so a renewal (certbot, then `systemctl reload`)
//!   takes effect for new connections while open ones keep the session they negotiated;
//! - the client side of TLS to an origin (CA, client certificate, verification), shared by
//!   proxied connections (pingora's peer options) and active health checks (a rustls
//!   client config), so both speak to the ENT the same way.
//!
//! Everything that could fail at a handshake (unreadable file, key of another
//! certificate, expired certificate, a PEM pingora would panic on) fails here instead,
//! with the file's name, and a reload that fails keeps the running set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a certificate, key or CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("`{path}`: certificate {index} is not valid X.509: {reason}")]
    BadCertificate {
        path: String,
        index: usize,
        reason: String,
    },
    #[error("`{path}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("the key `{key}` does not belong to the certificate `{cert}`")]
    KeyMismatch { cert: String, key: String },
    #[error("the key `{key}` is unusable with `{cert}`: {reason}")]
    BadKey {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("`{path}` expired at {not_after} (UTC); install the renewed certificate")]
    Expired { path: String, not_after: String },
    #[error("`{path}` is not valid before {not_before} (UTC)")]
    NotYetValid { path: String, not_before: String },
    #[error("TLS client settings: {0}")]
    Client(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    // The provider pingora installs (ring); installing it first makes `get_default` Some.
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A PEM chain, each certificate parsed as X.509 (so nothing later panics on it).
fn read_chain(path: &Path) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), TlsError> {
    let bytes = read(path)?;
    let shown = || path.display().to_string();
    let mut chain = Vec::new();
    for (index, c) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let c = c.map_err(|e| TlsError::BadCertificate {
            path: shown(),
            index,
            reason: e.to_string(),
        })?;
        if let Err(e) = X509Certificate::from_der(c.as_ref()) {
            return Err(TlsError::BadCertificate {
                path: shown(),
                index,
                reason: e.to_string(),
            });
        }
        chain.push(c);
    }
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: shown() });
    }
    Ok((chain, bytes))
}

fn read_key(path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), TlsError> {
    let bytes = read(path)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoKey {
        path: path.display().to_string(),
    })?;
    Ok((key, bytes))
}

/// The certificate and key as one signing identity, refused when the key is another's.
fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_file.display().to_string(),
                key: key_file.display().to_string(),
            }
        }
        other => TlsError::BadKey {
            cert: cert_file.display().to_string(),
            key: key_file.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// The leaf's DNS names (SAN, else the common name), lowercased, and its validity.
fn leaf_facts(leaf: &[u8], path: &Path) -> Result<(Vec<String>, i64, i64), TlsError> {
    let (_, x) = X509Certificate::from_der(leaf).map_err(|e| TlsError::BadCertificate {
        path: path.display().to_string(),
        index: 0,
        reason: e.to_string(),
    })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = x.subject().iter_common_name().next() {
            if let Ok(cn) = cn.as_str() {
                names.push(cn.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    let v = x.validity();
    Ok((names, v.not_before.timestamp(), v.not_after.timestamp()))
}

/// One certificate of the listener, ready to present.
pub struct ServerCert {
    /// The `name` label of the expiry metric: configured, else the first DNS name.
    pub name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// DNS names it answers for (SAN), lowercased; `*.` wildcards kept as written.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the certificate and key files: a renewal under the same file names
    /// is a change even when the policy file is not.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("name", &self.name)
            .field("cert_file", &self.cert_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// The DER of the leaf (what a client sees).
    pub fn leaf_der(&self) -> &[u8] {
        self.key.cert.first().map(|c| c.as_ref()).unwrap_or(&[])
    }
}

/// Read, check and load a certificate and its key for the listener. Refuses an
/// unreadable file, a key that is not the certificate's, an expired certificate and one
/// not valid yet (it would be refused by every browser anyway).
pub fn load_server_cert(
    cert_file: &Path,
    key_file: &Path,
    name: Option<&str>,
) -> Result<ServerCert, TlsError> {
    let (chain, cert_bytes) = read_chain(cert_file)?;
    let (key, key_bytes) = read_key(key_file)?;
    let (names, not_before, not_after) = leaf_facts(chain[0].as_ref(), cert_file)?;
    let now = crate::clock::unix_now();
    if not_after <= now {
        return Err(TlsError::Expired {
            path: cert_file.display().to_string(),
            not_after: crate::clock::http_date(not_after),
        });
    }
    if not_before > now {
        return Err(TlsError::NotYetValid {
            path: cert_file.display().to_string(),
            not_before: crate::clock::http_date(not_before),
        });
    }
    let key = certified(chain, key, cert_file, key_file)?;
    let name = name
        .map(str::to_string)
        .or_else(|| names.first().cloned())
        .unwrap_or_else(|| {
            cert_file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(ServerCert {
        name,
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        names,
        not_after,
        key: Arc::new(key),
        digest: pair_digest(&cert_bytes, &key_bytes),
    })
}

/// What [`ServerCert::digest`] holds: both files' bytes, so the file watcher can tell
/// whether what is on disk is what is being served without loading it.
pub fn pair_digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(cert);
    h.update([0]);
    h.update(key);
    h.finalize().into()
}

/// [`pair_digest`] of the files as they are now; `None` when one cannot be read (in the
/// middle of a swap, or removed).
pub fn files_digest(cert_file: &Path, key_file: &Path) -> Option<[u8; 32]> {
    let cert = std::fs::read(cert_file).ok()?;
    let key = std::fs::read(key_file).ok()?;
    Some(pair_digest(&cert, &key))
}

/// The listener's certificates, in file order. The first is the default: it answers a
/// client that sends no SNI or a name no certificate carries.
#[derive(Debug, Default)]
pub struct CertSet {
    pub certs: Vec<ServerCert>,
    exact: HashMap<String, usize>,
    /// `*.example.org` stored as `example.org`.
    wildcard: HashMap<String, usize>,
}

impl PartialEq for CertSet {
    fn eq(&self, other: &CertSet) -> bool {
        self.certs.len() == other.certs.len()
            && self
                .certs
                .iter()
                .zip(&other.certs)
                .all(|(a, b)| a.digest == b.digest && a.name == b.name)
    }
}

impl CertSet {
    pub fn new(certs: Vec<ServerCert>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for n in &c.names {
                // First certificate listing a name wins, as in file order.
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for `sni`: exact name, then a wildcard one label up, then the
    /// default. Case and a trailing dot do not matter.
    pub fn pick(&self, sni: Option<&str>) -> Option<&ServerCert> {
        let idx = sni.and_then(|s| {
            let s = s.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&s).copied().or_else(|| {
                s.split_once('.')
                    .and_then(|(_, rest)| self.wildcard.get(rest).copied())
            })
        });
        self.certs.get(idx.unwrap_or(0))
    }
}

/// The set presented by the TLS listener: one per process, like the listener.
static SERVING: ArcSwapOption<CertSet> = ArcSwapOption::const_empty();

/// Publish `set` for the handshakes that start from now on.
pub fn serve(set: Arc<CertSet>) {
    SERVING.store(Some(set));
}

/// The set new handshakes use (None before the TLS listener started).
pub fn serving() -> Option<Arc<CertSet>> {
    SERVING.load_full()
}

/// rustls asks this for a certificate at each handshake; one atomic load.
#[derive(Debug)]
pub struct Resolver;

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = SERVING.load();
        let set = set.as_ref()?;
        set.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// `ecluse_tls_certificate_expiry_seconds{name}`, computed at each scrape from the set
/// being served (the value moves with the clock; a removed certificate's series goes).
pub struct ExpiryCollector {
    gauge: prometheus::GaugeVec,
}

impl ExpiryCollector {
    pub fn new() -> ExpiryCollector {
        let gauge = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "ecluse_tls_certificate_expiry_seconds",
                "Seconds until each certificate of the TLS listener expires (negative: expired).",
            ),
            &["name"],
        )
        .expect("static metric definition");
        ExpiryCollector { gauge }
    }
}

impl Default for ExpiryCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl prometheus::core::Collector for ExpiryCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.reset();
        if let Some(set) = serving() {
            let now = crate::clock::unix_now();
            for c in &set.certs {
                self.gauge
                    .with_label_values(&[c.name.as_str()])
                    .set((c.not_after - now) as f64);
            }
        }
        self.gauge.collect()
    }
}

/// How ecluse speaks TLS to one origin's servers.
pub struct OriginTls {
    /// SNI sent and name checked on the server's certificate.
    pub sni: String,
    pub verify: bool,
    /// `ca_file`: the only authorities trusted for this origin (else the system's).
    pub ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    /// The client certificate presented to the ENT (mutual TLS).
    pub client: Option<Arc<pingora_core::utils::tls::CertKey>>,
    /// The same settings for the health checks' own connections.
    pub probe: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
    /// SHA-256 of the files, so a renewed client certificate is a change.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// The system's trust store, read once per process.
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = rustls::RootCertStore::empty();
            if let Err(e) = pingora::tls::load_platform_certs_incl_env_into_store(&mut store) {
                log::warn!("system CA certificates: {e}");
            }
            Arc::new(store)
        })
        .clone()
}

/// Build an origin's TLS client side. `sni` must already be a valid name (checked by
/// the config layer); `client` is `(cert_file, key_file)`.
pub fn load_origin_tls(
    sni: &str,
    verify: bool,
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<OriginTls, TlsError> {
    let server_name = ServerName::try_from(sni.to_string())
        .map_err(|e| TlsError::Client(format!("`{sni}` is not a host name: {e}")))?;
    let mut h = Sha256::new();
    let mut ca = None;
    let roots = match ca_file {
        Some(path) => {
            let (chain, bytes) = read_chain(path)?;
            h.update(&bytes);
            let mut store = rustls::RootCertStore::empty();
            for c in &chain {
                store.add(c.clone()).map_err(|e| TlsError::BadCertificate {
                    path: path.display().to_string(),
                    index: 0,
                    reason: e.to_string(),
                })?;
            }
            let wrapped: Vec<pingora_core::utils::tls::WrappedX509> = chain
                .iter()
                .map(|c| {
                    pingora_core::utils::tls::WrappedX509::new(
                        c.as_ref().to_vec(),
                        pingora_core::utils::tls::parse_x509,
                    )
                })
                .collect();
            ca = Some(Arc::<[_]>::from(wrapped));
            Arc::new(store)
        }
        None => system_roots(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Client(e.to_string()))?;
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    };
    let mut client_key = None;
    let config = match client {
        Some((cert_file, key_file)) => {
            let (chain, cert_bytes) = read_chain(cert_file)?;
            let (key, key_bytes) = read_key(key_file)?;
            h.update(&cert_bytes);
            h.update(&key_bytes);
            // Checks the pair and the key type before pingora sees it (it unwraps the
            // key's parse at each connection).
            certified(chain.clone(), key.clone_key(), cert_file, key_file)?;
            if PrivateKeyDer::try_from(key.secret_der().to_vec()).is_err() {
                return Err(TlsError::NoKey {
                    path: key_file.display().to_string(),
                });
            }
            client_key = Some(Arc::new(pingora_core::utils::tls::CertKey::new(
                chain.iter().map(|c| c.as_ref().to_vec()).collect(),
                key.secret_der().to_vec(),
            )));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::BadKey {
                    cert: cert_file.display().to_string(),
                    key: key_file.display().to_string(),
                    reason: e.to_string(),
                })?
        }
        None => builder.with_no_client_auth(),
    };
    h.update(sni.as_bytes());
    h.update([verify as u8]);
    Ok(OriginTls {
        sni: sni.to_string(),
        verify,
        ca,
        client: client_key,
        probe: Arc::new(config),
        server_name,
        digest: h.finalize().into(),
    })
}

/// `verify: false`: any certificate, but the handshake signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn picks_by_exact_name_then_wildcard_then_default() {
        let d = tempfile::tempdir().unwrap();
        let (c1, k1) = write_pair(d.path(), "a", &["ent.example.org"]);
        let (c2, k2) = write_pair(d.path(), "b", &["*.lycee.example.org", "cdn.example.org"]);
        let set = CertSet::new(vec![
            load_server_cert(&c1, &k1, None).unwrap(),
            load_server_cert(&c2, &k2, Some("lycees")).unwrap(),
        ]);
        let name = |s: Option<&str>| set.pick(s).unwrap().name.clone();
        assert_eq!(name(Some("ENT.example.org.")), "ent.example.org");
        assert_eq!(name(Some("cdn.example.org")), "lycees");
        assert_eq!(name(Some("vh.lycee.example.org")), "lycees");
        // A wildcard covers one label only.
        assert_eq!(name(Some("a.b.lycee.example.org")), "ent.example.org");
        assert_eq!(name(None), "ent.example.org");
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let d = tempfile::tempdir().unwrap();
        let (c1, _) = write_pair(d.path(), "a", &["a.test"]);
        let (_, k2) = write_pair(d.path(), "b", &["b.test"]);
        let e = load_server_cert(&c1, &k2, None).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        let e = load_server_cert(&c1, &c1, None).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let e = load_server_cert(&d.path().join("nope"), &k2, None).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
    }

    #[test]
    fn refuses_an_expired_certificate() {
        let d = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (d.path().join("c.pem"), d.path().join("k.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let e = load_server_cert(&c, &k, None).unwrap_err();
        assert!(matches!(e, TlsError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("2021"), "{e}");
    }
}
