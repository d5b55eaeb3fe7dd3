//! GGUF (llama.cpp) → HF layout for Llama-architecture files: dequantized F32
//! `model.safetensors`, a `config.json` in the transformers-4 key dialect, and a
//! `tokenizer.json` rebuilt from the GGUF's `tokenizer.ggml.*` metadata.
//!
//! llama.cpp's converter reorders the rows of `attn_q` / `attn_k` within each head so that an
//! interleaved rotary (adjacent pairs) can be applied; the HF half-split rotary needs them
//! back: view rows as `(heads, head_dim/2, 2)`, swap the last two axes, flatten.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

/// Errors from converting a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or written.
    #[error("cannot access `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF header or a tensor could not be read.
    #[error("`{path}` is not a readable GGUF file ({context})")]
    Read {
        /// The file.
        path: PathBuf,
        /// What was being read.
        context: String,
        /// The reader's cause.
        #[source]
        source: Box<candle_core::Error>,
    },
    /// `general.architecture` is not `llama`.
    #[error("`{path}`: architecture `{architecture}` is not supported (supported: `llama`)")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture found.
        architecture: String,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("`{path}`: metadata key `{key}` is missing or not a {expected}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The expected type.
        expected: &'static str,
    },
    /// A tensor is missing or shaped unlike the metadata says.
    #[error("`{path}`: tensor `{name}` {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer model in the metadata is not a byte-level BPE.
    #[error(
        "`{path}`: tokenizer model `{model}` is not supported (supported: `gpt2` byte-level BPE)"
    )]
    UnsupportedTokenizer {
        /// The file.
        path: PathBuf,
        /// `tokenizer.ggml.model`.
        model: String,
    },
    /// The rebuilt tokenizer.json does not load.
    #[error("`{path}`: the tokenizer rebuilt from GGUF metadata does not load")]
    TokenizerBuild {
        /// The written tokenizer.json.
        path: PathBuf,
        /// The tokenizers cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the output failed.
    #[error("cannot write `{path}`")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// What [`convert_to_dir`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// `config.json`.
    pub config: PathBuf,
    /// `model.safetensors` (F32).
    pub weights: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Number of tensors written.
    pub tensors: usize,
}

struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn err(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
        }
    }
    fn usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.map.get(key).ok_or_else(|| self.err(key, "integer"))?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| x as usize)
            .map_err(|_| self.err(key, "integer"))
    }
    fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.map.get(key).ok_or_else(|| self.err(key, "number"))?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|_| self.err(key, "number"))
    }
    fn string(&self, key: &str) -> Result<&str, GgufError> {
        self.map
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .ok_or_else(|| self.err(key, "string"))
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let list = self
            .map
            .get(key)
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| self.err(key, "string array"))?;
        list.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.err(key, "string array"))
            })
            .collect()
    }
    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.map
            .get(key)
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(default)
    }
}

/// The Llama dimensions read from `llama.*` metadata.
struct Dims {
    n_layers: usize,
    d_model: usize,
    d_mlp: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// Converts the Llama-architecture GGUF at `gguf` into an HF-layout folder `out` (created if
/// needed): dequantized F32 weights with Q/K rows un-permuted, `config.json`, `tokenizer.json`.
pub fn convert_to_dir(gguf: &Path, out: &Path) -> Result<Converted, GgufError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GgufError::Io { path, source }
    };
    let read = |context: &str| {
        let path = gguf.to_path_buf();
        let context = context.to_string();
        move |source: candle_core::Error| GgufError::Read {
            path,
            context,
            source: Box::new(source),
        }
    };
    let mut reader = BufReader::new(File::open(gguf).map_err(io(gguf))?);
    let content = Content::read(&mut reader).map_err(read("header"))?;
    let meta = Meta {
        path: gguf,
        map: &content.metadata,
    };
    let architecture = meta.string("general.architecture")?;
    if architecture != "llama" {
        return Err(GgufError::UnsupportedArchitecture {
            path: gguf.to_path_buf(),
            architecture: architecture.to_string(),
        });
    }
    let n_heads = meta.usize("llama.attention.head_count")?;
    let d_model = meta.usize("llama.embedding_length")?;
    let dims = Dims {
        n_layers: meta.usize("llama.block_count")?,
        d_model,
        d_mlp: meta.usize("llama.feed_forward_length")?,
        n_heads,
        n_kv_heads: meta
            .usize("llama.attention.head_count_kv")
            .unwrap_or(n_heads),
        head_dim: meta
            .usize("llama.attention.key_length")
            .unwrap_or(d_model / n_heads.max(1)),
    };
    // llama.cpp stores Llama 3.1-style frequency scaling as a `rope_freqs` tensor (or names a
    // scaling type); converting without it would silently give wrong activations.
    let scaling = meta.string("llama.rope.scaling.type").unwrap_or("none");
    if content.tensor_infos.contains_key("rope_freqs.weight") || !matches!(scaling, "none" | "") {
        return Err(GgufError::Tensor {
            path: gguf.to_path_buf(),
            name: "rope_freqs.weight".into(),
            reason: format!(
                "or rope scaling `{scaling}` is present: GGUF rope scaling is not supported"
            ),
        });
    }
    fs_err::create_dir_all(out).map_err(io(out))?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf_name) = hf_name(name) else {
            continue;
        };
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(read(name))?;
        let mut t = q.dequantize(&Device::Cpu).map_err(read(name))?;
        let heads = if name.ends_with("attn_q.weight") {
            Some(dims.n_heads)
        } else if name.ends_with("attn_k.weight") {
            Some(dims.n_kv_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            t = unpermute(&t, heads, dims.head_dim).map_err(|e| GgufError::Tensor {
                path: gguf.to_path_buf(),
                name: name.clone(),
                reason: format!(
                    "cannot be un-permuted for {heads} heads of {}: {e}",
                    dims.head_dim
                ),
            })?;
        }
        tensors.insert(hf_name, t);
    }
    let embed = tensors
        .get("model.embed_tokens.weight")
        .ok_or_else(|| GgufError::Tensor {
            path: gguf.to_path_buf(),
            name: "token_embd.weight".into(),
            reason: "is missing".into(),
        })?;
    let vocab_size = embed.dim(0).unwrap_or(0);
    let tied = !tensors.contains_key("lm_head.weight");

    let weights = out.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|source| GgufError::Write {
        path: weights.clone(),
        source: Box::new(source),
    })?;
    let config = out.join("config.json");
    let config_json = llama_config(&meta, &dims, vocab_size, tied)?;
    let text = serde_json::to_string_pretty(&config_json).unwrap_or_default() + "\n";
    fs_err::write(&config, text).map_err(io(&config))?;
    let tokenizer = out.join("tokenizer.json");
    write_tokenizer(&meta, &tokenizer)?;
    Ok(Converted {
        config,
        weights,
        tokenizer,
        tensors: tensors.len(),
    })
}

