//! GPT-2, Qwen2/2.5, Qwen3 and Mistral: every hook against transformers, batch and single
//! window, with and without BOS; the family-specific parts (biases, `Conv1D` orientation,
//! q/k norms, learned positions, sliding windows) and a checkpoint read as the wrong family.

use candle_core::{DType, Device, Tensor};
use hubsweep::model::{Family, HookRequest, ModelError};

use super::errors::{copy_fixture, edit_config, load};
use super::fixtures::{check_all_hooks, check_window};
use super::{excess, fixture, reference};
use crate::common::TestContext;

const TOL: f32 = 1e-4;

const NEW_FIXTURES: [(&str, Family); 5] = [
    ("gpt2_tiny", Family::Gpt2),
    ("qwen2_tiny", Family::Qwen2),
    ("qwen2_tiny_untied", Family::Qwen2),
    ("qwen3_tiny", Family::Qwen3),
    ("mistral_tiny", Family::Mistral),
];

/// The batch of every new fixture holds one row without BOS and one starting with it.
fn assert_bos_rows(name: &str) {
    let model = load(&fixture(name)).unwrap();
    let bos = model
        .config()
        .bos_token_id
        .expect("fixture config names a BOS");
    let ids: Vec<Vec<i64>> = reference(name)["input_ids"].to_vec2().unwrap();
    assert_ne!(
        ids[0][0],
        i64::from(bos),
        "{name}: row 0 must not start with BOS"
    );
    assert_eq!(
        ids[1][0],
        i64::from(bos),
        "{name}: row 1 must start with BOS"
    );
}

fn check_family(name: &str) {
    assert_bos_rows(name);
    check_all_hooks(name);
    check_window(name, Some(0));
    check_window(name, Some(1));
}

#[test]
fn gpt2_matches_transformers_at_every_hook() {
    check_family("gpt2_tiny");
}

#[test]
fn qwen2_tied_bf16_matches_transformers_at_every_hook() {
    check_family("qwen2_tiny");
}

#[test]
fn qwen2_untied_matches_transformers_at_every_hook() {
    check_family("qwen2_tiny_untied");
}

#[test]
fn qwen3_matches_transformers_at_every_hook() {
    check_family("qwen3_tiny");
}

#[test]
fn mistral_matches_transformers_at_every_hook() {
    check_family("mistral_tiny");
}

/// Each fixture is read as the family its config names, and offers the family's hooks only.
#[test]
fn families_and_their_hooks() {
    for (name, family) in NEW_FIXTURES {
        let model = load(&fixture(name)).unwrap();
        let cfg = model.config();
        assert_eq!(cfg.family, family, "{name}");
        let refused = |hook: &str| {
            matches!(
                HookRequest::new(&[hook], cfg),
                Err(ModelError::HookNotInModel { .. })
            )
        };
        assert_eq!(refused("hook_pos_embed"), family != Family::Gpt2, "{name}");
        assert_eq!(
            refused("blocks.0.attn.hook_rot_q"),
            family == Family::Gpt2,
            "{name}"
        );
        assert_eq!(
            refused("blocks.0.attn.q_norm.hook_normalized"),
            family != Family::Qwen3,
            "{name}"
        );
        assert_eq!(
            refused("blocks.0.mlp.hook_pre_linear"),
            family == Family::Gpt2,
            "{name}"
        );
        assert!(!refused("blocks.0.hook_resid_mid"), "{name}");
    }
    // The older fixtures keep their hooks: no learned positions, no q/k norm.
    let neox = load(&fixture("gpt_neox_tiny")).unwrap();
    let err = HookRequest::new(&["hook_pos_embed"], neox.config()).unwrap_err();
    assert!(err.to_string().contains("rotary"), "{err}");
}

