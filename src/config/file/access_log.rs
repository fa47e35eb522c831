//! `access_log`: where it goes and what it hides.

use schemars::JsonSchema;
use serde::Deserialize;

/// Access log: one JSON object per line and per request.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// Write the access log (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `stdout` (default) or a file path (appended to).
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameters whose values are written as `REDACTED` in the log's `query`
    /// field (names compared without case, after percent-decoding, `name[]` included).
    /// Replaces the default list (CAS `ticket`, OAuth `code`/`token`s, `password`,
    /// `session`…, see docs/policy.md); `[]` logs queries whole.
    #[serde(default)]
    pub redact_query: Option<Vec<String>>,
}
