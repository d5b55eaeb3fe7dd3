//! Architecture families: what `model_type` (or `architectures`) names, and what each family
//! means for the forward pass and for reading its weight matrices.

/// The architecture family of a checkpoint, from `model_type` (or `architectures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `gpt_neox`: Pythia and relatives (LayerNorm, fused per-head QKV, partial rotary).
    GptNeox,
    /// `llama`: Llama 2/3, SmolLM2 and relatives (RMSNorm, GQA, gated SiLU MLP).
    Llama,
    /// `gpt2`: GPT-2 (LayerNorm, learned absolute positions, fused `c_attn`, `Conv1D` weights
    /// stored `[in, out]`, tanh GELU, tied unembedding).
    Gpt2,
    /// `qwen2`: Qwen2 / Qwen2.5 (the Llama block with q/k/v projection biases).
    Qwen2,
    /// `qwen3`: Qwen3 (the Llama block with a per-head RMSNorm on queries and keys).
    Qwen3,
    /// `mistral`: Mistral (the Llama block; a sliding window for long sequences).
    Mistral,
}

/// How a fused query/key/value matrix (`d_out × d_in` orientation) splits into q, k and v.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedQkv {
    /// Rows grouped per head: `[q_h0, k_h0, v_h0, q_h1, …]`, each `head_dim` rows (GPT-NeoX).
    PerHead,
    /// Rows in three blocks `[q; k; v]`, each `n_heads · head_dim` rows (GPT-2 `c_attn`).
    Blocks,
}

/// How a family stores one weight matrix, for weight spectra: what it takes to read it as
/// `d_out × d_in` (the `nn.Linear` orientation every family but GPT-2 stores).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixLayout {
    /// The checkpoint stores `[d_in, d_out]` (GPT-2's `Conv1D`): transpose it first.
    pub transposed: bool,
    /// The matrix is a fused query/key/value projection, split this way.
    pub fused_qkv: Option<FusedQkv>,
}

impl FusedQkv {
    /// `(groups, rows)`: the fused matrix is `groups` repeats of `[q; k; v]` blocks of `rows`
    /// rows each, for a model with `n_heads` heads of `head_dim` (per head for GPT-NeoX, one
    /// group of `n_heads · head_dim` rows for GPT-2).
    pub fn groups(self, n_heads: usize, head_dim: usize) -> (usize, usize) {
        match self {
            FusedQkv::PerHead => (n_heads, head_dim),
            FusedQkv::Blocks => (1, n_heads * head_dim),
        }
    }
}

impl MatrixLayout {
    /// A stored `rows × cols` matrix (row-major) as `d_out × d_in`: `(values, d_out, d_in)`.
    pub fn to_out_in<T: Copy>(
        self,
        values: Vec<T>,
        rows: usize,
        cols: usize,
    ) -> (Vec<T>, usize, usize) {
        if !self.transposed || values.len() != rows * cols {
            return (values, rows, cols);
        }
        let mut out = Vec::with_capacity(values.len());
        for c in 0..cols {
            out.extend((0..rows).map(|r| values[r * cols + c]));
        }
        (out, cols, rows)
    }
}

impl Family {
    /// Every supported family, in the order error messages list them.
    pub const ALL: [Family; 6] = [
        Family::GptNeox,
        Family::Llama,
        Family::Gpt2,
        Family::Qwen2,
        Family::Qwen3,
        Family::Mistral,
    ];

    /// The `model_type` string of this family in `config.json` (also its name in a spec).
    pub fn model_type(self) -> &'static str {
        match self {
            Family::GptNeox => "gpt_neox",
            Family::Llama => "llama",
            Family::Gpt2 => "gpt2",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Mistral => "mistral",
        }
    }

    /// The name as a spec writes it: the `model_type`.
    pub fn as_str(self) -> &'static str {
        self.model_type()
    }

    /// The transformers class a checkpoint of this family names in `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::GptNeox => "GPTNeoXForCausalLM",
            Family::Llama => "LlamaForCausalLM",
            Family::Gpt2 => "GPT2LMHeadModel",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Mistral => "MistralForCausalLM",
        }
    }

    /// The family of a `model_type` value.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| f.model_type() == model_type)
    }

    /// The family of an `architectures` entry (`Qwen2ForCausalLM`; GPT-2's `GPT2LMHeadModel`
    /// and `GPT2Model` both count).
    pub fn from_architecture(architecture: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| {
            f.architecture() == architecture || (*f == Family::Gpt2 && architecture == "GPT2Model")
        })
    }

    /// `gpt_neox`, `llama`, … as a list for error messages.
    pub fn supported_list() -> String {
        Self::ALL
            .iter()
            .map(|f| format!("`{}`", f.model_type()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the norms are LayerNorm with a bias (else RMSNorm with a weight only).
    pub fn uses_layer_norm(self) -> bool {
        matches!(self, Family::GptNeox | Family::Gpt2)
    }

    /// Whether the MLP is gated (`down(act(gate) · up)`).
    pub fn is_gated(self) -> bool {
        !self.uses_layer_norm()
    }

    /// Whether positions enter through rotary embeddings (else GPT-2's learned `wpe`).
    pub fn is_rotary(self) -> bool {
        self != Family::Gpt2
    }

    /// Whether queries and keys pass a per-head RMSNorm before rotary (Qwen3).
    pub fn has_qk_norm(self) -> bool {
        self == Family::Qwen3
    }

    /// How the weight under `module` (the path inside a block, `attn.c_attn`) is stored; see
    /// [`MatrixLayout`]. GPT-2's four `Conv1D` modules are `[in, out]` and `c_attn` fuses
    /// `[q; k; v]`; GPT-NeoX's `query_key_value` fuses per head; the rest are plain
    /// `nn.Linear` / embedding matrices.
    pub fn matrix_layout(self, module: &str) -> MatrixLayout {
        let conv1d = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];
        match self {
            Family::Gpt2 if conv1d.contains(&module) => MatrixLayout {
                transposed: true,
                fused_qkv: (module == "attn.c_attn").then_some(FusedQkv::Blocks),
            },
            Family::GptNeox if module == "attention.query_key_value" => MatrixLayout {
                transposed: false,
                fused_qkv: Some(FusedQkv::PerHead),
            },
            _ => MatrixLayout {
                transposed: false,
                fused_qkv: None,
            },
        }
    }
}
