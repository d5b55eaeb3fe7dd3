//! TransformerLens hook names: parsing, validation against a model, and the set a forward
//! pass keeps.
//!
//! Names follow TransformerLens 2.x/3.x `HookedTransformer` (what SAELens uses), loaded with
//! `from_pretrained_no_processing`, so values equal the HF model's. Two hubsweep additions
//! carry a `hook_out` suffix (the norm's output including its weight, i.e. HF's view) and one is
//! the unembedding output `logits`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use candle_core::Tensor;

use super::ModelError;
use super::config::ModelConfig;

/// A hook inside a LayerNorm/RMSNorm (`ln1`, `ln2`, `ln_final`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NormHook {
    /// `hook_scale` [b, pos, 1]: `sqrt(var + eps)` (LN, after centring) or `sqrt(mean(x²) + eps)` (RMS).
    Scale,
    /// `hook_normalized` [b, pos, d]: TransformerLens semantics, i.e. *with* weight and bias for
    /// LayerNorm, *without* the weight for RMSNorm.
    Normalized,
    /// `hook_out` [b, pos, d] (hubsweep): the norm module's output with its weight, as in HF.
    Out,
}

/// A per-block hook point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockHook {
    /// `hook_resid_pre` [b, pos, d]: block input.
    ResidPre,
    /// `ln1.*`: the norm before attention.
    Ln1(NormHook),
    /// `attn.hook_q` [b, pos, heads, d_head], before rotary.
    Q,
    /// `attn.hook_k` [b, pos, kv_heads, d_head], before rotary.
    K,
    /// `attn.hook_v` [b, pos, kv_heads, d_head].
    V,
    /// `attn.q_norm.*` (Qwen3): the per-head RMSNorm of the queries, after `hook_q` and before
    /// rotary; `hook_scale` is [b, pos, heads, 1], the others [b, pos, heads, d_head].
    QNorm(NormHook),
    /// `attn.k_norm.*` (Qwen3): as `attn.q_norm.*` for the keys ([b, pos, kv_heads, …]).
    KNorm(NormHook),
    /// `attn.hook_rot_q`: queries after rotary.
    RotQ,
    /// `attn.hook_rot_k`: keys after rotary.
    RotK,
    /// `attn.hook_attn_scores` [b, heads, q, k]: scaled scores, masked positions `-inf`.
    AttnScores,
    /// `attn.hook_pattern` [b, heads, q, k]: softmax of the scores.
    Pattern,
    /// `attn.hook_z` [b, pos, heads, d_head]: per-head output before the output projection.
    Z,
    /// `hook_attn_out` [b, pos, d]: attention output including its bias.
    AttnOut,
    /// `hook_resid_mid` [b, pos, d]: `resid_pre + attn_out`; sequential blocks only.
    ResidMid,
    /// `ln2.*`: the norm before the MLP.
    Ln2(NormHook),
    /// `mlp.hook_pre` [b, pos, d_mlp]: pre-activation (the gate projection when gated).
    MlpPre,
    /// `mlp.hook_pre_linear` [b, pos, d_mlp]: the up projection (gated MLPs only).
    MlpPreLinear,
    /// `mlp.hook_post` [b, pos, d_mlp]: post-activation (`act(gate)·up` when gated).
    MlpPost,
    /// `hook_mlp_out` [b, pos, d]: MLP output including its bias.
    MlpOut,
    /// `hook_resid_post` [b, pos, d]: block output.
    ResidPost,
}

/// Every block hook suffix, in forward order (also the order `inspect` lists them).
pub const BLOCK_HOOKS: &[(&str, BlockHook)] = &[
    ("hook_resid_pre", BlockHook::ResidPre),
    ("ln1.hook_scale", BlockHook::Ln1(NormHook::Scale)),
    ("ln1.hook_normalized", BlockHook::Ln1(NormHook::Normalized)),
    ("ln1.hook_out", BlockHook::Ln1(NormHook::Out)),
    ("attn.hook_q", BlockHook::Q),
    ("attn.hook_k", BlockHook::K),
    ("attn.hook_v", BlockHook::V),
    ("attn.q_norm.hook_scale", BlockHook::QNorm(NormHook::Scale)),
    (
        "attn.q_norm.hook_normalized",
        BlockHook::QNorm(NormHook::Normalized),
    ),
    ("attn.q_norm.hook_out", BlockHook::QNorm(NormHook::Out)),
    ("attn.k_norm.hook_scale", BlockHook::KNorm(NormHook::Scale)),
    (
        "attn.k_norm.hook_normalized",
        BlockHook::KNorm(NormHook::Normalized),
    ),
    ("attn.k_norm.hook_out", BlockHook::KNorm(NormHook::Out)),
    ("attn.hook_rot_q", BlockHook::RotQ),
    ("attn.hook_rot_k", BlockHook::RotK),
    ("attn.hook_attn_scores", BlockHook::AttnScores),
    ("attn.hook_pattern", BlockHook::Pattern),
    ("attn.hook_z", BlockHook::Z),
    ("hook_attn_out", BlockHook::AttnOut),
    ("hook_resid_mid", BlockHook::ResidMid),
    ("ln2.hook_scale", BlockHook::Ln2(NormHook::Scale)),
    ("ln2.hook_normalized", BlockHook::Ln2(NormHook::Normalized)),
    ("ln2.hook_out", BlockHook::Ln2(NormHook::Out)),
    ("mlp.hook_pre", BlockHook::MlpPre),
    ("mlp.hook_pre_linear", BlockHook::MlpPreLinear),
    ("mlp.hook_post", BlockHook::MlpPost),
    ("hook_mlp_out", BlockHook::MlpOut),
    ("hook_resid_post", BlockHook::ResidPost),
];

