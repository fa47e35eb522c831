//! Figures `/admin/state` reads from the metrics registry: the cache's hit ratio and
//! bytes, and rate-limit refusals per route. The counters are the only record of these
//! (the cache and the limiters keep no totals of their own), so the state document and
//! `/metrics` cannot disagree.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Sum of each family's samples whose labels match `keep`, grouped by the value of
/// label `by` (`""`: one group).
fn sums(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    by: &str,
    keep: impl Fn(&str, &str) -> bool,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            let labels = m.get_label();
            if !labels.iter().all(|l| keep(l.name(), l.value())) {
                continue;
            }
            let key = labels
                .iter()
                .find(|l| l.name() == by)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let v = m.get_counter().value() + m.get_gauge().value();
            *out.entry(key).or_insert(0.0) += v;
        }
    }
    out
}

/// `cache` and `rate_limits` of `/admin/state`.
pub fn from_metrics(cache_on: bool) -> (Value, Value) {
    let families = crate::metrics::get().registry.gather();
    let cache = cache_on.then(|| {
        let results = sums(&families, "ecluse_cache_requests_total", "result", |_, _| true);
        let count = |k: &str| results.get(k).copied().unwrap_or(0.0);
        // A hit is an answer without the body coming from the origin: fresh or stale
        // from the store, or a 304 revalidation; `bypass` was never the cache's to serve.
        let hits = count("hit") + count("stale") + count("revalidated");
        let considered: f64 = results
            .iter()
            .filter(|(k, _)| k.as_str() != "bypass")
            .map(|(_, v)| v)
            .sum();
        let bytes = sums(&families, "ecluse_cache_bytes", "tier", |_, _| true);
        let capacity = sums(&families, "ecluse_cache_capacity_bytes", "tier", |_, _| true);
        let tier = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
        json!({
            "requests": results.iter().map(|(k, v)| (k.clone(), json!(*v as u64))).collect::<serde_json::Map<_, _>>(),
            "hit_ratio": if considered > 0.0 { Some(((hits / considered) * 1000.0).round() / 1000.0) } else { None },
            "memory_bytes": tier(&bytes, "memory"),
            "memory_capacity_bytes": tier(&capacity, "memory"),
            "disk_bytes": tier(&bytes, "disk"),
            "disk_capacity_bytes": tier(&capacity, "disk"),
        })
    });
    let limited = sums(
        &families,
        "ecluse_ratelimit_decisions_total",
        "route",
        |k, v| k != "result" || v == "limited",
    );
    let rate_limits = limited
        .iter()
        .map(|(route, n)| json!({ "route": route, "refused": *n as u64 }))
        .collect::<Vec<_>>();
    (json!(cache), json!(rate_limits))
}
