//! `models:` groups: families, repos, revisions, zip/product expansion, excludes.

use super::names::is_repo_char;
use super::*;
use crate::spec::diag::Severity;

pub(super) fn scalar_text(value: &RawScalar) -> String {
    match value {
        RawScalar::String(s) => s.clone(),
        RawScalar::Integer(i) => i.to_string(),
        RawScalar::Number(n) => n.to_string(),
        RawScalar::Bool(b) => b.to_string(),
    }
}

pub(super) fn values_of(value: &RawScalarOrList) -> Vec<String> {
    match value {
        RawScalarOrList::List(items) => items.iter().map(scalar_text).collect(),
        RawScalarOrList::One(one) => vec![scalar_text(one)],
    }
}

pub(super) fn model_group(
    index: usize,
    raw: &RawModelGroup,
    d: &mut Vec<Diagnostic>,
) -> Option<ModelGroup> {
    let base = format!("/models/{index}");
    let errors_before = d.len();
    let base_from_adapter = raw.repo.is_none();
    if base_from_adapter && raw.adapter.is_none() {
        d.push(
            Diagnostic::error(&base, "a model group needs `repo`")
                .with_help("give the model's repo: `repo: EleutherAI/pythia-{size}`, `local://NS/NAME` or a folder"),
        );
        return None;
    }
    let repo = raw.repo.clone().unwrap_or_default();
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
    warn_repeated_values(&base, &axes, raw.zip.as_deref().unwrap_or_default(), d);
    check_placeholders(&base, raw, &axes, d)?;
    let axis_names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
    let template_chars_ok = repo
        .chars()
        .all(|c| is_repo_char(c) || matches!(c, '/' | '{' | '}' | ':'));
    if !template_chars_ok {
        d.push(Diagnostic::error(
            format!("{base}/repo"),
            format!("`{repo}` has characters a repo id cannot hold"),
        ));
    }
    let zip: Vec<String> = raw.zip.clone().unwrap_or_default();
    check_zip(&base, &zip, &axes, d);
    let exclude = exclude_rules(&base, raw, &axes, d);
    let include = include_rules(&base, raw, &axis_names, d);
    let family = raw.family.map(|family| match family {
        RawFamily::GptNeox => Family::GptNeox,
        RawFamily::Llama => Family::Llama,
        RawFamily::Gpt2 => Family::Gpt2,
        RawFamily::Qwen2 => Family::Qwen2,
        RawFamily::Qwen3 => Family::Qwen3,
        RawFamily::Mistral => Family::Mistral,
    });
    let has_error = d[errors_before..]
        .iter()
        .any(|x| x.severity == Severity::Error);
    let adapter = raw.adapter.as_ref().map(|a| AdapterTemplate {
        repo: a.repo.clone(),
        revision: a.revision.clone().unwrap_or_else(|| "main".to_owned()),
        subfolder: a.subfolder.clone(),
    });
    if let Some(adapter) = &adapter {
        check_adapter(&base, adapter, d);
    }
    let has_error = has_error
        || d[errors_before..]
            .iter()
            .any(|x| x.severity == Severity::Error);
    (!has_error).then(|| ModelGroup {
        index,
        family,
        repo,
        axes,
        zip,
        exclude,
        include,
        adapter,
        base_from_adapter,
    })
}

/// Warns of a value listed twice on an axis (zipped axes pair values by position, so repeats
/// there are meaningful).
fn warn_repeated_values(base: &str, axes: &[Axis], zipped: &[String], d: &mut Vec<Diagnostic>) {
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
}

