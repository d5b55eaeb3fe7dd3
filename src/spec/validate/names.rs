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
