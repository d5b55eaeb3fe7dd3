//! The validated sweep spec: what the rest of hubsweep sees. Every value here has been checked;
//! defaults are filled in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// A validated sweep spec.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSpec {
    /// Sweep name.
    pub name: String,
    /// Where results go.
    pub output: OutputRepo,
    /// License of the results (a Hub license identifier), for the dataset card.
    pub license: Option<String>,
    /// Model groups, each with its axes.
    pub models: Vec<ModelGroup>,
    /// Prompt data.
    pub data: DataSpec,
    /// Activation capture, if any.
    pub capture: Option<CaptureSpec>,
    /// Analyses over captured activations.
    pub analyses: Vec<Analysis>,
    /// Weight spectroscopy, if any.
    pub weights: Option<WeightsSpec>,
    /// Resource limits.
    pub limits: Limits,
    /// Compute settings.
    pub compute: Compute,
}

/// Which Hub a repo lives on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HubKind {
    /// `hf://`: the Hub at `HF_ENDPOINT` (huggingface.co by default).
    Hf,
    /// `local://`: the embedded Hub over the store in `HUBSWEEP_HOME`.
    Local,
}

/// Hub repository type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    /// A model repo.
    Model,
    /// A dataset repo.
    Dataset,
}

/// The output repository of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputRepo {
    /// Which Hub.
    pub hub: HubKind,
    /// Model or dataset repo.
    pub repo_type: RepoType,
    /// `namespace/name`.
    pub repo_id: String,
}

impl fmt::Display for OutputRepo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.repo_type {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        };
        match self.hub {
            HubKind::Hf => write!(f, "hf://{kind}/{}", self.repo_id),
            HubKind::Local => write!(f, "local://{kind}/{}", self.repo_id),
        }
    }
}

/// Model architecture family: the model side's, named in a spec as its `model_type`.
pub use crate::model::Family;

/// A group of models from one repo template.
#[derive(Debug, Clone, Serialize)]
pub struct ModelGroup {
    /// Index of the group in the file (for diagnostics).
    pub index: usize,
    /// Architecture family; `None`: read from each checkpoint's `config.json`.
    pub family: Option<Family>,
    /// Repo template with `{axis}` placeholders.
    pub repo: String,
    /// Axes in a fixed order, `revision` always among them.
    pub axes: Vec<Axis>,
    /// Axes that vary together.
    pub zip: Vec<String>,
    /// Exclusion rules: axis → allowed values; a combination matching every entry is dropped.
    pub exclude: Vec<BTreeMap<String, Vec<String>>>,
    /// Extra combinations: axis → value, for every axis.
    pub include: Vec<BTreeMap<String, String>>,
    /// The adapter trained on each model of the group, as templates over its axes.
    pub adapter: Option<AdapterTemplate>,
    /// The group gives no `repo`: each adapter's base is the one its config names
    /// (`repo` is then empty until pinning fills each model in).
    pub base_from_adapter: bool,
}

/// A model group's `adapter:`: templates over the group's axes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdapterTemplate {
    /// Repo template.
    pub repo: String,
    /// Revision template.
    pub revision: String,
    /// Subfolder template (`None`: the repo's root).
    pub subfolder: Option<String>,
}

/// One axis of a model group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Axis {
    /// Name (`size`, `revision`).
    pub name: String,
    /// Values, as strings, in file order.
    pub values: Vec<String>,
}

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum ModelSource {
    /// A repo on the Hub at `HF_ENDPOINT`.
    Hub(String),
    /// A repo on the embedded Hub.
    Local(String),
    /// A folder in HF layout on this machine.
    Path(PathBuf),
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Hub(id) => f.write_str(id),
            ModelSource::Local(id) => write!(f, "local://{id}"),
            ModelSource::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Prompt data.
#[derive(Debug, Clone, Serialize)]
pub struct DataSpec {
    /// Where the prompts come from.
    pub source: DataSource,
    /// Upper bound on tokens per model.
    pub max_tokens: Option<u64>,
    /// Tokens per window.
    pub seq_len: u32,
    /// Whether each window starts with BOS.
    pub prepend_bos: bool,
}

/// Prompt source.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Inline texts.
    Texts(Vec<String>),
    /// Inline token ids.
    TokenIds(Vec<Vec<u32>>),
    /// A local `.txt` (one document per line) or `.jsonl` (`field` of each record).
    File {
        /// Path as written (relative paths are relative to the spec file).
        path: PathBuf,
        /// JSONL field, for `.jsonl`.
        field: Option<String>,
    },
    /// A file in a dataset repo on a Hub, pinned by revision.
    HubFile {
        /// Which Hub.
        hub: HubKind,
        /// `namespace/name`.
        repo_id: String,
        /// Path of the file in the repo.
        path: String,
        /// Branch, tag or commit sha.
        revision: String,
        /// JSONL field, for `.jsonl`.
        field: Option<String>,
    },
}