/// Qwen2's q/k/v biases are read and applied: the fixture's biases are large enough that a
/// forward without them leaves the tolerance (so the parity test would catch a dropped bias),
/// and a checkpoint without them is refused, not run bias-free.
#[test]
fn qwen2_qkv_biases_are_applied() {
    let ctx = TestContext::new();
    let refs = reference("qwen2_tiny_untied");
    let hooks = [
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
    ];
    let model = load(&fixture("qwen2_tiny_untied")).unwrap();
    assert!(model.config().attention_bias && !model.config().attention_out_bias);
    let request = model.request(&hooks).unwrap();
    let acts = model.forward(&refs["input_ids"], &request).unwrap();
    for hook in hooks {
        assert!(
            excess(acts.get(hook).unwrap(), &refs[hook], TOL, TOL) <= 0.0,
            "{hook}"
        );
    }

    let dir = copy_fixture(&ctx, "qwen2_tiny_untied");
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for p in ["q", "k", "v"] {
        let key = format!("model.layers.0.self_attn.{p}_proj.bias");
        let zero = tensors[&key].zeros_like().unwrap();
        tensors.insert(key, zero);
    }
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let zeroed = load(&dir).unwrap();
    let acts = zeroed.forward(&refs["input_ids"], &request).unwrap();
    for hook in hooks {
        let over = excess(acts.get(hook).unwrap(), &refs[hook], TOL, TOL);
        assert!(
            over > 1e-2,
            "{hook}: without its bias it is only {over:e} off"
        );
    }

    tensors.remove("model.layers.1.self_attn.k_proj.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`model.layers.1.self_attn.k_proj.bias`"),
        "{err}"
    );
}

/// GPT-2's `Conv1D` weights are stored `[in, out]`. The square `attn.c_proj` (64×64) would
/// pass a shape check either way; the fixture's is far from symmetric, so reading it in the
/// `nn.Linear` orientation takes `hook_attn_out` out of tolerance, and the non-square ones
/// (`c_attn` 64×192, `c_fc` 64×256) are refused by shape.
#[test]
fn gpt2_conv1d_weights_are_read_input_major() {
    let ctx = TestContext::new();
    let refs = reference("gpt2_tiny");
    let hooks = ["blocks.0.hook_attn_out", "blocks.0.mlp.hook_pre"];
    let model = load(&fixture("gpt2_tiny")).unwrap();
    let request = model.request(&hooks).unwrap();
    let acts = model.forward(&refs["input_ids"], &request).unwrap();
    for hook in hooks {
        assert!(
            excess(acts.get(hook).unwrap(), &refs[hook], TOL, TOL) <= 0.0,
            "{hook}"
        );
    }

    let dir = copy_fixture(&ctx, "gpt2_tiny");
    let path = dir.join("model.safetensors");
    let original = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut tensors = original.clone();
    let key = "transformer.h.0.attn.c_proj.weight";
    let square = &tensors[key];
    assert_eq!(square.dims(), [64, 64]);
    let transposed = square.t().unwrap().contiguous().unwrap();
    tensors.insert(key.to_owned(), transposed);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let acts = load(&dir)
        .unwrap()
        .forward(&refs["input_ids"], &request)
        .unwrap();
    let over = excess(
        acts.get("blocks.0.hook_attn_out").unwrap(),
        &refs["blocks.0.hook_attn_out"],
        TOL,
        TOL,
    );
    assert!(over > 1e-2, "a transposed c_proj is only {over:e} off");

    let mut tensors = original;
    let key = "transformer.h.0.mlp.c_fc.weight";
    let fc = tensors[key].t().unwrap().contiguous().unwrap();
    tensors.insert(key.to_owned(), fc);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, ModelError::WeightShape { .. }), "{err}");
    assert!(err.to_string().contains("[64, 256]"), "{err}");
}

/// A checkpoint whose `model_type` names the wrong family is refused, naming the weight that
/// gives it away; with `model_type` absent, `architectures` names the family.
#[test]
fn a_checkpoint_read_as_the_wrong_family_is_refused() {
    let ctx = TestContext::new();
    for (name, wrong, needle) in [
        // Llama and Mistral blocks would drop Qwen2's q/k/v biases.
        ("qwen2_tiny", "llama", "_proj.bias"),
        ("qwen2_tiny", "mistral", "_proj.bias"),
        // A Qwen2 block needs biases Qwen3 does not have.
        (
            "qwen3_tiny",
            "qwen2",
            "model.layers.0.self_attn.q_proj.bias",
        ),
        // A Llama block would skip Qwen3's q/k norms.
        ("qwen3_tiny", "llama", "self_attn.k_norm.weight"),
        (
            "mistral_tiny",
            "qwen3",
            "model.layers.0.self_attn.q_norm.weight",
        ),
        // GPT-2 spells its config keys differently: a Llama reading finds none.
        ("gpt2_tiny", "llama", "`intermediate_size` is missing"),
        // ...and a Llama config read as GPT-2 names an activation GPT-2 does not have.
        ("llama_tiny", "gpt2", "`hidden_act` `silu` is not supported"),
    ] {
        let dir = copy_fixture(&ctx, name);
        edit_config(&dir, |c| c["model_type"] = wrong.into());
        let err = match load(&dir) {
            Ok(_) => panic!("{name} read as {wrong} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{name} as {wrong}: {err}");
    }
    let dir = copy_fixture(&ctx, "qwen3_tiny");
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("model_type");
    });
    assert_eq!(load(&dir).unwrap().config().family, Family::Qwen3);
    edit_config(&dir, |c| {
        c["architectures"] = serde_json::json!(["FalconForCausalLM"])
    });
    let err = load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`FalconForCausalLM`") && err.contains("`qwen3`"),
        "{err}"
    );
}

