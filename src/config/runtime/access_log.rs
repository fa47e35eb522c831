//! `access_log`: where the log goes and which query parameters it hides.

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub target: AccessLogTarget,
    /// Query parameter names (lowercase) whose values the log hides.
    pub redact_query: Vec<String>,
}

/// Query parameters hidden by default (`access_log.redact_query` replaces the list):
/// credentials that travel in URLs in an ENT's world (CAS `ticket`, OAuth/OIDC `code`
/// and tokens, SAML messages, session ids in URLs, passwords of old forms, signed-URL
/// signatures).
pub const DEFAULT_REDACT: &[&str] = &[
    "ticket",
    "code",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "auth",
    "session",
    "sessionid",
    "jsessionid",
    "phpsessid",
    "sid",
    "samlresponse",
    "samlrequest",
    "signature",
    "sig",
];
