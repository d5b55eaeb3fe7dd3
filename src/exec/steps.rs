//! The steps of a run, per model revision and across models: grouping the plan's nodes by
//! model, a model's capture and spectra, its weight spectra, the overlaps between spectra, and
//! the weights a model no longer needs. [`super::models`] takes the models in turn through
//! them; [`super::run_units`] drives the whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::analysis::{Centring, Spectrum};
use crate::hub::Repo;
use crate::ledger::LedgerState;
use crate::model::Model;
use crate::plan::{self, Params, Plan};
use crate::sink::{Artifact, Committable, UploadJob};
use crate::spec::{Hook, SweepSpec};

use super::{
    ModelNodes, PinnedModel, RunError, RunEvent, RunEvents, RunSettings, UnitSelection, capture,
    records, weights,
};
use crate::spec::ModelInstance;

/// What every step of a run reads: the pinned plan against the ledger, the device and memory
/// budget, and where results go.
pub(super) struct Run<'a> {
    pub spec: &'a SweepSpec,
    pub settings: &'a RunSettings,
    /// The output repo's client.
    pub client: &'a crate::hub::HubClient,
    pub plan: &'a Plan,
    pub pinned: &'a [(ModelInstance, PinnedModel)],
    /// Nodes the ledger has, or a node selection leaves out: no step runs them.
    pub done: &'a HashSet<usize>,
    pub selection: &'a UnitSelection,
    pub device: &'a candle_core::Device,
    pub budget: &'a Arc<Semaphore>,
    pub uploads: &'a mpsc::Sender<UploadJob>,
    pub commits: &'a mpsc::Sender<Committable>,
    pub events: &'a RunEvents,
    pub cancel: &'a CancellationToken,
}

pub(super) fn group_nodes(plan: &Plan) -> Vec<ModelNodes> {
    let mut by_model: Vec<ModelNodes> = (0..plan.models.len())
        .map(|_| ModelNodes::default())
        .collect();
    for (i, node) in plan.nodes.iter().enumerate() {
        match &node.params {
            Params::Resolve { model } => by_model[*model as usize].resolve = Some(i),
            Params::Capture { model, .. } => by_model[*model as usize].captures.push(i),
            Params::Artifact { model, shard, .. } => by_model[*model as usize]
                .artifacts
                .entry(*shard)
                .or_default()
                .push(i),
            Params::Spectrum { model, .. } => by_model[*model as usize].spectra.push(i),
            Params::LedgerCommit { model: Some(m) } => by_model[*m as usize].commit = Some(i),
            _ => {}
        }
    }
    by_model
}

/// What one model's capture and analyses did.
#[derive(Debug, Default)]
pub(super) struct ModelRun {
    /// Nodes executed.
    pub executed: usize,
    /// Wall time of the capture.
    pub capture_seconds: f64,
    /// Where the capture's time went.
    pub stages: capture::CaptureTimes,
}

