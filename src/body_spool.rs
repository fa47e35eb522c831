//! Where a request body waits while it arrives, before it goes to the origin
//! (`request_buffering`, see `proxy::body`): in memory up to `memory_buffer`, then in a
//! temporary file, within a disk budget shared by every body (`max_disk`).
//!
//! The files have no name: `tempfile::tempfile_in` opens them with `O_TMPFILE` (or unlinks
//! them at once where the file system cannot), so a file vanishes when its last descriptor
//! or map closes, on every exit path of a request and of the process, `kill -9` included;
//! nothing is ever left to clean up. Their directory is private (mode 0700, ours): one
//! that others can enter is refused rather than used.
//!
//! The disk budget is claimed before a byte is written ([`Reservation`], given back on
//! drop): the whole announced length up front when the body has a `Content-Length`, so an
//! upload that cannot fit is refused before it is read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("request bodies on disk would exceed max_disk ({max} bytes)")]
    NoSpace { max: u64 },
    #[error("temporary directory {}: {why}", dir.display())]
    Dir { dir: PathBuf, why: String },
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes of request bodies claimed on disk, every directory together.
static DISK_USED: AtomicU64 = AtomicU64::new(0);

/// Bytes of request bodies claimed on disk now.
pub fn disk_used() -> u64 {
    DISK_USED.load(Ordering::Relaxed)
}

fn publish() {
    crate::metrics::get()
        .request_body_disk_bytes
        .set(disk_used().min(i64::MAX as u64) as i64);
}

/// A claim on part of the disk budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
}

impl Reservation {
    /// Claim `n` bytes if the total stays within `max`.
    pub fn take(n: u64, max: u64) -> Result<Reservation, SpoolError> {
        let mut r = Reservation { bytes: 0 };
        r.grow(n, max)?;
        Ok(r)
    }

    /// Claim `n` bytes more, if the total stays within `max`.
    fn grow(&mut self, n: u64, max: u64) -> Result<(), SpoolError> {
        DISK_USED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|t| *t <= max)
            })
            .map_err(|_| SpoolError::NoSpace { max })?;
        self.bytes += n;
        publish();
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            DISK_USED.fetch_sub(self.bytes, Ordering::AcqRel);
            publish();
        }
    }
}

/// Make `dir` if missing (mode 0700) and check that it is a directory nobody else can
/// enter: a body must not be readable by another local user while it waits.
fn private_dir(dir: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let fail = |why: String| SpoolError::Dir {
        dir: dir.to_path_buf(),
        why,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("cannot create it: {e}")))?;
    let md = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !md.is_dir() {
        return Err(fail("is not a directory".into()));
    }
    if md.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "other users can enter it (mode {:o}): make it private (chmod 700)",
            md.mode() & 0o777
        )));
    }
    Ok(())
}

/// An unnamed file in the private `dir`, checked to belong to the directory's owner (us:
/// a directory of someone else's that we can write to is not private to us).
fn unnamed_file(dir: &Path) -> Result<std::fs::File, SpoolError> {
    use std::os::unix::fs::MetadataExt;
    private_dir(dir)?;
    let f = tempfile::tempfile_in(dir)?;
    let dir_uid = std::fs::symlink_metadata(dir)?.uid();
    if f.metadata()?.uid() != dir_uid {
        return Err(SpoolError::Dir {
            dir: dir.to_path_buf(),
            why: "belongs to another user".into(),
        });
    }
    Ok(f)
}

/// One request body being received.
pub struct Spool {
    mem: BytesMut,
    file: Option<(std::fs::File, Reservation)>,
    len: u64,
    memory_limit: usize,
    dir: PathBuf,
    max_disk: u64,
}

