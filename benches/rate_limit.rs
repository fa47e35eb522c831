//! Hot-path cost of a rate-limit decision (issue #3 targets: < 100 ns for a key already
//! known, < 500 ns for a new key). `cargo bench --bench rate_limit`.

use std::num::NonZeroU32;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ecluse::policy::rate_limit::{aggregate_ip, KeyedLimiter, Rate};

fn limiter(max_keys: usize) -> KeyedLimiter {
    KeyedLimiter::new(
        Rate::parse("1000000/s").expect("rate"),
        NonZeroU32::new(1_000_000).expect("burst"),
        max_keys,
        governor::clock::QuantaClock::default(),
    )
}

fn decisions(c: &mut Criterion) {
    let l = limiter(1_000_000);
    let ip: std::net::IpAddr = "2001:db8:1:2::7".parse().expect("ip");
    let key = l.key_hash_tagged(b'i', &aggregate_ip(ip, 32, 64));
    l.check(key, 1.0);
    c.bench_function("existing key: hash + peek + commit", |b| {
        b.iter(|| {
            let k = l.key_hash_tagged(b'i', &aggregate_ip(black_box(ip), 32, 64));
            black_box(l.check(k, 1.0))
        })
    });

    let fresh = limiter(10_000_000);
    let mut n: u32 = 0;
    c.bench_function("new key: hash + peek + insert", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = std::net::IpAddr::V4(n.into());
            let k = fresh.key_hash_tagged(b'i', &aggregate_ip(ip, 32, 64));
            black_box(fresh.check(k, 1.0))
        })
    });

    let full = limiter(100_000);
    let mut m: u32 = 0;
    c.bench_function("new key at the cap: hash + peek + evict + insert", |b| {
        b.iter(|| {
            m = m.wrapping_add(1);
            let ip = std::net::IpAddr::V4(m.into());
            let k = full.key_hash_tagged(b'i', &aggregate_ip(ip, 32, 64));
            black_box(full.check(k, 1.0))
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
