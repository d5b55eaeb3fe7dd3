//! Numerical building blocks shared by every family, written to match transformers' eager
//! f32 path operation for operation (summation order included) so that references agree to
//! ~1e-6.

use candle_core::{D, DType, Device, Result, Tensor};

use super::config::RopeConfig;

/// A dense layer. The weight is kept as `[in, out]`: checkpoints store `[out, in]`, and
/// transposing once at load time gives the CPU gemm a contiguous right-hand side (~15% faster
/// than a strided view). The unembedding keeps a view instead, to avoid a vocab-sized copy.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]`.
    weight_t: Tensor,
    /// `[out]`.
    bias: Option<Tensor>,
}

impl Linear {
    /// From a PyTorch-layout `[out, in]` weight; `contiguous` copies it into `[in, out]`.
    pub fn new(weight: &Tensor, bias: Option<Tensor>, contiguous: bool) -> Result<Self> {
        let weight_t = weight.t()?;
        let weight_t = if contiguous {
            weight_t.contiguous()?
        } else {
            weight_t
        };
        Ok(Self { weight_t, bias })
    }

    /// From a weight already stored `[in, out]` (GPT-2's `Conv1D`), used as is.
    pub fn from_input_major(weight_t: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight_t, bias }
    }

    /// `x · Wᵀ + b` over the last axis of `x` (any leading shape), as one 2-D matmul.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((last, lead)) = dims.split_last() else {
            candle_core::bail!("a linear layer needs an input with at least one axis")
        };
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, *last))?;
        let y = x2.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_shape = lead.to_vec();
        out_shape.push(self.weight_t.dim(1)?);
        y.reshape(out_shape)
    }
}

/// Outputs of a normalisation: TransformerLens `hook_scale`, `hook_normalized` and the module
/// output (`hook_out`).
pub struct NormOut {
    /// `[b, pos, 1]`; only when asked for (LayerNorm always has it).
    pub scale: Option<Tensor>,
    /// TL `hook_normalized`; only when asked for (LayerNorm always has it).
    pub normalized: Option<Tensor>,
    /// The module output with its weight (and bias), in the compute dtype.
    pub out: Tensor,
}

/// LayerNorm (biased variance) computed in f32; TL's `hook_normalized` is the output with
/// weight and bias, so `normalized` and `out` are the same tensor.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<NormOut> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let centred = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    let normed = centred.broadcast_div(&scale)?;
    let out = normed
        .broadcast_mul(&weight.to_dtype(DType::F32)?)?
        .broadcast_add(&bias.to_dtype(DType::F32)?)?
        .to_dtype(dtype)?;
    Ok(NormOut {
        scale: Some(scale),
        normalized: Some(out.clone()),
        out,
    })
}

/// RMSNorm as in transformers' Llama: normalise in f32, cast back, then multiply by the weight.
/// TL's `hook_normalized` is before the weight. Without `parts` (neither `hook_scale` nor
/// `hook_normalized` wanted), contiguous f32 input on the CPU takes one fused pass per row,
/// rows in parallel, with the same arithmetic.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, parts: bool) -> Result<NormOut> {
    let dtype = x.dtype();
    if !parts
        && x.device().is_cpu()
        && dtype == DType::F32
        && weight.dtype() == DType::F32
        && x.is_contiguous()
        && weight.is_contiguous()
    {
        return Ok(NormOut {
            scale: None,
            normalized: None,
            out: x.apply_op2_no_bwd(weight, &FusedRmsNorm { eps: eps as f32 })?,
        });
    }
    let xf = x.to_dtype(DType::F32)?;
    let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let scale = (mean_sq + eps)?.sqrt()?;
    let normalized = xf.broadcast_div(&scale)?.to_dtype(dtype)?;
    let out = normalized.broadcast_mul(weight)?;
    Ok(NormOut {
        scale: Some(scale),
        normalized: Some(normalized),
        out,
    })
}

/// The values of a contiguous f32 tensor, for the CPU kernels below; `op` names the kernel in
/// the error for anything else.
fn contiguous_f32<'a>(
    op: &str,
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op} expects f32")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op} expects a contiguous input")
    };
    Ok(&data[start..end])
}

/// See [`rms_norm`]: per row `x / sqrt(mean(x²) + eps) · w`, in f32.
struct FusedRmsNorm {
    eps: f32,
}

