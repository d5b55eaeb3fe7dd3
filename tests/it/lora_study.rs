//! The worked LoRA study (`sweeps/lora-study.yaml`, docs/adapters.md) through the front door:
//! two adapters trained with the real `peft` on the bundled tiny GPT-NeoX, three checkpoints
//! each, imported into the embedded hub; the sweep runs, its update rows equal float64 NumPy
//! figures of peft's merged weights, it resumes with nothing to do, verifies deep, reproduces,
//! and `report` draws the update plots (checked in Chromium). Bad adapters are refused where
//! the spec names them (exit 2) or fail their own nodes (exit 1) with the ledger intact.

use std::path::{Path, PathBuf};
use std::process::Command;

use hubsweep::ledger::LedgerState;
use serde_json::Value;

use crate::adapters::peft_python;
use crate::common::{TestContext, output_text, repo_root};
use crate::run::{check_ledger, dataset, hubsweep, open_store, run_json, runtime, segment_records};

/// p and stable ranks from the ledger against NumPy on peft's merged ΔW (both float64).
const TOL: f64 = 1e-9;

/// Trains the study's adapters into `out` (with NumPy references) and imports both runs into
/// the embedded hub of `ctx`, as docs/adapters.md says.
fn make_adapters(ctx: &TestContext, python: &Path, out: &Path) {
    let root = repo_root();
    let output = Command::new(python)
        .arg(root.join("scripts/adapters/lora_study.py"))
        .arg("--base")
        .arg(root.join("tests/fixtures/gpt_neox_tiny"))
        .arg("--out")
        .arg(out)
        .arg("--reference")
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("run lora_study.py");
    assert!(output.status.success(), "{}", output_text(&output));
    for run in ["a", "b"] {
        let import = hubsweep(ctx)
            .args(["hub", "import", "--local", "--repo"])
            .arg(format!("local://hubsweep/tiny-gpt-neox-lora-{run}"))
            .arg(out.join(format!("lora-{run}")))
            .output()
            .unwrap();
        assert_eq!(import.status.code(), Some(0), "{}", output_text(&import));
    }
}

