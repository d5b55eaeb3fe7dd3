//! Pinning adapters: each (repo, revision, subfolder) of the grid resolved to a commit (or, for a
//! local folder, the `sha256:` of its two files), its `adapter_config.json` and
//! `adapter_model.safetensors` brought into the cache, and the pair read once as a LoRA adapter
//! so that what is not one is refused before anything runs — each refusal located at the
//! model group's `adapter:` in the spec.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::super::RunError;
use super::super::pin::Sources;
use crate::hub::client::error_chain;
use crate::model::adapter::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraAdapter};
use crate::spec::expand::AdapterInstance;
use crate::spec::{Diagnostic, ModelSource, SweepSpec};

/// One adapter, pinned.
#[derive(Debug, Clone)]
pub struct PinnedAdapter {
    /// The adapter as the grid names it.
    pub instance: AdapterInstance,
    /// Commit sha of its repo, or `sha256:` of a local folder's two files.
    pub commit: String,
    /// The folder holding its two files on this machine.
    pub dir: PathBuf,
    /// The base its config names (`base_model_name_or_path`), if any.
    pub base: Option<String>,
}

/// Pins every adapter of the spec's grid, in expansion order, once each.
pub async fn pin_adapters(
    spec: &SweepSpec,
    sources: &Sources,
    events: &super::super::RunEvents,
) -> Result<Vec<PinnedAdapter>, RunError> {
    let mut pinned: Vec<PinnedAdapter> = Vec::new();
    for group in spec.models.iter().filter(|g| g.adapter.is_some()) {
        for instance in crate::spec::expand_group(group, &mut Vec::new()) {
            let Some(adapter) = instance.adapter else {
                continue;
            };
            if pinned.iter().any(|p| p.instance == adapter) {
                continue;
            }
            tracing::debug!(adapter = %adapter.label(), "pinning an adapter");
            let adapter = pin_adapter(group.index, adapter, sources).await?;
            events(&super::super::RunEvent::Pinned {
                label: adapter.instance.label(),
                commit: adapter.commit.clone(),
                windows: 0,
            });
            pinned.push(adapter);
        }
    }
    Ok(pinned)
}

/// `instance` with its base filled in from its pinned adapter's config when the spec names
/// none; refused, at the group's `repo`, when the config names none either.
pub fn with_adapter_base(
    instance: crate::spec::ModelInstance,
    adapters: &[PinnedAdapter],
) -> Result<crate::spec::ModelInstance, RunError> {
    if !instance.base_from_adapter {
        return Ok(instance);
    }
    let adapter = instance.adapter.as_ref();
    let base = adapters
        .iter()
        .find(|p| Some(&p.instance) == adapter)
        .and_then(|p| p.base.clone());
    match base {
        Some(base) => Ok(instance.with_base(&base)),
        None => Err(RunError::Plan {
            diagnostics: vec![
                Diagnostic::error(
                    format!("/models/{}", instance.group),
                    format!(
                        "adapter `{}` names no base (`base_model_name_or_path` in its adapter_config.json)",
                        adapter.map(AdapterInstance::label).unwrap_or_default()
                    ),
                )
                .with_help("give the base as the group's `repo`"),
            ],
        }),
    }
}

