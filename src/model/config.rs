//! `config.json` parsing for the supported families, in both key dialects.
//!
//! Hub checkpoints written by transformers 4 spell rotary settings as flat keys (`rotary_pct`,
//! `rotary_emb_base`, `rope_theta`, `rope_scaling`); transformers 5 nests them under
//! `rope_parameters`. Both are accepted; the nested form wins when both are present because
//! transformers 5 reads only that one.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::ModelError;
pub use super::family::{Family, FusedQkv, MatrixLayout};

/// The MLP non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function (transformers' `"gelu"`).
    GeluErf,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_fast"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// SiLU (`"silu"`), used gated in Llama.
    Silu,
}

/// Llama 3.1+ rotary frequency rescaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Llama3Scaling {
    /// Divisor applied to low frequencies.
    pub factor: f64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context length the model was pretrained with.
    pub original_max_position_embeddings: f64,
}

/// Rotary position embedding settings (half-split "rotate_half" layout in both families).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RopeConfig {
    /// The base `θ` of the inverse frequencies.
    pub theta: f64,
    /// How many leading dimensions of each head are rotated (even, ≤ head_dim).
    pub rotary_dim: usize,
    /// Optional llama3 frequency rescaling.
    pub llama3_scaling: Option<Llama3Scaling>,
}

/// The dimensions and settings of a checkpoint that the forward pass needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// Architecture family.
    pub family: Family,
    /// Rows of the embedding matrix (may exceed the tokenizer's vocabulary, as in Pythia).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (equal to `n_heads` without grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Width of the MLP hidden layer.
    pub d_mlp: usize,
    /// Epsilon of the LayerNorm / RMSNorm.
    pub norm_eps: f64,
    /// Rotary settings; `None` for learned absolute positions (GPT-2).
    pub rope: Option<RopeConfig>,
    /// Rows of the learned position table (GPT-2 `n_positions`): the longest sequence the
    /// model can run. `None` for rotary families.
    pub max_positions: Option<usize>,
    /// Whether attention and MLP read the same block input (GPT-NeoX `use_parallel_residual`).
    pub parallel_residual: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Whether the unembedding reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Whether the query/key/value projections carry biases.
    pub attention_bias: bool,
    /// Whether the attention output projection carries a bias.
    pub attention_out_bias: bool,
    /// Whether queries and keys pass a per-head RMSNorm before rotary (Qwen3 `q_norm`/`k_norm`).
    pub qk_norm: bool,
    /// The narrowest sliding attention window any layer uses (Mistral `sliding_window`, Qwen2
    /// `use_sliding_window` with `max_window_layers`/`layer_types`); `None` when every layer
    /// attends to the whole sequence. A window changes the result only for sequences longer
    /// than it, which [`ModelConfig::check_seq_len`] refuses.
    pub sliding_window: Option<usize>,
    /// Whether the MLP projections carry biases.
    pub mlp_bias: bool,
    /// The storage dtype the checkpoint declares (`torch_dtype` or `dtype`), if any.
    pub stored_dtype: Option<String>,
    /// The BOS token id, if the config names one.
    pub bos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Whether the MLP is gated (`act(gate) · up`), which adds `mlp.hook_pre_linear`.
    pub fn is_gated_mlp(&self) -> bool {
        self.family.is_gated()
    }

    /// Refuses a sequence length the model cannot run exactly as transformers would: longer
    /// than GPT-2's position table, or longer than a sliding attention window (hubsweep
    /// computes full causal attention, which equals the windowed result only up to the window).
    pub fn check_seq_len(&self, seq_len: usize) -> Result<(), ModelError> {
        if let Some(max) = self.max_positions.filter(|max| seq_len > *max) {
            return Err(ModelError::SequenceTooLong {
                seq_len,
                limit: max,
                reason: "the learned position table (`n_positions`) has no more rows",
            });
        }
        if let Some(window) = self.sliding_window.filter(|w| seq_len > *w) {
            return Err(ModelError::SequenceTooLong {
                seq_len,
                limit: window,
                reason: "the config's sliding attention window would hide earlier tokens, which hubsweep does not implement; use a `seq_len` within the window",
            });
        }
        Ok(())
    }

    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = fs_err::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a `config.json`; `path` is only used in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ModelError> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|source| ModelError::ConfigJson {
                path: path.to_path_buf(),
                source,
            })?;
        raw.validate(path)
    }
}

