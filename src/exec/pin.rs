//! Pinning: every (model, revision) resolved to exact bytes before anything runs — its files,
//! the commit sha they come from, its dimensions, and the token windows its tokenizer makes of
//! the data. The result feeds the planner ([`pin_and_plan`]), so every node of the pinned plan has
//! its id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{RunError, RunEvent, RunEvents, output_repo};
use crate::data::{HubDatasetFile, PromptSource, TextTokenizer, TokenWindows, WindowSettings};
use crate::hub::HubClient;
use crate::ledger::LedgerState;
use crate::model::{HubSource, ModelConfig, ModelFiles};
use crate::plan::{self, Plan, PlanOptions};
use crate::plan::{ModelDims, ModelFacts, ModelLookup};
use crate::spec::Diagnostic;
use crate::spec::{DataSource, HubKind, ModelInstance, ModelSource, SweepSpec};

/// Where models and dataset files are fetched from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The Hub for `repo: NS/NAME` (`HF_ENDPOINT`), with its token and cache.
    pub hf: HubSource,
    /// The embedded hub for `local://` repos, with a cache of its own (the HF cache layout has
    /// no endpoint in it, so the two must not share one).
    pub local: Option<HubSource>,
    /// Folder relative paths in the spec are resolved against.
    pub spec_dir: PathBuf,
    /// Pins to hold to, by `source@revision`: a Hub revision is fetched at this commit instead
    /// of being resolved, and a local folder must still hash to this `sha256:`. `reproduce`
    /// takes them from a ledger's resolve records, so a branch that moved since the run changes
    /// nothing; a run leaves this empty.
    pub pinned: BTreeMap<String, String>,
    /// Commit to fetch the spec's Hub data file at instead of resolving its revision: `run`
    /// takes it from the output repo's ledger when it resumes (so one sweep reads one text),
    /// `reproduce` from the ledger it rebuilds. `None` resolves the revision.
    pub pinned_data: Option<String>,
}

/// Where a Hub data file came from: the spec's file and revision, and the commit it resolved
/// to. `run` records it in the `metrics.data` of every resolve record (docs/ledger.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataPin {
    /// `hf` or `local`.
    pub hub: HubKind,
    /// Dataset repo id, `NS/NAME`.
    pub repo: String,
    /// Path of the file in the repo.
    pub path: String,
    /// The revision the spec names.
    pub revision: String,
    /// The commit the file was fetched at.
    pub commit: String,
}

impl DataPin {
    /// Whether this pin is of the spec's data file (same hub, repo, path and revision).
    pub fn is_of(&self, spec: &SweepSpec) -> bool {
        match &spec.data.source {
            DataSource::HubFile {
                hub,
                repo_id,
                path,
                revision,
                ..
            } => {
                *hub == self.hub
                    && *repo_id == self.repo
                    && *path == self.path
                    && *revision == self.revision
            }
            _ => false,
        }
    }

    /// The pin of the spec's data file recorded in `records` (in a resolve record's
    /// `metrics.data`), if any.
    pub fn recorded<'a>(
        spec: &SweepSpec,
        records: impl IntoIterator<Item = &'a crate::ledger::Record>,
    ) -> Option<DataPin> {
        records
            .into_iter()
            .filter(|r| r.kind == crate::plan::NodeKind::Resolve.as_str() && r.error.is_none())
            .filter_map(|r| r.metrics.as_ref()?.get("data").cloned())
            .filter_map(|data| serde_json::from_value::<DataPin>(data).ok())
            .find(|pin| pin.is_of(spec))
    }
}

/// One model revision, pinned.
#[derive(Debug, Clone)]
pub struct PinnedModel {
    /// Its files. A Hub checkpoint's weights are only named here until
    /// [`fetch_weights`](PinnedModel::fetch_weights) brings them.
    pub files: ModelFiles,
    /// Where its weights come from: the Hub and repo (`None`: a local folder, all present).
    pub origin: Option<(HubSource, String)>,
    /// The weight files that were in the cache already when it was pinned: the ones
    /// [`evict_weights`](PinnedModel::evict_weights) leaves.
    pub cached_weights: Vec<PathBuf>,
    /// Its config.
    pub config: ModelConfig,
    /// Dimensions, as the planner reads them.
    pub dims: ModelDims,
    /// The commit sha of a Hub revision, or `sha256:…` of a local folder's files.
    pub commit: String,
    /// The token windows this model's tokenizer makes of the data.
    pub windows: TokenWindows,
    /// Where the data came from, when it is a Hub file.
    pub data: Option<DataPin>,
}

