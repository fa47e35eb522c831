//! `ecluse-surge`: replays Monday 16 March 2020, 08:00, against the simulated ENT, with
//! or without a proxy in front, and shows what students, teachers and the ENT saw.
//!
//! - `ecluse-surge origin`: the simulated ENT (with exam slots teachers upload into),
//!   in its own process so the load generator does not steal its time.
//! - `ecluse-surge calibrate`: the origin's best goodput at its capacity, and the
//!   waiting-room pace it allows for this scenario.
//! - `ecluse-surge run`: one arm (students and teachers against `--target`), writing
//!   `ARM.csv` (per second), `ARM.json` (summary), `ARM.people.json`, `ARM.svg`.
//! - `ecluse-surge report`: the table comparing arms, and one picture of all of them.
//!
//! See `bench/surge.sh` (three arms: direct, nginx, ecluse) and `tests/surge.rs`.

use ecluse::surge::{client, plot, report, row, run, scenario};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ecluse-surge", about = "Replay an ENT's Monday-morning surge")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The simulated ENT's shape (shared by `origin` and the docs of the others).
#[derive(clap::Args, Clone, Debug)]
struct OriginArgs {
    /// Concurrent requests the ENT handles well (its declared capacity).
    #[arg(long, default_value_t = 200)]
    capacity: usize,
    /// Past this many in flight it answers 503 or hangs (default 2 × capacity).
    #[arg(long)]
    hard_limit: Option<usize>,
    /// Service time of a request at rest, in ms (default: per_inflight × capacity / 2,
    /// a server whose throughput saturates at 1 / per_inflight from half its capacity
    /// on: past that, more requests at once only wait longer).
    #[arg(long)]
    base_latency_ms: Option<u64>,
    /// Service time added per request in flight above capacity/2, in microseconds.
    #[arg(long, default_value_t = 2000)]
    latency_per_inflight_us: u64,
    /// Exam slots teachers upload into.
    #[arg(long, default_value_t = 16)]
    exam_slots: usize,
    /// CPU burnt per visio request, in ms.
    #[arg(long, default_value_t = 20)]
    visio_cpu_ms: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the simulated ENT: prints `listening origin http://ADDR/`, serves until Ctrl-C.
    Origin {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[command(flatten)]
        shape: OriginArgs,
        /// Half of the ENT's servers die this long after the replay starts (its `POST
        /// /__origin/reset_peak`): the capacity-loss scenario; also `POST
        /// /__origin/capacity` with `50`.
        #[arg(long, value_parser = humantime::parse_duration)]
        lose_half_at: Option<Duration>,
        /// They come back this long after the replay starts.
        #[arg(long, value_parser = humantime::parse_duration)]
        recover_at: Option<Duration>,
    },
    /// Measure the origin's best goodput (`capacity` closed-loop clients) and size a
    /// waiting room for it the way ops would from a load test and their analytics:
    /// prints `best_rps`, `service_ms`, `active_users` and `new_users_per_minute`.
    Calibrate {
        /// The origin, `127.0.0.1:PORT`.
        #[arg(long)]
        origin: SocketAddr,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Pages each student opens (a visit is 7 + pages requests, visio switched off
        /// during the surge).
        #[arg(long, default_value_t = 3)]
        pages: usize,
        /// Students' think time between clicks (the mean is what matters).
        #[arg(long, default_value_t = 300)]
        think_min_ms: u64,
        #[arg(long, default_value_t = 900)]
        think_max_ms: u64,
        /// The queue page's poll interval: an admission waits about half of it to be
        /// claimed, and counts against `active_users` meanwhile.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        poll: Duration,
        /// Teachers (never queued, but counted as active).
        #[arg(long, default_value_t = 4)]
        teachers: usize,
        /// Share of the best goodput the room aims at.
        #[arg(long, default_value_t = 0.95)]
        target: f64,
        /// How much of the admissions waiting to be claimed to add to active_users (1:
        /// all, the best steady state, since admitted students wait a moment for an
        /// origin slot (`queue_timeout`) instead of meeting a 503; 0: none, so a full room
        /// of clicking students never asks more than `target` of the ENT's best).
        #[arg(long, default_value_t = 1.0)]
        pending_share: f64,
    },
    /// Replay one arm.
    Run(Box<RunArgs>),
    /// Print the table comparing arms (their `ARM.json` in DIR) and draw them together.
    Report {
        /// Directory holding ARM.json and ARM.csv.
        #[arg(long)]
        dir: PathBuf,
        /// Arms, in column order.
        #[arg(long, value_delimiter = ',', default_value = "direct,nginx,ecluse")]
        arms: Vec<String>,
        /// Where to draw all arms side by side.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Name of the arm (file names, table column).
    #[arg(long)]
    arm: String,
    /// Where students connect: the origin, nginx or ecluse (`127.0.0.1:PORT`).
    #[arg(long)]
    target: SocketAddr,
    /// The simulated ENT itself, for its statistics and the calibration.
    #[arg(long)]
    origin: SocketAddr,
    /// ecluse's admin listener, for the degradation level.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    students: usize,
    /// Arrivals spread over this, the rate growing linearly (08:00 sharpens).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    #[arg(long, default_value_t = 4)]
    teachers: usize,
    #[arg(long, default_value_t = 300)]
    think_min_ms: u64,
    #[arg(long, default_value_t = 900)]
    think_max_ms: u64,
    #[arg(long, default_value_t = 3)]
    pages: usize,
    #[arg(long, default_value_t = 0.3)]
    visio_share: f64,
    /// A student gives up after this long without being served.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    patience: Duration,
    /// The browser's time-out for one answer.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Stop after this, counting whoever is not served yet as not served.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    max_duration: Duration,
    /// Measure the origin's best goodput first, for this long (the denominator of the
    /// admission efficiency).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    calibrate: Duration,
    /// The origin's best goodput, already measured (`ecluse-surge calibrate`): skips
    /// the calibration.
    #[arg(long)]
    best_rps: Option<f64>,
    /// The day's assignment file (default: the smallest of the ENT's files).
    #[arg(long)]
    day_file: Option<usize>,
    /// Size of a teacher's exam paper, in bytes.
    #[arg(long, default_value_t = 150_000)]
    paper_len: usize,
    #[arg(long, default_value_t = 2020_03_16)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Seconds the queue page shows "c'est votre tour" before it reloads into the ENT
/// (`src/pages/queue.html.j2`): an admission holds a place without load meanwhile.
const QUEUE_PAGE_REVEAL: f64 = 0.8;

/// Requests one student makes to the ENT when visio is switched off: `/`, login form,
/// login, `/` again, two files, the pages, logout.
fn requests_per_student(pages: usize) -> usize {
    7 + pages
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Origin {
            port,
            shape,
            lose_half_at,
            recover_at,
        } => origin(port, shape, lose_half_at, recover_at),
        Cmd::Calibrate {
            origin,
            duration,
            pages,
            think_min_ms,
            think_max_ms,
            poll,
            teachers,
            target,
            pending_share,
        } => runtime(2).and_then(|rt| {
            rt.block_on(async {
                let mut b = client::Browser::new(
                    origin,
                    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                    Duration::from_secs(5),
                );
                let st = run::origin_stats(&mut b)
                    .await
                    .ok_or_else(|| format!("no stats from the origin at {origin}"))?;
                let cap = st["options"]["capacity"].as_u64().unwrap_or(1) as usize;
                let best = run::calibrate(origin, cap, duration).await;
                // Below half its capacity the ENT answers in `service` (its throughput
                // saturates from there on): a student clicking every `think` keeps
                // 1 / (think + service) requests per second going.
                let service = (cap as f64 / 2.0) / best.max(1.0);
                let think = (think_min_ms + think_max_ms.max(think_min_ms)) as f64 / 2000.0;
                let per_student_rps = 1.0 / (think + service);
                // Students clicking at once that make `target` of the best goodput...
                let clicking = target * best / per_student_rps;
                // ...a turnover of `target * best / requests per visit` students a second,
                // and admissions not yet used count against active_users too: the
                // holder's next poll (half an interval), the 250 ms admission tick, and
                // the queue page's 800 ms "c'est votre tour" before it reloads.
                let turnover = target * best / requests_per_student(pages) as f64;
                let pending = turnover * (poll.as_secs_f64() / 2.0 + 0.25 + QUEUE_PAGE_REVEAL);
                let active = clicking + pending_share * pending + teachers as f64;
                // The pace is that turnover: admissions flow steadily instead of in waves
                // whenever a cohort leaves; active_users is the ceiling.
                let per_min = turnover * 60.0;
                println!("best_rps {best:.0}");
                println!("service_ms {:.0}", service * 1000.0);
                println!("active_users {}", active.round() as u64);
                println!("new_users_per_minute {}", per_min.round() as u64);
                Ok(())
            })
        }),
        Cmd::Run(a) => run_arm(*a),
        Cmd::Report { dir, arms, svg } => report(dir, arms, svg),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecluse-surge: {e}");
            ExitCode::from(1)
        }
    }
}

fn origin(
    port: u16,
    s: OriginArgs,
    lose_half_at: Option<Duration>,
    recover_at: Option<Duration>,
) -> Result<(), String> {
    use ecluse::demo::{DemoOrigin, OriginOptions};
    let per = Duration::from_micros(s.latency_per_inflight_us);
    let opts = OriginOptions {
        capacity: s.capacity,
        hard_limit: s.hard_limit.unwrap_or(2 * s.capacity),
        base_latency: s
            .base_latency_ms
            .map(Duration::from_millis)
            .unwrap_or(per * (s.capacity as u32 / 2)),
        latency_per_inflight: per,
        visio_cpu: Duration::from_millis(s.visio_cpu_ms),
        ..OriginOptions::default()
    };
    let rt = runtime(2)?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let o = DemoOrigin::start_with_exam_slots(addr, opts, s.exam_slots)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("listening origin http://{}/", o.addr());
        let o = std::sync::Arc::new(o);
        if lose_half_at.is_some() || recover_at.is_some() {
            // The schedule starts with the surge (the replay resets the origin's peak
            // once its calibration is over), not with the process.
            let o = o.clone();
            tokio::spawn(async move {
                while o.peak_resets() == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let t0 = tokio::time::Instant::now();
                if let Some(at) = lose_half_at {
                    tokio::time::sleep_until(t0 + at).await;
                    o.set_capacity_percent(50);
                    println!("capacity 50% at {:.1}s", at.as_secs_f64());
                }
                if let Some(at) = recover_at {
                    tokio::time::sleep_until(t0 + at).await;
                    o.set_capacity_percent(100);
                    println!("capacity 100% at {:.1}s", at.as_secs_f64());
                }
            });
        }
        let _ = tokio::signal::ctrl_c().await;
        // The schedule's task may still hold it: then the process exit stops it.
        if let Ok(o) = std::sync::Arc::try_unwrap(o) {
            o.shutdown().await;
        }
        Ok(())
    })
}