impl candle_core::CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        w_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = contiguous_f32(self.name(), x, x_layout)?;
        let w = contiguous_f32(self.name(), w, w_layout)?;
        let d = w.len();
        if x_layout.dims().last() != Some(&d) || d == 0 {
            candle_core::bail!(
                "fused-rms-norm: last axis of {:?} is not the weight's {d}",
                x_layout.dims()
            )
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        let rows_per_task = (4096 / d).max(1);
        out.par_chunks_mut(d * rows_per_task)
            .zip(x.par_chunks(d * rows_per_task))
            .for_each(|(out, rows)| {
                for (out, row) in out.chunks_exact_mut(d).zip(rows.chunks_exact(d)) {
                    let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let scale = (mean_sq + eps).sqrt();
                    for ((o, &v), &w) in out.iter_mut().zip(row).zip(w) {
                        *o = v / scale * w;
                    }
                }
            });
        Ok((candle_core::CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// Inverse frequencies `θ^(-2i/rot)`, in f32 like transformers, with llama3 rescaling.
fn inverse_frequencies(rope: &RopeConfig) -> Vec<f32> {
    let rot = rope.rotary_dim;
    (0..rot / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / rot as f32;
            let inv = 1.0f32 / (rope.theta as f32).powf(exponent);
            match &rope.llama3_scaling {
                None => inv,
                Some(s) => {
                    let inv = inv as f64;
                    let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                    let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    let scaled = if wavelen < high_wavelen {
                        inv
                    } else if wavelen > low_wavelen {
                        inv / s.factor
                    } else {
                        let smooth = (s.original_max_position_embeddings / wavelen
                            - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * inv / s.factor + smooth * inv
                    };
                    scaled as f32
                }
            }
        })
        .collect()
}

/// Rotary cos/sin tables `[pos, rot]` (`cat(freqs, freqs)`, the half-split layout).
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    rot: usize,
}

impl Rotary {
    /// Tables for positions `0..seq_len` in `dtype` on `device`.
    pub fn new(rope: &RopeConfig, seq_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inverse_frequencies(rope);
        let half = inv.len();
        let mut cos = Vec::with_capacity(seq_len * 2 * half);
        let mut sin = Vec::with_capacity(seq_len * 2 * half);
        for pos in 0..seq_len {
            // The f32 product mirrors transformers' `inv_freq @ position_ids` in f32.
            let row: Vec<f32> = inv.iter().map(|f| f * pos as f32).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| (*a as f64).cos() as f32));
                sin.extend(row.iter().map(|a| (*a as f64).sin() as f32));
            }
        }
        let shape = (seq_len, 1, 2 * half);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, device)?.to_dtype(dtype)?,
            rot: 2 * half,
        })
    }

    /// Rotates the first `rot` dims of `x` `[b, pos, heads, head_dim]`; the rest pass through.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let head_dim = x.dim(3)?;
        let half = self.rot / 2;
        let x_rot = x.narrow(3, 0, self.rot)?;
        let x1 = x_rot.narrow(3, 0, half)?;
        let x2 = x_rot.narrow(3, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
        let y = (x_rot.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?)?;
        if self.rot == head_dim {
            Ok(y)
        } else {
            Tensor::cat(&[&y, &x.narrow(3, self.rot, head_dim - self.rot)?], 3)
        }
    }
}

/// `[q, k]` additive causal mask: 0 on and below the diagonal, `-inf` above.
pub fn causal_mask(seq_len: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq_len, seq_len), device)
}

/// Softmax over the last axis, in f32.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Attention outputs in TransformerLens layouts.
pub struct AttentionOut {
    /// `[b, heads, q, k]`, masked entries `-inf` (compute dtype); only when asked for.
    pub scores: Option<Tensor>,
    /// `[b, heads, q, k]`; only when asked for.
    pub pattern: Option<Tensor>,
    /// `[b, pos, heads, head_dim]`.
    pub z: Tensor,
}

/// Elements of `[rows, heads, q, k]` scores one attention chunk may hold (256 MiB in f32):
/// long sequences are processed a few batch rows at a time so that scores never dominate
/// memory (2048 tokens × 32 heads is 512 MiB per row).
const SCORE_ELEMENTS_PER_CHUNK: usize = 1 << 26;

/// Causal scaled-dot-product attention with grouped KV heads: query heads
/// `j·rep … (j+1)·rep−1` share KV head `j`. Queries of one group are stacked along the
/// position axis so the KV heads are never copied `rep` times. Scores and pattern are only
/// returned when `keep_scores` / `keep_pattern`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    keep_scores: bool,
    keep_pattern: bool,
) -> Result<AttentionOut> {
    attention_chunked(
        q,
        k,
        v,
        mask,
        keep_scores,
        keep_pattern,
        SCORE_ELEMENTS_PER_CHUNK,
    )
}

fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    keep_scores: bool,
    keep_pattern: bool,
    elements_per_chunk: usize,
) -> Result<AttentionOut> {
    let (b, t, h, _) = q.dims4()?;
    let rows = (elements_per_chunk / (h * t * t).max(1)).clamp(1, b);
    if rows >= b {
        return attention_rows(q, k, v, mask, keep_scores, keep_pattern);
    }
    let (mut scores, mut pattern, mut z) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..b).step_by(rows) {
        let n = rows.min(b - start);
        let part = attention_rows(
            &q.narrow(0, start, n)?,
            &k.narrow(0, start, n)?,
            &v.narrow(0, start, n)?,
            mask,
            keep_scores,
            keep_pattern,
        )?;
        scores.extend(part.scores);
        pattern.extend(part.pattern);
        z.push(part.z);
    }
    let join = |parts: Vec<Tensor>| -> Result<Option<Tensor>> {
        if parts.is_empty() {
            Ok(None)
        } else {
            Tensor::cat(&parts, 0).map(Some)
        }
    };
    Ok(AttentionOut {
        scores: join(scores)?,
        pattern: join(pattern)?,
        z: Tensor::cat(&z, 0)?,
    })
}

