//! Which nodes `reproduce` reruns: `--nodes` patterns, `--sample` of capture groups, and the
//! inputs of whatever is chosen (docs/reproduce.md has the syntax).
//!
//! A pattern is one or more comma-separated terms, all of which must match a node; several
//! patterns choose every node any of them matches. A term is
//!
//! - `kind=K`, `model=M`, `hook=H`, `layer=N` or `id=PREFIX`: that field of the node only;
//! - or a bare word, tried against the kind, the model (`source@revision`), the hook (short
//!   `hook_resid_post` and full `blocks.3.hook_resid_post` names) and as an id prefix.
//!
//! A value containing `*` or `?` is a glob matched against the whole field; otherwise it is a
//! substring (for `kind` and `layer`: the whole field; for `id`: a prefix).

use std::collections::{BTreeSet, VecDeque};

use sha2::{Digest, Sha256};

use crate::plan::{self, NodeKind, Params, Plan};

/// What to rerun.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `--nodes` patterns (any of them; empty: every node).
    pub patterns: Vec<String>,
    /// `--sample N`: rerun N capture groups (a capture and the artifacts it writes).
    pub sample: Option<usize>,
    /// Seed of the sample: the groups whose capture ids hash first under it are taken.
    pub seed: u64,
}

/// Why a selection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A term has an unknown field or an empty value.
    #[error("`--nodes {pattern}`: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// A pattern chooses no node of the plan.
    #[error("`--nodes {pattern}` matches no node of the rebuilt plan")]
    NoMatch {
        /// The pattern.
        pattern: String,
    },
    /// `--sample` on a plan without captures to sample from.
    #[error("`--sample` needs capture nodes, and {what} has none")]
    NothingToSample {
        /// The plan, or the nodes the patterns chose.
        what: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Any,
    Kind,
    Model,
    Hook,
    Layer,
    Id,
}

struct Term {
    field: Field,
    value: String,
}

