//! The output repo's dataset card, `README.md`: what a researcher who finds the repo on the Hub
//! reads first, and what the Hub's dataset viewer and `datasets.load_dataset` read to know which
//! files make which table.
//!
//! The card is a pure function of the ledger — the manifest, the compacted records and which
//! metrics tables hold rows — so an unchanged ledger gives a byte-identical card (no timestamps,
//! nothing from the machine), and `verify` can check what a card claims against the ledger it
//! sits beside. It has two parts:
//!
//! - YAML front matter in the Hub's dataset-card convention: `pretty_name`, `license` (from the
//!   spec, when it names one), `tags`, `configs` (one per non-empty metrics table plus `ledger`
//!   for the index, so the viewer never mixes files of different shapes), and a `hubsweep_card`
//!   block with the pins and counts the card states. That key is also the marker: a card
//!   without it was written by somebody else and a run leaves it alone.
//! - A body for people: what was swept (models with their pinned commits, hooks, layers, data
//!   and its pin, tokens), how big it is, headline metrics, and how to check and load it.
//!
//! docs/ledger.md documents the card; `verify` checks it with [`check`]; [`render`] writes it
//! (`render.rs`).

mod render;

use render::code_list;
pub use render::render;

use std::collections::BTreeSet;

use serde::Deserialize;

use super::{Manifest, Record};

/// Path of the card in the output repo.
pub const CARD_PATH: &str = "README.md";
/// Front-matter key that marks a card written by hubsweep and holds what it claims.
pub const CARD_MARKER: &str = "hubsweep_card";
/// Version of the `hubsweep_card` block.
pub const CARD_VERSION: u32 = 1;
/// Largest card read back from a repo (the Hub renders far smaller ones).
pub const MAX_CARD_BYTES: usize = 1 << 20;
/// Config name of the ledger index in the card's `configs`.
pub const LEDGER_CONFIG: &str = "ledger";

/// What the card says about the ledger: derived from the records alone, written into the front
/// matter, and compared by `verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Version of this block.
    pub version: u32,
    /// Nodes recorded with a result.
    pub nodes: u64,
    /// Nodes whose last record is a failure.
    pub failed: u64,
    /// Files the records list.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Tokens captured, over every model revision.
    pub tokens: u64,
    /// Every model revision swept, with the commit it was pinned to.
    #[serde(default)]
    pub models: Vec<ModelPin>,
    /// The content hashes of the token data the captures read.
    #[serde(default)]
    pub data: Vec<String>,
}

/// A model revision and the commit it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPin {
    /// Repo as in the spec.
    pub repo: String,
    /// Revision as in the spec.
    pub revision: String,
    /// The commit sha it was pinned to.
    pub commit: String,
}

impl Claims {
    /// What the records (the compacted index: one record per id) establish.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut claims = Claims {
            version: CARD_VERSION,
            ..Claims::default()
        };
        let mut models = BTreeSet::new();
        let mut data = BTreeSet::new();
        for record in records {
            if record.error.is_some() {
                claims.failed += 1;
                continue;
            }
            claims.nodes += 1;
            claims.files += record.files.len() as u64;
            claims.bytes += record.files.iter().map(|f| f.size).sum::<u64>();
            match record.kind.as_str() {
                "resolve" => {
                    let text = |value: Option<&serde_json::Value>| {
                        value.and_then(serde_json::Value::as_str).map(str::to_owned)
                    };
                    let commit = record.metrics.as_ref().and_then(|m| text(m.get("commit")));
                    if let (Some(repo), Some(revision), Some(commit)) = (
                        text(record.params.get("model")),
                        text(record.params.get("revision")),
                        commit,
                    ) {
                        models.insert(ModelPin {
                            repo,
                            revision,
                            commit,
                        });
                    }
                }
                "capture" => {
                    claims.tokens += capture_tokens(record);
                    if let Some(pin) = record.pins.get("data").and_then(|d| d.as_str()) {
                        data.insert(pin.to_owned());
                    }
                }
                _ => {}
            }
        }
        claims.models = models.into_iter().collect();
        claims.data = data.into_iter().collect();
        claims
    }
}

