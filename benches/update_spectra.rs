//! The low-rank route for an update's SVD against a dense SVD of the formed `ΔW`, on one
//! Pythia-410M-shaped `query_key_value` matrix (3072 × 1024, random factors), and the cost of
//! the base's SVD with vectors that update geometry needs once per base module (the Gram
//! route `of_weight` takes for such a weight, and the dense SVD). Not a test;
//! prints one JSON line per measurement (median seconds of RUNS, single-threaded).
//!
//! Usage: cargo bench --bench update_spectra -- [RUNS]
#![allow(clippy::print_stdout)]

use std::time::Instant;

use hubsweep::analysis::{
    LowRankUpdate, Parallelism, SubspaceChoice, TruncatedSvd, WeightMatrix, update_geometry,
};

const D_OUT: usize = 3072;
const D_IN: usize = 1024;

/// Deterministic values in [-1, 1) (xorshift), so runs are comparable.
fn values(seed: u64, len: usize) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

fn median_seconds(runs: usize, mut work: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let seq = Parallelism::Sequential;
    let base_values = values(1, D_OUT * D_IN);
    let base = WeightMatrix::new(&base_values, D_OUT, D_IN).expect("shape");
    let mut base_svd = None;
    let seconds = median_seconds(runs, || {
        base_svd = Some(TruncatedSvd::of_weight(base, 128, seq).expect("base svd"));
    });
    let dense_seconds = median_seconds(runs, || {
        TruncatedSvd::of_weight_dense(base, 128, seq).expect("dense base svd");
    });
    println!(
        r#"{{"what":"base SVD with 128 vector pairs, f64","shape":[{D_OUT},{D_IN}],"gram_route_seconds":{seconds:.4},"dense_seconds":{dense_seconds:.4},"speedup":{:.1}}}"#,
        dense_seconds / seconds
    );
    let base_svd = base_svd.expect("ran");
    for rank in [16, 128] {
        let update = LowRankUpdate::new(
            values(2 + rank as u64, D_OUT * rank),
            values(3 + rank as u64, rank * D_IN),
            D_OUT,
            D_IN,
            rank,
            2.0,
        )
        .expect("update");
        let mut low = None;
        let low_seconds = median_seconds(runs, || {
            low = Some(TruncatedSvd::of_low_rank(&update, seq).expect("low rank"));
        });
        let dense_values = update.dense();
        let dense = WeightMatrix::new(&dense_values, D_OUT, D_IN).expect("shape");
        let dense_seconds = median_seconds(runs, || {
            TruncatedSvd::of_weight_dense(dense, rank, seq).expect("dense");
        });
        let low = low.expect("ran");
        let choices = [5, 10, 20].map(SubspaceChoice::Fixed);
        let geometry_seconds = median_seconds(runs, || {
            update_geometry(
                &base_svd,
                &low,
                &[choices[0], choices[1], choices[2], SubspaceChoice::SRANK],
            )
            .expect("geometry");
        });
        println!(
            r#"{{"what":"update SVD","rank":{rank},"low_rank_seconds":{low_seconds:.5},"dense_seconds":{dense_seconds:.4},"speedup":{:.1},"geometry_seconds":{geometry_seconds:.5}}}"#,
            dense_seconds / low_seconds
        );
    }
}
