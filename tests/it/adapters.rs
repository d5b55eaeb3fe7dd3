//! LoRA adapters saved by the real `peft` library (scripts/adapters/peft_peer.py) on the tiny
//! GPT-NeoX, Llama and GPT-2 fixtures: hubsweep's per-module update equals peft's merged weight
//! minus the base, and the update's spectrum and its geometry against the base equal float64
//! NumPy figures computed from the formulas of docs/analysis.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};
use hubsweep::analysis::{
    Parallelism, SubspaceChoice, TruncatedSvd, WeightMatrix, split_fused_qkv, update_geometry,
};
use hubsweep::model::adapter::{AdapterError, LoraAdapter, ModuleUpdate};
use hubsweep::model::weights::Weights;
use hubsweep::model::{ModelConfig, ModelFiles};
use serde_json::Value;

use crate::common::{TestContext, peers_required, repo_root};

/// peft merges in f64 here, so its ΔW differs from ours by rounding only (`~1e-16` relative);
/// 1e-6 relative to the largest entry is the issue's bar.
const DELTA_TOL: f64 = 1e-6;
/// Both sides are f64 SVDs of the same matrices (ours by the low-rank route): they agree to
/// `~1e-14`; 1e-9 relative is the issue's bar.
const METRIC_TOL: f64 = 1e-9;

/// The Python with the real `peft` (scripts/test.d/25-python-peft.sh).
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
pub(crate) fn peft_python() -> Option<PathBuf> {
    match std::env::var_os("HUBSWEEP_PEFT_PYTHON") {
        Some(path) => Some(path.into()),
        None if peers_required() => {
            panic!("HUBSWEEP_PEFT_PYTHON is not set: scripts/test.sh sets it")
        }
        None => {
            eprintln!("skip: HUBSWEEP_PEFT_PYTHON not set (run scripts/test.sh)");
            None
        }
    }
}

/// SmolLM2-135M as an HF folder under `ctx` (the GGUF of scripts/test.d/20-models.sh,
/// converted), when the asset is there.
#[allow(clippy::print_stderr)] // the skip note the conventions ask for
fn smollm2(ctx: &TestContext) -> Option<PathBuf> {
    let Some(gguf) = std::env::var_os("HUBSWEEP_SMOLLM2_GGUF") else {
        assert!(
            !peers_required(),
            "HUBSWEEP_SMOLLM2_GGUF is not set: scripts/test.sh sets it"
        );
        eprintln!("skip: HUBSWEEP_SMOLLM2_GGUF not set; no SmolLM2 adapter case");
        return None;
    };
    let dir = ctx.child("smollm2");
    hubsweep::model::gguf::convert_to_dir(Path::new(&gguf), &dir).expect("convert the GGUF");
    Some(dir)
}

