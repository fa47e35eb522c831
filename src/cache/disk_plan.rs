//! Disk sizing: the block size that follows `max_object_bytes`, how many blocks a device
//! holds beside foyer's deletion log, and the memory shards.

use std::path::PathBuf;

use super::object::OBJECT_OVERHEAD;

/// Where and how large the disk tier is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory holding foyer's files and `tombstones.json`; created if missing. One
    /// open store per directory: two would overwrite each other's blocks.
    pub path: PathBuf,
    /// Bytes reserved on disk (the files are created at this size, sparse).
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------
// Disk sizing.
// ---------------------------------------------------------------------------------------

pub(super) const MIB: u64 = 1 << 20;
/// foyer's I/O page.
pub(super) const PAGE: u64 = 4096;
/// foyer's deletion log keeps 16-byte records, 256 per page, one per possible 4 KiB entry.
pub(super) const TOMBSTONE_LOG_SLOTS_PER_PAGE: u64 = PAGE / 16;
/// Room in a block beyond the body: foyer's entry header and blob index (4 KiB), our URL,
/// meta and compressed header.
pub(super) const BLOCK_OVERHEAD: u64 = MIB;
/// foyer's default block size, and our floor.
pub(super) const MIN_BLOCK: u64 = 16 * MIB;

#[derive(Debug, Clone)]
pub(super) struct DiskPlan {
    pub(super) path: PathBuf,
    pub(super) capacity: usize,
    pub(super) block: usize,
}

/// Bytes foyer's deletion log takes out of a device of `capacity` bytes (page-aligned).
pub(super) fn tombstone_log_bytes(capacity: u64) -> u64 {
    (capacity / PAGE).div_ceil(TOMBSTONE_LOG_SLOTS_PER_PAGE) * PAGE
}

/// Blocks a device of `bytes` holds once the deletion log has its share.
pub(super) fn disk_blocks(bytes: u64, block: u64) -> u64 {
    let capacity = bytes / PAGE * PAGE;
    capacity.saturating_sub(tombstone_log_bytes(capacity)) / block
}

impl DiskPlan {
    pub(super) fn new(
        cfg: &DiskConfig,
        max_object_bytes: u64,
    ) -> std::result::Result<DiskPlan, String> {
        let err = |m: String| format!("cache disk {}: {m}", cfg.path.display());
        // An object must fit in one block: foyer drops larger entries silently.
        let block = max_object_bytes
            .checked_add(BLOCK_OVERHEAD)
            .map(|b| b.div_ceil(MIB) * MIB)
            .ok_or_else(|| err(format!("max_object_bytes {max_object_bytes} is too large")))?
            .max(MIN_BLOCK);
        if disk_blocks(cfg.bytes, block) < 2 {
            // One block in writing and one clean to switch to is foyer's minimum.
            let mut need = 2 * block;
            while disk_blocks(need, block) < 2 {
                need += tombstone_log_bytes(need).max(PAGE);
            }
            return Err(err(format!(
                "{} bytes hold fewer than 2 blocks of {block} bytes (the block follows max_object_bytes {max_object_bytes}); give at least {need} bytes",
                cfg.bytes
            )));
        }
        let capacity = usize::try_from(cfg.bytes)
            .map_err(|_| err(format!("{} bytes do not fit this machine", cfg.bytes)))?;
        let block = usize::try_from(block)
            .map_err(|_| err(format!("block of {block} bytes does not fit this machine")))?;
        Ok(DiskPlan {
            path: cfg.path.clone(),
            capacity,
            block,
        })
    }
}

/// Memory shards: foyer splits the memory bound evenly between them and evicts within a
/// shard, so each must hold several of the largest objects.
pub(super) fn shard_count(memory: usize, max_object: usize) -> usize {
    let per_shard = max_object
        .saturating_add(OBJECT_OVERHEAD)
        .saturating_mul(4)
        .max(1);
    (memory / per_shard).clamp(1, 8)
}