/// Tokens a capture node read: its windows times their length.
pub(super) fn capture_tokens(record: &Record) -> u64 {
    let windows = record.params.get("windows").and_then(|w| w.as_array());
    let seq_len = record.params.get("seq_len").and_then(|s| s.as_u64());
    match (windows.map(Vec::as_slice), seq_len) {
        (Some([start, end]), Some(seq_len)) => {
            let (start, end) = (start.as_u64().unwrap_or(0), end.as_u64().unwrap_or(0));
            end.saturating_sub(start).saturating_mul(seq_len)
        }
        _ => 0,
    }
}

/// The inputs of a card: everything comes from the ledger of one commit.
#[derive(Debug, Clone, Copy)]
pub struct CardInput<'a> {
    /// `ledger/manifest.json`.
    pub manifest: &'a Manifest,
    /// The compacted records (one per node id).
    pub records: &'a [&'a Record],
    /// `(config name, path)` of every metrics table that holds rows, in table order.
    pub tables: &'a [(&'a str, &'a str)],
}

/// What a run does with the repo's card when it commits the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardUpdate {
    /// Commit this card with the index (new, or changed with the ledger).
    Write(String),
    /// The repo's card already says exactly this.
    Unchanged,
    /// The repo has a card somebody else wrote; it is left as it is.
    LeftAlone,
}

/// The card to commit beside a new index: `tables` are the metrics tables written with it
/// (`(path, content)`; empty ones get no config), `existing` the repo's current card.
pub fn update(
    manifest: &Manifest,
    records: &[&Record],
    tables: &[(String, Vec<u8>)],
    existing: Option<&str>,
) -> CardUpdate {
    if authorship(existing) == Authorship::Other {
        return CardUpdate::LeftAlone;
    }
    let configs: Vec<(&str, &str)> = tables
        .iter()
        .filter(|(_, content)| !content.is_empty())
        .map(|(path, _)| (table_config(path), path.as_str()))
        .collect();
    let card = render(&CardInput {
        manifest,
        records,
        tables: &configs,
    });
    match existing == Some(card.as_str()) {
        true => CardUpdate::Unchanged,
        false => CardUpdate::Write(card),
    }
}

/// The config name of a metrics table: its file stem (`metrics/spectra.jsonl` → `spectra`).
pub fn table_config(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".jsonl").unwrap_or(name)
}

/// Who wrote the card a repo already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorship {
    /// The repo has no card.
    None,
    /// A card hubsweep wrote: regenerated by every run that commits the index.
    Hubsweep,
    /// A card somebody else wrote (no `hubsweep_card` key): left as it is.
    Other,
}

/// Whose card `text` is.
pub fn authorship(text: Option<&str>) -> Authorship {
    match text {
        None => Authorship::None,
        Some(text) => match front_matter(text) {
            Some(Ok(front)) if front.hubsweep_card.is_some() => Authorship::Hubsweep,
            _ => Authorship::Other,
        },
    }
}

/// The front matter fields hubsweep reads back (others are kept by whoever wrote them).
#[derive(Debug, Deserialize)]
struct FrontMatter {
    #[serde(default)]
    configs: Vec<ConfigEntry>,
    #[serde(default)]
    hubsweep_card: Option<Claims>,
}

#[derive(Debug, Deserialize)]
struct ConfigEntry {
    config_name: String,
    data_files: serde_json::Value,
}

/// The YAML between the opening `---` line and the next `---` line, parsed; `None` when the
/// text has no front matter.
fn front_matter(text: &str) -> Option<Result<FrontMatter, String>> {
    let yaml = front_matter_yaml(text)??;
    Some(
        serde_saphyr::from_str_with_options::<FrontMatter>(yaml, yaml_options())
            .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_owned()),
    )
}

/// A card's front matter: the YAML between its first line `---` and the next `---` line.
/// `None` without the opening line; `Some(None)` when no closing line follows.
pub fn front_matter_yaml(text: &str) -> Option<Option<&str>> {
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))?;
    Some(rest.find("\n---").map(|i| &rest[..=i]))
}

/// How YAML read from a card is parsed: a card is hostile input, so aliases, nodes and depth
/// are bounded as a spec's are.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 200_000;
    budget.max_depth = 64;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    options
}

/// What is wrong with a card, for `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardFinding {
    /// What the card says and what the ledger holds.
    pub message: String,
}

