//! A base model's turn through its `base_svd` and `update_geometry` nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::super::steps::{Run, fetch_weights};
use super::super::{RunError, RunEvent, output_repo, records, weights};
use super::{BaseSvdJob, SharedBaseSvds, UpdateJob, compute_base_svd, compute_update, read_svds};
use crate::ledger::updates::UpdateNodeMetrics;
use crate::plan::{Node, Params, Plan};
use crate::sink::{Committable, UploadJob};

/// Runs model `m`'s pending `base_svd` and `update_geometry` nodes, in plan order (each base's
/// SVD before the updates that read it). An update that fails is recorded failed and added to
/// `failures`; the others go on. Returns the nodes executed.
pub(in crate::exec) async fn run_update_nodes(
    run: &Run<'_>,
    m: usize,
    failures: &mut Vec<(String, String)>,
) -> Result<usize, RunError> {
    let Run {
        plan,
        pinned,
        done,
        commits,
        events,
        ..
    } = *run;
    let mut bases: HashMap<usize, SharedBaseSvds> = HashMap::new();
    let mut executed = 0;
    for (i, node) in plan.nodes.iter().enumerate() {
        if done.contains(&i) || crate::plan::node_model(node) != Some(m as u32) {
            continue;
        }
        let base = &pinned[m].1;
        let label = plan.label(node);
        match &node.params {
            Params::BaseSvd { module, keep, .. } => {
                fetch_weights(run, base, &label).await?;
                let job = BaseSvdJob {
                    label: label.clone(),
                    model: base.clone(),
                    module: module.clone(),
                    keep: *keep as usize,
                };
                let started = Instant::now();
                let (metrics, svds, bytes) =
                    tokio::task::spawn_blocking(move || compute_base_svd(&job))
                        .await
                        .map_err(|source| RunError::Task {
                            label: label.clone(),
                            source,
                        })??;
                bases.insert(i, Arc::new(svds));
                let mut record = records::record(plan, node, Some(started));
                record.metrics = serde_json::to_value(&metrics).ok();
                send(run, plan, node, bytes, record).await?;
                executed += 1;
            }
            Params::UpdateGeometry {
                adapter, k, module, ..
            } => {
                let b = node.inputs.first().map_or(i, |&b| b as usize);
                let svds = match bases.get(&b) {
                    Some(svds) => svds.clone(),
                    None => {
                        let svds = Arc::new(recorded_base(run, &plan.nodes[b]).await?);
                        bases.insert(b, svds.clone());
                        svds
                    }
                };
                fetch_weights(run, base, &label).await?;
                let a = &plan.adapters[*adapter as usize];
                let job = UpdateJob {
                    label: label.clone(),
                    adapter_dir: a.dir.clone().unwrap_or_default(),
                    base: base.clone(),
                    module: module.clone(),
                    k: k.as_ref().clone(),
                    header: UpdateNodeMetrics {
                        adapter: a.instance.source.to_string(),
                        revision: a.instance.revision.clone(),
                        subfolder: a.instance.subfolder.clone(),
                        step: a.step,
                        matrices: Vec::new(),
                    },
                };
                let started = Instant::now();
                let outcome = tokio::task::spawn_blocking(move || compute_update(&job, &svds))
                    .await
                    .map_err(|source| RunError::Task {
                        label: label.clone(),
                        source,
                    })?;
                match outcome {
                    Ok((metrics, bytes)) => {
                        let mut record = records::record(plan, node, Some(started));
                        record.metrics = serde_json::to_value(&metrics).ok();
                        send(run, plan, node, bytes, record).await?;
                        executed += 1;
                    }
                    Err(error) => {
                        let message = crate::hub::client::error_chain(&error);
                        events(&RunEvent::ModelFailed {
                            label: label.clone(),
                            error: message.clone(),
                        });
                        failures.push((label, message.clone()));
                        let mut record = records::record(plan, node, Some(started));
                        record.error = Some(message);
                        let _ = commits
                            .send(Committable {
                                record,
                                regular: Vec::new(),
                            })
                            .await;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(executed)
}

/// Sends a node's file and record to the sink.
async fn send(
    run: &Run<'_>,
    plan: &Plan,
    node: &Node,
    bytes: Vec<u8>,
    record: crate::ledger::Record,
) -> Result<(), RunError> {
    run.uploads
        .send(UploadJob {
            path: plan.file_path(node).unwrap_or_default(),
            artifact: weights::artifact(bytes),
            record,
            permit: None,
        })
        .await
        .map_err(|_| RunError::Interrupted)
}

/// The SVDs of a `base_svd` node an earlier run recorded, read back from the output repo.
async fn recorded_base(run: &Run<'_>, node: &Node) -> Result<super::BaseSvds, RunError> {
    let repo = output_repo(run.spec)?;
    let path = run.plan.file_path(node).unwrap_or_default();
    let bytes = run
        .client
        .download_bytes(&repo, "main", &path)
        .await
        .map_err(|source| RunError::Hub {
            repo: run.spec.output.to_string(),
            source,
        })?;
    read_svds(&bytes).map_err(|reason| RunError::Capture {
        label: run.plan.label(node),
        reason: format!("its recorded file `{path}` does not read back: {reason}"),
    })
}
