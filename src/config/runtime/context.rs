//! What every builder shares: the problem list (each problem located in the file), the
//! build context and the state retained across reloads, and the small value parsers
//! (durations, sizes, CIDRs, names) the sections have in common.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::tree::{SNode, Seg};
use crate::config::units::{parse_duration, parse_size};
use crate::config::Diagnostic;
use crate::upstream;

/// Collects problems with the path they concern; positions are resolved from the tree.
pub struct Problems<'t> {
    tree: &'t SNode,
    pub list: Vec<Diagnostic>,
    /// Problems that do not stop the load (see [`Problems::missing_secret`]).
    pub warnings: Vec<Diagnostic>,
    /// `ecluse check --skip-secrets`: a secret that is not there is a warning.
    pub skip_secrets: bool,
}

impl<'t> Problems<'t> {
    pub fn new(tree: &'t SNode) -> Self {
        Problems {
            tree,
            list: Vec::new(),
            warnings: Vec::new(),
            skip_secrets: false,
        }
    }
    /// A secret (ticket keys, admin token, TLS key pair) that cannot be read. An error,
    /// except under `ecluse check --skip-secrets`, where a config repository's CI checks a
    /// policy without production secrets: then a warning, and the caller goes on with a
    /// stand-in (returns `true`). A secret that is there but wrong is always an error.
    pub fn missing_secret(&mut self, path: Vec<Seg>, msg: impl Into<String>) -> bool {
        let pos = self.tree.locate(&path);
        let d = Diagnostic::at(pos, format!("{}: {}", show_path(&path), msg.into()));
        if self.skip_secrets {
            self.warnings.push(Diagnostic {
                message: format!("{} (secrets skipped)", d.message),
                ..d
            });
            true
        } else {
            self.list.push(d);
            false
        }
    }
    /// Something that does not stop the load but deserves a look (reported by
    /// `ecluse check` as a warning).
    pub fn warn_at(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate(&path);
        self.warnings.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
    /// A problem with the value at `path`.
    pub fn at(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate(&path);
        self.list.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
    /// A problem with the key at `path` (its name, not its value).
    pub fn at_key(&mut self, path: Vec<Seg>, msg: impl Into<String>) {
        let pos = self.tree.locate_key(&path);
        self.list.push(Diagnostic::at(
            pos,
            format!("{}: {}", show_path(&path), msg.into()),
        ));
    }
}

pub fn show_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// An optional duration: absent is `None`; `0s` or a bad value is a problem.
pub(super) fn opt_duration(
    p: &mut Problems,
    v: &Option<super::file::DurationText>,
    path: Vec<Seg>,
) -> Option<Duration> {
    v.as_ref()?;
    let d = duration_or(p, v, Duration::ZERO, path);
    (!d.is_zero()).then_some(d)
}
pub(super) fn duration_or(
    p: &mut Problems,
    v: &Option<super::file::DurationText>,
    default: Duration,
    path: Vec<Seg>,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(&s.0) {
            Ok(d) if d.is_zero() => {
                p.at(path, "must be longer than 0s");
                default
            }
            Ok(d) => d,
            Err(e) => {
                p.at(path, e);
                default
            }
        },
    }
}

/// Everything the builder needs besides the file.
/// State retained across reloads (upstream health and counters, rate-limit buckets, rooms):
/// the builder attaches it to each new config. One registry per process, in `App`.
#[derive(Default)]
pub struct Retained {
    pub upstream: upstream::Registry,
    pub limiters: crate::policy::rate_limit::LimiterRegistry,
    pub rooms: crate::waiting_room::RoomRegistry,
    /// The admin listener actually bound (set once at start). A reload cannot move it
    /// (restart required), so a reload is checked against it too: it may not drop the
    /// token of a listener that stays on a non-loopback address.
    pub admin_bound: std::sync::OnceLock<SocketAddr>,
}

pub struct BuildContext<'a> {
    pub registry: &'a Retained,
    /// Directory relative paths (token files, certificates) are resolved against.
    pub base_dir: PathBuf,
    /// Resolve host names of servers (false in `ecluse check --offline`-like uses).
    pub resolve: bool,
    /// `ecluse check --skip-secrets`: missing secrets are warnings (see
    /// [`Problems::missing_secret`]).
    pub skip_secrets: bool,
    /// Where `build` leaves its warnings (it returns only the config or the errors).
    pub warnings: std::cell::RefCell<Vec<Diagnostic>>,
}

pub(super) fn size_or(
    p: &mut Problems,
    v: &Option<super::file::SizeText>,
    default: u64,
    path: Vec<Seg>,
) -> u64 {
    match v {
        None => default,
        Some(s) => match parse_size(&s.0) {
            Ok(0) => {
                p.at(path, "must be larger than 0");
                default
            }
            Ok(n) => n,
            Err(e) => {
                p.at(path, e);
                default
            }
        },
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(super) fn parse_cidr(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
        .map(|n| n.trunc())
}

pub(super) const CIDR_HINT: &str = "write it like `10.0.0.0/8`, `192.0.2.7` or `2001:db8::/32`";
