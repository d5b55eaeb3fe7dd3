use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::*;

fn config(text: &str) -> Result<LoraConfig, AdapterError> {
    LoraConfig::from_json_str(text, Path::new("adapter_config.json"))
}

const NEOX_QKV: &str = "gpt_neox.layers.0.attention.query_key_value";

#[test]
fn patterns_follow_peft_key_matching() {
    let config = config(
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16,
            "rank_pattern": {"query_key_value": 4, "layers\\.1\\.mlp\\.dense_h_to_4h": 2,
                             "mlp\\..*": 6},
            "alpha_pattern": {"layers.2.mlp.dense_4h_to_h": 3.5}}"#,
    )
    .expect("valid");
    assert_eq!(config.rank_for(NEOX_QKV), 4);
    assert_eq!(config.rank_for("gpt_neox.layers.1.mlp.dense_h_to_4h"), 2);
    // The first matching key wins, in the file's order.
    assert_eq!(config.rank_for("gpt_neox.layers.0.mlp.dense_h_to_4h"), 6);
    assert_eq!(config.rank_for("gpt_neox.layers.0.attention.dense"), 8);
    // A key matches whole segments at the end of the name: `value` is not `query_key_value`.
    let config_value = self::config(
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "rank_pattern": {"value": 1}}"#,
    )
    .expect("valid");
    assert_eq!(config_value.rank_for(NEOX_QKV), 8);
    assert_eq!(config.alpha_for("gpt_neox.layers.2.mlp.dense_4h_to_h"), 3.5);
    assert_eq!(
        config.alpha_for("gpt_neox.layers.1.mlp.dense_4h_to_h"),
        16.0
    );
    assert_eq!(config.scale_for(NEOX_QKV), 16.0 / 4.0);
    assert_eq!(
        config.scale_for("gpt_neox.layers.2.mlp.dense_4h_to_h"),
        3.5 / 6.0
    );
}

#[test]
fn rslora_scales_by_the_square_root_of_the_rank() {
    let config = config(r#"{"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": true}"#)
        .expect("valid");
    assert_eq!(config.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
}

#[test]
fn target_modules_match_like_peft() {
    let names = config(r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["query_key_value", "dense"]}"#)
        .expect("valid");
    let targets = names.target_modules.as_ref().expect("named");
    assert!(targets.targets(NEOX_QKV));
    assert!(targets.targets("gpt_neox.layers.0.attention.dense"));
    assert!(!targets.targets("gpt_neox.layers.0.mlp.dense_h_to_4h"));
    assert!(!targets.targets("gpt_neox.layers.0.attention.xquery_key_value"));
    let regex = config(r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ".*\\.layers\\.[01]\\.attention\\.dense"}"#)
        .expect("valid");
    let targets = regex.target_modules.as_ref().expect("regex");
    assert!(targets.targets("gpt_neox.layers.1.attention.dense"));
    assert!(!targets.targets("gpt_neox.layers.2.attention.dense"));
}

#[test]
fn configs_that_are_not_plain_lora_are_refused_with_the_key() {
    let error = config(r#"{"peft_type": "IA3", "r": 8}"#).expect_err("not lora");
    let message = error.to_string();
    assert!(
        message.contains("`peft_type` is `IA3`") && message.contains("merge_and_unload"),
        "{message}"
    );
    let error = config(r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 8, "use_dora": true}"#)
        .expect_err("dora");
    assert!(
        matches!(&error, AdapterError::Unsupported { key, .. } if key == "use_dora"),
        "{error}"
    );
    let error = config(r#"{"r": 8, "lora_alpha": 8}"#).expect_err("no type");
    assert!(matches!(&error, AdapterError::InvalidConfig { key, .. } if key == "peft_type"));
    let error = config(r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8}"#).expect_err("r");
    assert!(matches!(&error, AdapterError::InvalidConfig { key, .. } if key == "r"));
    let error =
        config(r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"(": 2}}"#)
            .expect_err("regex");
    assert!(
        matches!(&error, AdapterError::InvalidConfig { key, .. } if key == "rank_pattern.("),
        "{error}"
    );
}

// ---- adapters on the tiny GPT-NeoX fixture (3 layers, d = 64, 4 heads of 16) ----

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt_neox_tiny")
}

fn base() -> (ModelConfig, Weights) {
    let dir = fixture();
    let config = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let weights =
        Weights::read(&[dir.join("model.safetensors")], &Device::Cpu, DType::F32).expect("weights");
    (config, weights)
}

/// A tensor as F32 bytes with its shape.
type Tensor = (Vec<usize>, Vec<f32>);

/// Writes an adapter folder: its config and its tensors (F32).
fn write_adapter(dir: &Path, config: &str, tensors: &[(String, Tensor)]) {
    use safetensors::tensor::TensorView;
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join(ADAPTER_CONFIG), config).expect("config");
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(key, (shape, values))| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (key.clone(), shape.clone(), data)
        })
        .collect();
    let views = bytes.iter().map(|(key, shape, data)| {
        let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), data).expect("view");
        (key.clone(), view)
    });
    let file = safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize");
    std::fs::write(dir.join(ADAPTER_WEIGHTS), file).expect("weights");
}

