use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::analysis::{Eigenbasis, WeightMatrix};

/// The low-rank route and a dense f64 SVD agree to rounding (`~1e-15 · σ₁`); 1e-9 relative to
/// `σ₁` is the issue's bar and leaves room for the condition of the small singular values.
const TOL: f64 = 1e-9;

fn random(rng: &mut StdRng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

fn random_update(seed: u64, d_out: usize, d_in: usize, rank: usize, scale: f64) -> LowRankUpdate {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = random(&mut rng, d_out * rank);
    let a = random(&mut rng, rank * d_in);
    LowRankUpdate::new(b, a, d_out, d_in, rank, scale).expect("valid update")
}

fn dense_svd(values: &[f64], rows: usize, cols: usize, keep: usize) -> TruncatedSvd {
    let weight = WeightMatrix::new(values, rows, cols).expect("shape");
    TruncatedSvd::of_weight(weight, keep, Parallelism::Sequential).expect("svd")
}

fn assert_close(what: &str, ours: &[f64], reference: &[f64], scale: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (index, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= TOL * scale,
            "{what}[{index}]: {a} vs {b} (tolerance {})",
            TOL * scale
        );
    }
}

#[test]
fn low_rank_spectrum_and_vectors_match_a_dense_svd() {
    // Tall, wide, and a rank above one of the dimensions.
    for (seed, d_out, d_in, rank, scale) in [
        (1, 40, 30, 6, 2.5),
        (2, 12, 50, 4, 0.125),
        (3, 5, 7, 9, 1.0),
        (4, 33, 33, 1, -3.0),
    ] {
        let update = random_update(seed, d_out, d_in, rank, scale);
        let low = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("low rank");
        let kept = rank.min(d_out).min(d_in);
        let dense = dense_svd(&update.dense(), d_out, d_in, kept);
        let sigma_1 = dense.singular_values[0];
        assert_eq!(low.kept(), kept);
        assert_close("σ", &low.singular_values, &dense.singular_values, sigma_1);
        // Distinct singular values: the vectors are unique up to the pair sign both fix.
        assert_close("U", low.left.values(), dense.left.values(), 1.0);
        assert_close("V", low.right.values(), dense.right.values(), 1.0);
        let (ours, reference) = (low.metrics(8), dense.metrics(8));
        assert!((ours.stable_rank - reference.stable_rank).abs() <= TOL * reference.stable_rank);
        assert!(
            (ours.effective_rank - reference.effective_rank).abs()
                <= TOL * reference.effective_rank
        );
        assert_eq!((ours.k90, ours.k99), (reference.k90, reference.k99));
        assert_close(
            "top",
            &ours.top_eigenvalues,
            &reference.top_eigenvalues,
            sigma_1 * sigma_1,
        );
        assert_eq!(low.numerical_rank(), kept);
    }
}

#[test]
fn low_rank_svd_reconstructs_the_update() {
    let update = random_update(7, 20, 16, 3, 4.0);
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let dense = update.dense();
    let mut rebuilt = vec![0.0; 20 * 16];
    for pair in 0..svd.kept() {
        let (u, v) = (svd.left.column(pair), svd.right.column(pair));
        for row in 0..20 {
            for col in 0..16 {
                rebuilt[row * 16 + col] += svd.singular_values[pair] * u[row] * v[col];
            }
        }
    }
    let largest = dense.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert_close("UΣVᵀ", &rebuilt, &dense, largest);
}

/// A base with distinct singular values, and its full SVD.
fn planted_base(d_out: usize, d_in: usize) -> (Vec<f64>, TruncatedSvd) {
    let mut rng = StdRng::seed_from_u64(11);
    let weight = random(&mut rng, d_out * d_in);
    let svd = dense_svd(&weight, d_out, d_in, d_out.min(d_in));
    (weight, svd)
}

/// An update `B·A` with `B = U_W[:, cols] · diag(c)` and `A = V_W[:, cols]ᵀ`.
fn update_from_base(base: &TruncatedSvd, columns: std::ops::Range<usize>) -> LowRankUpdate {
    let rank = columns.len();
    let (d_out, d_in) = (base.rows, base.cols);
    let mut b = vec![0.0; d_out * rank];
    let mut a = vec![0.0; rank * d_in];
    for (j, column) in columns.enumerate() {
        let strength = 3.0 - j as f64 * 0.5;
        for row in 0..d_out {
            b[row * rank + j] = base.left.column(column)[row] * strength;
        }
        a[j * d_in..(j + 1) * d_in].copy_from_slice(base.right.column(column));
    }
    LowRankUpdate::new(b, a, d_out, d_in, rank, 1.0).expect("valid")
}

