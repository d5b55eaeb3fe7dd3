//! One transformer block for every family, built from checkpoint tensors, and its forward
//! pass with TransformerLens hook points.
//!
//! GPT-NeoX: LayerNorm, fused per-head-interleaved QKV with biases, partial rotary, plain GELU
//! MLP, parallel or sequential residual. GPT-2: LayerNorm, fused `c_attn` (`[q; k; v]`),
//! `Conv1D` weights stored `[in, out]`, no rotary, tanh-GELU MLP, sequential residual. The
//! Llama block (Llama, Qwen2, Qwen3, Mistral): RMSNorm, separate q/k/v (GQA), full rotary,
//! SiLU-gated MLP, sequential residual; Qwen2 adds q/k/v biases, Qwen3 a per-head RMSNorm on
//! queries and keys before rotary.

use candle_core::{Result, Tensor};

use super::ModelError;
use super::config::{Activation, Family, ModelConfig};
use super::hooks::{Activations, BlockHook, HookPoint, HookRequest, NormHook};
use super::ops::{self, Linear, NormOut, Rotary};
use super::weights::Weights;

/// A normalisation layer.
#[derive(Debug, Clone)]
pub enum Norm {
    /// LayerNorm with weight and bias (GPT-NeoX).
    Layer {
        /// `[d]`.
        weight: Tensor,
        /// `[d]`.
        bias: Tensor,
    },
    /// RMSNorm with a weight (Llama).
    Rms {
        /// `[d]`.
        weight: Tensor,
    },
}

impl Norm {
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        family: Family,
        d: usize,
    ) -> std::result::Result<Self, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"), &[d])?;
        Ok(if family.uses_layer_norm() {
            Norm::Layer {
                weight,
                bias: w.get(&format!("{prefix}.bias"), &[d])?,
            }
        } else {
            Norm::Rms { weight }
        })
    }

    /// `parts`: `hook_scale` or `hook_normalized` is wanted, so [`NormOut`] must carry them.
    pub(crate) fn forward(&self, x: &Tensor, eps: f64, parts: bool) -> Result<NormOut> {
        match self {
            Norm::Layer { weight, bias } => ops::layer_norm(x, weight, bias, eps),
            Norm::Rms { weight } => ops::rms_norm(x, weight, eps, parts),
        }
    }
}

/// Several `[out_i, in]` projections (with optional biases) concatenated into one layer, so
/// that one gemm replaces several smaller ones.
fn linear_stack(
    w: &Weights,
    prefixes: &[(&str, usize)],
    inp: usize,
    bias: bool,
) -> std::result::Result<Linear, ModelError> {
    let mut weights = Vec::with_capacity(prefixes.len());
    let mut biases = Vec::with_capacity(prefixes.len());
    for (prefix, out) in prefixes {
        weights.push(w.get(&format!("{prefix}.weight"), &[*out, inp])?);
        if bias {
            biases.push(w.get(&format!("{prefix}.bias"), &[*out])?);
        }
    }
    let build = || -> candle_core::Result<Linear> {
        let bias = if bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Linear::new(&Tensor::cat(&weights, 0)?, bias, true)
    };
    build().map_err(|source| ModelError::Tensor {
        context: format!("preparing `{}`", prefixes[0].0),
        source,
    })
}

/// A GPT-2 `Conv1D`: the weight is stored `[in, out]`, which is already the layout
/// [`Linear`] keeps, so it is used as stored (no transpose).
fn conv1d(
    w: &Weights,
    prefix: &str,
    inp: usize,
    out: usize,
) -> std::result::Result<Linear, ModelError> {
    let weight = w.get(&format!("{prefix}.weight"), &[inp, out])?;
    let bias = w.get(&format!("{prefix}.bias"), &[out])?;
    Ok(Linear::from_input_major(weight, Some(bias)))
}

