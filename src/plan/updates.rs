//! Adapters in the plan: each model group's `adapter:` expands into one [`PlannedAdapter`] per
//! grid point, trained on that point's model (its base, a model of the plan like any other).
//! `update_geometry` then adds one `base_svd` node per (base, module pattern) — computed once,
//! whatever the number of adapters and checkpoints trained on that base — and one
//! `update_geometry` node per (adapter, module pattern) reading it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::node::{NodeKind, Params};
use super::{Plan, record::model_slug};
use crate::spec::expand::AdapterInstance;
use crate::spec::{Analysis, Diagnostic, SweepSpec};

/// One adapter (repo, revision, subfolder) in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedAdapter {
    /// The expanded adapter.
    pub instance: AdapterInstance,
    /// Index of its base in [`Plan::models`].
    pub base: u32,
    /// Axis values of the grid point it came from.
    pub axes: BTreeMap<String, String>,
    /// Commit sha (or `sha256:` of a local folder's two files), if pinned.
    pub commit: Option<String>,
    /// The folder holding its files on this machine, if pinned.
    #[serde(skip)]
    pub dir: Option<PathBuf>,
    /// Training step: from a name like `checkpoint-800` or `step1000` (subfolder first, then
    /// revision), else its position among the adapters of its repo.
    pub step: u64,
    /// The adapter's repo as one path segment.
    pub slug: String,
}

impl PlannedAdapter {
    /// `repo@revision[/subfolder]`.
    pub fn label(&self) -> String {
        self.instance.label()
    }
}

/// The training step a name says: `checkpoint-800` → 800, `step1000` → 1000 (also
/// `step-1000`, `step_1000`, `global_step1000`), as trainers and Pythia's branches name them.
pub fn step_of(name: &str) -> Option<u64> {
    let last = name.rsplit('/').next().unwrap_or(name);
    for prefix in ["checkpoint-", "checkpoint_", "step-", "step_", "step"] {
        if let Some(at) = last.rfind(prefix) {
            let digits = &last[at + prefix.len()..];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return digits.parse().ok();
            }
        }
    }
    None
}

/// `instance` with its base looked up in its adapter's config when the spec names none; `None`
/// (with a warning) when the lookup cannot tell, as for a Hub adapter before `run` pins it.
pub(super) fn with_looked_up_base(
    instance: crate::spec::ModelInstance,
    lookup: &dyn super::ModelLookup,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<crate::spec::ModelInstance> {
    if !instance.base_from_adapter {
        return Some(instance);
    }
    let adapter = instance.adapter.as_ref()?;
    if let Some(base) = lookup.adapter_base(adapter) {
        return Some(instance.with_base(&base));
    }
    diagnostics.push(Diagnostic::warning(
        format!("/models/{}", instance.group),
        format!(
            "the base of adapter `{}` is named in its adapter_config.json, read when `run` pins it: not planned here",
            adapter.label()
        ),
    ));
    None
}

impl Plan {
    /// The adapters of the grid, each with its base's model index (looked up by source and
    /// revision in [`Plan::models`]); duplicates are planned once, with a warning.
    pub(super) fn plan_adapters(
        &mut self,
        wanted: Vec<(crate::spec::ModelInstance, AdapterInstance)>,
        lookup: &dyn super::ModelLookup,
    ) {
        let mut per_repo: BTreeMap<String, u64> = BTreeMap::new();
        for (base, adapter) in wanted {
            let Some(m) = self.models.iter().position(|p| {
                p.instance.source == base.source && p.instance.revision == base.revision
            }) else {
                continue;
            };
            if self
                .adapters
                .iter()
                .any(|a| a.instance == adapter && a.base == m as u32)
            {
                self.diagnostics.push(Diagnostic::warning(
                    format!("/models/{}/adapter", base.group),
                    format!(
                        "adapter `{}` appears twice in the grid; planned once",
                        adapter.label()
                    ),
                ));
                continue;
            }
            let position = per_repo.entry(adapter.source.to_string()).or_insert(0);
            let step = adapter
                .subfolder
                .as_deref()
                .and_then(step_of)
                .or_else(|| step_of(&adapter.revision))
                .unwrap_or(*position);
            *position += 1;
            let pin = lookup.adapter(&adapter);
            self.adapters.push(PlannedAdapter {
                slug: model_slug(&adapter.source),
                commit: pin.as_ref().map(|(commit, _)| commit.clone()),
                dir: pin.map(|(_, dir)| dir),
                instance: adapter,
                base: m as u32,
                axes: base.axes,
                step,
            });
        }
    }

    /// `base_svd` and `update_geometry` nodes (see the module docs); each goes into its base
    /// model's ledger commit.
    pub(super) fn add_update_geometry(
        &mut self,
        spec: &SweepSpec,
        resolves: &[u32],
        commits: &mut [(u32, Vec<u32>)],
    ) {
        let Some(geometry) = spec.analyses.iter().find_map(|a| match a {
            Analysis::UpdateGeometry(g) => Some(g),
            _ => None,
        }) else {
            return;
        };
        let k = Arc::new(geometry.k.clone());
        let mut base_nodes: BTreeMap<(u32, usize), u32> = BTreeMap::new();
        for a in 0..self.adapters.len() {
            let m = self.adapters[a].base;
            for (j, module) in geometry.modules.iter().enumerate() {
                let b = match base_nodes.get(&(m, j)) {
                    Some(&b) => b,
                    None => {
                        let b = self.push(
                            NodeKind::BaseSvd,
                            Params::BaseSvd {
                                model: m,
                                module: module.clone(),
                                keep: geometry.base_vectors,
                            },
                            vec![resolves[m as usize]],
                        );
                        commits[m as usize].1.push(b);
                        base_nodes.insert((m, j), b);
                        b
                    }
                };
                let u = self.push(
                    NodeKind::UpdateGeometry,
                    Params::UpdateGeometry {
                        adapter: a as u32,
                        model: m,
                        module: module.clone(),
                        k: k.clone(),
                    },
                    vec![b],
                );
                commits[m as usize].1.push(u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::step_of;

    #[test]
    fn steps_are_read_from_trainer_and_pythia_names() {
        assert_eq!(step_of("checkpoint-800"), Some(800));
        assert_eq!(step_of("runs/a/checkpoint-1200"), Some(1200));
        assert_eq!(step_of("step1000"), Some(1000));
        assert_eq!(step_of("global_step30"), Some(30));
        assert_eq!(step_of("step_7"), Some(7));
        assert_eq!(step_of("main"), None);
        assert_eq!(step_of("checkpoint-final"), None);
        assert_eq!(step_of("stepwise"), None);
    }
}