#[test]
fn an_update_inside_the_base_top_subspace_gives_p_one_and_bonus_d_over_k() {
    let (d_out, d_in, k) = (24, 16, 3);
    let (_, base) = planted_base(d_out, d_in);
    let update = update_from_base(&base, 0..k);
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let geometry = update_geometry(&base, &svd, &[SubspaceChoice::Fixed(k)]).expect("geometry");
    let at = &geometry.alignments[0];
    assert_eq!(at.k, k);
    assert!(
        (at.p_left - 1.0).abs() < TOL && (at.p_right - 1.0).abs() < TOL,
        "{at:?}"
    );
    assert!((at.bonus_left - d_out as f64 / k as f64).abs() < TOL * 8.0);
    assert!((at.bonus_right - d_in as f64 / k as f64).abs() < TOL * 8.0);
    assert!((at.baseline_left - 3.0 / 24.0).abs() < 1e-15);
    assert!(
        at.cosines_left
            .iter()
            .chain(&at.cosines_right)
            .all(|c| (c - 1.0).abs() < TOL)
    );
}

#[test]
fn an_update_orthogonal_to_the_base_top_subspace_gives_p_zero() {
    let (d_out, d_in, k) = (24, 16, 3);
    let (_, base) = planted_base(d_out, d_in);
    let update = update_from_base(&base, k..2 * k);
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let geometry = update_geometry(&base, &svd, &[SubspaceChoice::Fixed(k)]).expect("geometry");
    let at = &geometry.alignments[0];
    assert!(at.p_left.abs() < TOL && at.p_right.abs() < TOL, "{at:?}");
    assert!(
        at.cosines_left
            .iter()
            .chain(&at.cosines_right)
            .all(|c| c.abs() < 1e-7)
    );
}

#[test]
fn random_updates_give_p_near_k_over_d() {
    // E[p] = k/d for a uniformly random subspace; the mean of 20 has a spread of about 6%.
    let (d_out, d_in, k) = (200, 150, 5);
    let (_, base) = planted_base(d_out, d_in);
    let trials = 20;
    let (mut left, mut right) = (0.0, 0.0);
    for seed in 0..trials {
        let update = random_update(100 + seed, d_out, d_in, k, 1.0);
        let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
        let geometry = update_geometry(&base, &svd, &[SubspaceChoice::Fixed(k)]).expect("ok");
        left += geometry.alignments[0].p_left / trials as f64;
        right += geometry.alignments[0].p_right / trials as f64;
    }
    let (expected_left, expected_right) = (k as f64 / d_out as f64, k as f64 / d_in as f64);
    assert!(
        (left / expected_left - 1.0).abs() < 0.25,
        "{left} vs {expected_left}"
    );
    assert!(
        (right / expected_right - 1.0).abs() < 0.25,
        "{right} vs {expected_right}"
    );
}

#[test]
fn geometry_from_the_low_rank_route_matches_the_dense_route() {
    let (d_out, d_in) = (30, 22);
    let (_, base) = planted_base(d_out, d_in);
    let update = random_update(5, d_out, d_in, 8, 0.5);
    let low = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let dense = dense_svd(&update.dense(), d_out, d_in, 8);
    let choices = [
        SubspaceChoice::Fixed(2),
        SubspaceChoice::Fixed(5),
        SubspaceChoice::SRANK,
    ];
    let ours = update_geometry(&base, &low, &choices).expect("low");
    let reference = update_geometry(&base, &dense, &choices).expect("dense");
    assert_eq!(ours.alignments.len(), 3);
    for (a, b) in ours.alignments.iter().zip(&reference.alignments) {
        assert_eq!((a.k, a.choice), (b.k, b.choice));
        for (x, y) in [
            (a.p_left, b.p_left),
            (a.p_right, b.p_right),
            (a.bonus_left, b.bonus_left),
        ] {
            assert!((x - y).abs() <= TOL * y.abs().max(1.0), "{x} vs {y}");
        }
        assert_close("cos", &a.cosines_left, &b.cosines_left, 1.0);
        // Σ cos² = ‖cross‖²_F = k·p.
        let sum: f64 = a.cosines_right.iter().map(|c| c * c).sum();
        assert!((sum - a.k as f64 * a.p_right).abs() < TOL);
    }
}

