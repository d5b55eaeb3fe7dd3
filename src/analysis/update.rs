//! Fine-tuning updates: the spectrum of a low-rank update `ΔW = s·B·A` without forming it, and
//! the geometry of an update against its base weight `W` (how much of ΔW's top singular
//! subspaces lies in W's).
//!
//! The low-rank route: with thin QR factorizations `B = Q_B R_B` and `Aᵀ = Q_A R_A`,
//! `ΔW = Q_B (s·R_B R_Aᵀ) Q_Aᵀ`; the SVD of the small core `s·R_B R_Aᵀ = U Σ Vᵀ` gives
//! `ΔW = (Q_B U) Σ (Q_A V)ᵀ`, an exact SVD at `O((d_out + d_in)·r²)` cost instead of the
//! `O(d_out·d_in·min(d_out, d_in))` of a dense one. Formulas: `docs/analysis.md`.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use serde::{Deserialize, Serialize};

use super::metrics::SpectrumMetrics;
use super::spectrum::Eigenbasis;
use super::weights::{WeightMatrix, WeightSpectrum};
use super::{AnalysisError, Element, Parallelism, check_shape, split_fused_qkv};
use factor::{thin_qr, thin_svd};

/// A low-rank update `ΔW = scale · B · A` of a `d_out × d_in` weight, as a LoRA adapter stores
/// it: `B` is `[d_out, rank]` and `A` is `[rank, d_in]`, both row-major, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankUpdate {
    d_out: usize,
    d_in: usize,
    rank: usize,
    scale: f64,
    b: Vec<f64>,
    a: Vec<f64>,
}

impl LowRankUpdate {
    /// The update `scale · B · A`; fails unless the buffers have the shapes given, every
    /// dimension is at least 1, and every value (the scale too) is finite.
    pub fn new(
        b: Vec<f64>,
        a: Vec<f64>,
        d_out: usize,
        d_in: usize,
        rank: usize,
        scale: f64,
    ) -> Result<Self, AnalysisError> {
        for (what, value) in [("d_out", d_out), ("d_in", d_in), ("rank", rank)] {
            if value == 0 {
                return Err(AnalysisError::Empty { what });
            }
        }
        check_shape("lora_B", b.len(), d_out, rank)?;
        check_shape("lora_A", a.len(), rank, d_in)?;
        if !scale.is_finite() {
            return Err(AnalysisError::NonFinite {
                what: "scale",
                row: 0,
                column: 0,
                value: scale,
            });
        }
        for (what, values, cols) in [("lora_B", &b, rank), ("lora_A", &a, d_in)] {
            if let Some(index) = values.iter().position(|value| !value.is_finite()) {
                return Err(AnalysisError::NonFinite {
                    what,
                    row: index / cols,
                    column: index % cols,
                    value: values[index],
                });
            }
        }
        Ok(Self {
            d_out,
            d_in,
            rank,
            scale,
            b,
            a,
        })
    }

    /// Rows of ΔW (output features).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Columns of ΔW (input features).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// The inner dimension `r` of the factors.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The scale `s` (`α/r`, or `α/√r` for rsLoRA).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `B`, row-major `[d_out, rank]`.
    pub fn b(&self) -> &[f64] {
        &self.b
    }

    /// `A`, row-major `[rank, d_in]`.
    pub fn a(&self) -> &[f64] {
        &self.a
    }

    /// ΔW formed densely, row-major `[d_out, d_in]`: `scale · Σ_j B[i, j] · A[j, :]`, summed
    /// in `j` order. For checks and small matrices; the spectrum never needs it.
    pub fn dense(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.d_out * self.d_in];
        for (row, b_row) in out
            .chunks_exact_mut(self.d_in)
            .zip(self.b.chunks_exact(self.rank))
        {
            for (&b, a_row) in b_row.iter().zip(self.a.chunks_exact(self.d_in)) {
                for (value, &a) in row.iter_mut().zip(a_row) {
                    *value += b * a;
                }
            }
            row.iter_mut().for_each(|value| *value *= self.scale);
        }
        out
    }

    /// The update of a fused query/key/value weight split into its three parts, grouped as
    /// [`split_fused_qkv`] groups the weight's rows: `B`'s rows split the same way, `A` is
    /// shared (`ΔW_q = s · B_q · A`).
    pub fn split_fused_qkv(
        &self,
        groups: usize,
        group_rows: usize,
    ) -> Result<[LowRankUpdate; 3], AnalysisError> {
        let split = split_fused_qkv(&self.b, groups, group_rows, self.rank)?;
        let part = |b: Vec<f64>| LowRankUpdate {
            d_out: split.rows,
            d_in: self.d_in,
            rank: self.rank,
            scale: self.scale,
            b,
            a: self.a.clone(),
        };
        Ok([
            part(split.query.clone()),
            part(split.key.clone()),
            part(split.value.clone()),
        ])
    }
}