fn write(ctx: &TestContext, name: &str, text: &str) -> PathBuf {
    let path = ctx.child(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn rows(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn close(got: f64, expected: f64, what: &str) {
    assert!(
        (got - expected).abs() <= TOL * expected.abs().max(1.0),
        "{what}: {got} vs NumPy {expected}"
    );
}

/// Every whole-matrix row of `metrics/updates.jsonl` at k ∈ {1, 2, srank} against the NumPy
/// figures the study wrote beside each checkpoint.
fn rows_match_numpy(rows: &[Value], adapters: &Path) -> usize {
    let mut checked = 0;
    for row in rows.iter().filter(|r| r["part"].is_null()) {
        let run = row["adapter"].as_str().unwrap().rsplit('-').next().unwrap();
        let folder = adapters
            .join(format!("lora-{run}"))
            .join(row["subfolder"].as_str().unwrap());
        let reference: Value =
            serde_json::from_slice(&std::fs::read(folder.join("reference.json")).unwrap()).unwrap();
        let key = row["key"].as_str().unwrap();
        let expected = &reference[key];
        assert!(expected.is_object(), "NumPy has no update of `{key}`");
        close(
            row["stable_rank_update"].as_f64().unwrap(),
            expected["stable_rank"].as_f64().unwrap(),
            &format!("{key} stable rank"),
        );
        let choice = row["k_choice"].as_str().unwrap();
        let Some(geometry) =
            expected["geometry"].as_array().unwrap().iter().find(|g| {
                g["choice"].as_str() == Some(choice) || g["choice"].to_string() == choice
            })
        else {
            continue;
        };
        assert_eq!(row["k"], geometry["k"], "{key} k = {choice}");
        for side in ["p_left", "p_right"] {
            close(
                row[side].as_f64().unwrap(),
                geometry[side].as_f64().unwrap(),
                &format!("{key} {side} at k = {choice}"),
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn the_lora_study_runs_matches_numpy_resumes_verifies_reproduces_and_reports() {
    let Some(python) = peft_python() else { return };
    let ctx = TestContext::new();
    let adapters = ctx.child("lora-study");
    make_adapters(&ctx, &python, &adapters);
    let text = std::fs::read_to_string(repo_root().join("sweeps/lora-study.yaml")).unwrap();
    let spec = write(&ctx, "lora-study.yaml", &text);

    let (output, first) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    // The base and six adapters pinned; 2 base_svd + 12 update_geometry nodes among those run.
    assert_eq!(first["pinned"].as_array().map(Vec::len), Some(7), "{first}");
    let (output, second) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    assert_eq!(second["executed"], 0, "the rerun executed nodes: {second}");
    assert_eq!(second["head"], first["head"]);

    let update_rows = runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset("hubsweep/lora-study");
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        let count = |kind: &str| records.iter().filter(|r| r.kind == kind).count();
        assert_eq!(
            count("base_svd"),
            2,
            "one per module pattern, shared by the adapters"
        );
        assert_eq!(count("update_geometry"), 12, "6 checkpoints × 2 patterns");
        let bytes = client
            .download_bytes(&repo, "main", "metrics/updates.jsonl")
            .await
            .unwrap();
        let summary = client
            .download_bytes(&repo, "main", "metrics/updates_summary.jsonl")
            .await
            .unwrap();
        server.shutdown().await;
        let summary = rows(&summary);
        // lora-a: qkv (+3 parts) and dense; lora-b: qkv (+3 parts); 3 checkpoints; 4 sizes.
        assert!(!summary.is_empty());
        for row in &summary {
            assert_eq!(row["layers"], 3, "{row}");
            let p = &row["p_left"];
            assert!(
                p["min"].as_f64() <= p["mean"].as_f64() && p["mean"].as_f64() <= p["max"].as_f64()
            );
        }
        rows(&bytes)
    });
    let checked = rows_match_numpy(&update_rows, &adapters);
    // (lora-a: 2 modules + lora-b: 1) × 3 checkpoints × 3 layers × {1, 2, srank}.
    assert_eq!(checked, 3 * 3 * 3 * 3, "rows checked against NumPy");
    let steps: std::collections::BTreeSet<u64> = update_rows
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.into_iter().collect::<Vec<_>>(), vec![10, 20, 30]);

    let verify = hubsweep(&ctx)
        .args(["verify", "--deep", "local://hubsweep/lora-study"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", output_text(&verify));
    let executed = first["executed"].as_u64().unwrap();
    let reproduce = hubsweep(&ctx)
        .args(["reproduce", "local://hubsweep/lora-study"])
        .output()
        .unwrap();
    assert_eq!(
        reproduce.status.code(),
        Some(0),
        "{}",
        output_text(&reproduce)
    );
    let stderr = String::from_utf8_lossy(&reproduce.stderr);
    assert!(
        stderr.contains(&format!(
            "{executed} nodes, {executed} with their recorded ids"
        )),
        "{stderr}"
    );
    report_draws_the_updates(&ctx, update_rows.len());
}

/// `report` of the study: the update plots against layer and against training step.
fn report_draws_the_updates(ctx: &TestContext, rows: usize) {
    let page = ctx.child("lora-study.html");
    let output = hubsweep(ctx)
        .args(["report", "local://hubsweep/lora-study", "--out"])
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let html = std::fs::read_to_string(&page).unwrap();
    for id in [
        "update-rank",
        "update-bonus",
        "update-trajectory",
        "update-bonus-trajectory",
    ] {
        assert!(
            html.contains(&format!("<figure id=\"{id}\"")),
            "no figure {id}"
        );
    }
    let Some(chromium) = crate::report_chromium::chromium() else {
        return;
    };
    let rendered = crate::report_chromium::render(&chromium, ctx, &page);
    use crate::report_chromium::ExpectedPlot;
    let a_qkv = "local://hubsweep/tiny-gpt-neox-lora-a@main attention.query_key_value";
    crate::report_chromium::check_report(
        &rendered,
        &[
            // (lora-a: qkv, dense; lora-b: qkv) × 3 checkpoints, 3 layers each.
            ExpectedPlot {
                id: "update-rank",
                lines: 9,
                markers: 27,
                texts: &["layer", "stable rank"],
            },
            ExpectedPlot {
                id: "update-bonus",
                lines: 9,
                markers: 27,
                texts: &["layer", "bonus"],
            },
            // One line per adapter and module, a point per checkpoint.
            ExpectedPlot {
                id: "update-trajectory",
                lines: 3,
                markers: 9,
                texts: &["training step", a_qkv],
            },
        ],
        &[("updates", rows)],
    );
}

/// A LoRA adapter folder (from the study's first checkpoint) with `edit` applied.
fn adapter_copy(from: &Path, to: &Path, edit: impl FnOnce(&Path)) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    edit(to);
}

/// A sweep `name` over the adapter in folder `folder` (relative to the spec) on `base`.
fn folder_spec(name: &str, base: &str, folder: &str) -> String {
    format!(
        r#"
name: {name}
output: local://hubsweep/{name}
models:
  - repo: {base}
    adapter:
      repo: ./{folder}
data:
  texts: ["x y z"]
  seq_len: 2
analyses:
  - update_geometry: {{modules: [query_key_value, q_proj]}}
compute:
  device: cpu
"#
    )
}

#[test]
fn bad_adapters_are_refused_where_the_spec_names_them_or_fail_their_own_nodes() {
    let Some(python) = peft_python() else { return };
    let ctx = TestContext::new();
    let adapters = ctx.child("lora-study");
    make_adapters(&ctx, &python, &adapters);
    let good = adapters.join("lora-b/checkpoint-10");

    // Another PEFT method: refused before anything runs, at the group's `adapter`.
    adapter_copy(&good, &ctx.child("ia3"), |dir| {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"LORA\"", "\"IA3\"")).unwrap();
    });
    let spec = write(
        &ctx,
        "ia3.yaml",
        &folder_spec("ia3", "local://hubsweep/tiny-gpt-neox", "ia3"),
    );
    let output = hubsweep(&ctx).arg("run").arg(&spec).output().unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("/models/0/adapter") || text.contains("adapter:"),
        "{text}"
    );
    assert!(text.contains("IA3"), "{text}");

    // A checkpoint the repo does not have: refused at `subfolder`, with what is there.
    let missing = std::fs::read_to_string(repo_root().join("sweeps/lora-study.yaml"))
        .unwrap()
        .replace("step: [10, 20, 30]", "step: [10, 40]");
    let spec = write(&ctx, "missing.yaml", &missing);
    let output = hubsweep(&ctx).arg("run").arg(&spec).output().unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("checkpoint-40"), "{text}");
    assert!(text.contains("subfolder"), "{text}");

    // NaNs in a factor: that node fails (exit 1), recorded as failed; the ledger is intact.
    adapter_copy(&good, &ctx.child("nan"), |dir| {
        let path = dir.join("adapter_model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        // The last F32 of the data section becomes a NaN.
        let at = bytes.len() - 4;
        assert!(at > 8 + header);
        bytes[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
    });
    let spec = write(
        &ctx,
        "nan.yaml",
        &folder_spec("nan", "local://hubsweep/tiny-gpt-neox", "nan"),
    );
    let (output, report) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", output_text(&output));
    let text = format!("{report} {}", output_text(&output));
    assert!(text.contains("NaN"), "{text}");

    // An adapter trained on the GPT-NeoX, swept on the Llama: its node fails naming the module.
    adapter_copy(&good, &ctx.child("other-base"), |_| {});
    let spec = write(
        &ctx,
        "other.yaml",
        &folder_spec("other", "local://hubsweep/tiny-llama", "other-base"),
    );
    let (output, _) = run_json(&ctx, &spec, &[]);
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("query_key_value"), "{text}");

    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        for name in ["hubsweep/nan", "hubsweep/other"] {
            let repo = dataset(name);
            let state = LedgerState::read(&client, &repo, "main").await.unwrap();
            let records = segment_records(&client, &repo, &state).await;
            check_ledger(&state, &records);
            let failed = records
                .iter()
                .filter(|r| r.kind == "update_geometry" && r.error.is_some())
                .count();
            assert!(failed > 0, "{name}: the failed updates are recorded");
        }
        server.shutdown().await;
    });
}

