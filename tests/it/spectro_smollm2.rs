//! A real model through every analysis: SmolLM2-135M (the GGUF from `scripts/test.d/20-models.sh`,
//! converted and imported into the embedded hub) at two revisions — `main` and `ft`, a copy
//! with known rank-4 updates added to some projections — swept with activation spectra,
//! overlaps of `ft`'s subspaces with `main`'s, and weight-delta spectra; the deltas are checked
//! against an SVD of the two checkpoints' difference and against the updates themselves, the
//! overlaps against the stored eigenvectors, and `report` draws the run.

use std::collections::BTreeMap;
use std::path::Path;

use hubsweep::analysis::Spectrum;
use hubsweep::exec::weights::read_node_file;
use hubsweep::hub::{Repo, RepoId};
use hubsweep::ledger::LedgerState;
use hubsweep::ledger::tables::WeightNodeMetrics;

use crate::common::{TestContext, peers_required};
use crate::run::{check_ledger, dataset, open_store, run_json, runtime, segment_records, stderr};
use crate::spectro::write_spec;

const MODEL: &str = "hubsweep/smollm2-135m";

/// Singular values of the update added to each perturbed matrix (orthonormal factors).
/// Large enough for `ft`'s activations to part visibly from `main`'s in the report.
const UPDATE: [f64; 4] = [8.0, 4.0, 2.0, 1.0];

/// Layers swept (every third of 30), hooks and subspace sizes: small enough for a minute.
const SPEC: &str = r#"
name: smol-spectro
output: local://alice/smol-spectro
models:
  - family: llama
    repo: local://hubsweep/smollm2-135m
    revision: [main, ft]
data:
  texts:
    - "The quick brown fox jumps over the lazy dog."
    - "Interpretability asks what a network computes, and how."
    - "Checkpoints along training show representations forming."
    - "A ledger on the Hub lets anyone check the results."
  seq_len: 32
capture:
  hooks: [hook_resid_post, hook_mlp_out]
  layers: "0..30:3"
analyses:
  - spectrum: {top_k: 16}
  - overlap: {between: revision, base: main, k: [4, 16]}
weights:
  modules: [self_attn.q_proj, mlp.down_proj, self_attn.k_proj]
  delta_from: main
limits:
  memory: 1GiB
  artifact_bytes: 64MiB
compute:
  device: cpu
  batch_size: 8
"#;

/// Whether the `ft` revision changes this checkpoint key (`k_proj` stays: its delta is 0).
fn is_perturbed(key: &str) -> bool {
    key.starts_with("model.layers.")
        && (key.ends_with(".self_attn.q_proj.weight") || key.ends_with(".mlp.down_proj.weight"))
}

/// `count` orthonormal vectors of length `n`, deterministic in `seed` (Gram–Schmidt on a
/// cheap generator's output).
fn orthonormal(n: usize, count: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let mut basis: Vec<Vec<f64>> = Vec::new();
    while basis.len() < count {
        let mut v: Vec<f64> = (0..n).map(|_| next()).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= dot * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        basis.push(v);
    }
    basis
}

/// A checked matrix: its F32 values in `main` and in `ft`, rows and columns.
struct CheckedMatrix {
    before: Vec<f32>,
    after: Vec<f32>,
    rows: usize,
    cols: usize,
}

/// Whether the test compares this key's delta (the swept modules).
fn is_checked(key: &str) -> bool {
    is_perturbed(key)
        || (key.starts_with("model.layers.") && key.ends_with(".self_attn.k_proj.weight"))
}

