//! Spectroscopy in a run: weight spectra of the bundled tiny models (checked against a direct
//! SVD of the checkpoint's matrices, and the fused QKV split by hand), module patterns checked
//! before anything runs, the metrics tables, and `report`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hubsweep::exec::weights::read_node_file;
use hubsweep::ledger::tables::WeightNodeMetrics;
use hubsweep::ledger::{LedgerState, Record};
use sha2::Digest as _;

use crate::common::{TestContext, repo_root};
use crate::run::{
    check_ledger, dataset, open_store, run_json, runtime, segment_records, stderr, succeed,
    weight_blobs,
};

/// The two bundled tiny models (one per family, both 64 wide) with spectra, overlaps of the
/// Llama's subspaces with the GPT-NeoX's, and weight spectra; each family's patterns match only
/// its own checkpoint.
pub(crate) const WEIGHTS_SPEC: &str = r#"
name: spectro
output: local://hubsweep/spectro
models:
  - family: gpt_neox
    repo: local://hubsweep/tiny-gpt-neox
  - family: llama
    repo: local://hubsweep/tiny-llama
data:
  texts:
    - "The quick brown fox jumps over the lazy dog."
    - "Checkpoints along training show representations forming."
  seq_len: 16
capture:
  hooks: [hook_resid_post]
  layers: all
analyses:
  - spectrum: {top_k: 64}
  - overlap: {between: model, base: "local://hubsweep/tiny-gpt-neox", k: [4, 8]}
weights:
  modules: [attention.query_key_value, "mlp.*", "self_attn.*_proj", gpt_neox.embed_in]
limits:
  memory: 64MiB
  artifact_bytes: 1MiB
compute:
  device: cpu
"#;

pub(crate) fn write_spec(ctx: &TestContext, name: &str, text: &str) -> PathBuf {
    let path = ctx.child(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads a 2-D tensor of a fixture checkpoint as f64.
fn fixture_matrix(model: &str, key: &str) -> (Vec<f64>, usize, usize) {
    let bytes = std::fs::read(
        repo_root()
            .join("tests/fixtures")
            .join(model)
            .join("model.safetensors"),
    )
    .unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(key).unwrap();
    let values: Vec<f64> = match view.dtype() {
        safetensors::Dtype::F16 => view
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        safetensors::Dtype::BF16 => view
            .data()
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => panic!("fixture dtype {other:?}"),
    };
    (values, view.shape()[0], view.shape()[1])
}

pub(crate) fn svd_values(values: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let matrix = faer::Mat::from_fn(rows, cols, |i, j| values[i * cols + j]);
    let mut sigma: Vec<f64> = matrix.singular_values().unwrap();
    sigma.sort_by(|a, b| b.total_cmp(a));
    sigma
}

pub(crate) fn assert_close(got: &[f64], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    // faer's Jacobi-free SVD vs our f64 thin SVD: both backward stable, so singular values
    // agree to a few ulps of σ₁; 1e-9 relative to σ₁ is the issue's acceptance bound.
    let scale = expected[0].max(f64::MIN_POSITIVE);
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() <= 1e-9 * scale,
            "{what}: {g} vs {e} (σ₁ {scale})"
        );
    }
}

async fn weight_records(
    client: &hubsweep::hub::HubClient,
    repo: &hubsweep::hub::Repo,
    records: &[Record],
) -> BTreeMap<String, (Record, BTreeMap<String, Vec<f64>>)> {
    let mut out = BTreeMap::new();
    for record in records.iter().filter(|r| r.kind == "weight_spectrum") {
        let file = &record.files[0];
        assert!(file.path.starts_with("weights/"), "{}", file.path);
        let bytes = client
            .download_bytes(repo, "main", &file.path)
            .await
            .unwrap();
        let values = read_node_file(&bytes).unwrap();
        let module = record.params["module"].as_str().unwrap().to_owned();
        let model = record.pins["commit"].as_str().unwrap().to_owned();
        out.insert(format!("{model} {module}"), (record.clone(), values));
    }
    out
}

