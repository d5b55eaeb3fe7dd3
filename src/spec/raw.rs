//! Raw spec types: they mirror the YAML file exactly, key for key, and nothing else.
//!
//! These types are the contract: `schemas/sweep.schema.json` is generated from them, and the
//! structural check of a spec file (`spec::schema_check`) runs against that generated schema, so
//! what an editor completes, what the parser accepts and what the docs say cannot drift apart.
//! Only `spec::validate` turns them into a [`crate::spec::SweepSpec`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

/// A sweep spec file, as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "hubsweep sweep spec",
    description = "A declarative sweep: models × revisions × layers → activations and spectra on a Hub."
)]
pub struct RawSpec {
    /// Short name of the sweep (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Where results go: `hf://datasets/NS/NAME`, `hf://models/NS/NAME` or `local://NS/NAME`.
    pub output: String,
    /// License of the results, as a Hub license identifier (`apache-2.0`, `cc-by-4.0`, `mit`,
    /// `other`, …); written into the output repo's dataset card. Default: none stated.
    pub license: Option<String>,
    /// Model groups; each expands over its axes into (repo, revision) pairs.
    #[schemars(length(min = 1))]
    pub models: Vec<RawModelGroup>,
    /// The prompts every model sees.
    pub data: RawData,
    /// Which activations to record.
    pub capture: Option<RawCapture>,
    /// Analyses computed over the captured activations.
    #[serde(default)]
    pub analyses: Vec<RawAnalysis>,
    /// Weight spectroscopy (no forward pass).
    pub weights: Option<RawWeights>,
    /// Resource limits the plan must fit.
    pub limits: Option<RawLimits>,
    /// Where and how to compute.
    pub compute: Option<RawCompute>,
}

/// One group of models: a repo template and the axes that fill it.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RawModelGroup {
    /// Architecture family (`gpt_neox`, `llama`, `gpt2`, `qwen2`, `qwen3`, `mistral`). When
    /// omitted, each checkpoint's `config.json` (`model_type`, else `architectures`) says; when
    /// given, a checkpoint whose config names another family is refused.
    pub family: Option<RawFamily>,
    /// Repo id with `{axis}` placeholders (`EleutherAI/pythia-{size}`), `local://NS/NAME`, or a
    /// local folder (`./path`, `/path`) in HF layout. Required, except in a group with an
    /// `adapter`: there it defaults to the base each adapter's `adapter_config.json` names
    /// (`base_model_name_or_path`).
    pub repo: Option<String>,
    /// Revisions (branches, tags or commit shas); default `main`.
    pub revision: Option<RawScalarOrList>,
    /// Axes that vary together instead of as a product, e.g. `[size, revision]`.
    pub zip: Option<Vec<String>>,
    /// Combinations to drop: each rule maps axes to a value (or list of values).
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, RawScalarOrList>>,
    /// Combinations to add: each rule gives one value for every axis.
    #[serde(default)]
    pub include: Vec<BTreeMap<String, RawScalar>>,
    /// A PEFT LoRA adapter trained on this group's model (the base): its updates ΔW are
    /// analysed by `update_geometry`. Its fields are templates over the group's axes.
    pub adapter: Option<RawAdapter>,
    /// Axes: any other key, with a value or a list of values, used as `{key}` in `repo`.
    #[serde(flatten)]
    pub axes: BTreeMap<String, RawScalarOrList>,
}

/// A PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`); every field may
/// hold `{axis}` placeholders of its model group, e.g. `subfolder: checkpoint-{step}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdapter {
    /// The adapter's repo: a Hub id, `local://NS/NAME`, or a local folder.
    pub repo: String,
    /// Branch, tag or commit of the adapter's repo; default `main`.
    pub revision: Option<String>,
    /// Folder inside the repo holding the adapter, e.g. `checkpoint-800` (how trainers save
    /// intermediate adapters); default: the repo's root.
    pub subfolder: Option<String>,
}

/// Model architecture family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawFamily {
    /// GPT-NeoX (Pythia): parallel residual by default.
    GptNeox,
    /// Llama (and Llama-architecture models such as SmolLM2).
    Llama,
    /// GPT-2: learned positions, `Conv1D` weights.
    Gpt2,
    /// Qwen2 / Qwen2.5: the Llama block with q/k/v biases.
    Qwen2,
    /// Qwen3: the Llama block with per-head q/k norms.
    Qwen3,
    /// Mistral: the Llama block with a sliding window.
    Mistral,
}

/// A scalar axis value as written (`70m`, `1000`, `true`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawScalar {
    /// A string.
    String(String),
    /// An integer.
    Integer(i64),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
}

/// One value or a list of values.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawScalarOrList {
    /// A list of values.
    List(#[schemars(length(min = 1))] Vec<RawScalar>),
    /// A single value.
    One(RawScalar),
}