#[test]
fn srank_rounds_the_stable_rank_and_sizes_past_the_rank_are_skipped() {
    // ΔW = diag(3, 2, 1, 0.5) in a 6 × 5 matrix: stable rank 14.25 / 9 ≈ 1.58 → 2.
    let (d_out, d_in, rank) = (6, 5, 4);
    let mut b = vec![0.0; d_out * rank];
    let mut a = vec![0.0; rank * d_in];
    for (j, sigma) in [3.0, 2.0, 1.0, 0.5].into_iter().enumerate() {
        b[j * rank + j] = sigma;
        a[j * d_in + j] = 1.0;
    }
    let update = LowRankUpdate::new(b, a, d_out, d_in, rank, 1.0).expect("valid");
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let (_, base) = planted_base(d_out, d_in);
    let choices = [
        SubspaceChoice::SRANK,
        SubspaceChoice::Fixed(4),
        SubspaceChoice::Fixed(5),
    ];
    let geometry = update_geometry(&base, &svd, &choices).expect("geometry");
    assert!((geometry.stable_rank_update - 14.25 / 9.0).abs() < 1e-12);
    assert_eq!(geometry.max_k, 4);
    let ks: Vec<usize> = geometry.alignments.iter().map(|a| a.k).collect();
    assert_eq!(ks, [2, 4]);
    assert_eq!(geometry.skipped, [SubspaceChoice::Fixed(5)]);
    assert_eq!(SubspaceChoice::SRANK.to_string(), "srank");
    assert_eq!(
        serde_json::to_string(&choices).expect("json"),
        r#"["srank",4,5]"#
    );
}

#[test]
fn a_zero_update_skips_every_size() {
    let update = LowRankUpdate::new(vec![0.0; 8], vec![0.5; 12], 4, 6, 2, 2.0).expect("valid");
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    let (_, base) = planted_base(4, 6);
    let choices = [SubspaceChoice::SRANK, SubspaceChoice::Fixed(1)];
    let geometry = update_geometry(&base, &svd, &choices).expect("geometry");
    assert_eq!(geometry.max_k, 0);
    assert!(geometry.alignments.is_empty());
    assert_eq!(geometry.skipped, choices);
    assert_eq!(geometry.stable_rank_update, 0.0);
}

#[test]
fn geometry_refuses_bad_sizes_and_shapes() {
    let (_, base) = planted_base(10, 8);
    let small_base = dense_svd(&vec![1.0; 80], 10, 8, 1);
    let update = random_update(9, 10, 8, 4, 1.0);
    let svd = TruncatedSvd::of_low_rank(&update, Parallelism::Sequential).expect("svd");
    assert!(matches!(
        update_geometry(&base, &svd, &[SubspaceChoice::Fixed(0)]),
        Err(AnalysisError::SubspaceSize { k: 0, .. })
    ));
    assert!(matches!(
        update_geometry(&small_base, &svd, &[SubspaceChoice::Fixed(3)]),
        Err(AnalysisError::SubspaceSize { k: 3, available: 1 })
    ));
    let other = random_update(9, 8, 10, 4, 1.0);
    let other = TruncatedSvd::of_low_rank(&other, Parallelism::Sequential).expect("svd");
    assert!(matches!(
        update_geometry(&base, &other, &[SubspaceChoice::Fixed(1)]),
        Err(AnalysisError::WeightShapeMismatch { .. })
    ));
}

#[test]
fn factors_are_checked() {
    assert!(matches!(
        LowRankUpdate::new(vec![0.0; 5], vec![0.0; 6], 3, 3, 2, 1.0),
        Err(AnalysisError::ShapeMismatch { what: "lora_B", .. })
    ));
    let mut a = vec![0.0; 6];
    a[4] = f64::NAN;
    assert!(matches!(
        LowRankUpdate::new(vec![0.0; 6], a, 3, 3, 2, 1.0),
        Err(AnalysisError::NonFinite {
            what: "lora_A",
            row: 1,
            column: 1,
            ..
        })
    ));
    assert!(matches!(
        LowRankUpdate::new(vec![], vec![], 3, 3, 0, 1.0),
        Err(AnalysisError::Empty { what: "rank" })
    ));
}

