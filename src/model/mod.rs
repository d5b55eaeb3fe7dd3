//! Models: checkpoint files, config, weights, and forward passes (GPT-NeoX, Llama, GPT-2,
//! Qwen2/2.5, Qwen3, Mistral) that record activations at TransformerLens hook points.
//!
//! Flow: [`ModelFiles`] (a local folder, the HF cache, or a Hub download) → [`Model::load`]
//! (config + weights in a compute dtype on a device) → [`Model::forward`] with a
//! [`HookRequest`] → [`Activations`] (hook name → tensor). The pass stops after the last
//! requested block. [`gguf::convert_to_dir`] turns a Llama GGUF into the same HF layout.
//! [`adapter::LoraAdapter`] reads a PEFT LoRA adapter as per-module low-rank updates of a base.

pub mod adapter;
mod block;
pub mod config;
mod device;
pub mod family;
pub mod files;
pub mod gguf;

pub mod hooks;
mod ops;
pub mod weights;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

pub use crate::hub::download::HubSource;
pub use config::{Activation, ModelConfig};
pub use device::{ComputeDtype, DeviceSpec};
pub use family::{Family, FusedQkv, MatrixLayout};
pub use files::ModelFiles;
pub use hooks::{Activations, HookPoint, HookRequest};

use block::{Block, BlockContext, Norm};
use hooks::NormHook;
use ops::{Linear, Rotary};
use weights::Weights;

/// Errors from locating, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config or shard index) is not valid JSON for its purpose.
    #[error("`{path}` is not a valid config")]
    ConfigJson {
        /// The file.
        path: PathBuf,
        /// The parse cause.
        #[source]
        source: serde_json::Error,
    },
    /// A config key is missing or has an unusable value.
    #[error("`{path}`: key `{key}` {reason}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `model_type` (or `architectures`) names a family hubsweep has no forward pass for.
    #[error(
        "`{path}`: model_type `{model_type}` is not supported (supported: {})",
        Family::supported_list()
    )]
    UnsupportedModelType {
        /// The config file.
        path: PathBuf,
        /// The unsupported value.
        model_type: String,
    },
    /// `rope_scaling` / `rope_parameters.rope_type` names a scaling that is not implemented.
    #[error(
        "`{path}`: rope scaling `{rope_type}` is not supported (supported: `default`, `llama3`)"
    )]
    UnsupportedRopeScaling {
        /// The config file.
        path: PathBuf,
        /// The unsupported rope type.
        rope_type: String,
    },
    /// A safetensors file is truncated or its header is invalid.
    #[error("`{path}` is not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the tensor key where one is involved).
        reason: String,
    },
    /// The checkpoint lacks a tensor the forward pass needs.
    #[error("weight `{key}` is missing from `{path}`")]
    MissingWeight {
        /// The weights file (or the folder of a sharded checkpoint).
        path: PathBuf,
        /// The missing key.
        key: String,
    },
    /// The checkpoint has block weights the family's forward pass would not read, so its
    /// `model_type` is likely wrong (a Qwen2 checkpoint, whose q/k/v biases a Llama block would
    /// drop, relabelled `llama`).
    #[error(
        "`{path}` has weights a `{family}` model does not use (`{key}`{}): is config.json's model_type right?",
        if *more > 0 { format!(" and {more} more") } else { String::new() }
    )]
    UnusedWeights {
        /// The weights file (or the folder of a sharded checkpoint).
        path: PathBuf,
        /// The family the config names.
        family: &'static str,
        /// The first unused key.
        key: String,
        /// How many more are unused.
        more: usize,
    },
    /// A sequence is longer than the model can run exactly.
    #[error("a sequence of {seq_len} tokens is longer than {limit}: {reason}")]
    SequenceTooLong {
        /// Tokens asked for.
        seq_len: usize,
        /// The longest the model runs exactly.
        limit: usize,
        /// Why.
        reason: &'static str,
    },
    /// A tensor has a shape other than the config implies.
    #[error(
        "weight `{key}` in `{path}` has shape {found:?}, expected {expected:?} from config.json"
    )]
    WeightShape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The key.
        key: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype that is not a float.
    #[error("weight `{key}` in `{path}` has dtype `{dtype}`, expected F16, BF16 or F32")]
    WeightDtype {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A folder has no `config.json` or no safetensors weights.
    #[error("`{path}` has no `{file}`")]
    MissingFile {
        /// The folder.
        path: PathBuf,
        /// What is missing.
        file: String,
    },
    /// The model is not in the given HF cache at that revision.
    #[error("`{repo}` at revision `{revision}` is not in the cache `{cache}`")]
    NotCached {
        /// Repo id.
        repo: String,
        /// Revision asked for.
        revision: String,
        /// The cache folder.
        cache: PathBuf,
    },
    /// Downloading from a Hub endpoint failed (the error names the file, repo, revision and
    /// endpoint, and what to do when the disk is full).
    #[error(transparent)]
    Download(Box<crate::hub::download::DownloadError>),
    /// A hook name is not a TransformerLens hook hubsweep knows.
    #[error("unknown hook `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownHook {
        /// The name given.
        name: String,
        /// The closest known name.
        suggestion: Option<String>,
    },
    /// A hook names a block the model does not have.
    #[error("hook `{name}`: layer `{layer}` is out of range (the model has {n_layers} layers)")]
    LayerOutOfRange {
        /// The hook name.
        name: String,
        /// The layer asked for.
        layer: usize,
        /// Blocks in the model.
        n_layers: usize,
    },
    /// A hook exists in TransformerLens but not in this model's architecture.
    #[error("hook `{name}` does not exist in this model: {reason}")]
    HookNotInModel {
        /// The hook name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The input ids are not a `[batch, pos]` integer tensor within the vocabulary.
    #[error("invalid input ids: {reason}")]
    InputIds {
        /// What is wrong.
        reason: String,
    },
    /// The requested device cannot be used.
    #[error("device `{device}` is not available: {reason}")]
    Device {
        /// The device spec.
        device: String,
        /// Why.
        reason: String,
    },
    /// A tensor operation failed (device out of memory, kernel error).
    #[error("tensor operation failed while {context}")]
    Tensor {
        /// What was being done.
        context: String,
        /// The candle cause.
        #[source]
        source: candle_core::Error,
    },
}

