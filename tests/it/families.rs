//! A sweep over six families (`sweeps/mixed-families.yaml`) through the binary and the
//! embedded hub: it runs end to end, resumes with nothing to do, verifies (deep) and
//! reproduces; families left out of the spec are read from each checkpoint, and a family the
//! checkpoint contradicts stops the run (exit 2) naming both.

use std::path::{Path, PathBuf};

use crate::common::{TestContext, isolated_hubsweep as hubsweep, output_text as text, repo_root};

/// The fixtures the sweep imports, as `hubsweep/tiny-NAME`.
const IMPORTED: [(&str, &str); 4] = [
    ("gpt2", "gpt2_tiny"),
    ("qwen2", "qwen2_tiny"),
    ("qwen3", "qwen3_tiny"),
    ("mistral", "mistral_tiny"),
];

/// Imports the four new-family fixtures (without their reference activations) into the
/// context's embedded hub, with `hubsweep hub import --local`.
fn import_fixtures(ctx: &TestContext) {
    for (name, fixture) in IMPORTED {
        let dir = ctx.child(&format!("import-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            let from = repo_root().join("tests/fixtures").join(fixture).join(file);
            std::fs::copy(from, dir.join(file)).unwrap();
        }
        let output = hubsweep(ctx)
            .args(["hub", "import", "--local", "--repo"])
            .arg(format!("hubsweep/tiny-{name}"))
            .arg(&dir)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    }
}

fn spec(ctx: &TestContext, text: &str) -> PathBuf {
    let path = ctx.child("mixed-families.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(ctx: &TestContext, spec: &Path) -> (std::process::Output, serde_json::Value) {
    let output = hubsweep(ctx)
        .args(["run", "--format", "json"])
        .arg(spec)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (output, json)
}

#[test]
fn a_sweep_over_six_families_runs_resumes_verifies_and_reproduces() {
    let ctx = TestContext::new();
    import_fixtures(&ctx);
    let text_of_spec =
        std::fs::read_to_string(repo_root().join("sweeps/mixed-families.yaml")).unwrap();
    let path = spec(&ctx, &text_of_spec);

    let (output, first) = run(&ctx, &path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let pinned = first["pinned"].as_array().expect("pinned models");
    assert_eq!(pinned.len(), 6, "{first}");
    let executed = first["executed"].as_u64().unwrap();
    assert!(executed > 6 * 4, "{first}");

    // Every family captured every layer: 6 models × 3 layers × 2 hooks, each with a spectrum.
    let (output, second) = run(&ctx, &path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(second["executed"], 0, "the rerun executed nodes: {second}");
    assert_eq!(second["commits"], 0, "{second}");
    assert_eq!(second["head"], first["head"]);

    gpt2_weights_read_as_out_by_in(&ctx);

    let verify = hubsweep(&ctx)
        .args(["verify", "--deep", "local://hubsweep/mixed-families"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    let reproduce = hubsweep(&ctx)
        .args(["reproduce", "local://hubsweep/mixed-families"])
        .output()
        .unwrap();
    assert_eq!(reproduce.status.code(), Some(0), "{}", text(&reproduce));
    let stderr = String::from_utf8_lossy(&reproduce.stderr);
    assert!(
        stderr.contains(&format!(
            "{executed} nodes, {executed} with their recorded ids"
        )),
        "{stderr}"
    );
}

/// GPT-2's `attn.c_attn` is stored `[in, out]` = 64 × 192: its weight spectrum is recorded as
/// d_out × d_in = 192 × 64, as a fused QKV of any family, and its parts are the `[q; k; v]`
/// column blocks of the stored matrix (transposed), 64 × 64 each.
fn gpt2_weights_read_as_out_by_in(ctx: &TestContext) {
    use hubsweep::exec::weights::read_node_file;
    use hubsweep::ledger::LedgerState;
    use hubsweep::ledger::tables::WeightNodeMetrics;

    use crate::run::{dataset, open_store, runtime, segment_records};
    use crate::spectro::{assert_close, svd_values};

    let bytes =
        std::fs::read(repo_root().join("tests/fixtures/gpt2_tiny/model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let stored = |key: &str| -> (Vec<f64>, usize, usize) {
        let view = tensors.tensor(key).unwrap();
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        (values, view.shape()[0], view.shape()[1])
    };
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("hubsweep/mixed-families");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        let mut checked = 0;
        for record in records.iter().filter(|r| r.kind == "weight_spectrum") {
            let metrics: WeightNodeMetrics =
                serde_json::from_value(record.metrics.clone().unwrap()).unwrap();
            let gpt2: Vec<_> = metrics
                .matrices
                .iter()
                .filter(|m| m.key.starts_with("transformer.h."))
                .collect();
            if gpt2.is_empty() {
                continue;
            }
            let bytes = client
                .download_bytes(&repo, "main", &record.files[0].path)
                .await
                .unwrap();
            let values = read_node_file(&bytes).unwrap();
            for matrix in gpt2 {
                assert_eq!(matrix.module, "attn.c_attn");
                let (weight, rows, cols) = stored(&matrix.key);
                assert_eq!((rows, cols), (64, 192), "stored [in, out]");
                let block = match matrix.part.as_deref() {
                    None => 0..192,
                    Some("query") => 0..64,
                    Some("key") => 64..128,
                    Some(_) => 128..192,
                };
                let expected_rows = block.len();
                assert_eq!(
                    (matrix.rows, matrix.cols),
                    (expected_rows, 64),
                    "{matrix:?}"
                );
                // Rows of the d_out × d_in matrix = columns `block` of the stored one.
                let part: Vec<f64> = block
                    .clone()
                    .flat_map(|c| (0..64).map(move |r| (r, c)))
                    .map(|(r, c)| weight[r * 192 + c])
                    .collect();
                let expected = svd_values(&part, expected_rows, 64);
                assert_close(&values[&matrix.tensor], &expected, &matrix.tensor);
                checked += 1;
            }
        }
        // 3 layers × (whole, query, key, value).
        assert_eq!(checked, 12);
        server.shutdown().await;
    });
}

/// With `family` left out, each checkpoint's config says; a family that contradicts the
/// checkpoint stops the run before anything is written, naming both.
#[test]
fn an_omitted_family_is_inferred_and_a_contradicting_one_refused() {
    let ctx = TestContext::new();
    import_fixtures(&ctx);
    let base = "name: fam\noutput: local://hubsweep/fam\nmodels:\n";
    let tail = "data:\n  texts: [\"The quick brown fox jumps over the lazy dog.\"]\n  seq_len: 8\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0]\ncompute:\n  device: cpu\n";
    let models: String = IMPORTED
        .iter()
        .map(|(name, _)| format!("  - repo: local://hubsweep/tiny-{name}\n"))
        .collect();
    let path = spec(&ctx, &format!("{base}{models}{tail}"));
    let output = hubsweep(&ctx).args(["plan"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let (output, report) = run(&ctx, &path);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(report["pinned"].as_array().unwrap().len(), 4, "{report}");

    for (named, repo, found) in [
        ("llama", "tiny-qwen2", "qwen2"),
        ("qwen2", "tiny-qwen3", "qwen3"),
        ("gpt_neox", "tiny-gpt2", "gpt2"),
    ] {
        let ctx2 = &ctx;
        let path = spec(
            ctx2,
            &format!(
                "name: bad\noutput: local://hubsweep/bad-{found}\nmodels:\n  - family: {named}\n    repo: local://hubsweep/{repo}\n{tail}"
            ),
        );
        let (output, _) = run(ctx2, &path);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{named} for {repo}: {}",
            text(&output)
        );
        assert!(
            err.contains(&format!(
                "the spec says `{named}` but config.json says `{found}`"
            )),
            "{err}"
        );
    }
    // Nothing was written for the refused runs.
    let repos = ctx.child("hubsweep-home/hub/repos/datasets/hubsweep");
    let names: Vec<String> = std::fs::read_dir(repos)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("bad")), "{names:?}");
}
