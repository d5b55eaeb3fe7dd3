//! Pooled activations (`capture.pool`) through the front door: the same sweep captured three
//! ways — one row per token, the mean of each window, its last token — into three repos; every
//! pooled artifact equals the pooled rows of the unpooled one, spectra are computed over one row
//! per window, `verify --deep` passes, and a misspelt value is refused where it is written.

use std::collections::BTreeMap;

use hubsweep::ledger::LedgerState;

use crate::common::{TestContext, output_text};
use crate::run::{check_ledger, dataset, hubsweep, open_store, run_json, runtime, segment_records};

const SEQ_LEN: usize = 8;

fn spec(pool: &str) -> String {
    format!(
        r#"
name: pool-{pool}
output: local://hubsweep/pool-{pool}
models:
  - family: gpt_neox
    repo: local://hubsweep/tiny-gpt-neox
data:
  texts:
    - "The quick brown fox jumps over the lazy dog, and the dog sleeps on."
    - "Checkpoints along training show representations forming, layer by layer."
    - "A ledger on the Hub lets anyone check the results of a sweep."
  seq_len: {SEQ_LEN}
capture:
  hooks: [hook_resid_post, attn.hook_z]
  layers: [0, 2]
  pool: {pool}
analyses:
  - spectrum: {{top_k: 8}}
compute:
  device: cpu
  batch_size: 2
"#
    )
}

/// Per (hook, layer, shard): the artifact's node id, its token count and its f32 rows.
type Artifacts = BTreeMap<(String, Option<u64>, u64), (String, usize, Vec<f32>, usize)>;

/// The artifacts of `repo` and the `rows` of its spectra rows.
fn artifacts(ctx: &TestContext, name: &str) -> (Artifacts, Vec<u64>) {
    runtime().block_on(async {
        let (server, client) = open_store(&ctx.child("hubsweep-home")).await;
        let repo = dataset(&format!("hubsweep/{name}"));
        let state = LedgerState::read(&client, &repo, "main").await.unwrap();
        let records = segment_records(&client, &repo, &state).await;
        check_ledger(&state, &records);
        let mut out = Artifacts::new();
        for record in records.iter().filter(|r| r.kind == "artifact") {
            let bytes = client
                .download_bytes(&repo, "main", &record.files[0].path)
                .await
                .unwrap();
            let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let acts = tensors.tensor("activations").unwrap();
            assert_eq!(acts.dtype(), safetensors::Dtype::F32);
            let tokens = tensors.tensor("token_ids").unwrap().shape()[0];
            let values = acts
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let key = (
                record.params["hook"].as_str().unwrap().to_owned(),
                record.params["layer"].as_u64(),
                record.params["shard"].as_u64().unwrap(),
            );
            out.insert(key, (record.id.clone(), tokens, values, acts.shape()[1]));
        }
        let table = client
            .download_bytes(&repo, "main", "metrics/spectra.jsonl")
            .await
            .unwrap();
        let rows = String::from_utf8_lossy(&table)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["rows"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        server.shutdown().await;
        (out, rows)
    })
}

#[test]
fn pooled_captures_hold_the_mean_or_last_row_of_each_window() {
    let ctx = TestContext::new();
    for pool in ["none", "mean", "last"] {
        let path = ctx.child(&format!("pool-{pool}.yaml"));
        std::fs::write(&path, spec(pool)).unwrap();
        let (output, _) = run_json(&ctx, &path, &[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{pool}: {}",
            output_text(&output)
        );
    }
    let (tokens, token_spectra) = artifacts(&ctx, "pool-none");
    assert!(!tokens.is_empty());
    for pool in ["mean", "last"] {
        let (pooled, spectra) = artifacts(&ctx, &format!("pool-{pool}"));
        assert_eq!(
            pooled.len(),
            tokens.len(),
            "{pool}: one artifact per unpooled one"
        );
        let windows_total: u64 = spectra.iter().sum();
        let tokens_total: u64 = token_spectra.iter().sum();
        assert_eq!(
            windows_total * SEQ_LEN as u64,
            tokens_total,
            "{pool}: spectra over one row per window"
        );
        for (key, (id, n_tokens, values, width)) in &pooled {
            let (token_id, token_count, token_values, token_width) = &tokens[key];
            assert_ne!(
                id, token_id,
                "{pool} {key:?}: pooling is part of the node's identity"
            );
            assert_eq!((n_tokens, width), (token_count, token_width), "{key:?}");
            let windows = n_tokens / SEQ_LEN;
            assert_eq!(
                values.len(),
                windows * width,
                "{pool} {key:?}: one row per window"
            );
            for w in 0..windows {
                for c in 0..*width {
                    let column = (0..SEQ_LEN).map(|t| token_values[(w * SEQ_LEN + t) * width + c]);
                    let expected = match pool {
                        "mean" => column.map(f64::from).sum::<f64>() / SEQ_LEN as f64,
                        _ => f64::from(column.last().unwrap()),
                    };
                    let got = f64::from(values[w * width + c]);
                    assert!(
                        (got - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                        "{pool} {key:?} window {w} column {c}: {got} vs {expected}"
                    );
                }
            }
        }
        let verify = hubsweep(&ctx)
            .args(["verify", "--deep", &format!("local://hubsweep/pool-{pool}")])
            .output()
            .unwrap();
        assert_eq!(verify.status.code(), Some(0), "{}", output_text(&verify));
    }
}

#[test]
fn a_misspelt_pool_is_refused_where_it_is_written() {
    let ctx = TestContext::new();
    let path = ctx.child("pool-average.yaml");
    std::fs::write(&path, spec("average")).unwrap();
    let output = hubsweep(&ctx).arg("validate").arg(&path).output().unwrap();
    let text = output_text(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("/capture/pool"), "{text}");
    assert!(text.contains("mean"), "{text}");
}