/// What to capture.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureSpec {
    /// Hook points.
    pub hooks: Vec<Hook>,
    /// Layers.
    pub layers: LayerSelection,
    /// Stored dtype.
    pub dtype: Dtype,
    /// Rows stored per window (sequence).
    pub pool: Pool,
}

/// How a capture's rows are pooled per window (sequence).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// One row per token (per query token for `attn.hook_pattern`).
    #[default]
    None,
    /// One row per window: the mean over its rows.
    Mean,
    /// One row per window: its last row (the last token).
    Last,
}

impl Pool {
    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::None => "none",
            Pool::Mean => "mean",
            Pool::Last => "last",
        }
    }

    /// The name, or `None` for [`Pool::None`] (what node ids and metadata carry, so that
    /// unpooled captures keep the ids and bytes they always had).
    pub fn pooled(self) -> Option<&'static str> {
        (self != Pool::None).then(|| self.as_str())
    }

    /// Rows `[rows, width]` (row-major, window after window) of `windows` windows pooled into
    /// one row per window; unpooled rows are returned as they are. Returns the rows and their
    /// count.
    pub fn apply(
        self,
        values: Vec<f32>,
        rows: usize,
        width: usize,
        windows: usize,
    ) -> (Vec<f32>, usize) {
        if self == Pool::None || windows == 0 || !rows.is_multiple_of(windows) {
            return (values, rows);
        }
        let per = rows / windows;
        let mut out = Vec::with_capacity(windows * width);
        for w in 0..windows {
            let block = &values[w * per * width..(w + 1) * per * width];
            match self {
                Pool::Last => out.extend_from_slice(&block[(per - 1) * width..]),
                _ => {
                    let mut sum = vec![0f64; width];
                    for row in block.chunks_exact(width) {
                        for (s, v) in sum.iter_mut().zip(row) {
                            *s += f64::from(*v);
                        }
                    }
                    out.extend(sum.into_iter().map(|s| (s / per as f64) as f32));
                }
            }
        }
        (out, windows)
    }
}

/// A hook point, named as TransformerLens names it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum Hook {
    /// `hook_resid_pre`: block input.
    #[serde(rename = "hook_resid_pre")]
    ResidPre,
    /// `hook_resid_mid`: after attention (sequential blocks only).
    #[serde(rename = "hook_resid_mid")]
    ResidMid,
    /// `hook_resid_post`: block output.
    #[serde(rename = "hook_resid_post")]
    ResidPost,
    /// `hook_attn_out`: attention output.
    #[serde(rename = "hook_attn_out")]
    AttnOut,
    /// `hook_mlp_out`: MLP output.
    #[serde(rename = "hook_mlp_out")]
    MlpOut,
    /// `attn.hook_z`: per-head attention output.
    #[serde(rename = "attn.hook_z")]
    AttnZ,
    /// `attn.hook_pattern`: attention probabilities.
    #[serde(rename = "attn.hook_pattern")]
    AttnPattern,
    /// `mlp.hook_post`: MLP activation.
    #[serde(rename = "mlp.hook_post")]
    MlpPost,
    /// `ln_final.hook_normalized`: final norm, before its weight (not per layer).
    #[serde(rename = "ln_final.hook_normalized")]
    LnFinalNormalized,
}

impl Hook {
    /// The TransformerLens name without the block prefix.
    pub fn name(self) -> &'static str {
        match self {
            Hook::ResidPre => "hook_resid_pre",
            Hook::ResidMid => "hook_resid_mid",
            Hook::ResidPost => "hook_resid_post",
            Hook::AttnOut => "hook_attn_out",
            Hook::MlpOut => "hook_mlp_out",
            Hook::AttnZ => "attn.hook_z",
            Hook::AttnPattern => "attn.hook_pattern",
            Hook::MlpPost => "mlp.hook_post",
            Hook::LnFinalNormalized => "ln_final.hook_normalized",
        }
    }

    /// Whether the hook exists once per block (`blocks.{l}.…`) rather than once per model.
    pub fn is_per_layer(self) -> bool {
        self != Hook::LnFinalNormalized
    }

    /// The full TransformerLens name at `layer` (`blocks.3.hook_resid_post`).
    pub fn full_name(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) if self.is_per_layer() => format!("blocks.{l}.{}", self.name()),
            _ => self.name().to_owned(),
        }
    }
}

