//! Waiting-room memory: 1 million tickets issued (and signed) in one room; the server
//! state must not grow with them (issue #4 target: resident memory grows by at most
//! 10 MB). `cargo bench --bench waiting_room_memory` prints the figures and exits
//! non-zero if the bound is broken.

use std::time::Duration;

use ecluse::policy::ticket::{Keyring, Ticket, TicketState};
use ecluse::policy::waiting_room::{Arrival, ClassPolicy, Method, RoomParams, RoomState};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = if full { 1_000_000 } else { 50_000 };
    let params = RoomParams {
        active_users: 5000,
        new_users_per_minute: 1200,
        idle_timeout: Duration::from_secs(1200),
        abandon_timeout: Duration::from_secs(120),
        return_grace: Duration::from_secs(900),
        poll_interval: Duration::from_secs(10),
        classes: vec![ClassPolicy::Default],
        method: Method::Fifo,
        opens_at: None,
        prequeue: Duration::ZERO,
        fleet: None,
        shuffle_key: 1,
    };
    let keys = Keyring::parse("k1:0123456789abcdef0123456789abcdef").expect("key");
    let before = rss_bytes();
    let mut room = RoomState::new(&params, 0);
    let t0 = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut now = 0u64;
    for i in 0..n {
        // A surge: a thousand arrivals per simulated second, ticks every second.
        if i % 1000 == 0 {
            now += 1000;
            room.tick(&params, now);
        }
        let number = match room.arrive(&params, 0, now) {
            Arrival::Queue { number } | Arrival::Admit { number, .. } => number,
            Arrival::Closed => 0,
        };
        let cookie = keys.seal(&Ticket {
            room: "ent".into(),
            class: 0,
            state: TicketState::Waiting,
            number,
            issued: now / 1000,
            seen: now / 1000,
            bucket: 0,
        });
        bytes += cookie.len();
    }
    let took = t0.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    let snapshot = serde_json::to_string(&room).map(|s| s.len()).unwrap_or(0);
    println!("waiting-room memory bench: {n} tickets issued and signed");
    println!("  waiting at the end        {}", room.waiting());
    println!(
        "  RSS growth                {:.2} MiB (target <= 10 MiB)",
        grown as f64 / 1048576.0
    );
    println!("  room snapshot size        {snapshot} bytes");
    println!("  average cookie            {} bytes", bytes / n as usize);
    println!(
        "  time                      {:.2} s ({:.0} ns per ticket, issue + sign)",
        took.as_secs_f64(),
        took.as_nanos() as f64 / n as f64
    );
    if grown > 10 << 20 {
        eprintln!("FAILED: room state grew with the number of tickets");
        std::process::exit(1);
    }
}
