//! The sweep name, Hub repo ids and the `output:` repo URL.

use super::*;

pub(super) fn is_repo_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

pub(super) fn check_name(name: &str, d: &mut Vec<Diagnostic>) -> Option<String> {
    if name.is_empty() || name.len() > 96 || !name.chars().all(is_repo_char) {
        d.push(
            Diagnostic::error("/name", format!("invalid sweep name `{name}`"))
                .with_help("use 1–96 letters, digits, `.`, `_` or `-`"),
        );
        return None;
    }
    Some(name.to_owned())
}

/// License identifiers researchers use most, for "did you mean" (the Hub knows more).
const COMMON_LICENSES: &[&str] = &[
    "apache-2.0",
    "mit",
    "cc-by-4.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc0-1.0",
    "odc-by",
    "odbl",
    "openrail",
    "other",
    "unknown",
];

/// Checks a license identifier: the Hub's are lowercase (`apache-2.0`, `cc-by-4.0`), and a card
/// whose `license` the Hub does not know is refused by the Hub at commit time — after the run.
pub(super) fn check_license(license: &str, d: &mut Vec<Diagnostic>) -> Option<String> {
    let well_formed = !license.is_empty()
        && license.len() <= 64
        && license
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '+'));
    if well_formed {
        return Some(license.to_owned());
    }
    let lower = license.to_ascii_lowercase();
    let help = match did_you_mean(&lower, COMMON_LICENSES.iter().copied()) {
        Some(suggestion) => format!("{suggestion} Hub license identifiers are lowercase"),
        None => "use a Hub license identifier: lowercase, e.g. `apache-2.0`, `mit`, \
                 `cc-by-4.0`, or `other`"
            .into(),
    };
    d.push(Diagnostic::error("/license", format!("invalid license `{license}`")).with_help(help));
    None
}

/// Checks `ns/name` the way the Hub does: two parts, allowed characters, no `--`/`..`.
pub fn check_repo_id(id: &str) -> Result<(), String> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() != 2 {
        return Err(format!("`{id}` is not of the form `namespace/name`"));
    }
    for part in parts {
        if part.is_empty() || part.len() > 96 || !part.chars().all(is_repo_char) {
            return Err(format!(
                "`{part}` may only hold letters, digits, `.`, `_` and `-` (1–96 of them)"
            ));
        }
        if part.contains("--")
            || part.contains("..")
            || part.starts_with(['.', '-'])
            || part.ends_with(['.', '-'])
        {
            return Err(format!(
                "`{part}` must not contain `--` or `..` nor start or end with `.` or `-`"
            ));
        }
    }
    Ok(())
}

pub(super) fn parse_output(output: &str, d: &mut Vec<Diagnostic>) -> Option<OutputRepo> {
    let help = "write `hf://datasets/NS/NAME`, `hf://models/NS/NAME` or `local://NS/NAME`";
    let (hub, rest) = if let Some(rest) = output.strip_prefix("hf://") {
        (HubKind::Hf, rest)
    } else if let Some(rest) = output.strip_prefix("local://") {
        (HubKind::Local, rest)
    } else {
        d.push(
            Diagnostic::error("/output", format!("`{output}` is not a repo URL")).with_help(help),
        );
        return None;
    };
    let (repo_type, id) = if let Some(id) = rest.strip_prefix("datasets/") {
        (RepoType::Dataset, id)
    } else if let Some(id) = rest.strip_prefix("models/") {
        (RepoType::Model, id)
    } else if hub == HubKind::Local {
        (RepoType::Dataset, rest)
    } else {
        let mut e = Diagnostic::error(
            "/output",
            format!("`{output}` does not say whether the repo is a dataset or a model"),
        );
        e = e.with_help(format!(
            "write `hf://datasets/{rest}` (results are usually a dataset repo)"
        ));
        d.push(e);
        return None;
    };
    if let Err(message) = check_repo_id(id) {
        d.push(
            Diagnostic::error("/output", format!("invalid output repo: {message}")).with_help(help),
        );
        return None;
    }
    Some(OutputRepo {
        hub,
        repo_type,
        repo_id: id.to_owned(),
    })
}