fn run_arm(a: RunArgs) -> Result<(), String> {
    let rt = runtime(a.threads)?;
    rt.block_on(async move {
        let mut b = client::Browser::new(
            a.origin,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            Duration::from_secs(5),
        );
        let st = run::origin_stats(&mut b)
            .await
            .ok_or_else(|| format!("no stats from the origin at {}", a.origin))?;
        let files = st["options"]["files"].as_u64().unwrap_or(0) as usize;
        let slots = st["options"]["exam_slots"].as_u64().unwrap_or(0) as usize;
        if a.teachers > slots {
            return Err(format!(
                "{} teachers but the origin has {slots} exam slots (ecluse-surge origin --exam-slots)",
                a.teachers
            ));
        }
        let day_file = a
            .day_file
            .unwrap_or_else(|| (1..=files.max(1)).min_by_key(|&i| ecluse::demo::file_len(i)).unwrap_or(1));
        let plan = scenario::Plan {
            target: a.target,
            students: a.students,
            ramp: a.ramp,
            teachers: a.teachers,
            think: (
                Duration::from_millis(a.think_min_ms),
                Duration::from_millis(a.think_max_ms.max(a.think_min_ms)),
            ),
            pages: a.pages,
            visio_share: a.visio_share,
            patience: a.patience,
            timeout: a.timeout,
            day_file,
            day_sha: scenario::sha_hex(&ecluse::demo::file_body(day_file, 1)),
            exam_first: files + 1,
            paper_len: a.paper_len,
            seed: a.seed,
        };
        let summary = run::run(run::RunOpts {
            arm: a.arm.clone(),
            plan,
            origin: a.origin,
            admin: a.admin,
            calibrate: a.calibrate,
            best_rps: a.best_rps,
            max_duration: a.max_duration,
            out: a.out.clone(),
        })
        .await?;
        eprint!("{}", report::table(std::slice::from_ref(&summary)));
        println!("{summary}");
        Ok(())
    })
}

fn report(dir: PathBuf, arms: Vec<String>, svg: Option<PathBuf>) -> Result<(), String> {
    let mut summaries = Vec::new();
    let mut series = Vec::new();
    for arm in &arms {
        let p = dir.join(format!("{arm}.json"));
        let Ok(text) = std::fs::read_to_string(&p) else {
            eprintln!("ecluse-surge: no {} (arm skipped)", p.display());
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        summaries.push(v);
        let csv = std::fs::read_to_string(dir.join(format!("{arm}.csv"))).unwrap_or_default();
        series.push((
            arm.clone(),
            csv.lines().skip(1).filter_map(row::Row::parse).collect(),
        ));
    }
    print!("{}", report::table(&summaries));
    if let Some(svg) = svg {
        plot::draw(&svg, &series)?;
    }
    Ok(())
}