fn factor(rows: usize, cols: usize, seed: f32) -> Tensor {
    let values = (0..rows * cols)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 0.5)
        .collect();
    (vec![rows, cols], values)
}

fn key(module: &str, factor: &str) -> String {
    format!("base_model.model.{module}.{factor}.weight")
}

const QKV_CONFIG: &str = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 6,
    "target_modules": ["query_key_value", "dense"], "base_model_name_or_path": "tiny"}"#;

#[test]
fn a_fused_qkv_update_comes_whole_and_split_per_head() {
    let temp = tempfile::tempdir().expect("temp");
    let (a, b) = (factor(2, 64, 0.1), factor(192, 2, 0.7));
    write_adapter(
        temp.path(),
        QKV_CONFIG,
        &[
            (key(NEOX_QKV, "lora_A"), a.clone()),
            (key(NEOX_QKV, "lora_B"), b.clone()),
        ],
    );
    let adapter = LoraAdapter::open(temp.path()).expect("open");
    assert_eq!(
        adapter.config().base_model_name_or_path.as_deref(),
        Some("tiny")
    );
    assert!(adapter.other_tensors().is_empty());
    let (config, weights) = base();
    let updates = adapter.updates(&config, &weights).expect("updates");
    let parts: Vec<Option<&str>> = updates.iter().map(|u| u.part).collect();
    assert_eq!(parts, [None, Some("query"), Some("key"), Some("value")]);
    let whole = &updates[0];
    assert_eq!(
        (whole.layer, whole.module.as_str()),
        (Some(0), "attention.query_key_value")
    );
    assert_eq!(whole.base_key, format!("{NEOX_QKV}.weight"));
    assert_eq!(
        (
            whole.update.d_out(),
            whole.update.d_in(),
            whole.update.rank()
        ),
        (192, 64, 2)
    );
    assert_eq!(whole.update.scale(), 3.0);
    // ΔW[i, j] = 3 · Σ_r B[i, r] A[r, j], from the f32 values.
    let dense = whole.update.dense();
    let expected = |i: usize, j: usize| {
        3.0 * (0..2)
            .map(|r| f64::from(b.1[i * 2 + r]) * f64::from(a.1[r * 64 + j]))
            .sum::<f64>()
    };
    for (i, j) in [(0, 0), (17, 5), (191, 63)] {
        assert!((dense[i * 64 + j] - expected(i, j)).abs() < 1e-15);
    }
    // Head 1's key rows are fused rows 3·16 + 16 .. 3·16 + 32.
    let key_part = updates[2].update.dense();
    assert_eq!(key_part[16 * 64 + 7], dense[(48 + 16) * 64 + 7]);
}

