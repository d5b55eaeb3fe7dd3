//! Summary metrics of a spectrum, the numbers that go into the ledger.

use serde::{Deserialize, Serialize};

/// Shares of the variance below which `k90`/`k99` would flip on rounding alone: cumulative
/// sums are compared with this much relative slack, so an exact 90% split (the identity
/// matrix) counts as reached.
const CUMULATIVE_SLACK: f64 = 1e-12;

/// Summary of one spectrum (the singular values `σ₁ ≥ σ₂ ≥ … ≥ 0` of a matrix `X`, whose
/// Gram eigenvalues are `λᵢ = σᵢ²`). Definitions are in `docs/analysis.md`.
///
/// A zero matrix has every metric 0 (there is no direction to count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumMetrics {
    /// Number of singular values (`min(rows, cols)` for a weight, `d` for activations).
    pub count: usize,
    /// `‖X‖_F² = Σσᵢ²`.
    pub frobenius_norm_sq: f64,
    /// `σ₁`, the spectral norm.
    pub spectral_norm: f64,
    /// Stable rank `‖X‖_F² / σ₁²`, between 1 and `count` for a non-zero matrix.
    pub stable_rank: f64,
    /// Effective rank (Roy & Vetterli, 2007): `exp(−Σ pᵢ ln pᵢ)` with `pᵢ = σᵢ / Σσⱼ`.
    pub effective_rank: f64,
    /// Participation ratio `(Σλᵢ)² / Σλᵢ²` of the eigenvalues `λᵢ = σᵢ²`.
    pub participation_ratio: f64,
    /// Smallest `k` whose top-`k` eigenvalues hold at least 90% of `Σλᵢ`.
    pub k90: usize,
    /// Smallest `k` whose top-`k` eigenvalues hold at least 99% of `Σλᵢ`.
    pub k99: usize,
    /// The largest eigenvalues `λ₁ ≥ … ≥ λ_k` (at most the `top_k` asked for).
    pub top_eigenvalues: Vec<f64>,
}

impl SpectrumMetrics {
    /// Metrics of the singular values `singular_values` (any order; negatives are treated as
    /// 0), recording the `top_k` largest eigenvalues.
    pub fn from_singular_values(singular_values: &[f64], top_k: usize) -> Self {
        let mut sigma: Vec<f64> = singular_values.iter().map(|s| s.max(0.0)).collect();
        sigma.sort_by(|a, b| b.total_cmp(a));
        let eigenvalues: Vec<f64> = sigma.iter().map(|s| s * s).collect();
        let count = sigma.len();
        let total: f64 = eigenvalues.iter().sum();
        let spectral_norm = sigma.first().copied().unwrap_or(0.0);
        let top_eigenvalues = eigenvalues.iter().take(top_k).copied().collect();
        if total <= 0.0 || spectral_norm <= 0.0 {
            return Self {
                count,
                frobenius_norm_sq: 0.0,
                spectral_norm: 0.0,
                stable_rank: 0.0,
                effective_rank: 0.0,
                participation_ratio: 0.0,
                k90: 0,
                k99: 0,
                top_eigenvalues,
            };
        }
        let sigma_sum: f64 = sigma.iter().sum();
        let entropy: f64 = sigma
            .iter()
            .map(|s| s / sigma_sum)
            .filter(|p| *p > 0.0) // 0·ln 0 = 0
            .map(|p| -p * p.ln())
            .sum();
        let square_sum: f64 = eigenvalues.iter().map(|l| l * l).sum();
        Self {
            count,
            frobenius_norm_sq: total,
            spectral_norm,
            stable_rank: total / (spectral_norm * spectral_norm),
            effective_rank: entropy.exp(),
            participation_ratio: total * total / square_sum,
            k90: components_for(&eigenvalues, total, 0.90),
            k99: components_for(&eigenvalues, total, 0.99),
            top_eigenvalues,
        }
    }
}

/// Smallest `k ≥ 1` with `Σ_{i<k} λᵢ ≥ share · total` (eigenvalues non-increasing).
fn components_for(eigenvalues: &[f64], total: f64, share: f64) -> usize {
    let target = share * total * (1.0 - CUMULATIVE_SLACK);
    let mut cumulative = 0.0;
    for (index, eigenvalue) in eigenvalues.iter().enumerate() {
        cumulative += eigenvalue;
        if cumulative >= target {
            return index + 1;
        }
    }
    eigenvalues.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_spectrum() {
        let metrics = SpectrumMetrics::from_singular_values(&[1.0; 10], 3);
        assert_eq!(metrics.count, 10);
        assert!((metrics.stable_rank - 10.0).abs() < 1e-12);
        assert!((metrics.effective_rank - 10.0).abs() < 1e-12);
        assert!((metrics.participation_ratio - 10.0).abs() < 1e-12);
        assert_eq!((metrics.k90, metrics.k99), (9, 10));
        assert_eq!(metrics.top_eigenvalues, vec![1.0; 3]);
    }

    #[test]
    fn rank_one_spectrum() {
        let metrics = SpectrumMetrics::from_singular_values(&[0.0, 3.0, 0.0], 5);
        assert_eq!(metrics.stable_rank, 1.0);
        assert_eq!(metrics.effective_rank, 1.0);
        assert_eq!(metrics.participation_ratio, 1.0);
        assert_eq!((metrics.k90, metrics.k99), (1, 1));
        assert_eq!(metrics.spectral_norm, 3.0);
        assert_eq!(metrics.top_eigenvalues, vec![9.0, 0.0, 0.0]);
    }

    #[test]
    fn hand_computed_spectrum() {
        // σ = (2, 1): λ = (4, 1), ‖X‖² = 5, stable rank 5/4, PR 25/17,
        // p = (2/3, 1/3): erank = exp(−(2/3)ln(2/3) − (1/3)ln(1/3)) = 3 / 2^(2/3).
        let metrics = SpectrumMetrics::from_singular_values(&[1.0, 2.0], 2);
        assert!((metrics.stable_rank - 1.25).abs() < 1e-15);
        assert!((metrics.participation_ratio - 25.0 / 17.0).abs() < 1e-15);
        assert!((metrics.effective_rank - 3.0 / 2f64.powf(2.0 / 3.0)).abs() < 1e-14);
        // 4/5 = 80% < 90%: both thresholds need the second component.
        assert_eq!((metrics.k90, metrics.k99), (2, 2));
    }

    #[test]
    fn zero_matrix_has_zero_metrics() {
        let metrics = SpectrumMetrics::from_singular_values(&[0.0; 4], 2);
        assert_eq!(metrics.stable_rank, 0.0);
        assert_eq!((metrics.k90, metrics.k99), (0, 0));
        assert_eq!(metrics.top_eigenvalues, vec![0.0, 0.0]);
    }
}
