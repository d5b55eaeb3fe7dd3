//! Grid expansion: a model group's axes become (repo, revision) instances.
//!
//! Cartesian product by default; axes named in `zip` advance together (one value each per
//! step); `exclude` drops combinations matching every entry of a rule; `include` adds
//! combinations. The order is deterministic: axes in the group's order, the last one fastest.

use std::collections::BTreeMap;

use serde::Serialize;

use super::diag::Diagnostic;
use super::reference::Reference;
use super::types::{Family, ModelGroup, ModelSource};

/// One model at one revision, after expansion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ModelInstance {
    /// Index of the group it came from.
    pub group: usize,
    /// Architecture family the spec names; `None`: whatever `config.json` says.
    pub family: Option<Family>,
    /// Where its files are.
    pub source: ModelSource,
    /// Requested revision (branch, tag or sha).
    pub revision: String,
    /// Axis values that produced it (`revision` included).
    pub axes: BTreeMap<String, String>,
    /// The adapter trained on it, for a group with `adapter:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<AdapterInstance>,
    /// Its `source` is not known yet: the adapter's config names it ([`ModelInstance::with_base`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub base_from_adapter: bool,
}

impl ModelInstance {
    /// This instance with its base taken from its adapter's config (`base_model_name_or_path`,
    /// read by the one reference grammar); unchanged when the spec names the base.
    pub fn with_base(mut self, base_model_name_or_path: &str) -> Self {
        if self.base_from_adapter {
            self.source = source_of(base_model_name_or_path);
            self.base_from_adapter = false;
        }
        self
    }
}

/// One adapter after expansion: the group's `adapter:` templates filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct AdapterInstance {
    /// Where its files are.
    pub source: ModelSource,
    /// Requested revision of its repo.
    pub revision: String,
    /// Folder inside the repo (`None`: the root).
    pub subfolder: Option<String>,
}

impl AdapterInstance {
    /// `repo@revision[/subfolder]`, for labels.
    pub fn label(&self) -> String {
        match &self.subfolder {
            Some(folder) => format!("{}@{}/{folder}", self.source, self.revision),
            None => format!("{}@{}", self.source, self.revision),
        }
    }
}

/// Expands one group; warnings (rules that change nothing) go to `diagnostics`.
pub fn expand_group(group: &ModelGroup, diagnostics: &mut Vec<Diagnostic>) -> Vec<ModelInstance> {
    let base = format!("/models/{}", group.index);
    // Zipped axes form one "super-axis" whose steps carry a value for each member.
    let mut dimensions: Vec<Vec<Vec<(String, String)>>> = Vec::new();
    let zipped: Vec<&super::types::Axis> = group
        .axes
        .iter()
        .filter(|a| group.zip.contains(&a.name))
        .collect();
    for axis in &group.axes {
        if group.zip.contains(&axis.name) {
            if zipped.first().is_some_and(|first| first.name == axis.name) {
                let steps = (0..axis.values.len())
                    .map(|i| {
                        zipped
                            .iter()
                            .map(|a| (a.name.clone(), a.values[i].clone()))
                            .collect()
                    })
                    .collect();
                dimensions.push(steps);
            }
        } else {
            dimensions.push(
                axis.values
                    .iter()
                    .map(|v| vec![(axis.name.clone(), v.clone())])
                    .collect(),
            );
        }
    }
    let mut combinations: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for dimension in &dimensions {
        let mut next = Vec::with_capacity(combinations.len() * dimension.len());
        for combination in &combinations {
            for step in dimension {
                let mut c = combination.clone();
                c.extend(step.iter().cloned());
                next.push(c);
            }
        }
        combinations = next;
    }
    for (r, rule) in group.exclude.iter().enumerate() {
        let before = combinations.len();
        combinations.retain(|c| {
            !rule
                .iter()
                .all(|(axis, values)| c.get(axis).is_some_and(|v| values.contains(v)))
        });
        if combinations.len() == before {
            diagnostics.push(
                Diagnostic::warning(
                    format!("{base}/exclude/{r}"),
                    "this `exclude` rule matches no combination",
                )
                .with_help("check the axis values; the rule has no effect"),
            );
        }
    }
    for (r, extra) in group.include.iter().enumerate() {
        if combinations.contains(extra) {
            diagnostics.push(Diagnostic::warning(
                format!("{base}/include/{r}"),
                "this `include` adds a combination that is already in the grid",
            ));
        } else {
            combinations.push(extra.clone());
        }
    }
    combinations
        .into_iter()
        .map(|axes| {
            let rendered = render(&group.repo, &axes);
            let source = source_of(&rendered);
            let revision = axes
                .get("revision")
                .cloned()
                .unwrap_or_else(|| "main".to_owned());
            let adapter = group.adapter.as_ref().map(|a| AdapterInstance {
                source: source_of(&render(&a.repo, &axes)),
                revision: render(&a.revision, &axes),
                subfolder: a.subfolder.as_ref().map(|f| render(f, &axes)),
            });
            ModelInstance {
                group: group.index,
                family: group.family,
                source,
                revision,
                axes,
                adapter,
                base_from_adapter: group.base_from_adapter,
            }
        })
        .collect()
}

/// Fills `{axis}` placeholders.
pub fn render(template: &str, axes: &BTreeMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (name, value) in axes {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Placeholders of a template, or the byte offset of an unbalanced brace.
pub fn placeholders(template: &str) -> Result<Vec<String>, usize> {
    let mut names = Vec::new();
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(offset + open);
        }
        let close = rest[open + 1..].find(['{', '}']).map(|c| c + open + 1);
        match close {
            Some(close) if rest.as_bytes()[close] == b'}' => {
                names.push(rest[open + 1..close].to_owned());
                offset += close + 1;
                rest = &rest[close + 1..];
            }
            _ => return Err(offset + open),
        }
    }
    Ok(names)
}

/// Where a rendered repo string points, by the one reference grammar ([`Reference`]). A text
/// the grammar refuses (`local://name`) stays a Hub id, for the resolver to refuse with its
/// own words.
pub fn source_of(repo: &str) -> ModelSource {
    match Reference::parse(repo) {
        Ok(reference) => reference.model_source(),
        Err(_) => ModelSource::Hub(repo.to_owned()),
    }
}
