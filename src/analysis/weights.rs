//! Weight spectroscopy: singular values of weight matrices (or of their change from a base
//! checkpoint), the split of GPT-NeoX's fused QKV weight, and module patterns over
//! checkpoint keys.

use std::collections::{BTreeMap, BTreeSet};

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::traits::RealField;
use faer::{Accum, Mat, MatRef};
use serde::{Deserialize, Serialize};

use super::metrics::SpectrumMetrics;
use super::spectrum::Decomposition;
use super::{AnalysisError, Element, Parallelism, UnmatchedPattern, check_shape};

/// How singular values of a weight are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SvdMethod {
    /// SVD in double precision: every singular value accurate to about `1e-15 · σ₁`.
    #[default]
    SvdF64,
    /// SVD in single precision: about `1e-6 · σ₁`; faster for square matrices.
    SvdF32,
    /// Eigenvalues of the smaller Gram matrix (`WᵀW` or `WWᵀ`), formed and decomposed in
    /// f64. The product runs at matmul speed, several times faster than the SVD's QR step on
    /// tall matrices such as embeddings, but squaring the matrix costs accuracy in the small
    /// singular values: `σᵢ` is off by about `1e-16 · σ₁² / σᵢ` (still better than
    /// [`SvdMethod::SvdF32`] unless `σ₁/σᵢ > 1e8`).
    GramF64,
}

/// A borrowed row-major weight matrix `[rows, cols]` (the checkpoint's `[out, in]`).
#[derive(Debug, Clone, Copy)]
pub struct WeightMatrix<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T: Element> WeightMatrix<'a, T> {
    /// A view of `data` as `rows × cols`; fails unless `data.len() == rows × cols` and both
    /// are at least 1.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self, AnalysisError> {
        if rows == 0 {
            return Err(AnalysisError::Empty { what: "rows" });
        }
        if cols == 0 {
            return Err(AnalysisError::Empty { what: "cols" });
        }
        check_shape("weight", data.len(), rows, cols)?;
        Ok(Self { data, rows, cols })
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row-major.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
}

/// Singular values of one weight matrix (or delta).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSpectrum {
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns of the matrix.
    pub cols: usize,
    /// `min(rows, cols)` singular values, non-increasing.
    pub singular_values: Vec<f64>,
}

impl WeightSpectrum {
    /// Summary metrics, recording the top `top_k` squared singular values.
    pub fn metrics(&self, top_k: usize) -> SpectrumMetrics {
        SpectrumMetrics::from_singular_values(&self.singular_values, top_k)
    }
}

/// Singular values of `weight` by `method` (the values are converted from their stored dtype
/// first; f16 and bf16 convert exactly).
pub fn weight_spectrum<T: Element>(
    weight: WeightMatrix<'_, T>,
    method: SvdMethod,
    parallelism: Parallelism,
) -> Result<WeightSpectrum, AnalysisError> {
    check_finite("weight", weight.data, weight.cols)?;
    let values = weight.data.iter().map(|value| value.to_f64());
    spectrum_of(values, weight.rows, weight.cols, method, parallelism)
}

/// Singular values of `weight − base` (the change from a base checkpoint). The difference is
/// formed in f64 from the stored values, then rounded to the method's precision.
pub fn weight_delta_spectrum<T: Element, B: Element>(
    weight: WeightMatrix<'_, T>,
    base: WeightMatrix<'_, B>,
    method: SvdMethod,
    parallelism: Parallelism,
) -> Result<WeightSpectrum, AnalysisError> {
    if (weight.rows, weight.cols) != (base.rows, base.cols) {
        return Err(AnalysisError::WeightShapeMismatch {
            rows: weight.rows,
            cols: weight.cols,
            base_rows: base.rows,
            base_cols: base.cols,
        });
    }
    check_finite("weight", weight.data, weight.cols)?;
    check_finite("base weight", base.data, base.cols)?;
    let delta = weight
        .data
        .iter()
        .zip(base.data)
        .map(|(value, base)| value.to_f64() - base.to_f64());
    spectrum_of(delta, weight.rows, weight.cols, method, parallelism)
}

