//! Plan nodes: kinds, parameters, and the canonical records their ids hash.

use serde::Serialize;

use super::id::NodeId;
use crate::spec::{Between, Hook, OverlapK};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Pin a repo revision to a commit sha.
    Resolve,
    /// One forward pass of one model revision over one token shard, feeding every hook and layer.
    Capture,
    /// One uploaded file: one hook at one layer over one shard.
    Artifact,
    /// Spectrum of one (model, revision, hook, layer), accumulated over its shards.
    Spectrum,
    /// Subspace overlap of two spectra.
    Overlap,
    /// Singular values of one weight module (or its delta from a base revision).
    WeightSpectrum,
    /// Top singular vectors of a base model's weights matched by one module pattern, shared by
    /// every adapter trained on that base.
    BaseSvd,
    /// Spectra of one adapter's updates ΔW and their geometry against the base's weights.
    UpdateGeometry,
    /// The ledger commit recording one model revision's results (or the final compaction).
    LedgerCommit,
}

impl NodeKind {
    /// Every kind, in pipeline order.
    pub const ALL: [NodeKind; 9] = [
        NodeKind::Resolve,
        NodeKind::Capture,
        NodeKind::Artifact,
        NodeKind::Spectrum,
        NodeKind::Overlap,
        NodeKind::WeightSpectrum,
        NodeKind::BaseSvd,
        NodeKind::UpdateGeometry,
        NodeKind::LedgerCommit,
    ];

    /// Name as written in plans and ledgers.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Resolve => "resolve",
            NodeKind::Capture => "capture",
            NodeKind::Artifact => "artifact",
            NodeKind::Spectrum => "spectrum",
            NodeKind::Overlap => "overlap",
            NodeKind::WeightSpectrum => "weight_spectrum",
            NodeKind::BaseSvd => "base_svd",
            NodeKind::UpdateGeometry => "update_geometry",
            NodeKind::LedgerCommit => "ledger_commit",
        }
    }

    /// Version of the kind's semantics: bump it when the same parameters would give other bytes.
    pub fn version(self) -> u32 {
        1
    }
}

/// Which windows of the token stream a capture covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Windows {
    /// Windows `[start, end)`.
    Range([u64; 2]),
    /// Every window the data yields (inline data, one shard).
    All(AllWindows),
}

/// Marker serialized as `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AllWindows {
    /// All windows.
    All,
}

/// Parameters of a node. Indices refer to [`super::Plan::models`] and the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    /// Resolve a model revision.
    Resolve {
        /// Model index.
        model: u32,
    },
    /// Capture one shard.
    Capture {
        /// Model index.
        model: u32,
        /// Shard number.
        shard: u32,
        /// Windows covered.
        windows: Windows,
    },
    /// One artifact.
    Artifact {
        /// Model index.
        model: u32,
        /// Shard number.
        shard: u32,
        /// Hook.
        hook: Hook,
        /// Layer (`None` for `ln_final`).
        layer: Option<u32>,
    },
    /// A spectrum.
    Spectrum {
        /// Model index.
        model: u32,
        /// Hook.
        hook: Hook,
        /// Layer.
        layer: Option<u32>,
        /// Top eigenvalues recorded.
        top_k: u32,
    },
    /// An overlap; inputs are `[base spectrum, other spectrum]`.
    Overlap {
        /// Base model index.
        base: u32,
        /// Other model index.
        other: u32,
        /// Hook.
        hook: Hook,
        /// Layer.
        layer: Option<u32>,
        /// Compared across.
        between: Between,
        /// Subspace sizes (shared by every overlap of one analysis).
        k: std::sync::Arc<OverlapK>,
    },
    /// A weight spectrum.
    WeightSpectrum {
        /// Model index.
        model: u32,
        /// Module pattern.
        module: String,
        /// Base model index for a delta.
        delta_from: Option<u32>,
    },
    /// The base's top singular vectors of the weights one module pattern matches.
    BaseSvd {
        /// Model index (the base).
        model: u32,
        /// Module pattern.
        module: String,
        /// Singular vector pairs kept.
        keep: u32,
    },
    /// One adapter's updates of the weights one module pattern matches; input: the base's
    /// `base_svd` node of that pattern.
    UpdateGeometry {
        /// Adapter index ([`super::Plan::adapters`]).
        adapter: u32,
        /// Model index of its base.
        model: u32,
        /// Module pattern.
        module: String,
        /// Subspace sizes (shared by every node of one analysis).
        k: std::sync::Arc<Vec<crate::analysis::SubspaceChoice>>,
    },
    /// A ledger commit (`None`: the final compaction).
    LedgerCommit {
        /// Model index.
        model: Option<u32>,
    },
}

/// One node of the plan.
#[derive(Debug, Clone)]
pub struct Node {
    /// Kind.
    pub kind: NodeKind,
    /// Parameters.
    pub params: Params,
    /// Indices of input nodes (always earlier in [`super::Plan::nodes`]).
    pub inputs: Vec<u32>,
    /// Content-addressed id; `None` while a pin it depends on is unknown.
    pub id: Option<NodeId>,
}

/// The canonical record of a node: fields declared in sorted order, and every params struct
/// too, so serde_json writes canonical JSON directly (a test checks this against
/// [`super::id::canonical_json`] for every node of the committed sweeps).
#[derive(Debug, Serialize)]
pub struct Record<'a, P: Serialize> {
    /// Input ids.
    pub inputs: Vec<String>,
    /// Kind.
    pub kind: &'static str,
    /// Parameters.
    pub params: P,
    /// Pins (commit shas, data hash, dtype, device class).
    pub pins: &'a serde_json::Value,
    /// Kind version.
    pub version: u32,
}
