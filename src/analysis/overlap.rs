//! Overlap of the top-`k` eigenspaces of two spectra of the same width.

use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use super::spectrum::{Decomposition, Eigenbasis};
use super::{AnalysisError, Parallelism};
use crate::spec::OverlapK;

/// How much two `k`-dimensional subspaces of `ℝᵈ` share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubspaceOverlap {
    /// Subspace size.
    pub k: usize,
    /// `γ = ‖U_aᵀ U_b‖_F² / k`: the mean squared cosine of the principal angles, 1 for the
    /// same subspace and 0 for orthogonal ones.
    pub gamma: f64,
    /// `k / d`, the expected `γ` of two independent uniformly random subspaces.
    pub baseline: f64,
    /// `γ / baseline`: how many times more overlap than chance.
    pub ratio: f64,
}

/// `γ` of the first `k` vectors of two orthonormal bases of the same width.
pub fn subspace_overlap(
    base: &Eigenbasis,
    other: &Eigenbasis,
    k: usize,
) -> Result<SubspaceOverlap, AnalysisError> {
    if other.width() != base.width() {
        return Err(AnalysisError::WidthMismatch {
            expected: base.width(),
            found: other.width(),
        });
    }
    let available = base.len().min(other.len());
    if k == 0 || k > available {
        return Err(AnalysisError::SubspaceSize { k, available });
    }
    let width = base.width();
    let base_top: MatRef<'_, f64> = base.as_mat().subcols(0, k);
    let other_top: MatRef<'_, f64> = other.as_mat().subcols(0, k);
    let cosines: Mat<f64> = base_top.transpose() * other_top;
    let mut squared = 0.0;
    for column in 0..k {
        for row in 0..k {
            squared += cosines[(row, column)] * cosines[(row, column)];
        }
    }
    // ‖U_aᵀU_b‖_F² ≤ k holds exactly for orthonormal columns; rounding can push it past k
    // by a few ulps, which would read as "more than identical".
    let gamma = (squared / k as f64).min(1.0);
    let baseline = k as f64 / width as f64;
    Ok(SubspaceOverlap {
        k,
        gamma,
        baseline,
        ratio: gamma / baseline,
    })
}

/// The subspace sizes an overlap setting asks for, given the base decomposition: the fixed
/// sizes as they are, or the base's stable rank rounded to the nearest integer (at least 1,
/// at most `d`).
pub fn overlap_k_values(base: &Decomposition, k: &OverlapK) -> Vec<usize> {
    match k {
        OverlapK::Sizes(sizes) => sizes.iter().map(|&size| size as usize).collect(),
        OverlapK::Srank => {
            let width = base.singular_values.len();
            let stable_rank = base.metrics(0).stable_rank;
            vec![(stable_rank.round() as usize).clamp(1, width.max(1))]
        }
    }
}

/// Overlaps of two decompositions (of the same width) for each size `k` asks for. Both need
/// eigenvectors, at least as many as the largest size.
pub fn overlaps(
    base: &Decomposition,
    other: &Decomposition,
    k: &OverlapK,
) -> Result<Vec<SubspaceOverlap>, AnalysisError> {
    let base_width = base.singular_values.len();
    let other_width = other.singular_values.len();
    if other_width != base_width {
        return Err(AnalysisError::WidthMismatch {
            expected: base_width,
            found: other_width,
        });
    }
    let (Some(base_basis), Some(other_basis)) = (&base.eigenvectors, &other.eigenvectors) else {
        return Err(AnalysisError::NoEigenvectors);
    };
    overlap_k_values(base, k)
        .into_iter()
        .map(|size| subspace_overlap(base_basis, other_basis, size))
        .collect()
}

impl Decomposition {
    /// Overlaps of the eigenspaces of two Gram matrices of the same width, decomposing both
    /// (with as many eigenvectors as `k` needs).
    pub fn gram_overlaps(
        base_gram: MatRef<'_, f64>,
        other_gram: MatRef<'_, f64>,
        k: &OverlapK,
        parallelism: Parallelism,
    ) -> Result<Vec<SubspaceOverlap>, AnalysisError> {
        let width = base_gram.nrows();
        if other_gram.nrows() != width {
            return Err(AnalysisError::WidthMismatch {
                expected: width,
                found: other_gram.nrows(),
            });
        }
        let needed = match k {
            OverlapK::Sizes(sizes) if sizes.is_empty() => return Ok(Vec::new()),
            OverlapK::Sizes(sizes) => {
                let largest = sizes.iter().copied().max().unwrap_or(0) as usize;
                if largest > width {
                    return Err(AnalysisError::SubspaceSize {
                        k: largest,
                        available: width,
                    });
                }
                largest
            }
            OverlapK::Srank => width,
        };
        let base = Decomposition::from_gram(base_gram, needed, parallelism)?;
        let other = Decomposition::from_gram(other_gram, needed, parallelism)?;
        overlaps(&base, &other, k)
    }
}
