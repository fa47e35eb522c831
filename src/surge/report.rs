//! The one table comparing the arms, from their summaries.

use serde_json::Value;

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn secs(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 10.0 => format!("{s:.1} s"),
        Some(s) => format!("{s:.0} s"),
    }
}

/// A Markdown table: one row per measure, one column per arm.
/// A table row: its label and how to read it from an arm's summary.
type Measure = (String, Box<dyn Fn(&Value) -> String>);

pub fn table(arms: &[Value]) -> String {
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let cap = arms.first().map_or(0, |a| u(a, "origin_capacity"));
    let rows: Vec<Measure> = vec![
        (
            "students fully served".into(),
            Box::new(move |a: &Value| {
                format!(
                    "{} / {} ({:.1}%)",
                    thousands(u(a, "served")),
                    thousands(u(a, "students")),
                    100.0 * a["served_share"].as_f64().unwrap_or(0.0)
                )
            }),
        ),
        (
            "errors seen by students (students affected)".into(),
            Box::new(move |a: &Value| {
                format!(
                    "{} ({})",
                    thousands(u(a, "student_errors")),
                    thousands(u(a, "students_with_errors"))
                )
            }),
        ),
        (
            "uploads lost / duplicated (of teachers' papers)".into(),
            Box::new(move |a: &Value| {
                format!(
                    "{} / {} (of {})",
                    u(a, "uploads_lost"),
                    u(a, "uploads_duplicated"),
                    u(a, "teachers")
                )
            }),
        ),
        (
            format!("origin peak in flight (capacity {cap})"),
            Box::new(move |a: &Value| {
                let p = u(a, "origin_peak_inflight");
                format!(
                    "{p}{}",
                    if p > u(a, "origin_capacity") {
                        " ⚠"
                    } else {
                        ""
                    }
                )
            }),
        ),
        (
            "origin fetches per file version (max)".into(),
            Box::new(move |a: &Value| {
                a["file_fetches_per_version_max"]
                    .as_u64()
                    .map_or("-".into(), thousands)
            }),
        ),
        (
            "time to admission p50 / p95".into(),
            Box::new(|a: &Value| {
                format!(
                    "{} / {}",
                    secs(&a["admission_p50_s"]),
                    secs(&a["admission_p95_s"])
                )
            }),
        ),
        (
            "wait estimate error p50 / p90 (waits ≥ 30 s)".into(),
            Box::new(|a: &Value| {
                let e = &a["estimate"];
                // Those told a range: how many, and how many waited within it.
                let ranges = match e["ranges"].as_u64() {
                    Some(n) if n > 0 => format!(
                        "; range told {n}, held {}",
                        e["ranges_held"].as_u64().unwrap_or(0)
                    ),
                    _ => String::new(),
                };
                let figures = match (e["rel_p50"].as_f64(), e["rel_p90"].as_f64()) {
                    (Some(p50), Some(p90)) => format!(
                        "{:.0}% / {:.0}% (of {}; ±{} / ±{})",
                        100.0 * p50,
                        100.0 * p90,
                        e["long_waits"].as_u64().unwrap_or(0),
                        secs(&e["abs_p50_s"]),
                        secs(&e["abs_p90_s"])
                    ),
                    _ => match e["abs_p90_s"].as_f64() {
                        Some(_) => format!(
                            "±{} / ±{} (short waits only)",
                            secs(&e["abs_p50_s"]),
                            secs(&e["abs_p90_s"])
                        ),
                        None => "- (no estimate given)".into(),
                    },
                };
                figures + &ranges
            }),
        ),
        (
            "FIFO inversions (students overtaken)".into(),
            Box::new(move |a: &Value| thousands(u(a, "fifo_inversions"))),
        ),
        (
            "admission efficiency (origin goodput / best, while students wait)".into(),
            Box::new(|a: &Value| match a["admission_efficiency"].as_f64() {
                Some(e) => format!("{:.0}%", 100.0 * e),
                None => "- (nobody waited)".into(),
            }),
        ),
        (
            "visio: joined / switched off".into(),
            Box::new(move |a: &Value| {
                format!(
                    "{} / {}",
                    thousands(u(a, "visio_joined")),
                    thousands(u(a, "visio_switched_off"))
                )
            }),
        ),
        (
            "run length".into(),
            Box::new(|a: &Value| secs(&a["duration_s"])),
        ),
    ];
    let mut out = String::from("| |");
    for a in arms {
        out.push_str(&format!(" {} |", a["arm"].as_str().unwrap_or("?")));
    }
    out.push_str("\n|---|");
    for _ in arms {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, f) in &rows {
        out.push_str(&format!("| {name} |"));
        for a in arms {
            out.push_str(&format!(" {} |", f(a)));
        }
        out.push('\n');
    }
    out
}
