//! The surge replay at quick scale (issue #9): the ecluse arm of `bench/surge.sh`, with
//! the real binaries: the simulated ENT (`ecluse-surge origin`, port 0), ecluse on the
//! committed bench policy (`bench/surge-ecluse.yaml`, port 0), and the load tool
//! (`ecluse-surge run`): students arriving open-loop on a ramp, queueing, logging in,
//! downloading the day's file and their teacher's exam paper, opening pages, some trying
//! the visio; teachers uploading their papers early on. Every number asserted below is
//! measured by the load tool at the real clients and the real origin.
//!
//! Targets (issue #9): 100% of students eventually served; 0 student-visible errors
//! besides queue pages and switched-off features; 0 uploads lost or duplicated; origin
//! never above its capacity; 0 FIFO inversions (one node); admission efficiency >= 90%;
//! 1 origin fetch per assignment-file version.
//!
//! The whole run takes about a minute; the tool's own deadline bounds it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::Ecluse;

fn surge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ecluse-surge")
}

/// The simulated ENT in its own process, killed on drop.
struct Origin {
    child: Child,
    addr: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Quick scale: a small ENT (capacity 100 in flight, throughput saturating at 250 req/s)
/// so that the debug build of ecluse that `cargo test` runs is never the bottleneck.
const CAPACITY: &str = "100";
const PER_US: &str = "4000";
const STUDENTS: &str = "600";
const RAMP: &str = "10s";
const TEACHERS: &str = "4";
const POLL: &str = "2s";

fn start_origin() -> Origin {
    start_origin_with(&[])
}

/// One replay at a time: each needs the machine's cores to itself (cargo runs the tests
/// of a file in parallel).
static ONE_REPLAY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The simulated ENT, with `extra` arguments (a capacity-loss schedule).
fn start_origin_with(extra: &[&str]) -> Origin {
    let child = Command::new(surge_bin())
        .args(["origin", "--port", "0", "--capacity", CAPACITY])
        .args(extra)
        .args([
            "--latency-per-inflight-us",
            PER_US,
            "--exam-slots",
            TEACHERS,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ecluse-surge origin");
    // Owned (killed and waited for on drop) before anything can fail.
    let mut origin = Origin {
        child,
        addr: String::new(),
    };
    let out = origin.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + common::DEADLINE;
    while origin.addr.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("origin prints its address");
        if let Some(a) = line.strip_prefix("listening origin http://") {
            origin.addr = a.trim_end_matches('/').to_string();
        }
    }
    origin
}

fn output(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run ecluse-surge");
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{text}"))
        .trim()
        .to_string()
}

#[test]
fn surge_through_ecluse_meets_the_targets() {
    let _one = ONE_REPLAY.lock().unwrap_or_else(|p| p.into_inner());
    let origin = start_origin();

    // Ops size the room from a load test of their ENT (see bench/surge.sh).
    let cal = output(Command::new(surge_bin()).args([
        "calibrate",
        "--origin",
        &origin.addr,
        "--poll",
        POLL,
        "--teachers",
        TEACHERS,
    ]));
    let best = field(&cal, "best_rps");
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/surge-ecluse.yaml"),
    )
    .expect("bench/surge-ecluse.yaml");
    let yaml = template
        .replace("@ORIGIN@", &origin.addr)
        .replace("@CAPACITY@", CAPACITY)
        .replace("@PACE@", &field(&cal, "new_users_per_minute"))
        .replace("@ACTIVE@", &field(&cal, "active_users"))
        .replace("@POLL@", POLL)
        // Two worker threads: `cargo test` runs a debug build of the proxy.
        .replace("threads: 1 ", "threads: 2 ");
    let key = format!("k1:{}", "5eb0".repeat(16));
    let ecluse = Ecluse::start_with(&yaml, &[("ticket.key", key.as_bytes())], |_| {});

    // Kept after the test (CSV per second, summary, each person, plot) for a look.
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("surge");
    let _ = std::fs::remove_dir_all(&out);
    let started = Instant::now();
    let summary = output(
        Command::new(surge_bin())
            .args(["run", "--arm", "ecluse"])
            .args(["--target", &ecluse.proxy.to_string()])
            .args(["--origin", &origin.addr])
            .args(["--admin", &ecluse.admin.to_string()])
            .args([
                "--students",
                STUDENTS,
                "--ramp",
                RAMP,
                "--teachers",
                TEACHERS,
            ])
            .args(["--best-rps", &best, "--max-duration", "90s"])
            .arg("--out")
            .arg(&out),
    );
    let s: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary JSON");
    let took = started.elapsed();
    eprintln!("surge replay (quick scale) in {took:?}:\n{s:#}");

    let n = s["students"].as_u64().expect("students");
    let mut failed = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failed.push(what);
        }
    };
    check(
        s["served"].as_u64() == Some(n),
        format!("100% of students served: {} of {n}", s["served"]),
    );
    check(
        s["student_errors"].as_u64() == Some(0),
        format!(
            "0 student-visible errors: {} ({} students; kinds {})",
            s["student_errors"], s["students_with_errors"], s["error_kinds"]
        ),
    );
    check(
        s["uploads_lost"].as_u64() == Some(0) && s["uploads_duplicated"].as_u64() == Some(0),
        format!(
            "0 uploads lost / duplicated: {} / {} of {} (accepted {})",
            s["uploads_lost"], s["uploads_duplicated"], s["teachers"], s["uploads_accepted"]
        ),
    );
    check(
        s["origin_peak_inflight"].as_u64() <= s["origin_capacity"].as_u64(),
        format!(
            "origin never above its capacity: peak {} vs {}",
            s["origin_peak_inflight"], s["origin_capacity"]
        ),
    );
    check(
        s["fifo_inversions"].as_u64() == Some(0),
        format!("0 FIFO inversions: {}", s["fifo_inversions"]),
    );
    check(
        s["admission_efficiency"]
            .as_f64()
            .is_some_and(|e| e >= 0.90),
        format!(
            "admission efficiency >= 90%: {} over {} s with students waiting",
            s["admission_efficiency"], s["held_seconds"]
        ),
    );
    let fetches: Vec<u64> = s["file_fetches_per_version"]
        .as_array()
        .expect("fetches per version")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    check(
        !fetches.is_empty() && fetches.iter().all(|&f| f == 1),
        format!("1 origin fetch per assignment-file version: {fetches:?}"),
    );
    // The scenario really happened: a queue formed, papers were uploaded and read.
    check(
        s["queued"].as_u64().is_some_and(|q| q > 0),
        format!("students queued: {}", s["queued"]),
    );
    check(
        s["uploads_accepted"] == s["teachers"],
        format!("every paper accepted: {}", s["uploads_accepted"]),
    );
    assert!(
        failed.is_empty(),
        "surge targets not met (details above, CSV and people in {}):\n  {}",
        out.display(),
        failed.join("\n  ")
    );
    // The replay ended on its own, everyone done, before `--max-duration` (90 s) would
    // have cut it: a property of the run. The wall time around it (calibration, start-up)
    // is not asserted: on a loaded machine it measures the machine, not ecluse.
    let ran = s["duration_s"].as_f64().unwrap_or(f64::INFINITY);
    assert!(
        ran < 90.0,
        "the replay was cut by --max-duration: {ran} s (whole test {took:?})"
    );
    drop(ecluse);
}