/// Model `m`'s capture and spectra: its weights (unless downloaded ahead), the forward passes
/// over its pending shards with their artifacts streamed to the sink, the spectra of the Gram
/// matrices accumulated on the way, and its ledger-commit node.
///
/// Long because it is the model's turn read top-down — load on the device, reserve memory,
/// capture on a blocking thread, spectra, commit node — each step using what the steps before
/// it made; the heavy parts (`capture::run_capture`, the spectra) are functions of their own.
pub(super) async fn run_model(
    run: &Run<'_>,
    m: usize,
    nodes: &ModelNodes,
    label: &str,
    spectra_out: &mut HashMap<usize, Arc<Spectrum>>,
) -> Result<ModelRun, RunError> {
    let Run {
        spec,
        plan,
        done,
        device,
        budget,
        uploads,
        commits,
        events,
        cancel,
        ..
    } = *run;
    let pinned = &run.pinned[m].1;
    let perturb_for_tests = run.settings.perturb_capture_for_tests;
    let Some(capture_spec) = &spec.capture else {
        return Ok(ModelRun::default());
    };
    let pending_spectra: Vec<usize> = nodes
        .spectra
        .iter()
        .copied()
        .filter(|s| !done.contains(s))
        .collect();
    let mut shards = Vec::new();
    let mut executed = 0;
    let model_info = &plan.models[m];
    for &c in &nodes.captures {
        let Params::Capture { shard, windows, .. } = plan.nodes[c].params else {
            continue;
        };
        let artifacts = nodes.artifacts.get(&shard).cloned().unwrap_or_default();
        let pending: Vec<usize> = artifacts
            .iter()
            .copied()
            .filter(|a| !done.contains(a))
            .collect();
        if pending.is_empty() && pending_spectra.is_empty() && done.contains(&c) {
            continue;
        }
        let (first, last) = match windows {
            plan::Windows::Range([a, b]) => (a as usize, b as usize),
            plan::Windows::All(_) => (0, pinned.windows.n_windows()),
        };
        let targets = artifacts
            .iter()
            .filter_map(|&a| {
                let Params::Artifact { hook, layer, .. } = plan.nodes[a].params else {
                    return None;
                };
                let upload = (!done.contains(&a)).then(|| {
                    let record = records::record(plan, &plan.nodes[a], None);
                    let path = plan.file_path(&plan.nodes[a]).unwrap_or_default();
                    (path, record)
                });
                Some(capture::Target {
                    hook,
                    layer,
                    upload,
                })
            })
            .collect();
        let capture_record =
            (!done.contains(&c)).then(|| records::record(plan, &plan.nodes[c], None));
        executed += pending.len() + usize::from(capture_record.is_some());
        shards.push(capture::ShardWork {
            shard,
            windows: (first, last),
            targets,
            capture_record,
        });
    }
    if shards.is_empty() && pending_spectra.is_empty() {
        executed += send_model_commit(plan, nodes, done, commits).await;
        events(&RunEvent::ModelSkipped {
            label: label.to_owned(),
        });
        return Ok(ModelRun {
            executed,
            ..ModelRun::default()
        });
    }
    // The weights, unless the download one model ahead brought them already.
    fetch_weights(run, pinned, label).await?;
    events(&RunEvent::ModelStarted {
        label: label.to_owned(),
        shards: shards.len(),
    });
    let files = pinned.files.clone();
    let load_device = device.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        Model::load(&files, &load_device, candle_core::DType::F32)
    })
    .await
    .map_err(|source| RunError::Task {
        label: label.to_owned(),
        source,
    })?
    .map_err(|source| RunError::Model {
        label: label.to_owned(),
        source: Box::new(source),
    })?;
    let spectra_keys: Vec<(Hook, Option<u32>)> = pending_spectra
        .iter()
        .filter_map(|&s| match plan.nodes[s].params {
            Params::Spectrum { hook, layer, .. } => Some((hook, layer)),
            _ => None,
        })
        .collect();
    let metadata = capture::model_metadata(
        &model_info.instance.source.to_string(),
        &pinned.commit,
        &model_info.instance.revision,
    );
    let work = capture::CaptureWork {
        label: label.to_owned(),
        model: Arc::new(loaded),
        tokens: Arc::new(pinned.windows.tokens().to_vec()),
        seq_len: pinned.windows.seq_len(),
        batch_size: spec.compute.batch_size as usize,
        dtype: capture_spec.dtype,
        pool: capture_spec.pool,
        shards,
        spectra: spectra_keys,
        metadata,
        perturb_for_tests,
        memory: spec.limits.memory,
    };
    let (budget, uploads_tx, commits_tx, cancel_capture) = (
        budget.clone(),
        uploads.clone(),
        commits.clone(),
        cancel.clone(),
    );
    let progress_events = events.clone();
    let progress_label = label.to_owned();
    let started = Instant::now();
    let captured = tokio::task::spawn_blocking(move || {
        capture::run_capture(
            work,
            budget,
            uploads_tx,
            commits_tx,
            |capture::CaptureEvent::ShardDone { tokens, .. }| {
                progress_events(&RunEvent::ShardDone {
                    label: progress_label.clone(),
                    tokens,
                })
            },
            cancel_capture,
        )
    })
    .await
    .map_err(|source| RunError::Task {
        label: label.to_owned(),
        source,
    })??;
    let capture_seconds = started.elapsed().as_secs_f64();
    // Spectra: decompose each accumulated Gram matrix (CPU-heavy, off the async threads).
    for &s in &pending_spectra {
        let Params::Spectrum {
            hook, layer, top_k, ..
        } = plan.nodes[s].params
        else {
            continue;
        };
        let Some(gram) = captured.grams.get(&(hook, layer)) else {
            continue;
        };
        let gram = gram.clone();
        let spectrum = tokio::task::spawn_blocking(move || gram.finish(top_k as usize))
            .await
            .map_err(|source| RunError::Task {
                label: label.to_owned(),
                source,
            })?
            .map_err(|source| RunError::Analysis {
                label: label.to_owned(),
                source,
            })?;
        let bytes = spectrum
            .to_safetensors()
            .map_err(|source| RunError::Analysis {
                label: label.to_owned(),
                source,
            })?;
        let artifact = Artifact::from_bytes(Bytes::from(bytes));
        let mut record = records::record(plan, &plan.nodes[s], Some(started));
        record.metrics = serde_json::to_value(spectrum.metrics()).ok();
        let path = plan.file_path(&plan.nodes[s]).unwrap_or_default();
        uploads
            .send(UploadJob {
                path,
                artifact,
                record,
                permit: None,
            })
            .await
            .map_err(|_| RunError::Interrupted)?;
        spectra_out.insert(s, Arc::new(spectrum));
        executed += 1;
    }
    executed += send_model_commit(plan, nodes, done, commits).await;
    Ok(ModelRun {
        executed,
        capture_seconds,
        stages: captured.times,
    })
}

