//! `--check`: the files a fresh emit would write, compared with the ones in a folder. Each
//! difference names the value, table or figure it belongs to, with the old and the new text.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::render::{Item, OutputFile};

/// One thing that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `value \srankNeox`, `table ranks`, `figure layers`.
    pub what: String,
    /// The file it was found in.
    pub file: String,
    /// What the folder has (`missing` when it has no such file or entry).
    pub old: String,
    /// What the sources give now (`removed` when the folder has an entry that is not emitted).
    pub new: String,
}

const MISSING: &str = "missing";

/// The `\newcommand{\NAME}{BODY}` lines of a `values.tex`, by name; a linked body
/// (`\hubsweepsource{URL}{TEXT}`) is shown as `TEXT (URL)`, so the number comes first.
fn macros(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("\\newcommand{\\")?;
            let (name, body) = rest.split_once("}{")?;
            let body = body.strip_suffix('}')?;
            let shown = body
                .strip_prefix("\\hubsweepsource{")
                .and_then(|linked| linked.strip_suffix('}'))
                .and_then(|linked| linked.split_once("}{"))
                .map_or_else(|| body.to_owned(), |(url, text)| format!("{text} ({url})"));
            Some((name.to_owned(), shown))
        })
        .collect()
}

fn short(text: &str) -> String {
    const LIMIT: usize = 72;
    if text.chars().count() <= LIMIT {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(LIMIT).collect::<String>())
    }
}

/// The first line where `old` and `new` differ, as (old, new), line numbers 1-based.
fn first_line_difference(old: &str, new: &str) -> (String, String) {
    let (mut a, mut b) = (old.lines(), new.lines());
    let mut number = 1;
    loop {
        match (a.next(), b.next()) {
            (Some(x), Some(y)) if x == y => number += 1,
            (x, y) => {
                let show = |l: Option<&str>| {
                    l.map_or("(no line)".to_owned(), |l| {
                        format!("line {number}: {}", short(l))
                    })
                };
                return (show(x), show(y));
            }
        }
    }
}

fn value_differences(old: &str, new: &str, file: &str, out: &mut Vec<Difference>) {
    let (old_macros, new_macros) = (macros(old), macros(new));
    let before = out.len();
    for (name, body) in &new_macros {
        match old_macros.get(name) {
            Some(have) if have == body => {}
            have => out.push(Difference {
                what: format!("value \\{name}"),
                file: file.to_owned(),
                old: have.map_or(MISSING.to_owned(), |h| short(h)),
                new: short(body),
            }),
        }
    }
    for (name, body) in old_macros
        .iter()
        .filter(|(n, _)| !new_macros.contains_key(*n))
    {
        out.push(Difference {
            what: format!("value \\{name}"),
            file: file.to_owned(),
            old: short(body),
            new: "removed".to_owned(),
        });
    }
    if out.len() == before {
        // Same macros, other bytes: a header or a comment.
        let (old, new) = first_line_difference(old, new);
        out.push(Difference {
            what: "values".to_owned(),
            file: file.to_owned(),
            old,
            new,
        });
    }
}

fn json_value_differences(old: &[u8], new: &[u8], file: &str, out: &mut Vec<Difference>) {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("values").and_then(|v| v.as_object()).cloned())
            .unwrap_or_default()
    };
    let (old_values, new_values) = (parse(old), parse(new));
    let before = out.len();
    let text = |v: &serde_json::Value| {
        v.get("text")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_owned()
    };
    for (name, entry) in &new_values {
        match old_values.get(name) {
            Some(have) if have == entry => {}
            have => out.push(Difference {
                what: format!("value \\{name}"),
                file: file.to_owned(),
                old: have.map_or(MISSING.to_owned(), |h| {
                    if text(h) == text(entry) {
                        format!("{} (other record)", text(h))
                    } else {
                        text(h)
                    }
                }),
                new: text(entry),
            }),
        }
    }
    for (name, entry) in old_values
        .iter()
        .filter(|(n, _)| !new_values.contains_key(*n))
    {
        out.push(Difference {
            what: format!("value \\{name}"),
            file: file.to_owned(),
            old: text(entry),
            new: "removed".to_owned(),
        });
    }
    if out.len() == before {
        let (old, new) =
            first_line_difference(&String::from_utf8_lossy(old), &String::from_utf8_lossy(new));
        out.push(Difference {
            what: "values".to_owned(),
            file: file.to_owned(),
            old,
            new,
        });
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256 {}", &hex::encode(Sha256::digest(bytes))[..16])
}

/// Compares `expected` with what `existing` reads for each path (`None`: no such file).
pub fn compare(
    expected: &[OutputFile],
    existing: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    for file in expected {
        let what = match &file.item {
            Item::ValuesTex | Item::ValuesJson => "values".to_owned(),
            Item::Table(name) => format!("table {name}"),
            Item::Figure(name) => format!("figure {name}"),
        };
        let Some(old) = existing(&file.path) else {
            out.push(Difference {
                what,
                file: file.path.clone(),
                old: MISSING.to_owned(),
                new: format!("{} bytes", file.bytes.len()),
            });
            continue;
        };
        if old == file.bytes {
            continue;
        }
        match &file.item {
            Item::ValuesTex => value_differences(
                &String::from_utf8_lossy(&old),
                &String::from_utf8_lossy(&file.bytes),
                &file.path,
                &mut out,
            ),
            Item::ValuesJson => json_value_differences(&old, &file.bytes, &file.path, &mut out),
            Item::Table(_) => {
                let (old, new) = first_line_difference(
                    &String::from_utf8_lossy(&old),
                    &String::from_utf8_lossy(&file.bytes),
                );
                out.push(Difference {
                    what,
                    file: file.path.clone(),
                    old,
                    new,
                });
            }
            Item::Figure(_) => out.push(Difference {
                what,
                file: file.path.clone(),
                old: digest(&old),
                new: digest(&file.bytes),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tex(body: &str) -> OutputFile {
        OutputFile {
            path: "values.tex".into(),
            bytes: body.as_bytes().to_vec(),
            item: Item::ValuesTex,
        }
    }

    #[test]
    fn an_edited_macro_is_named_with_old_and_new() {
        let new = tex("% header\n\\newcommand{\\a}{1.000}\n\\newcommand{\\b}{2.000}\n");
        let mut read =
            |_: &str| Some(b"% header\n\\newcommand{\\a}{1.500}\n\\newcommand{\\c}{3}\n".to_vec());
        let found = compare(&[new], &mut read);
        let named: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|d| (d.what.as_str(), d.old.as_str(), d.new.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("value \\a", "1.500", "1.000"),
                ("value \\b", "missing", "2.000"),
                ("value \\c", "3", "removed"),
            ]
        );
        let mut header_only = |_: &str| {
            Some(b"% other header\n\\newcommand{\\a}{1.000}\n\\newcommand{\\b}{2.000}\n".to_vec())
        };
        let found = compare(
            &[tex(
                "% header\n\\newcommand{\\a}{1.000}\n\\newcommand{\\b}{2.000}\n",
            )],
            &mut header_only,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].old, "line 1: % other header");
    }
}
