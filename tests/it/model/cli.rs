//! `hubsweep capture` and `hubsweep inspect model` through the binary.

use candle_core::{DType, Device};
use predicates::prelude::*;

use super::{excess, fixture, reference};
use crate::common::TestContext;

#[test]
fn capture_writes_requested_hooks_matching_the_reference() {
    let ctx = TestContext::new();
    let refs = reference("llama_tiny");
    let rows: Vec<Vec<i64>> = refs["input_ids"].to_vec2().unwrap();
    std::fs::write(ctx.child("ids.json"), serde_json::to_string(&rows).unwrap()).unwrap();
    let out = ctx.child("acts.safetensors");
    ctx.command()
        .args(["capture", "--model"])
        .arg(fixture("llama_tiny"))
        .args([
            "--ids",
            "ids.json",
            "--hooks",
            "hook_resid_post,attn.hook_pattern,ln_final.hook_out",
        ])
        .args(["--layers", "0,-1", "--out", "acts.safetensors"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "blocks.2.hook_resid_post\t[2, 12, 64]\tF32",
        ));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blocks.0.attn.hook_pattern",
            "blocks.0.hook_resid_post",
            "blocks.2.attn.hook_pattern",
            "blocks.2.hook_resid_post",
            "input_ids",
            "ln_final.hook_out"
        ]
    );
    for name in names.iter().filter(|n| n.as_str() != "input_ids") {
        assert!(
            excess(&got[*name], &refs[*name], 1e-4, 1e-4) <= 0.0,
            "{name}"
        );
    }
    assert_eq!(got["input_ids"].to_vec2::<i64>().unwrap(), rows);
}

#[test]
fn capture_from_text_in_bf16_via_the_hf_cache() {
    let ctx = TestContext::new();
    // TestContext sets HF_HOME to ctx/hf-home and HF_HUB_OFFLINE=1: the cache must serve it.
    let sha = "fedcba9876543210fedcba9876543210fedcba98";
    let repo = ctx.child("hf-home/hub/models--tiny--neox");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/step1000"), sha).unwrap();
    let snapshot = repo.join("snapshots").join(sha);
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("gpt_neox_tiny_seq").join(f), snapshot.join(f)).unwrap();
    }
    ctx.command()
        .args([
            "capture",
            "--model",
            "tiny/neox@step1000",
            "--text",
            "The quick brown fox",
            "--text",
        ])
        .args([
            "The lazy dog jumps",
            "--hooks",
            "blocks.1.hook_resid_mid",
            "--dtype",
            "bf16",
        ])
        .args(["--out", "a.safetensors"])
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains("equal lengths"));
    ctx.command()
        .args([
            "capture",
            "--model",
            "tiny/neox@step1000",
            "--text",
            "The quick brown fox",
        ])
        .args([
            "--hooks",
            "blocks.1.hook_resid_mid",
            "--dtype",
            "bf16",
            "--out",
            "a.safetensors",
        ])
        .assert()
        .success();
    let got = candle_core::safetensors::load(ctx.child("a.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(got["blocks.1.hook_resid_mid"].dtype(), DType::BF16);
    let tok =
        tokenizers::Tokenizer::from_file(fixture("tokenizer").join("tokenizer.json")).unwrap();
    let ids: Vec<i64> = tok
        .encode("The quick brown fox", false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(got["input_ids"].to_vec2::<i64>().unwrap(), [ids]);
}

#[test]
fn capture_refuses_bad_requests_with_exit_code_2() {
    let ctx = TestContext::new();
    let model = fixture("gpt_neox_tiny");
    let run = |extra: &[&str]| {
        ctx.command()
            .args(["capture", "--model"])
            .arg(&model)
            .args(["--text", "The quick", "--out", "x.safetensors"])
            .args(extra)
            .assert()
            .failure()
            .code(2)
    };
    run(&["--hooks", "hook_resid_mid"]).stderr(predicate::str::contains("parallel-residual"));
    run(&["--hooks", "hook_resid_post", "--layers", "7"])
        .stderr(predicate::str::contains("layer `7` is out of range"));
    run(&["--hooks", "attn.hook_zz"])
        .stderr(predicate::str::contains("did you mean `attn.hook_z`"));
    #[cfg(not(feature = "cuda"))]
    run(&["--hooks", "hook_resid_post", "--device", "cuda:0"])
        .stderr(predicate::str::contains("--features cuda"));
    ctx.command()
        .args([
            "capture",
            "--model",
            "nobody/nothing",
            "--text",
            "a",
            "--hooks",
            "logits",
            "--out",
            "x.safetensors",
        ])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("not in the cache")
                .and(predicate::str::contains("HF_HUB_OFFLINE")),
        );
    assert!(!ctx.child("x.safetensors").exists());
}

#[test]
fn inspect_model_lists_dimensions_and_hooks() {
    let ctx = TestContext::new();
    ctx.command()
        .args(["inspect", "model"])
        .arg(fixture("gpt_neox_tiny"))
        .assert()
        .success()
        .stdout(
            predicate::str::contains("family       gpt_neox")
                .and(predicate::str::contains("residual     parallel"))
                .and(predicate::str::contains("stored dtype F16"))
                .and(predicate::str::contains("blocks.{0..2}.attn.hook_z"))
                .and(predicate::str::contains("hook_resid_mid").not()),
        );
    let out = ctx
        .command()
        .args(["inspect", "model", "--json"])
        .arg(fixture("llama_tiny_llama3"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["config"]["n_kv_heads"], 2);
    assert_eq!(value["config"]["rope"]["llama3_scaling"]["factor"], 8.0);
    assert!(
        value["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "blocks.{0..2}.mlp.hook_pre_linear")
    );
}
