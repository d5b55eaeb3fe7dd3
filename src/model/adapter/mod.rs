//! PEFT LoRA adapters as weight updates: a folder with `adapter_config.json` and
//! `adapter_model.safetensors` (as `peft`'s `save_pretrained` writes it, also a trainer's
//! `checkpoint-N/`), read as one low-rank update `ΔW = scale · B · A` per adapted module of a
//! base checkpoint.
//!
//! Tensor keys are `base_model.model.{module}.lora_A.weight` (`[r, d_in]`) and
//! `….lora_B.weight` (`[d_out, r]`), `{module}` being the module's name in the base model
//! (`gpt_neox.layers.0.attention.query_key_value`), whose weight is `{module}.weight` in the
//! base checkpoint. Every update is `d_out × d_in` whatever the family stores
//! ([`crate::model::MatrixLayout`]); a fused QKV update also comes split into query, key and
//! value like the base weight. Format and checks: `docs/adapters.md`.

mod config;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::weights::Weights;
use super::{ModelConfig, ModelError};
use crate::analysis::{AnalysisError, LowRankUpdate, weight_key_parts};

pub use config::{LoraConfig, TargetModules};

/// The config file of an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file of an adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix peft gives every tensor key (the `PeftModel` wrapping the `base_model`).
const KEY_PREFIX: &str = "base_model.model.";

/// What can go wrong reading an adapter or matching it with its base. Every variant names the
/// file and, where one is involved, the key.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON for a PEFT config.
    #[error("`{path}` is not a valid adapter config")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse cause.
        #[source]
        source: serde_json::Error,
    },
    /// The folder lacks a file an adapter needs.
    #[error("`{dir}` has no `{file}`{hint}")]
    MissingFile {
        /// The folder.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
        /// What to do, when there is something to say.
        hint: String,
    },
    /// The adapter is another PEFT method.
    #[error(
        "`{path}`: key `peft_type` is `{peft_type}`, and hubsweep reads LoRA adapters only (`LORA`); merge the adapter into its base with peft (`merge_and_unload()`), save the merged model, and sweep it against the base with `delta_from`"
    )]
    NotLora {
        /// The config file.
        path: PathBuf,
        /// The `peft_type` found.
        peft_type: String,
    },
    /// A LoRA variant whose update is not `scale · B · A`.
    #[error("`{path}`: key `{key}` is not supported: {hint}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The config key or tensor key.
        key: String,
        /// Why, and what to do.
        hint: String,
    },
    /// A config key is missing or has an unusable value.
    #[error("`{path}`: key `{key}` {reason}")]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The key (`rank_pattern.{pattern}` for a pattern entry).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights file could not be read as safetensors, or a tensor is not a float.
    #[error("cannot read the adapter's tensors")]
    Weights(#[source] ModelError),
    /// A module has one LoRA factor and not the other.
    #[error("`{path}`: module `{module}` has no `{missing}`")]
    MissingFactor {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The missing key.
        missing: String,
    },
    /// A module has LoRA factors but `target_modules` does not name it.
    #[error(
        "`{path}`: module `{module}` has LoRA factors but `target_modules` does not target it: are the config and the weights from the same adapter?"
    )]
    Untargeted {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
    },
    /// The base checkpoint has no weight for an adapted module.
    #[error(
        "`{path}`: module `{module}` is adapted, but the base model has no weight `{base_key}`: is the base model the one the adapter was trained on?"
    )]
    BaseModuleMissing {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The base key looked for.
        base_key: String,
    },
    /// An adapted module's base weight is not a matrix.
    #[error(
        "module `{module}` is adapted, but the base weight `{base_key}` has shape {found:?}, not a matrix"
    )]
    BaseNotMatrix {
        /// The module.
        module: String,
        /// The base key.
        base_key: String,
        /// Its shape.
        found: Vec<usize>,
    },
    /// A factor's shape does not fit the base weight (or the rank the config gives).
    #[error(
        "`{path}`: tensor `{key}` has shape {found:?}, but {expected:?} fits {reason}: is the base model the one the adapter was trained on?"
    )]
    FactorShape {
        /// The weights file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// The shape that would fit.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
        /// What the expected shape comes from.
        reason: String,
    },
    /// A NaN or infinity in a factor.
    #[error("`{path}`: tensor `{key}` holds `{value}` at row {row}, column {column}")]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor key.
        key: String,
        /// Row.
        row: usize,
        /// Column.
        column: usize,
        /// The value.
        value: f64,
    },
    /// Building or splitting an update failed.
    #[error("`{path}`: module `{module}`")]
    Analysis {
        /// The weights file.
        path: PathBuf,
        /// The module.
        module: String,
        /// The cause.
        #[source]
        source: AnalysisError,
    },
}