fn f32_values(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes `ft/model.safetensors`: `main`'s weights with `Σ UPDATE[r] u_r v_rᵀ` added to each
/// perturbed matrix (rounded to F32 like the rest), and copies the other files. Returns both
/// revisions' values of the swept matrices, so that the checkpoints need not stay on disk.
fn write_fine_tuned(main: &Path, ft: &Path) -> BTreeMap<String, CheckedMatrix> {
    std::fs::create_dir_all(ft).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(main.join(file), ft.join(file)).unwrap();
    }
    let bytes = std::fs::read(main.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked: BTreeMap<String, CheckedMatrix> = BTreeMap::new();
    for (seed, (name, view)) in tensors.iter().enumerate() {
        if !is_checked(name) {
            continue;
        }
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let (rows, cols) = (view.shape()[0], view.shape()[1]);
        let before = f32_values(view.data());
        let after = if is_perturbed(name) {
            let left = orthonormal(rows, UPDATE.len(), 2 * seed as u64);
            let right = orthonormal(cols, UPDATE.len(), 2 * seed as u64 + 1);
            before
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let (r, c) = (i / cols, i % cols);
                    let update: f64 = (0..UPDATE.len())
                        .map(|k| UPDATE[k] * left[k][r] * right[k][c])
                        .sum();
                    (f64::from(*w) + update) as f32
                })
                .collect()
        } else {
            before.clone()
        };
        let matrix = CheckedMatrix {
            before,
            after,
            rows,
            cols,
        };
        checked.insert(name.to_owned(), matrix);
    }
    assert_eq!(checked.len(), 90, "30 layers × (q_proj, down_proj, k_proj)");
    let changed: BTreeMap<&str, Vec<u8>> = checked
        .iter()
        .filter(|(name, _)| is_perturbed(name))
        .map(|(name, m)| {
            let bytes = m.after.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_str(), bytes)
        })
        .collect();
    assert_eq!(changed.len(), 60, "30 layers × (q_proj, down_proj)");
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, view)| {
            let data = changed.get(name).map_or(view.data(), Vec::as_slice);
            let view =
                safetensors::tensor::TensorView::new(view.dtype(), view.shape().to_vec(), data)
                    .unwrap();
            (name, view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &ft.join("model.safetensors")).unwrap();
    checked
}

fn svd_values(values: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let matrix = faer::Mat::from_fn(rows, cols, |i, j| values[i * cols + j]);
    let mut sigma: Vec<f64> = matrix.singular_values().unwrap();
    sigma.sort_by(|a, b| b.total_cmp(a));
    sigma
}

/// Converts the GGUF, imports it as `main` with `hub import` (the front door) and the
/// perturbed copy as branch `ft`; returns the swept matrices of both. The folders are removed
/// as soon as they are uploaded: with the store and the run's cache, each 540 MB checkpoint
/// would otherwise be on disk three times.
fn import_two_revisions(ctx: &TestContext, gguf: &Path) -> BTreeMap<String, CheckedMatrix> {
    let main = ctx.child("smollm2-main");
    hubsweep::model::gguf::convert_to_dir(gguf, &main).unwrap();
    let import = crate::run::hubsweep(ctx)
        .args(["hub", "import", "--local", "--repo", MODEL])
        .arg(&main)
        .output()
        .unwrap();
    assert!(import.status.success(), "{}", stderr(&import));
    let ft = ctx.child("smollm2-ft");
    let checked = write_fine_tuned(&main, &ft);
    std::fs::remove_dir_all(&main).unwrap();
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let (ns, name) = MODEL.split_once('/').unwrap();
        let repo = Repo::model(RepoId::new(ns, name).unwrap());
        client.create_branch(&repo, "ft", "main").await.unwrap();
        client
            .upload_folder(&repo, "ft", &ft, "rank-4 updates of q_proj and down_proj")
            .await
            .unwrap();
        server.shutdown().await;
    });
    std::fs::remove_dir_all(&ft).unwrap();
    checked
}

