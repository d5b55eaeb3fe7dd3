//! Singular values of every 2-D F32 tensor of a safetensors file, timed; run by
//! `scripts/bench/weight-spectra.sh` (release mode) beside torch on the same matrices. Not a
//! test.
//!
//! ```text
//! weight_spectra INPUT.safetensors OUTPUT.safetensors --threads N --method svd-f32|svd-f64|gram-f64
//!                --mode matrix|across
//! ```
//!
//! `matrix`: one matrix after another, each SVD using all N threads (faer's own
//! parallelism). `across`: N matrices at a time on a rayon `par_iter`, each SVD
//! single-threaded. Prints one JSON object (seconds per shape and in total) to stdout and
//! writes the singular values (F64, one tensor per input tensor) to OUTPUT for comparison.

use std::collections::BTreeMap;
use std::time::Instant;

use hubsweep::analysis::{Parallelism, SvdMethod, WeightMatrix, weight_spectrum};
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

struct Args {
    input: String,
    output: String,
    threads: usize,
    method: SvdMethod,
    across: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut threads, mut method, mut across) = (1, SvdMethod::SvdF64, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("`{arg}` needs a value"));
        match arg.as_str() {
            "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--method" => {
                method = match value()?.as_str() {
                    "svd-f32" => SvdMethod::SvdF32,
                    "svd-f64" => SvdMethod::SvdF64,
                    "gram-f64" => SvdMethod::GramF64,
                    other => return Err(format!("unknown method `{other}`")),
                }
            }
            "--mode" => {
                across = match value()?.as_str() {
                    "matrix" => false,
                    "across" => true,
                    other => return Err(format!("unknown mode `{other}`")),
                }
            }
            _ => positional.push(arg),
        }
    }
    let [input, output] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: weight_spectra INPUT OUTPUT [--threads N] [--method svd-f32|svd-f64|gram-f64] [--mode matrix|across]".to_string())?;
    Ok(Args {
        input,
        output,
        threads,
        method,
        across,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let bytes = fs_err::read(&args.input)?;
    let file = SafeTensors::deserialize(&bytes)?;
    let mut matrices: Vec<(String, usize, usize, Vec<f32>)> = Vec::new();
    for (name, view) in file.iter() {
        if view.dtype() != Dtype::F32 || view.shape().len() != 2 {
            continue;
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        matrices.push((name.to_string(), view.shape()[0], view.shape()[1], values));
    }
    // Largest first, so `across` does not end on one long straggler.
    matrices.sort_by_key(|(name, rows, cols, _)| (std::cmp::Reverse(rows * cols), name.clone()));

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()?;
    let run = |(name, rows, cols, values): &(String, usize, usize, Vec<f32>),
               parallelism: Parallelism| {
        let start = Instant::now();
        let matrix = WeightMatrix::new(values, *rows, *cols).expect("shape from header");
        let spectrum = weight_spectrum(matrix, args.method, parallelism).expect("svd converges");
        (
            name.clone(),
            format!("{rows}x{cols}"),
            start.elapsed().as_secs_f64(),
            spectrum.singular_values,
        )
    };
    let start = Instant::now();
    let results: Vec<(String, String, f64, Vec<f64>)> = pool.install(|| {
        if args.across {
            matrices
                .par_iter()
                .map(|matrix| run(matrix, Parallelism::Sequential))
                .collect()
        } else {
            matrices
                .iter()
                .map(|matrix| run(matrix, Parallelism::Rayon { threads: 0 }))
                .collect()
        }
    });
    let total = start.elapsed().as_secs_f64();

    let mut per_shape: BTreeMap<String, f64> = BTreeMap::new();
    for (_, shape, seconds, _) in &results {
        *per_shape.entry(shape.clone()).or_default() += seconds;
    }
    let encoded: Vec<(String, Vec<u8>)> = results
        .iter()
        .map(|(name, _, _, sigma)| {
            (
                name.clone(),
                sigma.iter().flat_map(|s| s.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = encoded
        .iter()
        .zip(&results)
        .map(|((name, data), (_, _, _, sigma))| {
            TensorView::new(Dtype::F64, vec![sigma.len()], data).map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()?;
    fs_err::write(&args.output, safetensors::serialize(views, None)?)?;

    let report = serde_json::json!({
        "method": match args.method {
            SvdMethod::SvdF32 => "svd-f32",
            SvdMethod::SvdF64 => "svd-f64",
            SvdMethod::GramF64 => "gram-f64",
        },
        "mode": if args.across { "across" } else { "matrix" },
        "threads": args.threads,
        "matrices": results.len(),
        "seconds": total,
        "seconds_per_shape": per_shape,
    });
    #[allow(clippy::print_stdout)] // the example's output is its report
    {
        println!("{report}");
    }
    Ok(())
}
