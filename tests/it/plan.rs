//! The planner through its front doors: `hubsweep plan` on the committed sweeps (snapshots of
//! what people read), the schema contract, and properties that must always hold.

use std::collections::{BTreeSet, HashMap};

use hubsweep::plan::{self, NoLookup, PlanOptions, id::canonical_json};
use hubsweep::spec;
use proptest::prelude::*;

use crate::common::{TestContext, repo_root};

fn plan_output(file: &str, format: &str) -> String {
    let output = TestContext::new()
        .command()
        .current_dir(repo_root())
        .args(["plan", file, "--format", format])
        .output()
        .expect("run hubsweep plan");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 plan")
}

#[test]
fn plans_of_committed_sweeps() {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("sweeps"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".yaml")
                .to_owned()
        })
        .collect();
    names.sort();
    assert!(names.len() >= 3);
    for name in names {
        let file = format!("sweeps/{name}.yaml");
        insta::assert_snapshot!(format!("plan_text__{name}"), plan_output(&file, "text"));
        let json: serde_json::Value =
            serde_json::from_str(&plan_output(&file, "json")).expect("plan json");
        insta::assert_json_snapshot!(format!("plan_json__{name}"), json);
        let dot = plan_output(&file, "dot");
        assert!(dot.starts_with("digraph plan {") && dot.trim_end().ends_with('}'));
    }
}

