//! The spectrum of an activation matrix, from the eigendecomposition of its Gram matrices.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use super::metrics::SpectrumMetrics;
use super::{AnalysisError, Parallelism};

/// Which Gram matrix a decomposition is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Centring {
    /// `XᵀX`: directions of the raw activations, mean included.
    Raw,
    /// `(X − 1μᵀ)ᵀ(X − 1μᵀ)`: principal components (the mean removed per column).
    Centred,
}

/// The top eigenvectors of a Gram matrix: `k` orthonormal columns of length `width`, in order
/// of non-increasing eigenvalue. Each column's sign is fixed so that its entry of largest
/// magnitude (the first, on ties) is positive, which makes stored bases reproducible.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigenbasis {
    width: usize,
    /// Column-major `width × k`.
    values: Vec<f64>,
}

impl Eigenbasis {
    /// A basis from column-major data: `values[j * width + i]` is entry `i` of column `j`.
    /// The columns are taken as given (orthonormality is the caller's promise).
    pub fn from_columns(width: usize, values: Vec<f64>) -> Result<Self, AnalysisError> {
        if width == 0 {
            return Err(AnalysisError::Empty { what: "width" });
        }
        if !values.len().is_multiple_of(width) {
            return Err(AnalysisError::ShapeMismatch {
                what: "eigenvectors",
                len: values.len(),
                rows: width,
                cols: values.len() / width + 1,
                expected: (values.len() / width + 1) * width,
            });
        }
        Ok(Self { width, values })
    }

    /// Length of each vector (`d`).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Number of vectors (`k`).
    pub fn len(&self) -> usize {
        self.values.len() / self.width
    }

    /// Whether the basis holds no vector.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Eigenvector `index` (0 is the top one).
    pub fn column(&self, index: usize) -> &[f64] {
        &self.values[index * self.width..(index + 1) * self.width]
    }

    /// Column-major values (`width × len`).
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The basis as a `width × len` matrix view.
    pub fn as_mat(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(&self.values, self.width, self.len())
    }
}

/// Singular values of a matrix `X` (from the eigenvalues of its Gram matrix), and optionally
/// its top right singular vectors (the Gram matrix's top eigenvectors).
#[derive(Debug, Clone, PartialEq)]
pub struct Decomposition {
    /// `σ₁ ≥ … ≥ σ_d ≥ 0`, `σᵢ = sqrt(max(λᵢ, 0))`: eigenvalues below zero are rounding
    /// noise of a positive semi-definite matrix.
    pub singular_values: Vec<f64>,
    /// Top eigenvectors, when asked for.
    pub eigenvectors: Option<Eigenbasis>,
}

impl Decomposition {
    /// Decomposes a symmetric positive semi-definite `d × d` Gram matrix, keeping the top
    /// `top_k` eigenvectors (`0`: none, and they are not computed). Only the lower triangle is
    /// read.
    pub fn from_gram(
        gram: MatRef<'_, f64>,
        top_k: usize,
        parallelism: Parallelism,
    ) -> Result<Self, AnalysisError> {
        let width = gram.nrows();
        if gram.ncols() != width {
            return Err(AnalysisError::WidthMismatch {
                expected: width,
                found: gram.ncols(),
            });
        }
        if width == 0 {
            return Err(AnalysisError::Empty { what: "width" });
        }
        if let Some((row, column)) = (0..width)
            .flat_map(|column| (column..width).map(move |row| (row, column)))
            .find(|&(row, column)| !gram[(row, column)].is_finite())
        {
            return Err(AnalysisError::NonFinite {
                what: "gram",
                row,
                column,
                value: gram[(row, column)],
            });
        }
        let par = parallelism.to_faer();
        let top_k = top_k.min(width);
        let compute = if top_k > 0 {
            ComputeEigenvectors::Yes
        } else {
            ComputeEigenvectors::No
        };
        let mut eigenvalues = Diag::<f64>::zeros(width);
        let mut vectors = (top_k > 0).then(|| Mat::<f64>::zeros(width, width));
        let mut buffer = MemBuffer::new(evd::self_adjoint_evd_scratch::<f64>(
            width,
            compute,
            par,
            Default::default(),
        ));
        evd::self_adjoint_evd(
            gram,
            eigenvalues.as_mut(),
            vectors.as_mut().map(|vectors| vectors.as_mut()),
            par,
            MemStack::new(&mut buffer),
            Default::default(),
        )
        .map_err(|_| AnalysisError::EigenNoConvergence { width })?;
        // faer returns eigenvalues in non-decreasing order.
        let singular_values = eigenvalues
            .column_vector()
            .iter()
            .rev()
            .map(|lambda| lambda.max(0.0).sqrt())
            .collect();
        let eigenvectors = vectors.map(|vectors| {
            let mut values = Vec::with_capacity(width * top_k);
            for column in (width - top_k..width).rev() {
                let start = values.len();
                values.extend(vectors.col(column).iter().copied());
                fix_sign(&mut values[start..]);
            }
            Eigenbasis { width, values }
        });
        Ok(Self {
            singular_values,
            eigenvectors,
        })
    }