/// Records the model's ledger-commit node (its inputs are the model's results, so the
/// committer holds it until they are all committed). Returns how many nodes it recorded.
async fn send_model_commit(
    plan: &Plan,
    nodes: &ModelNodes,
    done: &HashSet<usize>,
    commits: &mpsc::Sender<Committable>,
) -> usize {
    let Some(c) = nodes.commit.filter(|c| !done.contains(c)) else {
        return 0;
    };
    let record = records::record(plan, &plan.nodes[c], None);
    let _ = commits
        .send(Committable {
            record,
            regular: Vec::new(),
        })
        .await;
    1
}

/// The nodes of the final step (overlaps and the final ledger commit, in plan order) that
/// cannot be recorded now: those with an input, direct or not, of a model that failed in this
/// run or that this run leaves to another (a Slurm unit), when the ledger lacks it. A record
/// needs its inputs recorded, so these wait for a run in which those succeed.
pub(super) fn blocked_final_nodes(
    plan: &Plan,
    done: &HashSet<usize>,
    failed_models: &HashSet<usize>,
    selection: &super::UnitSelection,
) -> Vec<usize> {
    let mut missing = vec![false; plan.nodes.len()];
    let mut blocked = Vec::new();
    for (i, node) in plan.nodes.iter().enumerate() {
        if done.contains(&i) {
            continue;
        }
        missing[i] = match crate::plan::node_model(node).map(|m| m as usize) {
            Some(m) if m < plan.models.len() => {
                failed_models.contains(&m) || !selection.has_unit(m)
            }
            _ => {
                let inputs_missing = node.inputs.iter().any(|&j| missing[j as usize]);
                if inputs_missing {
                    blocked.push(i);
                }
                inputs_missing
            }
        };
    }
    blocked
}

/// The overlaps between spectra that are not done or blocked, each from the two spectra this
/// run computed or, for those the ledger has, downloaded. Returns how many it recorded.
pub(super) async fn run_overlaps(
    run: &Run<'_>,
    blocked: &[usize],
    state: &LedgerState,
    repo: &Repo,
    spectra: &mut HashMap<usize, Arc<Spectrum>>,
) -> Result<usize, RunError> {
    let Run {
        spec,
        plan,
        done,
        commits,
        ..
    } = *run;
    let client = run.client;
    let mut executed = 0;
    for (i, node) in plan.nodes.iter().enumerate() {
        let Params::Overlap { k, .. } = &node.params else {
            continue;
        };
        if done.contains(&i) || blocked.contains(&i) {
            continue;
        }
        let mut pair = Vec::new();
        for &input in &node.inputs {
            let input = input as usize;
            let spectrum = match spectra.get(&input) {
                Some(s) => s.clone(),
                None => {
                    let id = plan.nodes[input]
                        .id
                        .map(|id| id.to_hex())
                        .unwrap_or_default();
                    let Some(file) = state.records.get(&id).and_then(|r| r.files.first()) else {
                        continue;
                    };
                    let bytes = client
                        .download_bytes(repo, "main", &file.path)
                        .await
                        .map_err(|source| RunError::Hub {
                            repo: spec.output.to_string(),
                            source,
                        })?;
                    let s = Arc::new(Spectrum::from_safetensors(&bytes).map_err(|source| {
                        RunError::Analysis {
                            label: plan.label(&plan.nodes[input]),
                            source,
                        }
                    })?);
                    spectra.insert(input, s.clone());
                    s
                }
            };
            pair.push(spectrum);
        }
        let [base, other] = pair.as_slice() else {
            continue;
        };
        // Overlaps compare principal subspaces: the centred decompositions.
        let overlaps = crate::analysis::overlaps(
            base.part(Centring::Centred),
            other.part(Centring::Centred),
            k,
        )
        .map_err(|source| RunError::Analysis {
            label: plan.label(node),
            source,
        })?;
        let mut record = records::record(plan, node, None);
        record.metrics = Some(serde_json::json!({ "overlaps": overlaps, "centring": "centred" }));
        let _ = commits
            .send(Committable {
                record,
                regular: Vec::new(),
            })
            .await;
        executed += 1;
    }
    Ok(executed)
}