/// Singular values of many weights at once, on the calling rayon pool: the matrices run in
/// parallel (largest first), each decomposition on one thread. On the SmolLM2-135M benchmark
/// this beat one-matrix-at-a-time with a parallel SVD (`docs/analysis.md`). Results are in
/// input order, bitwise equal to [`weight_spectrum`] with [`Parallelism::Sequential`].
pub fn weight_spectra<T: Element>(
    weights: &[WeightMatrix<'_, T>],
    method: SvdMethod,
) -> Vec<Result<WeightSpectrum, AnalysisError>> {
    use rayon::prelude::*;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest first, so the pool does not end waiting on one big straggler.
    order.sort_by_key(|&index| std::cmp::Reverse(weights[index].rows * weights[index].cols));
    let mut results: Vec<(usize, Result<WeightSpectrum, AnalysisError>)> = order
        .into_par_iter()
        .map(|index| {
            let result = weight_spectrum(weights[index], method, Parallelism::Sequential);
            (index, result)
        })
        .collect();
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

fn spectrum_of(
    values: impl Iterator<Item = f64>,
    rows: usize,
    cols: usize,
    method: SvdMethod,
    parallelism: Parallelism,
) -> Result<WeightSpectrum, AnalysisError> {
    let singular_values = match method {
        SvdMethod::SvdF64 => singular_values(values.collect(), rows, cols, parallelism)?,
        SvdMethod::SvdF32 => singular_values(
            values.map(|value| value as f32).collect(),
            rows,
            cols,
            parallelism,
        )?,
        SvdMethod::GramF64 => gram_singular_values(values.collect(), rows, cols, parallelism)?,
    };
    Ok(WeightSpectrum {
        rows,
        cols,
        singular_values,
    })
}

/// Singular values from the eigenvalues of the smaller Gram matrix of the row-major
/// `[rows, cols]` matrix in `values`.
fn gram_singular_values(
    values: Vec<f64>,
    rows: usize,
    cols: usize,
    parallelism: Parallelism,
) -> Result<Vec<f64>, AnalysisError> {
    // The buffer is the column-major `cols × rows` matrix `M = Wᵀ`; `M Mᵀ = WᵀW` is
    // `cols × cols`, `Mᵀ M = WWᵀ` is `rows × rows`: take the smaller.
    let transposed = MatRef::from_column_major_slice(&values, cols, rows);
    let factor = if rows >= cols {
        transposed
    } else {
        transposed.transpose()
    };
    let size = factor.nrows();
    let mut gram = Mat::<f64>::zeros(size, size);
    matmul(
        gram.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        factor,
        BlockStructure::Rectangular,
        factor.transpose(),
        BlockStructure::Rectangular,
        1.0,
        parallelism.to_faer(),
    );
    Ok(Decomposition::from_gram(gram.as_ref(), 0, parallelism)?.singular_values)
}

fn check_finite<T: Element>(
    what: &'static str,
    data: &[T],
    cols: usize,
) -> Result<(), AnalysisError> {
    match data.iter().position(|value| !value.to_f64().is_finite()) {
        Some(index) => Err(AnalysisError::NonFinite {
            what,
            row: index / cols,
            column: index % cols,
            value: data[index].to_f64(),
        }),
        None => Ok(()),
    }
}

/// Singular values (no vectors) of the row-major `[rows, cols]` matrix in `values`.
fn singular_values<F: RealField + Copy + Into<f64>>(
    values: Vec<F>,
    rows: usize,
    cols: usize,
    parallelism: Parallelism,
) -> Result<Vec<f64>, AnalysisError> {
    // A row-major `[rows, cols]` buffer is the column-major `cols × rows` matrix `Wᵀ`, which
    // has the same singular values: no transposing copy needed.
    let transposed = MatRef::from_column_major_slice(&values, cols, rows);
    let par = parallelism.to_faer();
    let mut sigma = Diag::<F>::zeros(rows.min(cols));
    let mut buffer = MemBuffer::new(svd::svd_scratch::<F>(
        cols,
        rows,
        ComputeSvdVectors::No,
        ComputeSvdVectors::No,
        par,
        Default::default(),
    ));
    svd::svd(
        transposed,
        sigma.as_mut(),
        None,
        None,
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    )
    .map_err(|_| AnalysisError::SvdNoConvergence { rows, cols })?;
    Ok(sigma
        .column_vector()
        .iter()
        .map(|&value| value.into())
        .collect())
}

/// GPT-NeoX's fused `query_key_value` weight (or bias) split into its three projections.
#[derive(Debug, Clone, PartialEq)]
pub struct QkvSplit<T> {
    /// Query projection, row-major `[heads × head_dim, cols]`, heads in order.
    pub query: Vec<T>,
    /// Key projection, same layout.
    pub key: Vec<T>,
    /// Value projection, same layout.
    pub value: Vec<T>,
    /// Rows of each part (`heads × head_dim`).
    pub rows: usize,
    /// Columns of each part (the fused matrix's columns; 1 for a bias).
    pub cols: usize,
}

impl<T> QkvSplit<T> {
    /// The three parts with their names (`query`, `key`, `value`), in that order.
    pub fn parts(&self) -> [(&'static str, &[T]); 3] {
        [
            ("query", &self.query),
            ("key", &self.key),
            ("value", &self.value),
        ]
    }
}

/// Splits GPT-NeoX's fused `attention.query_key_value` weight, row-major
/// `[3 × heads × head_dim, cols]`, into query, key and value.
///
/// The fused rows are grouped per head, not per projection (the checkpoint's output is
/// reshaped to `[heads, 3 × head_dim]` before it is cut into q, k, v): rows
/// `[3h·hd, 3h·hd + hd)` are head `h`'s query, the next `hd` its key, the next `hd` its value.
/// A bias splits the same way with `cols = 1`.
pub fn split_fused_qkv<T: Copy>(
    fused: &[T],
    heads: usize,
    head_dim: usize,
    cols: usize,
) -> Result<QkvSplit<T>, AnalysisError> {
    for (what, value) in [("heads", heads), ("head_dim", head_dim), ("cols", cols)] {
        if value == 0 {
            return Err(AnalysisError::Empty { what });
        }
    }
    let rows = heads * head_dim;
    let fused_rows = fused.len() / cols;
    if !fused.len().is_multiple_of(cols) || fused_rows != 3 * rows {
        return Err(AnalysisError::FusedQkvShape {
            rows: fused_rows,
            heads,
            head_dim,
            expected: 3 * rows,
        });
    }
    let block = head_dim * cols;
    let mut split = QkvSplit {
        query: Vec::with_capacity(rows * cols),
        key: Vec::with_capacity(rows * cols),
        value: Vec::with_capacity(rows * cols),
        rows,
        cols,
    };
    for head in fused.chunks_exact(3 * block) {
        split.query.extend_from_slice(&head[..block]);
        split.key.extend_from_slice(&head[block..2 * block]);
        split.value.extend_from_slice(&head[2 * block..]);
    }
    Ok(split)
}

/// A checkpoint weight selected by a module pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightMatch {
    /// Layer index, for weights inside a layer (`….layers.{L}.…`).
    pub layer: Option<usize>,
    /// Module path inside the layer (`attention.query_key_value`, `mlp.dense_h_to_4h`), or the
    /// whole key without `.weight` for a weight outside the layers (`gpt_neox.embed_in`).
    pub module: String,
    /// The checkpoint key.
    pub key: String,
    /// The pattern that selected it (the first, if several did).
    pub pattern: String,
}

/// Segments that introduce the layer index in the checkpoint keys of the supported
/// families: `gpt_neox.layers.{L}.…`, `model.layers.{L}.…` (Llama), `transformer.h.{L}.…`.
const LAYER_CONTAINERS: [&str; 3] = ["layers", "h", "blocks"];

/// Layer and module path of a checkpoint's `….weight` key, as [`match_weight_modules`] reads
/// them: `(Some(12), "attention.query_key_value")` for
/// `gpt_neox.layers.12.attention.query_key_value.weight`, `(None, "gpt_neox.embed_in")` outside
/// the layers; `None` for other keys (biases, buffers).
pub fn weight_key_parts(key: &str) -> Option<(Option<usize>, String)> {
    split_key(key)
}

fn split_key(key: &str) -> Option<(Option<usize>, String)> {
    let segments: Vec<&str> = key.split('.').collect();
    let (last, body) = segments.split_last()?;
    if *last != "weight" || body.is_empty() {
        return None;
    }
    for index in 0..body.len().saturating_sub(2) {
        if LAYER_CONTAINERS.contains(&body[index])
            && let Ok(layer) = body[index + 1].parse::<usize>()
        {
            return Some((Some(layer), body[index + 2..].join(".")));
        }
    }
    Some((None, body.join(".")))
}

/// Whether `text` matches a glob `pattern` in which `*` stands for any run of characters.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Greedy matching with backtracking to the last `*`: linear for the patterns used here.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

/// Whether a module path matches a pattern, segment by segment: the same number of
/// `.`-separated segments, each matched as a glob (`*` never crosses a `.`).
fn module_matches(pattern: &str, module: &str) -> bool {
    let pattern_segments: Vec<&str> = pattern.split('.').collect();
    let module_segments: Vec<&str> = module.split('.').collect();
    pattern_segments.len() == module_segments.len()
        && pattern_segments
            .iter()
            .zip(&module_segments)
            .all(|(pattern, segment)| glob_matches(pattern, segment))
}

/// Selects the weights (`….weight` keys) of a checkpoint whose module path matches one of
/// `patterns`, sorted by layer (weights outside the layers first), then module, then key.
///
/// A pattern is matched against the module path inside a layer (`attention.query_key_value`,
/// `mlp.*`), or against the whole key without `.weight` for weights outside the layers
/// (`gpt_neox.embed_in`); `*` matches within one segment. Every pattern that matches nothing
/// is reported in one [`AnalysisError::UnmatchedModules`], with the closest module name when
/// one is close.
pub fn match_weight_modules<'a, P: AsRef<str>>(
    keys: impl IntoIterator<Item = &'a str>,
    patterns: &[P],
) -> Result<Vec<WeightMatch>, AnalysisError> {
    let mut matches = BTreeMap::new();
    let mut modules = BTreeSet::new();
    let mut matched = vec![false; patterns.len()];
    for key in keys {
        let Some((layer, module)) = split_key(key) else {
            continue;
        };
        let hits: Vec<usize> = (0..patterns.len())
            .filter(|&index| module_matches(patterns[index].as_ref(), &module))
            .collect();
        // Every pattern that matches counts as used, even when an earlier one claims the key.
        for &index in &hits {
            matched[index] = true;
        }
        if let Some(&first) = hits.first() {
            matches.insert(
                (layer, module.clone(), key.to_string()),
                patterns[first].as_ref().to_string(),
            );
        }
        modules.insert(module);
    }
    let unmatched: Vec<UnmatchedPattern> = patterns
        .iter()
        .zip(&matched)
        .filter(|(_, matched)| !**matched)
        .map(|(pattern, _)| UnmatchedPattern {
            pattern: pattern.as_ref().to_string(),
            suggestion: closest(pattern.as_ref(), &modules),
        })
        .collect();
    if !unmatched.is_empty() {
        return Err(AnalysisError::UnmatchedModules {
            patterns: unmatched,
        });
    }
    Ok(matches
        .into_iter()
        .map(|((layer, module, key), pattern)| WeightMatch {
            layer,
            module,
            key,
            pattern,
        })
        .collect())
}

/// The module name most similar to `pattern`, if similar enough to be a likely typo.
fn closest(pattern: &str, modules: &BTreeSet<String>) -> Option<String> {
    modules
        .iter()
        .map(|module| (strsim::jaro_winkler(pattern, module), module))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, module)| module.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_layer_and_module() {
        assert_eq!(
            split_key("gpt_neox.layers.12.attention.query_key_value.weight"),
            Some((Some(12), "attention.query_key_value".into()))
        );
        assert_eq!(
            split_key("model.layers.0.self_attn.q_proj.weight"),
            Some((Some(0), "self_attn.q_proj".into()))
        );
        assert_eq!(
            split_key("gpt_neox.embed_in.weight"),
            Some((None, "gpt_neox.embed_in".into()))
        );
        assert_eq!(split_key("gpt_neox.layers.1.mlp.dense_h_to_4h.bias"), None);
    }

    #[test]
    fn globs_stay_within_a_segment() {
        assert!(glob_matches("dense_*", "dense_h_to_4h"));
        assert!(glob_matches("*_proj", "gate_proj"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("dense_*", "query_key_value"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(module_matches("mlp.*", "mlp.dense_4h_to_h"));
        assert!(!module_matches("mlp.*", "mlp.dense_4h_to_h.extra"));
        assert!(!module_matches("*", "attention.dense"));
    }
}
