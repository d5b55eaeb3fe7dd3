//! Streaming accumulation of `XᵀX`, the column sums and the row count of activations that
//! arrive in chunks of `[tokens, d]` (row-major), possibly on several threads at once.

use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::{Accum, Mat, MatRef};

use super::spectrum::Spectrum;
use super::{AnalysisError, Element, Parallelism, check_shape};

/// Rows per block of the Gram product for rows of `width` values: a quarter of the width
/// (the pending block is then a quarter of the Gram matrix's own memory), at least 64 and at
/// most 1,024 rows — enough that the product runs at full speed. It depends on the width
/// alone, never on how the rows arrive.
fn block_rows(width: usize) -> usize {
    (width / 4).clamp(64, 1024)
}

/// Accumulates the Gram matrix `G = XᵀX` (in f64), the column sums `Xᵀ1` and the row count of
/// a matrix `X` whose rows arrive in chunks.
///
/// Accumulators of disjoint shards [`merge`](GramAccumulator::merge) into the accumulator of
/// their union, so shards can be processed in parallel. Only the lower triangle of `G` is
/// formed (half the work); [`gram`](GramAccumulator::gram) returns the full symmetric matrix.
///
/// Precision: each product of two f32 (or f16, bf16) values is exact in f64, so the only
/// rounding is in the sums, with relative error around `rows × 1e-16` at worst.
///
/// Determinism: the same rows in the same order give the same bits, however they are cut
/// into pushes (a capture's batch size) and whatever the thread count. The rows are summed in
/// fixed blocks — rows `[k·B, (k+1)·B)` for a `B` set by the width alone — each block's
/// product added to `G` in order, the last partial block at the end; column sums are added
/// row by row.
#[derive(Debug, Clone)]
pub struct GramAccumulator {
    width: usize,
    rows: u64,
    /// Column-major `width × width`; only the lower triangle (with the diagonal) is
    /// meaningful, the strict upper triangle stays zero. Holds every full block so far.
    gram: Mat<f64>,
    /// The rows of the block being filled (row-major, fewer than `block_rows(width)` rows).
    pending: Vec<f64>,
    column_sums: Vec<f64>,
    parallelism: Parallelism,
}

impl GramAccumulator {
    /// An empty accumulator for rows of `width` values. It uses the calling rayon pool for
    /// the products; see [`with_parallelism`](GramAccumulator::with_parallelism).
    pub fn new(width: usize) -> Self {
        Self {
            width,
            rows: 0,
            gram: Mat::zeros(width, width),
            pending: Vec::new(),
            column_sums: vec![0.0; width],
            parallelism: Parallelism::default(),
        }
    }

    /// The same accumulator, with the products run under `parallelism`.
    pub fn with_parallelism(mut self, parallelism: Parallelism) -> Self {
        self.parallelism = parallelism;
        self
    }

    /// Row width `d`.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Rows accumulated so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Column sums `Xᵀ1` so far.
    pub fn column_sums(&self) -> &[f64] {
        &self.column_sums
    }

