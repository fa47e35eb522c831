//! Keeps the disk tier off a full filesystem, and brings it back after a failed write.
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
//! - a write foyer reports as failed anyway (an I/O error, or another writer filling the
//!   filesystem between two checks) turns the tier *failed*: foyer's disk engine of that
//!   moment is frozen where it stands (see [`install_foyer_hook`]: it never runs again, so
//!   its broken writer cannot panic) and no lookup, insertion or removal reaches it again;
//! - a failed tier is rebuilt (`Store` opens a new, empty disk engine over the same files
//!   and carries the memory tier over) once the filesystem has kept `high_water` bytes free
//!   for [`REBUILD_AFTER`]; if it fails again soon after, the wait doubles (up to
//!   [`REBUILD_AFTER_MAX`]), so a disk that keeps failing (EIO) is not rebuilt in a loop.
//!
//! `low_water` covers everything that may still be written after a check said yes: foyer's
//! queue (2 blocks), the buffer being flushed (1 block), the object itself and the
//! deletion log's page.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::space;

const ON: u8 = 0;
const PAUSED: u8 = 1;
const FAILED: u8 = 2;

/// How long the filesystem must keep `high_water` free before a failed tier is rebuilt.
pub(crate) const REBUILD_AFTER: Duration = Duration::from_secs(5);
/// The longest wait between rebuilds of a tier that keeps failing.
pub(crate) const REBUILD_AFTER_MAX: Duration = Duration::from_secs(600);
/// A tier that fails again within this time of its rebuild doubles the next wait.
const FAILS_AGAIN_WITHIN: Duration = Duration::from_secs(600);

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
    recovery: Mutex<Recovery>,
}