#[test]
fn a_smollm2_sweep_with_every_analysis_runs_end_to_end_and_report_draws_it() {
    let Some(gguf) = std::env::var_os("HUBSWEEP_SMOLLM2_GGUF") else {
        assert!(
            !peers_required(),
            "HUBSWEEP_SMOLLM2_GGUF is not set: source scripts/test.d/20-models.sh"
        );
        eprintln!("skip: HUBSWEEP_SMOLLM2_GGUF not set");
        return;
    };
    let ctx = TestContext::new();
    let checked = import_two_revisions(&ctx, Path::new(&gguf));
    let spec = write_spec(&ctx, "smol-spectro.yaml", SPEC);
    let (output, summary) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("alice/smol-spectro");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        let count = |kind: &str| records.iter().filter(|r| r.kind == kind).count();
        // 2 revisions × 2 hooks × 10 layers; `ft` against `main` at each (hook, layer); one
        // delta node per module pattern, for `ft` only.
        assert_eq!(count("spectrum"), 40, "{summary}");
        assert_eq!(count("overlap"), 20, "{summary}");
        assert_eq!(count("weight_spectrum"), 3, "{summary}");

        // Weight deltas: against an SVD of the difference of the two checkpoints' F32 values
        // (formed in f64, exact), and against the known update.
        let mut matrices = 0;
        for record in records.iter().filter(|r| r.kind == "weight_spectrum") {
            let metrics: WeightNodeMetrics =
                serde_json::from_value(record.metrics.clone().unwrap()).unwrap();
            assert_eq!(metrics.delta_from.as_deref(), Some("main"));
            let bytes = client
                .download_bytes(&repo, "main", &record.files[0].path)
                .await
                .unwrap();
            let stored = read_node_file(&bytes).unwrap();
            for matrix in &metrics.matrices {
                let CheckedMatrix {
                    before,
                    after,
                    rows,
                    cols,
                } = &checked[&matrix.key];
                let (rows, cols) = (*rows, *cols);
                let delta: Vec<f64> = after
                    .iter()
                    .zip(before)
                    .map(|(a, b)| f64::from(*a) - f64::from(*b))
                    .collect();
                let expected = svd_values(&delta, rows, cols);
                let got = &stored[&matrix.tensor];
                assert_eq!(got.len(), rows.min(cols), "{}", matrix.key);
                if !is_perturbed(&matrix.key) {
                    assert!(got.iter().all(|s| *s == 0.0), "{} changed", matrix.key);
                    assert_eq!(matrix.metrics.stable_rank, 0.0);
                    matrices += 1;
                    continue;
                }
                // Both sides are backward-stable f64 SVDs of the same matrix: a few ulps of σ₁
                // apart; 1e-9 of σ₁ is the issue's bound.
                for (g, e) in got.iter().zip(&expected) {
                    assert!(
                        (g - e).abs() <= 1e-9 * expected[0],
                        "{}: {g} vs {e}",
                        matrix.key
                    );
                }
                // The update's singular values, up to the F32 rounding of `W + update`
                // (|error| ≤ 2⁻²⁴ |W| per entry: below 1e-5 in norm for these weights).
                for (g, u) in got.iter().zip(UPDATE) {
                    assert!((g - u).abs() < 1e-4, "{}: σ {g} vs update {u}", matrix.key);
                }
                assert!(got[UPDATE.len()] < 1e-4, "{}: rank above 4", matrix.key);
                let energy: f64 = UPDATE.iter().map(|u| u * u).sum();
                let stable_rank = energy / (UPDATE[0] * UPDATE[0]);
                assert!((matrix.metrics.stable_rank - stable_rank).abs() < 1e-3);
                assert_eq!(matrix.metrics.k99, 4, "{}", matrix.key);
                matrices += 1;
            }
        }
        assert_eq!(matrices, 90, "30 layers × 3 modules");

        // Overlaps: γ recomputed from the two spectra's stored eigenvectors.
        let spectra: BTreeMap<&str, &hubsweep::ledger::Record> = records
            .iter()
            .filter(|r| r.kind == "spectrum")
            .map(|r| (r.id.as_str(), r))
            .collect();
        let mut compared = 0;
        for record in records.iter().filter(|r| r.kind == "overlap") {
            let mut bases = Vec::new();
            for input in &record.inputs {
                let Some(spectrum) = spectra.get(input.as_str()) else {
                    continue;
                };
                let bytes = client
                    .download_bytes(&repo, "main", &spectrum.files[0].path)
                    .await
                    .unwrap();
                bases.push(Spectrum::from_safetensors(&bytes).unwrap());
            }
            assert_eq!(bases.len(), 2, "an overlap reads two spectra");
            let values = record.metrics.as_ref().unwrap()["overlaps"]
                .as_array()
                .unwrap();
            for value in values {
                let k = value["k"].as_u64().unwrap() as usize;
                let (a, b) = (&bases[0].centred, &bases[1].centred);
                assert_eq!(a.singular_values.len(), 576);
                let ua = a.eigenvectors.as_ref().unwrap();
                let ub = b.eigenvectors.as_ref().unwrap();
                let mut sum = 0.0;
                for i in 0..k {
                    for j in 0..k {
                        let dot: f64 = ua
                            .column(i)
                            .iter()
                            .zip(ub.column(j))
                            .map(|(x, y)| x * y)
                            .sum();
                        sum += dot * dot;
                    }
                }
                let gamma = sum / k as f64;
                let recorded = value["gamma"].as_f64().unwrap();
                assert!((recorded - gamma).abs() < 1e-9, "γ {recorded} vs {gamma}");
                assert!((value["baseline"].as_f64().unwrap() - k as f64 / 576.0).abs() < 1e-15);
                compared += 1;
            }
        }
        assert_eq!(compared, 40, "20 overlap nodes × k = 4, 16");
        server.shutdown().await;
    });
    report_draws_the_smollm2_run(&ctx);
}