/// A group with an adapter and no `repo`: the base is the one the adapter's config names
/// (`base_model_name_or_path`, here the fixture folder peft trained on), in `plan` and `run`;
/// a config that names none is refused at the group, saying to give `repo`.
#[test]
fn without_repo_the_adapter_config_names_the_base() {
    let Some(python) = peft_python() else { return };
    let ctx = TestContext::new();
    let adapters = ctx.child("lora-study");
    make_adapters(&ctx, &python, &adapters);
    let good = adapters.join("lora-a/checkpoint-20");
    adapter_copy(&good, &ctx.child("own-base"), |_| {});
    let text = folder_spec("own-base", "unused", "own-base")
        .replace("  - repo: unused\n    adapter:", "  - adapter:");
    let spec = write(&ctx, "own-base.yaml", &text);
    let fixture = repo_root().join("tests/fixtures/gpt_neox_tiny");
    let plan = hubsweep(&ctx).arg("plan").arg(&spec).output().unwrap();
    let plan_text = output_text(&plan);
    assert_eq!(plan.status.code(), Some(0), "{plan_text}");
    assert!(plan_text.contains("gpt_neox_tiny"), "{plan_text}");
    let (output, report) = run_json(&ctx, &spec, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", output_text(&output));
    let pinned = report["pinned"].to_string();
    assert!(
        pinned.contains(&format!("{}@main", fixture.display())),
        "{pinned}"
    );

    adapter_copy(&good, &ctx.child("no-base"), |dir| {
        let path = dir.join("adapter_config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["base_model_name_or_path"] = Value::Null;
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    });
    let text = folder_spec("no-base", "unused", "no-base")
        .replace("  - repo: unused\n    adapter:", "  - adapter:");
    let spec = write(&ctx, "no-base.yaml", &text);
    let output = hubsweep(&ctx).arg("run").arg(&spec).output().unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("base_model_name_or_path"), "{text}");
    assert!(text.contains("`repo`"), "{text}");
}
