//! Labels, parameters and canonical records of nodes (the text behind each id).

use serde::Serialize;

use super::node::{Node, NodeKind, Params, Record, Windows};
use super::{NodeId, Plan};
use crate::spec::{Between, ModelSource, OverlapK};

// Parameter structs: fields in sorted order (see `node::Record`).

#[derive(Serialize)]
pub(super) struct ResolveParams<'a> {
    model: String,
    revision: &'a str,
}

#[derive(Serialize)]
pub(super) struct CaptureParams<'a> {
    model: String,
    prepend_bos: bool,
    revision: &'a str,
    seq_len: u32,
    shard: u32,
    windows: Windows,
}

#[derive(Serialize)]
pub(super) struct ArtifactParams {
    dtype: &'static str,
    hook: &'static str,
    layer: Option<u32>,
    /// Absent when unpooled, so unpooled artifacts keep their ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'static str>,
    shard: u32,
}

#[derive(Serialize)]
pub(super) struct SpectrumParams {
    hook: &'static str,
    layer: Option<u32>,
    top_k: u32,
}

#[derive(Serialize)]
pub(super) struct OverlapParams<'a> {
    between: Between,
    hook: &'static str,
    k: &'a OverlapK,
    layer: Option<u32>,
}

#[derive(Serialize)]
pub(super) struct WeightParams<'a> {
    delta_from: Option<&'a str>,
    module: &'a str,
}

#[derive(Serialize)]
pub(super) struct BaseSvdParams<'a> {
    keep: u32,
    module: &'a str,
}

#[derive(Serialize)]
pub(super) struct UpdateParams<'a> {
    adapter: String,
    adapter_revision: &'a str,
    k: &'a [crate::analysis::SubspaceChoice],
    module: &'a str,
    subfolder: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct CommitParams {
    model: Option<String>,
}

