//! Charts as inline SVG, drawn on the server: no script, nothing for the
//! Content-Security-Policy to allow, readable without JavaScript. Each
//! point carries a `<title>`, which browsers show on hover.

use maud::{Markup, html};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
/// Room for the axis labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;

/// One line: a value per interval.
pub struct Line<'a> {
    pub label: &'a str,
    /// Styled by the stylesheet (`.line-0`, `.line-1`, …).
    pub values: Vec<f64>,
}

/// A line chart of `lines` over intervals of `step_ms` from `start_ms`.
pub fn line_chart(
    title: &str,
    unit: &str,
    start_ms: u64,
    step_ms: u64,
    lines: &[Line<'_>],
) -> Markup {
    let count = lines.iter().map(|l| l.values.len()).max().unwrap_or(0);
    let top = nice_max(
        lines
            .iter()
            .flat_map(|l| l.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let end_ms = start_ms.saturating_add(step_ms.saturating_mul(count as u64));
    html! {
        figure.chart {
            figcaption {
                (title)
                @for (i, line) in lines.iter().enumerate() {
                    span class={ "key line-" (i) } { (line.label) }
                }
            }
            svg viewBox={ "0 0 " (WIDTH) " " (HEIGHT + BOTTOM) } role="img" aria-label=(title) {
                line.axis x1=(LEFT) y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                line.grid x1=(LEFT) y1="4" x2=(WIDTH) y2="4" {}
                text.label x=(LEFT - 4.0) y="10" text-anchor="end" { (format_value(top)) (unit) }
                text.label x=(LEFT - 4.0) y=(HEIGHT) text-anchor="end" { "0" }
                text.label x=(LEFT) y=(HEIGHT + BOTTOM - 3.0) { (axis_time(start_ms, step_ms)) }
                text.label x=(WIDTH) y=(HEIGHT + BOTTOM - 3.0) text-anchor="end" { (axis_time(end_ms, step_ms)) }
                @for (i, line) in lines.iter().enumerate() {
                    polyline class={ "line-" (i) } fill="none" points=(points(&line.values, count, top)) {}
                    @for (j, (x, y)) in place(&line.values, count, top).into_iter().enumerate() {
                        @if line.values[j] > 0.0 {
                            circle class={ "dot line-" (i) } cx=(fmt(x)) cy=(fmt(y)) r="2" {
                                title { (axis_time(start_ms.saturating_add(step_ms.saturating_mul(j as u64)), step_ms)) " " (line.label) ": " (format_value(line.values[j])) (unit) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where each value goes: x across the intervals, y from the bottom.
fn place(values: &[f64], count: usize, top: f64) -> Vec<(f64, f64)> {
    let span = (WIDTH - LEFT) / count.saturating_sub(1).max(1) as f64;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if top > 0.0 {
                HEIGHT - (v / top).clamp(0.0, 1.0) * (HEIGHT - 4.0)
            } else {
                HEIGHT
            };
            (LEFT + span * i as f64, y)
        })
        .collect()
}

fn points(values: &[f64], count: usize, top: f64) -> String {
    place(values, count, top)
        .into_iter()
        .map(|(x, y)| format!("{},{}", fmt(x), fmt(y)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

/// The axis' top: the maximum rounded up to 1, 2 or 5 × a power of ten.
pub fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * power)
}

/// A value as a person reads it: whole numbers plain, others to 3 figures.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{}", v as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A time on the axis: the clock for intervals under a day, else the date.
fn axis_time(ms: u64, step_ms: u64) -> String {
    if step_ms < 86_400_000 {
        clock(ms)
    } else {
        gust_core::time::rfc3339(ms).chars().take(10).collect()
    }
}

/// `HH:MM` (UTC) of a Unix time in ms.
pub fn clock(ms: u64) -> String {
    let minutes = ms / 60_000;
    format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_top_is_a_round_number_above_the_largest_value() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.7), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(12.0), 20.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(501.0), 1000.0);
    }

    #[test]
    fn values_are_placed_left_to_right_and_bottom_up() {
        let placed = place(&[0.0, 5.0, 10.0], 3, 10.0);
        assert_eq!(placed[0], (LEFT, HEIGHT));
        assert_eq!(placed[2].0, WIDTH);
        assert_eq!(placed[2].1, 4.0);
        assert!(placed[1].1 < HEIGHT && placed[1].1 > 4.0);
    }

    #[test]
    fn a_chart_is_svg_with_a_line_per_series_and_titled_points() {
        let svg = line_chart(
            "Requests",
            "",
            0,
            60_000,
            &[
                Line {
                    label: "ok",
                    values: vec![1.0, 2.0],
                },
                Line {
                    label: "<errors>",
                    values: vec![0.0, 1.0],
                },
            ],
        )
        .into_string();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("00:01 ok: 2"), "{svg}");
        assert!(svg.contains("&lt;errors&gt;"), "labels are escaped");
        assert!(
            !svg.contains("style="),
            "nothing inline for the CSP to refuse"
        );
    }

    #[test]
    fn values_and_times_read_as_people_write_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1.23456), "1.23");
        assert_eq!(format_value(12.3456), "12.3");
        assert_eq!(clock(3_600_000 + 5 * 60_000), "01:05");
        assert_eq!(axis_time(86_400_000, 86_400_000), "1970-01-02");
    }
}