/// `config.json` as written, with every key either dialect (and GPT-2's own names) may use.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    #[serde(alias = "n_embd")]
    hidden_size: Option<usize>,
    #[serde(alias = "n_layer")]
    num_hidden_layers: Option<usize>,
    #[serde(alias = "n_head")]
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(alias = "n_inner")]
    intermediate_size: Option<usize>,
    #[serde(alias = "layer_norm_epsilon")]
    layer_norm_eps: Option<f64>,
    rms_norm_eps: Option<f64>,
    #[serde(alias = "activation_function")]
    hidden_act: Option<String>,
    use_parallel_residual: Option<bool>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<Value>,
    #[serde(alias = "n_positions")]
    max_position_embeddings: Option<usize>,
    /// Absent means "not given" (Mistral then defaults to 4096); `null` means no window.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent key (`None`, through `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

struct Invalid<'a> {
    path: &'a Path,
}

impl Invalid<'_> {
    fn err(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn require(&self, value: Option<usize>, key: &str) -> Result<usize, ModelError> {
        match value {
            Some(0) => Err(self.err(key, "must be positive")),
            Some(v) => Ok(v),
            None => Err(self.err(key, "is missing")),
        }
    }
}

impl RawConfig {
    /// The family from `model_type`, or from `architectures` when `model_type` is absent.
    fn family(&self, path: &Path) -> Result<Family, ModelError> {
        let unsupported = |model_type: &str| ModelError::UnsupportedModelType {
            path: path.to_path_buf(),
            model_type: model_type.to_string(),
        };
        if let Some(model_type) = &self.model_type {
            return Family::from_model_type(model_type).ok_or_else(|| unsupported(model_type));
        }
        match self.architectures.as_deref() {
            Some([first, ..]) => Family::from_architecture(first).ok_or_else(|| unsupported(first)),
            _ => Err(Invalid { path }.err("model_type", "is missing (and so is `architectures`)")),
        }
    }

    /// The narrowest window of a layer with sliding attention, if any (see
    /// [`ModelConfig::sliding_window`]); `n_layers` for Qwen's `max_window_layers`.
    fn sliding_window(&self, family: Family, n_layers: usize) -> Option<usize> {
        let window = match (family, self.sliding_window) {
            // MistralConfig defaults to 4096 when the key is absent.
            (Family::Mistral, None) => Some(4096),
            (Family::Mistral, Some(w)) => w,
            (Family::Qwen2 | Family::Qwen3, Some(Some(w)))
                if self.use_sliding_window == Some(true) =>
            {
                Some(w)
            }
            _ => None,
        }?;
        let sliding_layers = match (family, &self.layer_types) {
            // MistralForCausalLM slides in every layer whatever `layer_types` says.
            (Family::Mistral, _) => n_layers,
            (_, Some(types)) => types.iter().filter(|t| *t == "sliding_attention").count(),
            // transformers: layers from `max_window_layers` on slide (default 28).
            (_, None) => n_layers.saturating_sub(self.max_window_layers.unwrap_or(28)),
        };
        (sliding_layers > 0).then_some(window)
    }

