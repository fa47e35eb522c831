//! Places that belong to one ecluse instance: its state directory (waiting-room
//! snapshots and ticket reservations) and its upgrade socket.
//!
//! Two ecluse processes on one machine (two ENTs, a test instance beside production) must
//! never share these, and no other local user may plant them first. Defaults, in order:
//! - under systemd, `$STATE_DIRECTORY` and `$RUNTIME_DIRECTORY` (the unit's
//!   `StateDirectory=` / `RuntimeDirectory=`, created by systemd for the service user);
//! - otherwise a private directory named after the policy file:
//!   `$TMPDIR/ecluse-<uid>/<policy name>-<hash of its absolute path>/`.
//!
//! Every directory ecluse uses for these is checked before use ([`ensure_private_dir`]):
//! a directory (a symlink only if it belongs to this user or root), owned by this user,
//! writable by nobody else. Anything else stops the start with a sentence saying why.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{path}: cannot create: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot inspect: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: is not a directory")]
    NotDir { path: PathBuf },
    #[error("{path}: is a symbolic link owned by user {owner}, not by ecluse's user ({me}) or root: not followed")]
    ForeignLink { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: belongs to user {owner}, not to ecluse's user ({me}); another user may have created it first")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: other users may write in it (mode {mode:o}); make it private (chmod 700)")]
    Shared { path: PathBuf, mode: u32 },
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The first path of a systemd directory variable (`STATE_DIRECTORY` may list several,
/// separated by `:`).
fn systemd_dir(var: &str) -> Option<PathBuf> {
    let v = std::env::var_os(var)?;
    let first = v.to_str()?.split(':').next()?.trim().to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// This instance's private directory when systemd gives none: named after the policy
/// file, so the same policy finds the same directory after a restart or an upgrade, and
/// two policies never share one.
pub fn private_dir(config_path: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    // A stable hash (not RandomState: it must be the same in the next process).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    abs.hash(&mut h);
    let stem: String = abs
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("ecluse")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    std::env::temp_dir()
        .join(format!("ecluse-{}", euid()))
        .join(format!("{stem}-{:016x}", h.finish()))
}

/// The default state directory of the instance run with `config_path`.
pub fn default_state_dir(config_path: &Path) -> PathBuf {
    systemd_dir("STATE_DIRECTORY").unwrap_or_else(|| private_dir(config_path))
}

/// The default upgrade socket of the instance run with `config_path`.
pub fn default_upgrade_sock(config_path: &Path) -> PathBuf {
    systemd_dir("RUNTIME_DIRECTORY")
        .unwrap_or_else(|| private_dir(config_path))
        .join("upgrade.sock")
}

/// Make sure `dir` exists and is private to this user (see the module's doc). Missing
/// directories are created with mode 0700; the private default's parent
/// (`$TMPDIR/ecluse-<uid>`) is checked the same way.
pub fn ensure_private_dir(dir: &Path) -> Result<(), InstanceError> {
    if let Some(parent) = dir.parent() {
        let is_private_parent = parent
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == format!("ecluse-{}", euid()));
        if is_private_parent {
            ensure_one(parent)?;
        } else if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|source| InstanceError::Create {
                path: parent.to_path_buf(),
                source,
            })?;
        }
    }
    ensure_one(dir)
}

fn ensure_one(dir: &Path) -> Result<(), InstanceError> {
    let me = euid();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Created meanwhile (another start of the same instance): checked below.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(InstanceError::Create {
                        path: dir.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Err(source) => {
            return Err(InstanceError::Inspect {
                path: dir.to_path_buf(),
                source,
            })
        }
        Ok(m) if m.file_type().is_symlink() => {
            if m.uid() != me && m.uid() != 0 {
                return Err(InstanceError::ForeignLink {
                    path: dir.to_path_buf(),
                    owner: m.uid(),
                    me,
                });
            }
        }
        Ok(_) => {}
    }
    let m = std::fs::metadata(dir).map_err(|source| InstanceError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    if !m.is_dir() {
        return Err(InstanceError::NotDir {
            path: dir.to_path_buf(),
        });
    }
    if m.uid() != me {
        return Err(InstanceError::ForeignOwner {
            path: dir.to_path_buf(),
            owner: m.uid(),
            me,
        });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(InstanceError::Shared {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ecluse-inst-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch");
        p
    }

    #[test]
    fn two_policies_get_two_directories_and_one_policy_always_the_same() {
        let d = scratch("names");
        let (a, b) = (d.join("a.yaml"), d.join("b.yaml"));
        std::fs::write(&a, "").expect("a");
        std::fs::write(&b, "").expect("b");
        assert_ne!(private_dir(&a), private_dir(&b));
        assert_eq!(private_dir(&a), private_dir(&a));
        assert!(private_dir(&a)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("a-")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn creates_private_and_refuses_shared_links_and_files() {
        let d = scratch("checks");
        let fresh = d.join("fresh");
        ensure_private_dir(&fresh).expect("created");
        let mode = std::fs::metadata(&fresh)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        ensure_private_dir(&fresh).expect("idempotent");

        let open = d.join("open");
        std::fs::create_dir(&open).expect("open");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(
            ensure_private_dir(&open),
            Err(InstanceError::Shared { .. })
        ));

        let file = d.join("file");
        std::fs::write(&file, "x").expect("file");
        assert!(matches!(
            ensure_private_dir(&file),
            Err(InstanceError::NotDir { .. })
        ));
        // A link this user made to a private directory is followed.
        let link = d.join("link");
        std::os::unix::fs::symlink(&fresh, &link).expect("link");
        ensure_private_dir(&link).expect("own link");
        let _ = std::fs::remove_dir_all(&d);
    }
}