fn tensor_err(context: &str) -> impl FnOnce(candle_core::Error) -> ModelError + '_ {
    move |source| ModelError::Tensor {
        context: context.to_string(),
        source,
    }
}

/// A loaded model, ready to run forward passes.
pub struct Model {
    config: ModelConfig,
    device: Device,
    dtype: DType,
    embed: Tensor,
    /// GPT-2's learned position table `[n_positions, d]`.
    pos_embed: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: Norm,
    unembed: Linear,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads `config.json` and the weights of `files`, converting weights to `dtype` on `device`.
    pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let config = ModelConfig::from_file(&files.config)?;
        let weights = Weights::read(&files.weights, device, dtype)?;
        Self::from_weights(config, &weights, device, dtype)
    }

    /// Builds a model from a parsed config and opened weights.
    pub fn from_weights(
        config: ModelConfig,
        w: &Weights,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        let (v, d) = (config.vocab_size, config.d_model);
        let root = block::gpt2_root(w);
        let (embed_key, norm_key, unembed_keys) = match config.family {
            // transformers 5 renames embed_out to lm_head in memory but writes embed_out.
            Family::GptNeox => (
                "gpt_neox.embed_in.weight".to_owned(),
                "gpt_neox.final_layer_norm".to_owned(),
                &["embed_out.weight", "lm_head.weight"][..],
            ),
            Family::Gpt2 => (
                format!("{root}wte.weight"),
                format!("{root}ln_f"),
                &["lm_head.weight"][..],
            ),
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Mistral => (
                "model.embed_tokens.weight".to_owned(),
                "model.norm".to_owned(),
                &["lm_head.weight"][..],
            ),
        };
        let embed = w.get(&embed_key, &[v, d])?;
        let pos_embed = match config.max_positions {
            Some(p) if config.rope.is_none() => Some(w.get(&format!("{root}wpe.weight"), &[p, d])?),
            _ => None,
        };
        let blocks = (0..config.n_layers)
            .map(|l| Block::load(w, &config, l))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = Norm::load(w, &norm_key, config.family, d)?;
        let unembed_weight = if config.tie_word_embeddings {
            embed.clone()
        } else {
            let present = unembed_keys
                .iter()
                .find(|k| w.contains(k))
                .unwrap_or(&unembed_keys[0]);
            w.get(present, &[v, d])?
        };
        // Block weights nothing read mean the config names the wrong family (a Qwen2
        // checkpoint labelled `llama` would silently lose its q/k/v biases).
        let unused = w.unused_block_keys();
        if let Some(first) = unused.first() {
            return Err(ModelError::UnusedWeights {
                path: w.location(),
                family: config.family.model_type(),
                key: (*first).to_owned(),
                more: unused.len() - 1,
            });
        }
        Ok(Self {
            config,
            device: device.clone(),
            dtype,
            embed,
            pos_embed,
            blocks,
            final_norm,
            // A transposed view: a contiguous copy would cost a vocab-sized buffer per model.
            unembed: Linear::new(&unembed_weight, None, false).map_err(|source| {
                ModelError::Tensor {
                    context: "preparing the unembedding".into(),
                    source,
                }
            })?,
        })
    }

    /// The model's dimensions and settings.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Validates hook names for this model (see [`HookRequest::new`]).
    pub fn request<S: AsRef<str>>(&self, names: &[S]) -> Result<HookRequest, ModelError> {
        HookRequest::new(names, &self.config)
    }

    /// Runs `input_ids` (`[batch, pos]`, U32 or I64, on any device) and returns the requested
    /// activations in the compute dtype, on the model's device. Blocks after the last requested
    /// one are not run.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        request: &HookRequest,
    ) -> Result<Activations, ModelError> {
        let ids = self.check_ids(input_ids)?;
        let (_, t) = ids.dims2().map_err(tensor_err("reading input shape"))?;
        let mut acts = Activations::default();
        let blocks_needed = request.blocks_needed(self.config.n_layers);
        let x = self
            .embed
            .embedding(&ids.flatten_all().map_err(tensor_err("flattening ids"))?)
            .and_then(|e| e.reshape((ids.dim(0)?, t, self.config.d_model)))
            .map_err(tensor_err("embedding tokens"))?;
        if request.wants(HookPoint::Embed) {
            acts.insert(HookPoint::Embed, x.clone());
        }
        let x = match &self.pos_embed {
            Some(table) => {
                let pos = table
                    .narrow(0, 0, t)
                    .and_then(|p| p.unsqueeze(0)?.broadcast_as(x.shape()))
                    .map_err(tensor_err("adding position embeddings"))?;
                if request.wants(HookPoint::PosEmbed) {
                    let pos = pos.contiguous().map_err(tensor_err("copying positions"))?;
                    acts.insert(HookPoint::PosEmbed, pos);
                }
                (x + pos).map_err(tensor_err("adding position embeddings"))?
            }
            None => x,
        };
        let rotary = match &self.config.rope {
            Some(rope) => Some(
                Rotary::new(rope, t, self.dtype, &self.device)
                    .map_err(tensor_err("building rotary tables"))?,
            ),
            None => None,
        };
        let mask =
            ops::causal_mask(t, &self.device).map_err(tensor_err("building the causal mask"))?;
        let ctx = BlockContext {
            cfg: &self.config,
            rotary: rotary.as_ref(),
            mask: &mask,
            request,
        };
        let mut x = x;
        for block in &self.blocks[..blocks_needed] {
            x = block
                .forward(&x, &ctx, &mut acts)
                .map_err(tensor_err("running a block"))?;
        }
        if blocks_needed == self.config.n_layers {
            self.finish(&x, request, &mut acts)
                .map_err(tensor_err("running the final norm"))?;
        }
        Ok(acts)
    }

    fn finish(
        &self,
        x: &Tensor,
        request: &HookRequest,
        acts: &mut Activations,
    ) -> candle_core::Result<()> {
        let wants_final = [NormHook::Scale, NormHook::Normalized, NormHook::Out]
            .iter()
            .any(|h| request.wants(HookPoint::LnFinal(*h)));
        if !wants_final && !request.wants(HookPoint::Logits) {
            return Ok(());
        }
        let parts = [NormHook::Scale, NormHook::Normalized]
            .iter()
            .any(|h| request.wants(HookPoint::LnFinal(*h)));
        let n = self.final_norm.forward(x, self.config.norm_eps, parts)?;
        for (hook, t) in [
            (NormHook::Scale, n.scale.as_ref()),
            (NormHook::Normalized, n.normalized.as_ref()),
            (NormHook::Out, Some(&n.out)),
        ] {
            if let Some(t) = t.filter(|_| request.wants(HookPoint::LnFinal(hook))) {
                acts.insert(HookPoint::LnFinal(hook), t.clone());
            }
        }
        if request.wants(HookPoint::Logits) {
            acts.insert(HookPoint::Logits, self.unembed.forward(&n.out)?);
        }
        Ok(())
    }

    fn check_ids(&self, input_ids: &Tensor) -> Result<Tensor, ModelError> {
        let bad = |reason: String| ModelError::InputIds { reason };
        if input_ids.rank() != 2 {
            return Err(bad(format!(
                "expected shape [batch, pos], got {:?}",
                input_ids.dims()
            )));
        }
        if input_ids.dims().contains(&0) {
            return Err(bad("no tokens".into()));
        }
        self.config.check_seq_len(input_ids.dims()[1])?;
        let ids = match input_ids.dtype() {
            DType::U32 => input_ids.clone(),
            DType::I64 | DType::U8 => input_ids
                .to_dtype(DType::U32)
                .map_err(tensor_err("converting ids"))?,
            other => return Err(bad(format!("expected integer ids, got {other:?}"))),
        };
        let max = ids
            .flatten_all()
            .and_then(|f| f.max(0))
            .and_then(|m| m.to_scalar::<u32>())
            .map_err(tensor_err("checking ids"))?;
        if max as usize >= self.config.vocab_size {
            return Err(bad(format!(
                "token id `{max}` is not below vocab_size `{}`",
                self.config.vocab_size
            )));
        }
        ids.to_device(&self.device)
            .map_err(tensor_err("moving ids to the device"))
    }
}