/// Any node's parameters, serialized as the inner struct.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum AnyParams<'a> {
    Resolve(ResolveParams<'a>),
    Capture(CaptureParams<'a>),
    Artifact(ArtifactParams),
    Spectrum(SpectrumParams),
    Overlap(OverlapParams<'a>),
    Weight(WeightParams<'a>),
    BaseSvd(BaseSvdParams<'a>),
    Update(UpdateParams<'a>),
    Commit(CommitParams),
}

/// Pins of a capture: fields sorted.
#[derive(Serialize)]
struct CapturePins<'a> {
    commit: &'a str,
    data: &'a str,
    device: &'a str,
    dtype: &'a str,
}

/// Where the activation artifacts live in an output repo: every path under it is one.
pub const ACTIVATIONS_DIR: &str = "acts/";

/// Path of an artifact in the output repo (docs/ledger.md): readable folders, and a file name
/// ending in the first 12 hex digits of the node id, so different nodes (say, the same shard
/// under another model commit or data hash) never share a place, and the same node always
/// lands in the same one.
pub fn artifact_path(
    model_slug: &str,
    revision: &str,
    hook: &str,
    layer: Option<u32>,
    shard: u32,
    id: &NodeId,
) -> String {
    let id = &id.to_hex()[..12];
    match layer {
        Some(l) => format!(
            "{ACTIVATIONS_DIR}{model_slug}/{revision}/{hook}/layer{l:03}/shard{shard:05}-{id}.safetensors"
        ),
        None => format!(
            "{ACTIVATIONS_DIR}{model_slug}/{revision}/{hook}/shard{shard:05}-{id}.safetensors"
        ),
    }
}

/// A model made safe as one path segment: `EleutherAI/pythia-70m` → `EleutherAI--pythia-70m`;
/// a local folder becomes `path--NAME`.
pub fn model_slug(source: &ModelSource) -> String {
    let text = match source {
        ModelSource::Hub(id) | ModelSource::Local(id) => id.clone(),
        ModelSource::Path(path) => {
            format!(
                "path/{}",
                path.file_name()
                    .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
            )
        }
    };
    text.split('/')
        .map(|part| {
            part.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("--")
}

impl Plan {
    /// Where a node's file goes in the output repo: artifacts under `acts/`, spectra under
    /// `spectra/`; `None` for kinds without a file, or while the node is unpinned.
    pub fn file_path(&self, node: &Node) -> Option<String> {
        let id = node.id.as_ref()?;
        match &node.params {
            Params::Artifact {
                model,
                shard,
                hook,
                layer,
            } => Some(artifact_path(
                &self.models[*model as usize].slug,
                self.revision(*model),
                hook.name(),
                *layer,
                *shard,
                id,
            )),
            Params::Spectrum {
                model, hook, layer, ..
            } => {
                let m = &self.models[*model as usize];
                let base = format!("spectra/{}/{}/{}", m.slug, m.instance.revision, hook.name());
                let short = &id.to_hex()[..12];
                Some(match layer {
                    Some(l) => format!("{base}/layer{l:03}-{short}.safetensors"),
                    None => format!("{base}/final-{short}.safetensors"),
                })
            }
            Params::WeightSpectrum {
                model,
                module,
                delta_from,
            } => {
                let m = &self.models[*model as usize];
                // `*` is legal in Hub paths but awkward in shells and URLs.
                let module = module.replace('*', "_");
                let delta = match delta_from {
                    Some(b) => format!("-delta-{}", self.revision(*b)),
                    None => String::new(),
                };
                let short = &id.to_hex()[..12];
                Some(format!(
                    "weights/{}/{}/{module}{delta}-{short}.safetensors",
                    m.slug, m.instance.revision
                ))
            }
            Params::BaseSvd { model, module, .. } => {
                let m = &self.models[*model as usize];
                let module = module.replace('*', "_");
                let short = &id.to_hex()[..12];
                Some(format!(
                    "updates/{}/{}/base/{module}-{short}.safetensors",
                    m.slug, m.instance.revision
                ))
            }
            Params::UpdateGeometry {
                adapter, module, ..
            } => {
                let a = &self.adapters[*adapter as usize];
                let m = &self.models[a.base as usize];
                let module = module.replace('*', "_");
                let short = &id.to_hex()[..12];
                let folder = a
                    .instance
                    .subfolder
                    .as_deref()
                    .map_or_else(String::new, |f| format!("{f}/"));
                Some(format!(
                    "updates/{}/{}/{}/{}/{folder}{module}-{short}.safetensors",
                    m.slug, m.instance.revision, a.slug, a.instance.revision
                ))
            }
            _ => None,
        }
    }

    fn model_name(&self, m: u32) -> String {
        self.models[m as usize].instance.source.to_string()
    }

    fn revision(&self, m: u32) -> &str {
        &self.models[m as usize].instance.revision
    }

    /// A short human label, unique within the plan.
    pub fn label(&self, node: &Node) -> String {
        let ml = |m: u32| self.models[m as usize].label();
        let hl =
            |hook: crate::spec::Hook, layer: Option<u32>| hook.full_name(layer.map(|l| l as usize));
        match &node.params {
            Params::Resolve { model } => format!("resolve {}", ml(*model)),
            Params::Capture { model, shard, .. } => format!("capture {} shard {shard}", ml(*model)),
            Params::Artifact {
                model,
                shard,
                hook,
                layer,
            } => format!(
                "artifact {} {} shard {shard}",
                ml(*model),
                hl(*hook, *layer)
            ),
            Params::Spectrum {
                model, hook, layer, ..
            } => format!("spectrum {} {}", ml(*model), hl(*hook, *layer)),
            Params::Overlap {
                base,
                other,
                hook,
                layer,
                ..
            } => {
                format!(
                    "overlap {} vs {} {}",
                    ml(*other),
                    ml(*base),
                    hl(*hook, *layer)
                )
            }
            Params::WeightSpectrum {
                model,
                module,
                delta_from,
            } => match delta_from {
                Some(b) => format!(
                    "weights {} {module} delta from {}",
                    ml(*model),
                    self.revision(*b)
                ),
                None => format!("weights {} {module}", ml(*model)),
            },
            Params::BaseSvd { model, module, .. } => format!("base_svd {} {module}", ml(*model)),
            Params::UpdateGeometry {
                adapter,
                model,
                module,
                ..
            } => format!(
                "update_geometry {} on {} {module}",
                self.adapters[*adapter as usize].label(),
                ml(*model)
            ),
            Params::LedgerCommit { model: Some(m) } => format!("ledger {}", ml(*m)),
            Params::LedgerCommit { model: None } => "ledger final".to_owned(),
        }
    }

    /// The node's parameters as JSON (keys sorted).
    pub fn params_json(&self, node: &Node) -> serde_json::Value {
        serde_json::to_value(self.any_params(node)).unwrap_or_default()
    }

    pub(super) fn any_params<'a>(&'a self, node: &'a Node) -> AnyParams<'a> {
        match &node.params {
            Params::Resolve { model } => AnyParams::Resolve(ResolveParams {
                model: self.model_name(*model),
                revision: self.revision(*model),
            }),
            Params::Capture {
                model,
                shard,
                windows,
            } => AnyParams::Capture(CaptureParams {
                model: self.model_name(*model),
                prepend_bos: self.prepend_bos,
                revision: self.revision(*model),
                seq_len: self.seq_len,
                shard: *shard,
                windows: *windows,
            }),
            Params::Artifact {
                shard, hook, layer, ..
            } => AnyParams::Artifact(ArtifactParams {
                dtype: self.dtype,
                hook: hook.name(),
                layer: *layer,
                pool: self.pool,
                shard: *shard,
            }),
            Params::Spectrum {
                hook, layer, top_k, ..
            } => AnyParams::Spectrum(SpectrumParams {
                hook: hook.name(),
                layer: *layer,
                top_k: *top_k,
            }),
            Params::Overlap {
                hook,
                layer,
                between,
                k,
                ..
            } => AnyParams::Overlap(OverlapParams {
                between: *between,
                hook: hook.name(),
                k,
                layer: *layer,
            }),
            Params::WeightSpectrum {
                module, delta_from, ..
            } => AnyParams::Weight(WeightParams {
                delta_from: delta_from.map(|b| self.revision(b)),
                module,
            }),
            Params::BaseSvd { module, keep, .. } => AnyParams::BaseSvd(BaseSvdParams {
                keep: *keep,
                module,
            }),
            Params::UpdateGeometry {
                adapter, module, k, ..
            } => {
                let a = &self.adapters[*adapter as usize].instance;
                AnyParams::Update(UpdateParams {
                    adapter: a.source.to_string(),
                    adapter_revision: &a.revision,
                    k,
                    module,
                    subfolder: a.subfolder.as_deref(),
                })
            }
            Params::LedgerCommit { model } => AnyParams::Commit(CommitParams {
                model: model.map(|m| self.models[m as usize].label()),
            }),
        }
    }

    fn pins(&self, node: &Node) -> Option<std::borrow::Cow<'_, serde_json::Value>> {
        use std::borrow::Cow;
        let commit_of = |m: u32| self.models[m as usize].commit.as_deref();
        match &node.params {
            Params::Capture { model, .. } => {
                let pins = CapturePins {
                    commit: commit_of(*model)?,
                    data: self.models[*model as usize]
                        .data_hash
                        .as_deref()
                        .or(self.data_hash.as_deref())?,
                    device: &self.device_class,
                    dtype: self.dtype,
                };
                serde_json::to_value(pins).ok().map(Cow::Owned)
            }
            Params::WeightSpectrum { model, .. } | Params::BaseSvd { model, .. } => Some(
                Cow::Owned(serde_json::json!({ "commit": commit_of(*model)? })),
            ),
            // The base is pinned through the input (its base_svd node).
            Params::UpdateGeometry { adapter, .. } => {
                let commit = self.adapters[*adapter as usize].commit.as_deref()?;
                Some(Cow::Owned(serde_json::json!({ "commit": commit })))
            }
            _ => Some(Cow::Borrowed(&self.empty_pins)),
        }
    }

    /// The canonical record of a node, or `None` while a pin or an input id is unknown.
    pub fn record(&self, node: &Node) -> Option<String> {
        let pins = self.pins(node)?;
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &i in &node.inputs {
            inputs.push(self.nodes.get(i as usize)?.id?.to_hex());
        }
        let params = self.any_params(node);
        let record = Record {
            inputs,
            kind: node.kind.as_str(),
            params,
            pins: &pins,
            version: node.kind.version(),
        };
        serde_json::to_string(&record).ok()
    }

    pub(super) fn compute_id(&self, node: &Node) -> Option<NodeId> {
        // Resolve nodes are identified by what they ask for; everything else needs pins.
        if node.kind == NodeKind::Resolve
            || node
                .inputs
                .iter()
                .all(|&i| self.nodes[i as usize].id.is_some())
        {
            self.record(node).map(|r| NodeId::of_record(&r))
        } else {
            None
        }
    }
}
