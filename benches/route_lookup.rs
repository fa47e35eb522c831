//! Route lookup against the size of the policy (issue #25): one catch-all route, and 2,000
//! per-school host routes with the request for the last school, through the index
//! (`Router::find`) and through the scan in file order it replaced (`find_linear`).
//!
//!     cargo bench --bench route_lookup

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ecluse::policy::route::{HostPattern, Matcher, Routable, Router};
use http::Method;

struct R(Matcher);
impl Routable for R {
    fn matcher(&self) -> &Matcher {
        &self.0
    }
}

fn schools(n: usize) -> Router<R> {
    Router::new(
        (1..=n)
            .map(|i| {
                let host = HostPattern::parse(&format!("school{i}.ent.example.fr")).expect("host");
                R(Matcher::new(Some(vec![host]), "/".to_string(), None))
            })
            .collect(),
    )
}

fn bench(c: &mut Criterion) {
    let one = Router::new(vec![R(Matcher::new(None, "/".to_string(), None))]);
    let many = schools(2000);
    let path: &[u8] = b"/cahier-de-textes/semaine";
    let mut g = c.benchmark_group("route_lookup");
    g.bench_function("one route", |b| {
        b.iter(|| {
            one.find(black_box("ent.example.fr"), black_box(path), &Method::GET)
                .is_some()
        })
    });
    g.bench_function("2000 host routes, last school (index)", |b| {
        b.iter(|| {
            many.find(
                black_box("school2000.ent.example.fr"),
                black_box(path),
                &Method::GET,
            )
            .is_some()
        })
    });
    g.bench_function("2000 host routes, last school (scan in order)", |b| {
        b.iter(|| {
            many.find_linear(
                black_box("school2000.ent.example.fr"),
                black_box(path),
                &Method::GET,
            )
            .is_some()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