#[test]
fn weight_spectra_match_a_direct_svd_and_metrics_tables_match_the_ledger() {
    let ctx = TestContext::new();
    let spec = write_spec(&ctx, "spectro.yaml", WEIGHTS_SPEC);
    let (output, report) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("hubsweep/spectro");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        let weights = weight_records(&client, &repo, &records).await;
        // 4 patterns × 2 models; patterns of the other family record no matrix.
        assert_eq!(weights.len(), 8, "{report}");
        let mut checked = 0;
        for (record, values) in weights.values() {
            let metrics: WeightNodeMetrics =
                serde_json::from_value(record.metrics.clone().unwrap()).unwrap();
            let model = if metrics
                .matrices
                .iter()
                .any(|m| m.key.starts_with("gpt_neox"))
            {
                "gpt_neox_tiny"
            } else {
                "llama_tiny"
            };
            for matrix in &metrics.matrices {
                let stored = &values[&matrix.tensor];
                let (weight, rows, cols) = fixture_matrix(model, &matrix.key);
                let (part_values, part_rows) = match matrix.part.as_deref() {
                    None => (weight, rows),
                    // GPT-NeoX's fused rows are [head][q|k|v][head_dim]: 4 heads of 16 here.
                    Some(part) => {
                        let offset = ["query", "key", "value"]
                            .iter()
                            .position(|p| *p == part)
                            .unwrap();
                        let (heads, head_dim) = (4, 16);
                        let mut picked = Vec::new();
                        for head in 0..heads {
                            let first = (3 * head + offset) * head_dim;
                            picked.extend_from_slice(
                                &weight[first * cols..(first + head_dim) * cols],
                            );
                        }
                        (picked, heads * head_dim)
                    }
                };
                assert_eq!((matrix.rows, matrix.cols), (part_rows, cols));
                let expected = svd_values(&part_values, part_rows, cols);
                assert_close(stored, &expected, &matrix.tensor);
                let stable_rank =
                    expected.iter().map(|s| s * s).sum::<f64>() / (expected[0] * expected[0]);
                assert!((matrix.metrics.stable_rank - stable_rank).abs() < 1e-9 * stable_rank);
                checked += 1;
            }
        }
        metrics_tables_agree_with_the_ledger(&client, &repo, &records).await;
        report_links_resolve_and_the_page_renders(&ctx, server.base_url(), &records).await;
        server.shutdown().await;
        report_draws_the_run(&ctx);
        let (server, _) = open_store(&ctx.child("hubsweep-home")).await;
        // GPT-NeoX: 3 layers × (qkv + 3 parts + 2 mlp) + embed_in;
        // Llama: 3 layers × (3 mlp + 4 attention projections).
        let neox_layers = 3;
        let llama_layers = 3;
        assert_eq!(
            checked,
            neox_layers * 6 + 1 + llama_layers * 7,
            "{weights:?}"
        );
        server.shutdown().await;
    });
}

#[test]
fn a_module_pattern_matching_nothing_is_refused_before_anything_runs() {
    let ctx = TestContext::new();
    let text = WEIGHTS_SPEC.replace("attention.query_key_value,", "attention.query_key_valu,");
    let spec = write_spec(&ctx, "typo.yaml", &text);
    let (output, _) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("attention.query_key_valu"), "{err}");
    assert!(
        err.contains("did you mean `attention.query_key_value`"),
        "{err}"
    );
    // The location: line 21 of the spec (the `modules:` list), and nothing was written.
    assert!(err.contains("typo.yaml:21"), "{err}");
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let state = LedgerState::read(&client, &dataset("hubsweep/spectro"), "main").await;
        assert!(
            state.map(|s| s.records.is_empty()).unwrap_or(true),
            "a refused run recorded nodes"
        );
        server.shutdown().await;
    });
}