/// Checks the repo template's placeholders against the axes, and that every axis is used;
/// `None` when the template does not parse.
fn check_placeholders(
    base: &str,
    raw: &RawModelGroup,
    axes: &[Axis],
    d: &mut Vec<Diagnostic>,
) -> Option<()> {
    let repo = raw.repo.as_deref().unwrap_or_default();
    let used = match placeholders(repo) {
        Ok(used) => used,
        Err(offset) => {
            d.push(
                Diagnostic::error(
                    format!("{base}/repo"),
                    format!("unbalanced brace at character {} of `{repo}`", offset + 1,),
                )
                .with_help("placeholders look like `{size}`"),
            );
            return None;
        }
    };
    let axis_names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
    let mut all_used = used.clone();
    for (field, template) in adapter_templates(raw) {
        match placeholders(template) {
            Ok(names) => {
                for name in names {
                    if !axis_names.contains(&name.as_str()) {
                        let help = match did_you_mean(&name, axis_names.iter().copied()) {
                            Some(hint) => {
                                format!("{hint} (or add `{name}: [..]` to this model group)")
                            }
                            None => format!("add `{name}: [..]` to this model group"),
                        };
                        d.push(
                            Diagnostic::error(
                                format!("{base}/adapter/{field}"),
                                format!("placeholder `{{{name}}}` has no axis"),
                            )
                            .with_help(help),
                        );
                    }
                    all_used.push(name);
                }
            }
            Err(offset) => d.push(
                Diagnostic::error(
                    format!("{base}/adapter/{field}"),
                    format!(
                        "unbalanced brace at character {} of `{template}`",
                        offset + 1
                    ),
                )
                .with_help("placeholders look like `{step}`"),
            ),
        }
    }
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
        if !all_used.contains(axis.0) {
            let mut e = Diagnostic::error(
                format!("{base}/{}", axis.0),
                if raw.adapter.is_some() {
                    format!("axis `{}` is not used in `repo` nor in `adapter`", axis.0)
                } else {
                    format!("axis `{}` is not used in `repo`", axis.0)
                },
            )
            .on_key();
            let known = [
                "family", "repo", "revision", "zip", "exclude", "include", "adapter",
            ];
            e = match did_you_mean(axis.0, known) {
                Some(hint) => e.with_help(hint),
                None if raw.adapter.is_some() => e.with_help(format!(
                    "use it as `{{{}}}` in `repo` or in the adapter's fields, or remove it",
                    axis.0
                )),
                None => e.with_help(format!(
                    "use it as `{{{}}}` in `repo`, or remove it",
                    axis.0
                )),
            };
            d.push(e);
        }
    }
    Some(())
}

/// The adapter's templates with their field names.
fn adapter_templates(raw: &RawModelGroup) -> Vec<(&'static str, &str)> {
    let Some(adapter) = &raw.adapter else {
        return Vec::new();
    };
    let mut out = vec![("repo", adapter.repo.as_str())];
    out.extend(adapter.revision.as_deref().map(|r| ("revision", r)));
    out.extend(adapter.subfolder.as_deref().map(|s| ("subfolder", s)));
    out
}

/// Checks an adapter's templates: characters a repo id, revision or folder can hold, and a
/// subfolder that stays inside the repo.
fn check_adapter(base: &str, adapter: &AdapterTemplate, d: &mut Vec<Diagnostic>) {
    let repo_ok = adapter
        .repo
        .chars()
        .all(|c| is_repo_char(c) || matches!(c, '/' | '{' | '}' | ':'));
    if !repo_ok {
        d.push(Diagnostic::error(
            format!("{base}/adapter/repo"),
            format!("`{}` has characters a repo id cannot hold", adapter.repo),
        ));
    }
    if let Some(subfolder) = &adapter.subfolder {
        let bad = subfolder.is_empty()
            || subfolder.starts_with('/')
            || subfolder
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            || !subfolder
                .chars()
                .all(|c| is_repo_char(c) || matches!(c, '/' | '{' | '}'));
        if bad {
            d.push(
                Diagnostic::error(
                    format!("{base}/adapter/subfolder"),
                    format!("`{subfolder}` is not a folder inside the adapter's repo"),
                )
                .with_help(
                    "write a relative path such as `checkpoint-800` or `runs/a/checkpoint-{step}`",
                ),
            );
        }
    }
}

/// Checks `zip`: at least two axes, each known, all of one length.
fn check_zip(base: &str, zip: &[String], axes: &[Axis], d: &mut Vec<Diagnostic>) {
    let axis_names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
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
}

/// The `exclude` rules, each naming known axes (a value an axis does not have is warned of).
fn exclude_rules(
    base: &str,
    raw: &RawModelGroup,
    axes: &[Axis],
    d: &mut Vec<Diagnostic>,
) -> Vec<BTreeMap<String, Vec<String>>> {
    let axis_names: Vec<&str> = axes.iter().map(|a| a.name.as_str()).collect();
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
    exclude
}

/// The `include` combinations, each giving a value for every axis and no other.
fn include_rules(
    base: &str,
    raw: &RawModelGroup,
    axis_names: &[&str],
    d: &mut Vec<Diagnostic>,
) -> Vec<BTreeMap<String, String>> {
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
        for name in axis_names {
            if !combination.contains_key(*name) {
                d.push(Diagnostic::error(
                    &path,
                    format!("`include` must give a value for axis `{name}`"),
                ));
            }
        }
        include.push(combination);
    }
    include
}