/// The top singular triplets of a `rows × cols` matrix: every singular value, and the first
/// `kept` left and right singular vectors. Each pair `(uᵢ, vᵢ)` is signed so that `uᵢ`'s entry
/// of largest magnitude (the first, on ties) is positive, which makes stored vectors
/// reproducible without changing `uᵢ σᵢ vᵢᵀ`.
#[derive(Debug, Clone, PartialEq)]
pub struct TruncatedSvd {
    /// Rows (`d_out`).
    pub rows: usize,
    /// Columns (`d_in`).
    pub cols: usize,
    /// `min(rows, cols)` singular values, non-increasing (exact zeros past a low-rank
    /// update's rank).
    pub singular_values: Vec<f64>,
    /// Left singular vectors, `rows × kept`.
    pub left: Eigenbasis,
    /// Right singular vectors, `cols × kept`.
    pub right: Eigenbasis,
}

impl TruncatedSvd {
    /// The SVD of a weight matrix (converted to f64), keeping its top `keep` singular vector
    /// pairs (at most `min(rows, cols)`) and every singular value.
    ///
    /// A well-conditioned weight (`σ₁ / σ_min ≤ 10⁴`, as trained and random weights are) goes
    /// by the Gram route (`update::gram_route`): the smaller Gram matrix's eigendecomposition,
    /// then the other side's top vectors from `W·v` — 2.5–3.5× faster than a dense SVD on a
    /// 3072 × 1024 weight, its singular values within `~1e-12 · σ₁` of the dense SVD's. Any
    /// other (rank-deficient, such as a formed low-rank `ΔW`) takes the dense SVD of
    /// [`TruncatedSvd::of_weight_dense`].
    pub fn of_weight<T: Element>(
        weight: WeightMatrix<'_, T>,
        keep: usize,
        parallelism: Parallelism,
    ) -> Result<Self, AnalysisError> {
        let matrix = checked_matrix(weight)?;
        let (rows, cols) = matrix.shape();
        let (values, left, right) = match gram_route::gram_svd(matrix.as_ref(), keep, parallelism)?
        {
            Some(parts) => parts,
            None => thin_svd(matrix.as_ref(), parallelism)?,
        };
        Self::from_parts(rows, cols, values, left.as_ref(), right.as_ref(), keep)
    }

    /// [`TruncatedSvd::of_weight`] by a dense f64 SVD whatever the conditioning (singular
    /// values within `~1e-15 · σ₁`): the reference the Gram route is checked against.
    pub fn of_weight_dense<T: Element>(
        weight: WeightMatrix<'_, T>,
        keep: usize,
        parallelism: Parallelism,
    ) -> Result<Self, AnalysisError> {
        let matrix = checked_matrix(weight)?;
        let (rows, cols) = matrix.shape();
        let (values, left, right) = thin_svd(matrix.as_ref(), parallelism)?;
        Self::from_parts(rows, cols, values, left.as_ref(), right.as_ref(), keep)
    }

    /// The exact SVD of a low-rank update by the QR route (see the module docs), keeping all
    /// `min(rank, rows, cols)` singular vector pairs.
    pub fn of_low_rank(
        update: &LowRankUpdate,
        parallelism: Parallelism,
    ) -> Result<Self, AnalysisError> {
        let (d_out, d_in, rank) = (update.d_out, update.d_in, update.rank);
        let par = parallelism.to_faer();
        let b = Mat::from_fn(d_out, rank, |row, col| update.b[row * rank + col]);
        let a_transposed = Mat::from_fn(d_in, rank, |row, col| update.a[col * d_in + row]);
        let (q_b, r_b) = thin_qr(b, parallelism);
        let (q_a, r_a) = thin_qr(a_transposed, parallelism);
        // The core `s · R_B · R_Aᵀ`, `min(d_out, r) × min(d_in, r)`.
        let mut core = Mat::<f64>::zeros(r_b.nrows(), r_a.nrows());
        matmul(
            core.as_mut(),
            Accum::Replace,
            r_b.as_ref(),
            r_a.transpose(),
            update.scale,
            par,
        );
        let (values, core_left, core_right) = thin_svd(core.as_ref(), parallelism)?;
        let mut left = Mat::<f64>::zeros(d_out, values.len());
        matmul(
            left.as_mut(),
            Accum::Replace,
            q_b.as_ref(),
            core_left.as_ref(),
            1.0,
            par,
        );
        let mut right = Mat::<f64>::zeros(d_in, values.len());
        matmul(
            right.as_mut(),
            Accum::Replace,
            q_a.as_ref(),
            core_right.as_ref(),
            1.0,
            par,
        );
        let mut singular_values = values;
        singular_values.resize(d_out.min(d_in), 0.0);
        let keep = rank.min(d_out).min(d_in);
        Self::from_parts(
            d_out,
            d_in,
            singular_values,
            left.as_ref(),
            right.as_ref(),
            keep,
        )
    }