fn parse_jsonl(bytes: &[u8]) -> Vec<serde_json::Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// `metrics/*.jsonl` exist, parse, and hold exactly the ledger's numbers.
async fn metrics_tables_agree_with_the_ledger(
    client: &hubsweep::hub::HubClient,
    repo: &hubsweep::hub::Repo,
    records: &[Record],
) {
    let table = |path: &'static str| async move {
        parse_jsonl(&client.download_bytes(repo, "main", path).await.unwrap())
    };
    let by_id: BTreeMap<&str, &Record> = records.iter().map(|r| (r.id.as_str(), r)).collect();

    let spectra = table("metrics/spectra.jsonl").await;
    let spectrum_records = records.iter().filter(|r| r.kind == "spectrum").count();
    // 2 models × 3 layers of hook_resid_post, raw and centred.
    assert_eq!(spectrum_records, 6);
    assert_eq!(spectra.len(), 2 * spectrum_records);
    for row in &spectra {
        let record = by_id[row["node"].as_str().unwrap()];
        let centring = row["centring"].as_str().unwrap();
        let metrics = &record.metrics.as_ref().unwrap()[centring];
        for field in [
            "stable_rank",
            "effective_rank",
            "k90",
            "k99",
            "spectral_norm",
        ] {
            assert_eq!(row[field], metrics[field], "{field} of {row}");
        }
        assert_eq!(row["hook"], "hook_resid_post");
        assert_eq!(row["layer"], record.params["layer"]);
        assert_eq!(row["file"].as_str(), Some(record.files[0].path.as_str()));
    }

    let overlaps = table("metrics/overlaps.jsonl").await;
    let overlap_records: Vec<&Record> = records.iter().filter(|r| r.kind == "overlap").collect();
    assert_eq!(overlap_records.len(), 3, "llama vs gpt-neox at 3 layers");
    assert_eq!(overlaps.len(), 2 * overlap_records.len(), "k = 4 and 8");
    for row in &overlaps {
        let record = by_id[row["node"].as_str().unwrap()];
        let values = record.metrics.as_ref().unwrap()["overlaps"]
            .as_array()
            .unwrap();
        let value = values.iter().find(|v| v["k"] == row["k"]).unwrap();
        assert_eq!(row["gamma"], value["gamma"]);
        assert_eq!(row["ratio"], value["ratio"]);
        assert_eq!(row["base_model"], "local://hubsweep/tiny-gpt-neox");
        assert_eq!(row["model"], "local://hubsweep/tiny-llama");
        let baseline = row["k"].as_f64().unwrap() / 64.0;
        assert!((row["baseline"].as_f64().unwrap() - baseline).abs() < 1e-15);
    }

    let weights = table("metrics/weights.jsonl").await;
    let matrices: usize = records
        .iter()
        .filter(|r| r.kind == "weight_spectrum")
        .map(|r| {
            r.metrics.as_ref().unwrap()["matrices"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(weights.len(), matrices);
    for row in &weights {
        let record = by_id[row["node"].as_str().unwrap()];
        let matrix = record.metrics.as_ref().unwrap()["matrices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["tensor"] == row["tensor"])
            .unwrap();
        assert_eq!(row["stable_rank"], matrix["metrics"]["stable_rank"]);
        assert_eq!(row["k99"], matrix["metrics"]["k99"]);
        assert_eq!(row["rows"], matrix["rows"]);
    }
}

/// `hubsweep report hf://…` against the store served over HTTP: every artifact link of the
/// page downloads the file the ledger records, and headless Chromium draws every plot.
async fn report_links_resolve_and_the_page_renders(
    ctx: &TestContext,
    endpoint: &str,
    records: &[Record],
) {
    let page = ctx.child("report-hf.html");
    let output = crate::run::hubsweep(ctx)
        .env("HF_ENDPOINT", endpoint)
        .args(["report", "hf://datasets/hubsweep/spectro@main", "--out"])
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let html = std::fs::read_to_string(&page).unwrap();
    let base = format!("{endpoint}/datasets/hubsweep/spectro/resolve/main/");
    let links: Vec<&str> = html
        .split("href=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    // 12 spectrum rows and 40 weight rows, each linking its node's file.
    assert_eq!(links.len(), 12 + 40, "links");
    let files: BTreeMap<&str, (u64, &str)> = records
        .iter()
        .flat_map(|r| &r.files)
        .map(|f| (f.path.as_str(), (f.size, f.sha256.as_str())))
        .collect();
    let http = reqwest::Client::new();
    let mut distinct: Vec<&str> = links.clone();
    distinct.sort_unstable();
    distinct.dedup();
    for link in distinct {
        let path = link
            .strip_prefix(&base)
            .unwrap_or_else(|| panic!("{link} is not under {base}"));
        let (size, sha256) = files[path];
        let bytes = http
            .get(link)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, size, "{link}");
        assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), sha256, "{link}");
    }
    let Some(chromium) = crate::report_chromium::chromium() else {
        return;
    };
    let rendered = crate::report_chromium::render(&chromium, ctx, &page);
    use crate::report_chromium::ExpectedPlot;
    let gpt_neox = "local://hubsweep/tiny-gpt-neox@main hook_resid_post";
    let llama = "local://hubsweep/tiny-llama@main hook_resid_post";
    crate::report_chromium::check_report(
        &rendered,
        &[
            // Two models × 3 layers.
            ExpectedPlot {
                id: "stable-rank",
                lines: 2,
                markers: 6,
                texts: &["layer", "stable rank", gpt_neox, llama],
            },
            ExpectedPlot {
                id: "effective-rank",
                lines: 2,
                markers: 6,
                texts: &["layer", "effective rank", gpt_neox, llama],
            },
            // k = 4 and 8 × 3 layers, with both baselines.
            ExpectedPlot {
                id: "overlap",
                lines: 2,
                markers: 6,
                texts: &[
                    "layer",
                    "γ (dashed: baseline k/d)",
                    "k/d = 4/64",
                    "k/d = 8/64",
                ],
            },
            // The middle layer of each model, on decades.
            ExpectedPlot {
                id: "spectrum",
                lines: 2,
                markers: 0,
                texts: &[
                    "index (values below 1e-8·σ₁ are rounding noise, not drawn)",
                    "σ (log scale)",
                    "singular values at layer 1",
                    "1",
                    "10",
                ],
            },
            // GPT-NeoX: qkv, its 3 parts and 2 mlp modules; Llama: 7 modules; all at 3 layers.
            ExpectedPlot {
                id: "weight-rank",
                lines: 6 + 7,
                markers: (6 + 7) * 3,
                texts: &["layer", "stable rank"],
            },
        ],
        &[("spectra", 12), ("overlaps", 6), ("weights", 40)],
    );
    // The links survive the browser's parse.
    assert_eq!(rendered.dom.matches("<a href=\"").count(), 12 + 40);
}

/// `hubsweep report` of the run: the page's plots hold one line per series, with axis labels;
/// CSV and JSON hold the tables' rows.
fn report_draws_the_run(ctx: &TestContext) {
    let out = ctx.child("report.html");
    let output = crate::run::hubsweep(ctx)
        .args(["report", "local://hubsweep/spectro", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let html = std::fs::read_to_string(&out).unwrap();
    let figure = |id: &str| {
        let start = html
            .find(&format!("<figure id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no {id} plot"));
        let end = start + html[start..].find("</figure>").unwrap();
        html[start..end].to_owned()
    };
    // Stable and effective rank: one line per model (one hook); overlap: one per k; the middle
    // layer's spectrum: one per model.
    for (id, lines, y_label) in [
        ("stable-rank", 2, "stable rank"),
        ("effective-rank", 2, "effective rank"),
        ("overlap", 2, "γ (dashed: baseline k/d)"),
        ("spectrum", 2, "σ (log scale)"),
    ] {
        let svg = figure(id);
        assert_eq!(svg.matches("<polyline").count(), lines, "{id}: {svg}");
        assert!(svg.contains(&format!(">{y_label}</text>")), "{id} y label");
        assert!(
            svg.contains(">layer</text>") || id == "spectrum",
            "{id} x label"
        );
    }
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "self-contained"
    );
    assert_eq!(html.matches("<tr>").count() - 3, 12 + 6 + 40, "table rows");

    let csv = crate::run::hubsweep(ctx)
        .args([
            "report",
            "local://hubsweep/spectro",
            "--format",
            "csv",
            "--out",
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(csv.status.code(), Some(0), "{}", stderr(&csv));
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.contains("hook_resid_post"))
            .count(),
        12 + 6
    );
    let json = crate::run::hubsweep(ctx)
        .args([
            "report",
            "local://hubsweep/spectro@main",
            "--format",
            "json",
            "--out",
            "-",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["weights"].as_array().unwrap().len(), 40);
}

/// Checking module patterns downloads checkpoints, so only weight spectra about to run check
/// them: `status` pins without a weight; a dry run of a new sweep downloads checkpoints until
/// every pattern matched (here the first one only); a rerun or dry run of a finished sweep
/// downloads nothing, even after `--evict-models` deleted the weights.
#[test]
fn only_weight_spectra_still_to_run_download_checkpoints_to_check_patterns() {
    let ctx = TestContext::new();
    let text = WEIGHTS_SPEC.replace(
        "[attention.query_key_value, \"mlp.*\", \"self_attn.*_proj\", gpt_neox.embed_in]",
        "[attention.query_key_value]",
    );
    let spec = write_spec(&ctx, "neox-weights.yaml", &text);
    let cache = ctx.child("hubsweep-home/cache");
    let (stdout, _) = succeed(&ctx, &["status", "--format", "json"], &spec);
    let status: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(status["complete"], false, "{status}");
    assert!(weight_blobs(&cache).is_empty());
    let (_, err) = succeed(&ctx, &["run", "--dry-run"], &spec);
    assert_eq!(weight_blobs(&cache).len(), 1, "the first checkpoint's");
    assert!(
        err.contains("download local://hubsweep/tiny-gpt-neox@main"),
        "{err}"
    );
    // The sweep in a fresh home, leaving no weights behind (it downloaded them all); then a
    // rerun and a dry run of the finished sweep check no pattern, so they download nothing.
    let ctx = TestContext::new();
    let spec = write_spec(&ctx, "neox-weights.yaml", &text);
    let cache = ctx.child("hubsweep-home/cache");
    succeed(&ctx, &["run", "--evict-models"], &spec);
    assert!(weight_blobs(&cache).is_empty());
    let (stdout, _) = succeed(&ctx, &["run", "--format", "json"], &spec);
    let again: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(again["executed"], 0, "{again}");
    let (_, err) = succeed(&ctx, &["run", "--dry-run"], &spec);
    assert!(!err.contains("download"), "{err}");
    assert!(weight_blobs(&cache).is_empty());
}
