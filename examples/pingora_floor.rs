//! pingora's floor for `bench/proxy.sh` (the `pingora` arm): the smallest `ProxyHttp`
//! that does what the bench asks of every proxy (forward to one origin over a keep-alive
//! pool, set `X-Forwarded-For` and `X-Forwarded-Proto` as nginx and ecluse do), on the
//! same pingora version, allocator (mimalloc) and release profile as ecluse. What ecluse
//! costs on top of the framework is the distance between this arm and ecluse's.
//!
//! Knobs, to measure pingora's own levers one at a time in the same run
//! (docs/benchmarks.md):
//! - `--ctx-bytes N` (0, 512, 1024, 2048): a per-request context of N bytes instead of
//!   `()`, as the request future carries it (three copies of it in its state);
//! - `--compression`: the response-compression module (disabled, level 0) ecluse adds in
//!   `init_downstream_modules`, against pingora's default of none here;
//! - `--no-steal`: `work_stealing: false` (pingora's no-steal runtime).
//!
//! `pingora_floor ORIGIN_ADDR LISTEN_ADDR [knobs]`; prints `listening proxy http://ADDR/`
//! once bound. Not part of ecluse: only `bench/proxy.sh` builds and runs it.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor<const N: usize> {
    origin: SocketAddr,
    compression: bool,
}

#[async_trait]
impl<const N: usize> ProxyHttp for Floor<N> {
    type CTX = [u8; N];

    fn new_ctx(&self) -> [u8; N] {
        [0; N]
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        if self.compression {
            modules.add_module(
                pingora::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut [u8; N]) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut [u8; N],
    ) -> Result<()> {
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            req.insert_header("x-forwarded-for", ip.to_string())?;
        }
        req.insert_header("x-forwarded-proto", "http")?;
        Ok(())
    }
}

fn usage() -> ! {
    eprintln!("usage: pingora_floor ORIGIN_ADDR LISTEN_ADDR [--ctx-bytes 0|512|1024|2048] [--compression] [--no-steal]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(origin), Some(listen)) = (args.first(), args.get(1)) else {
        usage()
    };
    let Ok(origin) = origin.parse::<SocketAddr>() else {
        usage()
    };
    let mut ctx_bytes = 0usize;
    let mut compression = false;
    let mut work_stealing = true;
    let mut rest = args[2..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--ctx-bytes" => {
                ctx_bytes = rest
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--compression" => compression = true,
            "--no-steal" => work_stealing = false,
            _ => usage(),
        }
    }
    // As ecluse's `server.threads: 1` bench config and its default keep-alive pool.
    let conf = ServerConf {
        threads: 1,
        work_stealing,
        upstream_keepalive_pool_size: 1024,
        pid_file: std::env::temp_dir()
            .join(format!("pingora-floor-{}.pid", std::process::id()))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    macro_rules! service {
        ($n:literal) => {{
            let mut svc = http_proxy_service(
                &server.configuration,
                Floor::<$n> {
                    origin,
                    compression,
                },
            );
            svc.add_tcp(listen);
            server.add_service(svc);
        }};
    }
    match ctx_bytes {
        0 => service!(0),
        512 => service!(512),
        1024 => service!(1024),
        2048 => service!(2048),
        _ => usage(),
    }
    println!("listening proxy http://{listen}/");
    server.run_forever();
}
