//! Where a request body waits while it arrives, before it goes to the origin
//! (`request_buffering`, see `proxy::body`): in memory up to `memory_buffer`, then in a
//! temporary file.
//!
//! The files have no name: `tempfile::tempfile_in` opens them with `O_TMPFILE` (or unlinks
//! them at once where the file system cannot), so a file vanishes when its last descriptor
//! or map closes, on every exit path of a request and of the process, `kill -9` included;
//! nothing is ever left to clean up. Their directory is private (mode 0700, ours): one
//! that others can enter is refused rather than used.
//!
//! Three budgets bound what bodies hold, each claimed as bytes *arrive*, never on what a
//! client announces (a `Content-Length` costs nothing to send: claiming it up front let
//! one client hold the whole disk budget with a few heads and no bytes):
//!
//! - `max_memory`: every body's memory together. A body's buffer grows with what arrived
//!   (doubling, up to `memory_buffer`), so a connection that starts a body and sends a
//!   little holds a little. When the budget is used up, the body goes to disk.
//! - `max_disk`: every body's file together.
//! - `max_per_client`: what one client address (IPv6 by /64, as the rate limits group
//!   them) holds in memory and on disk together, over all its bodies: one client cannot
//!   use up the two shared budgets and refuse everyone else's uploads.
//!
//! Each claim lives in a [`Claims`] that gives it back when dropped: with the [`Spool`]
//! while the body arrives, then with the `Bytes` handed to pingora until the request ends.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

use crate::config::runtime::RequestBodies;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("request bodies in memory and on disk would exceed max_memory and max_disk ({max} bytes on disk)")]
    NoSpace { max: u64 },
    #[error("this client's request bodies would exceed max_per_client ({max} bytes)")]
    ClientCap { max: u64 },
    #[error("temporary directory {}: {why}", dir.display())]
    Dir { dir: PathBuf, why: String },
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes of request bodies claimed on disk, every directory together.
static DISK_USED: AtomicU64 = AtomicU64::new(0);
/// Bytes of request bodies claimed in memory (buffer capacity, not just length).
static MEM_USED: AtomicU64 = AtomicU64::new(0);

/// Bytes of request bodies claimed on disk now.
pub fn disk_used() -> u64 {
    DISK_USED.load(Ordering::Relaxed)
}

/// Bytes of request bodies claimed in memory now.
pub fn memory_used() -> u64 {
    MEM_USED.load(Ordering::Relaxed)
}

/// What each client (aggregated address) holds now. An entry lives while its client holds
/// a byte, so the map is bounded by the bodies being received or sent.
fn clients() -> &'static Mutex<HashMap<[u8; 17], u64>> {
    static C: OnceLock<Mutex<HashMap<[u8; 17], u64>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Bytes the client `key` holds now (tests and the admin state).
pub fn client_used(key: &[u8; 17]) -> u64 {
    clients()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .copied()
        .unwrap_or(0)
}

/// Add `n` to `used` if the total stays within `max`.
fn claim(used: &AtomicU64, n: u64, max: u64) -> bool {
    used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
        u.checked_add(n).filter(|t| *t <= max)
    })
    .is_ok()
}

fn gauge_memory(delta: i64) {
    crate::metrics::get().request_body_memory_bytes.add(delta);
}

fn gauge_disk(delta: i64) {
    crate::metrics::get().request_body_disk_bytes.add(delta);
}

