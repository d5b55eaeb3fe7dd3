//! Rendering the card: front matter for the Hub's tools, a body for people.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{CARD_MARKER, CardInput, Claims, LEDGER_CONFIG, capture_tokens};
use crate::ledger::INDEX_PATH;
use crate::ledger::Record;
use crate::spec::units::format_bytes;
use crate::spec::{DataSource, SweepSpec};

/// Renders the card. Deterministic: the same input gives the same bytes.
pub fn render(input: &CardInput<'_>) -> String {
    let claims = Claims::from_records(input.records.iter().copied());
    let spec = crate::spec::load(
        &input.manifest.spec.file_name,
        input.manifest.spec.text.as_bytes(),
    )
    .spec;
    let mut out = String::new();
    front(&mut out, input, spec.as_ref(), &claims);
    body(&mut out, input, spec.as_ref(), &claims);
    out
}

/// A YAML double-quoted scalar (a JSON string is one).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn front(out: &mut String, input: &CardInput<'_>, spec: Option<&SweepSpec>, claims: &Claims) {
    let manifest = input.manifest;
    out.push_str("---\n");
    let _ = writeln!(out, "pretty_name: {}", quoted(&manifest.sweep));
    if let Some(license) = spec.and_then(|s| s.license.as_deref()) {
        let _ = writeln!(out, "license: {}", quoted(license));
    }
    out.push_str("tags:\n");
    for tag in tags(input.records, spec) {
        let _ = writeln!(out, "- {}", quoted(&tag));
    }
    out.push_str("configs:\n");
    for (name, path) in input
        .tables
        .iter()
        .copied()
        .chain([(LEDGER_CONFIG, INDEX_PATH)])
    {
        let _ = writeln!(out, "- config_name: {}", quoted(name));
        let _ = writeln!(out, "  data_files: {}", quoted(path));
    }
    let _ = writeln!(out, "{CARD_MARKER}:");
    let _ = writeln!(out, "  version: {}", claims.version);
    let _ = writeln!(out, "  nodes: {}", claims.nodes);
    let _ = writeln!(out, "  failed: {}", claims.failed);
    let _ = writeln!(out, "  files: {}", claims.files);
    let _ = writeln!(out, "  bytes: {}", claims.bytes);
    let _ = writeln!(out, "  tokens: {}", claims.tokens);
    out.push_str(match claims.models.is_empty() {
        true => "  models: []\n",
        false => "  models:\n",
    });
    for pin in &claims.models {
        let _ = writeln!(out, "  - repo: {}", quoted(&pin.repo));
        let _ = writeln!(out, "    revision: {}", quoted(&pin.revision));
        let _ = writeln!(out, "    commit: {}", quoted(&pin.commit));
    }
    out.push_str("  data:");
    if claims.data.is_empty() {
        out.push_str(" []\n");
    } else {
        out.push('\n');
        for pin in &claims.data {
            let _ = writeln!(out, "  - {}", quoted(pin));
        }
    }
    out.push_str("---\n");
}

/// `interpretability`, what kind of results the repo holds, `hubsweep`, and the families swept.
fn tags(records: &[&Record], spec: Option<&SweepSpec>) -> Vec<String> {
    let mut tags = vec!["interpretability".to_owned()];
    let has = |kind: &str| records.iter().any(|r| r.kind == kind && r.error.is_none());
    if has("capture") {
        tags.push("activations".into());
    }
    if has("spectrum") || has("weight_spectrum") || has("update_geometry") {
        tags.push("spectra".into());
    }
    if has("update_geometry") {
        tags.push("lora".into());
        tags.push("fine-tuning".into());
    }
    if records
        .iter()
        .any(|r| r.error.is_none() && r.kind.starts_with("weight"))
    {
        tags.push("weights".into());
    }
    tags.push("hubsweep".into());
    let families: BTreeSet<&str> = spec
        .map(|s| {
            s.models
                .iter()
                .filter_map(|g| g.family.map(|f| f.as_str()))
                .collect()
        })
        .unwrap_or_default();
    tags.extend(families.into_iter().map(str::to_owned));
    tags
}