impl Spool {
    /// A spool for a body of `announced` bytes (its `Content-Length`, when it has one). A
    /// body announced larger than `memory_limit` goes straight to disk, its whole length
    /// claimed now: refused here, before a byte is read, when the budget cannot take it.
    pub fn new(
        memory_limit: usize,
        dir: &Path,
        max_disk: u64,
        announced: Option<u64>,
    ) -> Result<Spool, SpoolError> {
        let mut s = Spool {
            mem: BytesMut::new(),
            file: None,
            len: 0,
            memory_limit,
            dir: dir.to_path_buf(),
            max_disk,
        };
        match announced {
            Some(n) if n > memory_limit as u64 => {
                let r = Reservation::take(n, max_disk)?;
                s.file = Some((unnamed_file(dir)?, r));
            }
            Some(n) => s.mem.reserve(n as usize),
            None => {}
        }
        Ok(s)
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the body went to disk.
    pub fn on_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Append `data`. A write to the file is a plain blocking write: it lands in the page
    /// cache (as nginx's client body files do), and a read from the client is at most
    /// 64 KiB.
    pub fn push(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        if self.file.is_none() && self.mem.len() + data.len() > self.memory_limit {
            let claim = Reservation::take(self.len + data.len() as u64, self.max_disk)?;
            let mut f = unnamed_file(&self.dir)?;
            f.write_all(&self.mem)?;
            f.write_all(data)?;
            self.mem = BytesMut::new();
            self.file = Some((f, claim));
        } else if let Some((f, r)) = self.file.as_mut() {
            let after = self.len + data.len() as u64;
            if after > r.bytes {
                r.grow(after - r.bytes, self.max_disk)?;
            }
            f.write_all(data)?;
        } else {
            self.mem.extend_from_slice(data);
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// The whole body, as one `Bytes`: the memory itself, or a read-only map of the file
    /// (its disk claim held until the last copy of the `Bytes` is dropped).
    pub fn finish(self) -> Result<Bytes, SpoolError> {
        let Some((mut f, claim)) = self.file else {
            return Ok(self.mem.freeze());
        };
        if self.len == 0 {
            return Ok(Bytes::new());
        }
        f.flush()?;
        // SAFETY: the file has no name, lives in a private directory, and this process
        // holds its only descriptor (dropped below) and never writes to it again, so no
        // one can truncate or change it under the map.
        let map = unsafe { memmap2::Mmap::map(&f)? };
        if map.len() as u64 != self.len {
            return Err(SpoolError::Io(std::io::Error::other(format!(
                "temporary file holds {} bytes, {} were written",
                map.len(),
                self.len
            ))));
        }
        Ok(Bytes::from_owner(Mapped { map, _claim: claim }))
    }
}

/// A mapped body file and its disk claim, alive as long as the `Bytes` made of it.
struct Mapped {
    map: memmap2::Mmap,
    _claim: Reservation,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ecluse-spool-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn small_bodies_stay_in_memory_large_ones_go_to_an_unnamed_file() {
        let d = dir("spill");
        let mut s = Spool::new(8, &d, 1 << 20, None).expect("spool");
        s.push(b"1234").expect("push");
        assert!(!s.on_disk());
        s.push(b"56789").expect("push");
        assert!(s.on_disk());
        s.push(b"abc").expect("push");
        let b = s.finish().expect("finish");
        assert_eq!(&b[..], b"123456789abc");
        // Nothing named is left in the directory, even while the body is held.
        assert_eq!(std::fs::read_dir(&d).expect("dir").count(), 0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d).expect("md").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(b);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_disk_budget_is_claimed_up_front_and_given_back() {
        let d = dir("budget");
        let before = disk_used();
        // Announced larger than memory and than the budget: refused before any read.
        assert!(matches!(
            Spool::new(4, &d, 10, Some(11)),
            Err(SpoolError::NoSpace { .. })
        ));
        let mut s = Spool::new(4, &d, u64::MAX, Some(6)).expect("spool");
        assert!(s.on_disk());
        s.push(b"abcdef").expect("push");
        let b = s.finish().expect("finish");
        assert!(disk_used() >= before + 6);
        drop(b);
        // Other tests may hold claims of their own; ours is back.
        assert!(disk_used() < before + 6 || disk_used() == before);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("open");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut s = Spool::new(1, &d, 1 << 20, None).expect("spool");
        assert!(matches!(s.push(b"ab"), Err(SpoolError::Dir { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }
}