/// Layer selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerSelection {
    /// Every layer.
    All,
    /// Explicit indices; negative counts from the end.
    Indices(Vec<i64>),
    /// `start..end:step`, end exclusive (`None`: to the last layer).
    Range {
        /// First layer.
        start: u32,
        /// One past the last layer, or the model's depth.
        end: Option<u32>,
        /// Step.
        step: u32,
    },
}

impl LayerSelection {
    /// The layer indices for a model with `depth` layers, sorted and unique, or the first index
    /// that does not exist.
    pub fn resolve(&self, depth: u32) -> Result<Vec<u32>, i64> {
        let mut layers: Vec<u32> = match self {
            LayerSelection::All => (0..depth).collect(),
            LayerSelection::Indices(indices) => {
                let mut out = Vec::with_capacity(indices.len());
                for &i in indices {
                    let resolved = if i < 0 { i64::from(depth) + i } else { i };
                    if resolved < 0 || resolved >= i64::from(depth) {
                        return Err(i);
                    }
                    out.push(resolved as u32);
                }
                out
            }
            LayerSelection::Range { start, end, step } => {
                let end = end.unwrap_or(depth);
                if end > depth {
                    return Err(i64::from(end) - 1);
                }
                (*start..end).step_by(*step as usize).collect()
            }
        };
        layers.sort_unstable();
        layers.dedup();
        Ok(layers)
    }

    /// The largest count of layers this selection can need without knowing the depth.
    pub fn min_depth(&self) -> u32 {
        match self {
            LayerSelection::All => 1,
            LayerSelection::Indices(indices) => indices
                .iter()
                .map(|&i| {
                    if i < 0 {
                        i.unsigned_abs() as u32
                    } else {
                        i as u32 + 1
                    }
                })
                .max()
                .unwrap_or(1),
            LayerSelection::Range { end, .. } => end.unwrap_or(1),
        }
    }
}

/// Stored activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// An analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Analysis {
    /// Spectrum per (model, revision, hook, layer).
    Spectrum {
        /// Top eigenvalues recorded.
        top_k: u32,
    },
    /// Subspace overlap against a base.
    Overlap {
        /// Revision or model axis.
        between: Between,
        /// The base value compared against.
        base: String,
        /// Subspace sizes.
        k: OverlapK,
    },
    /// Update–base geometry of every adapter's updates.
    UpdateGeometry(UpdateGeometrySpec),
}

/// `update_geometry` options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateGeometrySpec {
    /// Module patterns over the base's checkpoint keys.
    pub modules: Vec<String>,
    /// Subspace sizes, in the order given.
    pub k: Vec<crate::analysis::SubspaceChoice>,
    /// Singular vector pairs kept of each base weight.
    pub base_vectors: u32,
}

/// Default `update_geometry.base_vectors`.
pub const DEFAULT_BASE_VECTORS: u32 = 64;

/// Overlap axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Between {
    /// Across revisions of one model.
    Revision,
    /// Across models at one revision.
    Model,
}

/// Overlap subspace sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlapK {
    /// Fixed sizes.
    Sizes(Vec<u32>),
    /// The rounded stable rank of the base.
    Srank,
}

/// Weight spectroscopy.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsSpec {
    /// Module patterns.
    pub modules: Vec<String>,
    /// Base revision for deltas.
    pub delta_from: Option<String>,
}

/// Resource limits, in bytes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// RAM budget for in-flight artifacts and uploads.
    pub memory: u64,
    /// Target size of one uploaded file.
    pub artifact_bytes: u64,
}

/// Default RAM budget for in-flight artifacts.
pub const DEFAULT_MEMORY: u64 = 2 << 30;
/// Default artifact size.
pub const DEFAULT_ARTIFACT_BYTES: u64 = 256 << 20;

/// Compute settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Compute {
    /// Device.
    pub device: DeviceSpec,
    /// Sequences per forward pass.
    pub batch_size: u32,
}

/// Device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSpec {
    /// CUDA if built in and present, else CPU.
    Auto,
    /// CPU.
    Cpu,
    /// CUDA device N.
    Cuda(u32),
}