/// Weight-spectrum nodes of model `m` (see [`weights`]); for a spec without `capture`, also the
/// model's ledger record, which `run_model` writes otherwise.
///
/// Its `base_svd` and `update_geometry` nodes run here too ([`super::updates`]); an update that
/// failed is added to `failures`, and the model's ledger record then waits for a later run.
pub(super) async fn run_weight_nodes(
    run: &Run<'_>,
    m: usize,
    failures: &mut Vec<(String, String)>,
) -> Result<usize, RunError> {
    let Run {
        spec,
        plan,
        pinned,
        done,
        uploads,
        commits,
        ..
    } = *run;
    let mut executed = 0;
    for (i, node) in plan.nodes.iter().enumerate() {
        let Params::WeightSpectrum { model, .. } = node.params else {
            continue;
        };
        if model as usize != m || done.contains(&i) {
            continue;
        }
        let Some(job) = weights::WeightJob::of(plan, node, pinned) else {
            continue;
        };
        fetch_weights(run, &job.model, &job.label).await?;
        if let Some((_, base)) = &job.base {
            fetch_weights(run, base, &job.label).await?;
        }
        let started = Instant::now();
        let (metrics, bytes) = tokio::task::spawn_blocking(move || weights::compute_node(&job))
            .await
            .map_err(|source| RunError::Task {
                label: plan.label(node),
                source,
            })??;
        let mut record = records::record(plan, node, Some(started));
        record.metrics = serde_json::to_value(&metrics).ok();
        uploads
            .send(UploadJob {
                path: plan.file_path(node).unwrap_or_default(),
                artifact: weights::artifact(bytes),
                record,
                permit: None,
            })
            .await
            .map_err(|_| RunError::Interrupted)?;
        executed += 1;
    }
    let failed_before = failures.len();
    executed += super::updates::run_update_nodes(run, m, failures).await?;
    if spec.capture.is_none()
        && failures.len() == failed_before
        && let Some(c) = group_nodes(plan)[m].commit.filter(|c| !done.contains(c))
    {
        let _ = commits
            .send(Committable {
                record: records::record(plan, &plan.nodes[c], None),
                regular: Vec::new(),
            })
            .await;
        executed += 1;
    }
    Ok(executed)
}

/// Downloads the weight files of `model` not in the cache yet, saying so first; Ctrl-C stops
/// the download like it stops a capture.
pub(super) async fn fetch_weights(
    run: &Run<'_>,
    model: &PinnedModel,
    label: &str,
) -> Result<(), RunError> {
    tokio::select! {
        fetched = model.fetch_weights_saying(label, run.events) => fetched,
        () = run.cancel.cancelled() => Err(RunError::Interrupted),
    }
}

/// Whether model `m` has work left that reads its weights: captures (with their artifacts
/// and spectra) or weight spectra.
pub(super) fn needs_weights(plan: &Plan, m: usize, done: &HashSet<usize>) -> bool {
    plan.nodes.iter().enumerate().any(|(i, node)| {
        !done.contains(&i)
            && crate::plan::node_model(node) == Some(m as u32)
            && matches!(
                node.params,
                Params::Capture { .. }
                    | Params::Artifact { .. }
                    | Params::Spectrum { .. }
                    | Params::WeightSpectrum { .. }
                    | Params::BaseSvd { .. }
                    | Params::UpdateGeometry { .. }
            )
    })
}

/// Deletes the weights this run downloaded of every model no longer needed once the models
/// before `next` have run: a model is needed by its own turn and, as the base of a weight
/// delta, by the turns of the models whose delta nodes are still to run. Each model is
/// evicted once (`evicted`); a file that cannot be deleted is reported, and the run goes on.
pub(super) fn evict_weights(run: &Run<'_>, next: usize, evicted: &mut [bool]) {
    let Run {
        plan,
        pinned,
        done,
        events,
        ..
    } = *run;
    let base_of_later = |k: usize| {
        plan.nodes.iter().enumerate().any(|(i, node)| {
            matches!(node.params, Params::WeightSpectrum { model, delta_from: Some(base), .. }
                if base as usize == k && model as usize >= next)
                && !done.contains(&i)
        })
    };
    for (k, (instance, model)) in pinned.iter().enumerate().take(next) {
        if evicted[k] || base_of_later(k) {
            continue;
        }
        evicted[k] = true;
        let (freed, error) = match model.evict_weights() {
            Ok(freed) => (freed, None),
            Err(error) => (0, Some(crate::hub::client::error_chain(&error))),
        };
        if freed > 0 || error.is_some() {
            events(&RunEvent::Evicted {
                label: format!("{}@{}", instance.source, instance.revision),
                freed,
                error,
            });
        }
    }
}