fn linear(
    w: &Weights,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> std::result::Result<Linear, ModelError> {
    linear_stack(w, &[(prefix, out)], inp, bias)
}

/// Query/key/value projections.
#[derive(Debug, Clone)]
enum Qkv {
    /// GPT-NeoX `query_key_value`: output viewed as `[b, t, heads, 3·head_dim]`, then split.
    Fused(Linear),
    /// Llama-block `q_proj`, `k_proj`, `v_proj` stacked into one `[in, (h + 2·kv)·dh]` layer;
    /// also GPT-2's `c_attn`, whose output is `[q; k; v]` with `kv = h`.
    Stacked(Linear),
}

/// The MLP.
#[derive(Debug, Clone)]
enum Mlp {
    /// `down(act(up(x)))`.
    Plain { up: Linear, down: Linear },
    /// `down(act(gate(x)) · up(x))`, gate and up stacked into one layer.
    Gated { gate_up: Linear, down: Linear },
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    layer: usize,
    ln1: Norm,
    ln2: Norm,
    qkv: Qkv,
    /// Qwen3's per-head RMSNorms on queries and keys (`[head_dim]` weights).
    qk_norm: Option<(Norm, Norm)>,
    out_proj: Linear,
    mlp: Mlp,
}

impl Block {
    /// Fetches block `layer`'s tensors under their checkpoint names.
    pub(crate) fn load(
        w: &Weights,
        cfg: &ModelConfig,
        layer: usize,
    ) -> std::result::Result<Self, ModelError> {
        let d = cfg.d_model;
        let (hd, h, kvh, m) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.d_mlp);
        let (ab, ob, mb) = (cfg.attention_bias, cfg.attention_out_bias, cfg.mlp_bias);
        match cfg.family {
            Family::GptNeox => {
                let p = format!("gpt_neox.layers.{layer}");
                Ok(Self {
                    layer,
                    ln1: Norm::load(w, &format!("{p}.input_layernorm"), cfg.family, d)?,
                    ln2: Norm::load(w, &format!("{p}.post_attention_layernorm"), cfg.family, d)?,
                    qkv: Qkv::Fused(linear(
                        w,
                        &format!("{p}.attention.query_key_value"),
                        3 * d,
                        d,
                        ab,
                    )?),
                    qk_norm: None,
                    out_proj: linear(w, &format!("{p}.attention.dense"), d, d, ob)?,
                    mlp: Mlp::Plain {
                        up: linear(w, &format!("{p}.mlp.dense_h_to_4h"), m, d, mb)?,
                        down: linear(w, &format!("{p}.mlp.dense_4h_to_h"), d, m, mb)?,
                    },
                })
            }
            Family::Gpt2 => {
                let p = format!("{}h.{layer}", gpt2_root(w));
                Ok(Self {
                    layer,
                    ln1: Norm::load(w, &format!("{p}.ln_1"), cfg.family, d)?,
                    ln2: Norm::load(w, &format!("{p}.ln_2"), cfg.family, d)?,
                    qkv: Qkv::Stacked(conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?),
                    qk_norm: None,
                    out_proj: conv1d(w, &format!("{p}.attn.c_proj"), d, d)?,
                    mlp: Mlp::Plain {
                        up: conv1d(w, &format!("{p}.mlp.c_fc"), d, m)?,
                        down: conv1d(w, &format!("{p}.mlp.c_proj"), m, d)?,
                    },
                })
            }
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Mistral => {
                let p = format!("model.layers.{layer}");
                let qk_norm = if cfg.qk_norm {
                    Some((
                        Norm::load(w, &format!("{p}.self_attn.q_norm"), cfg.family, hd)?,
                        Norm::load(w, &format!("{p}.self_attn.k_norm"), cfg.family, hd)?,
                    ))
                } else {
                    None
                };
                Ok(Self {
                    layer,
                    ln1: Norm::load(w, &format!("{p}.input_layernorm"), cfg.family, d)?,
                    ln2: Norm::load(w, &format!("{p}.post_attention_layernorm"), cfg.family, d)?,
                    qkv: Qkv::Stacked(linear_stack(
                        w,
                        &[
                            (&format!("{p}.self_attn.q_proj"), h * hd),
                            (&format!("{p}.self_attn.k_proj"), kvh * hd),
                            (&format!("{p}.self_attn.v_proj"), kvh * hd),
                        ],
                        d,
                        ab,
                    )?),
                    qk_norm,
                    out_proj: linear(w, &format!("{p}.self_attn.o_proj"), d, h * hd, ob)?,
                    mlp: Mlp::Gated {
                        gate_up: linear_stack(
                            w,
                            &[
                                (&format!("{p}.mlp.gate_proj"), m),
                                (&format!("{p}.mlp.up_proj"), m),
                            ],
                            d,
                            mb,
                        )?,
                        down: linear(w, &format!("{p}.mlp.down_proj"), d, m, mb)?,
                    },
                })
            }
        }
    }
}