/// The keys of one module's factors.
#[derive(Debug, Default, Clone)]
struct Factors {
    a: Option<String>,
    b: Option<String>,
}

/// A PEFT LoRA adapter: its config and the keys of its factors, read from the headers (the
/// tensors are read when the updates are built).
#[derive(Debug)]
pub struct LoraAdapter {
    weights_path: PathBuf,
    config: LoraConfig,
    tensors: Weights,
    /// Module name → factor keys, sorted by name.
    modules: std::collections::BTreeMap<String, Factors>,
    other_tensors: Vec<String>,
}

/// One module's update, `d_out × d_in`.
#[derive(Debug, Clone)]
pub struct ModuleUpdate {
    /// The module's name in the base model (`gpt_neox.layers.0.attention.query_key_value`).
    pub module_path: String,
    /// The base checkpoint's key of the weight it updates.
    pub base_key: String,
    /// Layer index, for modules inside a layer.
    pub layer: Option<usize>,
    /// Module path inside the layer (`attention.query_key_value`), as weight spectra name it.
    pub module: String,
    /// `query`, `key` or `value` for a part of a fused QKV update; `None` for the whole.
    pub part: Option<&'static str>,
    /// `ΔW = scale · B · A`.
    pub update: LowRankUpdate,
}

impl LoraAdapter {
    /// Reads the config and the tensor headers of the adapter in `dir`.
    pub fn open(dir: &Path) -> Result<Self, AdapterError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.is_file() {
            return Err(AdapterError::MissingFile {
                dir: dir.to_path_buf(),
                file: ADAPTER_CONFIG,
                hint: String::new(),
            });
        }
        let config = LoraConfig::from_file(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (only a pickled `adapter_model.bin`, which hubsweep does not load: save the adapter again with peft's default `safe_serialization=True`)"
            } else {
                ""
            };
            return Err(AdapterError::MissingFile {
                dir: dir.to_path_buf(),
                file: ADAPTER_WEIGHTS,
                hint: hint.to_owned(),
            });
        }
        let tensors = Weights::read(
            std::slice::from_ref(&weights_path),
            &Device::Cpu,
            DType::F64,
        )
        .map_err(AdapterError::Weights)?;
        let mut modules = std::collections::BTreeMap::<String, Factors>::new();
        let mut other_tensors = Vec::new();
        for key in tensors.keys() {
            let Some(name) = key.strip_prefix(KEY_PREFIX) else {
                other_tensors.push(key.to_owned());
                continue;
            };
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                modules.entry(module.to_owned()).or_default().a = Some(key.to_owned());
            } else if let Some(module) = name.strip_suffix(".lora_B.weight") {
                modules.entry(module.to_owned()).or_default().b = Some(key.to_owned());
            } else if name.contains(".lora_embedding_") || name.contains(".lora_magnitude_vector") {
                return Err(AdapterError::Unsupported {
                    path: weights_path,
                    key: key.to_owned(),
                    hint: "LoRA on embeddings and DoRA magnitudes are not read; adapt linear layers only, or merge the adapter with peft and sweep the merged model with `delta_from`".into(),
                });
            } else {
                other_tensors.push(key.to_owned());
            }
        }
        Ok(Self {
            weights_path,
            config,
            tensors,
            modules,
            other_tensors,
        })
    }

    /// The adapter's LoRA settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Names of the adapted modules, sorted.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// Keys of tensors that are not LoRA factors (`modules_to_save` copies, `lora_B.bias` of
    /// `lora_bias`): they change the model but not by a low-rank update, and no update here
    /// includes them.
    pub fn other_tensors(&self) -> &[String] {
        &self.other_tensors
    }

    /// Every module's update against the base checkpoint `base` (headers read, tensors not
    /// needed) of config `base_config`, sorted by layer, then module name; a fused QKV update
    /// is followed by its query, key and value parts.
    pub fn updates(
        &self,
        base_config: &ModelConfig,
        base: &Weights,
    ) -> Result<Vec<ModuleUpdate>, AdapterError> {
        let mut updates = Vec::new();
        for (module_path, factors) in &self.modules {
            self.module_updates(module_path, factors, base_config, base, &mut updates)?;
        }
        // Stable: the parts stay after their whole update.
        updates.sort_by(|x, y| {
            (x.layer, &x.module, &x.module_path).cmp(&(y.layer, &y.module, &y.module_path))
        });
        Ok(updates)
    }

    fn module_updates(
        &self,
        module_path: &str,
        factors: &Factors,
        base_config: &ModelConfig,
        base: &Weights,
        updates: &mut Vec<ModuleUpdate>,
    ) -> Result<(), AdapterError> {
        let path = &self.weights_path;
        let factor_key = |key: &Option<String>, suffix: &str| {
            key.clone().ok_or_else(|| AdapterError::MissingFactor {
                path: path.clone(),
                module: module_path.to_owned(),
                missing: format!("{KEY_PREFIX}{module_path}.{suffix}"),
            })
        };
        let a_key = factor_key(&factors.a, "lora_A.weight")?;
        let b_key = factor_key(&factors.b, "lora_B.weight")?;
        if let Some(targets) = &self.config.target_modules
            && !targets.targets(module_path)
        {
            return Err(AdapterError::Untargeted {
                path: path.clone(),
                module: module_path.to_owned(),
            });
        }
        let base_key =
            base_weight_key(module_path, base).ok_or_else(|| AdapterError::BaseModuleMissing {
                path: path.clone(),
                module: module_path.to_owned(),
                base_key: format!("{module_path}.weight"),
            })?;
        let (layer, module) = weight_key_parts(&base_key).unwrap_or((None, module_path.to_owned()));
        let layout = base_config.family.matrix_layout(&module);
        let (d_out, d_in) = match base.shape(&base_key) {
            Some(&[rows, cols]) if layout.transposed => (cols, rows),
            Some(&[rows, cols]) => (rows, cols),
            found => {
                return Err(AdapterError::BaseNotMatrix {
                    module: module_path.to_owned(),
                    base_key,
                    found: found.unwrap_or_default().to_vec(),
                });
            }
        };
        let rank = self.config.rank_for(module_path);
        let rank_reason = format!("the rank {rank} the config gives this module");
        let a = self.factor(&a_key, [rank, d_in], || {
            format!("{rank_reason} and the base weight's {d_in} input features")
        })?;
        let b = self.factor(&b_key, [d_out, rank], || {
            format!("the base weight's {d_out} output features and {rank_reason}")
        })?;
        let update =
            LowRankUpdate::new(b, a, d_out, d_in, rank, self.config.scale_for(module_path))
                .map_err(|source| match source {
                    AnalysisError::NonFinite {
                        what,
                        row,
                        column,
                        value,
                    } => AdapterError::NonFinite {
                        path: path.clone(),
                        key: if what == "lora_A" {
                            a_key.clone()
                        } else {
                            b_key.clone()
                        },
                        row,
                        column,
                        value,
                    },
                    source => AdapterError::Analysis {
                        path: path.clone(),
                        module: module_path.to_owned(),
                        source,
                    },
                })?;
        let parts = match layout.fused_qkv {
            Some(fused) => {
                let (groups, group_rows) = fused.groups(base_config.n_heads, base_config.head_dim);
                Some(
                    update
                        .split_fused_qkv(groups, group_rows)
                        .map_err(|source| AdapterError::Analysis {
                            path: path.clone(),
                            module: module_path.to_owned(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        let entry = |part, update| ModuleUpdate {
            module_path: module_path.to_owned(),
            base_key: base_key.clone(),
            layer,
            module: module.clone(),
            part,
            update,
        };
        updates.push(entry(None, update));
        if let Some([query, key, value]) = parts {
            updates.push(entry(Some("query"), query));
            updates.push(entry(Some("key"), key));
            updates.push(entry(Some("value"), value));
        }
        Ok(())
    }

    /// Reads factor `key` as f64 after checking it has `expected` shape.
    fn factor(
        &self,
        key: &str,
        expected: [usize; 2],
        reason: impl FnOnce() -> String,
    ) -> Result<Vec<f64>, AdapterError> {
        let found = self.tensors.shape(key).unwrap_or_default();
        if found != expected {
            return Err(AdapterError::FactorShape {
                path: self.weights_path.clone(),
                key: key.to_owned(),
                expected: expected.to_vec(),
                found: found.to_vec(),
                reason: reason(),
            });
        }
        self.tensors
            .get(key, &expected)
            .and_then(|tensor| {
                tensor
                    .flatten_all()
                    .and_then(|flat| flat.to_vec1::<f64>())
                    .map_err(|source| ModelError::Tensor {
                        context: format!("reading `{key}`"),
                        source,
                    })
            })
            .map_err(AdapterError::Weights)
    }
}

/// The base checkpoint's key for the weight of module `module_path`: `{module_path}.weight`,
/// or, for GPT-2 checkpoints saved from `GPT2Model` (keys without the `transformer.` root that
/// `GPT2LMHeadModel`'s module names have), the key without that root.
fn base_weight_key(module_path: &str, base: &Weights) -> Option<String> {
    let key = format!("{module_path}.weight");
    if base.contains(&key) {
        return Some(key);
    }
    module_path
        .strip_prefix("transformer.")
        .map(|rest| format!("{rest}.weight"))
        .filter(|key| base.contains(key))
}

#[cfg(test)]
mod tests;