/// When a failed tier may be rebuilt.
#[derive(Debug)]
struct Recovery {
    /// Since when the filesystem has had `high_water` free (while failed).
    space_since: Option<Instant>,
    /// How long that must last.
    wait: Duration,
    /// The last rebuild.
    rebuilt_at: Option<Instant>,
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
            recovery: Mutex::new(Recovery {
                space_since: None,
                wait: REBUILD_AFTER,
                rebuilt_at: None,
            }),
        }
    }

    fn recovery(&self) -> std::sync::MutexGuard<'_, Recovery> {
        self.recovery.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Periodic look: errors and free space; pause or resume. True when the tier has
    /// failed and space has been back long enough: the caller rebuilds the disk engine,
    /// then says how that went ([`DiskGuard::rebuilt`], [`DiskGuard::rebuild_failed`]).
    pub fn poll(&self) -> bool {
        self.poll_at(Instant::now())
    }

    fn poll_at(&self, now: Instant) -> bool {
        self.note_errors();
        let s = match space::fs_space(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&format!("cannot read its filesystem's free space: {e}"));
                self.recovery().space_since = None;
                return false;
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
            FAILED => {
                let mut r = self.recovery();
                if s.read_only || s.avail < self.high_water {
                    r.space_since = None;
                    return false;
                }
                let since = *r.space_since.get_or_insert(now);
                return now.saturating_duration_since(since) >= r.wait;
            }
            _ => {}
        }
        false
    }

    /// The disk engine was rebuilt: the tier is on again.
    pub fn rebuilt(&self) {
        self.rebuilt_at(Instant::now());
    }

    fn rebuilt_at(&self, now: Instant) {
        {
            let mut r = self.recovery();
            r.space_since = None;
            r.rebuilt_at = Some(now);
        }
        // Errors counted so far belong to the engine that was replaced.
        self.errors_seen
            .store(FOYER_ERRORS.load(Ordering::Relaxed), Ordering::Relaxed);
        if self
            .state
            .compare_exchange(FAILED, ON, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            log::warn!(
                "cache disk {}: {} free again: the disk tier is back on, with a new, empty disk engine (what the old one held is dropped; objects in memory are kept)",
                self.dir.display(),
                space::mib(self.free_bytes())
            );
        }
    }

    /// Rebuilding the disk engine failed: stay off, try again after a longer wait.
    pub fn rebuild_failed(&self, why: &str) {
        let wait = {
            let mut r = self.recovery();
            r.space_since = None;
            r.wait = (r.wait * 2).min(REBUILD_AFTER_MAX);
            r.wait
        };
        log::error!(
            "cache disk {}: cannot reopen the disk tier: {why}: it stays OFF (serving from memory and the origin), next try after {}s with space free",
            self.dir.display(),
            wait.as_secs()
        );
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
        self.fail_at(why, Instant::now());
    }

    fn fail_at(&self, why: &str, now: Instant) {
        if self.state.swap(FAILED, Ordering::AcqRel) != FAILED {
            let wait = {
                let mut r = self.recovery();
                r.space_since = None;
                // A tier that fails again soon after its rebuild waits longer each time.
                r.wait = match r.rebuilt_at {
                    Some(at) if now.saturating_duration_since(at) < FAILS_AGAIN_WITHIN => {
                        (r.wait * 2).min(REBUILD_AFTER_MAX)
                    }
                    _ => REBUILD_AFTER,
                };
                r.wait
            };
            log::error!(
                "cache disk {}: {why}: the disk tier is OFF (serving from memory and the origin); it is reopened empty once {} have stayed free for {}s",
                self.dir.display(),
                space::mib(self.high_water),
                wait.as_secs()
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

/// One foyer disk engine, as seen from the thread that runs it: `Store` gives every disk
/// engine a runtime of its own with a single worker thread, marked with this.
///
/// Why: after a failed write foyer's writer is broken (see the module comment), and the
/// next flush would panic. The error event is emitted on that worker thread, inside the
/// failing write's task, before the flusher can run again; the hook then parks the thread
/// for good ([`install_foyer_hook`]). Every task of that engine lives on that one worker,
/// so none of them runs again: the broken engine is left as it stands (its memory and one
/// parked thread are the cost of a failure), and the store opens a new one later.
#[derive(Debug, Default)]
pub(crate) struct EngineFreeze {
    /// Set once the engine is open: a failure while opening is an error `open` returns.
    armed: AtomicBool,
    frozen: AtomicBool,
    /// Wakes lookups waiting on the frozen engine (they become misses).
    notify: tokio::sync::Notify,
}

impl EngineFreeze {
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Resolves once the engine is frozen (immediately if it is).
    pub async fn frozen(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_frozen() {
            return;
        }
        notified.await;
    }

    fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

thread_local! {
    static ENGINE: RefCell<Option<Arc<EngineFreeze>>> = const { RefCell::new(None) };
}

/// Mark the current thread as the one running the disk engine of `freeze` (a runtime's
/// `on_thread_start`).
pub(crate) fn engine_thread(freeze: Arc<EngineFreeze>) {
    ENGINE.with(|e| *e.borrow_mut() = Some(freeze));
}

/// Route foyer's `tracing` events to the log, and count its errors: a failed disk write
/// is only ever reported that way (foyer's flusher logs it and goes on). An error on a
/// disk engine's own thread freezes that engine (see [`EngineFreeze`]). Installed once,
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
            log::error!(target: "foyer", "{target}: {}", m.0);
            let engine = ENGINE.with(|e| e.borrow().clone());
            if let Some(engine) = engine.filter(|e| e.armed.load(Ordering::Acquire)) {
                // Frozen before the guard can see the error: a lookup that sees the
                // failure must find the engine already out of use.
                engine.freeze();
                FOYER_ERRORS.fetch_add(1, Ordering::Relaxed);
                // This thread runs every task of the broken engine: it never returns to
                // them (parking costs nothing; a spurious wake-up parks again).
                loop {
                    std::thread::park();
                }
            }
            FOYER_ERRORS.fetch_add(1, Ordering::Relaxed);
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
    fn an_error_event_from_foyer_turns_the_tier_off_until_space_has_stayed_back() {
        install_foyer_hook();
        let dir = std::env::temp_dir();
        let g = DiskGuard::new(dir, 16 << 20, 1 << 20);
        assert!(!g.poll(), "nothing to rebuild while on");
        let before = g.write_errors();
        // What foyer's flusher emits when a write fails (not on an engine thread here, so
        // counted, not frozen).
        tracing::error!(target: "foyer_storage::engine::block::flusher", "[flusher]: flush data error");
        // Other crates' events are not foyer's.
        tracing::error!(target: "somebody_else", "unrelated");
        assert!(!g.admit());
        assert!(g.has_failed());
        assert!(g.write_errors() > before);

        // The temp directory has room: the rebuild is due once it has lasted REBUILD_AFTER.
        let t0 = Instant::now();
        assert!(!g.poll_at(t0), "not at once");
        assert!(!g.poll_at(t0 + REBUILD_AFTER / 2));
        assert!(g.has_failed());
        assert!(g.poll_at(t0 + REBUILD_AFTER), "due after the hysteresis");
        g.rebuilt();
        assert!(g.is_on() && !g.has_failed());
        assert!(
            g.admit(),
            "errors of the replaced engine are not counted again"
        );

        // Failing again soon after the rebuild: the next wait doubles.
        tracing::error!(target: "foyer_storage::engine::block::flusher", "[flusher]: flush data error");
        let t1 = Instant::now();
        assert!(!g.poll_at(t1));
        assert!(g.has_failed());
        assert!(!g.poll_at(t1 + REBUILD_AFTER));
        assert!(g.poll_at(t1 + REBUILD_AFTER * 2));
        // A rebuild that fails waits longer still, from scratch.
        g.rebuild_failed("test");
        assert!(g.has_failed());
        let t2 = t1 + REBUILD_AFTER * 2;
        assert!(!g.poll_at(t2));
        assert!(!g.poll_at(t2 + REBUILD_AFTER * 2));
        assert!(g.poll_at(t2 + REBUILD_AFTER * 4));
    }
}
