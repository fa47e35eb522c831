//! The filesystem under the cache's disk tier: whether `cache.disk.size` can fit at all,
//! how much is free, and how much foyer's files really take.
//!
//! foyer creates its files at their full size but sparse: the filesystem hands out the
//! blocks only when they are first written, so a disk tier larger than the free space
//! starts fine and fails its writes later, and a write foyer cannot make leaves its
//! writer in a state that panics (see `DiskGuard` in `store`). Hence these checks: at
//! start (refuse what can never fit, warn when the free space is short), on reload and in
//! `ecluse check` (warnings), and while running (the guard turns the tier off before the
//! filesystem is full).

use std::io;
use std::path::{Path, PathBuf};

/// The prefix of foyer's file names in the disk tier's directory (`FsDevice`).
pub const FOYER_FILE_PREFIX: &str = "foyer-storage-direct-fs-";

/// What statvfs says of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Size of the whole filesystem.
    pub total: u64,
    /// Free space this (unprivileged) process may use.
    pub avail: u64,
    pub read_only: bool,
}

/// The filesystem that holds `path`, or would hold it once created: statvfs on the
/// nearest existing ancestor.
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let at = existing_ancestor(path);
    let s = rustix::fs::statvfs(&at).map_err(io::Error::from)?;
    let unit = if s.f_frsize > 0 {
        s.f_frsize
    } else {
        s.f_bsize
    };
    Ok(FsSpace {
        total: s.f_blocks.saturating_mul(unit),
        avail: s.f_bavail.saturating_mul(unit),
        read_only: s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
    })
}

fn existing_ancestor(path: &Path) -> PathBuf {
    let mut at = path.to_path_buf();
    // A relative path with no existing part lives in the current directory.
    while !at.as_os_str().is_empty() && std::fs::symlink_metadata(&at).is_err() {
        if !at.pop() {
            break;
        }
    }
    if at.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        at
    }
}

/// Bytes the filesystem has really given to foyer's files in `dir` (allocated blocks, not
/// the sparse length), 0 when there are none yet.
pub fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(FOYER_FILE_PREFIX)
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks().saturating_mul(512))
        .sum()
}

/// How `size` bytes of disk tier fit in the filesystem of `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Enough free space (counting what the tier already holds there).
    Fits,
    /// The filesystem is large enough but has not that much free: the tier will fill it
    /// and then be turned off until space returns.
    Short {
        free: u64,
        held: u64,
        space: FsSpace,
    },
    /// More than the whole filesystem: it can never hold the tier.
    Never { space: FsSpace },
    /// Mounted read-only: nothing can be written.
    ReadOnly,
}

pub fn fit(dir: &Path, size: u64) -> io::Result<Fit> {
    let space = fs_space(dir)?;
    if space.read_only {
        return Ok(Fit::ReadOnly);
    }
    if size > space.total {
        return Ok(Fit::Never { space });
    }
    // What foyer's files already hold counts as ours (a restart over a filled tier).
    let held = allocated_bytes(dir);
    if space.avail.saturating_add(held) < size {
        return Ok(Fit::Short {
            free: space.avail,
            held,
            space,
        });
    }
    Ok(Fit::Fits)
}

/// Sizes in messages: MiB with one decimal below 10 MiB, whole MiB above.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1u64 << 20) as f64;
    if m < 10.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{m:.0} MiB")
    }
}

/// The message for a `Fit` that is not `Fits` (`None` for `Fits`).
pub fn describe(dir: &Path, size: u64, fit: &Fit) -> Option<String> {
    let d = dir.display();
    match fit {
        Fit::Fits => None,
        Fit::ReadOnly => Some(format!(
            "cache disk {d}: the filesystem is mounted read-only; the disk tier cannot write there"
        )),
        Fit::Never { space } => Some(format!(
            "cache disk {d}: cache.disk.size ({}) is larger than the whole filesystem holding it ({}): the disk tier can never fit; lower cache.disk.size or move cache.disk.path",
            mib(size),
            mib(space.total)
        )),
        Fit::Short { free, held, .. } => Some(format!(
            "cache disk {d}: cache.disk.size is {} but the filesystem has only {} free (the tier already holds {}): the disk tier will be turned off when free space runs low, and come back when space returns",
            mib(size),
            mib(*free),
            mib(*held)
        )),
    }
}

/// Give back every block of foyer's files in `dir` (truncated to nothing, not removed: a
/// new disk engine opens them again at their size, sparse and empty). For a disk engine
/// replaced after a failure, whose content is dropped.
pub fn empty_foyer_files(dir: &Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(FOYER_FILE_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .map_err(|e| format!("cannot empty {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Give foyer's file `file` its blocks now (its deletion log: every removal writes there,
/// and a failed write there leaves foyer's writer broken). Best effort: a filesystem
/// without fallocate keeps the sparse file.
pub fn preallocate(file: &Path) -> io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(file)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_measured_on_its_nearest_existing_parent() {
        let s = fs_space(Path::new("/definitely/not/here/cache")).expect("statvfs /");
        assert!(s.total > 0);
        assert_eq!(
            existing_ancestor(Path::new("/definitely/not")),
            Path::new("/")
        );
    }

    #[test]
    fn a_size_beyond_the_filesystem_never_fits() {
        let f = fit(Path::new("/"), u64::MAX).expect("statvfs /");
        assert!(matches!(f, Fit::Never { .. }), "{f:?}");
        let msg = describe(Path::new("/"), u64::MAX, &f).expect("a message");
        assert!(msg.contains("larger than the whole filesystem"), "{msg}");
    }
}