#[test]
fn mismatches_with_the_base_are_located_errors() {
    let (config, weights) = base();
    let temp = tempfile::tempdir().expect("temp");
    let case = |name: &str, config_text: &str, tensors: Vec<(String, Tensor)>| {
        let dir = temp.path().join(name);
        write_adapter(&dir, config_text, &tensors);
        let adapter = LoraAdapter::open(&dir)?;
        adapter.updates(&config, &weights).map(|_| ())
    };
    // Rank 3 in the file, 2 in the config.
    let error = case(
        "rank",
        QKV_CONFIG,
        vec![
            (key(NEOX_QKV, "lora_A"), factor(3, 64, 0.0)),
            (key(NEOX_QKV, "lora_B"), factor(192, 3, 0.0)),
        ],
    )
    .expect_err("rank");
    assert!(
        matches!(&error, AdapterError::FactorShape { key, found, .. } if key.ends_with("lora_A.weight") && found == &[3, 64]),
        "{error}"
    );
    // A base with another width.
    let error = case(
        "width",
        QKV_CONFIG,
        vec![
            (key(NEOX_QKV, "lora_A"), factor(2, 32, 0.0)),
            (key(NEOX_QKV, "lora_B"), factor(192, 2, 0.0)),
        ],
    )
    .expect_err("width");
    assert!(error.to_string().contains("64 input features"), "{error}");
    // A module the base does not have.
    let error = case(
        "missing",
        QKV_CONFIG,
        vec![
            (
                key("gpt_neox.layers.7.attention.dense", "lora_A"),
                factor(2, 64, 0.0),
            ),
            (
                key("gpt_neox.layers.7.attention.dense", "lora_B"),
                factor(64, 2, 0.0),
            ),
        ],
    )
    .expect_err("missing");
    assert!(
        matches!(&error, AdapterError::BaseModuleMissing { base_key, .. } if base_key == "gpt_neox.layers.7.attention.dense.weight"),
        "{error}"
    );
    // One factor only.
    let error = case(
        "half",
        QKV_CONFIG,
        vec![(key(NEOX_QKV, "lora_A"), factor(2, 64, 0.0))],
    )
    .expect_err("half");
    assert!(
        matches!(&error, AdapterError::MissingFactor { missing, .. } if missing.ends_with("lora_B.weight"))
    );
    // A module target_modules does not name.
    let error = case(
        "untargeted",
        QKV_CONFIG,
        vec![
            (
                key("gpt_neox.layers.0.mlp.dense_h_to_4h", "lora_A"),
                factor(2, 64, 0.0),
            ),
            (
                key("gpt_neox.layers.0.mlp.dense_h_to_4h", "lora_B"),
                factor(256, 2, 0.0),
            ),
        ],
    )
    .expect_err("untargeted");
    assert!(matches!(&error, AdapterError::Untargeted { .. }), "{error}");
    // A NaN, located by key, row and column.
    let mut b = factor(192, 2, 0.0);
    b.1[5 * 2 + 1] = f32::NAN;
    let error = case(
        "nan",
        QKV_CONFIG,
        vec![
            (key(NEOX_QKV, "lora_A"), factor(2, 64, 0.0)),
            (key(NEOX_QKV, "lora_B"), b),
        ],
    )
    .expect_err("nan");
    assert!(
        matches!(&error, AdapterError::NonFinite { key, row: 5, column: 1, .. } if key.ends_with("lora_B.weight")),
        "{error}"
    );
    // LoRA on an embedding.
    let error = case(
        "embedding",
        QKV_CONFIG,
        vec![(
            "base_model.model.gpt_neox.embed_in.lora_embedding_A".into(),
            factor(2, 320, 0.0),
        )],
    )
    .expect_err("embedding");
    assert!(
        matches!(&error, AdapterError::Unsupported { .. }),
        "{error}"
    );
}

#[test]
fn missing_files_say_what_to_do() {
    let temp = tempfile::tempdir().expect("temp");
    let error = LoraAdapter::open(temp.path()).expect_err("empty");
    assert!(matches!(
        error,
        AdapterError::MissingFile {
            file: ADAPTER_CONFIG,
            ..
        }
    ));
    std::fs::write(temp.path().join(ADAPTER_CONFIG), QKV_CONFIG).expect("config");
    std::fs::write(temp.path().join("adapter_model.bin"), b"pickle").expect("bin");
    let error = LoraAdapter::open(temp.path()).expect_err("bin only");
    assert!(error.to_string().contains("safe_serialization"), "{error}");
}