/// Model-level (not per-block) hook names; the first two come before the blocks.
pub const MODEL_HOOKS: &[(&str, HookPoint)] = &[
    ("hook_embed", HookPoint::Embed),
    ("hook_pos_embed", HookPoint::PosEmbed),
    ("ln_final.hook_scale", HookPoint::LnFinal(NormHook::Scale)),
    (
        "ln_final.hook_normalized",
        HookPoint::LnFinal(NormHook::Normalized),
    ),
    ("ln_final.hook_out", HookPoint::LnFinal(NormHook::Out)),
    ("logits", HookPoint::Logits),
];

/// One place in the forward pass where an activation can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// `hook_embed` [b, pos, d]: token embedding.
    Embed,
    /// `hook_pos_embed` [b, pos, d]: learned position embedding (GPT-2 only);
    /// `blocks.0.hook_resid_pre` is `hook_embed + hook_pos_embed`.
    PosEmbed,
    /// `blocks.{layer}.{hook}`.
    Block {
        /// Block index, 0-based.
        layer: usize,
        /// Which hook in the block.
        hook: BlockHook,
    },
    /// `ln_final.*`.
    LnFinal(NormHook),
    /// `logits` [b, pos, vocab]: the unembedding output.
    Logits,
}

impl HookPoint {
    /// Parses a full name such as `blocks.3.hook_resid_post` (no validation against a model).
    pub fn parse(name: &str) -> Result<Self, ModelError> {
        if let Some((_, point)) = MODEL_HOOKS.iter().find(|(n, _)| *n == name) {
            return Ok(*point);
        }
        let unknown = || ModelError::UnknownHook {
            name: name.to_string(),
            suggestion: suggest(name),
        };
        let rest = name.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        let hook = block_hook(suffix).ok_or_else(unknown)?;
        Ok(HookPoint::Block { layer, hook })
    }

    /// The block this hook lives in, if any.
    pub fn layer(&self) -> Option<usize> {
        match self {
            HookPoint::Block { layer, .. } => Some(*layer),
            _ => None,
        }
    }
}

/// Looks up a block hook suffix (`hook_resid_post`, `attn.hook_z`, …).
pub fn block_hook(suffix: &str) -> Option<BlockHook> {
    BLOCK_HOOKS
        .iter()
        .find(|(n, _)| *n == suffix)
        .map(|(_, h)| *h)
}

fn block_suffix(hook: BlockHook) -> &'static str {
    BLOCK_HOOKS
        .iter()
        .find(|(_, h)| *h == hook)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookPoint::Block { layer, hook } => write!(f, "blocks.{layer}.{}", block_suffix(*hook)),
            other => {
                let name = MODEL_HOOKS
                    .iter()
                    .find(|(_, p)| p == other)
                    .map(|(n, _)| *n);
                f.write_str(name.unwrap_or("?"))
            }
        }
    }
}

/// The closest known name to `name` (block names with their layer kept), for "did you mean".
fn suggest(name: &str) -> Option<String> {
    let (prefix, suffix) = match name.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
        Some((layer, suffix)) => (format!("blocks.{layer}."), suffix),
        None => (String::new(), name),
    };
    let candidates = BLOCK_HOOKS
        .iter()
        .map(|(n, _)| (prefix.clone() + n, *n))
        .chain(MODEL_HOOKS.iter().map(|(n, _)| (n.to_string(), *n)));
    candidates
        .map(|(full, short)| (strsim::jaro_winkler(suffix, short), full))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, full)| full)
}