/// Replays the quick surge through ecluse with `active_users: auto` and
/// `new_users_per_minute: auto` (no calibration, no numbers), against an origin started
/// with `origin_args`; returns the summary and what `/admin/state` said of the room after.
fn replay_auto(origin_args: &[&str], out_name: &str) -> (serde_json::Value, serde_json::Value) {
    replay_room(origin_args, out_name, false)
}

/// The same replay through a room sized by calibration (`calibrated`: ops load-tested
/// their ENT at full capacity first, as `bench/surge.sh` does) or `auto`.
fn replay_room(
    origin_args: &[&str],
    out_name: &str,
    calibrated: bool,
) -> (serde_json::Value, serde_json::Value) {
    let _one = ONE_REPLAY.lock().unwrap_or_else(|p| p.into_inner());
    let origin = start_origin_with(origin_args);
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/surge-ecluse.yaml"),
    )
    .expect("bench/surge-ecluse.yaml");
    let (active, pace, best) = if calibrated {
        let cal = output(Command::new(surge_bin()).args([
            "calibrate",
            "--origin",
            &origin.addr,
            "--poll",
            POLL,
            "--teachers",
            TEACHERS,
        ]));
        (
            field(&cal, "active_users"),
            field(&cal, "new_users_per_minute"),
            Some(field(&cal, "best_rps")),
        )
    } else {
        ("auto".to_string(), "auto".to_string(), None)
    };
    let yaml = template
        .replace("@ORIGIN@", &origin.addr)
        .replace("@CAPACITY@", CAPACITY)
        .replace("@PACE@", &pace)
        .replace("@ACTIVE@", &active)
        .replace("@POLL@", POLL)
        .replace("threads: 1 ", "threads: 2 ");
    let key = format!("k1:{}", "5eb0".repeat(16));
    let ecluse = Ecluse::start_with(&yaml, &[("ticket.key", key.as_bytes())], |_| {});
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(out_name);
    let _ = std::fs::remove_dir_all(&out);
    let mut run = Command::new(surge_bin());
    run.args([
        "run",
        "--arm",
        if calibrated { "ecluse" } else { "ecluse-auto" },
    ])
    .args(["--target", &ecluse.proxy.to_string()])
    .args(["--origin", &origin.addr])
    .args(["--admin", &ecluse.admin.to_string()])
    .args([
        "--students",
        STUDENTS,
        "--ramp",
        RAMP,
        "--teachers",
        TEACHERS,
    ])
    .args(["--max-duration", "120s"])
    .arg("--out")
    .arg(&out);
    if let Some(b) = &best {
        run.args(["--best-rps", b]);
    }
    let summary = output(&mut run);
    let mut s: serde_json::Value = serde_json::from_str(summary.trim()).expect("summary JSON");
    // The most sessions the room held at once (the per-second CSV's `room_active`).
    let arm = if calibrated { "ecluse" } else { "ecluse-auto" };
    let csv = std::fs::read_to_string(out.join(format!("{arm}.csv"))).unwrap_or_default();
    let mut lines = csv.lines();
    let col = lines
        .next()
        .and_then(|h| h.split(',').position(|c| c == "room_active"));
    let peak = lines
        .filter_map(|l| l.split(',').nth(col?)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    s["room_active_peak"] = serde_json::json!(peak);
    let state: serde_json::Value = common::raw_get(ecluse.admin, "/admin/state")
        .ok()
        .and_then(|(_, body)| serde_json::from_str(body.split("\r\n\r\n").last()?).ok())
        .unwrap_or_default();
    eprintln!("surge replay, calibrated {calibrated} ({out_name}):\n{s:#}");
    // The room's moves and their causes, for a look when a floor is missed.
    let moves: Vec<String> = ecluse
        .stderr_text()
        .lines()
        .filter(|l| l.contains("auto capacity"))
        .map(str::to_string)
        .collect();
    eprintln!("auto room moves ({}):\n{}", moves.len(), moves.join("\n"));
    (s, state["rooms"][0].clone())
}