    fn from_parts(
        rows: usize,
        cols: usize,
        singular_values: Vec<f64>,
        left: MatRef<'_, f64>,
        right: MatRef<'_, f64>,
        keep: usize,
    ) -> Result<Self, AnalysisError> {
        let kept = keep.min(left.ncols()).min(right.ncols());
        let mut left_values = Vec::with_capacity(rows * kept);
        let mut right_values = Vec::with_capacity(cols * kept);
        for column in 0..kept {
            let (u_start, v_start) = (left_values.len(), right_values.len());
            left_values.extend(left.col(column).iter().copied());
            right_values.extend(right.col(column).iter().copied());
            if pair_sign(&left_values[u_start..]) < 0.0 {
                left_values[u_start..].iter_mut().for_each(|x| *x = -*x);
                right_values[v_start..].iter_mut().for_each(|x| *x = -*x);
            }
        }
        Ok(Self {
            rows,
            cols,
            singular_values,
            left: Eigenbasis::from_columns(rows, left_values)?,
            right: Eigenbasis::from_columns(cols, right_values)?,
        })
    }

    /// How many singular vector pairs are kept.
    pub fn kept(&self) -> usize {
        self.left.len()
    }

    /// The number of singular values above `σ₁ · max(rows, cols) · ε` (NumPy's
    /// `matrix_rank` threshold): past it, singular vectors are arbitrary directions.
    pub fn numerical_rank(&self) -> usize {
        let largest = self.singular_values.first().copied().unwrap_or(0.0);
        let threshold = largest * self.rows.max(self.cols) as f64 * f64::EPSILON;
        self.singular_values
            .iter()
            .filter(|&&value| value > threshold)
            .count()
    }

    /// The singular values as a [`WeightSpectrum`].
    pub fn spectrum(&self) -> WeightSpectrum {
        WeightSpectrum {
            rows: self.rows,
            cols: self.cols,
            singular_values: self.singular_values.clone(),
        }
    }

    /// Summary metrics (as for weight spectra), recording the top `top_k` squared singular
    /// values.
    pub fn metrics(&self, top_k: usize) -> SpectrumMetrics {
        SpectrumMetrics::from_singular_values(&self.singular_values, top_k)
    }
}

/// A weight as an f64 matrix, refusing non-finite entries (with their row and column).
fn checked_matrix<T: Element>(weight: WeightMatrix<'_, T>) -> Result<Mat<f64>, AnalysisError> {
    let (rows, cols) = (weight.rows(), weight.cols());
    let data = weight.data();
    if let Some(index) = data.iter().position(|value| !value.to_f64().is_finite()) {
        return Err(AnalysisError::NonFinite {
            what: "weight",
            row: index / cols,
            column: index % cols,
            value: data[index].to_f64(),
        });
    }
    Ok(Mat::from_fn(rows, cols, |row, col| {
        data[row * cols + col].to_f64()
    }))
}

/// `+1` or `−1`: the sign of the entry of largest magnitude (the first, on ties).
fn pair_sign(vector: &[f64]) -> f64 {
    let mut largest = 0.0f64;
    let mut sign = 1.0;
    for value in vector {
        if value.abs() > largest {
            largest = value.abs();
            sign = value.signum();
        }
    }
    sign
}

/// A subspace size for update geometry: a fixed `k`, or the update's rounded stable rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubspaceChoice {
    /// A fixed size.
    Fixed(usize),
    /// `srank`: `round(‖ΔW‖²_F / σ₁²)`, at least 1.
    StableRank(StableRankName),
}

/// The spelling `srank` of [`SubspaceChoice::StableRank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StableRankName {
    /// `srank`.
    Srank,
}

impl SubspaceChoice {
    /// `srank`.
    pub const SRANK: SubspaceChoice = SubspaceChoice::StableRank(StableRankName::Srank);
}

impl std::fmt::Display for SubspaceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubspaceChoice::Fixed(k) => write!(f, "{k}"),
            SubspaceChoice::StableRank(_) => f.write_str("srank"),
        }
    }
}

