//! One model-reference grammar on every command that takes a model or a repo: a table of
//! (command, reference form) run through the binary against two hubs — the embedded one
//! (`local://`, bundled models imported on first use) and a `hub serve` standing in for the Hub
//! at `HF_ENDPOINT` (`hf://` and bare ids).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};

use crate::common::{TestContext, isolated_hubsweep, output_text, repo_root};

/// A `hub serve` child, killed when dropped.
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(ctx: &TestContext) -> (Serve, String) {
    let mut child = isolated_hubsweep(ctx)
        .args(["hub", "serve", "--dir"])
        .arg(ctx.child("remote"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hub serve");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Serve(child), line.trim().to_owned())
}

fn hubsweep(ctx: &TestContext, endpoint: &str, args: &[&str]) -> std::process::Output {
    isolated_hubsweep(ctx)
        .env("HF_ENDPOINT", endpoint)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_command_accepts_every_reference_form() {
    let ctx = TestContext::new();
    let (_serve, endpoint) = serve(&ctx);
    let fixture = repo_root().join("tests/fixtures/gpt_neox_tiny");
    let copy = ctx.child("tiny");
    std::fs::create_dir_all(&copy).unwrap();
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture.join(name), copy.join(name)).unwrap();
    }
    let fixture = fixture.display().to_string();
    // The same model on both hubs, and results on both.
    for repo in ["local://alice/tiny", "hf://alice/tiny"] {
        let output = hubsweep(&ctx, &endpoint, &["hub", "import", "--repo", repo, "tiny"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "import {repo}: {}",
            output_text(&output)
        );
    }
    for output_repo in ["local://alice/res", "hf://datasets/alice/res"] {
        let spec = format!(
            "name: res\noutput: {output_repo}\nmodels:\n  - family: gpt_neox\n    repo: {fixture}\ndata:\n  texts: [\"The quick brown fox jumps over the lazy dog.\"]\n  seq_len: 8\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0]\nanalyses:\n  - spectrum: {{top_k: 4}}\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n"
        );
        std::fs::write(ctx.child("res.yaml"), spec).unwrap();
        let output = hubsweep(&ctx, &endpoint, &["run", "res.yaml"]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "run into {output_repo}: {}",
            output_text(&output)
        );
    }
    let models = [
        fixture.as_str(),
        "./tiny",
        "local://hubsweep/tiny-llama",
        "local://alice/tiny",
        "local://models/alice/tiny@main",
        "hf://alice/tiny",
        "hf://models/alice/tiny@main",
        "alice/tiny",
        "alice/tiny@main",
    ];
    let results = [
        "local://alice/res",
        "local://datasets/alice/res@main",
        "hf://datasets/alice/res",
        "hf://datasets/alice/res@main",
    ];
    let mut table: Vec<(String, Vec<String>)> = Vec::new();
    for model in models {
        let capture = [
            "capture",
            "--model",
            model,
            "--text",
            "The quick",
            "--hooks",
        ];
        let rest = [
            "hook_resid_post",
            "--layers",
            "0",
            "--out",
            "acts.safetensors",
        ];
        table.push((
            format!("capture {model}"),
            [&capture[..], &rest]
                .concat()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));
        table.push((
            format!("inspect {model}"),
            ["inspect", "model", model].map(String::from).to_vec(),
        ));
    }
    for repo in [
        "local://alice/tiny",
        "hf://alice/tiny",
        "hf://models/alice/tiny@main",
        "alice/tiny@main",
    ] {
        table.push((
            format!("download {repo}"),
            ["hub", "download", repo, "config.json"]
                .map(String::from)
                .to_vec(),
        ));
    }
    for (n, repo) in [
        "local://alice/imp",
        "hf://alice/imp",
        "alice/imp2@main",
        "local://models/alice/imp3",
    ]
    .iter()
    .enumerate()
    {
        table.push((
            format!("import {repo} ({n})"),
            ["hub", "import", "--repo", repo, "tiny"]
                .map(String::from)
                .to_vec(),
        ));
    }
    for repo in results {
        table.push((
            format!("verify {repo}"),
            ["verify", repo].map(String::from).to_vec(),
        ));
        table.push((
            format!("report {repo}"),
            ["report", repo, "--out", "r.html"]
                .map(String::from)
                .to_vec(),
        ));
        table.push((
            format!("reproduce {repo}"),
            ["reproduce", repo, "--sample", "1"]
                .map(String::from)
                .to_vec(),
        ));
    }
    let mut failures = Vec::new();
    for (name, args) in &table {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = hubsweep(&ctx, &endpoint, &args);
        if output.status.code() != Some(0) {
            failures.push(format!(
                "{name}: exit {:?}\n{}",
                output.status.code(),
                output_text(&output)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
    // A reference no grammar form matches says what to write, on every command alike.
    for args in [
        &[
            "capture",
            "--model",
            "local://tiny",
            "--text",
            "x",
            "--hooks",
            "hook_embed",
            "--out",
            "a.safetensors",
        ][..],
        &["inspect", "model", "local://tiny"],
        &["verify", "local://tiny"],
    ] {
        let output = hubsweep(&ctx, &endpoint, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            output_text(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("`local://tiny` is not a repo"),
            "{args:?}: {stderr}"
        );
    }
}