fn attention_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    keep_scores: bool,
    keep_pattern: bool,
) -> Result<AttentionOut> {
    let (b, t, h, hd) = q.dims4()?;
    let kvh = k.dim(2)?;
    let rep = h / kvh;
    let dtype = q.dtype();
    let scale = 1.0 / (hd as f64).sqrt();
    let qh = q
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, kvh, rep * t, hd))?;
    let kh = k.transpose(1, 2)?.contiguous()?;
    let vh = v.transpose(1, 2)?.contiguous()?;
    let scores = (qh.matmul(&kh.t()?)? * scale)?.reshape((b, h, t, t))?;
    // The fused kernel is CPU/f32 only; elsewhere the mask is added and softmax taken in f32.
    let fused = scores.device().is_cpu() && dtype == DType::F32;
    let (masked, pattern) = if fused && !keep_scores {
        (None, scores.apply_op1_no_bwd(&CausalSoftmax)?)
    } else {
        let masked = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
        let pattern = if fused {
            scores.apply_op1_no_bwd(&CausalSoftmax)?
        } else {
            softmax_last(&masked)?.to_dtype(dtype)?
        };
        (Some(masked), pattern)
    };
    let z = pattern
        .reshape((b, kvh, rep * t, t))?
        .matmul(&vh)?
        .reshape((b, h, t, hd))?
        .transpose(1, 2)?;
    let scores = match masked {
        Some(m) if keep_scores => Some(m.to_dtype(dtype)?),
        _ => None,
    };
    Ok(AttentionOut {
        scores,
        pattern: keep_pattern.then_some(pattern),
        z,
    })
}

/// `silu(gate) · up` for a gated MLP whose gate and up projections are stacked along the last
/// axis of `both` (`[…, 2·m]`, gate first). On the CPU in f32 it is one pass over each row, rows
/// in parallel, writing one new tensor; elsewhere it is candle's `silu` and `mul` over the two
/// halves. Both compute `g / (1 + e^(-g)) · u` per element in f32, as transformers does.
pub fn silu_mul(both: &Tensor) -> Result<Tensor> {
    if both.device().is_cpu() && both.dtype() == DType::F32 && both.is_contiguous() {
        return both.apply_op1_no_bwd(&SiluMul);
    }
    let m = both.dim(D::Minus1)? / 2;
    both.narrow(D::Minus1, 0, m)?.silu()? * both.narrow(D::Minus1, m, m)?
}

/// See [`silu_mul`].
struct SiluMul;

impl candle_core::CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let data = contiguous_f32(self.name(), storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else {
            candle_core::bail!("silu-mul expects at least one axis")
        };
        if *last % 2 != 0 || *last == 0 {
            candle_core::bail!("silu-mul expects an even last axis, got {last}")
        }
        let width = *last;
        let m = width / 2;
        *last = m;
        let mut out = vec![0f32; data.len() / 2];
        // Rows of a few thousand values per task keep rayon's overhead small.
        let rows_per_task = (4096 / m).max(1);
        out.par_chunks_mut(m * rows_per_task)
            .zip(data.par_chunks(width * rows_per_task))
            .for_each(|(out, rows)| {
                for (out, row) in out.chunks_exact_mut(m).zip(rows.chunks_exact(width)) {
                    let (gate, up) = row.split_at(m);
                    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                        *o = g / (1.0 + (-g).exp()) * u;
                    }
                }
            });
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from(dims),
        ))
    }
}

/// Causal softmax over the last axis of contiguous f32 scores `[…, q, k]` with `q == k`, one
/// pass per row, rows in parallel; entries above the diagonal are 0. Same result as adding the
/// `-inf` mask and taking the softmax, without materialising either intermediate.
struct CausalSoftmax;

impl candle_core::CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let data = contiguous_f32(self.name(), storage, layout)?;
        let dims = layout.dims();
        let (t_q, t_k) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if t_q != t_k {
            candle_core::bail!("causal-softmax expects square scores, got {t_q}×{t_k}")
        }
        let mut out = vec![0f32; data.len()];
        out.par_chunks_mut(t_k)
            .zip(data.par_chunks(t_k))
            .enumerate()
            .for_each(|(row, (o, x))| {
                let n = row % t_q + 1;
                let max = x[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, x) in o[..n].iter_mut().zip(&x[..n]) {
                    *o = (x - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o[..n].iter_mut().for_each(|o| *o *= inv);
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests;
