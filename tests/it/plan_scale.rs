//! Plans of real size through the binary: the JSON plan is streamed (its peak memory is
//! bounded on a sweep of 100k+ nodes), JSON and text plans agree, file-count refusals need no
//! model sizes and say what to cut, and `plan` refuses what `run` refuses, saying the same.

use std::collections::BTreeMap;
use std::process::Stdio;

use proptest::prelude::*;

use crate::common::{TestContext, isolated_hubsweep, output_text, repo_root};

/// A llama sweep over Hub repos whose sizes are unknown offline: `sizes` × `revisions` models,
/// layers `0..layers`, `hooks` per-layer hooks, spectra and overlaps against the first revision.
fn sweep(sizes: usize, revisions: usize, layers: u32, hooks: usize) -> String {
    const HOOKS: [&str; 8] = [
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_post",
        "hook_attn_out",
        "hook_mlp_out",
        "attn.hook_z",
        "attn.hook_pattern",
        "mlp.hook_post",
    ];
    let sizes: Vec<String> = (0..sizes).map(|s| format!("s{s}")).collect();
    let revisions: Vec<String> = (0..revisions).map(|r| format!("step{r}")).collect();
    format!(
        "name: scale\noutput: hf://datasets/alice/scale\nmodels:\n  - family: llama\n    repo: org/model-{{size}}\n    size: [{}]\n    revision: [{}]\ndata:\n  source: hf://datasets/org/data/train.txt@main\n  max_tokens: 262144\n  seq_len: 128\ncapture:\n  hooks: [{}]\n  layers: \"0..{layers}\"\n  dtype: f16\nanalyses:\n  - spectrum: {{}}\n  - overlap: {{between: revision, base: step0, k: [8]}}\n",
        sizes.join(", "),
        revisions.join(", "),
        HOOKS[..hooks].join(", "),
    )
}

/// Runs `hubsweep ARGS` with stdout into a file; returns the exit code, stdout, stderr and the
/// child's peak RSS in KiB: its `VmHWM` (the kernel's high-water mark of that one process, so
/// other tests' children do not count), read until it exits.
fn plan_with_peak_rss(ctx: &TestContext, args: &[&str]) -> (Option<i32>, Vec<u8>, String, u64) {
    let stdout_path = ctx.child("plan.out");
    let stderr_path = ctx.child("plan.err");
    let mut child = isolated_hubsweep(ctx)
        .args(args)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn hubsweep");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let stdout = std::fs::read(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    (status.code(), stdout, stderr, peak)
}

