//! Every hook point of every tiny fixture against transformers (eager, f32).

use candle_core::{DType, Device};
use hubsweep::model::{HookRequest, Model, ModelFiles};

use super::{excess, fixture, reference};

/// f32 on CPU reproduces transformers to ~4e-6 on O(1–10) activations; 1e-4 leaves margin
/// for summation-order differences without hiding a wrong formula.
const TOL: f32 = 1e-4;

pub(super) fn check_all_hooks(name: &str) {
    check_window(name, None);
}

/// Every hook of fixture `name` against its reference: the whole reference batch (`row`
/// `None`), or one row run alone as a batch of one and compared with that row.
pub(super) fn check_window(name: &str, row: Option<usize>) {
    let files = ModelFiles::from_dir(&fixture(name)).unwrap();
    let model = Model::load(&files, &Device::Cpu, DType::F32).unwrap();
    let refs = reference(name);
    let pick = |t: &candle_core::Tensor| match row {
        Some(r) => t.narrow(0, r, 1).unwrap(),
        None => t.clone(),
    };
    let request = HookRequest::all(model.config());
    let acts = model.forward(&pick(&refs["input_ids"]), &request).unwrap();
    let mut compared = 0;
    let mut failures = Vec::new();
    for (hook, ours) in acts.iter() {
        let Some(expected) = refs.get(hook) else {
            panic!("{name}: reference has no `{hook}`");
        };
        let expected = pick(expected);
        assert_eq!(ours.dims(), expected.dims(), "{name}: shape of `{hook}`");
        let over = excess(ours, &expected, TOL, TOL);
        if over > 0.0 {
            failures.push(format!("{hook}: exceeds tolerance by {over:e}"));
        }
        compared += 1;
    }
    assert!(
        failures.is_empty(),
        "{name} {row:?}:\n{}",
        failures.join("\n")
    );
    // Every TL-named reference tensor must have been produced.
    for key in refs.keys() {
        let derived = key.starts_with("hf.") || key.starts_with("svals") || key == "input_ids";
        assert!(
            derived || acts.get(key).is_some(),
            "{name}: `{key}` not produced"
        );
    }
    // HF hidden_states[L] is the final norm's output, not the last resid_post.
    let n = model.config().n_layers;
    let last = pick(&refs[&format!("hf.hidden_states.{n}")]);
    assert!(excess(acts.get("ln_final.hook_out").unwrap(), &last, TOL, TOL) <= 0.0);
    assert!(compared > 60, "{name}: only {compared} hooks compared");
}

#[test]
fn gpt_neox_parallel_matches_transformers_at_every_hook() {
    check_all_hooks("gpt_neox_tiny");
}

#[test]
fn gpt_neox_sequential_matches_transformers_at_every_hook() {
    check_all_hooks("gpt_neox_tiny_seq");
}

#[test]
fn llama_gqa_tied_bf16_matches_transformers_at_every_hook() {
    check_all_hooks("llama_tiny");
}

#[test]
fn llama3_scaled_sharded_untied_matches_transformers_at_every_hook() {
    check_all_hooks("llama_tiny_llama3");
}

#[test]
fn only_requested_hooks_are_kept_and_later_blocks_skipped() {
    let files = ModelFiles::from_dir(&fixture("gpt_neox_tiny_seq")).unwrap();
    let model = Model::load(&files, &Device::Cpu, DType::F32).unwrap();
    let refs = reference("gpt_neox_tiny_seq");
    let request = model
        .request(&["blocks.0.hook_resid_mid", "blocks.1.attn.hook_z"])
        .unwrap();
    assert_eq!(request.blocks_needed(model.config().n_layers), 2);
    let acts = model.forward(&refs["input_ids"], &request).unwrap();
    let names: Vec<&str> = acts.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["blocks.0.hook_resid_mid", "blocks.1.attn.hook_z"]);
    assert!(
        excess(
            acts.get("blocks.1.attn.hook_z").unwrap(),
            &refs["blocks.1.attn.hook_z"],
            TOL,
            TOL
        ) <= 0.0
    );
}

/// With few hooks requested the forward takes its fused paths (RMSNorm without its parts,
/// `silu(gate)·up`); they must match transformers as closely as the full-hook forward does.
#[test]
fn fused_paths_match_transformers_when_few_hooks_are_requested() {
    for name in ["llama_tiny", "llama_tiny_llama3"] {
        let files = ModelFiles::from_dir(&fixture(name)).unwrap();
        let model = Model::load(&files, &Device::Cpu, DType::F32).unwrap();
        let refs = reference(name);
        let n = model.config().n_layers;
        let hooks = [
            "blocks.0.hook_resid_post".to_owned(),
            "blocks.1.hook_mlp_out".to_owned(),
            format!("blocks.{}.hook_resid_post", n - 1),
            "ln_final.hook_out".to_owned(),
            "logits".to_owned(),
        ];
        let request = model.request(&hooks).unwrap();
        let acts = model.forward(&refs["input_ids"], &request).unwrap();
        for hook in &hooks {
            let over = excess(acts.get(hook).unwrap(), &refs[hook.as_str()], TOL, TOL);
            assert!(over <= 0.0, "{name} {hook}: exceeds tolerance by {over:e}");
        }
    }
}

#[test]
fn reduced_precision_stays_close() {
    // bf16 keeps 8 bits of mantissa: through 3 blocks errors grow to a few percent of the
    // activation scale, so compare relative to each tensor's max with 5e-2 (f16: 1e-2).
    for fixture_name in ["llama_tiny", "gpt_neox_tiny"] {
        let refs = reference(fixture_name);
        for (dtype, tol) in [(DType::BF16, 5e-2f32), (DType::F16, 1e-2)] {
            let files = ModelFiles::from_dir(&fixture(fixture_name)).unwrap();
            let model = Model::load(&files, &Device::Cpu, dtype).unwrap();
            let names = [
                "blocks.2.hook_resid_post",
                "blocks.1.attn.hook_pattern",
                "logits",
            ];
            let request = model.request(&names).unwrap();
            let acts = model.forward(&refs["input_ids"], &request).unwrap();
            for name in names {
                let expected = &refs[name];
                let scale = expected
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let got = acts.get(name).unwrap();
                assert_eq!(got.dtype(), dtype);
                let over = excess(got, expected, tol * scale, 0.0);
                assert!(
                    over <= 0.0,
                    "{fixture_name} {dtype:?} {name}: over by {over}"
                );
            }
        }
    }
}
