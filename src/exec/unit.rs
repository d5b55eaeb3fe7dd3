//! Work units: the pinned plan cut into pieces that can run on different machines.
//!
//! Unit `K` is everything of the plan's model revision `K` (its resolve, captures, artifacts,
//! spectra, weight spectra and its ledger commit node): no node of it reads another unit's
//! output, so units run in any order, at once, anywhere that reaches the Hub. What spans model
//! revisions (overlaps, the final ledger commit and the compacted index) is the final step,
//! run after every unit.

use std::collections::HashSet;

use crate::ledger::LedgerState;
use crate::plan::{self, Plan};

/// One work unit of a pinned plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkUnit {
    /// The unit's index: the index of its model revision in the plan.
    pub index: usize,
    /// `repo@revision` of its model.
    pub label: String,
    /// Indices of its nodes in the plan.
    pub nodes: Vec<usize>,
}

impl WorkUnit {
    /// The node ids of this unit (hex), in plan order.
    pub fn node_ids(&self, plan: &Plan) -> Vec<String> {
        self.nodes
            .iter()
            .map(|&i| plan.nodes[i].id.map(|id| id.to_hex()).unwrap_or_default())
            .collect()
    }

    /// Whether the ledger has every node of this unit (with its files).
    pub fn is_done(&self, plan: &Plan, state: &LedgerState) -> bool {
        self.node_ids(plan).iter().all(|id| state.is_done(id))
    }
}

/// The work units of a plan, one per model revision, in plan order.
pub fn units(plan: &Plan) -> Vec<WorkUnit> {
    let mut units: Vec<WorkUnit> = plan
        .models
        .iter()
        .enumerate()
        .map(|(index, model)| WorkUnit {
            index,
            label: model.label(),
            nodes: Vec::new(),
        })
        .collect();
    for (i, node) in plan.nodes.iter().enumerate() {
        if let Some(unit) = plan::node_model(node).and_then(|m| units.get_mut(m as usize)) {
            unit.nodes.push(i);
        }
    }
    units
}

/// Indices of the nodes of the final step: those no unit holds.
pub fn final_nodes(plan: &Plan) -> Vec<usize> {
    (0..plan.nodes.len())
        .filter(|&i| {
            plan::node_model(&plan.nodes[i]).is_none_or(|m| m as usize >= plan.models.len())
        })
        .collect()
}

/// Which part of a plan a run executes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UnitSelection {
    /// Everything (a local run).
    #[default]
    All,
    /// These units, and the final step only if `include_final`.
    Units {
        /// Unit indices.
        units: HashSet<usize>,
        /// Whether to run the final step (overlaps, final ledger commit, index).
        include_final: bool,
    },
    /// Only the nodes with these ids (hex), walking every unit and the final step: what
    /// `reproduce` reruns. The set must hold the inputs of each of its nodes; every other node
    /// is treated as already done.
    Nodes(HashSet<String>),
}

impl UnitSelection {
    /// Only the final step.
    pub fn final_only() -> Self {
        Self::Units {
            units: HashSet::new(),
            include_final: true,
        }
    }

    /// One unit, without the final step.
    pub fn unit(index: usize) -> Self {
        Self::Units {
            units: HashSet::from([index]),
            include_final: false,
        }
    }

    /// Whether unit (model revision) `index` is selected.
    pub fn has_unit(&self, index: usize) -> bool {
        match self {
            Self::All | Self::Nodes(_) => true,
            Self::Units { units, .. } => units.contains(&index),
        }
    }

    /// Whether the final step is selected.
    pub fn has_final(&self) -> bool {
        match self {
            Self::All | Self::Nodes(_) => true,
            Self::Units { include_final, .. } => *include_final,
        }
    }

    /// Whether node `id` (hex) is left out by a node selection.
    pub fn excludes(&self, id: &str) -> bool {
        match self {
            Self::Nodes(ids) => !ids.contains(id),
            Self::All | Self::Units { .. } => false,
        }
    }

    /// Whether every selected node is in `done`.
    pub fn all_done(&self, plan: &Plan, done: &HashSet<usize>) -> bool {
        (0..plan.nodes.len()).all(|i| {
            done.contains(&i)
                || match plan::node_model(&plan.nodes[i]) {
                    Some(m) if (m as usize) < plan.models.len() => !self.has_unit(m as usize),
                    _ => !self.has_final(),
                }
        })
    }
}
