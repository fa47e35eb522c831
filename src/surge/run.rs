//! One arm of the surge replay: calibrate the origin, replay the morning, sample what the
//! origin and the proxy say ten times a second, and write the time series (CSV), the
//! summary (JSON) and the plot (SVG).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use super::client::Browser;
use super::row::{Row, CSV_HEADER};
use super::scenario::{self, Live, Plan, StudentRec, TeacherRec};

/// Everything `ecluse-surge run` is told.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub arm: String,
    pub plan: Plan,
    /// The simulated ENT itself (stats and calibration go there directly).
    pub origin: SocketAddr,
    /// ecluse's admin listener, for the degradation level and the room's own count.
    pub admin: Option<SocketAddr>,
    pub calibrate: Duration,
    /// Skip the calibration: the best goodput is known.
    pub best_rps: Option<f64>,
    /// Stop waiting for stragglers after this (counted as not served).
    pub max_duration: Duration,
    pub out: PathBuf,
}

/// One sample of the origin and the proxy.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    t: f64,
    inflight: f64,
    busy: f64,
    ok: f64,
    held: i64,
    active: i64,
    arrived: u64,
    level: Option<f64>,
    room_waiting: Option<f64>,
    room_active: Option<f64>,
    room_admitted: Option<f64>,
}

/// A small client for the control endpoints (origin stats, ecluse metrics).
async fn get(b: &mut Browser, path: &str) -> Option<Bytes> {
    match b.send(Method::GET, path, "*/*", None, Bytes::new()).await {
        Ok(r) if r.status == 200 => Some(r.body),
        _ => None,
    }
}

pub async fn origin_stats(b: &mut Browser) -> Option<Value> {
    serde_json::from_slice(&get(b, "/__origin/stats").await?).ok()
}

fn control(addr: SocketAddr) -> Browser {
    Browser::new(
        addr,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Duration::from_secs(5),
    )
}