/// Checks a hubsweep card against the ledger it sits beside: the claims in its front matter
/// must equal `actual` (what the records establish, [`Claims::from_records`]), and every
/// `configs` entry must name files the repo has. A card somebody else wrote (no marker) is not
/// checked.
pub fn check(text: &str, actual: &Claims, has_file: impl Fn(&str) -> bool) -> Vec<CardFinding> {
    let finding = |message: String| CardFinding { message };
    let front = match front_matter(text) {
        None => return Vec::new(),
        Some(Err(reason)) => {
            return vec![finding(format!(
                "the front matter is not valid YAML: {reason}"
            ))];
        }
        Some(Ok(front)) => front,
    };
    let Some(claimed) = front.hubsweep_card else {
        return Vec::new();
    };
    let mut findings = Vec::new();
    if claimed.version != CARD_VERSION {
        findings.push(finding(format!(
            "`{CARD_MARKER}.version` is {}; this hubsweep reads version {CARD_VERSION}",
            claimed.version
        )));
        return findings;
    }
    let counts = [
        ("nodes", claimed.nodes, actual.nodes),
        ("failed", claimed.failed, actual.failed),
        ("files", claimed.files, actual.files),
        ("bytes", claimed.bytes, actual.bytes),
        ("tokens", claimed.tokens, actual.tokens),
    ];
    for (name, card, ledger) in counts {
        if card != ledger {
            findings.push(finding(format!(
                "the card claims {name}: {card}; the ledger holds {ledger}"
            )));
        }
    }
    let claimed_models: BTreeSet<&ModelPin> = claimed.models.iter().collect();
    let actual_models: BTreeSet<&ModelPin> = actual.models.iter().collect();
    for pin in claimed_models.difference(&actual_models) {
        findings.push(finding(format!(
            "the card pins `{}@{}` to `{}`; the ledger has no such pin",
            pin.repo, pin.revision, pin.commit
        )));
    }
    for pin in actual_models.difference(&claimed_models) {
        findings.push(finding(format!(
            "the ledger pins `{}@{}` to `{}`; the card does not say so",
            pin.repo, pin.revision, pin.commit
        )));
    }
    let claimed_data: BTreeSet<&String> = claimed.data.iter().collect();
    let actual_data: BTreeSet<&String> = actual.data.iter().collect();
    if claimed_data != actual_data {
        findings.push(finding(format!(
            "the card pins the token data to {}; the ledger to {}",
            code_list(claimed.data.iter()),
            code_list(actual.data.iter())
        )));
    }
    for config in &front.configs {
        let paths: Vec<&str> = match &config.data_files {
            serde_json::Value::String(path) => vec![path],
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|item| item.as_str().or_else(|| item.get("path")?.as_str()))
                .collect(),
            _ => Vec::new(),
        };
        for path in paths {
            if !has_file(path) {
                findings.push(finding(format!(
                    "config `{}` names `{path}`, which the repo does not have",
                    config.config_name
                )));
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::render::layer_ranges;
    use super::*;
    use crate::ledger::{FileRecord, SpecText, Tool};

    fn manifest() -> Manifest {
        let text = "name: tiny\noutput: local://alice/tiny\nlicense: mit\nmodels:\n  - family: llama\n    repo: local://alice/m\ndata:\n  texts: [\"a b\"]\n  seq_len: 4\ncapture:\n  hooks: [hook_resid_post]\n  layers: all\n";
        Manifest {
            schema_version: crate::ledger::SCHEMA_VERSION,
            tool: Tool {
                name: "hubsweep".into(),
                version: "0.1.0".into(),
            },
            sweep: "tiny".into(),
            output: "local://alice/tiny".into(),
            spec: SpecText {
                file_name: "tiny.yaml".into(),
                text: text.into(),
                sha256: "ab".repeat(32),
                canonical_sha256: "cd".repeat(32),
            },
            tolerances: Vec::new(),
        }
    }

    fn record(id: &str, kind: &str, params: serde_json::Value) -> Record {
        Record {
            id: id.repeat(64),
            kind: kind.into(),
            version: 1,
            params,
            inputs: Vec::new(),
            pins: serde_json::json!({}),
            files: Vec::new(),
            metrics: None,
            timing: None,
            device: None,
            error: None,
        }
    }

    fn records() -> Vec<Record> {
        let mut resolve = record(
            "1",
            "resolve",
            serde_json::json!({"model": "local://alice/m", "revision": "main"}),
        );
        resolve.metrics = Some(serde_json::json!({"commit": "c0ffee"}));
        let mut capture = record(
            "2",
            "capture",
            serde_json::json!({"model": "local://alice/m", "revision": "main", "seq_len": 4, "windows": [0, 3]}),
        );
        capture.pins = serde_json::json!({"data": "da7a"});
        let mut artifact = record(
            "3",
            "artifact",
            serde_json::json!({"hook": "hook_resid_post", "layer": 1}),
        );
        artifact.inputs = vec![capture.id.clone()];
        artifact.files = vec![FileRecord {
            path: "acts/a.safetensors".into(),
            size: 1000,
            sha256: "ee".repeat(32),
        }];
        let mut failed = record(
            "4",
            "spectrum",
            serde_json::json!({"hook": "hook_resid_post", "layer": 1}),
        );
        failed.error = Some("boom".into());
        vec![resolve, capture, artifact, failed]
    }

    #[test]
    fn claims_come_from_the_records() {
        let records = records();
        let claims = Claims::from_records(&records);
        assert_eq!((claims.nodes, claims.failed, claims.files), (3, 1, 1));
        assert_eq!((claims.bytes, claims.tokens), (1000, 12));
        assert_eq!(claims.data, ["da7a"]);
        assert_eq!(claims.models.len(), 1);
        assert_eq!(claims.models[0].commit, "c0ffee");
    }

    #[test]
    fn a_card_is_deterministic_checks_clean_and_catches_what_it_should_not_claim() {
        let (manifest, records) = (manifest(), records());
        let refs: Vec<&Record> = records.iter().collect();
        let tables = vec![
            ("metrics/spectra.jsonl".to_owned(), b"{}\n".to_vec()),
            ("metrics/overlaps.jsonl".to_owned(), Vec::new()),
        ];
        let CardUpdate::Write(card) = update(&manifest, &refs, &tables, None) else {
            panic!("no card written for a repo without one");
        };
        assert_eq!(
            update(&manifest, &refs, &tables, Some(&card)),
            CardUpdate::Unchanged
        );
        assert!(card.contains("license: \"mit\""), "{card}");
        assert!(card.contains("config_name: \"spectra\""), "{card}");
        assert!(!card.contains("overlaps"), "{card}");
        assert!(card.contains("- Layers: 1."), "{card}");
        assert_eq!(authorship(Some(&card)), Authorship::Hubsweep);

        let mut claims = Claims::from_records(refs.iter().copied());
        let present = |path: &str| path != "missing.jsonl";
        assert_eq!(check(&card, &claims, present), Vec::new());
        claims.nodes += 1;
        claims.models[0].commit = "bad".into();
        let findings = check(&card, &claims, present);
        assert_eq!(findings.len(), 3, "{findings:?}");
        let forged = card.replace("metrics/spectra.jsonl", "missing.jsonl");
        let claims = Claims::from_records(refs.iter().copied());
        assert_eq!(check(&forged, &claims, present).len(), 1);
        assert_eq!(check("---\n[unclosed\n---\n", &claims, present).len(), 1);
    }

    #[test]
    fn cards_not_written_by_hubsweep_are_left_alone() {
        let theirs = "---\nlicense: mit\n---\n# Mine\n";
        assert_eq!(authorship(Some(theirs)), Authorship::Other);
        assert_eq!(
            authorship(Some("no front matter at all")),
            Authorship::Other
        );
        assert_eq!(authorship(None), Authorship::None);
        let (manifest, records) = (manifest(), records());
        let refs: Vec<&Record> = records.iter().collect();
        assert_eq!(
            update(&manifest, &refs, &[], Some(theirs)),
            CardUpdate::LeftAlone
        );
    }

    #[test]
    fn layers_read_as_ranges() {
        let layers: BTreeSet<u64> = [0, 1, 2, 5, 7, 8].into_iter().collect();
        assert_eq!(layer_ranges(&layers), "0–2, 5, 7–8");
        assert_eq!(table_config("metrics/spectra.jsonl"), "spectra");
    }
}
