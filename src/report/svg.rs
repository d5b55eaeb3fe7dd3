//! A small line-plot renderer: axes with ticks and labels, one polyline per series, a legend.

use std::fmt::Write as _;

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
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
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn nice(value: f64) -> String {
    if value != 0.0 && (value.abs() >= 1e4 || value.abs() < 1e-2) {
        format!("{value:.1e}")
    } else {
        format!("{:.3}", value)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// The plot as an `<svg>` element of `width × height` pixels.
pub fn render(plot: &Plot, width: u32, height: u32) -> String {
    let (w, h) = (f64::from(width), f64::from(height));
    let legend_rows = plot.series.len().min(12) as f64;
    let (left, right, top) = (70.0, 20.0, 30.0);
    let bottom = 50.0 + 16.0 * legend_rows;
    let total_h = h + 16.0 * legend_rows;
    let ty = |y: f64| if plot.log_y { y.log10() } else { y };
    let points: Vec<(f64, f64)> = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!plot.log_y || *y > 0.0))
        .map(|(x, y)| (x, ty(y)))
        .collect();
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
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 * y1.abs().max(1e-300) {
        y0 -= 0.5;
        y1 += 0.5;
    }
    if !plot.log_y && y0 > 0.0 {
        y0 = 0.0;
    }
    let pw = w - left - right;
    let ph = total_h - top - bottom;
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{total_h}\" \
         viewBox=\"0 0 {width} {total_h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text class=\"title\" x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        w / 2.0,
        super::escape(&plot.title)
    );
    // Axes and ticks.
    let _ = write!(
        svg,
        "<g class=\"axes\" stroke=\"#444\"><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\"/></g>",
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=5 {
        let x = x0 + (x1 - x0) * f64::from(i) / 5.0;
        let y = y0 + (y1 - y0) * f64::from(i) / 5.0;
        let y_text = if plot.log_y {
            nice(10f64.powf(y))
        } else {
            nice(y)
        };
        let _ = write!(
            svg,
            "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#eee\"/>",
            sx(x),
            top + ph + 16.0,
            nice(x),
            left - 6.0,
            sy(y) + 4.0,
            y_text,
            sy(y),
            left + pw,
            sy(y)
        );
    }
    let _ = write!(
        svg,
        "<text class=\"axis-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text class=\"axis-label\" x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>",
        left + pw / 2.0,
        top + ph + 34.0,
        super::escape(&plot.x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        super::escape(&plot.y_label)
    );
    for (i, series) in plot.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let coords: Vec<String> = series
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!plot.log_y || *y > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(ty(y))))
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            coords.join(" "),
            super::escape(&series.label)
        );
        if i < 12 {
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