/// The fields of one node that terms look at.
struct NodeFields {
    kind: &'static str,
    model: Option<String>,
    hook: Option<(&'static str, String)>,
    layer: Option<u32>,
    id: String,
}

impl NodeFields {
    fn of(plan: &Plan, index: usize) -> Self {
        let node = &plan.nodes[index];
        let (hook, layer) = match &node.params {
            Params::Artifact { hook, layer, .. }
            | Params::Spectrum { hook, layer, .. }
            | Params::Overlap { hook, layer, .. } => (
                Some((hook.name(), hook.full_name(layer.map(|l| l as usize)))),
                *layer,
            ),
            _ => (None, None),
        };
        Self {
            kind: node.kind.as_str(),
            model: plan::node_model(node)
                .and_then(|m| plan.models.get(m as usize))
                .map(|m| m.label()),
            hook,
            layer,
            id: node.id.map(|id| id.to_hex()).unwrap_or_default(),
        }
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<Term>, SelectError> {
    let bad = |reason: String| SelectError::BadPattern {
        pattern: pattern.to_owned(),
        reason,
    };
    let mut terms = Vec::new();
    for raw in pattern.split(',').map(str::trim) {
        if raw.is_empty() {
            return Err(bad("an empty term".into()));
        }
        let (field, value) = match raw.split_once('=') {
            Some((key, value)) => {
                let field = match key.trim() {
                    "kind" => Field::Kind,
                    "model" => Field::Model,
                    "hook" => Field::Hook,
                    "layer" => Field::Layer,
                    "id" => Field::Id,
                    other => {
                        return Err(bad(format!(
                            "unknown field `{other}`: use kind, model, hook, layer or id"
                        )));
                    }
                };
                (field, value.trim())
            }
            None => (Field::Any, raw),
        };
        if value.is_empty() {
            return Err(bad(format!("`{raw}` has no value")));
        }
        terms.push(Term {
            field,
            value: value.to_owned(),
        });
    }
    Ok(terms)
}

/// `*` matches any run of characters, `?` one character; the whole text must match.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn is_glob(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// A glob against the whole text, or else a substring of it.
fn loose(value: &str, text: &str) -> bool {
    if is_glob(value) {
        glob(value, text)
    } else {
        text.contains(value)
    }
}

/// A glob against the whole text, or else the whole text.
fn exact(value: &str, text: &str) -> bool {
    if is_glob(value) {
        glob(value, text)
    } else {
        value == text
    }
}

impl Term {
    fn matches(&self, fields: &NodeFields) -> bool {
        let value = self.value.as_str();
        let kind = || exact(value, fields.kind);
        let model = || fields.model.as_deref().is_some_and(|m| loose(value, m));
        let hook = || {
            fields
                .hook
                .as_ref()
                .is_some_and(|(short, full)| loose(value, short) || loose(value, full))
        };
        let id = || {
            if is_glob(value) {
                glob(value, &fields.id)
            } else {
                fields.id.starts_with(&value.to_ascii_lowercase())
            }
        };
        match self.field {
            Field::Kind => kind(),
            Field::Model => model(),
            Field::Hook => hook(),
            Field::Layer => fields.layer.is_some_and(|l| exact(value, &l.to_string())),
            Field::Id => id(),
            Field::Any => kind() || model() || hook() || id(),
        }
    }
}

/// Indices of the plan's nodes to rerun, closed under inputs (a node's inputs come along).
pub fn choose(plan: &Plan, selection: &Selection) -> Result<BTreeSet<usize>, SelectError> {
    let patterns = selection
        .patterns
        .iter()
        .map(|p| Ok((p.as_str(), parse_pattern(p)?)))
        .collect::<Result<Vec<_>, SelectError>>()?;
    let fields: Vec<NodeFields> = (0..plan.nodes.len())
        .map(|i| NodeFields::of(plan, i))
        .collect();
    let mut matched = BTreeSet::new();
    for (pattern, terms) in &patterns {
        let mut any = false;
        for (i, f) in fields.iter().enumerate() {
            if terms.iter().all(|t| t.matches(f)) {
                matched.insert(i);
                any = true;
            }
        }
        if !any {
            return Err(SelectError::NoMatch {
                pattern: (*pattern).to_owned(),
            });
        }
    }
    let everything = patterns.is_empty();
    let chosen: BTreeSet<usize> = match selection.sample {
        None if everything => (0..plan.nodes.len()).collect(),
        None => matched,
        Some(n) => sample(plan, &matched, everything, n, selection.seed)?,
    };
    Ok(with_inputs(plan, chosen))
}

/// The capture groups (a capture and the artifacts it writes) that `--sample` draws from: every
/// capture, or those whose group has a node the patterns matched. The `n` whose capture ids
/// hash first under the seed (sha256 of `{seed}:{id}`) are taken: the same seed and plan always
/// give the same sample.
fn sample(
    plan: &Plan,
    matched: &BTreeSet<usize>,
    everything: bool,
    n: usize,
    seed: u64,
) -> Result<BTreeSet<usize>, SelectError> {
    let group = |c: usize| -> Vec<usize> {
        let mut nodes = vec![c];
        nodes.extend((0..plan.nodes.len()).filter(|&i| {
            plan.nodes[i].kind == NodeKind::Artifact && plan.nodes[i].inputs.contains(&(c as u32))
        }));
        nodes
    };
    let mut groups: Vec<(String, Vec<usize>)> = (0..plan.nodes.len())
        .filter(|&i| plan.nodes[i].kind == NodeKind::Capture)
        .map(|c| (c, group(c)))
        .filter(|(_, nodes)| everything || nodes.iter().any(|i| matched.contains(i)))
        .map(|(c, nodes)| {
            let id = plan.nodes[c].id.map(|id| id.to_hex()).unwrap_or_default();
            let key = hex::encode(Sha256::digest(format!("{seed}:{id}").as_bytes()));
            (key, nodes)
        })
        .collect();
    if groups.is_empty() {
        return Err(SelectError::NothingToSample {
            what: if everything {
                "the plan".into()
            } else {
                "the nodes `--nodes` chose".into()
            },
        });
    }
    groups.sort();
    Ok(groups
        .into_iter()
        .take(n)
        .flat_map(|(_, nodes)| nodes)
        .collect())
}

/// `chosen` and every node it reads from, transitively.
pub fn with_inputs(plan: &Plan, chosen: BTreeSet<usize>) -> BTreeSet<usize> {
    let mut all = chosen.clone();
    let mut queue: VecDeque<usize> = chosen.into_iter().collect();
    while let Some(i) = queue.pop_front() {
        for &input in &plan.nodes[i].inputs {
            if all.insert(input as usize) {
                queue.push_back(input as usize);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_text() {
        assert!(glob("blocks.*.hook_mlp_out", "blocks.12.hook_mlp_out"));
        assert!(glob("*llama*", "local://hubsweep/tiny-llama@main"));
        assert!(glob("spectr?m", "spectrum"));
        assert!(!glob("blocks.*.hook_mlp_out", "blocks.1.hook_mlp_in"));
        assert!(!glob("capture", "captures"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn patterns_parse_fields_and_refuse_unknown_ones() {
        let terms = parse_pattern("spectrum, layer=3,hook=*mlp*").unwrap();
        assert_eq!(terms.len(), 3);
        assert_eq!(terms[1].field, Field::Layer);
        assert!(parse_pattern("depth=3").is_err());
        assert!(parse_pattern("kind=").is_err());
        assert!(parse_pattern("a,,b").is_err());
    }

    #[test]
    fn terms_look_at_their_fields() {
        let fields = NodeFields {
            kind: "artifact",
            model: Some("local://hubsweep/tiny-llama@main".into()),
            hook: Some(("hook_resid_post", "blocks.1.hook_resid_post".into())),
            layer: Some(1),
            id: "abcdef0123".into(),
        };
        let term = |text: &str| parse_pattern(text).unwrap().remove(0);
        assert!(term("artifact").matches(&fields));
        assert!(term("tiny-llama").matches(&fields));
        assert!(term("blocks.1.").matches(&fields));
        assert!(term("abcd").matches(&fields));
        assert!(term("layer=1").matches(&fields));
        assert!(!term("layer=11").matches(&fields));
        assert!(!term("kind=art").matches(&fields));
        assert!(!term("id=bcd").matches(&fields));
        assert!(!term("spectrum").matches(&fields));
    }
}