fn signed(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// One body's claims on the three budgets, given back when dropped.
#[derive(Debug)]
pub struct Claims {
    client: [u8; 17],
    client_bytes: u64,
    memory: u64,
    disk: u64,
}

impl Claims {
    pub fn new(client: [u8; 17]) -> Claims {
        Claims {
            client,
            client_bytes: 0,
            memory: 0,
            disk: 0,
        }
    }

    /// Claim `n` bytes more for the client, within `max`.
    fn client(&mut self, n: u64, max: u64) -> Result<(), SpoolError> {
        if n == 0 {
            return Ok(());
        }
        let mut map = clients().lock().unwrap_or_else(|p| p.into_inner());
        let used = map.entry(self.client).or_insert(0);
        match used.checked_add(n).filter(|t| *t <= max) {
            Some(t) => {
                *used = t;
                self.client_bytes += n;
                Ok(())
            }
            None => {
                if *used == 0 {
                    map.remove(&self.client);
                }
                Err(SpoolError::ClientCap { max })
            }
        }
    }

    /// Claim `n` bytes more of memory, within `max`.
    fn memory(&mut self, n: u64, max: u64) -> bool {
        if !claim(&MEM_USED, n, max) {
            return false;
        }
        self.memory += n;
        gauge_memory(signed(n));
        true
    }

    /// Give back every byte of memory claimed (the body left memory for a file).
    fn release_memory(&mut self) {
        if self.memory > 0 {
            MEM_USED.fetch_sub(self.memory, Ordering::AcqRel);
            gauge_memory(-signed(self.memory));
            self.memory = 0;
        }
    }

    /// Claim `n` bytes more of disk, within `max`.
    fn disk(&mut self, n: u64, max: u64) -> Result<(), SpoolError> {
        if !claim(&DISK_USED, n, max) {
            return Err(SpoolError::NoSpace { max });
        }
        self.disk += n;
        gauge_disk(signed(n));
        Ok(())
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.release_memory();
        if self.disk > 0 {
            DISK_USED.fetch_sub(self.disk, Ordering::AcqRel);
            gauge_disk(-signed(self.disk));
        }
        if self.client_bytes > 0 {
            let mut map = clients().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(used) = map.get_mut(&self.client) {
                *used = used.saturating_sub(self.client_bytes);
                if *used == 0 {
                    map.remove(&self.client);
                }
            }
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
    /// The body while in memory; its capacity is what `claims` holds of `max_memory`.
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    len: u64,
    claims: Claims,
    memory_limit: usize,
    max_memory: u64,
    max_disk: u64,
    max_per_client: u64,
    dir: PathBuf,
}

/// The first memory a body gets: small, so a connection that starts a body and sends a
/// few bytes holds a few KiB, not `memory_buffer`.
const FIRST_BUFFER: usize = 16 << 10;

impl Spool {
    /// A spool for one body from `client` (its aggregated address key). Nothing is claimed
    /// or allocated until bytes arrive.
    pub fn new(rb: &RequestBodies, client: [u8; 17]) -> Spool {
        Spool {
            mem: Vec::new(),
            file: None,
            len: 0,
            claims: Claims::new(client),
            memory_limit: rb.memory_buffer,
            max_memory: rb.max_memory,
            max_disk: rb.max_disk,
            max_per_client: rb.max_per_client,
            dir: rb.temp_dir.clone(),
        }
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

    /// Make room in memory for `need` bytes: grow the buffer (doubling, within
    /// `memory_limit`) with a claim on `max_memory`. False: the body must go to disk.
    fn grow_memory(&mut self, need: usize) -> bool {
        let cap = self.mem.capacity();
        if need <= cap {
            return true;
        }
        if need > self.memory_limit {
            return false;
        }
        let target = need
            .max(cap.saturating_mul(2))
            .max(FIRST_BUFFER)
            .min(self.memory_limit);
        // The doubled size when the budget has it, else just what this chunk needs.
        let size = if self.claims.memory((target - cap) as u64, self.max_memory) {
            target
        } else if self.claims.memory((need - cap) as u64, self.max_memory) {
            need
        } else {
            return false;
        };
        self.mem.reserve_exact(size - self.mem.len());
        true
    }

    /// Move the body from memory to a new unnamed file, its bytes claimed on disk and its
    /// memory given back.
    fn spill(&mut self) -> Result<(), SpoolError> {
        self.claims.disk(self.len, self.max_disk)?;
        let mut f = unnamed_file(&self.dir)?;
        f.write_all(&self.mem)?;
        self.mem = Vec::new();
        self.claims.release_memory();
        self.file = Some(f);
        Ok(())
    }

    /// Append `data`, claiming its bytes for the client, then in memory or on disk. A
    /// write to the file is a plain blocking write: it lands in the page cache (as nginx's
    /// client body files do), and a read from the client is at most 64 KiB.
    pub fn push(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let n = data.len() as u64;
        self.claims.client(n, self.max_per_client)?;
        if self.file.is_none() {
            if self.grow_memory(self.mem.len() + data.len()) {
                self.mem.extend_from_slice(data);
                self.len += n;
                return Ok(());
            }
            self.spill()?;
        }
        self.claims.disk(n, self.max_disk)?;
        if let Some(f) = self.file.as_mut() {
            f.write_all(data)?;
        }
        self.len += n;
        Ok(())
    }

    /// The whole body, as one `Bytes`: the memory itself, or a read-only map of the file,
    /// its claims held until the last copy of the `Bytes` is dropped.
    pub fn finish(self) -> Result<Bytes, SpoolError> {
        let Some(mut f) = self.file else {
            if self.mem.is_empty() {
                return Ok(Bytes::new());
            }
            return Ok(Bytes::from_owner(InMemory {
                body: self.mem,
                _claims: self.claims,
            }));
        };
        if self.len == 0 {
            return Ok(Bytes::new());
        }
        f.flush()?;
        // SAFETY: the file has no name, lives in a private directory, and this process
        // holds its only descriptor (dropped below) and never writes to it again, so no
        // one can truncate or change it under the map.
        #[allow(unsafe_code)] // the crate's one unsafe block (Cargo.toml [lints])
        let map = unsafe { memmap2::Mmap::map(&f)? };
        if map.len() as u64 != self.len {
            return Err(SpoolError::Io(std::io::Error::other(format!(
                "temporary file holds {} bytes, {} were written",
                map.len(),
                self.len
            ))));
        }
        Ok(Bytes::from_owner(Mapped {
            map,
            _claims: self.claims,
        }))
    }
}

/// A body in memory and its claims, alive as long as the `Bytes` made of it.
struct InMemory {
    body: Vec<u8>,
    _claims: Claims,
}

impl AsRef<[u8]> for InMemory {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

/// A mapped body file and its claims, alive as long as the `Bytes` made of it.
struct Mapped {
    map: memmap2::Mmap,
    _claims: Claims,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budgets are process-wide: the tests that read them run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ecluse-spool-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn rb(d: &Path, memory_buffer: usize, max_memory: u64, max_disk: u64) -> RequestBodies {
        RequestBodies {
            memory_buffer,
            max_memory,
            max_disk,
            max_per_client: u64::MAX,
            temp_dir: d.to_path_buf(),
            ..RequestBodies::default()
        }
    }

    fn key(n: u8) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[0] = 9;
        k[16] = n;
        k
    }

    #[test]
    fn small_bodies_stay_in_memory_large_ones_go_to_an_unnamed_file() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = dir("spill");
        let mut s = Spool::new(&rb(&d, 8, u64::MAX, 1 << 20), key(1));
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
    fn nothing_is_claimed_before_bytes_arrive_and_buffers_grow_with_them() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = dir("grow");
        let (mem0, disk0) = (memory_used(), disk_used());
        // Many bodies started, whatever they announce: nothing held.
        let mut spools: Vec<Spool> = (0..1000)
            .map(|_| Spool::new(&rb(&d, 128 << 10, u64::MAX, u64::MAX), key(2)))
            .collect();
        assert_eq!((memory_used(), disk_used()), (mem0, disk0));
        // A few bytes each: a small first buffer each, not `memory_buffer`.
        for s in &mut spools {
            s.push(b"x").expect("push");
        }
        assert_eq!(memory_used() - mem0, 1000 * FIRST_BUFFER as u64);
        assert_eq!(client_used(&key(2)), 1000);
        // Growing doubles, up to the body's limit, and the body stays whole.
        let mut s = spools.pop().expect("one");
        let chunk = vec![b'y'; 10_000];
        for _ in 0..10 {
            s.push(&chunk).expect("push");
        }
        assert!(!s.on_disk());
        assert_eq!(s.mem.capacity(), 128 << 10);
        let b = s.finish().expect("finish");
        assert_eq!(b.len(), 100_001);
        drop(spools);
        drop(b);
        assert_eq!((memory_used(), disk_used()), (mem0, disk0));
        assert_eq!(client_used(&key(2)), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_memory_budget_spills_to_disk_and_both_full_refuse() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = dir("budget");
        let (mem0, disk0) = (memory_used(), disk_used());
        let r = rb(&d, 64 << 10, mem0 + (20 << 10), disk0 + (30 << 10));
        // The first body takes the memory budget (16 KiB buffer, then 20 KiB exactly).
        let mut a = Spool::new(&r, key(3));
        a.push(&[b'a'; 20 << 10]).expect("a");
        assert!(!a.on_disk());
        // The next one finds no memory left: on disk from its first byte.
        let mut b = Spool::new(&r, key(3));
        b.push(&[b'b'; 10 << 10]).expect("b");
        assert!(b.on_disk());
        assert_eq!(disk_used() - disk0, 10 << 10);
        // Both budgets full: refused.
        b.push(&[b'b'; 20 << 10]).expect("b fills the disk");
        let mut c = Spool::new(&r, key(3));
        assert!(matches!(c.push(b"c"), Err(SpoolError::NoSpace { .. })));
        let bb = b.finish().expect("b");
        assert_eq!(&bb[..10], &[b'b'; 10]);
        drop((a, bb, c));
        assert_eq!((memory_used(), disk_used()), (mem0, disk0));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_client_over_its_cap_is_refused_and_others_are_not() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let d = dir("client");
        let r = RequestBodies {
            max_per_client: 1000,
            ..rb(&d, 64 << 10, u64::MAX, u64::MAX)
        };
        let mut a1 = Spool::new(&r, key(4));
        a1.push(&[1; 600]).expect("a1");
        // The same client's second body takes it over its cap: refused.
        let mut a2 = Spool::new(&r, key(4));
        a2.push(&[2; 300]).expect("a2 within");
        assert!(matches!(
            a2.push(&[2; 200]),
            Err(SpoolError::ClientCap { max: 1000 })
        ));
        // Another client is not concerned.
        let mut b = Spool::new(&r, key(5));
        b.push(&[3; 1000]).expect("b");
        drop(a2);
        assert_eq!(client_used(&key(4)), 600);
        // A body finished holds its claim until it is sent.
        let a1 = a1.finish().expect("a1");
        assert_eq!(client_used(&key(4)), 600);
        drop(a1);
        drop(b);
        assert_eq!(client_used(&key(4)), 0);
        assert_eq!(client_used(&key(5)), 0);
        assert!(!clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key(4)));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("open");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut s = Spool::new(&rb(&d, 1, u64::MAX, 1 << 20), key(6));
        assert!(matches!(s.push(b"ab"), Err(SpoolError::Dir { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }
}
