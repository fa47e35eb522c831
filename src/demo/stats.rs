//! Counters kept by the simulated origin so tests and benches can check what the proxy
//! really sent to the ENT (how many requests at once, how many file downloads, which
//! uploads arrived and how many times).
//!
//! Everything is lock-free except the upload table (one short mutex per upload, which is
//! rare compared with page views) and the in-flight notifier.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// Lowest and highest status code tracked individually; anything outside is clamped so a
/// bogus code can never index out of bounds.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
const STATUS_SLOTS: usize = (STATUS_MAX - STATUS_MIN + 1) as usize;

/// One distinct upload body seen by the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadRecord {
    /// Lower-case hex SHA-256 of the body.
    pub sha256_hex: String,
    /// Body length in bytes.
    pub len: usize,
    /// How many times this exact body was received (completely), including bodies read
    /// on a connection that was then dropped by [`super::Fault::DropReusedRequests`].
    pub count: usize,
}

/// Live statistics of a [`super::DemoOrigin`]. Shared behind an `Arc`, readable at any
/// time from tests, and served as JSON on `GET /__origin/stats`.
#[derive(Debug)]
pub struct OriginStats {
    inflight: AtomicUsize,
    peak_inflight: AtomicUsize,
    requests_total: AtomicU64,
    statuses: Box<[AtomicU64]>,
    rejected: AtomicU64,
    dropped: AtomicU64,
    sessions_issued: AtomicU64,
    /// Index `id - 1` holds the full-body fetch count of assignment file `id`.
    file_fetches: Box<[AtomicU64]>,
    /// Full-body fetches per (file id, version): a cache in front should make each 1.
    file_versions: Mutex<BTreeMap<(usize, u64), u64>>,
    /// Sum of the time every request spent inside the capacity model, in nanoseconds:
    /// the integral of [`inflight`](Self::inflight) over time (Little's law), so a
    /// reader can compute the mean in-flight over any interval from two readings.
    busy_ns: AtomicU64,
    /// Requests that went through the capacity model and were answered below 500 (the
    /// origin's goodput; refusals past `hard_limit` and hangs are not counted).
    served_ok: AtomicU64,
    uploads: Mutex<HashMap<String, UploadRecord>>,
    /// Woken on every in-flight change so tests can wait for a load level without
    /// sleeping on the wall clock.
    inflight_changed: Notify,
}

impl OriginStats {
    /// Creates zeroed statistics for an origin serving `files` assignment files.
    pub fn new(files: usize) -> OriginStats {
        OriginStats {
            inflight: AtomicUsize::new(0),
            peak_inflight: AtomicUsize::new(0),
            requests_total: AtomicU64::new(0),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            rejected: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sessions_issued: AtomicU64::new(0),
            file_fetches: (0..files).map(|_| AtomicU64::new(0)).collect(),
            file_versions: Mutex::new(BTreeMap::new()),
            busy_ns: AtomicU64::new(0),
            served_ok: AtomicU64::new(0),
            uploads: Mutex::new(HashMap::new()),
            inflight_changed: Notify::new(),
        }
    }

    /// Requests currently inside the capacity model (pages, files, visio, login, upload).
    /// Health checks and `/__origin/*` control requests are not counted.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Highest [`inflight`](Self::inflight) seen since start or the last
    /// [`reset_peak`](Self::reset_peak). Includes requests that were then rejected with
    /// 503: they did reach the server at the same time.
    pub fn peak_inflight(&self) -> usize {
        self.peak_inflight.load(Ordering::Acquire)
    }

    /// Restarts peak tracking from the current in-flight count (e.g. between bench phases).
    pub fn reset_peak(&self) {
        self.peak_inflight
            .store(self.inflight.load(Ordering::Acquire), Ordering::Release);
    }

    /// Every request received except `/__origin/*` control requests (health checks
    /// included, so a test can see the proxy's active checks).
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Responses sent with exactly this status code.
    pub fn responses_with_status(&self, status: u16) -> u64 {
        self.statuses[status_slot(status)].load(Ordering::Relaxed)
    }