/// The key prefix of a GPT-2 checkpoint: `transformer.` in saves by transformers, nothing in
/// `openai-community/gpt2`'s own files (`h.0.attn.c_attn.weight`, `wte.weight`).
pub(crate) fn gpt2_root(w: &Weights) -> &'static str {
    if w.contains("wte.weight") && !w.contains("transformer.wte.weight") {
        ""
    } else {
        "transformer."
    }
}

/// What a block forward needs besides its input.
pub(crate) struct BlockContext<'a> {
    pub cfg: &'a ModelConfig,
    /// `None` for learned absolute positions (GPT-2).
    pub rotary: Option<&'a Rotary>,
    pub mask: &'a Tensor,
    pub request: &'a HookRequest,
}

struct Recorder<'a> {
    layer: usize,
    request: &'a HookRequest,
    acts: &'a mut Activations,
}

impl Recorder<'_> {
    fn put(&mut self, hook: BlockHook, t: &Tensor) {
        let point = HookPoint::Block {
            layer: self.layer,
            hook,
        };
        if self.request.wants(point) {
            self.acts.insert(point, t.clone());
        }
    }

    /// Whether `hook_scale` or `hook_normalized` of a norm is wanted.
    fn wants_parts(&self, which: fn(NormHook) -> BlockHook) -> bool {
        [NormHook::Scale, NormHook::Normalized].iter().any(|&part| {
            self.request.wants(HookPoint::Block {
                layer: self.layer,
                hook: which(part),
            })
        })
    }

    fn norm(&mut self, which: fn(NormHook) -> BlockHook, n: &NormOut) {
        if let Some(scale) = &n.scale {
            self.put(which(NormHook::Scale), scale);
        }
        if let Some(normalized) = &n.normalized {
            self.put(which(NormHook::Normalized), normalized);
        }
        self.put(which(NormHook::Out), &n.out);
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::GeluErf => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
        Activation::Silu => x.silu(),
    }
}

impl Block {
    fn attention(
        &self,
        x: &Tensor,
        ctx: &BlockContext<'_>,
        rec: &mut Recorder<'_>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let cfg = ctx.cfg;
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (q, k, v) = match &self.qkv {
            Qkv::Fused(lin) => {
                // Rows run [q_h0, k_h0, v_h0, q_h1, …], each head_dim long.
                let qkv = lin.forward(x)?.reshape((b, t, h, 3 * hd))?;
                (
                    qkv.narrow(3, 0, hd)?,
                    qkv.narrow(3, hd, hd)?,
                    qkv.narrow(3, 2 * hd, hd)?,
                )
            }
            Qkv::Stacked(lin) => {
                let qkv = lin.forward(x)?;
                (
                    qkv.narrow(2, 0, h * hd)?.reshape((b, t, h, hd))?,
                    qkv.narrow(2, h * hd, kvh * hd)?.reshape((b, t, kvh, hd))?,
                    qkv.narrow(2, (h + kvh) * hd, kvh * hd)?
                        .reshape((b, t, kvh, hd))?,
                )
            }
        };
        rec.put(BlockHook::Q, &q);
        rec.put(BlockHook::K, &k);
        rec.put(BlockHook::V, &v);
        let (q, k) = match &self.qk_norm {
            Some((q_norm, k_norm)) => {
                let eps = cfg.norm_eps;
                let qn = q_norm.forward(&q, eps, rec.wants_parts(BlockHook::QNorm))?;
                rec.norm(BlockHook::QNorm, &qn);
                let kn = k_norm.forward(&k, eps, rec.wants_parts(BlockHook::KNorm))?;
                rec.norm(BlockHook::KNorm, &kn);
                (qn.out, kn.out)
            }
            None => (q, k),
        };
        let (q, k) = match ctx.rotary {
            Some(rotary) => {
                let (q, k) = (rotary.apply(&q)?, rotary.apply(&k)?);
                rec.put(BlockHook::RotQ, &q);
                rec.put(BlockHook::RotK, &k);
                (q, k)
            }
            None => (q, k),
        };
        let wants = |hook| {
            ctx.request.wants(HookPoint::Block {
                layer: self.layer,
                hook,
            })
        };
        let att = ops::attention(
            &q,
            &k,
            &v,
            ctx.mask,
            wants(BlockHook::AttnScores),
            wants(BlockHook::Pattern),
        )?;
        if let Some(scores) = &att.scores {
            rec.put(BlockHook::AttnScores, scores);
        }
        if let Some(pattern) = &att.pattern {
            rec.put(BlockHook::Pattern, pattern);
        }
        rec.put(BlockHook::Z, &att.z);
        self.out_proj.forward(&att.z.reshape((b, t, h * hd))?)
    }

