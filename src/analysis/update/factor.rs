//! The dense factorizations behind both routes of an SVD here: faer's Householder QR and
//! thin SVD, in f64.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::householder;
use faer::linalg::qr::no_pivoting::factor as qr;
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Conj, Mat, MatRef};

use crate::analysis::{AnalysisError, Parallelism};

/// Thin QR of an `m × n` matrix: `Q` (`m × min(m, n)`, orthonormal columns) and `R`
/// (`min(m, n) × n`, upper trapezoidal), Householder without pivoting.
pub(super) fn thin_qr(mut matrix: Mat<f64>, parallelism: Parallelism) -> (Mat<f64>, Mat<f64>) {
    let par = parallelism.to_faer();
    let (m, n) = matrix.shape();
    let size = m.min(n);
    let block = qr::recommended_block_size::<f64>(m, n);
    let mut coefficients = Mat::<f64>::zeros(block, size);
    let mut buffer = MemBuffer::new(StackReq::any_of(&[
        qr::qr_in_place_scratch::<f64>(m, n, block, par, Default::default()),
        householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
            m, block, size,
        ),
    ]));
    qr::qr_in_place(
        matrix.as_mut(),
        coefficients.as_mut(),
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    );
    let r = Mat::from_fn(
        size,
        n,
        |row, col| {
            if row <= col { matrix[(row, col)] } else { 0.0 }
        },
    );
    // The Householder vectors are the strict lower part of the factored matrix with an
    // implicit unit diagonal; spelled out so no reader of the basis sees R's entries.
    let basis = Mat::from_fn(m, size, |row, col| match row.cmp(&col) {
        std::cmp::Ordering::Greater => matrix[(row, col)],
        std::cmp::Ordering::Equal => 1.0,
        std::cmp::Ordering::Less => 0.0,
    });
    let mut q = Mat::<f64>::identity(m, size);
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        basis.as_ref(),
        coefficients.as_ref(),
        Conj::No,
        q.as_mut(),
        par,
        MemStack::new(&mut buffer),
    );
    (q, r)
}

/// Singular values (non-increasing), `U` (`m × min`) and `V` (`n × min`).
pub(super) type SvdParts = (Vec<f64>, Mat<f64>, Mat<f64>);

/// Thin SVD of an `m × n` matrix.
pub(super) fn thin_svd(
    matrix: MatRef<'_, f64>,
    parallelism: Parallelism,
) -> Result<SvdParts, AnalysisError> {
    let par = parallelism.to_faer();
    let (rows, cols) = matrix.shape();
    let size = rows.min(cols);
    let mut sigma = Diag::<f64>::zeros(size);
    let mut left = Mat::<f64>::zeros(rows, size);
    let mut right = Mat::<f64>::zeros(cols, size);
    let mut buffer = MemBuffer::new(svd::svd_scratch::<f64>(
        rows,
        cols,
        ComputeSvdVectors::Thin,
        ComputeSvdVectors::Thin,
        par,
        Default::default(),
    ));
    svd::svd(
        matrix,
        sigma.as_mut(),
        Some(left.as_mut()),
        Some(right.as_mut()),
        par,
        MemStack::new(&mut buffer),
        Default::default(),
    )
    .map_err(|_| AnalysisError::SvdNoConvergence { rows, cols })?;
    Ok((sigma.column_vector().iter().copied().collect(), left, right))
}
