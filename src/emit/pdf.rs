//! The report's SVG figures as PDF, for `\includegraphics`: a converter for the flat SVG that
//! `report::render_svg` draws (`rect`, `line`, `polyline`, `circle`, `text` with
//! `text-anchor` and `rotate`, `g` carrying a stroke, `title` skipped), written with PDF's
//! built-in Helvetica and Symbol fonts, so nothing is embedded and the output depends on the
//! SVG alone: no clock, no font files, no producer string, the same bytes on every machine.
//!
//! A general converter (`svg2pdf` over `usvg`) would lay text out with the fonts installed on
//! the machine that emits, which makes the PDF's bytes depend on that machine: `--check` would
//! report a drift that is not in the data.

use std::fmt::Write as _;

/// Helvetica's advance widths (1/1000 em) for ASCII 32..=126, from its AFM file.
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/// A run of text in one font: `F1` Helvetica (WinAnsi) or `F2` Symbol.
struct Run {
    symbol: bool,
    bytes: Vec<u8>,
    width: f64,
}

/// Splits text into font runs, mapping what WinAnsi lacks: Greek letters to Symbol, subscript
/// digits to digits, the minus sign to a hyphen.
fn runs(text: &str) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for c in text.chars() {
        let (symbol, byte, width) = match c {
            ' '..='~' => (false, c as u8, HELVETICA[(c as usize) - 32]),
            'γ' => (true, b'g', 411),
            'σ' => (true, b's', 603),
            'λ' => (true, b'l', 549),
            'Δ' => (true, b'D', 612),
            '₀'..='₉' => {
                let digit = b'0' + (c as u32 - '₀' as u32) as u8;
                (false, digit, 556)
            }
            '−' => (false, b'-', 333),
            '–' => (false, 0x96, 556),
            '—' => (false, 0x97, 1000),
            '·' => (false, 0xB7, 278),
            '×' => (false, 0xD7, 584),
            _ => (false, b'?', 556),
        };
        match out.last_mut() {
            Some(run) if run.symbol == symbol => {
                run.bytes.push(byte);
                run.width += f64::from(width);
            }
            _ => out.push(Run {
                symbol,
                bytes: vec![byte],
                width: f64::from(width),
            }),
        }
    }
    out
}