    fn mlp(&self, x: &Tensor, act: Activation, rec: &mut Recorder<'_>) -> Result<Tensor> {
        let post = match &self.mlp {
            Mlp::Plain { up, .. } => {
                let pre = up.forward(x)?;
                rec.put(BlockHook::MlpPre, &pre);
                activate(&pre, act)?
            }
            Mlp::Gated { gate_up, .. } => {
                let both = gate_up.forward(x)?;
                let m = both.dim(2)? / 2;
                let pre = both.narrow(2, 0, m)?;
                let pre_linear = both.narrow(2, m, m)?;
                rec.put(BlockHook::MlpPre, &pre);
                rec.put(BlockHook::MlpPreLinear, &pre_linear);
                match act {
                    Activation::Silu => ops::silu_mul(&both)?,
                    _ => (activate(&pre, act)? * pre_linear)?,
                }
            }
        };
        rec.put(BlockHook::MlpPost, &post);
        match &self.mlp {
            Mlp::Plain { down, .. } | Mlp::Gated { down, .. } => down.forward(&post),
        }
    }

    /// Runs the block on the residual stream `x` `[b, pos, d]`, recording requested hooks.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &BlockContext<'_>,
        acts: &mut Activations,
    ) -> Result<Tensor> {
        let eps = ctx.cfg.norm_eps;
        let mut rec = Recorder {
            layer: self.layer,
            request: ctx.request,
            acts,
        };
        rec.put(BlockHook::ResidPre, x);
        let ln1 = self.ln1.forward(x, eps, rec.wants_parts(BlockHook::Ln1))?;
        rec.norm(BlockHook::Ln1, &ln1);
        let attn_out = self.attention(&ln1.out, ctx, &mut rec)?;
        rec.put(BlockHook::AttnOut, &attn_out);
        let out = if ctx.cfg.parallel_residual {
            let ln2 = self.ln2.forward(x, eps, rec.wants_parts(BlockHook::Ln2))?;
            rec.norm(BlockHook::Ln2, &ln2);
            let mlp_out = self.mlp(&ln2.out, ctx.cfg.activation, &mut rec)?;
            rec.put(BlockHook::MlpOut, &mlp_out);
            // transformers sums (mlp + attn) + x; the same order keeps errors at 1 ulp.
            ((mlp_out + attn_out)? + x)?
        } else {
            let mid = (x + attn_out)?;
            rec.put(BlockHook::ResidMid, &mid);
            let ln2 = self
                .ln2
                .forward(&mid, eps, rec.wants_parts(BlockHook::Ln2))?;
            rec.norm(BlockHook::Ln2, &ln2);
            let mlp_out = self.mlp(&ln2.out, ctx.cfg.activation, &mut rec)?;
            rec.put(BlockHook::MlpOut, &mlp_out);
            (mid + mlp_out)?
        };
        rec.put(BlockHook::ResidPost, &out);
        Ok(out)
    }
}
