//! The analysis numerics through the public API, against independent references: a direct
//! SVD of the stacked activations, a one-sided Jacobi SVD written here, projection-matrix
//! traces for overlaps, hand-built matrices, and torch's singular values in the committed
//! model fixtures.

use faer::Mat;
use half::{bf16, f16};
use hubsweep::analysis::{
    AnalysisError, Centring, Decomposition, Eigenbasis, GramAccumulator, Parallelism, Spectrum,
    SpectrumMetrics, SvdMethod, WeightMatrix, match_weight_modules, overlaps, split_fused_qkv,
    subspace_overlap, weight_delta_spectrum, weight_spectra, weight_spectrum,
};
use hubsweep::spec::OverlapK;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::repo_root;

// ---------------------------------------------------------------------------------------------
// References

/// Activations with structure: anisotropic columns (scale ∝ 1/√(j+1)), a non-zero mean per
/// column, so raw and centred spectra differ. Uniform noise, fixed seed.
fn activations(rows: usize, width: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(rows * width);
    for _ in 0..rows {
        for column in 0..width {
            let scale = 1.0 / ((column + 1) as f32).sqrt();
            let offset = 0.5 + column as f32 * 0.05;
            data.push(offset + scale * (rng.random::<f32>() * 2.0 - 1.0));
        }
    }
    data
}

fn random_matrix(rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows * cols)
        .map(|_| rng.random::<f64>() * 2.0 - 1.0)
        .collect()
}

/// Singular values of the row-major matrix by a direct SVD (faer's, f64) of the stacked rows.
fn direct_singular_values(data: &[f64], rows: usize, width: usize) -> Vec<f64> {
    Mat::from_fn(rows, width, |i, j| data[i * width + j])
        .singular_values()
        .expect("direct svd converges")
}

/// Column-centred copy of a row-major matrix.
fn centred(data: &[f64], rows: usize, width: usize) -> Vec<f64> {
    let mut mean = vec![0.0; width];
    for row in data.chunks_exact(width) {
        for (sum, value) in mean.iter_mut().zip(row) {
            *sum += value;
        }
    }
    mean.iter_mut().for_each(|sum| *sum /= rows as f64);
    data.chunks_exact(width)
        .flat_map(|row| row.iter().zip(&mean).map(|(value, mean)| value - mean))
        .collect()
}