    /// Adds `rows` rows of `width` values each (row-major `[rows, width]`, as a capture hook
    /// produces them) to the accumulator.
    ///
    /// Fails without changing the accumulator when the width differs from the accumulator's,
    /// the buffer length is not `rows × width`, or a value is NaN or infinite.
    pub fn push_rows<T: Element>(
        &mut self,
        data: &[T],
        rows: usize,
        width: usize,
    ) -> Result<(), AnalysisError> {
        if width != self.width {
            return Err(AnalysisError::WidthMismatch {
                expected: self.width,
                found: width,
            });
        }
        check_shape("activations", data.len(), rows, width)?;
        if rows == 0 || width == 0 {
            return Ok(());
        }
        // Validate before touching any state, so a failed push leaves the accumulator as it
        // was (a caller may skip the bad chunk and go on).
        if let Some(index) = data.iter().position(|value| !value.to_f64().is_finite()) {
            return Err(AnalysisError::NonFinite {
                what: "activations",
                row: index / width,
                column: index % width,
                value: data[index].to_f64(),
            });
        }
        let block_values = block_rows(width) * width;
        let mut data = data;
        while !data.is_empty() {
            let take = (block_values - self.pending.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            let start = self.pending.len();
            self.pending.extend(head.iter().map(|value| value.to_f64()));
            for row in self.pending[start..].chunks_exact(width) {
                for (sum, value) in self.column_sums.iter_mut().zip(row) {
                    *sum += value;
                }
            }
            if self.pending.len() == block_values {
                add_block(&mut self.gram, &self.pending, width, self.parallelism);
                self.pending.clear();
            }
            data = rest;
        }
        self.rows += rows as u64;
        Ok(())
    }

    /// Adds a partial Gram matrix computed elsewhere (for example `XᵀX` of a chunk by a GPU
    /// matmul): `gram` is the full symmetric `width × width` matrix, row-major (only its lower
    /// triangle is read), `column_sums` the chunk's column sums and `rows` its row count.
    pub fn push_gram(
        &mut self,
        gram: &[f64],
        column_sums: &[f64],
        rows: u64,
    ) -> Result<(), AnalysisError> {
        check_shape("gram", gram.len(), self.width, self.width)?;
        check_shape("column sums", column_sums.len(), 1, self.width)?;
        let check = |what, values: &[f64], width: usize| match values
            .iter()
            .position(|value| !value.is_finite())
        {
            Some(index) => Err(AnalysisError::NonFinite {
                what,
                row: index / width,
                column: index % width,
                value: values[index],
            }),
            None => Ok(()),
        };
        check("gram", gram, self.width)?;
        check("column sums", column_sums, self.width)?;
        self.flush();
        for column in 0..self.width {
            for row in column..self.width {
                // `row ≥ column`: the lower triangle, read from the row-major buffer.
                self.gram[(row, column)] += gram[row * self.width + column];
            }
        }
        for (sum, value) in self.column_sums.iter_mut().zip(column_sums) {
            *sum += value;
        }
        self.rows += rows;
        Ok(())
    }

    /// Adds another accumulator of the same width (the rows of a disjoint shard). The sum is
    /// element-wise, so `a.merge(b)` and `b.merge(a)` give identical bits; with three or more
    /// shards the grouping changes only the last bits.
    pub fn merge(&mut self, other: &GramAccumulator) -> Result<(), AnalysisError> {
        if other.width != self.width {
            return Err(AnalysisError::WidthMismatch {
                expected: self.width,
                found: other.width,
            });
        }
        self.flush();
        self.gram += &other.lower();
        for (sum, value) in self.column_sums.iter_mut().zip(&other.column_sums) {
            *sum += value;
        }
        self.rows += other.rows;
        Ok(())
    }

    /// Adds the pending rows' product to `G` now (before a sum that does not go block by
    /// block: a merge, a partial Gram from elsewhere).
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            add_block(&mut self.gram, &self.pending, self.width, self.parallelism);
            self.pending.clear();
        }
    }

    /// The lower triangle of `G` with the pending rows' product added (on a copy).
    fn lower(&self) -> Mat<f64> {
        let mut lower = self.gram.clone();
        if !self.pending.is_empty() {
            add_block(&mut lower, &self.pending, self.width, self.parallelism);
        }
        lower
    }

    /// The full symmetric Gram matrix `XᵀX` so far.
    pub fn gram(&self) -> Mat<f64> {
        let mut full = self.lower();
        for column in 0..self.width {
            for row in column + 1..self.width {
                full[(column, row)] = full[(row, column)];
            }
        }
        full
    }

    /// The column-centred Gram matrix `G − n·μμᵀ = (X − 1μᵀ)ᵀ(X − 1μᵀ)`, with `μ` the column
    /// means. Zero rows give the zero matrix.
    pub fn centred_gram(&self) -> Mat<f64> {
        self.centred(self.gram())
    }

    /// `full` (this accumulator's [`gram`](GramAccumulator::gram)) column-centred.
    fn centred(&self, full: Mat<f64>) -> Mat<f64> {
        let mut centred = full;
        if self.rows == 0 {
            return centred;
        }
        // n·μμᵀ = s sᵀ / n, with s the column sums: one division per entry instead of two.
        let rows = self.rows as f64;
        for column in 0..self.width {
            for row in 0..self.width {
                centred[(row, column)] -= self.column_sums[row] * self.column_sums[column] / rows;
            }
        }
        centred
    }

    /// Decomposes the accumulated Gram matrices (raw and centred) into a [`Spectrum`] whose
    /// metrics record the top `top_k` eigenvalues, keeping as many eigenvectors of each
    /// (`0` keeps none, and skips computing them).
    pub fn finish(&self, top_k: usize) -> Result<Spectrum, AnalysisError> {
        self.finish_with(top_k, top_k)
    }

    /// Like [`finish`](GramAccumulator::finish), with the number of eigenvectors kept chosen
    /// apart from `top_k`: an overlap with `k: srank` needs up to `d` of them, a spectrum that
    /// feeds no overlap needs none.
    pub fn finish_with(
        &self,
        top_k: usize,
        eigenvectors: usize,
    ) -> Result<Spectrum, AnalysisError> {
        if self.width == 0 {
            return Err(AnalysisError::Empty { what: "width" });
        }
        if self.rows == 0 {
            return Err(AnalysisError::NoRows);
        }
        let mean: Vec<f64> = self
            .column_sums
            .iter()
            .map(|sum| sum / self.rows as f64)
            .collect();
        let gram = self.gram();
        let centred = self.centred(gram.clone());
        Spectrum::from_grams(
            gram.as_ref(),
            centred.as_ref(),
            mean,
            self.rows,
            top_k,
            eigenvectors,
            self.parallelism,
        )
    }
}

/// `gram += BᵀB` on the lower triangle, for `block` a row-major `[rows, width]` buffer.
fn add_block(gram: &mut Mat<f64>, block: &[f64], width: usize, parallelism: Parallelism) {
    // A row-major `[rows, d]` buffer is the column-major `d × rows` matrix `Bᵀ`.
    let transposed = MatRef::from_column_major_slice(block, width, block.len() / width);
    matmul(
        gram.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Add,
        transposed,
        BlockStructure::Rectangular,
        transposed.transpose(),
        BlockStructure::Rectangular,
        1.0,
        parallelism.to_faer(),
    );
}
