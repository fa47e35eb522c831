//! Memory bound of a rate limit under address spraying: 5 million distinct client IPs
//! go through one limit capped at `max_keys`; resident memory must stay near the cap's
//! footprint, not grow with the number of clients. `cargo bench --bench rate_limit_memory`
//! (prints figures; exits non-zero if the bound is broken).

use std::num::NonZeroU32;

use ecluse::policy::rate_limit::{aggregate_ip, KeyedLimiter, Rate};

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
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` (no flag, debug
    // build) a smaller run still checks the bound.
    let full = std::env::args().any(|a| a == "--bench");
    let clients: u32 = if full { 5_000_000 } else { 300_000 };
    let max_keys = 100_000;
    let before = rss_bytes();
    let l = KeyedLimiter::new(
        Rate::parse("1/s").expect("rate"),
        NonZeroU32::new(5).expect("burst"),
        max_keys,
        governor::clock::QuantaClock::default(),
    );
    let t0 = std::time::Instant::now();
    let mut peak = before;
    for i in 0..clients {
        // Spread over IPv4 space like a botnet would.
        let ip = std::net::IpAddr::V4(i.wrapping_mul(2_654_435_761).into());
        let k = l.key_hash_tagged(b'i', &aggregate_ip(ip, 32, 64));
        let _ = l.check(k, 1.0);
        if i % 250_000 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    let after = rss_bytes();
    peak = peak.max(after);
    let took = t0.elapsed();
    let grown = peak.saturating_sub(before);
    // A key costs one 16-byte slot of a table allocated up front: budget 16 bytes a key
    // plus 4 MiB of slack for the allocator and the bench itself.
    let budget = max_keys as u64 * 16 + (4 << 20);
    println!("rate-limit memory bench: {clients} distinct client IPs, max_keys {max_keys}");
    println!("  keys held at the end     {}", l.store().len());
    println!("  keys evicted at the cap  {}", l.store().evictions());
    println!(
        "  RSS growth (peak)        {:.1} MiB (budget {:.1} MiB)",
        grown as f64 / 1048576.0,
        budget as f64 / 1048576.0
    );
    println!(
        "  time                     {:.2} s ({:.0} ns per decision)",
        took.as_secs_f64(),
        took.as_nanos() as f64 / f64::from(clients)
    );
    if l.store().len() > l.store().capacity()
        || l.store().capacity() > max_keys + 128
        || grown > budget
    {
        eprintln!("FAILED: memory is not bounded by max_keys");
        std::process::exit(1);
    }
}
