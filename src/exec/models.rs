//! Each model revision's turn, in plan order: its weights (downloaded one model ahead, and
//! evicted once no model still to run needs them), its resolve record, its weight spectra,
//! then its capture and spectra ([`steps`]). A model that fails is reported with failure
//! records for its pending nodes; fail-fast stops there, keep-going takes the next model.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::steps::{self, Run};
use super::{FailurePolicy, ModelNodes, RunError, RunEvent, RunReport, records};
use crate::analysis::Spectrum;
use crate::plan::Params;
use crate::sink::Committable;

/// Takes every selected model through its turn, adding to `report` what each did, and fills
/// `spectra` with the spectra computed (the overlaps read them). `manifest` goes in with the
/// first record. Returns the models that failed.
pub(super) async fn run_models(
    run: &Run<'_>,
    report: &mut RunReport,
    spectra: &mut HashMap<usize, Arc<Spectrum>>,
    mut manifest: Option<(String, Bytes)>,
) -> HashSet<usize> {
    let Run {
        plan,
        pinned,
        done,
        selection,
        commits,
        cancel,
        settings,
        ..
    } = *run;
    let mut evicted = vec![false; pinned.len()];
    // The models whose turn downloads weights: those with captures or weight spectra to run.
    let needs_weights: Vec<bool> = (0..pinned.len())
        .map(|m| selection.has_unit(m) && steps::needs_weights(plan, m, done))
        .collect();
    // The next such model's weights download while this one runs (one ahead).
    let mut prefetch: Option<(usize, tokio::task::JoinHandle<Result<(), RunError>>)> = None;
    let mut failed = HashSet::new();
    for (m, nodes) in steps::group_nodes(plan).iter().enumerate() {
        if settings.evict_models {
            steps::evict_weights(run, m, &mut evicted);
        }
        if !selection.has_unit(m) {
            continue;
        }
        let (instance, pinned_model) = &pinned[m];
        let label = format!("{}@{}", instance.source, instance.revision);
        // This model's own download finishes first (a failed one is retried, and reported,
        // where the weights are used).
        if let Some((_, handle)) = prefetch.take_if(|(p, _)| *p == m) {
            let files = pinned_model.missing_weights();
            if !handle.is_finished() && files > 0 {
                (run.events)(&RunEvent::Downloading {
                    label: label.clone(),
                    files,
                });
            }
            let abort = handle.abort_handle();
            tokio::select! {
                _ = handle => {}
                () = cancel.cancelled() => abort.abort(),
            }
        }
        if prefetch.is_none()
            && let Some(n) = (m + 1..pinned.len()).find(|&n| needs_weights[n])
        {
            let (next, model) = &pinned[n];
            let fetch = model.weights_fetch(format!("{}@{}", next.source, next.revision));
            prefetch = Some((n, tokio::spawn(fetch)));
        }
        if let Some(r) = nodes.resolve.filter(|r| !done.contains(r)) {
            let mut record = records::record(plan, &plan.nodes[r], None);
            let mut metrics = serde_json::json!({ "commit": pinned_model.commit });
            if let Some(data) = &pinned_model.data {
                metrics["data"] = serde_json::to_value(data).unwrap_or_default();
            }
            record.metrics = Some(metrics);
            let regular = manifest.take().into_iter().collect();
            let _ = commits.send(Committable { record, regular }).await;
            report.executed += 1;
        }
        if cancel.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let outcome = match steps::run_weight_nodes(run, m, &mut report.failed).await {
            Ok(executed) => {
                report.executed += executed;
                steps::run_model(run, m, nodes, &label, spectra).await
            }
            Err(error) => Err(error),
        };
        match outcome {
            Ok(model_run) => {
                report.executed += model_run.executed;
                report.capture_seconds += model_run.capture_seconds;
                report.capture_stages += model_run.stages;
            }
            Err(RunError::Interrupted) => {
                report.interrupted = true;
                break;
            }
            Err(error) => {
                record_failure(run, m, nodes, &label, &error, report).await;
                failed.insert(m);
                if settings.failure == FailurePolicy::FailFast {
                    break;
                }
            }
        }
    }
    // A download for a model that will not run now (a failure stopped the run, or Ctrl-C).
    if let Some((_, handle)) = prefetch.take() {
        handle.abort();
        let _ = handle.await;
    }
    if settings.evict_models {
        steps::evict_weights(run, pinned.len(), &mut evicted);
    }
    failed
}

/// Reports model `m`'s failure and records it against the model's pending captures and weight
/// spectra (failure records: `status` shows them failed until a later run succeeds).
async fn record_failure(
    run: &Run<'_>,
    m: usize,
    nodes: &ModelNodes,
    label: &str,
    error: &RunError,
    report: &mut RunReport,
) {
    let Run {
        plan,
        done,
        commits,
        events,
        ..
    } = *run;
    let message = crate::hub::client::error_chain(error);
    events(&RunEvent::ModelFailed {
        label: label.to_owned(),
        error: message.clone(),
    });
    report.failed.push((label.to_owned(), message.clone()));
    let weight_nodes = plan.nodes.iter().enumerate().filter_map(|(i, node)| {
        matches!(node.params,
            Params::WeightSpectrum { model, .. }
            | Params::BaseSvd { model, .. }
            | Params::UpdateGeometry { model, .. } if model as usize == m)
        .then_some(i)
    });
    for i in nodes.captures.iter().copied().chain(weight_nodes) {
        if done.contains(&i) {
            continue;
        }
        let mut record = records::record(plan, &plan.nodes[i], None);
        record.error = Some(message.clone());
        let _ = commits
            .send(Committable {
                record,
                regular: Vec::new(),
            })
            .await;
    }
}
