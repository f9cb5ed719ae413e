//! SVG figures (plotters, SVG backend only — no system libraries): reliability diagrams (one
//! readout, or several overlaid such as before/after), a confidence histogram and a
//! risk–coverage curve.

use crate::metrics::{equal_width_bins, risk_coverage};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One readout's confidences and correctness, with a legend label.
pub struct Series<'a> {
    pub label: &'a str,
    pub confidence: &'a [f64],
    pub correct: &'a [bool],
}

type Res = Result<(), Box<dyn std::error::Error>>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The frame every figure shares: a white `size` canvas, the title, x over 0..1 with 11 labels,
/// y over `0..y_max`; `body` draws the series, then the legend goes top left.
fn render(
    size: (u32, u32),
    title: &str,
    y_max: f64,
    (x_desc, y_desc): (&str, &str),
    y_labels: Option<usize>,
    body: impl FnOnce(&mut Chart<'_, '_>) -> Res,
) -> Result<String, String> {
    let mut svg = String::new();
    let draw = |svg: &mut String| -> Res {
        let root = SVGBackend::with_string(svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..1f64, 0f64..y_max)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(11)
            .light_line_style(WHITE);
        if let Some(n) = y_labels {
            mesh.y_labels(n);
        }
        mesh.draw()?;
        body(&mut chart)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK.mix(0.3))
            .background_style(WHITE.mix(0.9))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw(&mut svg).map_err(|e| e.to_string())?;
    Ok(svg)
}

fn color(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(214, 39, 40),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ][i % 10]
}

/// One line per series with a legend entry.
fn lines(
    chart: &mut Chart<'_, '_>,
    series: &[Series],
    points: impl Fn(&Series) -> Vec<(f64, f64)>,
) -> Res {
    for (si, s) in series.iter().enumerate() {
        let c = color(si);
        chart
            .draw_series(LineSeries::new(points(s), c.stroke_width(2)))?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], c.stroke_width(2)));
    }
    Ok(())
}

/// Reliability diagram: per equal-width bin, a bar of accuracy (count written above it), the gap
/// to the bin's mean confidence shaded red, and the diagonal of perfect calibration. Several
/// series are drawn side by side within each bin.
pub fn reliability_svg(title: &str, series: &[Series], bins: usize) -> Result<String, String> {
    render(
        (640, 600),
        title,
        1.08,
        ("confidence", "accuracy"),
        Some(11),
        |chart| {
            let w = 1.0 / bins as f64;
            let k = series.len().max(1) as f64;
            for (si, s) in series.iter().enumerate() {
                let c = color(si);
                let stats = equal_width_bins(s.confidence, s.correct, bins);
                for (b, st) in stats.iter().enumerate().filter(|(_, st)| st.count > 0) {
                    let x0 = b as f64 * w + si as f64 * w / k + 0.004;
                    let x1 = x0 + w / k - 0.008;
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, st.accuracy)],
                        c.mix(0.75).filled(),
                    )))?;
                    let (lo, hi) = if st.accuracy < st.mean_confidence {
                        (st.accuracy, st.mean_confidence)
                    } else {
                        (st.mean_confidence, st.accuracy)
                    };
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0, lo), (x1, hi)],
                        RED.mix(0.25).filled(),
                    )))?;
                    chart.draw_series(std::iter::once(Text::new(
                        format!("{}", st.count),
                        (
                            (x0 + x1) / 2.0 - 0.012,
                            st.accuracy.max(st.mean_confidence) + 0.035,
                        ),
                        ("sans-serif", 11),
                    )))?;
                }
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(2.0, 2.0), (2.0, 2.0)],
                        c.filled(),
                    )))?
                    .label(format!("{} (n = {})", s.label, s.confidence.len()))
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.mix(0.75).filled())
                    });
            }
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, 0.0), (1.0, 1.0)],
                    BLACK.stroke_width(1),
                ))?
                .label("perfect calibration")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(2.0, 2.0), (2.0, 2.0)],
                    RED.mix(0.25).filled(),
                )))?
                .label("gap to mean confidence")
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], RED.mix(0.25).filled())
                });
            Ok(())
        },
    )
}

/// Histogram of confidences (equal-width bins), one outline per series.
pub fn confidence_histogram_svg(
    title: &str,
    series: &[Series],
    bins: usize,
) -> Result<String, String> {
    let shares = |s: &Series| -> Vec<f64> {
        let n = s.confidence.len().max(1) as f64;
        equal_width_bins(s.confidence, s.correct, bins)
            .iter()
            .map(|b| b.count as f64 / n)
            .collect()
    };
    let top = series.iter().flat_map(shares).fold(0.0, f64::max).max(0.05) * 1.1;
    let w = 1.0 / bins as f64;
    render(
        (640, 420),
        title,
        top,
        ("confidence", "share of answers"),
        None,
        |chart| {
            lines(chart, series, |s| {
                shares(s)
                    .iter()
                    .enumerate()
                    .flat_map(|(b, &h)| [(b as f64 * w, h), ((b + 1) as f64 * w, h)])
                    .collect()
            })
        },
    )
}

/// Risk–coverage: error rate among the most confident answers as coverage grows.
pub fn risk_coverage_svg(title: &str, series: &[Series]) -> Result<String, String> {
    render(
        (640, 420),
        title,
        1.0,
        ("coverage (share answered)", "risk (error rate)"),
        None,
        |chart| lines(chart, series, |s| risk_coverage(s.confidence, s.correct)),
    )
}
