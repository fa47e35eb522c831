//! Reload on file change (`server.watch_config`): the policy file, and the TLS listener's
//! certificates and keys, so a renewal (certbot, an ACME client, a secret mounted by
//! Kubernetes) reaches new connections without a HUP.
//!
//! One task watches both. The policy file keeps its stat poll (500 ms: size, mtime,
//! inode of the path, which sees editors' rename-over and symlink swaps alike). The
//! certificates are watched with inotify (the `notify` crate) on the directories that
//! hold them, both the configured path's and, through a symlink, the target's:
//! certbot writes new files under `archive/` and swaps the symlinks in `live/`, other
//! tools rename a new file over the old one, and a watch on the file's own inode would
//! miss both. A slow poll of the files' contents backs it up (a filesystem without
//! inotify, a directory created after start, a dropped event).
//!
//! What decides is content, not events: the files' SHA-256 is compared with the digest
//! of the pair being served ([`crate::tls::ServerCert::digest`]), after the events have
//! been quiet for [`SETTLE`] (a certificate and its key are written one after the
//! other). A pair that does not load (the new certificate with the old key, half
//! written) is refused like any bad reload: the served pair stays, the error is logged
//! and counted (`ecluse_config_reloads_total{result="error"}`), and the same contents are
//! not tried again: the next change is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;

use crate::app::App;

/// The policy file's stat poll.
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// The certificates' content poll, when no event came.
const CERT_POLL: Duration = Duration::from_secs(5);
/// Quiet time after the last event before the files are read…
const SETTLE: Duration = Duration::from_millis(300);
/// …but never longer than this after the first (a log file written next to the
/// certificates must not postpone the check for ever).
const SETTLE_MAX: Duration = Duration::from_secs(2);

fn stamp(p: &Path) -> Option<(u64, std::time::SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// The listener's (certificate, key) files and the digest of what is served from them.
fn served_pairs(app: &App) -> Vec<(PathBuf, PathBuf, [u8; 32])> {
    app.config()
        .tls
        .as_ref()
        .map(|t| {
            t.certs
                .certs
                .iter()
                .map(|c| (c.cert_file.clone(), c.key_file.clone(), c.digest))
                .collect()
        })
        .unwrap_or_default()
}

/// What is on disk now, pair by pair (`None`: unreadable).
fn on_disk(pairs: &[(PathBuf, PathBuf, [u8; 32])]) -> Vec<Option<[u8; 32]>> {
    pairs
        .iter()
        .map(|(c, k, _)| crate::tls::files_digest(c, k))
        .collect()
}

/// The directories to watch for `pairs`: each file's, and its symlink target's.
fn dirs_of(pairs: &[(PathBuf, PathBuf, [u8; 32])]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for (c, k, _) in pairs {
        for f in [c, k] {
            if let Some(d) = f.parent() {
                dirs.insert(d.to_path_buf());
            }
            if let Some(d) = std::fs::canonicalize(f)
                .ok()
                .and_then(|t| t.parent().map(Path::to_path_buf))
            {
                dirs.insert(d);
            }
        }
    }
    dirs
}

/// Keeps inotify watches on the directories of the served certificates.
struct DirWatch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: BTreeSet<PathBuf>,
}

impl DirWatch {
    fn new(events: tokio::sync::mpsc::Sender<()>) -> DirWatch {
        let watcher = notify::recommended_watcher(move |r: notify::Result<notify::Event>| {
            // Any change in the directories: the contents decide (an error too, since an
            // event may have been lost). Not an open or a read: the check's own reading
            // of the files would wake it again, for ever. One pending wake-up is enough:
            // a busy directory is not queued event by event.
            if matches!(&r, Ok(ev) if ev.kind.is_access()) {
                return;
            }
            let _ = events.try_send(());
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!(
                    "cannot watch certificate files ({e}): renewals are seen by polling every {}s",
                    CERT_POLL.as_secs()
                );
                None
            }
        };
        DirWatch {
            watcher,
            dirs: BTreeSet::new(),
        }
    }

    fn set(&mut self, want: BTreeSet<PathBuf>) {
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for d in self.dirs.difference(&want) {
            let _ = w.unwatch(d);
        }
        let mut now = BTreeSet::new();
        for d in want {
            if self.dirs.contains(&d) {
                now.insert(d);
                continue;
            }
            match w.watch(&d, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    now.insert(d);
                }
                Err(e) => log::warn!(
                    "cannot watch `{}` for certificate renewals ({e}): polled every {}s instead",
                    d.display(),
                    CERT_POLL.as_secs()
                ),
            }
        }
        self.dirs = now;
    }
}

/// The watch loop, until `stop`.
pub async fn run(app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let path: PathBuf = app.config_path.clone();
    let mut last = stamp(&path);
    let (tx, mut events) = tokio::sync::mpsc::channel(1);
    let mut watch = DirWatch::new(tx);
    let mut pairs = served_pairs(&app);
    watch.set(dirs_of(&pairs));
    // The contents last refused: not tried again until they change.
    let mut refused: Option<Vec<Option<[u8; 32]>>> = None;
    let mut config_tick = tokio::time::interval(CONFIG_POLL);
    let mut cert_tick = tokio::time::interval(CERT_POLL);
    cert_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (first event, check at) while events settle.
    let mut settle: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
    loop {
        let mut check_certs = false;
        let mut check_config = false;
        tokio::select! {
            _ = stop.changed() => return,
            _ = config_tick.tick() => check_config = true,
            _ = cert_tick.tick() => check_certs = true,
            Some(()) = events.recv() => {
                let now = tokio::time::Instant::now();
                let first = settle.map_or(now, |(first, _)| first);
                settle = Some((first, (now + SETTLE).min(first + SETTLE_MAX)));
            }
            _ = async {
                match settle {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                settle = None;
                check_certs = true;
            }
        }
        if !app.config().server.watch_config {
            last = stamp(&path);
            continue;
        }
        let mut trigger = None;
        if check_config {
            let now = stamp(&path);
            if now.is_some() && now != last {
                last = now;
                trigger = Some("file changed");
            }
        }
        // Read before the reload: a write after this is a change the next round sees.
        let disk = on_disk(&pairs);
        if trigger.is_none() && check_certs {
            let served: Vec<Option<[u8; 32]>> = pairs.iter().map(|p| Some(p.2)).collect();
            if disk == served {
                // Back to what is served: a refused state seen again is a new change.
                refused = None;
            } else if refused.as_ref() != Some(&disk) {
                trigger = Some("certificate file changed");
            }
        }
        let Some(trigger) = trigger else { continue };
        let a = app.clone();
        let result = tokio::task::spawn_blocking(move || a.reload(trigger).is_ok()).await;
        match result {
            Ok(true) => refused = None,
            _ => {
                if trigger != "file changed" {
                    log::warn!(
                        "certificate files changed but do not load (see the error above): the previous certificates keep serving; retried at their next change"
                    );
                }
                refused = Some(disk);
            }
        }
        // The reload may have changed which files are served, and a symlink's target.
        pairs = served_pairs(&app);
        watch.set(dirs_of(&pairs));
    }
}