#[test]
fn json_plan_of_100k_nodes_is_streamed_in_bounded_memory() {
    let ctx = TestContext::new();
    // 8 sizes × 17 revisions × 32 layers × 8 hooks: 69,632 artifact and spectrum files (under the
    // Hub's 100,000) and 102,809 nodes.
    std::fs::write(ctx.child("big.yaml"), sweep(8, 17, 32, 8)).unwrap();
    let (code, stdout, stderr, peak_kib) =
        plan_with_peak_rss(&ctx, &["plan", "big.yaml", "--format", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&stdout).expect("plan json");
    let nodes = json["nodes"].as_array().unwrap().len();
    assert_eq!(nodes, 102_809);
    // The plan itself takes ~200 bytes a node; the document, held whole as a JSON tree before
    // it was streamed, took ~3.5 KiB a node (370 MiB here). 100 MiB leaves room for the
    // allocator and the runtime, and none for a document held whole.
    assert!(
        peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB for a {nodes}-node JSON plan ({} bytes)",
        stdout.len()
    );
}

#[test]
fn file_count_is_refused_without_model_sizes_naming_what_to_cut() {
    let ctx = TestContext::new();
    // 8 × 200 × 32 × 8: 409,600 artifacts, each at least one file, and as many spectra.
    std::fs::write(ctx.child("huge.yaml"), sweep(8, 200, 32, 8)).unwrap();
    let started = std::time::Instant::now();
    let (code, stdout, stderr, _) = plan_with_peak_rss(&ctx, &["plan", "huge.yaml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty(), "a refused plan prints nothing");
    // The diagnostic as one line (the renderer wraps it, with `│` at the margin).
    let said: Vec<&str> = stderr.split_whitespace().filter(|w| *w != "│").collect();
    let said = said.join(" ");
    assert!(
        said.contains("the plan writes at least 827395 files to `hf://datasets/alice/scale`; the Hub allows 100000 per repo"),
        "{stderr}"
    );
    // 819,200 node files and 8,195 of the ledger: the nodes may take 91,805, so `revision`
    // may keep 200 × 91,805 / 819,200 = 22 of its 200 values, layers 3 of 32; no size or hook
    // count alone is small enough.
    for cut in [
        "`revision` of /models/0 from 200 values to 22",
        "`capture.layers` from 32 to 3",
        "split the sweep over several output repos",
    ] {
        assert!(said.contains(cut), "missing `{cut}` in:\n{stderr}");
    }
    assert!(
        stderr.contains("[huge.yaml:2:"),
        "located at `output:`: {stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn plan_refuses_what_run_refuses_with_the_same_message() {
    let ctx = TestContext::new();
    let model = ctx.child("wide");
    std::fs::create_dir_all(&model).unwrap();
    for name in ["tokenizer.json", "model.safetensors"] {
        std::fs::copy(
            repo_root().join("tests/fixtures/gpt_neox_tiny").join(name),
            model.join(name),
        )
        .unwrap();
    }
    let config =
        std::fs::read_to_string(repo_root().join("tests/fixtures/gpt_neox_tiny/config.json"))
            .unwrap()
            .replace("\"hidden_size\": 64", "\"hidden_size\": 1000000000");
    std::fs::write(model.join("config.json"), config).unwrap();
    std::fs::write(
        ctx.child("wide.yaml"),
        "name: wide\noutput: local://alice/wide\nmodels:\n  - family: gpt_neox\n    repo: ./wide\ndata:\n  texts: [\"hello world\", \"a second prompt\"]\n  seq_len: 8\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\nlimits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\ncompute:\n  device: cpu\n",
    )
    .unwrap();
    let plan = isolated_hubsweep(&ctx)
        .args(["plan", "wide.yaml"])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2), "{}", output_text(&plan));
    let plan_stderr = String::from_utf8_lossy(&plan.stderr);
    let diagnostics = plan_stderr
        .split("wide.yaml: the plan is refused")
        .next()
        .unwrap();
    assert!(
        diagnostics.contains("more than `artifact_bytes`"),
        "{plan_stderr}"
    );
    let run = isolated_hubsweep(&ctx)
        .args(["run", "wide.yaml"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", output_text(&run));
    let run_stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run_stderr.contains(diagnostics.trim()),
        "run says otherwise than plan:\nplan:\n{plan_stderr}\nrun:\n{run_stderr}"
    );
}

/// What a text plan says, as `key → value`: node counts by kind, estimates, and per model its
/// layers, shards and pin.
fn text_facts(text: &str) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("nodes: ") {
            facts.insert("nodes".into(), rest.into());
            section = "nodes";
        } else if line.starts_with("models: ") {
            section = "models";
        } else if line.starts_with("estimates:") {
            section = "estimates";
        } else if let Some(rest) = line.strip_prefix("  ") {
            let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match section {
                "nodes" if !key.starts_with('(') => {
                    facts.insert(format!("kind {key}"), value.trim().into());
                }
                "models" if key != "…" => {
                    facts.insert(format!("model {key}"), value.trim().into());
                }
                "estimates" if key == "artifacts" => {
                    facts.insert("artifacts".into(), value.trim().into());
                }
                "estimates" if key == "files" => {
                    let value = value.trim().trim_start_matches("in repo").trim();
                    facts.insert("files".into(), value.into());
                }
                _ => {}
            }
        }
    }
    facts
}

/// The same facts, from a JSON plan, written as the text plan writes them.
fn json_facts(json: &serde_json::Value) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let nodes = json["nodes"].as_array().unwrap();
    facts.insert("nodes".into(), nodes.len().to_string());
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for node in nodes {
        *kinds
            .entry(node["kind"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(
        serde_json::to_value(&kinds).unwrap(),
        json["counts"],
        "counts agree with the nodes"
    );
    for (kind, count) in kinds {
        facts.insert(format!("kind {kind}"), count.to_string());
    }
    // Each model's label, from its resolve node (one per model, in model order).
    let labels = nodes.iter().filter(|n| n["kind"] == "resolve").map(|n| {
        n["label"]
            .as_str()
            .unwrap()
            .trim_start_matches("resolve ")
            .to_owned()
    });
    for (model, label) in json["models"]
        .as_array()
        .unwrap()
        .iter()
        .zip(labels)
        .take(20)
    {
        let layers = match model["layers"].as_array() {
            Some(l) if l.is_empty() => "no layers".to_owned(),
            Some(l) => format!("{} layers ({}..={})", l.len(), l[0], l[l.len() - 1]),
            None => "layers unknown".to_owned(),
        };
        let shards = match model["shards"].as_u64().unwrap() {
            1 => "1 shard".to_owned(),
            n => format!("{n} shards"),
        };
        let pin = model["commit"]
            .as_str()
            .map_or("unpinned".to_owned(), |c| format!("commit {}", &c[..12]));
        facts.insert(
            format!("model {label}"),
            format!("{layers}, {shards}, {pin}"),
        );
    }
    let e = &json["estimates"];
    let bytes = |v: &serde_json::Value| {
        v.as_u64()
            .map_or("unknown".to_owned(), hubsweep::spec::units::format_bytes)
    };
    facts.insert(
        "artifacts".into(),
        format!(
            "{} (largest {}, total {})",
            e["artifacts"],
            bytes(&e["max_artifact_bytes"]),
            bytes(&e["total_artifact_bytes"])
        ),
    );
    let files = e["files_in_repo"]
        .as_u64()
        .map_or(format!("at least {}", e["min_files_in_repo"]), |f| {
            f.to_string()
        });
    let folder = e["max_files_per_folder"]
        .as_u64()
        .map_or("unknown".to_owned(), |f| f.to_string());
    facts.insert(
        "files".into(),
        format!("{files} (at most {folder} in one folder)"),
    );
    facts
}

fn plan_in(ctx: &TestContext, spec: &str, format: &str) -> Vec<u8> {
    std::fs::write(ctx.child("p.yaml"), spec).unwrap();
    let output = isolated_hubsweep(ctx)
        .args(["plan", "p.yaml", "--format", format])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}\n{spec}",
        output_text(&output)
    );
    output.stdout
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// JSON and text plans of the same spec say the same: node counts by kind, each model's
    /// layers, shards and pin, artifacts and their sizes, files in the repo.
    #[test]
    fn json_and_text_plans_agree(
        local in any::<bool>(),
        sizes in 1usize..4,
        revisions in 1usize..4,
        hooks in 1usize..4,
        layers in proptest::sample::select(vec!["all", "\"0..2\"", "[0, -1]", "\"1..\""]),
        overlap in any::<bool>(),
        pinned in any::<bool>(),
    ) {
        let ctx = TestContext::new();
        let hooks = ["hook_resid_post", "hook_mlp_out", "hook_attn_out"][..hooks].join(", ");
        let revisions: Vec<String> = (0..revisions)
            .map(|r| if pinned { format!("a{r:0>39}") } else { format!("step{r}") })
            .collect();
        // A local folder has a config at hand (sizes, layers known); a Hub repo offline has not.
        let models = if local {
            let fixture = repo_root().join("tests/fixtures/gpt_neox_tiny");
            (0..sizes)
                .map(|_| format!("  - family: gpt_neox\n    repo: {}\n", fixture.display()))
                .collect::<Vec<_>>()
                .concat()
        } else {
            format!(
                "  - family: gpt_neox\n    repo: org/m-{{size}}\n    size: [{}]\n    revision: [{}]\n",
                (0..sizes).map(|s| format!("s{s}")).collect::<Vec<_>>().join(", "),
                revisions.join(", ")
            )
        };
        let overlap = if overlap && !local {
            format!("  - overlap: {{between: revision, base: \"{}\", k: [2]}}\n", revisions[0])
        } else {
            String::new()
        };
        let spec = format!(
            "name: agree\noutput: local://alice/agree\nmodels:\n{models}data:\n  token_ids: [[1, 2, 3, 4, 5, 6, 7, 8]]\n  seq_len: 4\ncapture:\n  hooks: [{hooks}]\n  layers: {layers}\nanalyses:\n  - spectrum: {{top_k: 4}}\n{overlap}limits:\n  memory: 64MiB\n  artifact_bytes: 1MiB\n"
        );
        let text = String::from_utf8(plan_in(&ctx, &spec, "text")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&plan_in(&ctx, &spec, "json")).unwrap();
        prop_assert_eq!(text_facts(&text), json_facts(&json), "{}", text);
    }
}