/// One-sided Jacobi (Hestenes) SVD: rotates pairs of columns until all are orthogonal; the
/// column norms are then the singular values. Slow, simple, and accurate to a few ulps in
/// every singular value: a reference that shares no code with faer.
fn jacobi_singular_values(data: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    // Work on the columns of the taller orientation.
    let (length, count) = if rows >= cols {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let mut columns: Vec<Vec<f64>> = (0..count)
        .map(|c| {
            (0..length)
                .map(|r| {
                    if rows >= cols {
                        data[r * cols + c]
                    } else {
                        data[c * cols + r]
                    }
                })
                .collect()
        })
        .collect();
    for _sweep in 0..100 {
        let mut rotated = false;
        for p in 0..count {
            for q in p + 1..count {
                let alpha: f64 = columns[p].iter().map(|x| x * x).sum();
                let beta: f64 = columns[q].iter().map(|x| x * x).sum();
                let gamma: f64 = columns[p].iter().zip(&columns[q]).map(|(x, y)| x * y).sum();
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                let (left, right) = columns.split_at_mut(q);
                for (x, y) in left[p].iter_mut().zip(right[0].iter_mut()) {
                    (*x, *y) = (c * *x - s * *y, s * *x + c * *y);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut sigma: Vec<f64> = columns
        .iter()
        .map(|column| column.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    sigma.sort_by(|a, b| b.total_cmp(a));
    sigma
}

/// Asserts `|a − b| ≤ tolerance · |b|` element-wise.
fn assert_relative(actual: &[f64], expected: &[f64], tolerance: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths");
    for (index, (a, b)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * b.abs(),
            "{what}[{index}]: {a} vs {b} (relative {:.3e})",
            (a - b).abs() / b.abs()
        );
    }
}

/// Random orthonormal `d × d` matrix (Gram–Schmidt, twice for stability), column-major.
fn random_orthonormal(width: usize, seed: u64) -> Vec<Vec<f64>> {
    let raw = random_matrix(width, width, seed);
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for j in 0..width {
        let mut v: Vec<f64> = (0..width).map(|i| raw[i * width + j]).collect();
        for _ in 0..2 {
            for u in &basis {
                let dot: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        basis.push(v);
    }
    basis
}

/// `Q diag(λ) Qᵀ` for the columns `q` of an orthonormal basis.
fn gram_with_eigenvectors(q: &[Vec<f64>], eigenvalues: &[f64]) -> Mat<f64> {
    let width = q.len();
    Mat::from_fn(width, width, |i, j| {
        (0..width).map(|m| q[m][i] * eigenvalues[m] * q[m][j]).sum()
    })
}

/// `tr(P_a P_b) / k` with `P = U Uᵀ` built explicitly: the overlap by its definition.
fn overlap_by_projections(a: &[Vec<f64>], b: &[Vec<f64>], k: usize) -> f64 {
    let width = a[0].len();
    let projector = |basis: &[Vec<f64>]| {
        Mat::from_fn(width, width, |i, j| {
            basis[..k].iter().map(|u| u[i] * u[j]).sum::<f64>()
        })
    };
    let (pa, pb) = (projector(a), projector(b));
    let mut trace = 0.0;
    for i in 0..width {
        for j in 0..width {
            trace += pa[(i, j)] * pb[(j, i)];
        }
    }
    trace / k as f64
}

// ---------------------------------------------------------------------------------------------
// Activation spectra

/// The Gram route squares the condition number; these activations have σ₁/σ_d ≈ 30, so
/// eigenvalue rounding (~1e-16·λ₁) moves σ_d by ~1e-13 relative: 1e-6 is a wide margin that
/// still catches any wrong centring or a dropped chunk.
const SPECTRUM_TOLERANCE: f64 = 1e-6;

#[test]
fn spectrum_matches_direct_svd_one_chunk_and_sharded() {
    let (rows, width) = (500, 24);
    let data = activations(rows, width, 1);
    let stacked: Vec<f64> = data.iter().map(|&x| f64::from(x)).collect();
    let raw_expected = direct_singular_values(&stacked, rows, width);
    let centred_expected = direct_singular_values(&centred(&stacked, rows, width), rows, width);

    let mut whole = GramAccumulator::new(width);
    whole.push_rows(&data, rows, width).unwrap();
    let spectrum = whole.finish(5).unwrap();
    assert_relative(
        &spectrum.raw.singular_values,
        &raw_expected,
        SPECTRUM_TOLERANCE,
        "raw",
    );
    assert_relative(
        &spectrum.centred.singular_values,
        &centred_expected,
        SPECTRUM_TOLERANCE,
        "centred",
    );
    assert_eq!(spectrum.rows, rows as u64);

    // Eigenvectors of the centred Gram matrix are the right singular vectors of the centred
    // activations (up to sign); these have well-separated singular values, so each top
    // vector is determined to ~1e-13.
    let centred_stacked = centred(&stacked, rows, width);
    let svd = Mat::from_fn(rows, width, |i, j| centred_stacked[i * width + j])
        .thin_svd()
        .expect("direct svd converges");
    let basis = spectrum
        .centred
        .eigenvectors
        .as_ref()
        .expect("top_k = 5 kept");
    assert_eq!(basis.len(), 5);
    for j in 0..5 {
        let cosine: f64 = (0..width)
            .map(|i| basis.column(j)[i] * svd.V()[(i, j)])
            .sum();
        assert!(
            (cosine.abs() - 1.0).abs() < 1e-9,
            "vector {j}: |cos| = {cosine}"
        );
    }

    // Three shards of uneven size, one of them pushed in two chunks, merged.
    let cuts = [0, 123, 124, 380, 500];
    let mut shards: Vec<GramAccumulator> = Vec::new();
    for window in cuts.windows(2) {
        let mut shard = GramAccumulator::new(width).with_parallelism(Parallelism::Sequential);
        let part = &data[window[0] * width..window[1] * width];
        shard.push_rows(part, window[1] - window[0], width).unwrap();
        shards.push(shard);
    }
    let mut merged = GramAccumulator::new(width);
    for shard in &shards {
        merged.merge(shard).unwrap();
    }
    let sharded = merged.finish(5).unwrap();
    assert_eq!(sharded.rows, rows as u64);
    assert_relative(
        &sharded.raw.singular_values,
        &raw_expected,
        SPECTRUM_TOLERANCE,
        "sharded raw",
    );
    assert_relative(
        &sharded.centred.singular_values,
        &centred_expected,
        SPECTRUM_TOLERANCE,
        "sharded centred",
    );
}

#[test]
fn half_precision_rows_accumulate_exactly_converted() {
    let (rows, width) = (200, 16);
    let data = activations(rows, width, 2);
    let halves: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
    let brains: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
    for (name, stacked, spectrum) in [
        (
            "f16",
            halves.iter().map(|x| x.to_f64()).collect::<Vec<_>>(),
            {
                let mut acc = GramAccumulator::new(width);
                acc.push_rows(&halves, rows, width).unwrap();
                acc.finish(0).unwrap()
            },
        ),
        ("bf16", brains.iter().map(|x| x.to_f64()).collect(), {
            let mut acc = GramAccumulator::new(width);
            acc.push_rows(&brains, rows, width).unwrap();
            acc.finish(0).unwrap()
        }),
    ] {
        assert_relative(
            &spectrum.raw.singular_values,
            &direct_singular_values(&stacked, rows, width),
            SPECTRUM_TOLERANCE,
            name,
        );
        assert!(spectrum.raw.eigenvectors.is_none(), "top_k 0 keeps none");
    }
}

#[test]
fn partial_grams_from_elsewhere_merge_like_rows() {
    let (rows, width) = (64, 8);
    let data = activations(rows, width, 3);
    let mut by_rows = GramAccumulator::new(width);
    by_rows.push_rows(&data, rows, width).unwrap();
    // A partial Gram as a GPU matmul would hand it over: full symmetric, row-major.
    let gram = by_rows.gram();
    let flat: Vec<f64> = (0..width)
        .flat_map(|i| (0..width).map(move |j| (i, j)))
        .map(|(i, j)| gram[(i, j)])
        .collect();
    let mut by_gram = GramAccumulator::new(width);
    by_gram
        .push_gram(&flat, by_rows.column_sums(), rows as u64)
        .unwrap();
    assert_eq!(by_gram.rows(), by_rows.rows());
    assert_eq!(
        by_gram.finish(0).unwrap().centred.singular_values,
        by_rows.finish(0).unwrap().centred.singular_values
    );
}

#[test]
fn hand_checkable_matrices() {
    // Identity rows: XᵀX = I, σ all 1; centring removes the all-ones direction (μ = 1/d).
    let width = 10;
    let identity: Vec<f32> = (0..width * width)
        .map(|i| if i / width == i % width { 1.0 } else { 0.0 })
        .collect();
    let mut acc = GramAccumulator::new(width);
    acc.push_rows(&identity, width, width).unwrap();
    let metrics = acc.finish(3).unwrap().metrics();
    assert!((metrics.raw.stable_rank - 10.0).abs() < 1e-12);
    assert!((metrics.raw.effective_rank - 10.0).abs() < 1e-12);
    assert!((metrics.raw.participation_ratio - 10.0).abs() < 1e-12);
    assert_eq!((metrics.raw.k90, metrics.raw.k99), (9, 10));
    assert!((metrics.centred.stable_rank - 9.0).abs() < 1e-12);
    assert!((metrics.centred.participation_ratio - 9.0).abs() < 1e-12);
    assert_eq!(metrics.centred.k99, 9);

    // Rank one: rows a_i·v; centred rows (a_i − ā)·v are rank one too.
    let v = [1.0f32, -2.0, 0.5, 3.0];
    let rank_one: Vec<f32> = (1..=6)
        .flat_map(|a| v.iter().map(move |x| a as f32 * x))
        .collect();
    let mut acc = GramAccumulator::new(4);
    acc.push_rows(&rank_one, 6, 4).unwrap();
    let spectrum = acc.finish(1).unwrap();
    let metrics = spectrum.metrics();
    for part in [&metrics.raw, &metrics.centred] {
        assert!((part.stable_rank - 1.0).abs() < 1e-9, "{part:?}");
        assert!((part.participation_ratio - 1.0).abs() < 1e-9, "{part:?}");
        assert_eq!((part.k90, part.k99), (1, 1));
    }
    // σ₁² = Σa² · ‖v‖² = 91 · 14.25.
    assert!((metrics.raw.top_eigenvalues[0] - 91.0 * 14.25).abs() < 1e-9);
    // The top eigenvector is ±v/‖v‖, with the sign fixed by the largest entry (3.0 > 0).
    let top = spectrum.raw.eigenvectors.as_ref().unwrap().column(0);
    let norm = 14.25f64.sqrt();
    for (a, b) in top.iter().zip(v) {
        assert!((a - f64::from(b) / norm).abs() < 1e-12, "{top:?}");
    }
}

#[test]
fn matches_torch_singular_values_in_model_fixture() {
    // Written by transformers + torch (scripts/fixtures/gen_fixtures.py in the model work):
    // `svals.*` = torch.linalg.svdvals of the f32 activations in f64, `svals_centered.*` the
    // same after subtracting the column mean.
    let path = repo_root().join("tests/fixtures/gpt_neox_tiny/reference.safetensors");
    let Ok(bytes) = std::fs::read(&path) else {
        #[allow(clippy::print_stderr)] // a skip note, as for absent peers
        {
            eprintln!("skip: fixture {} not present", path.display());
        }
        return;
    };
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("fixture parses");
    let f32s = |name: &str| -> Vec<f32> {
        let view = file.tensor(name).expect(name);
        view.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let f64s = |name: &str| -> Vec<f64> {
        let view = file.tensor(name).expect(name);
        view.data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    for layer in 0..3 {
        let hook = format!("blocks.{layer}.hook_resid_post");
        let activations = f32s(&hook);
        let width = file.tensor(&hook).unwrap().shape()[2];
        let rows = activations.len() / width;
        let mut acc = GramAccumulator::new(width);
        // Two chunks, as two batches of a capture would arrive.
        let half = rows / 2 * width;
        acc.push_rows(&activations[..half], rows / 2, width)
            .unwrap();
        acc.push_rows(&activations[half..], rows - rows / 2, width)
            .unwrap();
        let spectrum = acc.finish(0).unwrap();
        for (ours, name) in [
            (&spectrum.raw.singular_values, format!("svals.{hook}")),
            (
                &spectrum.centred.singular_values,
                format!("svals_centered.{hook}"),
            ),
        ] {
            let torch = f64s(&name);
            // rows (24) < width (64): the Gram matrix has 40 zero eigenvalues, whose
            // rounding noise (~1e-8·σ₁ after the square root) we compare in absolute terms.
            let scale = torch[0];
            for (index, expected) in torch.iter().enumerate() {
                assert!(
                    (ours[index] - expected).abs() <= 1e-6 * scale,
                    "{name}[{index}]: {} vs torch {expected}",
                    ours[index]
                );
            }
            assert!(ours[torch.len()..].iter().all(|s| *s <= 1e-6 * scale));
        }
    }
}

#[test]
fn accumulator_rejects_bad_input_and_stays_unchanged() {
    let mut acc = GramAccumulator::new(4);
    assert!(matches!(acc.finish(0), Err(AnalysisError::NoRows)));
    assert!(matches!(
        acc.push_rows(&[0.0f32; 6], 2, 3),
        Err(AnalysisError::WidthMismatch {
            expected: 4,
            found: 3
        })
    ));
    assert!(matches!(
        acc.push_rows(&[0.0f32; 7], 2, 4),
        Err(AnalysisError::ShapeMismatch { len: 7, .. })
    ));
    let mut bad = [1.0f32; 8];
    bad[6] = f32::NAN;
    let err = acc.push_rows(&bad, 2, 4).unwrap_err();
    assert!(
        matches!(
            err,
            AnalysisError::NonFinite {
                row: 1,
                column: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(acc.rows(), 0);
    assert!(acc.column_sums().iter().all(|s| *s == 0.0));
    assert!(matches!(
        acc.merge(&GramAccumulator::new(5)),
        Err(AnalysisError::WidthMismatch { .. })
    ));
    assert!(matches!(
        GramAccumulator::new(0).finish(1),
        Err(AnalysisError::Empty { .. })
    ));
}

#[test]
fn shards_accumulate_in_parallel_on_rayon() {
    use rayon::prelude::*;
    let (rows, width) = (1000, 12);
    let data = activations(rows, width, 4);
    let mut sequential = GramAccumulator::new(width);
    sequential.push_rows(&data, rows, width).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let merged = pool.install(|| {
        data.par_chunks(100 * width)
            .map(|chunk| {
                let mut shard =
                    GramAccumulator::new(width).with_parallelism(Parallelism::Sequential);
                shard.push_rows(chunk, chunk.len() / width, width).unwrap();
                shard
            })
            .reduce(
                || GramAccumulator::new(width),
                |mut a, b| {
                    a.merge(&b).unwrap();
                    a
                },
            )
    });
    assert_eq!(merged.rows(), rows as u64);
    let expected = sequential.finish(0).unwrap();
    let actual = merged.finish(0).unwrap();
    assert_relative(
        &actual.raw.singular_values,
        &expected.raw.singular_values,
        1e-12,
        "parallel shards",
    );
}

// ---------------------------------------------------------------------------------------------
// Storage

#[test]
fn spectrum_safetensors_round_trip_with_documented_names() {
    let (rows, width) = (50, 6);
    let mut acc = GramAccumulator::new(width);
    acc.push_rows(&activations(rows, width, 5), rows, width)
        .unwrap();
    let spectrum = acc.finish(2).unwrap();
    let bytes = spectrum.to_safetensors().unwrap();
    assert_eq!(bytes, spectrum.to_safetensors().unwrap(), "deterministic");
    assert_eq!(Spectrum::from_safetensors(&bytes).unwrap(), spectrum);

    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "centred.eigenvectors",
            "centred.singular_values",
            "mean",
            "raw.eigenvectors",
            "raw.singular_values"
        ]
    );
    let eigenvectors = file.tensor("raw.eigenvectors").unwrap();
    assert_eq!(eigenvectors.shape(), [width, 2]);
    // Row-major [d, k]: entry (i, j) is component i of eigenvector j.
    let stored: Vec<f64> = eigenvectors
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let basis = spectrum.raw.eigenvectors.as_ref().unwrap();
    for i in 0..width {
        for j in 0..2 {
            assert_eq!(stored[i * 2 + j], basis.column(j)[i]);
        }
    }
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header: serde_json::Value =
        serde_json::from_str(&metadata.metadata().as_ref().unwrap()["hubsweep.spectrum"]).unwrap();
    assert_eq!(
        header,
        serde_json::json!({"version": 1, "rows": 50, "top_k": 2})
    );

    let json = serde_json::to_value(spectrum.metrics()).unwrap();
    for key in ["rows", "width", "raw", "centred"] {
        assert!(json.get(key).is_some(), "metrics without `{key}`: {json}");
    }
    for key in [
        "stable_rank",
        "effective_rank",
        "participation_ratio",
        "k90",
        "k99",
        "top_eigenvalues",
    ] {
        assert!(json["raw"].get(key).is_some(), "no `{key}`: {json}");
    }

    assert!(Spectrum::from_safetensors(b"not safetensors").is_err());

    // Metrics with top eigenvalues but no eigenvectors: only the vectors' tensors go.
    let lean = acc.finish_with(3, 0).unwrap();
    assert_eq!(lean.metrics().raw.top_eigenvalues.len(), 3);
    assert!(lean.raw.eigenvectors.is_none() && lean.centred.eigenvectors.is_none());
    let lean_bytes = lean.to_safetensors().unwrap();
    assert_eq!(
        safetensors::SafeTensors::deserialize(&lean_bytes)
            .unwrap()
            .len(),
        3
    );
    assert_eq!(Spectrum::from_safetensors(&lean_bytes).unwrap(), lean);
}

#[test]
fn partial_gram_state_round_trips_and_merges() {
    let (rows, width) = (90, 7);
    let data = activations(rows, width, 8);
    let mut first = GramAccumulator::new(width);
    first.push_rows(&data[..40 * width], 40, width).unwrap();
    let bytes = first.to_safetensors().unwrap();
    assert_eq!(bytes, first.to_safetensors().unwrap(), "deterministic");
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("gram").unwrap().shape(), [width, width]);
    assert_eq!(file.tensor("column_sums").unwrap().shape(), [width]);

    let restored = GramAccumulator::from_safetensors(&bytes).unwrap();
    assert_eq!(restored.rows(), 40);
    assert_eq!(restored.finish(2).unwrap(), first.finish(2).unwrap());

    // A restored shard merges with a live one like the original would.
    let mut second = GramAccumulator::new(width);
    second
        .push_rows(&data[40 * width..], rows - 40, width)
        .unwrap();
    let mut from_store = restored;
    from_store.merge(&second).unwrap();
    let mut live = first;
    live.merge(&second).unwrap();
    assert_eq!(from_store.finish(0).unwrap(), live.finish(0).unwrap());

    assert!(
        GramAccumulator::from_safetensors(&live.finish(0).unwrap().to_safetensors().unwrap())
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Overlaps

/// The Gram matrices share no code with the eigensolver's output: the reference overlap is
/// computed from the bases they were built from. Distinct eigenvalues make the top-k
/// subspaces unique; 1e-9 leaves room for the eigensolver's ~1e-14 vector error.
#[test]
fn overlap_of_grams_matches_projection_traces() {
    let width = 16;
    let eigenvalues: Vec<f64> = (0..width).map(|i| 20.0 - i as f64).collect();
    let qa = random_orthonormal(width, 10);
    let qb = random_orthonormal(width, 11);
    let ga = gram_with_eigenvectors(&qa, &eigenvalues);
    let gb = gram_with_eigenvectors(&qb, &eigenvalues);
    let results = Decomposition::gram_overlaps(
        ga.as_ref(),
        gb.as_ref(),
        &OverlapK::Sizes(vec![1, 3, 8, 16]),
        Parallelism::Sequential,
    )
    .unwrap();
    for result in &results {
        let expected = overlap_by_projections(&qa, &qb, result.k);
        assert!(
            (result.gamma - expected).abs() < 1e-9,
            "k = {}: {} vs {expected}",
            result.k,
            result.gamma
        );
        assert!((result.baseline - result.k as f64 / width as f64).abs() < 1e-15);
        assert!((result.ratio - result.gamma / result.baseline).abs() < 1e-12);
    }
    assert!(
        (results[3].gamma - 1.0).abs() < 1e-9,
        "k = d spans everything"
    );

    // The same subspace: γ = 1; the complementary one: γ = 0.
    let same = Decomposition::gram_overlaps(
        ga.as_ref(),
        ga.as_ref(),
        &OverlapK::Sizes(vec![4]),
        Parallelism::Sequential,
    )
    .unwrap();
    assert!((same[0].gamma - 1.0).abs() < 1e-9);
    let reversed: Vec<f64> = eigenvalues.iter().rev().copied().collect();
    let gc = gram_with_eigenvectors(&qa, &reversed);
    let orthogonal = Decomposition::gram_overlaps(
        ga.as_ref(),
        gc.as_ref(),
        &OverlapK::Sizes(vec![4, 8]),
        Parallelism::Sequential,
    )
    .unwrap();
    for result in orthogonal {
        assert!(result.gamma.abs() < 1e-9, "{result:?}");
    }
}

#[test]
fn overlap_k_from_stable_rank_of_the_base() {
    let width = 8;
    // λ = (4, 4, 4, 1, 1, 1, 1, 1): stable rank 17/4 = 4.25 → k = 4.
    let eigenvalues = [4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let q = random_orthonormal(width, 12);
    let gram = gram_with_eigenvectors(&q, &eigenvalues);
    let results = Decomposition::gram_overlaps(
        gram.as_ref(),
        gram.as_ref(),
        &OverlapK::Srank,
        Parallelism::Sequential,
    )
    .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].k, 4);
}

#[test]
fn overlap_errors_are_clear() {
    let a = Eigenbasis::from_columns(4, vec![1.0, 0.0, 0.0, 0.0]).unwrap();
    let b = Eigenbasis::from_columns(3, vec![1.0, 0.0, 0.0]).unwrap();
    let err = subspace_overlap(&a, &b, 1).unwrap_err();
    assert!(matches!(
        err,
        AnalysisError::WidthMismatch {
            expected: 4,
            found: 3
        }
    ));
    assert_eq!(err.to_string(), "width mismatch: expected `4`, found `3`");
    assert!(matches!(
        subspace_overlap(&a, &a, 2),
        Err(AnalysisError::SubspaceSize { k: 2, available: 1 })
    ));
    let no_vectors = Decomposition {
        singular_values: vec![1.0; 4],
        eigenvectors: None,
    };
    assert!(matches!(
        overlaps(&no_vectors, &no_vectors, &OverlapK::Sizes(vec![1])),
        Err(AnalysisError::NoEigenvectors)
    ));
    let spectrum_a = {
        let mut acc = GramAccumulator::new(5);
        acc.push_rows(&activations(10, 5, 6), 10, 5).unwrap();
        acc.finish(2).unwrap()
    };
    let spectrum_b = {
        let mut acc = GramAccumulator::new(6);
        acc.push_rows(&activations(10, 6, 7), 10, 6).unwrap();
        acc.finish(2).unwrap()
    };
    assert!(matches!(
        overlaps(
            spectrum_a.part(Centring::Centred),
            spectrum_b.part(Centring::Centred),
            &OverlapK::Sizes(vec![1])
        ),
        Err(AnalysisError::WidthMismatch {
            expected: 5,
            found: 6
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Weights

#[test]
fn weight_spectra_match_jacobi_svd() {
    for (rows, cols, seed) in [(40, 30, 20), (30, 40, 21), (64, 64, 22), (1, 7, 23)] {
        let values = random_matrix(rows, cols, seed);
        let expected = jacobi_singular_values(&values, rows, cols);
        let matrix = WeightMatrix::new(&values, rows, cols).unwrap();
        let spectrum = weight_spectrum(matrix, SvdMethod::SvdF64, Parallelism::Sequential).unwrap();
        assert_eq!((spectrum.rows, spectrum.cols), (rows, cols));
        // Both are backward stable in f64 and these matrices are well conditioned
        // (σ₁/σ_min < 1e3), so every value agrees far below 1e-9 relative.
        assert_relative(
            &spectrum.singular_values,
            &expected,
            1e-9,
            &format!("{rows}×{cols}"),
        );

        // Single precision: the input is rounded to f32 (2^-24) and the SVD runs in f32.
        let singles: Vec<f32> = values.iter().map(|&x| x as f32).collect();
        let single = weight_spectrum(
            WeightMatrix::new(&singles, rows, cols).unwrap(),
            SvdMethod::SvdF32,
            Parallelism::Rayon { threads: 2 },
        )
        .unwrap();
        for (a, b) in single.singular_values.iter().zip(&expected) {
            assert!((a - b).abs() <= 1e-5 * expected[0], "f32: {a} vs {b}");
        }

        // Through the Gram matrix: eigenvalue error ~1e-16·σ₁² becomes ~1e-16·σ₁²/σᵢ in σᵢ
        // (1e-13 leaves a factor of ~100 for the dimension-dependent constants).
        let gram = weight_spectrum(matrix, SvdMethod::GramF64, Parallelism::Sequential).unwrap();
        assert_eq!(gram.singular_values.len(), rows.min(cols));
        for (a, b) in gram.singular_values.iter().zip(&expected) {
            let tolerance = 1e-13 * expected[0] * expected[0] / b;
            assert!((a - b).abs() <= tolerance, "gram: {a} vs {b}");
        }
    }
}

#[test]
fn many_weights_in_parallel_match_one_by_one() {
    let shapes = [(8, 5), (30, 12), (3, 3), (12, 30)];
    let values: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(seed, &(rows, cols))| random_matrix(rows, cols, 40 + seed as u64))
        .collect();
    let mut weights: Vec<WeightMatrix<'_, f64>> = values
        .iter()
        .zip(shapes)
        .map(|(data, (rows, cols))| WeightMatrix::new(data, rows, cols).unwrap())
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let together = pool.install(|| weight_spectra(&weights, SvdMethod::SvdF64));
    for (weight, result) in weights.iter().zip(&together) {
        let alone = weight_spectrum(*weight, SvdMethod::SvdF64, Parallelism::Sequential).unwrap();
        assert_eq!(result.as_ref().unwrap(), &alone);
    }
    // A bad matrix fails alone; the others still come back.
    let poisoned = vec![f64::NAN; 4];
    weights.push(WeightMatrix::new(&poisoned, 2, 2).unwrap());
    let results = weight_spectra(&weights, SvdMethod::SvdF64);
    assert!(results[..4].iter().all(Result::is_ok));
    assert!(matches!(results[4], Err(AnalysisError::NonFinite { .. })));
}

#[test]
fn weight_delta_spectrum_is_the_spectrum_of_the_difference() {
    let (rows, cols) = (24, 36);
    let base = random_matrix(rows, cols, 30);
    let step = random_matrix(rows, cols, 31);
    let weight: Vec<f64> = base.iter().zip(&step).map(|(b, s)| b + 0.01 * s).collect();
    let difference: Vec<f64> = weight.iter().zip(&base).map(|(w, b)| w - b).collect();
    let spectrum = weight_delta_spectrum(
        WeightMatrix::new(&weight, rows, cols).unwrap(),
        WeightMatrix::new(&base, rows, cols).unwrap(),
        SvdMethod::SvdF64,
        Parallelism::Sequential,
    )
    .unwrap();
    assert_relative(
        &spectrum.singular_values,
        &jacobi_singular_values(&difference, rows, cols),
        1e-9,
        "delta",
    );

    // Half-precision checkpoints (Pythia stores f16): converted exactly, then subtracted.
    let weight16: Vec<f16> = weight.iter().map(|&x| f16::from_f64(x)).collect();
    let base16: Vec<f16> = base.iter().map(|&x| f16::from_f64(x)).collect();
    let difference16: Vec<f64> = weight16
        .iter()
        .zip(&base16)
        .map(|(w, b)| w.to_f64() - b.to_f64())
        .collect();
    let spectrum16 = weight_delta_spectrum(
        WeightMatrix::new(&weight16, rows, cols).unwrap(),
        WeightMatrix::new(&base16, rows, cols).unwrap(),
        SvdMethod::SvdF64,
        Parallelism::Sequential,
    )
    .unwrap();
    assert_relative(
        &spectrum16.singular_values,
        &jacobi_singular_values(&difference16, rows, cols),
        1e-9,
        "f16 delta",
    );

    let other = random_matrix(cols, rows, 32);
    assert!(matches!(
        weight_delta_spectrum(
            WeightMatrix::new(&weight, rows, cols).unwrap(),
            WeightMatrix::new(&other, cols, rows).unwrap(),
            SvdMethod::SvdF64,
            Parallelism::Sequential,
        ),
        Err(AnalysisError::WeightShapeMismatch { .. })
    ));
    assert!(matches!(
        WeightMatrix::new(&weight, rows + 1, cols),
        Err(AnalysisError::ShapeMismatch { .. })
    ));
    let mut poisoned = weight.clone();
    poisoned[cols + 2] = f64::INFINITY;
    assert!(matches!(
        weight_spectrum(
            WeightMatrix::new(&poisoned, rows, cols).unwrap(),
            SvdMethod::SvdF64,
            Parallelism::Sequential,
        ),
        Err(AnalysisError::NonFinite {
            row: 1,
            column: 2,
            ..
        })
    ));
}

#[test]
fn weight_metrics_on_hand_checkable_matrices() {
    let identity: Vec<f32> = (0..36)
        .map(|i| if i / 6 == i % 6 { 1.0 } else { 0.0 })
        .collect();
    let metrics = weight_spectrum(
        WeightMatrix::new(&identity, 6, 6).unwrap(),
        SvdMethod::SvdF64,
        Parallelism::Sequential,
    )
    .unwrap()
    .metrics(2);
    assert!((metrics.stable_rank - 6.0).abs() < 1e-12);
    assert_eq!((metrics.k90, metrics.k99), (6, 6));
    assert_eq!(metrics.top_eigenvalues.len(), 2);

    // Outer product u vᵀ: rank one, σ₁ = ‖u‖‖v‖.
    let (u, v) = ([1.0f32, 2.0, 2.0], [3.0f32, 4.0]);
    let outer: Vec<f32> = u
        .iter()
        .flat_map(|a| v.iter().map(move |b| a * b))
        .collect();
    let spectrum = weight_spectrum(
        WeightMatrix::new(&outer, 3, 2).unwrap(),
        SvdMethod::SvdF64,
        Parallelism::Sequential,
    )
    .unwrap();
    assert!((spectrum.singular_values[0] - 15.0).abs() < 1e-12);
    assert!(spectrum.singular_values[1].abs() < 1e-12);
    assert!((spectrum.metrics(1).stable_rank - 1.0).abs() < 1e-12);
}

#[test]
fn fused_qkv_splits_per_head_interleaving() {
    let (heads, head_dim, cols) = (3, 2, 4);
    // Entry value encodes where it came from: projection·1000 + head·100 + row·10 + column,
    // laid out as GPT-NeoX stores it: per head, q rows then k rows then v rows.
    let mut fused = Vec::new();
    for head in 0..heads {
        for projection in 0..3 {
            for row in 0..head_dim {
                for column in 0..cols {
                    fused.push((projection * 1000 + head * 100 + row * 10 + column) as f32);
                }
            }
        }
    }
    let split = split_fused_qkv(&fused, heads, head_dim, cols).unwrap();
    assert_eq!((split.rows, split.cols), (heads * head_dim, cols));
    for (projection, (name, part)) in split.parts().into_iter().enumerate() {
        assert_eq!(name, ["query", "key", "value"][projection]);
        for head in 0..heads {
            for row in 0..head_dim {
                for column in 0..cols {
                    let value = part[(head * head_dim + row) * cols + column];
                    let expected = projection * 1000 + head * 100 + row * 10 + column;
                    assert_eq!(value, expected as f32, "{name} head {head} row {row}");
                }
            }
        }
    }

    // The bias splits the same way (cols = 1).
    let bias: Vec<u16> = (0..(3 * heads * head_dim) as u16).collect();
    let split_bias = split_fused_qkv(&bias, heads, head_dim, 1).unwrap();
    assert_eq!(split_bias.query, vec![0, 1, 6, 7, 12, 13]);
    assert_eq!(split_bias.key, vec![2, 3, 8, 9, 14, 15]);
    assert_eq!(split_bias.value, vec![4, 5, 10, 11, 16, 17]);

    let err = split_fused_qkv(&fused[..fused.len() - cols], heads, head_dim, cols).unwrap_err();
    assert_eq!(
        err.to_string(),
        "fused qkv weight has 17 rows; 3 heads of dimension 2 need 18"
    );
}

fn pythia_keys(layers: usize) -> Vec<String> {
    let mut keys = vec![
        "gpt_neox.embed_in.weight".to_string(),
        "gpt_neox.final_layer_norm.weight".into(),
        "gpt_neox.final_layer_norm.bias".into(),
        "embed_out.weight".into(),
    ];
    for layer in 0..layers {
        for module in [
            "input_layernorm",
            "post_attention_layernorm",
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        ] {
            keys.push(format!("gpt_neox.layers.{layer}.{module}.weight"));
            keys.push(format!("gpt_neox.layers.{layer}.{module}.bias"));
        }
    }
    keys
}

#[test]
fn module_patterns_select_checkpoint_weights() {
    let keys = pythia_keys(2);
    let matches = match_weight_modules(
        keys.iter().map(String::as_str),
        &["attention.query_key_value", "mlp.*"],
    )
    .unwrap();
    let triples: Vec<(Option<usize>, &str, &str)> = matches
        .iter()
        .map(|m| (m.layer, m.module.as_str(), m.key.as_str()))
        .collect();
    assert_eq!(
        triples,
        [
            (
                Some(0),
                "attention.query_key_value",
                "gpt_neox.layers.0.attention.query_key_value.weight"
            ),
            (
                Some(0),
                "mlp.dense_4h_to_h",
                "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
            ),
            (
                Some(0),
                "mlp.dense_h_to_4h",
                "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
            ),
            (
                Some(1),
                "attention.query_key_value",
                "gpt_neox.layers.1.attention.query_key_value.weight"
            ),
            (
                Some(1),
                "mlp.dense_4h_to_h",
                "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
            ),
            (
                Some(1),
                "mlp.dense_h_to_4h",
                "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
            ),
        ]
    );
    assert_eq!(matches[1].pattern, "mlp.*");

    // Weights outside the layers are matched by their whole key.
    let embed =
        match_weight_modules(keys.iter().map(String::as_str), &["gpt_neox.embed_in"]).unwrap();
    assert_eq!(embed.len(), 1);
    assert_eq!(embed[0].layer, None);

    // Llama names.
    let llama = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
    ];
    let selected = match_weight_modules(llama, &["self_attn.*_proj"]).unwrap();
    assert_eq!(selected.len(), 2);

    // Every pattern that matches nothing is reported at once, with a suggestion if close.
    let err = match_weight_modules(
        keys.iter().map(String::as_str),
        &["attention.query_key_valu", "mlp.*", "self_attn.q_proj"],
    )
    .unwrap_err();
    let AnalysisError::UnmatchedModules { patterns } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(patterns.len(), 2);
    assert_eq!(
        patterns[0].suggestion.as_deref(),
        Some("attention.query_key_value")
    );
    assert_eq!(
        err.to_string(),
        "module pattern matched no weight: `attention.query_key_valu` (did you mean \
         `attention.query_key_value`?), `self_attn.q_proj`"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties

fn matrix_strategy() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..40, 1usize..9).prop_flat_map(|(rows, width)| {
        (
            Just(rows),
            Just(width),
            prop::collection::vec(-10.0f32..10.0, rows * width),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Sharding and merge order do not change the spectrum beyond rounding.
    #[test]
    fn merge_order_does_not_matter(
        (rows, width, data) in matrix_strategy(),
        cuts in prop::collection::vec(0.0f64..1.0, 0..4),
        seed in any::<u64>(),
    ) {
        let mut boundaries: Vec<usize> = cuts.iter().map(|c| (c * rows as f64) as usize).collect();
        boundaries.extend([0, rows]);
        boundaries.sort();
        let shards: Vec<GramAccumulator> = boundaries
            .windows(2)
            .map(|w| {
                let mut shard = GramAccumulator::new(width).with_parallelism(Parallelism::Sequential);
                shard.push_rows(&data[w[0] * width..w[1] * width], w[1] - w[0], width).unwrap();
                shard
            })
            .collect();
        let mut order: Vec<usize> = (0..shards.len()).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut forward = GramAccumulator::new(width);
        for shard in &shards {
            forward.merge(shard).unwrap();
        }
        let mut shuffled = GramAccumulator::new(width);
        for &index in &order {
            shuffled.merge(&shards[index]).unwrap();
        }
        prop_assert_eq!(forward.rows(), rows as u64);
        let (a, b) = (forward.finish(0).unwrap(), shuffled.finish(0).unwrap());
        let scale = a.raw.singular_values[0].max(1e-300);
        for (x, y) in a.raw.singular_values.iter().zip(&b.raw.singular_values) {
            // Gram entries agree to ~1e-16 relative; through the square root that is at most
            // ~1e-8 of σ₁ for the smallest values.
            prop_assert!((x - y).abs() <= 1e-7 * scale, "{} vs {}", x, y);
        }
    }

    /// k90 ≤ k99 ≤ d, stable rank in [1, d], effective rank in [1, d] for a non-zero matrix.
    #[test]
    fn metric_bounds((rows, width, data) in matrix_strategy()) {
        let mut acc = GramAccumulator::new(width);
        acc.push_rows(&data, rows, width).unwrap();
        let spectrum = acc.finish(0).unwrap();
        for metrics in [spectrum.metrics().raw, spectrum.metrics().centred] {
            prop_assert!(metrics.k90 <= metrics.k99 && metrics.k99 <= width, "{:?}", metrics);
            if metrics.spectral_norm > 0.0 {
                prop_assert!(metrics.k90 >= 1);
                let d = width as f64 + 1e-9;
                prop_assert!(metrics.stable_rank >= 1.0 - 1e-9 && metrics.stable_rank <= d);
                prop_assert!(metrics.effective_rank >= 1.0 - 1e-9 && metrics.effective_rank <= d);
                prop_assert!(metrics.participation_ratio >= 1.0 - 1e-9 && metrics.participation_ratio <= d);
            }
        }
    }

    /// 0 ≤ γ ≤ 1 for any two spectra of the same width and any k.
    #[test]
    fn overlap_is_a_fraction(
        (rows, width, data) in matrix_strategy(),
        other in prop::collection::vec(-10.0f32..10.0, 8 * 8),
        k in 1usize..9,
    ) {
        let k = k.min(width);
        let mut a = GramAccumulator::new(width);
        a.push_rows(&data, rows, width).unwrap();
        let mut b = GramAccumulator::new(width);
        b.push_rows(&other[..8 * width], 8, width).unwrap();
        let (a, b) = (a.finish(width).unwrap(), b.finish(width).unwrap());
        for centring in [Centring::Raw, Centring::Centred] {
            let result = overlaps(a.part(centring), b.part(centring), &OverlapK::Sizes(vec![k as u32])).unwrap();
            prop_assert!((0.0..=1.0).contains(&result[0].gamma), "{:?}", result);
        }
    }

    /// Metrics computed from singular values in any order are the same.
    #[test]
    fn metrics_ignore_input_order(mut sigma in prop::collection::vec(0.0f64..5.0, 1..20)) {
        let forward = SpectrumMetrics::from_singular_values(&sigma, 3);
        sigma.reverse();
        prop_assert_eq!(forward, SpectrumMetrics::from_singular_values(&sigma, 3));
    }
}