#[test]
fn a_fused_qkv_update_splits_like_its_dense_matrix() {
    // GPT-NeoX: 2 heads of dimension 3, rows grouped per head.
    let (heads, head_dim, d_in, rank) = (2, 3, 5, 2);
    let update = random_update(21, 3 * heads * head_dim, d_in, rank, 0.75);
    let dense = split_fused_qkv(&update.dense(), heads, head_dim, d_in).expect("split");
    let parts = update.split_fused_qkv(heads, head_dim).expect("split");
    for ((_, expected), part) in dense.parts().into_iter().zip(&parts) {
        assert_eq!((part.d_out(), part.d_in()), (heads * head_dim, d_in));
        assert_close("part", &part.dense(), expected, 1e-6);
    }
}

/// Row-major `rows × cols` `W = U diag(values) Vᵀ` with seeded random orthonormal `U`, `V`
/// (thin QR of uniform matrices), and those `U`, `V` as bases.
fn with_singular_values(
    seed: u64,
    rows: usize,
    cols: usize,
    values: &[f64],
) -> (Vec<f64>, Eigenbasis, Eigenbasis) {
    let size = values.len();
    assert_eq!(size, rows.min(cols));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut orthonormal = |dim: usize| {
        let matrix = Mat::from_fn(dim, size, |_, _| rng.random::<f64>() * 2.0 - 1.0);
        let (q, _) = factor::thin_qr(matrix, Parallelism::Sequential);
        q
    };
    let (u, v) = (orthonormal(rows), orthonormal(cols));
    let mut weight = vec![0.0; rows * cols];
    for (pair, &sigma) in values.iter().enumerate() {
        for row in 0..rows {
            let scaled = sigma * u[(row, pair)];
            for col in 0..cols {
                weight[row * cols + col] += scaled * v[(col, pair)];
            }
        }
    }
    let basis = |m: &Mat<f64>, dim: usize| {
        let values = (0..size).flat_map(|c| m.col(c).iter().copied().collect::<Vec<_>>());
        Eigenbasis::from_columns(dim, values.collect()).expect("basis")
    };
    (weight, basis(&u, rows), basis(&v, cols))
}

/// The largest entry of `P_a − P_b` for the projectors onto the first `k` columns of two
/// bases: 0 for the same subspace, whatever basis of it each holds.
fn projector_distance(a: &Eigenbasis, b: &Eigenbasis, k: usize) -> f64 {
    let (a, b) = (a.as_mat().subcols(0, k), b.as_mat().subcols(0, k));
    let (pa, pb) = (a * a.transpose(), b * b.transpose());
    (0..pa.nrows())
        .flat_map(|row| (0..pa.ncols()).map(move |col| (row, col)))
        .map(|(row, col)| (pa[(row, col)] - pb[(row, col)]).abs())
        .fold(0.0, f64::max)
}

/// The Gram route (taken, not fallen back from) against the dense SVD: every singular value
/// within `TOL · σ₁`, the top-`k` subspaces of both sides for each `k` within `TOL`.
fn assert_gram_route_matches_dense(
    weight: &[f64],
    rows: usize,
    cols: usize,
    keep: usize,
    ks: &[usize],
) -> (TruncatedSvd, TruncatedSvd) {
    let matrix = WeightMatrix::new(weight, rows, cols).expect("shape");
    let seq = Parallelism::Sequential;
    let as_mat = Mat::from_fn(rows, cols, |row, col| weight[row * cols + col]);
    assert!(
        gram_route::gram_svd(as_mat.as_ref(), keep, seq)
            .expect("gram")
            .is_some(),
        "{rows}×{cols}: the Gram route was not taken"
    );
    let ours = TruncatedSvd::of_weight(matrix, keep, seq).expect("gram route");
    let dense = TruncatedSvd::of_weight_dense(matrix, keep, seq).expect("dense");
    assert_eq!((ours.rows, ours.cols, ours.kept()), (rows, cols, keep));
    let sigma_1 = dense.singular_values[0];
    assert_close("σ", &ours.singular_values, &dense.singular_values, sigma_1);
    for &k in ks {
        for (side, a, b) in [
            ("U", &ours.left, &dense.left),
            ("V", &ours.right, &dense.right),
        ] {
            let distance = projector_distance(a, b, k);
            assert!(distance <= TOL, "{rows}×{cols} {side} k={k}: {distance:e}");
        }
    }
    (ours, dense)
}

