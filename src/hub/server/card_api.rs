//! `POST /api/validate-yaml`: the Hub's check of a `README.md`'s front matter, which the official
//! client calls before it commits a card (`HfApi.upload_file` of a README). Without it that
//! client cannot upload a card to this server at all.
//!
//! Body `{"content": README text, "repoType": "model" | "dataset" | "space"}`; the answer is
//! `{"errors": [{"message"}], "warnings": [{"message"}]}` with 200 when there is no error and
//! 400 otherwise (the client raises `ValueError("Invalid metadata in README.md. …")` listing
//! the messages). What is checked is what readers of the metadata rely on: the front matter is
//! a YAML mapping; `license` a lowercase identifier; `tags` a list of strings; each of
//! `configs` a mapping with a string `config_name`, `data_files` (a path, a list of paths, or a
//! list of `{split, path}`), and no config name twice.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest request body: a card is a few KiB; the Hub refuses far smaller ones than this.
pub(super) const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Deserialize)]
struct Request {
    content: String,
    #[serde(rename = "repoType", default)]
    _repo_type: Option<String>,
}

pub(super) async fn validate_yaml(body: axum::body::Bytes) -> Response {
    let request: Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return answer(vec![format!(
                "the body is not `{{\"content\": …}}` JSON: {err}"
            )]);
        }
    };
    answer(check(&request.content))
}

fn answer(errors: Vec<String>) -> Response {
    let status = match errors.is_empty() {
        true => StatusCode::OK,
        false => StatusCode::BAD_REQUEST,
    };
    let errors: Vec<Value> = errors.into_iter().map(|m| json!({"message": m})).collect();
    (status, Json(json!({"errors": errors, "warnings": []}))).into_response()
}

/// Every problem of the card's front matter (none when it has no front matter).
fn check(content: &str) -> Vec<String> {
    let Some(yaml) = crate::ledger::card::front_matter_yaml(content) else {
        return Vec::new();
    };
    let Some(yaml) = yaml else {
        return vec!["the front matter has no closing `---` line".into()];
    };
    let metadata: Value =
        match serde_saphyr::from_str_with_options(yaml, crate::ledger::card::yaml_options()) {
            Ok(Value::Null) => return Vec::new(),
            Ok(metadata) => metadata,
            Err(err) => {
                let message = err.to_string();
                return vec![format!(
                    "the front matter is not valid YAML: {}",
                    message.lines().next().unwrap_or_default()
                )];
            }
        };
    let Some(metadata) = metadata.as_object() else {
        return vec!["the front matter must be a mapping of keys to values".into()];
    };
    let mut errors = Vec::new();
    if let Some(license) = metadata.get("license") {
        let valid = license.as_str().is_some_and(|l| {
            !l.is_empty()
                && l.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '+')
                })
        });
        if !valid {
            errors.push(format!(
                "\"license\" must be a lowercase license identifier (e.g. \"apache-2.0\"), not {license}"
            ));
        }
    }
    if let Some(tags) = metadata.get("tags")
        && !tags
            .as_array()
            .is_some_and(|tags| tags.iter().all(Value::is_string))
    {
        errors.push("\"tags\" must be a list of strings".into());
    }
    if let Some(configs) = metadata.get("configs") {
        check_configs(configs, &mut errors);
    }
    errors
}

fn check_configs(configs: &Value, errors: &mut Vec<String>) {
    let Some(configs) = configs.as_array() else {
        errors.push("\"configs\" must be a list".into());
        return;
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, config) in configs.iter().enumerate() {
        let Some(name) = config.get("config_name").and_then(Value::as_str) else {
            errors.push(format!("\"configs[{i}].config_name\" must be a string"));
            continue;
        };
        if !names.insert(name) {
            errors.push(format!("\"configs\": config name \"{name}\" is used twice"));
        }
        let files_ok = match config.get("data_files") {
            None => true,
            Some(Value::String(_)) => true,
            Some(Value::Array(items)) => items.iter().all(|item| {
                item.is_string()
                    || (item.get("path").is_some_and(|p| {
                        p.is_string()
                            || p.as_array()
                                .is_some_and(|ps| ps.iter().all(Value::is_string))
                    }) && item.get("split").is_none_or(Value::is_string))
            }),
            Some(_) => false,
        };
        if !files_ok {
            errors.push(format!(
                "\"configs[{i}].data_files\" must be a path, a list of paths, or a list of \
                 {{split, path}}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn cards_are_checked_like_the_hub_does() {
        assert!(check("no front matter\n").is_empty());
        assert!(check("---\nlicense: mit\ntags: [a]\n---\nbody").is_empty());
        let ok = "---\nconfigs:\n- config_name: a\n  data_files: x.jsonl\n- config_name: b\n  \
                  data_files:\n  - split: train\n    path: y.jsonl\n---\n";
        assert!(check(ok).is_empty(), "{:?}", check(ok));
        assert_eq!(check("---\nlicense: MIT\n---\n").len(), 1);
        assert_eq!(check("---\ntags: 3\n---\n").len(), 1);
        assert_eq!(check("---\n- a\n---\n").len(), 1);
        assert_eq!(check("---\nkey: [unclosed\n---\n").len(), 1);
        assert_eq!(check("---\nno end\n").len(), 1);
        let twice = "---\nconfigs:\n- config_name: a\n- config_name: a\n---\n";
        assert_eq!(check(twice).len(), 1);
        let bad_files = "---\nconfigs:\n- config_name: a\n  data_files: {x: 1}\n---\n";
        assert_eq!(check(bad_files).len(), 1);
    }
}