/// Sliding windows and GPT-2's position table: a sequence the model cannot run exactly is
/// refused; within the limit it runs.
#[test]
fn sequences_past_a_sliding_window_or_the_position_table_are_refused() {
    let ctx = TestContext::new();
    let refs_ids = |name: &str| reference(name)["input_ids"].clone();
    let resid = ["blocks.0.hook_resid_post"];

    let dir = copy_fixture(&ctx, "mistral_tiny");
    edit_config(&dir, |c| c["sliding_window"] = 8.into());
    let model = load(&dir).unwrap();
    let request = model.request(&resid).unwrap();
    let ids = refs_ids("mistral_tiny");
    let err = model.forward(&ids, &request).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::SequenceTooLong {
                seq_len: 12,
                limit: 8,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("sliding"), "{err}");
    model
        .forward(&ids.narrow(1, 0, 8).unwrap(), &request)
        .unwrap();
    // Mistral's default window (key absent) is 4096; `null` means none.
    edit_config(&dir, |c| {
        c.as_object_mut().unwrap().remove("sliding_window");
    });
    assert_eq!(load(&dir).unwrap().config().sliding_window, Some(4096));
    edit_config(&dir, |c| c["sliding_window"] = serde_json::Value::Null);
    assert_eq!(load(&dir).unwrap().config().sliding_window, None);

    // Qwen2 slides only from `max_window_layers` on, and only with `use_sliding_window`.
    let dir = copy_fixture(&ctx, "qwen2_tiny");
    let qwen = |dir: &std::path::Path| load(dir).unwrap().config().sliding_window;
    edit_config(&dir, |c| {
        c["sliding_window"] = 4.into();
        c["max_window_layers"] = 1.into();
        c.as_object_mut().unwrap().remove("layer_types");
    });
    assert_eq!(qwen(&dir), None, "use_sliding_window is false");
    edit_config(&dir, |c| c["use_sliding_window"] = true.into());
    assert_eq!(qwen(&dir), Some(4));
    let model = load(&dir).unwrap();
    let err = model
        .forward(&refs_ids("qwen2_tiny"), &model.request(&resid).unwrap())
        .unwrap_err();
    assert!(
        matches!(err, ModelError::SequenceTooLong { limit: 4, .. }),
        "{err}"
    );
    edit_config(&dir, |c| c["max_window_layers"] = 3.into());
    assert_eq!(qwen(&dir), None, "no layer at or past max_window_layers");

    let model = load(&fixture("gpt2_tiny")).unwrap();
    assert_eq!(model.config().max_positions, Some(64));
    let long = Tensor::zeros((1, 65), DType::U32, &Device::Cpu).unwrap();
    let err = model
        .forward(&long, &model.request(&resid).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::SequenceTooLong {
                seq_len: 65,
                limit: 64,
                ..
            }
        ),
        "{err}"
    );
}

/// `hubsweep inspect model` names each fixture's family and lists its own hooks.
#[test]
fn inspect_shows_the_family_and_its_hooks() {
    use predicates::prelude::*;
    let ctx = TestContext::new();
    for (name, family) in NEW_FIXTURES {
        let out = ctx
            .command()
            .args(["inspect", "model"])
            .arg(fixture(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = format!("family       {}", family.model_type());
        assert!(text.contains(&line), "{name}: {text}");
        assert_eq!(
            text.contains("hook_pos_embed"),
            family == Family::Gpt2,
            "{name}"
        );
        assert_eq!(
            text.contains("attn.q_norm.hook_out"),
            family == Family::Qwen3,
            "{name}"
        );
    }
    ctx.command()
        .args(["inspect", "model"])
        .arg(fixture("gpt2_tiny"))
        .assert()
        .success()
        .stdout(predicate::str::contains("positions    learned, 64 rows"));
}