impl Sources {
    fn for_hub(&self, hub: HubKind) -> Result<&HubSource, RunError> {
        match hub {
            HubKind::Hf => Ok(&self.hf),
            HubKind::Local => self.local.as_ref().ok_or(RunError::NoLocalHub),
        }
    }
}

/// Fetches a Hub dataset file once per run (every model reads the same file), at
/// [`Sources::pinned_data`] when set; returns the data and, for a Hub file, where it came from.
pub async fn fetch_data(
    spec: &SweepSpec,
    sources: &Sources,
) -> Result<(PromptSource, Option<DataPin>), RunError> {
    Ok(match &spec.data.source {
        DataSource::Texts(texts) => (PromptSource::Texts(texts.clone()), None),
        DataSource::TokenIds(ids) => (PromptSource::TokenIds(ids.clone()), None),
        DataSource::File { path, field } => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                sources.spec_dir.join(path)
            };
            (
                PromptSource::File {
                    path,
                    field: field.clone(),
                },
                None,
            )
        }
        DataSource::HubFile {
            hub,
            repo_id,
            path,
            revision,
            field,
        } => {
            let file = HubDatasetFile {
                repo: repo_id.clone(),
                revision: sources.pinned_data.clone().unwrap_or(revision.clone()),
                path: path.clone(),
                field: field.clone(),
            };
            let fetched = file.fetch(sources.for_hub(*hub)?).await;
            let fetched = match (&sources.pinned_data, fetched) {
                (_, Ok(fetched)) => fetched,
                (Some(commit), Err(source)) => {
                    return Err(RunError::DataPin {
                        repo: repo_id.clone(),
                        path: path.clone(),
                        commit: commit.clone(),
                        source: Box::new(source),
                    });
                }
                (None, Err(source)) => return Err(RunError::Data { source }),
            };
            // Fetched by commit, the snapshot folder is that commit; by branch, whatever it
            // resolved to (the cache layout always shows it; without it nothing is recorded).
            let pin = fetched
                .commit
                .or_else(|| sources.pinned_data.clone())
                .map(|commit| DataPin {
                    hub: *hub,
                    repo: repo_id.clone(),
                    path: path.clone(),
                    revision: revision.clone(),
                    commit,
                });
            (fetched.source, pin)
        }
    })
}