/// Prometheus text: the value of the first sample named `name` (labels ignored unless
/// given in `name`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| match l.strip_prefix(name) {
            // A name given with its labels matches exactly; a bare name also matches
            // any labels, but not a longer name (`_info`).
            Some(rest) => name.ends_with('}') || rest.starts_with([' ', '{']),
            None => false,
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The origin's best goodput at its capacity: `capacity` clients, each sending the next
/// request as soon as the previous one is answered, for `dur` (after a short warm-up).
/// Measured on the real origin, so it includes whatever this machine adds to the model.
pub async fn calibrate(origin: SocketAddr, capacity: usize, dur: Duration) -> f64 {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..capacity {
        let (stop, count, counting) = (stop.clone(), count.clone(), counting.clone());
        tasks.push(tokio::spawn(async move {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 4, (i / 250) as u8, (i % 250) as u8 + 1));
            let mut b = Browser::new(origin, ip, Duration::from_secs(10));
            while !stop.load(Ordering::Relaxed) {
                let r = b
                    .send(
                        Method::GET,
                        "/pages/calibration",
                        "text/html",
                        None,
                        Bytes::new(),
                    )
                    .await;
                if matches!(r, Ok(ref r) if r.status == 200) && counting.load(Ordering::Relaxed) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    let n = count.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

pub async fn run(o: RunOpts) -> Result<Value, String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let mut ob = control(o.origin);
    let stats0 = origin_stats(&mut ob)
        .await
        .ok_or_else(|| format!("no stats from the origin at {}", o.origin))?;
    let capacity = stats0["options"]["capacity"].as_u64().unwrap_or(0);
    let hard_limit = stats0["options"]["hard_limit"].as_u64().unwrap_or(0);
    let best = match o.best_rps {
        Some(b) => b,
        None => calibrate(o.origin, capacity as usize, o.calibrate).await,
    };
    // Calibration filled the origin to its capacity on purpose: measure the arm alone.
    let _ = ob
        .send(
            Method::POST,
            "/__origin/reset_peak",
            "*/*",
            None,
            Bytes::new(),
        )
        .await;
    let stats_start = origin_stats(&mut ob).await.unwrap_or_default();
    eprintln!(
        "ecluse-surge {}: origin capacity {capacity} (hard limit {hard_limit}), best {best:.0} req/s; {} students over {:?}, {} teachers",
        o.arm, o.plan.students, o.plan.ramp, o.plan.teachers
    );

    let seconds = (o.max_duration + o.plan.timeout).as_secs() as usize + 40;
    let t0 = Instant::now();
    let live = Arc::new(Live::new(t0, seconds, o.max_duration));
    let plan = Arc::new(o.plan.clone());
    let mut papers = Vec::new();
    let mut teachers = Vec::new();
    for j in 0..plan.teachers {
        let body = scenario::paper(plan.seed, j, plan.paper_len);
        papers.push((plan.exam_first + j, scenario::sha_hex(&body)));
        let at = Duration::from_millis(100 + 50 * j as u64);
        teachers.push(tokio::spawn(scenario::teacher(
            j,
            at,
            live.clone(),
            plan.clone(),
            body,
        )));
    }
    let papers = Arc::new(papers);
    let mut students = Vec::with_capacity(plan.students);
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    use rand::{Rng, SeedableRng};
    let n = plan.students.max(1) as f64;
    for i in 0..plan.students {
        // Rate growing linearly from 0: the k-th arrival at T * sqrt(k / N), with jitter.
        let u: f64 = rng.random_range(0.0..1.0);
        let at = plan.ramp.mul_f64((((i as f64) + u) / n).sqrt());
        students.push(tokio::spawn(scenario::student(
            i,
            at,
            live.clone(),
            plan.clone(),
            papers.clone(),
        )));
    }

    // Sample until everyone is done (or the deadline).
    let mut samples: Vec<Sample> = Vec::new();
    let mut ab = o.admin.map(control);
    let mut last_admin = (None, None, None, None);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let deadline = t0 + o.max_duration;
    let mut k = 0u64;
    loop {
        tick.tick().await;
        let t = t0.elapsed().as_secs_f64();
        let st = origin_stats(&mut ob).await;
        if k % 5 == 0 {
            if let Some(b) = ab.as_mut() {
                if let Some(text) = get(b, "/metrics").await {
                    let text = String::from_utf8_lossy(&text);
                    last_admin = (
                        metric(&text, "ecluse_degradation_level"),
                        metric(&text, "ecluse_room_waiting{room=\"ent\"}"),
                        metric(&text, "ecluse_room_active_users{room=\"ent\"}"),
                        metric(&text, "ecluse_room_admitted_total{room=\"ent\"}"),
                    );
                }
            }
        }
        k += 1;
        if let Some(st) = st {
            samples.push(Sample {
                t,
                inflight: st["inflight"].as_f64().unwrap_or(0.0),
                busy: st["busy_seconds"].as_f64().unwrap_or(0.0),
                ok: st["served_ok"].as_f64().unwrap_or(0.0),
                held: live.held.load(Ordering::Relaxed),
                active: live.active.load(Ordering::Relaxed),
                arrived: live.arrived.load(Ordering::Relaxed),
                level: last_admin.0,
                room_waiting: last_admin.1,
                room_active: last_admin.2,
                room_admitted: last_admin.3,
            });
        }
        let all_done =
            students.iter().all(|h| h.is_finished()) && teachers.iter().all(|h| h.is_finished());
        // Past the deadline everyone gives up at their next step: wait for their records
        // (a request in flight ends within the browser's time-out).
        if all_done || Instant::now() >= deadline + o.plan.timeout + Duration::from_secs(6) {
            break;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut recs: Vec<StudentRec> = Vec::with_capacity(students.len());
    for (i, h) in students.into_iter().enumerate() {
        if h.is_finished() {
            if let Ok(r) = h.await {
                recs.push(r);
                continue;
            }
        } else {
            h.abort();
        }
        recs.push(StudentRec {
            id: i,
            gave_up: true,
            ..StudentRec::default()
        });
    }
    let mut trecs: Vec<TeacherRec> = Vec::new();
    for (j, h) in teachers.into_iter().enumerate() {
        if h.is_finished() {
            if let Ok(r) = h.await {
                trecs.push(r);
                continue;
            }
        } else {
            h.abort();
        }
        trecs.push(TeacherRec {
            class: j,
            ..TeacherRec::default()
        });
    }
    // Let in-flight requests at the origin finish so its counts are final.
    let settle = Instant::now() + Duration::from_secs(15);
    let mut stats_end = origin_stats(&mut ob).await.unwrap_or_default();
    while stats_end["inflight"].as_u64().unwrap_or(0) > 0 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats_end = origin_stats(&mut ob).await.unwrap_or_default();
    }

    let rows = rows(&samples, &live, capacity);
    let summary = summarize(
        &o,
        &recs,
        &trecs,
        &rows,
        &stats_start,
        &stats_end,
        capacity,
        hard_limit,
        best,
        elapsed,
    );
    let csv: String = std::iter::once(CSV_HEADER.to_string())
        .chain(rows.iter().map(Row::csv))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let base = o.out.join(&o.arm);
    let w = |ext: &str, text: &str| {
        let p = base.with_extension(ext);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    w("csv", &csv)?;
    w(
        "json",
        &serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )?;
    let people = json!({ "students": recs, "teachers": trecs });
    w("people.json", &people.to_string())?;
    super::plot::draw(&base.with_extension("svg"), &[(o.arm.clone(), rows)])?;
    Ok(summary)
}

/// Per-second rows from the samples.
fn rows(samples: &[Sample], live: &Live, capacity: u64) -> Vec<Row> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let secs = last.t.floor() as usize;
    let mut out = Vec::with_capacity(secs + 1);
    let mut served_total = 0u64;
    // Index of the first sample at or after `t`.
    let at = |t: f64| samples.partition_point(|s| s.t < t).min(samples.len() - 1);
    for s in 0..=secs {
        let (a, b) = (at(s as f64), at(s as f64 + 1.0));
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|x| x.t >= s as f64 && x.t < s as f64 + 1.0)
            .collect();
        let (sa, sb) = (&samples[a], &samples[b]);
        let dt = (sb.t - sa.t).max(1e-3);
        let c =
            |v: &[std::sync::atomic::AtomicU64]| v.get(s).map_or(0, |x| x.load(Ordering::Relaxed));
        let served = c(&live.served_at);
        served_total += served;
        let lastin = inside.last().copied().copied().unwrap_or(*sa);
        out.push(Row {
            t: s as u64,
            arrived: lastin.arrived,
            waiting: lastin.held,
            waiting_min: inside.iter().map(|x| x.held).min().unwrap_or(lastin.held),
            active: lastin.active,
            served,
            served_total,
            errors: c(&live.errors_at),
            feature_off: c(&live.feature_off_at),
            queue_answers: c(&live.queue_at),
            origin_inflight_mean: if b > a { (sb.busy - sa.busy) / dt } else { 0.0 },
            origin_inflight_max: inside.iter().map(|x| x.inflight).fold(0.0, f64::max),
            origin_capacity: capacity,
            origin_ok_per_s: if b > a { (sb.ok - sa.ok) / dt } else { 0.0 },
            level: inside.iter().filter_map(|x| x.level).fold(0.0, f64::max),
            room_waiting: inside
                .iter()
                .filter_map(|x| x.room_waiting)
                .fold(0.0, f64::max),
            room_active: inside
                .iter()
                .filter_map(|x| x.room_active)
                .fold(0.0, f64::max),
            room_admitted_per_s: match (sa.room_admitted, sb.room_admitted) {
                (Some(x), Some(y)) if b > a => (y - x) / dt,
                _ => 0.0,
            },
        });
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    Some(v[i.min(v.len() - 1)])
}

/// Students overtaken: A was still being kept out when some B who came after A had
/// already *received* its first page. With a waiting room that numbered everyone, "after"
/// is a higher ticket number and "kept out" is A's last queue answer (*sent* after B got
/// in: polling delays cannot fake one, B was in before A was told to wait); without one,
/// "after" is a later arrival and "kept out" is A's last refusal (an error) on its way in.
pub fn fifo_inversions(recs: &[StudentRec]) -> (u64, &'static str) {
    let admitted: Vec<&StudentRec> = recs.iter().filter(|r| r.admitted.is_some()).collect();
    let by_ticket = !admitted.is_empty() && admitted.iter().all(|r| r.ticket.is_some());
    let key = |r: &StudentRec| {
        if by_ticket {
            r.ticket.unwrap_or(0) as f64
        } else {
            r.arrival
        }
    };
    let mut v: Vec<(f64, f64, Option<f64>)> = admitted
        .iter()
        .map(|r| {
            let held = if by_ticket {
                r.last_waiting
            } else {
                r.last_refused
            };
            (key(r), r.admitted.unwrap_or(0.0), held)
        })
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut overtaken = 0u64;
    let mut min_after = f64::INFINITY;
    let mut i = 0;
    while i < v.len() {
        // Equal keys are not ordered among themselves.
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        for x in &v[i..j] {
            if x.2.is_some_and(|held| min_after < held) {
                overtaken += 1;
            }
        }
        for x in &v[i..j] {
            min_after = min_after.min(x.1);
        }
        i = j;
    }
    (overtaken, if by_ticket { "ticket" } else { "arrival" })
}

/// How far the queue's first estimate of the wait was from the wait each admitted
/// student had: absolute error (seconds) p50/p90, and relative error p50/p90 over the
/// waits of at least `MIN_WAIT` seconds (shorter ones are within a poll interval, where
/// any relative figure is noise).
pub fn estimate_errors(recs: &[StudentRec]) -> Value {
    const MIN_WAIT: f64 = 30.0;
    let pairs: Vec<(f64, f64)> = recs
        .iter()
        .filter_map(|r| {
            let (sent, predicted) = r.first_eta?;
            Some((predicted, (r.admitted? - sent).max(0.0)))
        })
        .collect();
    let mut abs: Vec<f64> = pairs.iter().map(|(p, a)| (p - a).abs()).collect();
    let mut rel: Vec<f64> = pairs
        .iter()
        .filter(|(_, a)| *a >= MIN_WAIT)
        .map(|(p, a)| (p - a).abs() / a)
        .collect();
    let mut under: Vec<f64> = pairs
        .iter()
        .filter(|(_, a)| *a >= MIN_WAIT)
        .map(|(p, a)| (a - p) / a)
        .collect();
    // Those told a range (rather than one figure): how many, and how many had a wait
    // inside it (the ends are whole seconds, rounded outwards by the status).
    let ranged: Vec<bool> = recs
        .iter()
        .filter_map(|r| {
            let (sent, _) = r.first_eta?;
            let (low, high) = r.first_range.filter(|(l, h)| l < h)?;
            let had = (r.admitted? - sent).max(0.0);
            Some(low <= had && had <= high + 1.0)
        })
        .collect();
    let held = ranged.iter().filter(|h| **h).count();
    json!({
        "students": pairs.len(),
        "ranges": ranged.len(),
        "ranges_held": held,
        "abs_p50_s": percentile(&mut abs, 50.0),
        "abs_p90_s": percentile(&mut abs, 90.0),
        "long_waits": rel.len(),
        "rel_p50": percentile(&mut rel, 50.0),
        "rel_p90": percentile(&mut rel, 90.0),
        // Positive: the wait was longer than told (the worse way to be wrong).
        "signed_p50": percentile(&mut under, 50.0),
    })
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    o: &RunOpts,
    recs: &[StudentRec],
    trecs: &[TeacherRec],
    rows: &[Row],
    stats_start: &Value,
    stats_end: &Value,
    capacity: u64,
    hard_limit: u64,
    best: f64,
    elapsed: f64,
) -> Value {
    let served = recs.iter().filter(|r| r.served.is_some()).count();
    let errors: u64 = recs.iter().map(|r| u64::from(r.errors)).sum();
    let with_errors = recs.iter().filter(|r| r.errors > 0).count();
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for r in recs {
        for k in &r.error_kinds {
            *kinds.entry(k.clone()).or_default() += 1;
        }
    }
    let mut adm: Vec<f64> = recs
        .iter()
        .filter_map(|r| Some(r.admitted? - r.arrival))
        .collect();
    let p50 = percentile(&mut adm, 50.0);
    let p95 = percentile(&mut adm, 95.0);
    let estimate = estimate_errors(recs);
    let (inversions, order) = fifo_inversions(recs);
    // Uploads: what the origin holds, by checksum.
    let count = |stats: &Value, sha: &str| {
        stats["uploads"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["sha256_hex"].as_str() == Some(sha))
            .and_then(|u| u["count"].as_u64())
            .unwrap_or(0)
    };
    let at_origin = |sha: &str| count(stats_end, sha).saturating_sub(count(stats_start, sha));
    let lost = trecs.iter().filter(|t| at_origin(&t.sha256) == 0).count();
    let duplicated: u64 = trecs
        .iter()
        .map(|t| at_origin(&t.sha256).saturating_sub(1))
        .sum();
    let accepted = trecs.iter().filter(|t| t.accepted).count();
    // Full-body fetches per version of the files students download.
    let mut ids = vec![o.plan.day_file];
    ids.extend(trecs.iter().map(|t| o.plan.exam_first + t.class));
    let versions: Vec<Value> = stats_end["file_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| {
            v["id"]
                .as_u64()
                .is_some_and(|id| ids.contains(&(id as usize)))
        })
        .cloned()
        .collect();
    let before = |id: u64, ver: u64| {
        stats_start["file_versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["id"].as_u64() == Some(id) && v["version"].as_u64() == Some(ver))
            .and_then(|v| v["fetches"].as_u64())
            .unwrap_or(0)
    };
    let per_version: Vec<u64> = versions
        .iter()
        .map(|v| {
            let (id, ver) = (
                v["id"].as_u64().unwrap_or(0),
                v["version"].as_u64().unwrap_or(0),
            );
            v["fetches"].as_u64().unwrap_or(0) - before(id, ver)
        })
        .filter(|&n| n > 0)
        .collect();
    // Admission efficiency: origin goodput over its best, during the seconds when
    // somebody was kept out the whole second.
    let held: Vec<&Row> = rows.iter().filter(|r| r.waiting_min > 0).collect();
    let efficiency = if held.is_empty() || best <= 0.0 {
        None
    } else {
        Some(held.iter().map(|r| r.origin_ok_per_s).sum::<f64>() / (best * held.len() as f64))
    };
    let visio_off = recs
        .iter()
        .filter(|r| r.visio == Some("feature_off"))
        .count();
    let visio_ok = recs.iter().filter(|r| r.visio == Some("joined")).count();
    let d = |a: &Value, b: &Value, k: &str| b[k].as_u64().unwrap_or(0) - a[k].as_u64().unwrap_or(0);
    json!({
        "arm": o.arm,
        "students": recs.len(),
        "served": served,
        "served_share": served as f64 / recs.len().max(1) as f64,
        "not_served": recs.len() - served,
        "gave_up": recs.iter().filter(|r| r.gave_up).count(),
        "student_errors": errors,
        "students_with_errors": with_errors,
        "error_kinds": kinds,
        "wrong_files": recs.iter().map(|r| u64::from(r.wrong_file)).sum::<u64>(),
        "queued": recs.iter().filter(|r| r.queued).count(),
        "visio_joined": visio_ok,
        "visio_switched_off": visio_off,
        "teachers": trecs.len(),
        "uploads_accepted": accepted,
        "uploads_lost": lost,
        "uploads_duplicated": duplicated,
        "teacher_errors": trecs.iter().map(|t| u64::from(t.errors)).sum::<u64>(),
        "origin_capacity": capacity,
        "origin_hard_limit": hard_limit,
        "origin_peak_inflight": stats_end["peak_inflight"].as_u64(),
        "origin_requests": d(stats_start, stats_end, "requests_total"),
        "origin_5xx": stats_end["responses"]["5xx"].as_u64().unwrap_or(0) - stats_start["responses"]["5xx"].as_u64().unwrap_or(0),
        "origin_dropped": d(stats_start, stats_end, "dropped"),
        "origin_best_rps": best,
        "file_fetches_per_version": per_version,
        "file_fetches_per_version_max": per_version.iter().max(),
        "file_versions": versions,
        "admission_p50_s": p50,
        "admission_p95_s": p95,
        "admission_max_s": adm.last(),
        "estimate": estimate,
        "fifo_inversions": inversions,
        "fifo_order": order,
        "admission_efficiency": efficiency,
        "held_seconds": held.len(),
        "duration_s": elapsed,
        "plan": {
            "ramp_s": o.plan.ramp.as_secs_f64(),
            "think_ms": [o.plan.think.0.as_millis() as u64, o.plan.think.1.as_millis() as u64],
            "pages": o.plan.pages,
            "visio_share": o.plan.visio_share,
            "patience_s": o.plan.patience.as_secs_f64(),
            "timeout_s": o.plan.timeout.as_secs_f64(),
            "day_file": o.plan.day_file,
            "paper_len": o.plan.paper_len,
            "seed": o.plan.seed,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ticket: u64, admitted: f64, last_waiting: Option<f64>) -> StudentRec {
        StudentRec {
            ticket: Some(ticket),
            admitted: Some(admitted),
            last_waiting,
            queued: last_waiting.is_some(),
            ..StudentRec::default()
        }
    }

    #[test]
    fn estimate_errors_compare_the_first_estimate_with_the_wait_had() {
        let told = |sent: f64, eta: f64, admitted: f64| StudentRec {
            first_eta: Some((sent, eta)),
            admitted: Some(admitted),
            ..StudentRec::default()
        };
        let recs = vec![
            told(0.0, 60.0, 60.0),   // exact
            told(10.0, 40.0, 110.0), // told 40 s, waited 100 s: 60% off, too optimistic
            told(0.0, 5.0, 8.0),     // a short wait: absolute only
            StudentRec::default(),   // never told
            StudentRec {
                first_range: Some((20.0, 50.0)),
                ..told(0.0, 30.0, 45.0) // told "between 20 and 50 s", waited 45 s
            },
            StudentRec {
                first_range: Some((20.0, 50.0)),
                ..told(0.0, 30.0, 80.0) // waited 80 s: outside
            },
        ];
        let e = estimate_errors(&recs);
        assert_eq!(e["students"], 5);
        assert_eq!(e["ranges"], 2);
        assert_eq!(e["ranges_held"], 1);
        assert_eq!(e["long_waits"], 4);
        assert_eq!(e["rel_p90"].as_f64(), Some(0.625));
        assert_eq!(e["abs_p50_s"].as_f64(), Some(15.0));
        assert!(
            e["signed_p50"].as_f64().unwrap() > 0.0,
            "waited longer than told"
        );
        let t = super::super::report::table(&[json!({"arm": "x", "estimate": e})]);
        assert!(t.contains("% (of 4"), "{t}");
        assert!(t.contains("range told 2, held 1"), "{t}");
    }

    #[test]
    fn fifo_inversion_needs_a_later_ticket_in_before_an_earlier_one_is_told_to_wait() {
        // 2 was told "waiting" at 5.0 (sent), after 3 had its page at 4.0: overtaken.
        let v = vec![
            rec(1, 1.0, None),
            rec(2, 6.0, Some(5.0)),
            rec(3, 4.0, Some(3.0)),
        ];
        assert_eq!(fifo_inversions(&v), (1, "ticket"));
        // 3 got in first, but 2's last "waiting" was sent before that: polling delay only.
        let v = vec![rec(2, 6.0, Some(3.5)), rec(3, 4.0, Some(3.0))];
        assert_eq!(fifo_inversions(&v).0, 0);
    }

    #[test]
    fn rows_round_trip_through_csv() {
        let r = Row {
            t: 3,
            arrived: 10,
            waiting: 4,
            waiting_min: 2,
            active: 5,
            served: 1,
            served_total: 2,
            errors: 0,
            feature_off: 1,
            queue_answers: 7,
            origin_inflight_mean: 12.5,
            origin_inflight_max: 20.0,
            origin_capacity: 32,
            origin_ok_per_s: 100.0,
            level: 1.0,
            room_waiting: 4.0,
            room_active: 5.0,
            room_admitted_per_s: 2.0,
        };
        let back = Row::parse(&r.csv()).expect("parses");
        assert_eq!(back.csv(), r.csv());
        assert_eq!(CSV_HEADER.split(',').count(), r.csv().split(',').count());
    }

    #[test]
    fn reads_prometheus_values() {
        let text = "# HELP x\necluse_degradation_level_info{level=\"busy\"} 1\necluse_degradation_level 2\necluse_room_waiting{room=\"ent\"} 17\n";
        assert_eq!(metric(text, "ecluse_degradation_level"), Some(2.0));
        assert_eq!(
            metric(text, "ecluse_room_waiting{room=\"ent\"}"),
            Some(17.0)
        );
        assert_eq!(metric(text, "ecluse_room_active_users"), None);
    }
}
