//! `data:`: prompt sources, token windows and shards.

use super::*;

pub(super) fn data_spec(raw: &RawData, d: &mut Vec<Diagnostic>) -> Option<DataSpec> {
    let given: Vec<&str> = [
        ("source", raw.source.is_some()),
        ("texts", raw.texts.is_some()),
        ("token_ids", raw.token_ids.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() != 1 {
        let message = if given.is_empty() {
            "`data` needs one of `source`, `texts` or `token_ids`".to_owned()
        } else {
            format!(
                "`data` takes exactly one of `source`, `texts` or `token_ids`, not {}",
                given.join(" and ")
            )
        };
        d.push(Diagnostic::error("/data", message));
        return None;
    }
    let seq_len = raw.seq_len.unwrap_or(128);
    let mut ok = true;
    let source = if let Some(texts) = &raw.texts {
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                d.push(Diagnostic::error(
                    format!("/data/texts/{i}"),
                    "empty prompt text",
                ));
                ok = false;
            }
        }
        DataSource::Texts(texts.clone())
    } else if let Some(ids) = &raw.token_ids {
        for (i, row) in ids.iter().enumerate() {
            if row.is_empty() {
                d.push(Diagnostic::error(
                    format!("/data/token_ids/{i}"),
                    "empty list of token ids",
                ));
                ok = false;
            }
        }
        DataSource::TokenIds(ids.clone())
    } else {
        let source = raw.source.as_deref().unwrap_or_default();
        match data_source(source, raw.field.clone()) {
            Ok(s) => s,
            Err(e) => {
                d.push(e);
                return None;
            }
        }
    };
    let needs_field = matches!(&source, DataSource::File { path, .. } if path.extension().is_some_and(|e| e == "jsonl"))
        || matches!(&source, DataSource::HubFile { path, .. } if path.ends_with(".jsonl"));
    if needs_field && raw.field.is_none() {
        d.push(
            Diagnostic::error("/data/source", "a `.jsonl` source needs `field`")
                .with_help("add `field: text` (the key holding the text)"),
        );
        ok = false;
    }
    if !needs_field && raw.field.is_some() {
        d.push(Diagnostic::warning(
            "/data/field",
            "`field` is only used with `.jsonl` sources",
        ));
    }
    if let Some(max) = raw.max_tokens
        && max < u64::from(seq_len)
    {
        d.push(Diagnostic::error(
            "/data/max_tokens",
            format!("`max_tokens` ({max}) is smaller than one window (`seq_len` = {seq_len})"),
        ));
        ok = false;
    }
    if matches!(source, DataSource::File { .. } | DataSource::HubFile { .. })
        && raw.max_tokens.is_none()
    {
        d.push(
            Diagnostic::error("/data", "a file source needs `max_tokens`").with_help(
                "bound the tokens per model, e.g. `max_tokens: 65536`, so the plan can size shards",
            ),
        );
        ok = false;
    }
    ok.then(|| DataSpec {
        source,
        max_tokens: raw.max_tokens,
        seq_len,
        prepend_bos: raw.prepend_bos.unwrap_or(true),
    })
}

pub(super) fn data_source(source: &str, field: Option<String>) -> Result<DataSource, Diagnostic> {
    let at = "/data/source";
    let hub = if source.starts_with("hf://") {
        Some(HubKind::Hf)
    } else if source.starts_with("local://") {
        Some(HubKind::Local)
    } else {
        None
    };
    if let Some(hub) = hub {
        let rest = source.split_once("://").map(|x| x.1).unwrap_or_default();
        let help = "write `hf://datasets/NS/NAME/path/to/file.jsonl@REVISION`";
        let Some(rest) = rest.strip_prefix("datasets/") else {
            return Err(
                Diagnostic::error(at, format!("`{source}` is not a dataset file")).with_help(help),
            );
        };
        let (rest, revision) = match rest.rsplit_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev.to_owned()),
            _ => {
                return Err(Diagnostic::error(
                    at,
                    format!("`{source}` is not pinned to a revision"),
                )
                .with_help("append `@main`, a tag or a commit sha, so reruns read the same data"));
            }
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(ns), Some(name), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(
                Diagnostic::error(at, format!("`{source}` names no file in the repo"))
                    .with_help(help),
            );
        };
        let repo_id = format!("{ns}/{name}");
        check_repo_id(&repo_id)
            .map_err(|m| Diagnostic::error(at, format!("invalid dataset repo: {m}")))?;
        if !(path.ends_with(".txt") || path.ends_with(".jsonl")) {
            return Err(Diagnostic::error(
                at,
                format!("`{path}` is neither `.txt` nor `.jsonl`"),
            ));
        }
        return Ok(DataSource::HubFile {
            hub,
            repo_id,
            path: path.to_owned(),
            revision,
            field,
        });
    }
    let path = PathBuf::from(source);
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt" | "jsonl") => Ok(DataSource::File { path, field }),
        _ => Err(Diagnostic::error(
            at,
            format!("`{source}` is neither a `.txt` nor a `.jsonl` file"),
        )
        .with_help(
            "use a local `.txt` (one document per line) or `.jsonl` file, or `hf://datasets/…`",
        )),
    }
}