/// Pins one model revision and tokenizes the data for it: files, commit, config checked
/// against the spec, tokenizer, windows — one refusal after another, each naming the model.
///
/// Somewhat long because it reads as that list of refusals, in the order a user fixes them;
/// each check is a few lines that use what the ones before established.
pub async fn pin_model(
    spec: &SweepSpec,
    instance: &ModelInstance,
    data: &PromptSource,
    sources: &Sources,
) -> Result<PinnedModel, RunError> {
    let label = format!("{}@{}", instance.source, instance.revision);
    let pin = sources.pinned.get(&label);
    let fetch = pin.map_or(instance.revision.as_str(), String::as_str);
    let mut origin = None;
    let files = match &instance.source {
        ModelSource::Path(path) => {
            let dir = if path.is_absolute() {
                path.clone()
            } else {
                sources.spec_dir.join(path)
            };
            ModelFiles::from_dir(&dir).map_err(|source| RunError::Model {
                label: label.clone(),
                source: Box::new(source),
            })?
        }
        ModelSource::Hub(id) => {
            origin = Some((sources.hf.clone(), id.clone()));
            ModelFiles::resolve(&sources.hf, id, fetch)
                .await
                .map_err(|source| RunError::Model {
                    label: label.clone(),
                    source: Box::new(source),
                })?
        }
        ModelSource::Local(id) => {
            let hub = sources.for_hub(HubKind::Local)?;
            origin = Some((hub.clone(), id.clone()));
            ModelFiles::resolve(hub, id, fetch)
                .await
                .map_err(|source| RunError::Model {
                    label: label.clone(),
                    source: Box::new(source),
                })?
        }
    };
    let cached_weights = files
        .weights
        .iter()
        .filter(|path| path.is_file())
        .cloned()
        .collect();
    let commit = match &files.commit {
        Some(commit) => commit.clone(),
        None => folder_hash(&files).map_err(|source| RunError::Io {
            path: files.dir.clone(),
            source,
        })?,
    };
    if let Some(pin) = pin.filter(|pin| **pin != commit) {
        return Err(RunError::Config {
            label,
            reason: format!(
                "pinned to `{pin}`, but its files are `{commit}` now (a local folder changed, or the hub has no such commit)"
            ),
        });
    }
    let config = ModelConfig::from_file(&files.config).map_err(|source| RunError::Model {
        label: label.clone(),
        source: Box::new(source),
    })?;
    let text = fs_err::read_to_string(&files.config).map_err(|source| RunError::Io {
        path: files.config.clone(),
        source,
    })?;
    let (family, dims) = ModelDims::from_config_json(&text).map_err(|reason| RunError::Config {
        label: label.clone(),
        reason,
    })?;
    if let Some(named) = instance.family.filter(|named| *named != family) {
        return Err(RunError::Config {
            label,
            reason: format!(
                "the spec says `{}` but config.json says `{}`",
                named.as_str(),
                family.as_str()
            ),
        });
    }
    let tokenizer = match (data, &files.tokenizer) {
        (PromptSource::TokenIds(_), _) => None,
        (_, Some(path)) => {
            Some(TextTokenizer::from_file(path).map_err(|source| RunError::Data { source })?)
        }
        (_, None) => {
            return Err(RunError::Config {
                label,
                reason: "text prompts need a tokenizer.json, and the model has none".into(),
            });
        }
    };
    let settings = WindowSettings {
        seq_len: spec.data.seq_len as usize,
        prepend_bos: if spec.data.prepend_bos {
            config.bos_token_id
        } else {
            None
        },
        // Documents are joined with the BOS token, which is also the end-of-text token of
        // GPT-NeoX; without one, documents simply follow each other.
        separator: config.bos_token_id,
        max_tokens: spec.data.max_tokens.map(|t| t as usize),
    };
    if spec.data.prepend_bos && config.bos_token_id.is_none() {
        return Err(RunError::Config {
            label,
            reason: "`prepend_bos` is set but config.json has no `bos_token_id`".into(),
        });
    }
    let windows = TokenWindows::build(data, tokenizer.as_ref(), &settings)
        .map_err(|source| RunError::Data { source })?;
    Ok(PinnedModel {
        files,
        origin,
        cached_weights,
        config,
        dims,
        commit,
        windows,
        data: None,
    })
}

/// `sha256:` of a local folder's config, weights and tokenizer (name, length and bytes of each).
fn folder_hash(files: &ModelFiles) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut paths: Vec<&Path> = vec![files.config.as_path()];
    paths.extend(files.weights.iter().map(PathBuf::as_path));
    paths.extend(files.tokenizer.as_deref());
    for path in paths {
        let bytes = fs_err::read(path)?;
        hasher.update(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

impl PinnedModel {
    /// Downloads the weights that are not in the cache yet (nothing for a local folder).
    pub async fn fetch_weights(&self, label: &str) -> Result<(), RunError> {
        self.weights_fetch(label.to_owned()).await
    }

    /// How many of its weight files are not in the cache yet (none for a local folder).
    pub fn missing_weights(&self) -> usize {
        if self.origin.is_none() {
            return 0;
        }
        self.files.weights.iter().filter(|p| !p.is_file()).count()
    }

    /// [`fetch_weights`](PinnedModel::fetch_weights), saying first how many files it downloads
    /// ([`RunEvent::Downloading`]; nothing when all are in the cache): on a slow link this is
    /// minutes.
    pub async fn fetch_weights_saying(
        &self,
        label: &str,
        events: &RunEvents,
    ) -> Result<(), RunError> {
        let files = self.missing_weights();
        if files == 0 {
            return Ok(());
        }
        events(&RunEvent::Downloading {
            label: label.to_owned(),
            files,
        });
        self.fetch_weights(label).await
    }

    /// [`fetch_weights`](PinnedModel::fetch_weights), detached from the model, to run on a
    /// task of its own (the run downloads the next model's weights while this one runs).
    pub fn weights_fetch(
        &self,
        label: String,
    ) -> impl Future<Output = Result<(), RunError>> + Send + 'static {
        let (files, origin) = (self.files.clone(), self.origin.clone());
        async move {
            let Some((source, repo)) = origin else {
                return Ok(());
            };
            files
                .fetch_weights(&source, &repo)
                .await
                .map(drop)
                .map_err(|source| RunError::Model {
                    label,
                    source: Box::new(source),
                })
        }
    }

    /// Deletes from the HF cache the weight files this run downloaded (never those that
    /// were there when the model was pinned, nor anything outside the cache): the blob each
    /// snapshot entry points to, then the entry. Returns the bytes freed.
    pub fn evict_weights(&self) -> Result<u64, RunError> {
        let Some((source, _)) = &self.origin else {
            return Ok(0);
        };
        self.files
            .evict_weights(&source.cache_dir, &self.cached_weights)
            .map_err(|(path, source)| RunError::Io { path, source })
    }
}

/// The planner's view of pinned models.
pub struct PinnedLookup<'a> {
    /// Pinned models, in plan order (the planner asks in the same order it expands).
    pub models: &'a [(ModelInstance, PinnedModel)],
    /// Pinned adapters.
    pub adapters: &'a [super::updates::PinnedAdapter],
}