    fn validate(self, path: &Path) -> Result<ModelConfig, ModelError> {
        let invalid = Invalid { path };
        let family = self.family(path)?;
        let vocab_size = invalid.require(self.vocab_size, "vocab_size")?;
        let d_model = invalid.require(self.hidden_size, "hidden_size")?;
        let n_layers = invalid.require(self.num_hidden_layers, "num_hidden_layers")?;
        let n_heads = invalid.require(self.num_attention_heads, "num_attention_heads")?;
        let d_mlp = match (family, self.intermediate_size) {
            // GPT-2's `n_inner: null` means 4·n_embd.
            (Family::Gpt2, None) => 4 * d_model,
            (_, size) => invalid.require(size, "intermediate_size")?,
        };
        let n_kv_heads = match family {
            Family::GptNeox | Family::Gpt2 => n_heads,
            _ => self.num_key_value_heads.unwrap_or(n_heads),
        };
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(invalid.err(
                "num_key_value_heads",
                format!("`{n_kv_heads}` does not divide num_attention_heads `{n_heads}`"),
            ));
        }
        let head_dim = match (family, self.head_dim) {
            (Family::GptNeox | Family::Gpt2, _) | (_, None | Some(0)) => {
                if d_model % n_heads != 0 {
                    return Err(invalid.err(
                        "hidden_size",
                        format!("`{d_model}` is not a multiple of num_attention_heads `{n_heads}`"),
                    ));
                }
                d_model / n_heads
            }
            (_, Some(h)) => h,
        };
        if family == Family::Gpt2 {
            if self.scale_attn_by_inverse_layer_idx == Some(true) {
                return Err(
                    invalid.err("scale_attn_by_inverse_layer_idx", "`true` is not supported")
                );
            }
            if self.scale_attn_weights == Some(false) {
                return Err(invalid.err("scale_attn_weights", "`false` is not supported"));
            }
        }
        let rope = if family.is_rotary() {
            Some(self.rope(family, head_dim, path, &invalid)?)
        } else {
            None
        };
        let activation = match (family, self.hidden_act.as_deref()) {
            (Family::GptNeox, None | Some("gelu")) => Activation::GeluErf,
            (Family::Gpt2, None) => Activation::GeluTanh,
            (_, Some("gelu_new" | "gelu_fast" | "gelu_pytorch_tanh")) => Activation::GeluTanh,
            (_, Some("gelu")) => Activation::GeluErf,
            (f, None | Some("silu")) if f.is_gated() => Activation::Silu,
            (_, Some(other)) => {
                return Err(invalid.err("hidden_act", format!("`{other}` is not supported")));
            }
            (_, None) => return Err(invalid.err("hidden_act", "is missing")),
        };
        let norm_eps = if family.uses_layer_norm() {
            self.layer_norm_eps.unwrap_or(1e-5)
        } else {
            self.rms_norm_eps.unwrap_or(1e-6)
        };
        // Biases: GPT-NeoX and GPT-2 everywhere; Qwen2 on q/k/v only; Llama and Qwen3 where
        // `attention_bias`/`mlp_bias` say; Mistral nowhere.
        let (attention_bias, attention_out_bias, mlp_bias) = match family {
            Family::GptNeox => {
                let a = self.attention_bias.unwrap_or(true);
                (a, a, self.mlp_bias.unwrap_or(true))
            }
            Family::Gpt2 => (true, true, true),
            Family::Qwen2 => (true, false, false),
            Family::Llama => {
                let a = self.attention_bias.unwrap_or(false);
                (a, a, self.mlp_bias.unwrap_or(false))
            }
            Family::Qwen3 => {
                let a = self.attention_bias.unwrap_or(false);
                (a, a, false)
            }
            Family::Mistral => (false, false, false),
        };
        let max_positions = match family {
            Family::Gpt2 => Some(self.max_position_embeddings.unwrap_or(1024)),
            _ => None,
        };
        Ok(ModelConfig {
            family,
            vocab_size,
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            d_mlp,
            norm_eps,
            rope,
            max_positions,
            parallel_residual: family == Family::GptNeox
                && self.use_parallel_residual.unwrap_or(true),
            activation,
            // GPT2Config ties by default; the others' configs default to untied.
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(family == Family::Gpt2),
            attention_bias,
            attention_out_bias,
            mlp_bias,
            qk_norm: family.has_qk_norm(),
            sliding_window: self.sliding_window(family, n_layers),
            stored_dtype: self.dtype.clone().or(self.torch_dtype.clone()),
            // Some configs write a list here; only a single id is a BOS.
            bos_token_id: self
                .bos_token_id
                .as_ref()
                .and_then(Value::as_u64)
                .map(|v| v as u32),
        })
    }

    /// Rotary settings from either dialect.
    fn rope(
        &self,
        family: Family,
        head_dim: usize,
        path: &Path,
        invalid: &Invalid<'_>,
    ) -> Result<RopeConfig, ModelError> {
        // The nested transformers-5 block, if present, is authoritative.
        let nested = match &self.rope_parameters {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(_) => return Err(invalid.err("rope_parameters", "is not an object")),
        };
        let nested_f64 = |key: &str| -> Result<Option<f64>, ModelError> {
            match nested.as_ref().and_then(|m| m.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                    invalid.err(&format!("rope_parameters.{key}"), "is not a number")
                }),
            }
        };
        let default_fraction = if family == Family::GptNeox { 0.25 } else { 1.0 };
        let theta = nested_f64("rope_theta")?
            .or(self.rope_theta)
            .or(self.rotary_emb_base)
            .unwrap_or(10_000.0);
        let fraction = nested_f64("partial_rotary_factor")?
            .or(self.partial_rotary_factor)
            .or(self.rotary_pct)
            .unwrap_or(default_fraction);
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(invalid.err("rotary_pct", format!("`{fraction}` is not in (0, 1]")));
        }
        if theta.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(invalid.err("rope_theta", format!("`{theta}` is not positive")));
        }
        // transformers truncates: int(head_dim * rotary_pct).
        let rotary_dim = (head_dim as f64 * fraction) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
            return Err(invalid.err(
                "rotary_pct",
                format!("gives rotary width `{rotary_dim}`, which must be even and positive"),
            ));
        }
        let scaling_source = match nested {
            Some(map) => Some(("rope_parameters", Value::Object(map))),
            None => match &self.rope_scaling {
                None | Some(Value::Null) => None,
                Some(v) => Some(("rope_scaling", v.clone())),
            },
        };
        let llama3_scaling = match scaling_source {
            None => None,
            Some((key, value)) => parse_scaling(key, &value, path, invalid)?,
        };
        Ok(RopeConfig {
            theta,
            rotary_dim,
            llama3_scaling,
        })
    }
}