fn body(out: &mut String, input: &CardInput<'_>, spec: Option<&SweepSpec>, claims: &Claims) {
    let manifest = input.manifest;
    let _ = writeln!(out, "\n# {}\n", manifest.sweep);
    let _ = writeln!(
        out,
        "Results of the hubsweep sweep `{}` ({} {}), with the ledger that records how each was \
         made. This card is generated from the ledger (`ledger/index.jsonl`) and rewritten with \
         it; a card without the `{CARD_MARKER}` key in its front matter is left alone by later \
         runs.\n",
        manifest.sweep, manifest.tool.name, manifest.tool.version
    );

    out.push_str("## What was swept\n\n");
    let tokens = tokens_by_model(input.records);
    out.push_str("| model | revision | pinned commit | tokens captured |\n");
    out.push_str("| --- | --- | --- | ---: |\n");
    for pin in &claims.models {
        let tokens = tokens
            .get(&(pin.repo.as_str(), pin.revision.as_str()))
            .copied()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "| `{}` | `{}` | `{}` | {tokens} |",
            pin.repo, pin.revision, pin.commit
        );
    }
    out.push('\n');
    let (hooks, layers) = hooks_and_layers(input.records);
    if !hooks.is_empty() {
        let _ = writeln!(out, "- Hook points: {}.", code_list(hooks.iter()));
        let _ = writeln!(out, "- Layers: {}.", layer_ranges(&layers));
    }
    if let Some(spec) = spec {
        let _ = writeln!(out, "- Data: {}.", describe_data(spec));
    }
    if !claims.data.is_empty() {
        let _ = writeln!(
            out,
            "- Token data pinned by content (sha256): {}.",
            code_list(claims.data.iter())
        );
    }
    let _ = writeln!(
        out,
        "- Spec: `{}` (sha256 `{}`), stored verbatim in `ledger/manifest.json`.\n",
        manifest.spec.file_name, manifest.spec.sha256
    );

    out.push_str("## Size\n\n");
    let _ = writeln!(
        out,
        "{} nodes recorded{}, {} files, {} ({} bytes), {} tokens captured.\n",
        claims.nodes,
        match claims.failed {
            0 => String::new(),
            n => format!(" ({n} failed)"),
        },
        claims.files,
        format_bytes(claims.bytes),
        claims.bytes,
        claims.tokens
    );

    headline(out, input.records);
    usage(out, input);
}

pub(super) fn code_list<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Tokens per (model, revision), from the capture records.
fn tokens_by_model<'a>(records: &[&'a Record]) -> BTreeMap<(&'a str, &'a str), u64> {
    let mut tokens = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.kind == "capture" && r.error.is_none())
    {
        let (Some(model), Some(revision)) = (
            record.params.get("model").and_then(|m| m.as_str()),
            record.params.get("revision").and_then(|r| r.as_str()),
        ) else {
            continue;
        };
        *tokens.entry((model, revision)).or_default() += capture_tokens(record);
    }
    tokens
}

/// The hooks and layers the spectrum and artifact nodes name.
fn hooks_and_layers(records: &[&Record]) -> (BTreeSet<String>, BTreeSet<u64>) {
    let mut hooks = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for record in records
        .iter()
        .filter(|r| matches!(r.kind.as_str(), "artifact" | "spectrum") && r.error.is_none())
    {
        if let Some(hook) = record.params.get("hook").and_then(|h| h.as_str()) {
            hooks.insert(hook.to_owned());
        }
        if let Some(layer) = record.params.get("layer").and_then(|l| l.as_u64()) {
            layers.insert(layer);
        }
    }
    (hooks, layers)
}

