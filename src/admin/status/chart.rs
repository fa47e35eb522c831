//! Small line charts drawn on the server as inline SVG (no JavaScript, no external
//! service): the template gets the polyline points and writes the `<svg>` itself.

use serde::Serialize;

/// Drawing area of every chart, in SVG user units (the template's `viewBox`).
pub const WIDTH: f64 = 300.0;
pub const HEIGHT: f64 = 64.0;
const PAD: f64 = 3.0;

/// One line of a chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    /// `x,y x,y …` for `<polyline points>`; empty when there is nothing to draw.
    pub points: String,
    /// CSS class (`a`: first series, `b`: second), which sets its colour and dash.
    pub class: &'static str,
    pub name: String,
    /// The last value, as shown.
    pub last: String,
}

/// A chart: its lines, a horizontal limit line, and what a screen reader says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Chart {
    pub label: String,
    pub series: Vec<Series>,
    /// y of the limit line (a cap such as `max_inflight`).
    pub limit_y: Option<String>,
    /// The value at the top of the chart.
    pub top: String,
}

fn fmt(v: f64) -> String {
    if v.fract().abs() < 1e-9 || v.abs() >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

/// A chart of `series` (name, points as (unix ms, value)) over the `window_ms` before
/// `now_ms`, with an optional `limit` drawn across; `what` names it for screen readers.
pub fn draw(
    what: &str,
    series: &[(&str, Vec<(u64, f64)>)],
    limit: Option<f64>,
    now_ms: u64,
    window_ms: u64,
) -> Chart {
    let start = now_ms.saturating_sub(window_ms);
    let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
    let top = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| clean(p.1)))
        .chain(limit.map(clean))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let y = |v: f64| HEIGHT - PAD - clean(v) / top * (HEIGHT - 2.0 * PAD);
    let x = |t: u64| (t.saturating_sub(start) as f64 / window_ms.max(1) as f64 * WIDTH).min(WIDTH);
    let mut out = Vec::new();
    let mut words = Vec::new();
    for (i, (name, pts)) in series.iter().enumerate() {
        let points = pts
            .iter()
            .filter(|(t, _)| *t >= start)
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect::<Vec<_>>()
            .join(" ");
        let last = pts.last().map(|p| fmt(clean(p.1))).unwrap_or_default();
        let max = pts.iter().map(|p| clean(p.1)).fold(0.0, f64::max);
        words.push(format!("{name} now {last}, highest {}", fmt(max)));
        out.push(Series {
            points,
            class: if i == 0 { "a" } else { "b" },
            name: name.to_string(),
            last,
        });
    }
    let minutes = window_ms / 60_000;
    Chart {
        label: format!(
            "{what} over the last {minutes} minutes: {}{}",
            words.join("; "),
            limit
                .map(|l| format!("; limit {}", fmt(l)))
                .unwrap_or_default()
        ),
        series: out,
        limit_y: limit.map(|l| format!("{:.1}", y(l))),
        top: fmt(top / 1.1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fit_the_box_and_old_ones_are_left_out() {
        let c = draw(
            "Waiting",
            &[("waiting", vec![(0, 5.0), (1_000, 10.0), (2_000, f64::NAN)])],
            Some(20.0),
            2_000,
            1_000,
        );
        let pts: Vec<(f64, f64)> = c.series[0]
            .points
            .split(' ')
            .map(|p| {
                let (a, b) = p.split_once(',').expect("x,y");
                (a.parse().expect("x"), b.parse().expect("y"))
            })
            .collect();
        assert_eq!(pts.len(), 2, "the sample before the window is left out");
        for (x, y) in &pts {
            assert!((0.0..=WIDTH).contains(x) && (0.0..=HEIGHT).contains(y));
        }
        assert_eq!(pts[1].1, HEIGHT - PAD, "NaN draws as zero");
        assert!(c.limit_y.is_some());
        assert!(c.label.contains("highest 10"), "{}", c.label);
        let empty = draw("Nothing", &[("x", vec![])], None, 10, 10);
        assert_eq!(empty.series[0].points, "");
    }
}
