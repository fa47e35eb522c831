//! The `ecluse` command line: `run`, `check`, `demo` (and `schema` for editors).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ecluse",
    version,
    about = "Edge reverse proxy that keeps a school's ENT alive through a surge"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve in production with the given policy file.
    Run {
        /// The YAML policy file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listening sockets of a running ecluse (zero-downtime upgrade:
        /// start the new binary with --upgrade, then send SIGQUIT to the old one).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a policy file like `nginx -t`: exit 0 when valid, else print every problem
    /// as FILE:LINE:COL: message and exit 1.
    Check {
        /// The YAML policy file.
        file: PathBuf,
        /// `human`: `FILE:LINE:COL: message` lines on stderr. `json`: one JSON array on
        /// stdout, one object per problem: file, line, column, severity, message.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Check without the production secrets (a config repository's CI): a missing
        /// ticket key file or variable, admin token file, TLS certificate or key is a
        /// warning, everything else as usual. Exit 0 when there are only warnings.
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Run the simulated ENT and ecluse in front of it with the embedded demo policy.
    Demo {
        /// Proxy port (default 8080; 0 picks a free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port (default 9090; 0 picks a free one).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Simulated ENT port (default: a free one).
        #[arg(long, default_value_t = 0)]
        origin_port: u16,
        /// Start a surge of simulated pupils as soon as ecluse listens (the status
        /// page's button starts another).
        #[arg(long)]
        surge: bool,
    },
    /// Print the JSON Schema of the policy file (for editors; see config/ecluse.schema.json).
    Schema,
    /// Run only the simulated ENT (for benchmarks and experiments): prints
    /// `listening origin http://ADDR/` and serves until Ctrl-C.
    Origin {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Concurrent requests the simulated ENT handles well.
        #[arg(long, default_value_t = 64)]
        capacity: usize,
        /// Past this many in flight it answers 503 or hangs (default 2 × capacity).
        #[arg(long)]
        hard_limit: Option<usize>,
        /// Latency of a page at rest, in ms.
        #[arg(long, default_value_t = 5)]
        base_latency_ms: u64,
        /// Latency added per request in flight above capacity/2, in ms.
        #[arg(long, default_value_t = 1)]
        latency_per_inflight_ms: u64,
    },
}

fn init_logging() {
    let env = env_logger::Env::default()
        .default_filter_or("info,pingora=warn,pingora_core=warn,pingora_proxy=warn");
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}

/// One problem as `--format json` writes it.
fn json_problem(
    file: &str,
    pos: Option<ecluse::config::tree::Pos>,
    severity: &str,
    message: &str,
) -> serde_json::Value {
    serde_json::json!({
        "file": file,
        "line": pos.map(|p| p.line),
        "column": pos.map(|p| p.col),
        "severity": severity,
        "message": message,
    })
}

fn check(file: PathBuf, format: Format, skip_secrets: bool) -> ExitCode {
    let shown = file.display().to_string();
    let opts = ecluse::config::LoadOptions { skip_secrets };
    let report = match ecluse::config::check_file(&file, opts) {
        Ok(r) => r,
        Err(e) => {
            // The file cannot be read at all: no position to give.
            if format == Format::Json {
                let all = vec![json_problem(&shown, None, "error", &e.to_string())];
                println!("{}", serde_json::Value::Array(all));
            } else {
                eprintln!("{e}");
                eprintln!("{shown}: 1 problem found");
            }
            return ExitCode::from(1);
        }
    };
    let code = if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if format == Format::Json {
        // Errors and warnings together, in file order.
        let mut all: Vec<(&ecluse::config::Diagnostic, &str)> = report
            .errors
            .iter()
            .map(|d| (d, "error"))
            .chain(report.warnings.iter().map(|d| (d, "warning")))
            .collect();
        all.sort_by_key(|(d, _)| (d.pos.line, d.pos.col));
        let all: Vec<serde_json::Value> = all
            .into_iter()
            .map(|(d, sev)| json_problem(&shown, Some(d.pos), sev, &d.message))
            .collect();
        println!("{}", serde_json::Value::Array(all));
        return code;
    }
    // Errors and warnings in file order; warnings say so, errors keep the fixed format.
    let mut lines: Vec<(ecluse::config::tree::Pos, String)> = report
        .errors
        .iter()
        .map(|d| (d.pos, d.render(&shown)))
        .chain(report.warnings.iter().map(|w| {
            (
                w.pos,
                format!(
                    "{}:{}:{}: warning: {}",
                    shown, w.pos.line, w.pos.col, w.message
                ),
            )
        }))
        .collect();
    lines.sort_by_key(|(p, _)| (p.line, p.col));
    for (_, l) in &lines {
        eprintln!("{l}");
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let warned = if report.warnings.is_empty() {
        String::new()
    } else {
        let n = report.warnings.len();
        format!(", {n} warning{}", plural(n))
    };
    match (&report.config, report.errors.is_empty()) {
        (Some(cfg), true) => {
            eprintln!(
                "{}: ok ({} routes, {} origins, hash {}){warned}",
                shown,
                cfg.router.routes().len(),
                cfg.origins.len(),
                cfg.hash
            );
        }
        _ => {
            let n = report.errors.len();
            eprintln!("{shown}: {n} problem{} found{warned}", plural(n));
        }
    }
    code
}

fn run(
    config: PathBuf,
    opts: ecluse::server::RunOptions,
    banner: &dyn Fn(&ecluse::server::Bound) -> Vec<String>,
) -> ExitCode {
    init_logging();
    let app = match ecluse::app::App::new(&config) {
        Ok(a) => a,
        Err(e) => {
            for l in e.lines() {
                eprintln!("{l}");
            }
            eprintln!("ecluse: not starting: the config is invalid");
            return ExitCode::from(1);
        }
    };
    let (server, bound) = match ecluse::server::build(app.clone(), &opts) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ecluse: not starting: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    for l in banner(&bound) {
        let _ = writeln!(out, "{l}");
    }
    for a in &bound.proxy {
        let _ = writeln!(
            out,
            "listening proxy http://{}/",
            ecluse::admin::connectable(*a)
        );
    }
    for a in &bound.tls {
        let _ = writeln!(
            out,
            "listening tls https://{}/",
            ecluse::admin::connectable(*a)
        );
    }
    let _ = writeln!(out, "listening admin http://{}/", bound.admin);
    let _ = out.flush();
    drop(out);
    server.run(ecluse::server::run_args(&app));
    log::info!("stopped: every connection drained or closed");
    // Every service has stopped: save the waiting rooms one last time, so a restart
    // keeps everyone's place (the periodic snapshot may be up to 2 s old).
    let dir = app.config().server.state_dir.clone();
    app.registry.rooms.snapshot_final(&dir);
    // Flush the cache's disk tier so a restart finds what was stored.
    if let Some(cache) = app.cache.get() {
        cache.store.close();
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A bug must never show ops a stack trace instead of a diagnostic.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ecluse: internal error: {info}; please report it");
    }));
    match cli.cmd {
        Cmd::Check {
            file,
            format,
            skip_secrets,
        } => check(file, format, skip_secrets),
        Cmd::Origin {
            port,
            capacity,
            hard_limit,
            base_latency_ms,
            latency_per_inflight_ms,
        } => {
            let opts = ecluse::demo::OriginOptions {
                capacity,
                hard_limit: hard_limit.unwrap_or(2 * capacity),
                base_latency: std::time::Duration::from_millis(base_latency_ms),
                latency_per_inflight: std::time::Duration::from_millis(latency_per_inflight_ms),
                ..ecluse::demo::OriginOptions::default()
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ecluse origin: {e}");
                    return ExitCode::from(1);
                }
            };
            rt.block_on(async move {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                match ecluse::demo::DemoOrigin::start(addr, opts).await {
                    Ok(o) => {
                        println!("listening origin http://{}/", o.addr());
                        let _ = tokio::signal::ctrl_c().await;
                        o.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("ecluse origin: cannot listen on {addr}: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        Cmd::Schema => {
            let s =
                serde_json::to_string_pretty(&ecluse::config::json_schema()).unwrap_or_default();
            println!("{s}");
            ExitCode::SUCCESS
        }
        Cmd::Run { config, upgrade } => run(
            config,
            ecluse::server::RunOptions {
                upgrade,
                ..Default::default()
            },
            &|_| Vec::new(),
        ),
        Cmd::Demo {
            port,
            admin_port,
            origin_port,
            surge,
        } => ecluse::demo::run::demo(
            port,
            admin_port,
            origin_port,
            surge,
            |path, opts, banner| run(path, opts, banner),
        ),
    }
}

/// mimalloc instead of glibc malloc: pingora allocates and frees a 64 KB body buffer per
/// upstream response, which glibc handles with costly consolidation; measured -12% CPU
/// per proxied request (bench/proxy.sh, see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