/// Prompt data: exactly one of `source`, `texts` or `token_ids`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// A `.txt` or `.jsonl` file (relative to the spec file), or `hf://datasets/NS/NAME/FILE@REV`.
    pub source: Option<String>,
    /// Inline prompt texts.
    #[schemars(length(min = 1))]
    pub texts: Option<Vec<String>>,
    /// Inline token ids, one list per prompt.
    #[schemars(length(min = 1))]
    pub token_ids: Option<Vec<Vec<u32>>>,
    /// Field holding the text in a `.jsonl` source.
    pub field: Option<String>,
    /// Upper bound on the tokens fed to each model.
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
    /// Tokens per window (sequence); default 128.
    #[schemars(range(min = 1))]
    pub seq_len: Option<u32>,
    /// Prepend the BOS token to every window; default true (as TransformerLens does).
    pub prepend_bos: Option<bool>,
}

/// What to capture.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    /// Hook points by TransformerLens name, e.g. `hook_resid_post`, `attn.hook_z`.
    #[schemars(length(min = 1))]
    pub hooks: Vec<RawHook>,
    /// `all`, a list of indices (negative counts from the end), or a range `"start..end:step"`.
    pub layers: Option<RawLayers>,
    /// Stored dtype of activations; default `f32`.
    pub dtype: Option<RawDtype>,
    /// Rows stored per window (sequence): `none` (default, one per token), `mean` (the mean
    /// over the window's tokens) or `last` (its last token).
    pub pool: Option<super::types::Pool>,
}

/// A hook point name (TransformerLens naming): the validated type is used as is.
pub use super::types::Hook as RawHook;

/// Layer selection as written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawLayers {
    /// Explicit indices; negative counts from the end (`-1` is the last layer).
    List(#[schemars(length(min = 1))] Vec<i64>),
    /// `all` or a range `"start..end"` / `"start..end:step"` (end exclusive).
    Text(String),
}

/// Stored activation dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawDtype {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// One analysis.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawAnalysis {
    /// Singular-value spectrum of each (model, revision, hook, layer).
    Spectrum(RawSpectrum),
    /// Subspace overlap between spectra of two revisions or two models.
    Overlap(RawOverlap),
    /// Geometry of each adapter's update ΔW against its base weight W: alignment of their
    /// top singular subspaces, per layer and module.
    UpdateGeometry(RawUpdateGeometry),
}

/// Update–base geometry options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpdateGeometry {
    /// Module patterns over the base's checkpoint keys, as in `weights.modules`, e.g.
    /// `attention.query_key_value`, `self_attn.*_proj`: the modules the adapters train.
    #[schemars(length(min = 1))]
    pub modules: Vec<String>,
    /// Subspace sizes: integers and `srank` (the update's rounded stable rank); default
    /// `[5, 10, 20, srank]`.
    #[schemars(length(min = 1))]
    pub k: Option<Vec<RawScalar>>,
    /// Singular vector pairs of each base weight kept for the comparison (the largest usable
    /// `k`); default 64.
    #[schemars(range(min = 1))]
    pub base_vectors: Option<u32>,
}

/// Spectrum options.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpectrum {
    /// How many top eigenvalues to record; default 64.
    #[schemars(range(min = 1))]
    pub top_k: Option<u32>,
}

/// Overlap options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOverlap {
    /// Compare across `revision` or across `model`.
    pub between: RawBetween,
    /// The value of that axis everything is compared against (e.g. `step0`).
    pub base: String,
    /// Subspace sizes: a list of integers, or `srank` (the rounded stable rank).
    pub k: RawOverlapK,
}

/// Axis an overlap compares across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawBetween {
    /// Two revisions of one model.
    Revision,
    /// Two models (of equal width) at one revision.
    Model,
}

/// Overlap subspace sizes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawOverlapK {
    /// Explicit sizes.
    List(#[schemars(length(min = 1))] Vec<u32>),
    /// `srank`.
    Word(String),
}

/// Weight spectroscopy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWeights {
    /// Module patterns over checkpoint keys, e.g. `attention.query_key_value`, `mlp.*`.
    #[schemars(length(min = 1))]
    pub modules: Vec<String>,
    /// Revision whose weights are subtracted first (spectra of the delta).
    pub delta_from: Option<String>,
}

/// Resource limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// RAM budget for in-flight artifacts and uploads, e.g. `4GiB`; default `2GiB`.
    pub memory: Option<String>,
    /// Target size of one uploaded file, e.g. `256MiB`; default `256MiB`.
    pub artifact_bytes: Option<String>,
}

/// Compute settings.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompute {
    /// `auto`, `cpu` or `cuda:N`; default `auto`.
    pub device: Option<String>,
    /// Sequences per forward pass; default 8.
    #[schemars(range(min = 1))]
    pub batch_size: Option<u32>,
}