/// How the top-`k` singular subspaces of an update line up with its base's, one side each:
/// left (output side, `U`) and right (input side, `V`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubspaceAlignment {
    /// The size as requested (`5`, `srank`).
    pub choice: SubspaceChoice,
    /// The size used.
    pub k: usize,
    /// `‖U_W[:, :k]ᵀ U_ΔW[:, :k]‖²_F / k`, in `[0, 1]`.
    pub p_left: f64,
    /// The same with the right singular vectors.
    pub p_right: f64,
    /// `k / d_out`: the expected `p_left` of a uniformly random `k`-dimensional subspace.
    pub baseline_left: f64,
    /// `k / d_in`.
    pub baseline_right: f64,
    /// `p_left / baseline_left`: 1 for a random update, `d_out / k` for one inside the base's
    /// top-`k` output subspace.
    pub bonus_left: f64,
    /// `p_right / baseline_right`.
    pub bonus_right: f64,
    /// Cosines of the principal angles between the output-side subspaces (singular values of
    /// the `k × k` cross matrix `U_W[:, :k]ᵀ U_ΔW[:, :k]`), non-increasing.
    pub cosines_left: Vec<f64>,
    /// The same on the input side.
    pub cosines_right: Vec<f64>,
}

/// The geometry of one update against its base weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateGeometry {
    /// Stable rank of ΔW (0 for a zero update).
    pub stable_rank_update: f64,
    /// The largest usable `k`: `min(d_out, d_in, numerical rank of ΔW)`. Past it, the
    /// update's singular vectors are arbitrary null-space directions, so such sizes are
    /// skipped (all of them for a zero update, such as a freshly initialised LoRA).
    pub max_k: usize,
    /// One alignment per usable requested size, in request order.
    pub alignments: Vec<SubspaceAlignment>,
    /// Requested sizes above `max_k`, in request order.
    pub skipped: Vec<SubspaceChoice>,
}

/// The alignment of `update`'s top singular subspaces with `base`'s at each size of `choices`.
///
/// Both must be SVDs of `d_out × d_in` matrices; `base` must keep at least as many vectors as
/// the largest usable size (else [`AnalysisError::SubspaceSize`]). A fixed size of 0 is an
/// error too.
pub fn update_geometry(
    base: &TruncatedSvd,
    update: &TruncatedSvd,
    choices: &[SubspaceChoice],
) -> Result<UpdateGeometry, AnalysisError> {
    if (base.rows, base.cols) != (update.rows, update.cols) {
        return Err(AnalysisError::WeightShapeMismatch {
            rows: update.rows,
            cols: update.cols,
            base_rows: base.rows,
            base_cols: base.cols,
        });
    }
    let metrics = update.metrics(0);
    let max_k = update
        .numerical_rank()
        .min(update.kept())
        .min(base.rows.min(base.cols));
    // `srank` is capped at the base vectors kept too (a fixed size past them is an error).
    let srank_cap = max_k.min(base.kept());
    let mut geometry = UpdateGeometry {
        stable_rank_update: metrics.stable_rank,
        max_k,
        alignments: Vec::new(),
        skipped: Vec::new(),
    };
    for &choice in choices {
        let k = match choice {
            SubspaceChoice::Fixed(0) => {
                return Err(AnalysisError::SubspaceSize {
                    k: 0,
                    available: max_k,
                });
            }
            SubspaceChoice::Fixed(k) => k,
            SubspaceChoice::StableRank(_) => {
                (metrics.stable_rank.round() as usize).max(1).min(srank_cap)
            }
        };
        if k > max_k || max_k == 0 {
            geometry.skipped.push(choice);
            continue;
        }
        if k > base.kept() {
            return Err(AnalysisError::SubspaceSize {
                k,
                available: base.kept(),
            });
        }
        let (p_left, cosines_left) = alignment(&base.left, &update.left, k)?;
        let (p_right, cosines_right) = alignment(&base.right, &update.right, k)?;
        let baseline_left = k as f64 / base.rows as f64;
        let baseline_right = k as f64 / base.cols as f64;
        geometry.alignments.push(SubspaceAlignment {
            choice,
            k,
            p_left,
            p_right,
            baseline_left,
            baseline_right,
            bonus_left: p_left / baseline_left,
            bonus_right: p_right / baseline_right,
            cosines_left,
            cosines_right,
        });
    }
    Ok(geometry)
}

/// `(‖Xᵀ Y‖²_F / k, singular values of Xᵀ Y)` for the first `k` columns of two bases.
fn alignment(
    base: &Eigenbasis,
    update: &Eigenbasis,
    k: usize,
) -> Result<(f64, Vec<f64>), AnalysisError> {
    let mut cross = Mat::<f64>::zeros(k, k);
    matmul(
        cross.as_mut(),
        Accum::Replace,
        base.as_mat().subcols(0, k).transpose(),
        update.as_mat().subcols(0, k),
        1.0,
        faer::Par::Seq,
    );
    let squared: f64 = (0..k)
        .flat_map(|col| (0..k).map(move |row| (row, col)))
        .map(|(row, col)| cross[(row, col)] * cross[(row, col)])
        .sum();
    let (cosines, _, _) = thin_svd(cross.as_ref(), Parallelism::Sequential)?;
    Ok((squared / k as f64, cosines))
}

mod factor;
mod gram_route;
#[cfg(test)]
mod tests;