/// Properties every replay through an `auto` room keeps, whatever the machine's speed:
/// everyone served, no error for the students, the ENT never above its capacity.
fn assert_served_without_errors(s: &serde_json::Value, room: &serde_json::Value, share: f64) {
    assert!(
        s["served_share"].as_f64().is_some_and(|x| x >= share),
        "at least {share} of the students served: {s:#}"
    );
    assert_eq!(
        s["student_errors"].as_u64(),
        Some(0),
        "0 student-visible errors: kinds {}",
        s["error_kinds"]
    );
    assert!(
        s["origin_peak_inflight"].as_u64() <= s["origin_capacity"].as_u64(),
        "origin never above its capacity: {s:#}"
    );
    assert!(
        s["queued"].as_u64().is_some_and(|q| q > 0),
        "a queue formed: {s:#}"
    );
    assert!(
        room["auto"]["capacity"].as_u64().is_some_and(|c| c > 10),
        "the room grew from its lower bound by itself: {room:#}"
    );
}

#[test]
fn surge_through_an_auto_room_needs_no_calibration() {
    let (s, room) = replay_auto(&[], "surge-auto");
    assert_served_without_errors(&s, &room, 1.0);
    // Sized like the calibrated room, without a number: that room holds about 240
    // students at this scale. The first law, which cut on raw latency (a CPU-starved
    // debug proxy's), never passed 33 on a loaded machine.
    assert!(
        s["room_active_peak"].as_f64().is_some_and(|p| p >= 100.0),
        "the room grew to at least 100 sessions at once by itself: {}",
        s["room_active_peak"]
    );
    // A floor, not the figure: on a quiet machine the calibrated room reaches 90%
    // (above). On the loaded 2-core machine (load 15-30: eight builds) the machine, not
    // the room, bounds it: the calibrated room measured 0.18 in the same conditions as
    // auto runs of 0.10-0.20 (docs/benchmarks.md). It must at least use the ENT.
    assert!(
        s["admission_efficiency"].as_f64().is_some_and(|e| e >= 0.1),
        "admission efficiency >= 10% without any number: {} over {} s",
        s["admission_efficiency"],
        s["held_seconds"]
    );
}

#[test]
fn an_auto_room_follows_the_ent_losing_half_its_servers() {
    // Half the servers die 8 s into the surge and come back at 30 s.
    let (s, room) = replay_auto(
        &["--lose-half-at", "8s", "--recover-at", "30s"],
        "surge-auto-half",
    );
    // Those inside get no error while half the ENT is gone; most are served within the
    // replay's deadline (admissions slow down while it is half).
    assert_served_without_errors(&s, &room, 0.8);
    assert!(
        s["room_active_peak"].as_f64().is_some_and(|p| p >= 100.0),
        "the room grew to at least 100 sessions at once by itself: {}",
        s["room_active_peak"]
    );
    let changes = room["auto"]["last_change"]["reason"].as_str().unwrap_or("");
    assert!(
        !changes.is_empty(),
        "the room says why it moved last: {room:#}"
    );
}

/// The calibrated (fixed) room when half the ENT dies: what the `auto` room is compared
/// with (issue #23). Ignored in `make test`: on a loaded 2-core machine the calibrated
/// room overloads the debug proxy even in the standard scenario, so the comparison is
/// not a property of the rooms there. Run it with `cargo test --test surge
/// a_fixed_room -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: depends on the machine's spare CPU"]
fn a_fixed_room_overloads_the_ent_losing_half_its_servers() {
    let (s, _) = replay_room(
        &["--lose-half-at", "8s", "--recover-at", "30s"],
        "surge-fixed-half",
        true,
    );
    assert!(
        s["student_errors"].as_u64().is_some_and(|e| e > 0),
        "the room sized for the whole ENT overloads its half: {s:#}"
    );
}