#[test]
fn the_gram_route_matches_the_dense_svd_on_tall_wide_and_square_weights() {
    let mut rng = StdRng::seed_from_u64(31);
    for (rows, cols) in [(300, 120), (90, 250), (64, 64)] {
        let weight = random(&mut rng, rows * cols);
        let (ours, dense) = assert_gram_route_matches_dense(&weight, rows, cols, 30, &[1, 5, 30]);
        // Distinct singular values: each vector is unique up to the pair sign both fix.
        assert_close("U", ours.left.values(), dense.left.values(), 1.0);
        assert_close("V", ours.right.values(), dense.right.values(), 1.0);
    }
}

#[test]
fn the_gram_route_finds_the_subspaces_of_repeated_and_clustered_singular_values() {
    // Top-k subspaces are defined at the gaps (k = 3, 6, 10) even where the vectors inside
    // a cluster are not: three equal values, three within 1e-7 of each other, four equal.
    let mut values = vec![
        5.0,
        5.0,
        5.0,
        3.0 + 1e-7,
        3.0,
        3.0 - 1e-7,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    values.extend((0..30).map(|i| 0.5 - i as f64 * 0.01));
    for (rows, cols) in [(120, 40), (40, 90)] {
        let (weight, u, v) = with_singular_values(41, rows, cols, &values);
        let (ours, _) = assert_gram_route_matches_dense(&weight, rows, cols, 12, &[3, 6, 10]);
        assert_close("σ vs planted", &ours.singular_values, &values, values[0]);
        for k in [3, 6, 10] {
            for (side, a, b) in [("U", &ours.left, &u), ("V", &ours.right, &v)] {
                let distance = projector_distance(a, b, k);
                assert!(distance <= TOL, "planted {side} k={k}: {distance:e}");
            }
        }
    }
}

#[test]
fn ill_conditioned_weights_take_the_dense_svd_and_the_limit_keeps_values_exact() {
    let seq = Parallelism::Sequential;
    let geometric = |count: usize, condition: f64| -> Vec<f64> {
        let ratio = condition.powf(-1.0 / (count - 1) as f64);
        (0..count).map(|i| 2.0 * ratio.powi(i as i32)).collect()
    };
    // Just inside the limit: the Gram route, still within TOL · σ₁ of the planted values.
    let near_limit = geometric(60, gram_route::MAX_CONDITION * 0.9);
    let (weight, _, _) = with_singular_values(51, 150, 60, &near_limit);
    let (ours, _) = assert_gram_route_matches_dense(&weight, 150, 60, 10, &[5, 10]);
    assert_close(
        "σ vs planted",
        &ours.singular_values,
        &near_limit,
        near_limit[0],
    );
    // Past it, and rank-deficient (a formed low-rank update): the dense SVD, bit for bit.
    let far = geometric(60, 1e7);
    let (ill, _, _) = with_singular_values(52, 150, 60, &far);
    let low_rank = random_update(53, 150, 60, 7, 1.0).dense();
    for weight in [&ill, &low_rank] {
        let as_mat = Mat::from_fn(150, 60, |row, col| weight[row * 60 + col]);
        let gram = gram_route::gram_svd(as_mat.as_ref(), 10, seq).expect("gram");
        assert!(gram.is_none(), "the Gram route was taken");
        let matrix = WeightMatrix::new(weight, 150, 60).expect("shape");
        assert_eq!(
            TruncatedSvd::of_weight(matrix, 10, seq).expect("svd"),
            TruncatedSvd::of_weight_dense(matrix, 10, seq).expect("dense")
        );
    }
    // A zero weight too: every singular value 0.
    let zeros = vec![0.0; 12];
    let svd = TruncatedSvd::of_weight(WeightMatrix::new(&zeros, 3, 4).expect("shape"), 2, seq);
    assert_eq!(svd.expect("svd").singular_values, [0.0; 3]);
}
