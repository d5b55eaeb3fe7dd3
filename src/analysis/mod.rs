//! Numerics behind the spectroscopy analyses: streaming Gram accumulation over activation
//! shards, eigen spectra and their summary metrics, subspace overlaps, and singular values of
//! weight matrices.
//!
//! Everything here is pure computation on memory the caller owns: no files, no network, no
//! global state. The heavy steps (Gram products, eigen and singular value decompositions)
//! take a [`Parallelism`] and run on the calling rayon pool, so an executor can hand them to
//! `rayon::spawn` and await the result.
//!
//! ```text
//! activations [tokens, d] ─► GramAccumulator::push_rows ─┐ (one per shard, merged)
//!                         to_safetensors (partial state) │
//!                                                        ▼
//!                              GramAccumulator::finish ─► Spectrum ─► SpectrumMetrics (ledger)
//!                                                           │      └► to_safetensors (artifact)
//!                                                           └► overlaps(base, other, k)
//! checkpoint weights ─► match_weight_modules ─► split_fused_qkv ─► weight_spectrum
//! LoRA factors ─► LowRankUpdate ─► TruncatedSvd::of_low_rank ─┐
//! base weight ─► TruncatedSvd::of_weight ─────────────────────┴► update_geometry
//! ```
//!
//! Conventions, used throughout (see `docs/analysis.md`): singular values are sorted in
//! non-increasing order; the eigenvalues of a Gram matrix are the squared singular values of
//! the matrix it came from; all accumulation and decomposition of activations is in f64.

mod gram;
mod metrics;
mod overlap;
mod spectrum;
mod store;
mod update;
mod weights;

pub use gram::GramAccumulator;
pub use metrics::SpectrumMetrics;
pub use overlap::{SubspaceOverlap, overlap_k_values, overlaps, subspace_overlap};
pub use spectrum::{ActivationMetrics, Centring, Decomposition, Eigenbasis, Spectrum};
pub use store::{GRAM_FORMAT, SPECTRUM_FORMAT, SPECTRUM_FORMAT_VERSION};
pub use update::{
    LowRankUpdate, StableRankName, SubspaceAlignment, SubspaceChoice, TruncatedSvd, UpdateGeometry,
    update_geometry,
};
pub use weights::{
    QkvSplit, SvdMethod, WeightMatch, WeightMatrix, WeightSpectrum, match_weight_modules,
    split_fused_qkv, weight_delta_spectrum, weight_key_parts, weight_spectra, weight_spectrum,
};

/// How a decomposition or product may use threads.
///
/// `Rayon` runs on the rayon pool of the calling thread (the global pool unless the caller is
/// inside `ThreadPool::install`), so work submitted with `rayon::spawn` stays within that
/// pool. Results may differ in the last bits between thread counts; for a fixed setting and
/// the same input they are reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallelism {
    /// One thread: the best choice when many small matrices are processed in parallel by
    /// the caller (for example a `par_iter` over the weights of a checkpoint).
    Sequential,
    /// Up to `threads` rayon threads; `0` means the calling pool's thread count.
    Rayon {
        /// Thread count, `0` for the whole calling pool.
        threads: usize,
    },
}

impl Default for Parallelism {
    /// The whole calling rayon pool.
    fn default() -> Self {
        Parallelism::Rayon { threads: 0 }
    }
}

impl Parallelism {
    pub(crate) fn to_faer(self) -> faer::Par {
        match self {
            Parallelism::Sequential => faer::Par::Seq,
            Parallelism::Rayon { threads } => faer::Par::rayon(threads),
        }
    }
}

/// A floating-point element that activations or weights may be stored in.
///
/// Conversions to f64 are exact for every implementor except f64 itself, which is the
/// identity.
pub trait Element: Copy + Send + Sync + 'static {
    /// The value as f64 (exact).
    fn to_f64(self) -> f64;
    /// The value as f32 (exact for f16, bf16 and f32; rounded for f64).
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