impl ModelLookup for PinnedLookup<'_> {
    fn lookup(&self, source: &ModelSource, revision: &str) -> ModelFacts {
        match self
            .models
            .iter()
            .find(|(i, _)| &i.source == source && i.revision == revision)
        {
            Some((_, pinned)) => ModelFacts {
                commit: Some(pinned.commit.clone()),
                dims: Some(pinned.dims),
                problem: None,
                windows: Some(pinned.windows.n_windows() as u64),
                data_hash: Some(pinned.windows.content_hash()),
            },
            None => ModelFacts::default(),
        }
    }

    fn adapter_base(&self, adapter: &crate::spec::expand::AdapterInstance) -> Option<String> {
        self.adapters
            .iter()
            .find(|p| &p.instance == adapter)
            .and_then(|p| p.base.clone())
    }

    fn adapter(&self, adapter: &crate::spec::expand::AdapterInstance) -> Option<(String, PathBuf)> {
        self.adapters
            .iter()
            .find(|p| &p.instance == adapter)
            .map(|p| (p.commit.clone(), p.dir.clone()))
    }
}

/// Pins models and builds the pinned plan. Pinning downloads no weights: a weight sweep's
/// module patterns are checked against the checkpoints by
/// [`check_pending_module_patterns`](super::check_pending_module_patterns), which `run` calls
/// while weight spectra are still to run (node ids do not depend on the checkpoints' keys).
pub async fn pin_and_plan(
    spec: &SweepSpec,
    sources: &Sources,
    device_class: &str,
    events: &RunEvents,
) -> Result<(Plan, Vec<(ModelInstance, PinnedModel)>), RunError> {
    // Every pinning tokenizes the data for every model: a command does it once (the Slurm
    // tests count these lines in the jobs' logs).
    tracing::debug!(sweep = %spec.name, device = device_class, "pinning the sweep");
    let (data, data_pin) = fetch_data(spec, sources).await?;
    // Adapters first: a group without `repo` takes its bases from their configs.
    let adapters = super::updates::pin_adapters(spec, sources, events).await?;
    let mut pinned = Vec::new();
    for group in &spec.models {
        for instance in crate::spec::expand_group(group, &mut Vec::new()) {
            let instance = super::updates::with_adapter_base(instance, &adapters)?;
            if pinned.iter().any(|(i, _): &(ModelInstance, PinnedModel)| {
                i.source == instance.source && i.revision == instance.revision
            }) {
                continue;
            }
            let mut instance = instance;
            instance.adapter = None;
            tracing::debug!(model = %format!("{}@{}", instance.source, instance.revision), "pinning a model revision");
            let mut model = pin_model(spec, &instance, &data, sources).await?;
            model.data = data_pin.clone();
            events(&RunEvent::Pinned {
                label: format!("{}@{}", instance.source, instance.revision),
                commit: model.commit.clone(),
                windows: model.windows.n_windows(),
            });
            pinned.push((instance, model));
        }
    }
    let lookup = PinnedLookup {
        models: &pinned,
        adapters: &adapters,
    };
    let options = PlanOptions {
        lookup: &lookup,
        data_hash: None,
        device_class: device_class.to_owned(),
    };
    let plan = plan::build(spec, &options);
    plan.refusal().map_err(|refusal| RunError::Plan {
        diagnostics: refusal.diagnostics,
    })?;
    if plan.nodes.iter().any(|n| n.id.is_none()) {
        return Err(RunError::Plan {
            diagnostics: vec![Diagnostic::error(
                "",
                "some nodes are still unpinned after pinning every model",
            )],
        });
    }
    Ok((plan, pinned))
}

