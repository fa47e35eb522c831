//! `ecluse demo --surge` and the status page's "Start a surge" button: the surge load
//! tool's own pupils (`crate::surge::scenario::student`: queue page, polls, login, the
//! day's assignment, a few pages, the visio, logout) driven in-process against the demo
//! proxy, at a scale a laptop takes: [`PUPILS`] arriving over [`RAMP`], against a room of
//! 50 admitted at 5 a second, so the queue fills and drains within a minute.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::surge::scenario::{self, Live, Plan};

/// Simulated pupils per surge.
pub const PUPILS: usize = 150;
/// Their arrivals spread over this, at a rate growing from zero (08:00 sharpens).
pub const RAMP: Duration = Duration::from_secs(10);
/// Whoever is not served by then gives up (and the run ends).
const PATIENCE: Duration = Duration::from_secs(240);

struct Inner {
    rt: tokio::runtime::Handle,
    target: OnceLock<SocketAddr>,
    running: AtomicBool,
    summary: Mutex<String>,
}

/// The demo's surge: started at most once at a time.
#[derive(Clone)]
pub struct DemoSurge(Arc<Inner>);

impl DemoSurge {
    /// Pupils run as tasks on `rt` (the simulated ENT's runtime).
    pub fn new(rt: tokio::runtime::Handle) -> DemoSurge {
        DemoSurge(Arc::new(Inner {
            rt,
            target: OnceLock::new(),
            running: AtomicBool::new(false),
            summary: Mutex::new(format!(
                "{PUPILS} simulated pupils arrive within {} s: more than the room lets in, so a queue forms, the heavy visio is switched off while it is long, and every pupil is served in turn.",
                RAMP.as_secs()
            )),
        }))
    }

    /// Where pupils connect: the proxy, once it listens.
    pub fn set_target(&self, proxy: SocketAddr) {
        let _ = self.0.target.set(proxy);
    }

    /// Start a surge; an error says why not.
    pub fn start(&self) -> Result<(), String> {
        let Some(target) = self.0.target.get().copied() else {
            return Err("the proxy is not listening yet".into());
        };
        if self.0.running.swap(true, Ordering::AcqRel) {
            return Err("a surge is already running; wait for it to end".into());
        }
        self.set_summary(format!(
            "Running: {PUPILS} simulated pupils arrive within {} s.",
            RAMP.as_secs()
        ));
        let me = self.clone();
        self.0.rt.spawn(async move {
            // Printed from the task, so that `--surge` says it after the URLs.
            println!(
                "ecluse demo: surge started: {PUPILS} simulated pupils arrive within {} s",
                RAMP.as_secs()
            );
            let line = match run(target).await {
                Ok(v) => format!(
                    "surge over in {} s: {} pupils, {} queued, {} served, {} gave up, {} visio refused while switched off, {} errors",
                    v["seconds"], v["pupils"], v["queued"], v["served"], v["gave_up"], v["visio_off"], v["errors"]
                ),
                Err(e) => format!("surge failed: {e}"),
            };
            println!("ecluse demo: {line}");
            me.set_summary(format!("Last {line}."));
            me.0.running.store(false, Ordering::Release);
        });
        Ok(())
    }

    fn set_summary(&self, s: String) {
        *self.0.summary.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

impl crate::admin::status::SurgeButton for DemoSurge {
    fn start(&self) -> Result<(), String> {
        DemoSurge::start(self)
    }

    fn state(&self) -> Value {
        json!({
            "running": self.0.running.load(Ordering::Acquire),
            "summary": self.0.summary.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }
}

/// One surge against the proxy at `target`: what happened to the pupils.
async fn run(target: SocketAddr) -> Result<Value, String> {
    let day_file = 1;
    let plan = Arc::new(Plan {
        target,
        students: PUPILS,
        ramp: RAMP,
        teachers: 0,
        think: (Duration::from_millis(200), Duration::from_millis(800)),
        pages: 2,
        visio_share: 0.6,
        patience: PATIENCE,
        timeout: Duration::from_secs(20),
        day_file,
        day_sha: scenario::sha_hex(&crate::demo::file_body(day_file, 1)),
        exam_first: 0,
        paper_len: 0,
        seed: rand::random(),
    });
    let t0 = Instant::now();
    let live = Arc::new(Live::new(t0, 600, PATIENCE + RAMP));
    let papers: scenario::Papers = Arc::new(Vec::new());
    let n = PUPILS as f64;
    let mut tasks = Vec::with_capacity(PUPILS);
    for i in 0..PUPILS {
        // Rate growing linearly from 0: the i-th arrival at T * sqrt(i / N).
        let at = RAMP.mul_f64(((i as f64 + 0.5) / n).sqrt());
        tasks.push(tokio::spawn(scenario::student(
            i,
            at,
            live.clone(),
            plan.clone(),
            papers.clone(),
        )));
    }
    let (mut queued, mut served, mut gave_up, mut visio_off, mut errors) = (0, 0, 0, 0, 0u64);
    for t in tasks {
        let rec = t.await.map_err(|e| e.to_string())?;
        queued += u64::from(rec.queued);
        served += u64::from(rec.served.is_some());
        gave_up += u64::from(rec.gave_up);
        visio_off += u64::from(rec.visio == Some("feature_off"));
        errors += u64::from(rec.errors);
    }
    Ok(json!({
        "seconds": t0.elapsed().as_secs(),
        "pupils": PUPILS,
        "queued": queued,
        "served": served,
        "gave_up": gave_up,
        "visio_off": visio_off,
        "errors": errors,
    }))
}