impl Element for half::f16 {
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Element for half::bf16 {
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// What can go wrong in an analysis. Every variant is a caller's input problem or a
/// decomposition that did not converge; none is a bug to hide.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// A buffer's length does not match the shape given with it.
    #[error("buffer of `{what}` holds {len} values, but shape {rows} × {cols} needs {expected}")]
    ShapeMismatch {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Rows claimed.
        rows: usize,
        /// Columns claimed.
        cols: usize,
        /// `rows × cols`.
        expected: usize,
    },
    /// Two operands have different widths (hidden sizes, or weight shapes).
    #[error("width mismatch: expected `{expected}`, found `{found}`")]
    WidthMismatch {
        /// The width of the first operand (the accumulator or the base).
        expected: usize,
        /// The width of the second.
        found: usize,
    },
    /// Two weight matrices have different shapes.
    #[error("shape mismatch: base is `{base_rows}×{base_cols}`, weight is `{rows}×{cols}`")]
    WeightShapeMismatch {
        /// Weight rows.
        rows: usize,
        /// Weight columns.
        cols: usize,
        /// Base rows.
        base_rows: usize,
        /// Base columns.
        base_cols: usize,
    },
    /// A width or dimension of zero where at least one is needed.
    #[error("`{what}` must be at least 1")]
    Empty {
        /// Which dimension.
        what: &'static str,
    },
    /// A spectrum was requested before any row was pushed.
    #[error("no rows were accumulated; a spectrum needs at least one")]
    NoRows,
    /// A NaN or infinity in the input: it would poison every eigenvalue.
    #[error("non-finite value `{value}` in `{what}` at row {row}, column {column}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row (token) index within the pushed chunk.
        row: usize,
        /// Column index.
        column: usize,
        /// The value.
        value: f64,
    },
    /// A subspace size outside `1..=width`, or larger than the eigenvectors kept.
    #[error("subspace size `{k}` is out of range: {available} eigenvectors are available")]
    SubspaceSize {
        /// The size asked for.
        k: usize,
        /// How many eigenvectors there are.
        available: usize,
    },
    /// An overlap needs eigenvectors, and the spectrum was finished without them.
    #[error("the spectrum holds no eigenvectors; finish it with `top_k` ≥ the overlap size")]
    NoEigenvectors,
    /// The symmetric eigensolver did not converge.
    #[error("eigendecomposition of a `{width}×{width}` Gram matrix did not converge")]
    EigenNoConvergence {
        /// Matrix width.
        width: usize,
    },
    /// The SVD did not converge.
    #[error("singular value decomposition of a `{rows}×{cols}` matrix did not converge")]
    SvdNoConvergence {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
    /// A fused QKV weight whose rows are not `3 × heads × head_dim`.
    #[error(
        "fused qkv weight has {rows} rows; {heads} heads of dimension {head_dim} need {expected}"
    )]
    FusedQkvShape {
        /// Rows found.
        rows: usize,
        /// Heads.
        heads: usize,
        /// Head dimension.
        head_dim: usize,
        /// `3 × heads × head_dim`.
        expected: usize,
    },
    /// Module patterns that matched no weight of the checkpoint.
    #[error("{}", describe_unmatched(.patterns))]
    UnmatchedModules {
        /// Each pattern that matched nothing, with the closest module name if one is close.
        patterns: Vec<UnmatchedPattern>,
    },
    /// A safetensors buffer could not be written or read.
    #[error("spectrum safetensors: {what}")]
    Safetensors {
        /// What was being done or what is wrong.
        what: String,
        /// The safetensors error, if the crate reported one.
        #[source]
        source: Option<safetensors::SafeTensorError>,
    },
}

/// A module pattern that matched nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmatchedPattern {
    /// The pattern as given.
    pub pattern: String,
    /// The closest module name of the checkpoint, when one is close enough to suggest.
    pub suggestion: Option<String>,
}

fn describe_unmatched(patterns: &[UnmatchedPattern]) -> String {
    let parts: Vec<String> = patterns
        .iter()
        .map(|unmatched| match &unmatched.suggestion {
            Some(suggestion) => format!("`{}` (did you mean `{suggestion}`?)", unmatched.pattern),
            None => format!("`{}`", unmatched.pattern),
        })
        .collect();
    format!("module pattern matched no weight: {}", parts.join(", "))
}

/// Checks `len == rows × cols` for a row-major buffer.
pub(crate) fn check_shape(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
) -> Result<(), AnalysisError> {
    match rows.checked_mul(cols) {
        Some(expected) if expected == len => Ok(()),
        expected => Err(AnalysisError::ShapeMismatch {
            what,
            len,
            rows,
            cols,
            expected: expected.unwrap_or(usize::MAX),
        }),
    }
}
