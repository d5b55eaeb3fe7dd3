//! Bad input gives a clear error naming the file and key, never a panic.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hubsweep::model::{HookRequest, Model, ModelError, ModelFiles};

use super::fixture;
use crate::common::TestContext;

/// Copies a fixture into the test's temp dir so it can be damaged.
pub(super) fn copy_fixture(ctx: &TestContext, name: &str) -> std::path::PathBuf {
    let dir = ctx.child(name);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

pub(super) fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
}

pub(super) fn load(dir: &Path) -> Result<Model, ModelError> {
    Model::load(&ModelFiles::from_dir(dir)?, &Device::Cpu, DType::F32)
}

#[test]
fn missing_weight_names_file_and_key() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "gpt_neox_tiny");
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("gpt_neox.layers.1.mlp.dense_4h_to_h.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`gpt_neox.layers.1.mlp.dense_4h_to_h.bias`"),
        "{err}"
    );
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn misshaped_weight_names_key_and_shapes() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "llama_tiny");
    edit_config(&dir, |c| c["intermediate_size"] = 128.into());
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::WeightShape { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("`model.layers.0.mlp.gate_proj.weight`") && msg.contains("[176, 64]"),
        "{msg}"
    );
}

#[test]
fn wrongly_typed_weight_is_refused() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "llama_tiny");
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert(
        "model.norm.weight".into(),
        Tensor::zeros(64, DType::U32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`model.norm.weight`") && err.contains("U32"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_names_the_file() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "gpt_neox_tiny_seq");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn missing_shard_names_the_file() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "llama_tiny_llama3");
    std::fs::remove_file(dir.join("model-00003-of-00004.safetensors")).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(err.contains("model-00003-of-00004.safetensors"), "{err}");
}

#[test]
fn unsupported_model_type_and_rope_scaling() {
    let ctx = TestContext::new();
    let dir = copy_fixture(&ctx, "llama_tiny");
    edit_config(&dir, |c| c["model_type"] = "falcon".into());
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("model_type `falcon`") && err.contains("config.json"),
        "{err}"
    );

    let dir = copy_fixture(&ctx, "llama_tiny_llama3");
    edit_config(&dir, |c| c["rope_parameters"]["rope_type"] = "yarn".into());
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("rope scaling `yarn`") && err.contains("config.json"),
        "{err}"
    );

    let dir = ctx.child("no-config");
    std::fs::create_dir_all(&dir).unwrap();
    let err = ModelFiles::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn bad_hooks_are_refused_before_running() {
    let model = load(&fixture("gpt_neox_tiny")).unwrap();
    let cfg = model.config();
    let err = HookRequest::new(&["blocks.0.hook_resid_pots"], cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("did you mean `blocks.0.hook_resid_post`"),
        "{err}"
    );
    let err = HookRequest::new(&["blocks.3.hook_resid_post"], cfg)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer `3` is out of range") && err.contains("3 layers"),
        "{err}"
    );
    let err = HookRequest::new(&["blocks.0.hook_resid_mid"], cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("parallel-residual"), "{err}");
    let err = HookRequest::new(&["blocks.0.mlp.hook_pre_linear"], cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gated"), "{err}");
}

#[test]
fn bad_input_ids_are_refused() {
    let model = load(&fixture("llama_tiny")).unwrap();
    let request = model.request(&["blocks.0.hook_resid_post"]).unwrap();
    let too_big = Tensor::new(&[[1u32, 320]], &Device::Cpu).unwrap();
    let err = model.forward(&too_big, &request).unwrap_err().to_string();
    assert!(err.contains("`320`") && err.contains("vocab_size"), "{err}");
    let flat = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    assert!(model.forward(&flat, &request).is_err());
}

#[test]
fn gguf_import_refuses_other_architectures_and_non_gguf_files() {
    use candle_core::quantized::gguf_file::{self, Value};
    use hubsweep::model::gguf::{GgufError, convert_to_dir};
    let ctx = TestContext::new();
    let path = ctx.child("gpt2.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let arch = Value::String("gpt2".into());
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let err = convert_to_dir(&path, &ctx.child("out")).unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("`gpt2`") && err.to_string().contains("gpt2.gguf"),
        "{err}"
    );

    let not_gguf = ctx.child("model.gguf");
    std::fs::write(&not_gguf, b"definitely not a gguf file").unwrap();
    let err = convert_to_dir(&not_gguf, &ctx.child("out2")).unwrap_err();
    assert!(
        matches!(err, GgufError::Read { .. }) && err.to_string().contains("model.gguf"),
        "{err}"
    );
}
