//! Throughput of the activation-spectrum path on this machine: pushing f16 activation chunks
//! into a `GramAccumulator` (tokens per second) and finishing the spectrum (eigen
//! decompositions of the raw and centred Gram matrices). Not a test; figures for the
//! planner's time estimates.
//!
//! ```text
//! gram_throughput [--threads N] [--tokens T] [--width D]...
//! ```

use std::time::Instant;

use half::f16;
use hubsweep::analysis::{GramAccumulator, Parallelism};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut threads, mut tokens, mut widths) = (1usize, 65_536usize, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("`{arg}` needs a value"))?;
        match arg.as_str() {
            "--threads" => threads = value.parse()?,
            "--tokens" => tokens = value.parse()?,
            "--width" => widths.push(value.parse::<usize>()?),
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if widths.is_empty() {
        widths = vec![576, 2048];
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let chunk_tokens = 4096;
    for width in widths {
        let mut rng = StdRng::seed_from_u64(0);
        let chunk: Vec<f16> = (0..chunk_tokens * width)
            .map(|_| f16::from_f32(rng.random::<f32>() * 4.0 - 2.0))
            .collect();
        let mut accumulator =
            GramAccumulator::new(width).with_parallelism(Parallelism::Rayon { threads: 0 });
        let (push_seconds, finish_values, finish_vectors) = pool.install(|| {
            let start = Instant::now();
            let mut pushed = 0;
            while pushed < tokens {
                accumulator
                    .push_rows(&chunk, chunk_tokens, width)
                    .expect("valid chunk");
                pushed += chunk_tokens;
            }
            let push_seconds = start.elapsed().as_secs_f64();
            let start = Instant::now();
            accumulator.finish_with(64, 0).expect("finishes");
            let finish_values = start.elapsed().as_secs_f64();
            let start = Instant::now();
            accumulator.finish_with(64, width).expect("finishes");
            (push_seconds, finish_values, start.elapsed().as_secs_f64())
        });
        let pushed = accumulator.rows() as f64;
        let report = serde_json::json!({
            "threads": threads,
            "width": width,
            "tokens": accumulator.rows(),
            "push_seconds": push_seconds,
            "tokens_per_second": pushed / push_seconds,
            "gflops": pushed * (width * width) as f64 / push_seconds / 1e9,
            "finish_seconds_values_only": finish_values,
            "finish_seconds_all_eigenvectors": finish_vectors,
        });
        #[allow(clippy::print_stdout)] // the example's output is its report
        {
            println!("{report}");
        }
    }
    Ok(())
}