/// Checks a weight sweep's module patterns against the checkpoints' keys when weight spectra
/// of `selection` are still to run by `state`, so a bad pattern is refused before anything
/// runs. Checkpoints are downloaded one after another until every pattern matched in one
/// (usually the first), starting with the models the selection takes turns with; a finished
/// sweep, or a Slurm unit without weight spectra, downloads nothing.
pub async fn check_pending_module_patterns(
    spec: &SweepSpec,
    plan: &Plan,
    pinned: &[(ModelInstance, PinnedModel)],
    state: &LedgerState,
    selection: &super::UnitSelection,
    events: &RunEvents,
) -> Result<(), RunError> {
    let pending = plan.nodes.iter().any(|node| {
        let crate::plan::Params::WeightSpectrum { model, .. } = node.params else {
            return false;
        };
        let id = node.id.map(|id| id.to_hex()).unwrap_or_default();
        selection.has_unit(model as usize) && !state.is_done(&id) && !selection.excludes(&id)
    });
    if !pending {
        return Ok(());
    }
    let (mine, others): (Vec<usize>, Vec<usize>) =
        (0..pinned.len()).partition(|&m| selection.has_unit(m));
    let order: Vec<usize> = mine.into_iter().chain(others).collect();
    check_module_patterns(spec, pinned, &order, events).await
}

/// Checks a weight sweep's module patterns against the checkpoints' keys, before anything
/// runs: the weights of one model after another (in `order`, indices into `pinned`; the models
/// a run is about to use first) are downloaded until every pattern matched in one of them
/// (usually the first; the rest are downloaded when their turn comes). A pattern that matches
/// nothing is a plan error, with a "did you mean" where one fits.
async fn check_module_patterns(
    spec: &SweepSpec,
    pinned: &[(ModelInstance, PinnedModel)],
    order: &[usize],
    events: &RunEvents,
) -> Result<(), RunError> {
    if spec.weights.is_none() {
        return Ok(());
    }
    let mut module_errors = Vec::new();
    for (checked, &m) in order.iter().enumerate() {
        let (instance, model) = &pinned[m];
        let label = format!("{}@{}", instance.source, instance.revision);
        model.fetch_weights_saying(&label, events).await?;
        module_errors =
            super::weights::check_modules(spec, order[..=checked].iter().map(|&k| &pinned[k].1))?;
        if module_errors.is_empty() {
            return Ok(());
        }
    }
    if module_errors.is_empty() {
        return Ok(());
    }
    Err(RunError::Plan {
        diagnostics: module_errors,
    })
}

/// `sources` holding the spec's Hub data file to the commit the output repo's ledger records
/// (`run` resuming, `status`, cluster workers), so every capture of one output repo comes from
/// the same text even if the branch moved since. Only a spec with a Hub data file (and no
/// `pinned_data` yet) reads the ledger here: a run reads the state it works from after
/// pinning, as late as possible, so concurrent runs see each other's records.
pub async fn hold_data_to_ledger(
    spec: &SweepSpec,
    sources: &Sources,
    output_client: &HubClient,
) -> Result<Sources, RunError> {
    let mut sources = sources.clone();
    if sources.pinned_data.is_none() && matches!(spec.data.source, DataSource::HubFile { .. }) {
        let repo = output_repo(spec)?;
        let state = LedgerState::read(output_client, &repo, "main")
            .await
            .map_err(|source| RunError::Ledger {
                repo: spec.output.to_string(),
                source,
            })?;
        sources.pinned_data = DataPin::recorded(spec, state.records.values()).map(|p| p.commit);
    }
    Ok(sources)
}