    /// Eigenvalues of the Gram matrix, `λᵢ = σᵢ²`, non-increasing.
    pub fn eigenvalues(&self) -> Vec<f64> {
        self.singular_values.iter().map(|s| s * s).collect()
    }

    /// Summary metrics, recording the top `top_k` eigenvalues.
    pub fn metrics(&self, top_k: usize) -> SpectrumMetrics {
        SpectrumMetrics::from_singular_values(&self.singular_values, top_k)
    }
}

/// Flips a vector so that its entry of largest magnitude (the first, on ties) is positive.
fn fix_sign(vector: &mut [f64]) {
    let mut largest = 0.0f64;
    let mut sign = 1.0;
    for value in vector.iter() {
        if value.abs() > largest {
            largest = value.abs();
            sign = value.signum();
        }
    }
    if sign < 0.0 {
        vector.iter_mut().for_each(|value| *value = -*value);
    }
}

/// The spectrum of an activation matrix `X` (`rows × width`): raw and centred
/// decompositions, the column means, and the row count.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// Rows (tokens) accumulated.
    pub rows: u64,
    /// Column means `μ`.
    pub mean: Vec<f64>,
    /// How many top eigenvalues the metrics record.
    pub top_k: usize,
    /// Decomposition of `XᵀX`.
    pub raw: Decomposition,
    /// Decomposition of the centred Gram matrix.
    pub centred: Decomposition,
}

/// The ledger's metrics of an activation spectrum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationMetrics {
    /// Rows (tokens) accumulated.
    pub rows: u64,
    /// Width `d`.
    pub width: usize,
    /// Metrics of `XᵀX`.
    pub raw: SpectrumMetrics,
    /// Metrics of the centred Gram matrix.
    pub centred: SpectrumMetrics,
}

impl Spectrum {
    /// Decomposes both Gram matrices; see [`crate::analysis::GramAccumulator::finish_with`].
    pub(crate) fn from_grams(
        gram: MatRef<'_, f64>,
        centred_gram: MatRef<'_, f64>,
        mean: Vec<f64>,
        rows: u64,
        top_k: usize,
        eigenvectors: usize,
        parallelism: Parallelism,
    ) -> Result<Self, AnalysisError> {
        Ok(Self {
            rows,
            mean,
            top_k,
            raw: Decomposition::from_gram(gram, eigenvectors, parallelism)?,
            centred: Decomposition::from_gram(centred_gram, eigenvectors, parallelism)?,
        })
    }

    /// Width `d`.
    pub fn width(&self) -> usize {
        self.mean.len()
    }

    /// The raw or the centred decomposition.
    pub fn part(&self, centring: Centring) -> &Decomposition {
        match centring {
            Centring::Raw => &self.raw,
            Centring::Centred => &self.centred,
        }
    }

    /// The metrics for the ledger.
    pub fn metrics(&self) -> ActivationMetrics {
        ActivationMetrics {
            rows: self.rows,
            width: self.width(),
            raw: self.raw.metrics(self.top_k),
            centred: self.centred.metrics(self.top_k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_is_fixed_by_the_largest_entry() {
        let mut vector = [0.1, -0.9, 0.3];
        fix_sign(&mut vector);
        assert_eq!(vector, [-0.1, 0.9, -0.3]);
        let mut tie = [-0.5, 0.5];
        fix_sign(&mut tie);
        assert_eq!(tie, [0.5, -0.5]);
    }

    #[test]
    fn diagonal_gram_gives_sorted_singular_values_and_axes() {
        let gram = Mat::from_fn(3, 3, |i, j| if i == j { [4.0, 9.0, 1.0][i] } else { 0.0 });
        let decomposition = Decomposition::from_gram(gram.as_ref(), 2, Parallelism::Sequential)
            .expect("decomposes");
        assert_eq!(decomposition.singular_values, vec![3.0, 2.0, 1.0]);
        let basis = decomposition.eigenvectors.expect("kept");
        assert_eq!(basis.len(), 2);
        assert_eq!(basis.column(0), &[0.0, 1.0, 0.0]);
        assert_eq!(basis.column(1), &[1.0, 0.0, 0.0]);
    }
}