/// `report` of the run, in headless Chromium when installed.
fn report_draws_the_smollm2_run(ctx: &TestContext) {
    let page = ctx.child("smol-report.html");
    let output = crate::run::hubsweep(ctx)
        .args(["report", "local://alice/smol-spectro", "--out"])
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let html = std::fs::read_to_string(&page).unwrap();
    // The default layer is the middle one of those swept (0, 3, …, 27): 15.
    assert!(
        html.contains(">singular values at layer 15</text>"),
        "{html}"
    );
    let Some(chromium) = crate::report_chromium::chromium() else {
        return;
    };
    let rendered = crate::report_chromium::render(&chromium, ctx, &page);
    use crate::report_chromium::ExpectedPlot;
    let main = "local://hubsweep/smollm2-135m@main hook_resid_post";
    let ft = "local://hubsweep/smollm2-135m@ft hook_mlp_out";
    crate::report_chromium::check_report(
        &rendered,
        &[
            // 2 revisions × 2 hooks, at 10 layers.
            ExpectedPlot {
                id: "stable-rank",
                lines: 4,
                markers: 40,
                texts: &["layer", main, ft],
            },
            ExpectedPlot {
                id: "effective-rank",
                lines: 4,
                markers: 40,
                texts: &["layer", main, ft],
            },
            // 2 hooks × k = 4, 16, and their random baselines.
            ExpectedPlot {
                id: "overlap",
                lines: 4,
                markers: 40,
                texts: &["k/d = 4/576", "k/d = 16/576"],
            },
            ExpectedPlot {
                id: "spectrum",
                lines: 4,
                markers: 0,
                texts: &[
                    "index (values below 1e-8·σ₁ are rounding noise, not drawn)",
                    "σ (log scale)",
                ],
            },
            // One delta line per module, 30 layers each.
            ExpectedPlot {
                id: "weight-rank",
                lines: 3,
                markers: 90,
                texts: &["stable rank of weights and weight deltas"],
            },
        ],
        &[("spectra", 80), ("overlaps", 40), ("weights", 90)],
    );
}