/// Runs the peer recipe into `out` (with a SmolLM2 case when `smollm2` is given); the cases it
/// wrote.
fn save_with_peft(python: &Path, out: &Path, smollm2: Option<&Path>) -> Vec<Value> {
    let root = repo_root();
    let mut command = Command::new(python);
    command
        .arg(root.join("scripts/adapters/peft_peer.py"))
        .arg("--fixtures")
        .arg(root.join("tests/fixtures"))
        .arg("--out")
        .arg(out);
    if let Some(dir) = smollm2 {
        command.arg("--smollm2").arg(dir);
    }
    let output = command
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .expect("run the peft recipe");
    assert!(
        output.status.success(),
        "peft recipe failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cases = std::fs::read_to_string(out.join("cases.json")).expect("cases.json");
    serde_json::from_str::<Vec<Value>>(&cases).expect("cases")
}

/// A fixture's config and weight headers, tensors read as f64.
fn base(fixture: &str) -> (ModelConfig, Weights) {
    let files =
        ModelFiles::from_dir(&repo_root().join("tests/fixtures").join(fixture)).expect("fixture");
    let config = ModelConfig::from_file(&files.config).expect("config");
    let weights = Weights::read(&files.weights, &Device::Cpu, DType::F64).expect("weights");
    (config, weights)
}

/// Tensor `key` of `weights` as `d_out × d_in` f64 values, with its rows and columns.
fn matrix(
    weights: &Weights,
    key: &str,
    config: &ModelConfig,
    module: &str,
) -> (Vec<f64>, usize, usize) {
    let shape = weights.shape(key).expect("key").to_vec();
    let values = weights
        .get(key, &shape)
        .and_then(|t| {
            t.flatten_all()
                .and_then(|f| f.to_vec1::<f64>())
                .map_err(|source| hubsweep::model::ModelError::Tensor {
                    context: key.to_owned(),
                    source,
                })
        })
        .expect("tensor");
    config
        .family
        .matrix_layout(module)
        .to_out_in(values, shape[0], shape[1])
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Every whole update equals peft's merged-minus-base, and every fused part its split.
fn check_updates(name: &str, updates: &[ModuleUpdate], delta: &Weights, config: &ModelConfig) {
    let whole: BTreeSet<&str> = updates
        .iter()
        .filter(|u| u.part.is_none())
        .map(|u| u.base_key.as_str())
        .collect();
    let changed: BTreeSet<&str> = delta.keys().into_iter().collect();
    assert_eq!(
        whole, changed,
        "{name}: modules updated vs weights peft's merge changed"
    );
    for update in updates {
        let (peft, rows, cols) = matrix(delta, &update.base_key, config, &update.module);
        let expected = match update.part {
            None => peft,
            Some(part) => {
                let fused = config
                    .family
                    .matrix_layout(&update.module)
                    .fused_qkv
                    .expect("fused");
                let (groups, group_rows) = fused.groups(config.n_heads, config.head_dim);
                let split = split_fused_qkv(&peft, groups, group_rows, cols).expect("split");
                let parts = split.parts();
                parts
                    .iter()
                    .find(|(p, _)| *p == part)
                    .expect("part")
                    .1
                    .to_vec()
            }
        };
        let ours = update.update.dense();
        assert_eq!(
            ours.len(),
            expected.len(),
            "{name} {}: size",
            update.base_key
        );
        assert_eq!(update.update.d_in(), cols);
        assert!(update.part.is_some() || update.update.d_out() == rows);
        let scale = max_abs(&expected);
        assert!(
            scale > 0.0,
            "{name} {}: peft's update is zero",
            update.base_key
        );
        let error = ours
            .iter()
            .zip(&expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            error <= DELTA_TOL * scale,
            "{name} {} {:?}: max |ΔW − peft| = {error:e}, max |peft| = {scale:e}",
            update.base_key,
            update.part
        );
    }
}

fn close(what: &str, ours: f64, reference: f64) {
    assert!(
        (ours - reference).abs() <= METRIC_TOL * reference.abs() + 1e-13,
        "{what}: {ours} vs NumPy {reference}"
    );
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

/// The low-rank spectrum and the geometry against the base equal NumPy's figures.
fn check_metrics(
    name: &str,
    updates: &[ModuleUpdate],
    base: &Weights,
    config: &ModelConfig,
    reference: &Value,
) {
    let choices = [
        SubspaceChoice::Fixed(1),
        SubspaceChoice::Fixed(2),
        SubspaceChoice::SRANK,
    ];
    for update in updates.iter().filter(|u| u.part.is_none()) {
        let what = format!("{name} {}", update.base_key);
        let expected = &reference[&update.base_key];
        let svd = TruncatedSvd::of_low_rank(&update.update, Parallelism::Sequential).expect("svd");
        let (weight, rows, cols) = matrix(base, &update.base_key, config, &update.module);
        let weight = WeightMatrix::new(&weight, rows, cols).expect("weight");
        let base_svd =
            TruncatedSvd::of_weight(weight, update.update.rank().max(2), Parallelism::Sequential)
                .expect("base svd");
        let metrics = svd.metrics(0);
        let sigma = numbers(&expected["singular_values"]);
        for (index, reference) in sigma.iter().enumerate() {
            close(
                &format!("{what} σ{index}"),
                svd.singular_values[index],
                *reference,
            );
        }
        close(
            &format!("{what} stable rank"),
            metrics.stable_rank,
            expected["stable_rank"].as_f64().expect("f64"),
        );
        close(
            &format!("{what} effective rank"),
            metrics.effective_rank,
            expected["effective_rank"].as_f64().expect("f64"),
        );
        assert_eq!(
            metrics.k90 as u64,
            expected["k90"].as_u64().expect("k90"),
            "{what} k90"
        );
        assert_eq!(
            metrics.k99 as u64,
            expected["k99"].as_u64().expect("k99"),
            "{what} k99"
        );
        let geometry = update_geometry(&base_svd, &svd, &choices).expect("geometry");
        let rows_expected = expected["geometry"].as_array().expect("geometry");
        assert_eq!(
            geometry.alignments.len(),
            rows_expected.len(),
            "{what}: sizes"
        );
        for (ours, reference) in geometry.alignments.iter().zip(rows_expected) {
            let at = format!("{what} k={}", ours.choice);
            assert_eq!(ours.k as u64, reference["k"].as_u64().expect("k"), "{at}");
            assert_eq!(
                ours.choice.to_string(),
                reference["choice"].to_string().trim_matches('"'),
                "{at}"
            );
            close(
                &format!("{at} p_left"),
                ours.p_left,
                reference["p_left"].as_f64().expect("f64"),
            );
            close(
                &format!("{at} p_right"),
                ours.p_right,
                reference["p_right"].as_f64().expect("f64"),
            );
            close(
                &format!("{at} bonus_left"),
                ours.bonus_left,
                reference["p_left"].as_f64().expect("f64") * rows as f64 / ours.k as f64,
            );
            for (side, cosines) in [("left", &ours.cosines_left), ("right", &ours.cosines_right)] {
                let expected = numbers(&reference[format!("cosines_{side}")]);
                assert_eq!(cosines.len(), expected.len());
                for (a, b) in cosines.iter().zip(&expected) {
                    close(&format!("{at} cos_{side}"), *a, *b);
                }
            }
        }
    }
}

#[test]
fn peft_adapters_give_peft_updates_and_numpy_metrics() {
    let Some(python) = peft_python() else { return };
    let ctx = TestContext::new();
    let out = ctx.child("peft");
    let smollm2 = smollm2(&ctx);
    let cases = save_with_peft(&python, &out, smollm2.as_deref());
    let mut checked = BTreeMap::new();
    for case in &cases {
        let name = case["name"].as_str().expect("name");
        let dir = out.join(name);
        let adapter = LoraAdapter::open(&dir.join("adapter"));
        if case["kind"] == "ia3" {
            let error = adapter.expect_err("an IA3 adapter is refused");
            assert!(
                matches!(&error, AdapterError::NotLora { peft_type, .. } if peft_type == "IA3"),
                "{error}"
            );
            continue;
        }
        let adapter = adapter.expect("open");
        assert!(
            adapter.other_tensors().is_empty(),
            "{name}: {:?}",
            adapter.other_tensors()
        );
        let (config, weights) = base(case["fixture"].as_str().expect("fixture"));
        let updates = adapter.updates(&config, &weights).expect("updates");
        let delta = Weights::read(&[dir.join("delta.safetensors")], &Device::Cpu, DType::F64)
            .expect("delta");
        check_updates(name, &updates, &delta, &config);
        let reference: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reference.json")).expect("reference"),
        )
        .expect("json");
        check_metrics(name, &updates, &weights, &config, &reference);
        checked.insert(name.to_owned(), updates.len());
    }
    // Fused parts: 3 NeoX layers × (qkv + 3 parts) + 3 dense in the default case.
    assert_eq!(checked.get("neox_default"), Some(&15), "{checked:?}");
    // SmolLM2: q, v and down projections at layers 0, 15 and 29 only.
    if smollm2.is_some() {
        assert_eq!(checked.get("smollm2"), Some(&9), "{checked:?}");
    }
    assert_eq!(
        checked.len(),
        6 + usize::from(smollm2.is_some()),
        "{checked:?}"
    );
}

#[test]
fn an_adapter_for_another_base_is_refused_naming_the_module() {
    // A Llama adapter against the GPT-NeoX fixture: its modules do not exist there.
    let ctx = TestContext::new();
    let dir = ctx.child("adapter");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"]}"#,
    )
    .expect("config");
    let a = [0u8; 4 * 64];
    let b = [0u8; 4 * 64];
    let views = [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            vec![1, 64],
            &a[..],
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            vec![64, 1],
            &b[..],
        ),
    ]
    .map(|(key, shape, data)| {
        (
            key,
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data)
                .expect("view"),
        )
    });
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(dir.join("adapter_model.safetensors"), bytes).expect("weights");
    let (config, weights) = base("gpt_neox_tiny");
    let error = LoraAdapter::open(&dir)
        .expect("open")
        .updates(&config, &weights)
        .expect_err("wrong base");
    let message = error.to_string();
    assert!(
        message.contains("model.layers.0.self_attn.q_proj.weight")
            && message.contains("is the base model"),
        "{message}"
    );
}