/// `0–2, 5, 7–9`.
pub(super) fn layer_ranges(layers: &BTreeSet<u64>) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &layer in layers {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == layer => *end = layer,
            _ => runs.push((layer, layer)),
        }
    }
    if runs.is_empty() {
        return "none (only the final norm)".into();
    }
    runs.iter()
        .map(|&(start, end)| match start == end {
            true => start.to_string(),
            false => format!("{start}–{end}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_data(spec: &SweepSpec) -> String {
    let data = &spec.data;
    let source = match &data.source {
        DataSource::Texts(texts) => format!("{} inline text(s) in the spec", texts.len()),
        DataSource::TokenIds(ids) => format!("{} inline token sequence(s) in the spec", ids.len()),
        DataSource::File { path, .. } => format!("the local file `{}`", path.display()),
        DataSource::HubFile {
            hub,
            repo_id,
            path,
            revision,
            ..
        } => {
            let scheme = match hub {
                crate::spec::HubKind::Hf => "hf",
                crate::spec::HubKind::Local => "local",
            };
            format!("`{scheme}://datasets/{repo_id}/{path}@{revision}`")
        }
    };
    format!(
        "{source}, windows of {} tokens{}{}",
        data.seq_len,
        if data.prepend_bos {
            ", each starting with BOS"
        } else {
            ""
        },
        data.max_tokens
            .map(|max| format!(", at most {max} tokens per model"))
            .unwrap_or_default()
    )
}

/// Per (model, revision, hook): the mean stable and effective rank of the raw spectra over
/// layers, and the range of k90.
fn headline(out: &mut String, records: &[&Record]) {
    #[derive(Default)]
    struct Row {
        layers: u64,
        stable: f64,
        effective: f64,
        k90: (u64, u64),
    }
    let captures: BTreeMap<&str, (&str, &str)> = records
        .iter()
        .filter(|r| r.kind == "capture")
        .filter_map(|r| {
            Some((
                r.id.as_str(),
                (
                    r.params.get("model")?.as_str()?,
                    r.params.get("revision")?.as_str()?,
                ),
            ))
        })
        .collect();
    let artifacts: BTreeMap<&str, &str> = records
        .iter()
        .filter(|r| r.kind == "artifact")
        .filter_map(|r| Some((r.id.as_str(), r.inputs.first()?.as_str())))
        .collect();
    let mut rows: BTreeMap<(&str, &str, &str), Row> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.kind == "spectrum" && r.error.is_none())
    {
        let Some(hook) = record.params.get("hook").and_then(|h| h.as_str()) else {
            continue;
        };
        let Some(&(model, revision)) = record
            .inputs
            .first()
            .and_then(|a| artifacts.get(a.as_str()))
            .and_then(|c| captures.get(c))
        else {
            continue;
        };
        let Some(raw) = record.metrics.as_ref().and_then(|m| m.get("raw")) else {
            continue;
        };
        let number = |key: &str| raw.get(key).and_then(serde_json::Value::as_f64);
        let (Some(stable), Some(effective), Some(k90)) = (
            number("stable_rank"),
            number("effective_rank"),
            raw.get("k90").and_then(serde_json::Value::as_u64),
        ) else {
            continue;
        };
        let row = rows.entry((model, revision, hook)).or_insert(Row {
            k90: (u64::MAX, 0),
            ..Row::default()
        });
        row.layers += 1;
        row.stable += stable;
        row.effective += effective;
        row.k90 = (row.k90.0.min(k90), row.k90.1.max(k90));
    }
    if rows.is_empty() {
        return;
    }
    out.push_str("## Headline metrics\n\n");
    out.push_str(
        "Activation spectra (`XᵀX`, uncentred), averaged over layers; every layer's values, \
         centred ones too, are in the `spectra` table.\n\n",
    );
    out.push_str("| model | revision | hook | layers | stable rank | effective rank | k90 |\n");
    out.push_str("| --- | --- | --- | ---: | ---: | ---: | ---: |\n");
    for ((model, revision, hook), row) in &rows {
        let n = row.layers as f64;
        let k90 = match row.k90.0 == row.k90.1 {
            true => row.k90.0.to_string(),
            false => format!("{}–{}", row.k90.0, row.k90.1),
        };
        let _ = writeln!(
            out,
            "| `{model}` | `{revision}` | `{hook}` | {} | {:.3} | {:.3} | {k90} |",
            row.layers,
            row.stable / n,
            row.effective / n
        );
    }
    out.push('\n');
}

fn usage(out: &mut String, input: &CardInput<'_>) {
    let output = &input.manifest.output;
    // `hf://datasets/ns/name` or `local://ns/name` (a dataset repo by default): the repo id
    // the Python client takes is the last two segments.
    let repo_id = output
        .rsplitn(3, '/')
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("/");
    let repo_type = if output.contains("://models/") {
        "model"
    } else {
        "dataset"
    };
    out.push_str("## Check it, reproduce it, load it\n\n");
    out.push_str("```sh\n");
    let _ = writeln!(
        out,
        "hubsweep verify {output}          # records, ids, DAG and every file's hash"
    );
    let _ = writeln!(
        out,
        "hubsweep verify {output} --deep   # also re-hashes files and recomputes spectra"
    );
    let _ = writeln!(
        out,
        "hubsweep reproduce {output} --sample 4   # reruns nodes from the ledger alone"
    );
    out.push_str("```\n\n");
    out.push_str("```python\n");
    out.push_str("from datasets import load_dataset\n");
    for (name, _) in input.tables.iter().take(1) {
        let _ = writeln!(
            out,
            "{name} = load_dataset({}, {}, split=\"train\")",
            quoted(&repo_id),
            quoted(name)
        );
    }
    let _ = writeln!(
        out,
        "ledger = load_dataset({}, {}, split=\"train\")",
        quoted(&repo_id),
        quoted(LEDGER_CONFIG)
    );
    let first_artifact = input
        .records
        .iter()
        .filter(|r| r.kind == "artifact" && r.error.is_none())
        .find_map(|r| r.files.first());
    if let Some(file) = first_artifact {
        out.push_str("\nfrom huggingface_hub import hf_hub_download\n");
        out.push_str("from safetensors.numpy import load_file\n");
        let _ = writeln!(
            out,
            "path = hf_hub_download({}, {}, repo_type={})",
            quoted(&repo_id),
            quoted(&file.path),
            quoted(repo_type)
        );
        out.push_str("activations = load_file(path)\n");
    }
    out.push_str("```\n\n");
    out.push_str(
        "For `local://` repos, serve the store first (`hubsweep hub serve`) and set \
         `HF_ENDPOINT` to the URL it prints. The tables' columns are described in hubsweep's \
         `docs/metrics.md`, the ledger in `docs/ledger.md`.\n",
    );
}
