//! A small line-plot renderer: axes with round-numbered ticks (decades on a log axis), one
//! polyline per series with a marker on each point when there are few, dashed reference
//! lines, and a legend.

use std::fmt::Write as _;

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (drawn dashed, labelled at its right end).
#[derive(Debug, Clone)]
pub struct Guide {
    /// Label (`k/d = 4/64`).
    pub label: String,
    /// Its y value.
    pub y: f64,
}

/// One plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (non-positive values are left out).
    pub log_y: bool,
    /// Lines.
    pub series: Vec<Series>,
    /// Reference lines (random baselines).
    pub guides: Vec<Guide>,
    /// A circle on each point (for a few points per line, such as layers; not for spectra).
    pub markers: bool,
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Legend rows drawn; further series are still plotted (their label is the line's tooltip).
const LEGEND_ROWS: usize = 12;

fn nice(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e5 || value.abs() < 1e-3) {
        let text = format!("{value:.0e}");
        // `1e-7`, `2e5`: one significant digit is what a 1-2-5 tick needs.
        if text
            .parse::<f64>()
            .is_ok_and(|t| (t - value).abs() <= 1e-9 * value.abs())
        {
            return text;
        }
        format!("{value:.2e}")
    } else {
        format!("{value:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// Round tick values (steps of 1, 2 or 5 × 10ⁿ) covering `[low, high]`, about `target` of
/// them; with `integers`, steps are at least 1 (layers and indices have no half values).
fn linear_ticks(low: f64, high: f64, target: usize, integers: bool) -> Vec<f64> {
    let raw = (high - low) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let mut step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    if integers {
        step = step.max(1.0).round();
    }
    let first = (low / step).ceil() as i64;
    let last = (high / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// The plot as an `<svg>` element `width` pixels wide, `height` plus the legend high.
///
/// Long because an SVG is drawn in document order: frame, grid and ticks, series, guides,
/// legend, each placed with the scales computed at the top; split, each piece would take the
/// same half-dozen scale values as arguments.
pub fn render(plot: &Plot, width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let legend_rows = plot.series.len().min(LEGEND_ROWS) as f64;
    let (left, right, top) = (70.0, 120.0, 30.0);
    let bottom = 50.0 + 16.0 * legend_rows;
    let total_h = h + 16.0 * legend_rows;
    let visible = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!plot.log_y || y > 0.0);
    let ty = |y: f64| if plot.log_y { y.log10() } else { y };
    let points: Vec<(f64, f64)> = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .chain(plot.guides.iter().map(|g| (f64::NAN, g.y)))
        .filter(|&(x, y)| y.is_finite() && (!plot.log_y || y > 0.0) && !x.is_infinite())
        .map(|(x, y)| (x, ty(y)))
        .collect();
    let integer_x = points
        .iter()
        .filter(|(x, _)| x.is_finite())
        .all(|(x, _)| x.fract() == 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = points.iter().fold(
        (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 * y1.abs().max(1e-300) {
        y0 -= 0.5;
        y1 += 0.5;
    }
    let y_ticks: Vec<f64> = if plot.log_y {
        // Whole decades, so a reader can count orders of magnitude.
        (y0, y1) = (y0.floor(), y1.ceil());
        let decades = (y1 - y0) as i64;
        let every = if decades <= 12 { 1 } else { (decades + 9) / 10 };
        (0..=decades)
            .filter(|d| d % every == 0)
            .map(|d| y0 + d as f64)
            .collect()
    } else {
        if y0 > 0.0 {
            y0 = 0.0;
        }
        let ticks = linear_ticks(y0, y1, 5, false);
        // Extend the axis to the round tick above the data.
        let step = if ticks.len() > 1 {
            ticks[1] - ticks[0]
        } else {
            y1 - y0
        };
        if let Some(last) = ticks.last()
            && *last < y1
        {
            y1 = last + step;
        }
        let mut ticks = ticks;
        if ticks.last().is_some_and(|t| *t < y1 - 1e-9 * step) {
            ticks.push(y1);
        }
        ticks
    };
    let x_ticks = linear_ticks(x0, x1, 8, integer_x);
    let pw = w - left - right;
    let ph = total_h - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{total_h}\" \
         viewBox=\"0 0 {width} {total_h}\" font-family=\"sans-serif\" font-size=\"12\" \
         style=\"max-width:100%;height:auto\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text class=\"title\" x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        left + pw / 2.0,
        super::escape(&plot.title)
    );
    for &y in &y_ticks {
        let text = if plot.log_y {
            nice(10f64.powf(y))
        } else {
            nice(y)
        };
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#e4e4e4\"/>\
             <text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{text}</text>",
            left + pw,
            left - 6.0,
            sy(y) + 4.0,
            py = sy(y),
        );
    }
    for &x in &x_ticks {
        let _ = write!(
            svg,
            "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#444\"/>\
             <text class=\"tick\" x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 4.0,
            top + ph + 17.0,
            nice(x),
            px = sx(x),
        );
    }
    let _ = write!(
        svg,
        "<g class=\"axes\" stroke=\"#444\"><line x1=\"{left}\" y1=\"{b}\" x2=\"{}\" y2=\"{b}\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\"/></g>\
         <text class=\"axis-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"axis-label\" x=\"16\" y=\"{mid}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {mid})\">{}</text>",
        left + pw,
        left + pw / 2.0,
        top + ph + 34.0,
        super::escape(&plot.x_label),
        super::escape(&plot.y_label),
        b = top + ph,
        mid = top + ph / 2.0,
    );
    // Labels of close guides (k/d = 4/576 and 16/576) are pushed apart to stay readable.
    let mut label_ys: Vec<f64> = Vec::new();
    for guide in &plot.guides {
        if !(guide.y.is_finite() && (!plot.log_y || guide.y > 0.0)) {
            continue;
        }
        let y = sy(ty(guide.y));
        let mut label_y = y;
        while label_ys.iter().any(|other| (other - label_y).abs() < 13.0) {
            label_y -= 13.0;
        }
        label_ys.push(label_y);
        let _ = write!(
            svg,
            "<line class=\"guide\" x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#777\" stroke-dasharray=\"6 4\"/>\
             <text class=\"guide-label\" x=\"{}\" y=\"{:.1}\" fill=\"#555\">{}</text>",
            left + pw,
            left + pw + 6.0,
            label_y + 4.0,
            super::escape(&guide.label)
        );
    }
    for (i, series) in plot.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let coords: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter(|&&p| visible(&p))
            .map(|&(x, y)| (sx(x), sy(ty(y))))
            .collect();
        let text: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            svg,
            "<g class=\"series\"><title>{}</title><polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            super::escape(&series.label),
            text.join(" "),
        );
        if plot.markers {
            for (x, y) in &coords {
                let _ = write!(
                    svg,
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"/>"
                );
            }
        }
        svg.push_str("</g>");
        if i < LEGEND_ROWS {
            let ly = top + ph + 50.0 + 16.0 * i as f64;
            let _ = write!(
                svg,
                "<line x1=\"{left}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
                 <text class=\"legend\" x=\"{}\" y=\"{}\">{}</text>",
                left + 24.0,
                left + 30.0,
                ly + 4.0,
                super::escape(&series.label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_and_integers_on_an_integer_axis() {
        let labels = |ticks: Vec<f64>| ticks.into_iter().map(nice).collect::<Vec<_>>();
        assert_eq!(
            labels(linear_ticks(0.0, 8.45, 5, false)),
            ["0", "2", "4", "6", "8"]
        );
        assert_eq!(labels(linear_ticks(0.0, 2.0, 8, true)), ["0", "1", "2"]);
        assert_eq!(
            labels(linear_ticks(0.0, 0.34, 5, false)),
            ["0", "0.1", "0.2", "0.3"]
        );
        assert_eq!(
            labels(linear_ticks(1.0, 576.0, 8, true)),
            ["100", "200", "300", "400", "500"]
        );
        assert_eq!(nice(1e-7), "1e-7");
        assert_eq!(nice(2.5e-7), "2.50e-7");
    }

    #[test]
    fn a_log_axis_is_labelled_in_decades() {
        let plot = Plot {
            title: "σ".into(),
            x_label: "index".into(),
            y_label: "σ".into(),
            log_y: true,
            series: vec![Series {
                label: "a".into(),
                points: vec![(1.0, 39.0), (2.0, 0.8), (3.0, 1.5e-7), (4.0, 0.0)],
            }],
            guides: Vec::new(),
            markers: true,
        };
        let svg = render(&plot, 600, 300);
        for decade in ["1e-7", "1e-6", "0.001", "1", "100"] {
            assert!(
                svg.contains(&format!(">{decade}</text>")),
                "{decade}: {svg}"
            );
        }
        // The zero is left out of the log plot: three points, three markers.
        assert_eq!(svg.matches("<circle").count(), 3);
    }
}
