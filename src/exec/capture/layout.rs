//! What an artifact holds, known before any forward pass: its tensors (shapes from the model's
//! config), its metadata, and so its exact size.

use std::collections::BTreeMap;

use super::rows::tensor_dtype;
use crate::model::Model;
use crate::sink::{TensorDtype, TensorSpec};
use crate::spec::{Dtype, Hook, Pool};

/// Width of a hook's rows, from the model's config (for artifact headers, known before any
/// forward pass).
pub fn hook_width(hook: Hook, model: &Model, seq_len: usize) -> usize {
    let c = model.config();
    match hook {
        Hook::MlpPost => c.d_mlp,
        Hook::AttnPattern => c.n_heads * seq_len,
        Hook::AttnZ => c.n_heads * c.head_dim,
        _ => c.d_model,
    }
}

/// The metadata every artifact of one pinned model carries (see [`artifact_layout`]).
pub fn model_metadata(source: &str, commit: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".to_owned(), "hubsweep-activations-v1".to_owned()),
        ("model".to_owned(), format!("{source}@{commit}")),
        ("revision".to_owned(), revision.to_owned()),
    ])
}

/// The tensors and metadata of one artifact: `tokens` rows of `width` activations at `hook`
/// (its full name) over `windows` — one row per window instead when `pool` pools them — and
/// their token ids. Capture writes exactly this, and the run's progress total counts its size
/// before capture starts.
#[allow(clippy::too_many_arguments)] // the artifact's facts, each used once
pub fn artifact_layout(
    model_metadata: &BTreeMap<String, String>,
    node_id: &str,
    hook: &str,
    windows: (usize, usize),
    tokens: usize,
    width: usize,
    dtype: Dtype,
    pool: Pool,
) -> (Vec<TensorSpec>, BTreeMap<String, String>) {
    let rows = match pool {
        Pool::None => tokens,
        _ => windows.1 - windows.0,
    };
    let specs = vec![
        TensorSpec {
            name: "token_ids".into(),
            dtype: TensorDtype::I32,
            shape: vec![tokens],
        },
        TensorSpec {
            name: "activations".into(),
            dtype: tensor_dtype(dtype),
            shape: vec![rows, width],
        },
    ];
    let mut metadata = model_metadata.clone();
    metadata.insert("node_id".into(), node_id.to_owned());
    metadata.insert("hook".into(), hook.to_owned());
    metadata.insert("windows".into(), format!("{}..{}", windows.0, windows.1));
    metadata.insert("dtype".into(), dtype.as_str().into());
    if let Some(pool) = pool.pooled() {
        metadata.insert("pool".into(), pool.into());
    }
    (specs, metadata)
}