/// GGUF tensor name → HF Llama name; `None` for tensors the HF model has no slot for
/// (llama.cpp's precomputed `rope_freqs`).
fn hf_name(name: &str) -> Option<String> {
    let base = name.strip_suffix(".weight")?;
    let mapped = match base {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = base.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let hf = match part {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    };
    Some(mapped + ".weight")
}

/// Undoes llama.cpp's per-head row permutation of a `[heads·head_dim, d]` Q or K weight.
fn unpermute(t: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    t.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn llama_config(
    meta: &Meta<'_>,
    dims: &Dims,
    vocab_size: usize,
    tied: bool,
) -> Result<serde_json::Value, GgufError> {
    let theta = meta.f64("llama.rope.freq_base").unwrap_or(10_000.0);
    let eps = meta.f64("llama.attention.layer_norm_rms_epsilon")?;
    let context = meta.usize("llama.context_length").unwrap_or(2048);
    let bos = meta.usize("tokenizer.ggml.bos_token_id").ok();
    let eos = meta.usize("tokenizer.ggml.eos_token_id").ok();
    Ok(json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": dims.d_model,
        "intermediate_size": dims.d_mlp,
        "num_hidden_layers": dims.n_layers,
        "num_attention_heads": dims.n_heads,
        "num_key_value_heads": dims.n_kv_heads,
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }))
}

/// llama.cpp pre-tokenizer names whose regex isolates every digit before the GPT-2 split.
const DIGIT_SPLITTING_PRE: &[&str] = &["smollm", "llama3", "llama-bpe", "qwen2", "deepseek-llm"];

fn write_tokenizer(meta: &Meta<'_>, path: &Path) -> Result<(), GgufError> {
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::UnsupportedTokenizer {
            path: meta.path.to_path_buf(),
            model: model.to_string(),
        });
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = meta
        .map
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|l| {
            l.iter()
                .map(|v| v.to_i32().map(i64::from).unwrap_or(1))
                .collect()
        })
        .unwrap_or_default();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| json!([a, b]))
        .collect();
    // Control (3) and user-defined (4) tokens are matched before the model, like HF's added tokens.
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(i, t)| {
            json!({"id": i, "content": tokens.get(i).copied().unwrap_or_default(), "single_word": false,
                   "lstrip": false, "rstrip": false, "normalized": false, "special": *t == 3})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = if DIGIT_SPLITTING_PRE.contains(&pre) {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level.clone()
    };
    let bos = meta.usize("tokenizer.ggml.bos_token_id").ok();
    let post_processor = match bos.filter(|_| meta.bool_or("tokenizer.ggml.add_bos_token", false)) {
        Some(id) => {
            let token = tokens.get(id).copied().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {token: {"id": token, "ids": [id], "tokens": [token]}}})
        }
        None => serde_json::Value::Null,
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let text = serde_json::to_string(&tokenizer).unwrap_or_default();
    fs_err::write(path, text).map_err(|source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    tokenizers::Tokenizer::from_file(path)
        .map(|_| ())
        .map_err(|source| GgufError::TokenizerBuild {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, hd/2, d).swapaxes(1, 2); rows of head 0 with hd 4:
        // HF order [0, 1, 2, 3] becomes GGUF order [0, 2, 1, 3].
        let gguf = Tensor::new(
            &[[0f32], [2.], [1.], [3.], [4.], [6.], [5.], [7.]],
            &Device::Cpu,
        )
        .unwrap();
        let hf = unpermute(&gguf, 2, 4).unwrap();
        let rows: Vec<f32> = hf.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(rows, [0., 1., 2., 3., 4., 5., 6., 7.]);
    }

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.7.ffn_gate.weight").unwrap(),
            "model.layers.7.mlp.gate_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("rope_freqs.weight").is_none());
    }
}
