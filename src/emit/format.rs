//! Numbers written for a paper: the same rounding for LaTeX (`\newcommand` bodies, table
//! cells) and for plain text (`values.json`, CSV), so the PDF and the web page agree digit for
//! digit.

use super::raw::RawFormat;

/// A format and its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberFormat {
    /// Fixed, significant, scientific, percent or integer.
    pub kind: RawFormat,
    /// Decimals or significant digits (unused for integers).
    pub digits: u8,
}

/// A number in both media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// For LaTeX (`12.3\%`, `\ensuremath{1.23\times10^{-4}}`, `12{,}345`).
    pub latex: String,
    /// Plain text (`12.3%`, `1.23e-4`, `12,345`).
    pub text: String,
}

/// `-0.000` is `0.000`: a sign on a number that rounds to zero says nothing.
fn drop_negative_zero(text: String) -> String {
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_owned(),
        _ => text,
    }
}

fn thousands(integer: i128) -> (String, String) {
    let digits = integer.unsigned_abs().to_string();
    let groups: Vec<&str> = {
        let first = digits.len() % 3;
        let mut groups = Vec::new();
        if first > 0 {
            groups.push(&digits[..first]);
        }
        let mut at = first;
        while at < digits.len() {
            groups.push(&digits[at..at + 3]);
            at += 3;
        }
        groups
    };
    let sign = if integer < 0 { "-" } else { "" };
    (
        format!("{sign}{}", groups.join("{,}")),
        format!("{sign}{}", groups.join(",")),
    )
}

/// A minus sign in LaTeX text mode would print as a hyphen.
fn latex_sign(text: &str) -> String {
    match text.strip_prefix('-') {
        Some(rest) => format!("\\ensuremath{{-}}{rest}"),
        None => text.to_owned(),
    }
}

impl NumberFormat {
    /// Writes `value`. Non-finite numbers are written `nan`/`inf` (LaTeX: `--`).
    pub fn write(&self, value: f64) -> Written {
        if !value.is_finite() {
            return Written {
                latex: "--".to_owned(),
                text: value.to_string(),
            };
        }
        let digits = usize::from(self.digits);
        match self.kind {
            RawFormat::Fixed => {
                let text = drop_negative_zero(format!("{value:.digits$}"));
                Written {
                    latex: latex_sign(&text),
                    text,
                }
            }
            RawFormat::Significant => {
                let significant = digits.max(1);
                // The exponent after rounding to `significant` digits (9.996 → 1.00e1).
                let exponent = format!("{value:.prec$e}", prec = significant - 1)
                    .rsplit_once('e')
                    .and_then(|(_, e)| e.parse::<i32>().ok())
                    .unwrap_or(0);
                let decimals = (significant as i32 - 1 - exponent).max(0) as usize;
                let text = if value == 0.0 {
                    format!("{:.prec$}", 0.0, prec = significant - 1)
                } else if (significant as i32 - 1 - exponent) < 0 {
                    // Round to tens, hundreds, …: 12345 with 3 digits is 12300.
                    let unit = 10f64.powi(exponent + 1 - significant as i32);
                    format!("{:.0}", (value / unit).round() * unit)
                } else {
                    format!("{value:.decimals$}")
                };
                let text = drop_negative_zero(text);
                Written {
                    latex: latex_sign(&text),
                    text,
                }
            }
            RawFormat::Scientific => {
                let text = format!("{value:.digits$e}");
                let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
                Written {
                    latex: format!("\\ensuremath{{{mantissa}\\times10^{{{exponent}}}}}"),
                    text,
                }
            }
            RawFormat::Percent => {
                let text = drop_negative_zero(format!("{:.digits$}", value * 100.0));
                Written {
                    latex: format!("{}\\%", latex_sign(&text)),
                    text: format!("{text}%"),
                }
            }
            RawFormat::Integer => {
                let (latex, text) = thousands(value.round() as i128);
                Written {
                    latex: latex_sign(&latex),
                    text,
                }
            }
        }
    }

    /// Writes a range `low--high` (LaTeX) / `low–high` (text).
    pub fn write_range(&self, low: f64, high: f64) -> Written {
        let (a, b) = (self.write(low), self.write(high));
        Written {
            latex: format!("{}--{}", a.latex, b.latex),
            text: format!("{}–{}", a.text, b.text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: RawFormat, digits: u8, value: f64) -> (String, String) {
        let w = NumberFormat { kind, digits }.write(value);
        (w.latex, w.text)
    }

    #[test]
    fn each_format_writes_latex_and_text() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(text(RawFormat::Fixed, 3, 3.92149), s("3.921", "3.921"));
        assert_eq!(text(RawFormat::Fixed, 2, -0.001), s("0.00", "0.00"));
        assert_eq!(
            text(RawFormat::Fixed, 1, -2.25),
            s("\\ensuremath{-}2.2", "-2.2")
        );
        assert_eq!(
            text(RawFormat::Significant, 3, 0.0039215),
            s("0.00392", "0.00392")
        );
        assert_eq!(text(RawFormat::Significant, 3, 9.996), s("10.0", "10.0"));
        assert_eq!(
            text(RawFormat::Significant, 3, 12345.0),
            s("12300", "12300")
        );
        assert_eq!(
            text(RawFormat::Scientific, 2, 0.00012345),
            s("\\ensuremath{1.23\\times10^{-4}}", "1.23e-4")
        );
        assert_eq!(text(RawFormat::Percent, 1, 0.3921), s("39.2\\%", "39.2%"));
        assert_eq!(
            text(RawFormat::Integer, 0, 1234567.4),
            s("1{,}234{,}567", "1,234,567")
        );
        assert_eq!(text(RawFormat::Integer, 0, 999.0), s("999", "999"));
        let range = NumberFormat {
            kind: RawFormat::Fixed,
            digits: 1,
        }
        .write_range(1.04, 2.96);
        assert_eq!(
            (range.latex.as_str(), range.text.as_str()),
            ("1.0--3.0", "1.0–3.0")
        );
    }
}
