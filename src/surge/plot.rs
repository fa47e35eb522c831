//! The picture of a surge: one column per arm, rows for the students (kept out, inside),
//! students served and errors per second, the origin's requests in flight against its
//! capacity, and the degradation level.

use std::path::Path;

use plotters::prelude::*;

use super::row::Row;

type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&Row) -> f64 + 'a>);

pub fn draw(path: &Path, arms: &[(String, Vec<Row>)]) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let cols = arms.len().max(1);
    let area = SVGBackend::new(path, (520 * cols as u32, 1000)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| err(&e))?;
    let columns = area.split_evenly((1, cols));
    let tmax = arms
        .iter()
        .filter_map(|(_, r)| r.last().map(|x| x.t as f64 + 1.0))
        .fold(10.0, f64::max);
    for ((arm, rows), col) in arms.iter().zip(columns.iter()) {
        let (title, body) = col.split_vertically(36);
        title.titled(arm, ("sans-serif", 24)).map_err(|e| err(&e))?;
        let panels = body.split_evenly((4, 1));
        let cap = rows.first().map_or(0.0, |r| r.origin_capacity as f64);
        let specs: [(&str, Vec<Series>); 4] = [
            (
                "students kept out / inside",
                vec![
                    (
                        "kept out (queue or refused)",
                        RGBColor(230, 120, 0),
                        Box::new(|r: &Row| r.waiting as f64),
                    ),
                    (
                        "inside the ENT",
                        RGBColor(30, 100, 200),
                        Box::new(|r: &Row| r.active as f64),
                    ),
                ],
            ),
            (
                "per second: served, errors seen",
                vec![
                    (
                        "students served",
                        RGBColor(20, 150, 60),
                        Box::new(|r: &Row| r.served as f64),
                    ),
                    (
                        "student-visible errors",
                        RGBColor(210, 30, 30),
                        Box::new(|r: &Row| r.errors as f64),
                    ),
                ],
            ),
            (
                "origin: requests in flight",
                vec![
                    (
                        "max in the second",
                        RGBColor(150, 60, 170),
                        Box::new(|r: &Row| r.origin_inflight_max),
                    ),
                    (
                        "mean",
                        RGBColor(60, 60, 60),
                        Box::new(|r: &Row| r.origin_inflight_mean),
                    ),
                    (
                        "capacity",
                        RGBColor(210, 30, 30),
                        Box::new(move |_: &Row| cap),
                    ),
                ],
            ),
            (
                "degradation level (0 = normal)",
                vec![(
                    "level",
                    RGBColor(120, 120, 120),
                    Box::new(|r: &Row| r.level),
                )],
            ),
        ];
        for ((name, series), panel) in specs.iter().zip(panels.iter()) {
            let ymax = series
                .iter()
                .flat_map(|(_, _, f)| rows.iter().map(f))
                .fold(1.0f64, f64::max)
                * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(*name, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..tmax, 0.0..ymax)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| err(&e))?;
            for (label, color, f) in series {
                let color = *color;
                chart
                    .draw_series(LineSeries::new(
                        rows.iter().map(|r| (r.t as f64, f(r))),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(*label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    area.present().map_err(|e| err(&e))?;
    Ok(())
}
