//! `HF_HUB_OFFLINE=1`, as the Python client has it: a command that needs the Hub fails at once
//! (exit 2, saying what needed the network) without retries, even against an endpoint that
//! would never answer; what the HF cache holds is used.

use std::time::{Duration, Instant};

use crate::common::{TestContext, output_text as text, repo_root};

/// TEST-NET-1 (RFC 5737): nothing answers there, so any attempt would hang until a timeout.
const UNREACHABLE: &str = "http://192.0.2.1:9";

const SPEC: &str = r#"
name: offline
output: hf://datasets/someone/offline-results
models:
  - family: gpt_neox
    repo: someone/not-cached
data:
  texts: ["The quick brown fox jumps over the lazy dog."]
  seq_len: 8
capture:
  hooks: [hook_resid_post]
  layers: [0]
  dtype: f32
"#;

fn offline(ctx: &TestContext) -> assert_cmd::Command {
    let mut command = ctx.command();
    command
        .env("HF_ENDPOINT", UNREACHABLE)
        .env("HF_HUB_OFFLINE", "1");
    command
}

#[test]
fn commands_that_need_the_hub_fail_at_once_when_offline() {
    let ctx = TestContext::new();
    let spec = ctx.child("offline.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let spec = spec.to_str().unwrap().to_owned();
    let out = ctx.child("acts.safetensors");
    // `plan` never needs the Hub (sizes come from the caches, else are unknown): it succeeds.
    let started = Instant::now();
    let plan = offline(&ctx).args(["plan", &spec]).output().unwrap();
    assert_eq!(plan.status.code(), Some(0), "plan: {}", text(&plan));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "plan took {:?}",
        started.elapsed()
    );
    let cases: [(&str, Vec<&str>); 5] = [
        ("run", vec!["run", &spec]),
        ("status", vec!["status", &spec]),
        (
            "capture",
            vec![
                "capture",
                "--model",
                "someone/not-cached",
                "--text",
                "hello",
                "--hooks",
                "hook_resid_post",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        (
            "hub download",
            vec!["hub", "download", "someone/not-cached", "config.json"],
        ),
        (
            "verify",
            vec!["verify", "hf://datasets/someone/offline-results"],
        ),
    ];
    for (name, args) in cases {
        let started = Instant::now();
        let output = offline(&ctx).args(&args).output().unwrap();
        let took = started.elapsed();
        assert_eq!(output.status.code(), Some(2), "{name}: {}", text(&output));
        assert!(took < Duration::from_secs(1), "{name} took {took:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(
            stderr.contains("offline"),
            "{name} does not say offline mode stopped it: {}",
            text(&output)
        );

        assert!(
            !stderr.contains("retry"),
            "{name} retried: {}",
            text(&output)
        );
    }
}

#[test]
fn a_model_in_the_hf_cache_is_used_when_offline() {
    let ctx = TestContext::new();
    // The cache layout both clients share: refs/main names the snapshot of the commit.
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let cached = ctx.child("hf-home/hub/models--someone--tiny");
    let snapshot = cached.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(cached.join("refs")).unwrap();
    std::fs::write(cached.join("refs/main"), commit).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(
            repo_root().join("tests/fixtures/gpt_neox_tiny").join(file),
            snapshot.join(file),
        )
        .unwrap();
    }
    let out = ctx.child("acts.safetensors");
    let output = offline(&ctx)
        .args([
            "capture",
            "--model",
            "someone/tiny",
            "--text",
            "hello world",
            "--hooks",
        ])
        .args(["hook_resid_post", "--layers", "0", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(out.is_file());
}
