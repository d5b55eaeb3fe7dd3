//! Raw → validated: every semantic rule of the spec language, every violation collected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::diag::{Diagnostic, did_you_mean};
use super::expand::{expand_group, placeholders};
use super::raw::*;
use super::types::*;
use super::units::{SizeError, parse_size};

/// Validates a raw spec. Returns the spec when there is no error, and every diagnostic
/// (errors and warnings) either way.
pub fn validate(raw: &RawSpec) -> (Option<SweepSpec>, Vec<Diagnostic>) {
    let mut d = Vec::new();
    let name = check_name(&raw.name, &mut d);
    let output = parse_output(&raw.output, &mut d);
    let models: Vec<ModelGroup> = raw
        .models
        .iter()
        .enumerate()
        .filter_map(|(i, g)| model_group(i, g, &mut d))
        .collect();
    let revisions: BTreeSet<String> = models
        .iter()
        .flat_map(|g| g.axes.iter().filter(|a| a.name == "revision"))
        .flat_map(|a| a.values.clone())
        .collect();
    let data = data_spec(&raw.data, &mut d);
    let capture = raw
        .capture
        .as_ref()
        .and_then(|c| capture_spec(c, &raw.models, &mut d));
    let analyses = analyses(raw, &models, &revisions, &mut d);
    let weights = raw
        .weights
        .as_ref()
        .map(|w| weights_spec(w, &revisions, &mut d));
    let limits = limits(raw.limits.as_ref(), &mut d);
    let compute = compute(raw.compute.as_ref(), &mut d);
    // Expansion warnings (exclude rules matching nothing) belong to validation too.
    let mut instances = 0usize;
    for group in &models {
        instances += expand_group(group, &mut d).len();
    }
    if instances == 0 && !models.is_empty() {
        d.push(
            Diagnostic::error("/models", "the model grid is empty after `exclude`")
                .with_help("loosen the exclude rules"),
        );
    }
    if capture.is_none() && raw.weights.is_none() {
        d.push(
            Diagnostic::error(
                "",
                "nothing to do: the spec has neither `capture` nor `weights`",
            )
            .with_help("add a `capture:` section"),
        );
    }
    let ok = !d.iter().any(|x| x.severity == super::diag::Severity::Error);
    let spec = match (ok, name, output, data) {
        (true, Some(name), Some(output), Some(data)) => Some(SweepSpec {
            name,
            output,
            models,
            data,
            capture,
            analyses,
            weights,
            limits,
            compute,
        }),
        _ => None,
    };
    (spec, d)
}

/// Semantic checks of the sections that are structurally sound, when others are not (so a
/// spec with a typo in `capture` still gets its `limits` units checked in the same run).
pub fn validate_sections(document: &serde_json::Value, broken_paths: &[String]) -> Vec<Diagnostic> {
    let sound = |path: &str| {
        !broken_paths.iter().any(|b| {
            b == path
                || b.starts_with(&format!("{path}/"))
                || path.starts_with(&format!("{b}/"))
                || b.is_empty()
        })
    };
    let section = |key: &str| document.get(key).filter(|_| sound(&format!("/{key}")));
    let mut d = Vec::new();
    if let Some(serde_json::Value::String(name)) = section("name") {
        check_name(name, &mut d);
    }
    if let Some(serde_json::Value::String(output)) = section("output") {
        parse_output(output, &mut d);
    }
    if let Some(data) =
        section("data").and_then(|v| serde_json::from_value::<RawData>(v.clone()).ok())
    {
        data_spec(&data, &mut d);
    }
    if document.get("limits").is_none_or(|_| sound("/limits")) {
        let raw = document
            .get("limits")
            .and_then(|v| serde_json::from_value::<RawLimits>(v.clone()).ok());
        limits(raw.as_ref(), &mut d);
    }
    if let Some(raw) =
        section("compute").and_then(|v| serde_json::from_value::<RawCompute>(v.clone()).ok())
    {
        compute(Some(&raw), &mut d);
    }
    if let Some(serde_json::Value::Array(groups)) = document.get("models") {
        for (i, group) in groups.iter().enumerate() {
            // A misspelt family does not stop the axis and placeholder checks of its group.
            let family_path = format!("/models/{i}/family");
            let only_family = broken_paths
                .iter()
                .filter(|b| {
                    b.starts_with(&format!("/models/{i}/")) || **b == format!("/models/{i}")
                })
                .all(|b| *b == family_path);
            let mut group = group.clone();
            if only_family && let Some(map) = group.as_object_mut() {
                map.insert(
                    "family".to_owned(),
                    serde_json::Value::String("llama".to_owned()),
                );
            }
            if only_family
                && let Ok(raw) = serde_json::from_value::<RawModelGroup>(group)
                && let Some(group) = model_group(i, &raw, &mut d)
            {
                expand_group(&group, &mut d);
            }
        }
    }
    d
}

