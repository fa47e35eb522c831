//! Keeps the disk tier off a full filesystem.
//!
//! foyer writes into sparse files, so a filesystem that fills (another process, a volume
//! smaller than `cache.disk.size`) makes its writes fail with ENOSPC, and foyer 0.22 does
//! not survive that: a failed block write cancels the deletion log's page write half way,
//! which leaves the log without its buffer, and every later flush panics in foyer's
//! background tasks (nothing is written to disk again, and the block gauges keep counting
//! blocks that hold nothing). foyer tells nobody: the error is only a `tracing` event.
//!
//! So the guard stops the writes before they can fail:
//! - every object is admitted to disk only while the filesystem keeps `low_water` bytes
//!   free (one statvfs per stored object, and a poll every second); below it the tier is
//!   *paused*: objects are kept in memory only, lookups and removals still reach the disk
//!   (they write nothing but the deletion log, whose blocks are reserved at open);
//! - the tier comes back by itself once `high_water` bytes are free again;
//! - a write foyer reports as failed anyway (an I/O error, or a race with another writer
//!   between two checks) turns the tier off for good (*failed*): no lookup, insertion or
//!   removal reaches foyer's disk engine again in this process, whose writer may be broken;
//!   a restart reopens it.
//!
//! `low_water` covers everything that may still be written after a check said yes: foyer's
//! queue (2 blocks), the buffer being flushed (1 block), the object itself and the
//! deletion log's page.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use super::space;

const ON: u8 = 0;
const PAUSED: u8 = 1;
const FAILED: u8 = 2;

/// Errors foyer's disk engine reported (ERROR-level `tracing` events from foyer), for the
/// whole process: see [`install_foyer_hook`].
static FOYER_ERRORS: AtomicU64 = AtomicU64::new(0);

pub(crate) struct DiskGuard {
    dir: PathBuf,
    pub low_water: u64,
    pub high_water: u64,
    state: AtomicU8,
    /// Free bytes of the filesystem at the last look.
    free: AtomicU64,
    write_errors: AtomicU64,
    /// `FOYER_ERRORS` when this guard last looked.
    errors_seen: AtomicU64,
}

impl DiskGuard {
    pub fn new(dir: PathBuf, block: u64, max_object: u64) -> DiskGuard {
        let low_water = block
            .saturating_mul(3)
            .saturating_add(max_object)
            .saturating_add(1 << 20);
        DiskGuard {
            dir,
            low_water,
            // Hysteresis: one more block, so a tier at the edge does not flap.
            high_water: low_water.saturating_add(block),
            state: AtomicU8::new(ON),
            free: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            errors_seen: AtomicU64::new(FOYER_ERRORS.load(Ordering::Relaxed)),
        }
    }

    /// Whether an object may be written to disk now (statvfs once).
    pub fn admit(&self) -> bool {
        if self.state.load(Ordering::Acquire) != ON {
            return false;
        }
        self.note_errors();
        match space::fs_space(&self.dir) {
            Ok(s) => {
                self.free.store(s.avail, Ordering::Relaxed);
                if s.read_only || s.avail < self.low_water {
                    self.pause(s.avail, s.read_only);
                    false
                } else {
                    self.state.load(Ordering::Acquire) == ON
                }
            }
            Err(e) => {
                self.fail(&format!("cannot read its filesystem's free space: {e}"));
                false
            }
        }
    }

    /// Periodic look: errors and free space; pause or resume.
    pub fn poll(&self) {
        self.note_errors();
        let s = match space::fs_space(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&format!("cannot read its filesystem's free space: {e}"));
                return;
            }
        };
        self.free.store(s.avail, Ordering::Relaxed);
        match self.state.load(Ordering::Acquire) {
            ON if s.read_only || s.avail < self.low_water => self.pause(s.avail, s.read_only),
            PAUSED
                if !s.read_only
                    && s.avail >= self.high_water
                    && self
                        .state
                        .compare_exchange(PAUSED, ON, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok() =>
            {
                log::warn!(
                    "cache disk {}: {} free again: the disk tier is back on",
                    self.dir.display(),
                    space::mib(s.avail)
                );
            }
            _ => {}
        }
    }

    fn pause(&self, avail: u64, read_only: bool) {
        if self
            .state
            .compare_exchange(ON, PAUSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let why = if read_only {
                "its filesystem is mounted read-only".to_string()
            } else {
                format!(
                    "only {} free on its filesystem (the tier needs {} free to write safely)",
                    space::mib(avail),
                    space::mib(self.low_water)
                )
            };
            log::error!(
                "cache disk {}: {why}: the disk tier is OFF, new objects are kept in memory only; it comes back by itself at {} free",
                self.dir.display(),
                space::mib(self.high_water)
            );
        }
    }

    fn fail(&self, why: &str) {
        if self.state.swap(FAILED, Ordering::AcqRel) != FAILED {
            log::error!(
                "cache disk {}: {why}: the disk tier is OFF until ecluse restarts (serving from memory and the origin)",
                self.dir.display()
            );
        }
    }

    fn note_errors(&self) {
        let now = FOYER_ERRORS.load(Ordering::Relaxed);
        let before = self.errors_seen.swap(now, Ordering::Relaxed);
        if now > before {
            self.write_errors.fetch_add(now - before, Ordering::Relaxed);
            self.fail("a write to the disk tier failed");
        }
    }

    /// Objects go to disk.
    pub fn is_on(&self) -> bool {
        self.state.load(Ordering::Acquire) == ON
    }

    /// foyer's disk engine must not be touched at all.
    pub fn has_failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
}

/// Route foyer's `tracing` events to the log, and count its errors: a failed disk write
/// is only ever reported that way (foyer's flusher logs it and goes on). Installed once,
/// as the process's `tracing` subscriber (ecluse logs through `log`; nothing else of ours
/// uses `tracing`).
pub(crate) fn install_foyer_hook() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(FoyerEvents);
    });
}

struct FoyerEvents;

impl FoyerEvents {
    fn wanted(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event()
            && *meta.level() <= tracing::Level::WARN
            && meta.target().starts_with("foyer")
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

impl tracing::Subscriber for FoyerEvents {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::wanted(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        Self::wanted(meta)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut m = Message(String::new());
        event.record(&mut m);
        let target = event.metadata().target();
        if *event.metadata().level() == tracing::Level::ERROR {
            FOYER_ERRORS.fetch_add(1, Ordering::Relaxed);
            log::error!(target: "foyer", "{target}: {}", m.0);
        } else {
            log::warn!(target: "foyer", "{target}: {}", m.0);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_event_from_foyer_turns_the_tier_off_for_good() {
        install_foyer_hook();
        let dir = std::env::temp_dir();
        let g = DiskGuard::new(dir, 16 << 20, 1 << 20);
        g.poll();
        let before = g.write_errors();
        // What foyer's flusher emits when a write fails.
        tracing::error!(target: "foyer_storage::engine::block::flusher", "[flusher]: flush data error");
        // Other crates' events are not foyer's.
        tracing::error!(target: "somebody_else", "unrelated");
        assert!(!g.admit());
        assert!(g.has_failed());
        assert!(g.write_errors() > before);
        g.poll();
        assert!(g.has_failed(), "a failed tier does not come back");
    }
}
