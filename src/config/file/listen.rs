//! `listen`, `tls`: listeners and certificates.

use schemars::JsonSchema;
use serde::Deserialize;

/// TLS termination. Certificates are read at every load: a reload (SIGHUP,
/// `POST /admin/reload`, or a change of the policy file or of a certificate or key file
/// when `watch_config` is on)
/// presents renewed ones to new connections; open connections keep theirs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// TLS listen addresses, e.g. `["0.0.0.0:443"]`, or `{ address: "IP:PORT",
    /// proxy_protocol: true, proxy_protocol_from: [CIDR…] }` behind an L4 load balancer
    /// (the PROXY header comes before the TLS handshake). Changing them needs a restart.
    pub listen: Vec<ListenFile>,
    /// PEM certificate chain (leaf first): the default certificate, presented when no
    /// other one carries the name the client asks for (SNI).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
    /// More certificates, chosen by the name the client asks for (SNI) among each
    /// certificate's DNS names (`*.example.org` covers one label). Without `cert_file`,
    /// the first one is the default.
    #[serde(default)]
    pub certificates: Vec<CertificateFile>,
    /// Offer HTTP/2 by ALPN (default true). Changing it needs a restart.
    #[serde(default)]
    pub http2: Option<bool>,
}

/// One certificate of the TLS listener.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM certificate chain (leaf first).
    pub cert_file: String,
    /// PEM private key of this certificate.
    pub key_file: String,
    /// The `name` label of `ecluse_tls_certificate_expiry_seconds` (default: the
    /// certificate's first DNS name).
    #[serde(default)]
    pub name: Option<String>,
}

/// One listener (plain HTTP in `listen`, TLS in `tls.listen`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ListenFile {
    /// `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`.
    Address(String),
    /// An address with options.
    Full(ListenEntryFile),
}

/// A listener with options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenEntryFile {
    /// `IP:PORT`, like `0.0.0.0:8080` or `[::]:8080`.
    pub address: String,
    /// Connections from `proxy_protocol_from` start with a PROXY protocol header (v1 or
    /// v2, HAProxy `send-proxy`/`send-proxy-v2`, cloud NLBs) naming the client: its
    /// address is then the client's everywhere (limits, log, forwarding headers). A
    /// connection from there without a header is closed. Default false.
    #[serde(default)]
    pub proxy_protocol: Option<bool>,
    /// The load balancers' addresses (CIDRs) whose PROXY header is believed; required
    /// with `proxy_protocol: true`. Other peers are served as direct clients, and a
    /// PROXY header from them is a malformed request (400).
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
}