fn is_repo_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_name(name: &str, d: &mut Vec<Diagnostic>) -> Option<String> {
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

fn parse_output(output: &str, d: &mut Vec<Diagnostic>) -> Option<OutputRepo> {
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

fn scalar_text(value: &RawScalar) -> String {
    match value {
        RawScalar::String(s) => s.clone(),
        RawScalar::Integer(i) => i.to_string(),
        RawScalar::Number(n) => n.to_string(),
        RawScalar::Bool(b) => b.to_string(),
    }
}

fn values_of(value: &RawScalarOrList) -> Vec<String> {
    match value {
        RawScalarOrList::List(items) => items.iter().map(scalar_text).collect(),
        RawScalarOrList::One(one) => vec![scalar_text(one)],
    }
}

fn model_group(index: usize, raw: &RawModelGroup, d: &mut Vec<Diagnostic>) -> Option<ModelGroup> {
    let base = format!("/models/{index}");
    let errors_before = d.len();
    let mut axes: Vec<Axis> = raw
        .axes
        .iter()
        .map(|(name, v)| Axis {
            name: name.clone(),
            values: values_of(v),
        })
        .collect();
    axes.push(Axis {
        name: "revision".to_owned(),
        values: raw
            .revision
            .as_ref()
            .map_or_else(|| vec!["main".to_owned()], values_of),
    });
    let zipped = raw.zip.clone().unwrap_or_default();
    // Zipped axes pair values by position, so repeats there are meaningful.
    for axis in axes.iter().filter(|a| !zipped.contains(&a.name)) {
        let mut seen = BTreeSet::new();
        for value in &axis.values {
            if !seen.insert(value) {
                d.push(Diagnostic::warning(
                    format!("{base}/{}", axis.name),
                    format!("value `{value}` is listed twice"),
                ));
            }
        }
    }
    let used = match placeholders(&raw.repo) {
        Ok(used) => used,
        Err(offset) => {
            d.push(
                Diagnostic::error(
                    format!("{base}/repo"),
                    format!(
                        "unbalanced brace at character {} of `{}`",
                        offset + 1,
                        raw.repo
                    ),
                )
                .with_help("placeholders look like `{size}`"),
            );
            return None;
        }
    };
    let axis_names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
    for name in &used {
        if !axis_names.contains(&name.as_str()) {
            let mut e = Diagnostic::error(
                format!("{base}/repo"),
                format!("placeholder `{{{name}}}` has no axis"),
            )
            .with_help(format!("add `{name}: [..]` to this model group"));
            if let Some(hint) = did_you_mean(name, axis_names.iter().copied()) {
                e = e.with_help(format!(
                    "{hint} (or add `{name}: [..]` to this model group)"
                ));
            }
            d.push(e);
        }
    }
    for axis in &raw.axes {
        if !used.contains(axis.0) {
            let mut e = Diagnostic::error(
                format!("{base}/{}", axis.0),
                format!("axis `{}` is not used in `repo`", axis.0),
            )
            .on_key();
            let known = ["family", "repo", "revision", "zip", "exclude", "include"];
            e = match did_you_mean(axis.0, known) {
                Some(hint) => e.with_help(hint),
                None => e.with_help(format!(
                    "use it as `{{{}}}` in `repo`, or remove it",
                    axis.0
                )),
            };
            d.push(e);
        }
    }
    let template_chars_ok = raw
        .repo
        .chars()
        .all(|c| is_repo_char(c) || matches!(c, '/' | '{' | '}' | ':'));
    if !template_chars_ok {
        d.push(Diagnostic::error(
            format!("{base}/repo"),
            format!("`{}` has characters a repo id cannot hold", raw.repo),
        ));
    }
    let zip: Vec<String> = raw.zip.clone().unwrap_or_default();
    if !zip.is_empty() {
        if zip.len() < 2 {
            d.push(Diagnostic::error(
                format!("{base}/zip"),
                "`zip` needs at least two axes",
            ));
        }
        let mut length: Option<(usize, &str)> = None;
        for (i, name) in zip.iter().enumerate() {
            match axes.iter().find(|a| &a.name == name) {
                None => {
                    let mut e = Diagnostic::error(format!("{base}/zip/{i}"), format!("`zip` names unknown axis `{name}`"));
                    if let Some(hint) = did_you_mean(name, axis_names.iter().copied()) {
                        e = e.with_help(hint);
                    }
                    d.push(e);
                }
                Some(axis) => match length {
                    None => length = Some((axis.values.len(), name)),
                    Some((n, first)) if n != axis.values.len() => d.push(
                        Diagnostic::error(
                            format!("{base}/zip"),
                            format!("zipped axes differ in length: `{first}` has {n} values, `{name}` has {}", axis.values.len()),
                        )
                        .with_help("zipped axes pair their values one to one; give them equally many"),
                    ),
                    Some(_) => {}
                },
            }
        }
    }
    let mut exclude = Vec::new();
    for (r, rule) in raw.exclude.iter().enumerate() {
        let mut parsed = BTreeMap::new();
        for (name, value) in rule {
            let path = format!("{base}/exclude/{r}/{name}");
            match axes.iter().find(|a| &a.name == name) {
                None => {
                    let mut e =
                        Diagnostic::error(&path, format!("`exclude` names unknown axis `{name}`"))
                            .on_key();
                    if let Some(hint) = did_you_mean(name, axis_names.iter().copied()) {
                        e = e.with_help(hint);
                    }
                    d.push(e);
                }
                Some(axis) => {
                    let values = values_of(value);
                    for v in &values {
                        if !axis.values.contains(v) {
                            d.push(Diagnostic::warning(
                                &path,
                                format!("`{v}` is not a value of axis `{name}`"),
                            ));
                        }
                    }
                    parsed.insert(name.clone(), values);
                }
            }
        }
        exclude.push(parsed);
    }
    let mut include = Vec::new();
    for (r, rule) in raw.include.iter().enumerate() {
        let path = format!("{base}/include/{r}");
        let mut combination: BTreeMap<String, String> = rule
            .iter()
            .map(|(k, v)| (k.clone(), scalar_text(v)))
            .collect();
        combination
            .entry("revision".to_owned())
            .or_insert_with(|| "main".to_owned());
        for name in combination.keys() {
            if !axis_names.contains(&name.as_str()) {
                d.push(
                    Diagnostic::error(
                        format!("{path}/{name}"),
                        format!("`include` names unknown axis `{name}`"),
                    )
                    .on_key(),
                );
            }
        }
        for name in &axis_names {
            if !combination.contains_key(*name) {
                d.push(Diagnostic::error(
                    &path,
                    format!("`include` must give a value for axis `{name}`"),
                ));
            }
        }
        include.push(combination);
    }
    let family = match raw.family {
        RawFamily::GptNeox => Family::GptNeox,
        RawFamily::Llama => Family::Llama,
    };
    let has_error = d[errors_before..]
        .iter()
        .any(|x| x.severity == super::diag::Severity::Error);
    (!has_error).then(|| ModelGroup {
        index,
        family,
        repo: raw.repo.clone(),
        axes,
        zip,
        exclude,
        include,
    })
}

fn data_spec(raw: &RawData, d: &mut Vec<Diagnostic>) -> Option<DataSpec> {
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

fn data_source(source: &str, field: Option<String>) -> Result<DataSource, Diagnostic> {
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

fn capture_spec(
    raw: &RawCapture,
    models: &[RawModelGroup],
    d: &mut Vec<Diagnostic>,
) -> Option<CaptureSpec> {
    let mut ok = true;
    let mut hooks = Vec::new();
    for (i, hook) in raw.hooks.iter().enumerate() {
        let hook = *hook;
        if hooks.contains(&hook) {
            d.push(Diagnostic::warning(
                format!("/capture/hooks/{i}"),
                format!("hook `{}` is listed twice", hook.name()),
            ));
            continue;
        }
        if hook == Hook::ResidMid && models.iter().any(|m| m.family == RawFamily::GptNeox) {
            d.push(
                Diagnostic::error(format!("/capture/hooks/{i}"), "`hook_resid_mid` does not exist in GPT-NeoX (Pythia) blocks")
                    .with_help("Pythia's blocks are parallel (attention and MLP read the same input); capture `hook_attn_out` and `hook_resid_pre` instead"),
            );
            ok = false;
        }
        hooks.push(hook);
    }
    let layers = match &raw.layers {
        None => LayerSelection::All,
        Some(RawLayers::List(list)) => LayerSelection::Indices(list.clone()),
        Some(RawLayers::Text(text)) => match parse_layers(text) {
            Ok(layers) => layers,
            Err(message) => {
                d.push(Diagnostic::error("/capture/layers", message).with_help(
                    "write `all`, a list like `[0, 3, -1]`, or a range like `\"0..12:2\"`",
                ));
                ok = false;
                LayerSelection::All
            }
        },
    };
    let dtype = match raw.dtype.unwrap_or(RawDtype::F32) {
        RawDtype::F32 => Dtype::F32,
        RawDtype::F16 => Dtype::F16,
        RawDtype::Bf16 => Dtype::Bf16,
    };
    ok.then_some(CaptureSpec {
        hooks,
        layers,
        dtype,
    })
}

/// Parses `all`, `start..end`, `start..end:step`, `start..` (to the last layer).
pub fn parse_layers(text: &str) -> Result<LayerSelection, String> {
    let text = text.trim();
    if text == "all" {
        return Ok(LayerSelection::All);
    }
    let (range, step) = match text.split_once(':') {
        Some((r, s)) => (r, Some(s)),
        None => (text, None),
    };
    let Some((start, end)) = range.split_once("..") else {
        return Err(format!("`{text}` is not a layer selection"));
    };
    let number = |s: &str, what: &str| -> Result<u32, String> {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{what} `{s}` of range `{text}` is not a non-negative integer"))
    };
    let start = if start.trim().is_empty() {
        0
    } else {
        number(start, "start")?
    };
    let end = if end.trim().is_empty() {
        None
    } else {
        Some(number(end, "end")?)
    };
    let step = match step {
        Some(s) => number(s, "step")?,
        None => 1,
    };
    if step == 0 {
        return Err(format!("step of range `{text}` is 0"));
    }
    if let Some(end) = end
        && end <= start
    {
        return Err(format!(
            "range `{text}` is empty (the end is exclusive and must exceed the start)"
        ));
    }
    Ok(LayerSelection::Range { start, end, step })
}

fn analyses(
    raw: &RawSpec,
    models: &[ModelGroup],
    revisions: &BTreeSet<String>,
    d: &mut Vec<Diagnostic>,
) -> Vec<Analysis> {
    let mut out = Vec::new();
    for (i, analysis) in raw.analyses.iter().enumerate() {
        let path = format!("/analyses/{i}");
        if raw.capture.is_none() {
            d.push(Diagnostic::error(
                &path,
                "analyses need captured activations, but the spec has no `capture`",
            ));
            continue;
        }
        match analysis {
            RawAnalysis::Spectrum(s) => out.push(Analysis::Spectrum {
                top_k: s.top_k.unwrap_or(64),
            }),
            RawAnalysis::Overlap(o) => {
                let k = match &o.k {
                    RawOverlapK::List(list) => {
                        if list.contains(&0) {
                            d.push(Diagnostic::error(
                                format!("{path}/overlap/k"),
                                "`k` values must be at least 1",
                            ));
                        }
                        OverlapK::Sizes(list.clone())
                    }
                    RawOverlapK::Word(w) if w == "srank" => OverlapK::Srank,
                    RawOverlapK::Word(w) => {
                        d.push(
                            Diagnostic::error(
                                format!("{path}/overlap/k"),
                                format!("unknown `k` value `{w}`"),
                            )
                            .with_help("write a list of sizes like `[5, 10, 20]`, or `srank`"),
                        );
                        continue;
                    }
                };
                let between = match o.between {
                    RawBetween::Revision => Between::Revision,
                    RawBetween::Model => Between::Model,
                };
                let candidates: Vec<String> = match between {
                    Between::Revision => revisions.iter().cloned().collect(),
                    Between::Model => models
                        .iter()
                        .flat_map(|g| expand_group(g, &mut Vec::new()))
                        .map(|m| m.source.to_string())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect(),
                };
                if !models.is_empty() && !candidates.contains(&o.base) {
                    let what = if between == Between::Revision {
                        "revision"
                    } else {
                        "model"
                    };
                    let mut e = Diagnostic::error(
                        format!("{path}/overlap/base"),
                        format!("base `{}` is not a {what} of this sweep", o.base),
                    );
                    e = match did_you_mean(&o.base, candidates.iter().map(String::as_str)) {
                        Some(hint) => e.with_help(hint),
                        None => e.with_help(format!(
                            "choose one of {}",
                            candidates
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    };
                    d.push(e);
                }
                out.push(Analysis::Overlap {
                    between,
                    base: o.base.clone(),
                    k,
                });
            }
        }
    }
    out
}

fn weights_spec(
    raw: &RawWeights,
    revisions: &BTreeSet<String>,
    d: &mut Vec<Diagnostic>,
) -> WeightsSpec {
    for (i, module) in raw.modules.iter().enumerate() {
        if module.trim().is_empty() {
            d.push(Diagnostic::error(
                format!("/weights/modules/{i}"),
                "empty module pattern",
            ));
        }
    }
    if let Some(base) = &raw.delta_from
        && !revisions.is_empty()
        && !revisions.contains(base)
    {
        let mut e = Diagnostic::error(
            "/weights/delta_from",
            format!("`delta_from` revision `{base}` is not a revision of this sweep"),
        );
        if let Some(hint) = did_you_mean(base, revisions.iter().map(String::as_str)) {
            e = e.with_help(hint);
        } else {
            e = e.with_help(
                "add it to the models' `revision` list, so its weights are pinned like the others",
            );
        }
        d.push(e);
    }
    WeightsSpec {
        modules: raw.modules.clone(),
        delta_from: raw.delta_from.clone(),
    }
}

fn size(path: &str, text: Option<&String>, default: u64, d: &mut Vec<Diagnostic>) -> u64 {
    let Some(text) = text else { return default };
    match parse_size(text) {
        Ok(0) => {
            d.push(Diagnostic::error(path, "size must be more than 0 bytes"));
            default
        }
        Ok(bytes) => bytes,
        Err(err) => {
            let mut e = Diagnostic::error(path, err.to_string());
            e = match &err {
                SizeError::UnknownUnit { suggestion: Some(s), .. } => e.with_help(format!("did you mean `{s}`? units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")),
                _ => e.with_help("units: B, KiB, MiB, GiB, TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000)"),
            };
            d.push(e);
            default
        }
    }
}

fn limits(raw: Option<&RawLimits>, d: &mut Vec<Diagnostic>) -> Limits {
    let memory = size(
        "/limits/memory",
        raw.and_then(|l| l.memory.as_ref()),
        DEFAULT_MEMORY,
        d,
    );
    let artifact_bytes = size(
        "/limits/artifact_bytes",
        raw.and_then(|l| l.artifact_bytes.as_ref()),
        DEFAULT_ARTIFACT_BYTES,
        d,
    );
    if artifact_bytes > memory {
        d.push(
            Diagnostic::error("/limits/artifact_bytes", "`artifact_bytes` is larger than the `memory` budget")
                .with_help("an artifact is held in memory until uploaded: make `memory` at least twice `artifact_bytes`"),
        );
    }
    Limits {
        memory,
        artifact_bytes,
    }
}

fn compute(raw: Option<&RawCompute>, d: &mut Vec<Diagnostic>) -> Compute {
    let device = match raw.and_then(|c| c.device.as_deref()) {
        None | Some("auto") => DeviceSpec::Auto,
        Some("cpu") => DeviceSpec::Cpu,
        Some("cuda") => DeviceSpec::Cuda(0),
        Some(other) => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(n)) => DeviceSpec::Cuda(n),
            _ => {
                let mut e =
                    Diagnostic::error("/compute/device", format!("unknown device `{other}`"));
                e = e.with_help(
                    did_you_mean(other, ["auto", "cpu", "cuda", "cuda:0"])
                        .unwrap_or_else(|| "write `auto`, `cpu` or `cuda:N`".to_owned()),
                );
                d.push(e);
                DeviceSpec::Auto
            }
        },
    };
    Compute {
        device,
        batch_size: raw.and_then(|c| c.batch_size).unwrap_or(8),
    }
}