    /// Non-zero response counts by exact status code.
    pub fn responses_by_status(&self) -> BTreeMap<u16, u64> {
        self.statuses
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                // `i` < STATUS_SLOTS (500), so it always fits in a u16.
                (n > 0).then(|| (STATUS_MIN + i as u16, n))
            })
            .collect()
    }

    /// Responses in a class: `class` is the hundreds digit (2 for 2xx, 5 for 5xx).
    pub fn responses_in_class(&self, class: u16) -> u64 {
        self.responses_by_status()
            .into_iter()
            .filter(|(s, _)| s / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }

    /// 2xx responses sent.
    pub fn responses_2xx(&self) -> u64 {
        self.responses_in_class(2)
    }

    /// 3xx responses sent (login redirects and 304 revalidations).
    pub fn responses_3xx(&self) -> u64 {
        self.responses_in_class(3)
    }

    /// 4xx responses sent.
    pub fn responses_4xx(&self) -> u64 {
        self.responses_in_class(4)
    }

    /// 5xx responses sent (mostly the 503 of an overloaded server).
    pub fn responses_5xx(&self) -> u64 {
        self.responses_in_class(5)
    }

    /// Requests refused because in-flight exceeded `hard_limit` (both the immediate 503s
    /// and the ones left hanging then dropped).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connections closed without any response (fault injection or the hang of a
    /// saturated server).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sessions handed out by `POST /login`.
    pub fn sessions_issued(&self) -> u64 {
        self.sessions_issued.load(Ordering::Relaxed)
    }

    /// Number of `200` responses carrying the full body of assignment file `id` (counted
    /// when the response is produced; 304s and HEADs are not counted). 0 for an unknown id.
    pub fn file_fetches(&self, id: usize) -> u64 {
        id.checked_sub(1)
            .and_then(|i| self.file_fetches.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Full-body fetches of one version of file `id` (0 when never fetched).
    pub fn file_version_fetches(&self, id: usize, version: u64) -> u64 {
        lock(&self.file_versions)
            .get(&(id, version))
            .copied()
            .unwrap_or(0)
    }

    /// Every (file id, version, full-body fetches) fetched at least once, sorted.
    pub fn file_versions(&self) -> Vec<(usize, u64, u64)> {
        lock(&self.file_versions)
            .iter()
            .map(|(&(id, v), &n)| (id, v, n))
            .collect()
    }

    /// Total time spent by requests inside the capacity model, in seconds: its growth
    /// over an interval divided by the interval's length is the mean in-flight count
    /// (requests still in progress are counted when they finish).
    pub fn busy_seconds(&self) -> f64 {
        self.busy_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Requests served by the capacity model with a status below 500.
    pub fn served_ok(&self) -> u64 {
        self.served_ok.load(Ordering::Relaxed)
    }

    /// Sum of [`file_fetches`](Self::file_fetches) over all files.
    pub fn file_fetches_total(&self) -> u64 {
        self.file_fetches
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Distinct upload bodies received, sorted by checksum for stable output.
    pub fn uploads(&self) -> Vec<UploadRecord> {
        let mut v: Vec<UploadRecord> = lock(&self.uploads).values().cloned().collect();
        v.sort_by(|a, b| a.sha256_hex.cmp(&b.sha256_hex));
        v
    }

    /// How many times a body with this SHA-256 (lower-case hex) was received.
    pub fn upload_count(&self, sha256_hex: &str) -> usize {
        lock(&self.uploads).get(sha256_hex).map_or(0, |r| r.count)
    }

    /// Waits until at least `n` requests are in flight. For tests that must build up load
    /// before checking the overload behaviour, without sleeping on the wall clock. Callers
    /// should wrap it in a timeout.
    pub async fn wait_for_inflight(&self, n: usize) {
        loop {
            let notified = self.inflight_changed.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between check and await is not lost.
            notified.as_mut().enable();
            if self.inflight() >= n {
                return;
            }
            notified.await;
        }
    }

    /// A point-in-time JSON snapshot (the body of `GET /__origin/stats`).
    pub fn to_json(&self) -> Value {
        let statuses: BTreeMap<String, u64> = self
            .responses_by_status()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        let files: BTreeMap<String, u64> = self
            .file_fetches
            .iter()
            .enumerate()
            .map(|(i, c)| ((i + 1).to_string(), c.load(Ordering::Relaxed)))
            .collect();
        json!({
            "inflight": self.inflight(),
            "peak_inflight": self.peak_inflight(),
            "requests_total": self.requests_total(),
            "responses": {
                "2xx": self.responses_2xx(),
                "3xx": self.responses_3xx(),
                "4xx": self.responses_4xx(),
                "5xx": self.responses_5xx(),
                "by_status": statuses,
            },
            "rejected": self.rejected(),
            "dropped": self.dropped(),
            "sessions_issued": self.sessions_issued(),
            "file_fetches": files,
            "file_fetches_total": self.file_fetches_total(),
            "file_versions": self
                .file_versions()
                .into_iter()
                .map(|(id, version, fetches)| json!({"id": id, "version": version, "fetches": fetches}))
                .collect::<Vec<_>>(),
            "busy_seconds": self.busy_seconds(),
            "served_ok": self.served_ok(),
            "uploads": self.uploads(),
        })
    }

    pub(crate) fn record_request(&self) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_status(&self, status: u16) {
        self.statuses[status_slot(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_session(&self) {
        self.sessions_issued.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_file_fetch(&self, id: usize, version: u64) {
        if let Some(c) = id.checked_sub(1).and_then(|i| self.file_fetches.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
            *lock(&self.file_versions).entry((id, version)).or_insert(0) += 1;
        }
    }

    pub(crate) fn record_served_ok(&self) {
        self.served_ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_upload(&self, sha256_hex: String, len: usize) {
        lock(&self.uploads)
            .entry(sha256_hex.clone())
            .and_modify(|r| r.count += 1)
            .or_insert(UploadRecord {
                sha256_hex,
                len,
                count: 1,
            });
    }

    /// Counts a request entering the capacity model; the returned guard leaves it on drop,
    /// whatever the exit path (response, error, client disconnect cancelling the future).
    pub(crate) fn enter(&self) -> InflightGuard<'_> {
        let now = self.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_inflight.fetch_max(now, Ordering::AcqRel);
        self.inflight_changed.notify_waiters();
        InflightGuard {
            stats: self,
            now,
            start: Instant::now(),
        }
    }
}

/// Holds one in-flight slot; see [`OriginStats::enter`].
pub(crate) struct InflightGuard<'a> {
    stats: &'a OriginStats,
    now: usize,
    start: Instant,
}

impl InflightGuard<'_> {
    /// In-flight count right after this request entered (itself included).
    pub(crate) fn at_entry(&self) -> usize {
        self.now
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats.busy_ns.fetch_add(ns, Ordering::Relaxed);
        self.stats.inflight.fetch_sub(1, Ordering::AcqRel);
        self.stats.inflight_changed.notify_waiters();
    }
}

fn status_slot(status: u16) -> usize {
    usize::from(status.clamp(STATUS_MIN, STATUS_MAX) - STATUS_MIN)
}

/// Statistics must survive a panicking test thread holding the lock: the data (counters)
/// stays meaningful, so a poisoned mutex is simply recovered.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_tracks_inflight_and_peak() {
        let s = OriginStats::new(3);
        {
            let a = s.enter();
            let b = s.enter();
            assert_eq!(a.at_entry(), 1);
            assert_eq!(b.at_entry(), 2);
            assert_eq!(s.inflight(), 2);
        }
        assert_eq!(s.inflight(), 0);
        assert_eq!(s.peak_inflight(), 2);
        assert!(s.busy_seconds() >= 0.0);
        s.reset_peak();
        assert_eq!(s.peak_inflight(), 0);
    }

    #[test]
    fn statuses_and_classes() {
        let s = OriginStats::new(0);
        s.record_status(200);
        s.record_status(201);
        s.record_status(304);
        s.record_status(503);
        s.record_status(9999); // clamped, must not panic
        assert_eq!(s.responses_2xx(), 2);
        assert_eq!(s.responses_3xx(), 1);
        assert_eq!(s.responses_5xx(), 2);
        assert_eq!(s.responses_with_status(503), 1);
    }

    #[test]
    fn file_fetches_ignore_unknown_ids() {
        let s = OriginStats::new(2);
        s.record_file_fetch(0, 1);
        s.record_file_fetch(3, 1);
        s.record_file_fetch(2, 1);
        s.record_file_fetch(2, 2);
        s.record_file_fetch(2, 2);
        assert_eq!(s.file_fetches(2), 3);
        assert_eq!(s.file_version_fetches(2, 2), 2);
        assert_eq!(s.file_versions(), vec![(2, 1, 1), (2, 2, 2)]);
        assert_eq!(s.file_fetches(0), 0);
        assert_eq!(s.file_fetches(3), 0);
        assert_eq!(s.file_fetches_total(), 3);
    }

    #[test]
    fn uploads_count_distinct_bodies() {
        let s = OriginStats::new(0);
        s.record_upload("bb".into(), 2);
        s.record_upload("aa".into(), 1);
        s.record_upload("bb".into(), 2);
        let u = s.uploads();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].sha256_hex, "aa");
        assert_eq!(u[1].count, 2);
        assert_eq!(s.upload_count("bb"), 2);
        let j = s.to_json();
        assert_eq!(j["uploads"][1]["count"], 2);
    }

    #[tokio::test]
    async fn wait_for_inflight_wakes_on_entry() {
        let s = std::sync::Arc::new(OriginStats::new(0));
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.wait_for_inflight(1).await });
        let _g = s.enter();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter task ok");
    }
}