fn parse_scaling(
    key: &str,
    value: &Value,
    path: &Path,
    invalid: &Invalid<'_>,
) -> Result<Option<Llama3Scaling>, ModelError> {
    let Value::Object(map) = value else {
        return Err(invalid.err(key, "is not an object"));
    };
    // transformers 4 wrote `type`, later versions `rope_type`.
    let rope_type = map
        .get("rope_type")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match rope_type {
        "default" => Ok(None),
        "llama3" => {
            let number = |name: &str| -> Result<f64, ModelError> {
                map.get(name).and_then(Value::as_f64).ok_or_else(|| {
                    invalid.err(&format!("{key}.{name}"), "is missing or not a number")
                })
            };
            let scaling = Llama3Scaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            };
            if scaling.high_freq_factor <= scaling.low_freq_factor || scaling.factor <= 0.0 {
                return Err(invalid.err(
                    key,
                    "needs factor > 0 and high_freq_factor > low_freq_factor",
                ));
            }
            Ok(Some(scaling))
        }
        other => Err(ModelError::UnsupportedRopeScaling {
            path: PathBuf::from(path),
            rope_type: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json_str(text, Path::new("config.json"))
    }

    #[test]
    fn pythia_hub_dialect() {
        let cfg = parse(
            r#"{"model_type":"gpt_neox","vocab_size":50304,"hidden_size":512,"num_hidden_layers":6,
            "num_attention_heads":8,"intermediate_size":2048,"rotary_pct":0.25,"rotary_emb_base":10000,
            "use_parallel_residual":true,"hidden_act":"gelu","torch_dtype":"float16"}"#,
        )
        .unwrap();
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.rope.unwrap().rotary_dim, 16);
        assert!(cfg.parallel_residual);
        assert_eq!(cfg.activation, Activation::GeluErf);
        assert_eq!(cfg.stored_dtype.as_deref(), Some("float16"));
    }

    #[test]
    fn transformers5_rope_parameters() {
        let cfg = parse(
            r#"{"model_type":"llama","vocab_size":320,"hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":176,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        let rope = cfg.rope.unwrap();
        assert_eq!(rope.theta, 500000.0);
        assert_eq!(cfg.n_kv_heads, 2);
        assert_eq!(rope.llama3_scaling.unwrap().factor, 8.0);
    }

    /// `openai-community/gpt2`'s config.json: GPT-2's own key names, `n_inner: null`.
    #[test]
    fn gpt2_hub_dialect() {
        let cfg = parse(
            r#"{"activation_function":"gelu_new","architectures":["GPT2LMHeadModel"],"bos_token_id":50256,
            "eos_token_id":50256,"layer_norm_epsilon":1e-05,"model_type":"gpt2","n_ctx":1024,"n_embd":768,
            "n_head":12,"n_inner":null,"n_layer":12,"n_positions":1024,"vocab_size":50257}"#,
        )
        .unwrap();
        assert_eq!(cfg.family, Family::Gpt2);
        assert_eq!(
            (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim),
            (768, 12, 12, 64)
        );
        assert_eq!(cfg.d_mlp, 3072);
        assert_eq!(cfg.max_positions, Some(1024));
        assert!(cfg.rope.is_none() && cfg.tie_word_embeddings && cfg.attention_out_bias);
        assert_eq!(cfg.activation, Activation::GeluTanh);
        // `architectures` alone names the family too.
        let cfg = parse(
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":8,"hidden_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"num_key_value_heads":1,"intermediate_size":4}"#,
        )
        .unwrap();
        assert_eq!(cfg.family, Family::Qwen2);
        assert!(cfg.attention_bias && !cfg.attention_out_bias && !cfg.mlp_bias);
    }

    #[test]
    fn unsupported_scaling_and_type_are_named() {
        let err = parse(
            r#"{"model_type":"llama","vocab_size":3,"hidden_size":8,"num_hidden_layers":1,
            "num_attention_heads":2,"intermediate_size":4,"rope_scaling":{"type":"yarn","factor":2}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`yarn`"), "{err}");
        let err = parse(r#"{"model_type":"gpt_j"}"#).unwrap_err();
        assert!(err.to_string().contains("`gpt_j`"), "{err}");
    }
}