fn pdf_string(bytes: &[u8]) -> String {
    let mut out = String::from("(");
    for &b in bytes {
        match b {
            b'(' | b')' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            32..=126 => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push(')');
    out
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// `#rrggbb` or a few names, as PDF colour components; `None` for `none` or unknown.
fn colour(text: &str) -> Option<(f64, f64, f64)> {
    match text {
        "white" => Some((1.0, 1.0, 1.0)),
        "black" => Some((0.0, 0.0, 0.0)),
        hex if hex.len() == 7 && hex.starts_with('#') => {
            let channel = |i: usize| {
                u8::from_str_radix(&hex[i..i + 2], 16)
                    .ok()
                    .map(|v| f64::from(v) / 255.0)
            };
            Some((channel(1)?, channel(3)?, channel(5)?))
        }
        _ => None,
    }
}

/// One tag: its name, attributes, and whether it closes (`</g>`) or is empty (`<x/>`).
struct Tag<'a> {
    name: &'a str,
    attributes: Vec<(&'a str, String)>,
    closing: bool,
    empty: bool,
}

impl Tag<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> f64 {
        self.get(name)
            .and_then(|v| v.trim_end_matches("px").parse().ok())
            .unwrap_or(0.0)
    }
}

fn parse_tag(inner: &str) -> Tag<'_> {
    let closing = inner.starts_with('/');
    let empty = inner.ends_with('/');
    let body = inner.trim_start_matches('/').trim_end_matches('/');
    let (name, mut rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let mut attributes = Vec::new();
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        attributes.push((key.trim(), unescape(value)));
        rest = tail;
    }
    Tag {
        name,
        attributes,
        closing,
        empty,
    }
}

fn f(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Draws one element into the content stream; `stroke` is the inherited stroke colour.
fn draw(tag: &Tag<'_>, text: &str, stroke: Option<&str>, page: (f64, f64), out: &mut String) {
    let stroke_of = |tag: &Tag<'_>| tag.get("stroke").or(stroke).and_then(colour);
    let set_stroke = |out: &mut String, (r, g, b): (f64, f64, f64)| {
        let width = tag
            .get("stroke-width")
            .map_or(1.0, |_| tag.number("stroke-width"));
        let dash = tag.get("stroke-dasharray").map_or_else(
            || "[] 0 d".to_owned(),
            |d| {
                let parts: Vec<String> = d
                    .split([' ', ','])
                    .filter_map(|p| p.parse::<f64>().ok())
                    .map(f)
                    .collect();
                format!("[{}] 0 d", parts.join(" "))
            },
        );
        let _ = writeln!(out, "{} {} {} RG {} w {dash}", f(r), f(g), f(b), f(width));
    };
    match tag.name {
        "rect" => {
            if let Some((r, g, b)) = tag.get("fill").and_then(colour) {
                let size = |name: &str, full: f64| match tag.get(name) {
                    Some(v) if v.ends_with('%') => {
                        v.trim_end_matches('%').parse::<f64>().unwrap_or(100.0) / 100.0 * full
                    }
                    _ => tag.number(name),
                };
                let (w, h) = (size("width", page.0), size("height", page.1));
                let (x, y) = (tag.number("x"), tag.number("y"));
                let _ = writeln!(
                    out,
                    "{} {} {} rg {} {} {} {} re f",
                    f(r),
                    f(g),
                    f(b),
                    f(x),
                    f(y),
                    f(w),
                    f(h)
                );
            }
        }
        "line" => {
            if let Some(c) = stroke_of(tag) {
                set_stroke(out, c);
                let _ = writeln!(
                    out,
                    "{} {} m {} {} l S",
                    f(tag.number("x1")),
                    f(tag.number("y1")),
                    f(tag.number("x2")),
                    f(tag.number("y2"))
                );
            }
        }
        "polyline" => {
            if let Some(c) = stroke_of(tag) {
                set_stroke(out, c);
                let points: Vec<(f64, f64)> = tag
                    .get("points")
                    .unwrap_or("")
                    .split_whitespace()
                    .filter_map(|p| {
                        let (x, y) = p.split_once(',')?;
                        Some((x.parse().ok()?, y.parse().ok()?))
                    })
                    .collect();
                for (i, (x, y)) in points.iter().enumerate() {
                    let op = if i == 0 { "m" } else { "l" };
                    let _ = write!(out, "{} {} {op} ", f(*x), f(*y));
                }
                if !points.is_empty() {
                    out.push_str("S\n");
                }
            }
        }
        "circle" => {
            if let Some((r, g, b)) = tag.get("fill").and_then(colour) {
                let (cx, cy, radius) = (tag.number("cx"), tag.number("cy"), tag.number("r"));
                // Four Bézier arcs; 0.5523 is the control distance of a quarter circle.
                let k = 0.5523 * radius;
                let _ = writeln!(
                    out,
                    "{} {} {} rg {} {} m {} {} {} {} {} {} c {} {} {} {} {} {} c {} {} {} {} {} {} c {} {} {} {} {} {} c f",
                    f(r),
                    f(g),
                    f(b),
                    f(cx + radius),
                    f(cy),
                    f(cx + radius),
                    f(cy + k),
                    f(cx + k),
                    f(cy + radius),
                    f(cx),
                    f(cy + radius),
                    f(cx - k),
                    f(cy + radius),
                    f(cx - radius),
                    f(cy + k),
                    f(cx - radius),
                    f(cy),
                    f(cx - radius),
                    f(cy - k),
                    f(cx - k),
                    f(cy - radius),
                    f(cx),
                    f(cy - radius),
                    f(cx + k),
                    f(cy - radius),
                    f(cx + radius),
                    f(cy - k),
                    f(cx + radius),
                    f(cy),
                );
            }
        }
        "text" => draw_text(tag, text, out),
        _ => {}
    }
}

fn draw_text(tag: &Tag<'_>, text: &str, out: &mut String) {
    let size = tag
        .get("font-size")
        .map_or(12.0, |_| tag.number("font-size"));
    let runs = runs(&unescape(text));
    let width: f64 = runs.iter().map(|r| r.width).sum::<f64>() / 1000.0 * size;
    let shift = match tag.get("text-anchor") {
        Some("middle") => width / 2.0,
        Some("end") => width,
        _ => 0.0,
    };
    let (x, y) = (tag.number("x") - shift, tag.number("y"));
    // `rotate(A CX CY)`: the glyphs turn by A degrees (clockwise on screen) about (CX, CY).
    let (angle, cx, cy) = tag
        .get("transform")
        .and_then(|t| {
            t.strip_prefix("rotate(")?
                .strip_suffix(')')
                .map(str::to_owned)
        })
        .map_or((0.0, 0.0, 0.0), |args| {
            let v: Vec<f64> = args
                .split([' ', ','])
                .filter_map(|p| p.parse().ok())
                .collect();
            (
                v.first().copied().unwrap_or(0.0),
                v.get(1).copied().unwrap_or(0.0),
                v.get(2).copied().unwrap_or(0.0),
            )
        });
    let (sin, cos) = angle.to_radians().sin_cos();
    let (e, g) = (
        cx + cos * (x - cx) - sin * (y - cy),
        cy + sin * (x - cx) + cos * (y - cy),
    );
    let (r, gr, b) = tag.get("fill").and_then(colour).unwrap_or((0.0, 0.0, 0.0));
    // The page is flipped (SVG's y runs down), so the text matrix flips the glyphs back.
    let _ = write!(
        out,
        "BT {} {} {} rg {} {} {} {} {} {} Tm ",
        f(r),
        f(gr),
        f(b),
        f(cos),
        f(sin),
        f(sin),
        f(-cos),
        f(e),
        f(g)
    );
    for run in &runs {
        let font = if run.symbol { "F2" } else { "F1" };
        let _ = write!(out, "/{font} {} Tf {} Tj ", f(size), pdf_string(&run.bytes));
    }
    out.push_str("ET\n");
}

/// The drawing commands of `svg` and the page size (its `width` and `height`).
fn content(svg: &str) -> (String, (f64, f64)) {
    let mut out = String::new();
    let mut page = (480.0, 300.0);
    let mut strokes: Vec<Option<String>> = Vec::new();
    let mut rest = svg;
    let mut in_title = false;
    while let Some(start) = rest.find('<') {
        let Some(end) = rest[start..].find('>') else {
            break;
        };
        let inner = &rest[start + 1..start + end];
        rest = &rest[start + end + 1..];
        if inner.starts_with('!') || inner.starts_with('?') {
            continue;
        }
        let tag = parse_tag(inner);
        match (tag.name, tag.closing) {
            ("svg", false) => {
                page = (tag.number("width"), tag.number("height"));
                let _ = writeln!(out, "1 0 0 -1 0 {} cm 1 J 1 j", f(page.1));
            }
            ("g", false) if !tag.empty => strokes.push(tag.get("stroke").map(str::to_owned)),
            ("g", true) => {
                strokes.pop();
            }
            ("title", false) => in_title = true,
            ("title", true) => in_title = false,
            ("text", false) => {
                let body_end = rest.find("</text>").unwrap_or(rest.len());
                let body = &rest[..body_end];
                if !in_title {
                    draw(&tag, body, None, page, &mut out);
                }
                rest = &rest[body_end..];
            }
            (_, false) if !in_title => {
                let stroke = strokes.iter().rev().find_map(|s| s.as_deref());
                draw(&tag, "", stroke, page, &mut out);
            }
            _ => {}
        }
    }
    (out, page)
}

/// The PDF of `svg` (as `report::render_svg` draws it), one page of its size, with `comments`
/// (the emit header) as PDF comment lines after the file header.
pub fn from_svg(svg: &str, comments: &[String]) -> Vec<u8> {
    let (stream, (width, height)) = content(svg);
    let mut pdf: Vec<u8> = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    for line in comments {
        pdf.extend(format!("% {}\n", line.replace(['\r', '\n'], " ")).as_bytes());
    }
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {} {}] /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
            f(width),
            f(height)
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Symbol >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}endstream", stream.len()),
    ];
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    let mut table = format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1);
    for offset in offsets {
        let _ = writeln!(table, "{offset:010} 00000 n ");
    }
    let _ = write!(
        table,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    );
    pdf.extend(table.as_bytes());
    pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_becomes_a_one_page_pdf_with_its_lines_and_text() {
        let plot = crate::report::Plot {
            title: "subspace overlap γ".into(),
            x_label: "layer".into(),
            y_label: "γ".into(),
            log_y: false,
            series: vec![crate::report::Series {
                label: "a (b)".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0)],
            }],
            guides: Vec::new(),
            markers: true,
        };
        let svg = crate::report::render_svg(&plot, 400, 300);
        let pdf = from_svg(&svg, &["source qs: local://x/y@abc".into()]);
        let text = String::from_utf8_lossy(&pdf);
        assert!(text.starts_with("%PDF-1.4\n"));
        assert!(text.contains("% source qs: local://x/y@abc\n"));
        assert!(
            text.contains("(subspace overlap ) Tj /F2 12 Tf")
                || text.contains("(subspace overlap ) Tj /F2 15 Tf"),
            "{text}"
        );
        assert!(text.contains("(a \\(b\\)) Tj"), "{text}");
        assert_eq!(text.matches(" c f\n").count(), 2, "one marker per point");
        assert!(text.ends_with("%%EOF\n"));
        assert_eq!(pdf, from_svg(&svg, &["source qs: local://x/y@abc".into()]));
    }
}