/// Checks that `point` exists in a model with `config`.
pub fn check_point(point: HookPoint, config: &ModelConfig) -> Result<(), ModelError> {
    let not_in_model = |reason| {
        Err(ModelError::HookNotInModel {
            name: point.to_string(),
            reason,
        })
    };
    let HookPoint::Block { layer, hook } = point else {
        if point == HookPoint::PosEmbed && config.rope.is_some() {
            return not_in_model(
                "rotary models have no learned position embedding (positions enter as hook_rot_q/hook_rot_k)",
            );
        }
        return Ok(());
    };
    if layer >= config.n_layers {
        return Err(ModelError::LayerOutOfRange {
            name: point.to_string(),
            layer,
            n_layers: config.n_layers,
        });
    }
    let reason = match hook {
        BlockHook::ResidMid if config.parallel_residual => Some(
            "parallel-residual blocks have no resid_mid: attention and MLP both read resid_pre",
        ),
        BlockHook::MlpPreLinear if !config.is_gated_mlp() => {
            Some("only gated MLPs have a separate up projection")
        }
        BlockHook::RotQ | BlockHook::RotK if config.rope.is_none() => {
            Some("GPT-2 has learned absolute positions (hook_pos_embed), no rotary embedding")
        }
        BlockHook::QNorm(_) | BlockHook::KNorm(_) if !config.qk_norm => {
            Some("only Qwen3 normalises queries and keys per head (q_norm, k_norm)")
        }
        _ => None,
    };
    match reason {
        Some(reason) => not_in_model(reason),
        None => Ok(()),
    }
}

/// Every hook name a model with `config` offers, in forward order.
pub fn available_hooks(config: &ModelConfig) -> Vec<String> {
    let mut names: Vec<String> = MODEL_HOOKS[..2]
        .iter()
        .filter(|(_, point)| check_point(*point, config).is_ok())
        .map(|(n, _)| n.to_string())
        .collect();
    for layer in 0..config.n_layers {
        for (_, hook) in BLOCK_HOOKS {
            let point = HookPoint::Block { layer, hook: *hook };
            if check_point(point, config).is_ok() {
                names.push(point.to_string());
            }
        }
    }
    names.extend(MODEL_HOOKS[2..].iter().map(|(n, _)| n.to_string()));
    names
}

/// The hooks a forward pass keeps, validated against one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookRequest {
    points: BTreeSet<HookPoint>,
}

impl HookRequest {
    /// Validates full hook names against `config`.
    pub fn new<S: AsRef<str>>(names: &[S], config: &ModelConfig) -> Result<Self, ModelError> {
        let mut points = BTreeSet::new();
        for name in names {
            let point = HookPoint::parse(name.as_ref())?;
            check_point(point, config)?;
            points.insert(point);
        }
        Ok(Self { points })
    }

    /// Every available hook of the model (what the reference tests compare).
    pub fn all(config: &ModelConfig) -> Self {
        let names = available_hooks(config);
        Self::new(&names, config).unwrap_or_default()
    }

    /// The requested points.
    pub fn points(&self) -> &BTreeSet<HookPoint> {
        &self.points
    }

    /// Whether nothing is requested.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Whether `point` is requested.
    pub fn wants(&self, point: HookPoint) -> bool {
        self.points.contains(&point)
    }

    /// How many blocks the forward pass must run: blocks after the last requested one are
    /// skipped; `ln_final.*` and `logits` need all of them.
    pub fn blocks_needed(&self, n_layers: usize) -> usize {
        self.points
            .iter()
            .map(|p| match p {
                HookPoint::Embed | HookPoint::PosEmbed => 0,
                HookPoint::Block { layer, .. } => layer + 1,
                HookPoint::LnFinal(_) | HookPoint::Logits => n_layers,
            })
            .max()
            .unwrap_or(0)
    }
}

/// Recorded activations, keyed by full hook name.
#[derive(Debug, Default)]
pub struct Activations {
    tensors: BTreeMap<String, Tensor>,
}

impl Activations {
    pub(crate) fn insert(&mut self, point: HookPoint, tensor: Tensor) {
        self.tensors.insert(point.to_string(), tensor);
    }

    /// The activation recorded at `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Number of recorded activations.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// (name, tensor) pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Consumes the set into its map.
    pub fn into_map(self) -> BTreeMap<String, Tensor> {
        self.tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "hook_embed",
            "blocks.12.attn.hook_z",
            "ln_final.hook_scale",
            "logits",
        ] {
            assert_eq!(HookPoint::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn unknown_hook_suggests() {
        let err = HookPoint::parse("blocks.2.hook_resid_psot").unwrap_err();
        assert!(
            err.to_string().contains("blocks.2.hook_resid_post"),
            "{err}"
        );
    }
}