/// Pins one adapter (see the module docs).
async fn pin_adapter(
    group: usize,
    adapter: AdapterInstance,
    sources: &Sources,
) -> Result<PinnedAdapter, RunError> {
    let at = format!("/models/{group}/adapter");
    let label = adapter.label();
    // `reproduce` holds an adapter's repo to the commit its records name, like a model's.
    let key = format!("{}@{}", adapter.source, adapter.revision);
    let held = sources.pinned.get(&key);
    let refuse = |path: String, message: String, help: &str| RunError::Plan {
        diagnostics: vec![Diagnostic::error(path, message).with_help(help.to_owned())],
    };
    let (dir, commit) = match &adapter.source {
        ModelSource::Path(path) => {
            let root = if path.is_absolute() {
                path.clone()
            } else {
                sources.spec_dir.join(path)
            };
            let dir = match &adapter.subfolder {
                Some(folder) => root.join(folder),
                None => root.clone(),
            };
            if !dir.is_dir() {
                let (path, help) = missing_folder_help(&at, &adapter, &root);
                return Err(refuse(
                    path,
                    format!("adapter `{label}`: there is no folder `{}`", dir.display()),
                    &help,
                ));
            }
            let commit = folder_hash(&dir).map_err(|source| RunError::Io {
                path: dir.clone(),
                source,
            })?;
            (dir, commit)
        }
        ModelSource::Hub(id) | ModelSource::Local(id) => {
            let hub = match adapter.source {
                ModelSource::Local(_) => sources.local.as_ref().ok_or(RunError::NoLocalHub)?,
                _ => &sources.hf,
            };
            let revision = held.map_or(adapter.revision.as_str(), String::as_str);
            let fetched = crate::model::files::fetch_folder(
                hub,
                id,
                revision,
                adapter.subfolder.as_deref(),
                &[ADAPTER_CONFIG, ADAPTER_WEIGHTS],
            )
            .await;
            match fetched {
                Ok((dir, Some(commit))) => (dir, commit),
                Ok((dir, None)) => {
                    return Err(RunError::Io {
                        path: dir,
                        source: std::io::Error::other("the cache does not show the commit"),
                    });
                }
                Err(error) => {
                    let (path, help) = match &adapter.subfolder {
                        Some(folder) => (
                            format!("{at}/subfolder"),
                            format!("check that `{folder}` holds the adapter at this revision (trainers save `checkpoint-N/` folders)"),
                        ),
                        None => (
                            format!("{at}/repo"),
                            "check the repo and revision, and give `subfolder` when the adapter is not at the repo's root".to_owned(),
                        ),
                    };
                    return Err(refuse(
                        path,
                        format!(
                            "adapter `{label}` cannot be fetched: {}",
                            error_chain(&error)
                        ),
                        &help,
                    ));
                }
            }
        }
    };
    if let Some(held) = held.filter(|held| **held != commit) {
        return Err(refuse(
            format!("{at}/repo"),
            format!("adapter `{label}` was pinned to `{held}`, but its files are `{commit}` now"),
            "a local folder changed, or the hub has no such commit",
        ));
    }
    let base = match LoraAdapter::open(&dir) {
        Ok(read) => read.config().base_model_name_or_path.clone(),
        Err(error) => {
            return Err(refuse(
                at.clone(),
                format!("adapter `{label}`: {}", error_chain(&error)),
                "hubsweep reads PEFT LoRA adapters (`peft_type: LORA`, `adapter_model.safetensors`)",
            ));
        }
    };
    Ok(PinnedAdapter {
        instance: adapter,
        commit,
        dir,
        base: base.filter(|b| !b.is_empty()),
    })
}

/// Where a missing local adapter folder is located in the spec, and what to do.
fn missing_folder_help(at: &str, adapter: &AdapterInstance, root: &Path) -> (String, String) {
    if adapter.subfolder.is_none() || !root.is_dir() {
        return (
            format!("{at}/repo"),
            "give the folder that holds `adapter_config.json` (relative paths are relative to the spec file)".to_owned(),
        );
    }
    let mut folders: Vec<String> = fs_err::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(ADAPTER_CONFIG).is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    let help = if folders.is_empty() {
        "no folder there holds an `adapter_config.json`".to_owned()
    } else {
        format!("folders with an adapter: {}", folders.join(", "))
    };
    (format!("{at}/subfolder"), help)
}

/// `sha256:` of an adapter folder's two files (name, length and bytes of each).
fn folder_hash(dir: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    for name in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        let path = dir.join(name);
        if !path.is_file() {
            // LoraAdapter::open says what is missing, with what to do.
            continue;
        }
        let bytes = fs_err::read(&path)?;
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
