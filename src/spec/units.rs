//! Byte sizes as people write them: `4GiB`, `256MiB`, `1.5GB`, `1048576`.

/// Units and their multipliers. Binary units are powers of 1024, SI units powers of 1000.
const UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No number in front.
    #[error("`{0}` is not a size; write a number and a unit, like `4GiB`")]
    NotASize(String),
    /// Unknown unit.
    #[error("unknown unit `{unit}` in `{text}`")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
        /// The closest known unit.
        suggestion: Option<&'static str>,
    },
    /// Too large to count in bytes.
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parses a byte size.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number = number.replace('_', "");
    let unit = unit.trim();
    if number.is_empty() {
        return Err(SizeError::NotASize(text.to_owned()));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, m)) => *m,
            None => {
                let suggestion = UNITS
                    .iter()
                    .map(|(name, _)| {
                        (
                            strsim::jaro_winkler(
                                &unit.to_ascii_lowercase(),
                                &name.to_ascii_lowercase(),
                            ),
                            *name,
                        )
                    })
                    .filter(|(score, _)| *score > 0.7)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, name)| name);
                return Err(SizeError::UnknownUnit {
                    text: text.to_owned(),
                    unit: unit.to_owned(),
                    suggestion,
                });
            }
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| SizeError::NotASize(text.to_owned()))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(SizeError::Overflow(text.to_owned()));
    }
    Ok(bytes.round() as u64)
}

/// Renders a byte count for people: `256 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const STEPS: &[(&str, u64)] = &[
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in STEPS {
        if bytes >= *size {
            let value = bytes as f64 / *size as f64;
            return if value >= 100.0 || value.fract() == 0.0 {
                format!("{value:.0} {name}")
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_si_units() {
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1_048_576"), Ok(1 << 20));
    }

    #[test]
    fn refuses_typos_with_a_suggestion() {
        match parse_size("4Gib") {
            Err(SizeError::UnknownUnit { suggestion, .. }) => assert_eq!(suggestion, Some("GiB")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(parse_size("GiB"), Err(SizeError::NotASize(_))));
        assert!(matches!(
            parse_size("1e30TiB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("1.2.3GiB"),
            Err(SizeError::NotASize(_))
        ));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(256 << 20), "256 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(12), "12 B");
    }
}