#[test]
fn json_plan_has_the_documented_shape() {
    let json: serde_json::Value =
        serde_json::from_str(&plan_output("sweeps/quickstart.yaml", "json")).unwrap();
    let nodes = json["nodes"].as_array().expect("nodes");
    for node in nodes {
        for key in ["id", "kind", "label", "inputs", "params"] {
            assert!(node.get(key).is_some(), "node without `{key}`: {node}");
        }
    }
    let total: u64 = json["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, nodes.len() as u64);
    assert_eq!(
        json["counts"]["artifact"], 18,
        "2 models × 3 layers × 3 hooks"
    );
    assert!(json["estimates"]["files_in_repo"].is_u64());
}

#[test]
fn explain_prints_the_record_behind_an_id() {
    let context = TestContext::new();
    let spec = pinned_spec(&["alpha"], &[SHA_A], "[hook_resid_post]", "[0, 1]");
    std::fs::write(context.child("s.yaml"), &spec).unwrap();
    let json = context
        .command()
        .args(["plan", "s.yaml", "--format", "json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let artifact = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["kind"] == "artifact")
        .unwrap();
    let id = artifact["id"].as_str().unwrap();
    let output = context
        .command()
        .args(["plan", "s.yaml", "--explain", &id[..10]])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(id), "{text}");
    assert!(text.contains("\"kind\": \"artifact\""), "{text}");
    // The printed record, compacted, hashes to the id.
    let record_json = &text[text.find("\nrecord ").unwrap() + 8..];
    let value: serde_json::Value = serde_json::from_str(record_json).unwrap();
    assert_eq!(
        plan::NodeId::of_record(&canonical_json(&value)).to_hex(),
        id
    );
    let missing = context
        .command()
        .args(["plan", "s.yaml", "--explain", "ffffffff0000"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    // The message is what the user acts on: which query matched nothing.
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("no node id starts with `ffffffff0000`"),
        "{err}"
    );
}

#[test]
fn committed_schema_matches_the_types() {
    let path = repo_root().join("schemas/sweep.schema.json");
    let generated = spec::schema_text();
    if std::env::var_os("HUBSWEEP_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/sweep.schema.json is out of date; regenerate it with `HUBSWEEP_UPDATE_SCHEMAS=1 cargo test --release --test it committed_schema`"
    );
}

const SHA_A: &str = "0123456789abcdef0123456789abcdef01234567";
const SHA_B: &str = "89abcdef0123456789abcdef0123456789abcdef";
const SHA_C: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A spec whose revisions are commit shas and whose data is inline, so every id is known.
fn pinned_spec(sizes: &[&str], revisions: &[&str], hooks: &str, layers: &str) -> String {
    format!(
        "name: prop\noutput: local://alice/prop\nmodels:\n  - family: llama\n    repo: org/model-{{size}}\n    size: [{}]\n    revision: [{}]\ndata:\n  token_ids: [[1, 2, 3, 4]]\n  seq_len: 4\ncapture:\n  hooks: {hooks}\n  layers: {layers}\nanalyses:\n  - spectrum: {{top_k: 4}}\n  - overlap: {{between: revision, base: \"{}\", k: [2]}}\n",
        sizes.join(", "),
        revisions.join(", "),
        revisions[0],
    )
}

fn build(text: &str) -> plan::Plan {
    let loaded = spec::load("prop.yaml", text.as_bytes());
    assert!(!loaded.has_errors(), "{:?}\n{text}", loaded.diagnostics);
    let options = PlanOptions {
        lookup: &NoLookup,
        data_hash: None,
        device_class: "cpu".into(),
    };
    plan::build(loaded.spec.as_ref().unwrap(), &options)
}

#[test]
fn every_record_is_canonical_json() {
    let plan = build(&pinned_spec(
        &["a", "b"],
        &[SHA_A, SHA_B],
        "[hook_resid_post, hook_mlp_out]",
        "\"0..3\"",
    ));
    let mut checked = 0;
    for node in &plan.nodes {
        let record = plan.record(node).expect("pinned");
        let value: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert_eq!(canonical_json(&value), record);
        assert_eq!(node.id.unwrap(), plan::NodeId::of_record(&record));
        checked += 1;
    }
    assert!(checked > 20);
}

fn shas() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(vec![SHA_A, SHA_B, SHA_C], 1..=3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Node count equals the product of the axes minus exclusions.
    #[test]
    fn expansion_count_is_product_minus_exclusions(
        sizes in proptest::sample::subsequence(vec!["s1", "s2", "s3", "s4"], 1..=4),
        variants in proptest::sample::subsequence(vec!["v1", "v2", "v3"], 1..=3),
        revisions in shas(),
        excluded in proptest::option::of(0usize..4),
    ) {
        let exclude = excluded.map(|i| format!("    exclude:\n      - {{size: {}, variant: {}}}\n", sizes[i % sizes.len()], variants[0])).unwrap_or_default();
        let text = format!(
            "name: prop\noutput: local://alice/prop\nmodels:\n  - family: llama\n    repo: org/{{size}}-{{variant}}\n    size: [{}]\n    variant: [{}]\n    revision: [{}]\n{exclude}data:\n  texts: [hello]\ncapture:\n  hooks: [hook_resid_post]\n  layers: [0]\n",
            sizes.join(", "), variants.join(", "), revisions.join(", "),
        );
        let product = sizes.len() * variants.len() * revisions.len();
        let expected = product - if excluded.is_some() { revisions.len() } else { 0 };
        if expected == 0 {
            // Everything excluded: refused, with the reason.
            let loaded = spec::load("prop.yaml", text.as_bytes());
            prop_assert!(loaded.diagnostics.iter().any(|d| d.message.contains("empty after `exclude`")));
            return Ok(());
        }
        let plan = build(&text);
        prop_assert_eq!(plan.models.len(), expected);
        prop_assert_eq!(plan.counts()[&plan::NodeKind::Resolve] as usize, expected);
        prop_assert_eq!(plan.counts()[&plan::NodeKind::Artifact] as usize, expected);
    }

    /// Ids do not change when keys are reordered or the YAML is reformatted.
    #[test]
    fn ids_are_stable_under_reordering_and_reformatting(revisions in shas(), seed in 0u64..1000) {
        let block = pinned_spec(&["a", "b"], &revisions, "[hook_resid_post, hook_mlp_out]", "[0, 1]");
        // The same spec with top-level sections in another order, flow style and comments.
        let sections: Vec<&str> = block.split_inclusive('\n').collect();
        let mut keys: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in sections {
            if !line.starts_with(' ') && !current.is_empty() {
                keys.push(std::mem::take(&mut current));
            }
            current.push_str(line);
        }
        keys.push(current);
        let shift = (seed as usize) % keys.len();
        keys.rotate_left(shift);
        let reordered = format!("# reordered\n{}", keys.concat()).replace("capture:\n  hooks: [hook_resid_post, hook_mlp_out]\n  layers: [0, 1]\n", "capture: {layers: [0, 1], hooks: [hook_resid_post, hook_mlp_out]}   # flow style\n");
        let ids = |text: &str| -> BTreeSet<String> { build(text).nodes.iter().map(|n| n.id.expect("pinned").to_hex()).collect() };
        prop_assert_eq!(ids(&block), ids(&reordered));
    }

    /// The DAG is acyclic and its topological order respects every edge.
    #[test]
    fn dag_is_acyclic_and_topologically_consistent(revisions in shas(), sizes in proptest::sample::subsequence(vec!["a", "b", "c"], 1..=3)) {
        let plan = build(&pinned_spec(&sizes, &revisions, "[hook_resid_pre, hook_mlp_out]", "\"0..2\""));
        let graph = plan.graph();
        prop_assert!(!petgraph::algo::is_cyclic_directed(&graph));
        let order = petgraph::algo::toposort(&graph, None).expect("acyclic");
        let position: HashMap<_, _> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        for edge in graph.raw_edges() {
            prop_assert!(position[&edge.source()] < position[&edge.target()]);
        }
        // The node list itself is a topological order.
        for (i, node) in plan.nodes.iter().enumerate() {
            prop_assert!(node.inputs.iter().all(|&input| (input as usize) < i));
        }
    }
}

#[test]
fn committed_ledger_schema_matches_the_types() {
    let path = repo_root().join("schemas/ledger.schema.json");
    let generated = hubsweep::ledger::record::schema_text();
    if std::env::var_os("HUBSWEEP_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schemas/ledger.schema.json is out of date; regenerate it with `HUBSWEEP_UPDATE_SCHEMAS=1 cargo test --release --test it committed_ledger_schema`"
    );
}

#[test]
fn plan_reads_dimensions_and_pins_from_the_hf_cache() {
    let context = TestContext::new();
    let sha = "1111111111111111111111111111111111111111";
    let repo = context.child("hf-cache/models--EleutherAI--pythia-70m");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join(format!("snapshots/{sha}"))).unwrap();
    std::fs::write(repo.join("refs/step0"), sha).unwrap();
    let config =
        std::fs::read_to_string(repo_root().join("tests/fixtures/gpt_neox_tiny/config.json"))
            .unwrap();
    std::fs::write(repo.join(format!("snapshots/{sha}/config.json")), config).unwrap();
    let spec = "name: cached\noutput: local://alice/cached\nmodels:\n  - family: gpt_neox\n    repo: EleutherAI/pythia-70m\n    revision: [step0, step1000]\ndata:\n  texts: [hello]\n  seq_len: 8\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n";
    std::fs::write(context.child("cached.yaml"), spec).unwrap();
    let output = context
        .command()
        .env("HF_HUB_CACHE", context.child("hf-cache"))
        .args(["plan", "cached.yaml", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let models = json["models"].as_array().unwrap();
    assert_eq!(
        models[0]["commit"], sha,
        "step0 is pinned through refs/step0"
    );
    assert_eq!(models[0]["dims"]["n_layers"], 3);
    assert_eq!(
        models[1]["commit"],
        serde_json::Value::Null,
        "step1000 is not in the cache"
    );
    let pinned_artifacts = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "artifact" && n["id"].is_string())
        .count();
    assert_eq!(
        pinned_artifacts, 3,
        "the cached revision's 3 layers have ids"
    );
    // Without the cache nothing is known.
    let bare = context
        .command()
        .args(["plan", "cached.yaml", "--format", "json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bare.stdout).unwrap();
    assert_eq!(json["estimates"]["models_with_dimensions"], 0);
}
