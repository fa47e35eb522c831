//! `server.paths`: how request paths are normalized, and the canonical form every path
//! prefix in the file must be written in.

use super::context::Problems;
use crate::config::file::FileConfig;
use crate::config::tree::Seg;
use crate::path;

/// The path policy of `file` (defaults where absent).
pub(super) fn paths_of(file: &FileConfig) -> crate::policy::path::PathPolicy {
    build_paths(file.server.as_ref().and_then(|s| s.paths.as_ref()))
}

/// `server.paths` → the normalization policy (every value has a default).
pub(super) fn build_paths(f: Option<&super::file::PathsFile>) -> crate::policy::path::PathPolicy {
    use super::file::{EscapedSlashesFile as E, PathParamsFile as P};
    use crate::policy::path::{EscapedSlashes, PathParams, PathPolicy};
    let d = PathPolicy::default();
    let Some(f) = f else { return d };
    PathPolicy {
        case_insensitive: f.case_insensitive.unwrap_or(d.case_insensitive),
        merge_slashes: f.merge_slashes.unwrap_or(d.merge_slashes),
        escaped_slashes: match f.escaped_slashes {
            None => d.escaped_slashes,
            Some(E::Reject) => EscapedSlashes::Reject,
            Some(E::Keep) => EscapedSlashes::Keep,
            Some(E::Decode) => EscapedSlashes::Decode,
        },
        path_params: match f.path_params {
            None => d.path_params,
            Some(P::Reject) => PathParams::Reject,
            Some(P::Strip) => PathParams::Strip,
            Some(P::Keep) => PathParams::Keep,
        },
    }
}

/// `server.paths.front_controllers`: canonical paths of a script (`/index.php`), stored
/// in the folded form requests' policy paths are compared in.
pub(super) fn build_front_controllers(
    p: &mut Problems,
    f: Option<&super::file::PathsFile>,
) -> Vec<String> {
    let Some(f) = f else { return Vec::new() };
    let paths = build_paths(Some(f));
    let mut out = Vec::new();
    for (k, fc) in f.front_controllers.iter().flatten().enumerate() {
        let at = path!["server", "paths", "front_controllers", k];
        if fc == "/" || fc.ends_with('/') {
            p.at(
                at,
                format!("`{fc}` must name a script, like `/index.php` (no trailing `/`)"),
            );
            continue;
        }
        if check_prefix(p, at, fc, &paths) {
            out.push(policy_key_of(fc));
        }
    }
    out
}

/// A prefix `check_prefix` accepted, in the form policy decisions compare
/// (`policy::path::policy_prefix`: case folded, trailing dots and spaces dropped).
pub(super) fn policy_key_of(prefix: &str) -> String {
    crate::policy::path::policy_prefix(prefix).unwrap_or_else(|_| prefix.to_string())
}

/// A path prefix from the config (route `path_prefix`, `inside_paths`, a class's
/// `path_prefixes`) must be written in the canonical form requests are compared in:
/// otherwise it silently never matches (`/%76isio`) or matches something else (`/a/../b`).
pub(super) fn check_prefix(
    p: &mut Problems,
    at: Vec<Seg>,
    prefix: &str,
    paths: &crate::policy::path::PathPolicy,
) -> bool {
    if !prefix.starts_with('/') {
        p.at(at, format!("`{prefix}` must start with `/`"));
        return false;
    }
    match crate::policy::path::canonical_prefix(prefix, paths) {
        Ok(c) if c == prefix => match crate::policy::path::policy_prefix(&c) {
            Ok(_) => true,
            Err(e) => {
                p.at(at, format!("`{prefix}` cannot match any request: {e}"));
                false
            }
        },
        Ok(c) => {
            p.at(
                at,
                format!("`{prefix}` is not in canonical form (requests are compared after normalization): write `{c}`"),
            );
            false
        }
        Err(e) => {
            p.at(at, format!("`{prefix}` cannot match any request: {e}"));
            false
        }
    }
}
